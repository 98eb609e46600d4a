"""The converted base model shared by the training tests.

Converting the embedded GGUF to a Hugging Face directory takes tens of seconds, so it is done once
per machine into a cache outside the per-test RLHI_HOME: `$RLHI_TEST_CACHE` when set, else
`<tmp>/rlhi-test-cache`. The variable is read at import, because tests/conftest.py removes RLHI_*
variables from each test's environment.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path

from rlhi_local.models import embedded_model_path
from trainers.base import base_weights

__all__ = ["base_gguf", "shared_base_dir", "shared_cache_dir", "shared_cache_root"]

_CACHE_ENV = os.environ.get("RLHI_TEST_CACHE")


def shared_cache_root() -> Path:
    """A `training.cache_dir` for test daemons: they find the converted base in its `base/`."""
    return Path(_CACHE_ENV) if _CACHE_ENV else Path(tempfile.gettempdir()) / "rlhi-test-cache"


def shared_cache_dir() -> Path:
    """Where converted bases are cached for tests (never inside an RLHI_HOME)."""
    return shared_cache_root() / "base"


def base_gguf() -> Path:
    """The embedded GGUF that the daemon serves."""
    return embedded_model_path()


@functools.cache
def _sha256(path: Path) -> str:
    # Computed here rather than by rlhi_local.models.fingerprint, which records its cache in the
    # current RLHI_HOME; module-scoped fixtures may run before a test's private home exists.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shared_base_dir() -> Path:
    """The Hugging Face directory converted from the embedded GGUF, converted on first use."""
    gguf_path = base_gguf()
    return base_weights(gguf_path, _sha256(gguf_path), shared_cache_dir())
