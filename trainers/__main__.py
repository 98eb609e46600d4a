"""The training child process: `python -m trainers JOB.json`.

Stdout carries one JSON event per line (`started`, `progress`, `phase`, `done` or `error` or
`cancelled`); stderr carries logs. SIGTERM stops the run between steps. Exit codes: 0 done,
1 failed, 3 cancelled. Nothing outside the job's output directory is written, so a crash or a
kill can never touch the adapter being served.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .backend import detect, select_backend
from .job import TrainJob, event_line, read_job

log = logging.getLogger("trainers")

_stop = False


def _on_term(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def emit(kind: str, **fields: object) -> None:
    sys.stdout.write(event_line(kind, **fields) + "\n")
    sys.stdout.flush()


def _release_memory() -> None:
    """Hand freed heap back to the OS: glibc keeps it otherwise, and the memory budget is
    enforced on RSS, which would carry training's activations into the export phase."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (macOS): nothing to do


def run(job: TrainJob) -> dict[str, object]:
    """Train, export, verify and evaluate one candidate; returns its metrics."""
    backend = select_backend(job.backend, detect())
    threads = job.threads or os.cpu_count() or 1
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    emit("phase", phase="base")
    trainer = _trainer(backend, job, threads)
    emit("started", backend=backend, pairs=len(job.train), heldout=len(job.heldout), threads=threads)
    metrics: dict[str, object] = {"backend": backend, "pairs": len(job.train), "threads": threads}
    metrics["train"] = trainer.train(job.train, emit, lambda: _stop)

    _release_memory()
    emit("phase", phase="export")
    trainer.save(out / "peft")
    texts = [trainer.tokenizer.apply_chat_template(e.messages + [{"role": "assistant", "content": answer}],
                                                   tokenize=False)
             for e in (job.heldout or job.train)[:2] for answer in (e.chosen, e.rejected)]
    metrics["export_correlation"] = _export(backend, trainer, job, out / "adapter.gguf", texts, threads)

    emit("phase", phase="evaluate")
    metrics["candidate"] = trainer.preference(job.heldout)
    metrics["drift"] = trainer.drift(job.regression)
    if job.active_adapter:
        trainer.load_other(Path(job.active_adapter))
        trainer.use("active")
        metrics["active"] = trainer.preference(job.heldout)
        trainer.use("default")
    metrics["seconds"] = time.perf_counter() - started
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def _trainer(backend: str, job: TrainJob, threads: int) -> Any:
    """The backend's DPOTrainer on the converted base; both backends' trainers have the same
    methods (trainers.torch_dpo, trainers.mlx_dpo)."""
    from .base import base_weights

    if backend == "mlx":
        from .mlx_dpo import set_threads

        if not set_threads(threads) and sys.platform == "linux":
            log.warning("mlx without OpenBLAS: matrix products use the reference BLAS, ~15x slower; start "
                        "the trainer with trainers.backend.child_env('mlx', ...) in its environment")
    else:
        import torch

        torch.set_num_threads(threads)
    base_dir = base_weights(Path(job.base_gguf), job.base_fingerprint, Path(job.cache_dir))
    if backend == "mlx":
        from .mlx_dpo import DPOTrainer as MLXTrainer

        return MLXTrainer(base_dir, job.hparams)
    from .torch_dpo import DPOTrainer

    return DPOTrainer(base_dir, job.hparams, device="cuda" if backend == "cuda" else "cpu")


def _export(backend: str, trainer: Any, job: TrainJob, path: Path, texts: list[str], threads: int) -> float:
    """Write the GGUF adapter and return the round-trip correlation of llama.cpp against the trainer."""
    from .export import lora_from_peft, roundtrip_check, write_gguf_adapter

    metadata = {"rlhi.base_fingerprint": job.base_fingerprint, "rlhi.adapter_version": job.version}
    if backend == "mlx":
        config = trainer.config
        write_gguf_adapter(path, trainer.lora_tensors(), alpha=trainer.lora_alpha(),
                           n_head=config["num_attention_heads"],
                           n_head_kv=config.get("num_key_value_heads", config["num_attention_heads"]),
                           metadata=metadata)
        return trainer.roundtrip_check(Path(job.base_gguf), path, texts, n_threads=threads, scale=None)
    config = trainer.model.config
    write_gguf_adapter(path, lora_from_peft(trainer.model), alpha=job.hparams.alpha,
                       n_head=config.num_attention_heads, n_head_kv=config.num_key_value_heads, metadata=metadata)
    return roundtrip_check(Path(job.base_gguf), path, trainer.model, trainer.tokenizer, texts, n_threads=threads,
                           scale=None)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s trainer %(message)s")
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    if len(argv) != 1:
        sys.stderr.write("usage: python -m trainers JOB.json\n")
        return 2
    from .torch_dpo import Cancelled

    try:
        metrics = run(read_job(Path(argv[0])))
    except Cancelled:
        emit("cancelled")
        return 3
    except Exception as exc:  # the boundary: report any failure as an event, with its trace
        traceback.print_exc()
        emit("error", message=f"{type(exc).__name__}: {exc}")
        return 1
    emit("done", metrics=metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
