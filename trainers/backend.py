"""Which trainer runs: CUDA > Apple MLX > CPU, unless the config names one.

Detection is a pure function of facts passed in (so tests can fake a Mac or a GPU); `detect()`
gathers the facts on this machine.
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass

__all__ = ["BACKENDS", "Machine", "detect", "select_backend"]

BACKENDS = ("cuda", "mlx", "cpu")


@dataclass(frozen=True)
class Machine:
    cuda: bool
    apple_silicon: bool
    mlx: bool
    """mlx importable (the `mlx` extra installed)."""


def detect() -> Machine:
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        cuda = bool(torch.cuda.is_available())
    return Machine(cuda=cuda, apple_silicon=apple, mlx=importlib.util.find_spec("mlx") is not None)


def select_backend(preference: str, machine: Machine, available: tuple[str, ...] = BACKENDS) -> str:
    """The backend to train with. `preference` is "auto" or one of BACKENDS; a named backend
    the machine cannot run is an error rather than a silent fallback (the user asked for it)."""
    if preference == "auto":
        if machine.cuda and "cuda" in available:
            return "cuda"
        if machine.apple_silicon and machine.mlx and "mlx" in available:
            return "mlx"
        return "cpu"
    if preference not in BACKENDS:
        raise ValueError(f"training.backend is {preference!r}; use auto, {', '.join(BACKENDS)}.")
    if preference not in available:
        raise ValueError(f"training.backend={preference} is not built into this version; use auto or cpu.")
    if preference == "cuda" and not machine.cuda:
        raise ValueError("training.backend=cuda but torch sees no CUDA device; use auto or cpu.")
    if preference == "mlx" and not machine.mlx:
        raise ValueError("training.backend=mlx but mlx is not installed: pip install 'rlhi-local[mlx]'.")
    return preference
