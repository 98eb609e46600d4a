"""Which trainer runs: CUDA > Apple MLX > CPU, unless the config names one.

Detection is a pure function of facts passed in (so tests can fake a Mac or a GPU); `detect()`
gathers the facts on this machine. `child_env()` is what a trainer child of a backend needs in
its environment before it starts.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BACKENDS", "Machine", "child_env", "detect", "select_backend"]

log = logging.getLogger(__name__)

BACKENDS = ("cuda", "mlx", "cpu")


@dataclass(frozen=True)
class Machine:
    cuda: bool
    apple_silicon: bool
    mlx: bool
    """mlx and mlx-lm importable (the `mlx` extra installed)."""


def detect() -> Machine:
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        cuda = bool(torch.cuda.is_available())
    mlx = all(importlib.util.find_spec(name) is not None for name in ("mlx", "mlx_lm"))
    return Machine(cuda=cuda, apple_silicon=apple, mlx=mlx)


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


def child_env(backend: str, cache_dir: Path) -> dict[str, str]:
    """Environment variables to add for a trainer child of `backend` (a configured name or
    "auto"); empty unless it is mlx on Linux and an OpenBLAS is installed.

    mlx[cpu] on Linux links a single-threaded reference BLAS; OpenBLAS's `cblas_sgemm` makes a
    forward pass ~15x faster, but only `LD_PRELOAD` at process start puts it ahead of the linked
    one. The OpenBLAS pip installs (cmeel-openblas, in the `mlx` extra) needs libgfortran.so.5,
    which the mlx-cpu wheel ships only under a mangled name (and most systems not at all), so a
    link with the plain name is made in `cache_dir/blas` and put on `LD_LIBRARY_PATH`. Auto
    never picks mlx on Linux, and macOS uses Accelerate, so only an explicit mlx gets anything.
    """
    if backend != "mlx" or platform.system() != "Linux":
        return {}
    openblas = _find_in_site_packages("cmeel.prefix/lib/libopenblas.so.0")
    if openblas is None:
        return {}
    library_dirs: list[str] = []
    # mlx's own copy first: then the child loads one libgfortran, not two.
    gfortran = _find_in_site_packages("mlx_cpu.libs/libgfortran-*.so.5*")
    if gfortran is None and not _system_has("libgfortran.so.5"):
        return {}  # a preload whose dependency is missing would stop the child from starting
    if gfortran is not None:
        shim = Path(cache_dir) / "blas"
        link = shim / "libgfortran.so.5"
        try:
            shim.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink() or os.readlink(link) != str(gfortran):
                tmp = shim / f".libgfortran.so.5.{os.getpid()}"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(gfortran)
                os.replace(tmp, link)  # atomic: a concurrent caller sees the old link or the new one
        except OSError as exc:  # slow training beats none: the trainer logs that it lacks OpenBLAS
            log.warning("no OpenBLAS for the mlx trainer: cannot link %s in %s (%s)", gfortran.name, shim, exc)
            return {}
        library_dirs = [str(shim), str(gfortran.parent)]  # the latter for its mangled libquadmath
    env = {"LD_PRELOAD": _joined(str(openblas), os.environ.get("LD_PRELOAD"))}
    if library_dirs:
        env["LD_LIBRARY_PATH"] = _joined(":".join(library_dirs), os.environ.get("LD_LIBRARY_PATH"))
    return env


def _joined(first: str, rest: str | None) -> str:
    return f"{first}:{rest}" if rest else first


def _find_in_site_packages(pattern: str) -> Path | None:
    for root in dict.fromkeys(sysconfig.get_paths()[key] for key in ("platlib", "purelib")):
        found = sorted(glob.glob(os.path.join(root, pattern)))
        if found:
            return Path(found[-1]).resolve()
    return None


def _system_has(soname: str) -> bool:
    """Whether the dynamic loader finds `soname` without help (ldconfig's cache)."""
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True
