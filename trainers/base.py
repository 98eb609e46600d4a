"""Base weights for training: the served GGUF, dequantized once into a Hugging Face directory.

Training must start from exactly the weights llama.cpp serves, so the base is converted from the
GGUF itself (transformers reads GGUF offline) rather than fetched from a hub. The conversion
takes tens of seconds; it is cached under the base fingerprint and later runs load the cache.
The MLX backend reads the same directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["base_weights", "load_base"]

CACHE_FORMAT = 1
"""Bumped when the cached layout changes, so old caches are converted again."""


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def base_weights(gguf_path: Path, fingerprint: str, cache_dir: Path) -> Path:
    """The converted base for `gguf_path` (config, safetensors, tokenizer with chat template).

    Written to a temporary sibling and renamed into place, so a crash never leaves a
    half-written cache that a later run would trust.
    """
    _offline()
    target = cache_dir / f"{fingerprint[:16]}-v{CACHE_FORMAT}"
    if (target / "rlhi-base.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_dir))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32"
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # The dequantized weights are plain floats now; without this, save_pretrained would
        # record a GGUF quantization that from_pretrained then refuses to load.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        _top_level_rope_theta(work / "config.json")
        (work / "rlhi-base.json").write_text(
            json.dumps({"gguf": str(gguf_path), "fingerprint": fingerprint, "format": CACHE_FORMAT}),
            encoding="utf-8",
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


def _top_level_rope_theta(config_path: Path) -> None:
    """transformers 5 nests rope_theta in `rope_parameters`; loaders that read only the top-level
    key (mlx-lm) would silently use the wrong RoPE base. Write it in both places."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def load_base(base_dir: Path, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) from a converted base directory, float32, in eval mode."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="float32").to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    return model, tokenizer
