"""What does the MLX trainer cost against the torch one, on the same pairs on this machine?

Run: `.venv/bin/python benchmarks/mlx_vs_torch.py` (needs `make install`, which installs the mlx
extra; on Linux that is mlx[cpu] with OpenBLAS). Smaller: `--pairs 8 --steps 2 --max-len 256`.

In one run, each backend in a fresh child process (`--child BACKEND`) started as the daemon
starts its trainer (OpenMP threads that sleep, `trainers.backend.child_env`, so MLX on Linux gets
OpenBLAS), on the same synthetic pairs as benchmarks/training.py with the same hyperparameters:
- step time: N optimiser steps timed after 1 warm-up step (the trainer's own `elapsed_s`);
- peak memory: the child's VmHWM (peak RSS) after loading the base and at the end of the steps.
The torch child runs first, then MLX; ratios are MLX / torch. Writes JSON to
benchmarks/results/mlx_vs_torch-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainers.job import HParams  # noqa: E402


def _make_pairs(n: int) -> list[Any]:
    """benchmarks/training.py's pairs (a persona line, ~30-word chosen, ~120-word rejected)."""
    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "benchmarks" / "training.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_pairs(n)


def _hwm_mb() -> float:
    """This process's peak RSS (VmHWM: per address space, so exec started it afresh)."""
    text = Path("/proc/self/status").read_text()
    return int(text.split("VmHWM:")[1].split()[0]) / 1024


def child(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load `backend`'s trainer, train `steps` + 1 steps, report times and memory as JSON."""
    from tests._base import shared_base_dir

    pairs = _make_pairs(args.pairs)
    hp = HParams(max_len=args.max_len, batch_size=args.batch, rank=args.rank, alpha=2.0 * args.rank,
                 epochs=math.ceil((args.steps + 1) / math.ceil(args.pairs / args.batch)))
    started = time.perf_counter()
    if backend == "mlx":
        from trainers.mlx_dpo import DPOTrainer, set_threads

        blas = set_threads(args.threads)
        trainer = DPOTrainer(shared_base_dir(), hp)
        versions = {"mlx": importlib.metadata.version("mlx"), "mlx_lm": importlib.metadata.version("mlx-lm"),
                    "openblas_preloaded": blas}
    else:
        import torch

        from trainers.torch_dpo import DPOTrainer

        torch.set_num_threads(args.threads)
        trainer = DPOTrainer(shared_base_dir(), hp)
        versions = {"torch": torch.__version__}
    from trainers.torch_dpo import Cancelled

    loaded_s, loaded_mb = time.perf_counter() - started, _hwm_mb()
    events: list[dict[str, Any]] = []
    try:
        trainer.train(pairs, lambda kind, **f: events.append(f), lambda: len(events) > args.steps)
    except Cancelled:
        pass
    timed = events[-1]["elapsed_s"] - events[0]["elapsed_s"]
    return {"backend": backend, **versions, "load_s": loaded_s, "s_per_step": timed / args.steps,
            "first_step_s": events[0]["elapsed_s"], "losses": [e["loss"] for e in events],
            "peak_rss_mb_after_load": loaded_mb, "peak_rss_mb": _hwm_mb()}


def run_child(backend: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    from trainers.backend import child_env

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE",
           "OMP_NUM_THREADS": str(args.threads), "MALLOC_ARENA_MAX": "2", **child_env(backend, cache)}
    command = [sys.executable, __file__, "--child", backend, "--pairs", str(args.pairs), "--steps", str(args.steps),
               "--threads", str(args.threads), "--max-len", str(args.max_len), "--batch", str(args.batch),
               "--rank", str(args.rank)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{backend} child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16, help="synthetic preference pairs")
    parser.add_argument("--steps", type=int, default=4, help="timed optimiser steps (after 1 warm-up step)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS / torch threads in each child")
    parser.add_argument("--max-len", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=4, help="pairs per optimiser step")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 * rank, as the defaults)")
    parser.add_argument("--child", choices=["cpu", "mlx"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / f"mlx_vs_torch-{time.strftime('%Y%m%d-%H%M%S')}.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return

    report: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
                              "cpus": os.cpu_count(), "loadavg_1m_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="rlhi-bench-mlx-") as cache:
        torch_r = report["torch"] = run_child("cpu", args, Path(cache))
        mlx_r = report["mlx"] = run_child("mlx", args, Path(cache))
    report["ratio_mlx_over_torch"] = {key: mlx_r[key] / torch_r[key]
                                      for key in ("s_per_step", "peak_rss_mb", "peak_rss_mb_after_load", "load_s")}
    report["loadavg_1m_at_end"] = os.getloadavg()[0]
    ratio = report["ratio_mlx_over_torch"]
    lines = [
        f"{args.pairs} pairs, {args.batch} pairs/step, max_len {args.max_len}, rank {args.rank}, {args.threads} "
        f"thread(s); {args.steps} steps timed after 1 warm-up",
        f"step time: MLX {mlx_r['s_per_step']:.2f} s, torch {torch_r['s_per_step']:.2f} s -> MLX/torch "
        f"{ratio['s_per_step']:.2f} (OpenBLAS preloaded for MLX: {mlx_r['openblas_preloaded']})",
        f"peak RSS: MLX {mlx_r['peak_rss_mb']:.0f} MB, torch {torch_r['peak_rss_mb']:.0f} MB -> MLX/torch "
        f"{ratio['peak_rss_mb']:.2f} (after loading: {mlx_r['peak_rss_mb_after_load']:.0f} vs "
        f"{torch_r['peak_rss_mb_after_load']:.0f} MB)",
        f"load: MLX {mlx_r['load_s']:.1f} s, torch {torch_r['load_s']:.1f} s; losses MLX "
        + " ".join(f"{x:.3f}" for x in mlx_r["losses"]) + ", torch " + " ".join(f"{x:.3f}" for x in torch_r["losses"]),
        f"load average (1 min) at start/end: {report['loadavg_1m_at_start']:.1f}/{report['loadavg_1m_at_end']:.1f} "
        f"on {os.cpu_count()} CPUs (meaningful only on a quiet machine)",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("\n".join(lines) + f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
