"""The trainer interface: a training job in, a candidate adapter and its metrics out.

A job is a self-contained JSON file (examples already carry the persona in their system turn), so
a trainer needs neither the store nor the daemon: it runs in a child process (`python -m
trainers JOB`), prints one JSON event per line on stdout, and writes its adapter into the job's
output directory. Every backend (torch on CUDA or CPU, MLX) takes the same job and emits the
same events.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Example", "HParams", "RegressionItem", "TrainJob", "event_line", "read_job", "regression_prompts",
           "write_job"]


@dataclass(frozen=True)
class HParams:
    """DPO + LoRA settings. Defaults are what DESIGN §7 measured to learn without degenerating
    on a 135M model: plain DPO over-optimises, an NLL term on the chosen answer holds it."""

    rank: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scale = alpha / rank)."})
    targets: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        metadata={"help": "Modules that get LoRA weights (Hugging Face names)."},
    )
    beta: float = field(default=0.1, metadata={"help": "DPO temperature."})
    nll_weight: float = field(default=1.0, metadata={"help": "Weight of the chosen answer's NLL."})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    epochs: int = field(default=2, metadata={"help": "Passes over the training pairs."})
    batch_size: int = field(default=4, metadata={"help": "Pairs per optimiser step."})
    max_len: int = field(default=512, metadata={"help": "Tokens per sequence (prompt cut on the left)."})
    seed: int = field(default=0, metadata={"help": "Shuffling and LoRA initialisation."})
    bf16: bool = field(default=True, metadata={"help": "bfloat16 autocast on CUDA (CPU stays float32)."})


@dataclass(frozen=True)
class Example:
    """One preference pair, ready to train: `messages` end with the user turn being answered."""

    pair_id: str
    messages: list[dict[str, str]]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class RegressionItem:
    """A neutral prompt and a reference answer: the gate measures drift from the base on these."""

    messages: list[dict[str, str]]
    answer: str


@dataclass(frozen=True)
class TrainJob:
    base_gguf: str
    base_fingerprint: str
    cache_dir: str
    """Where converted base weights are cached (by fingerprint)."""
    out_dir: str
    """The candidate adapter goes here: adapter.gguf, peft/ and metrics.json."""
    version: str
    train: list[Example]
    heldout: list[Example]
    regression: list[RegressionItem]
    hparams: HParams = field(default_factory=HParams)
    active_adapter: str | None = None
    """peft directory of the adapter now served, so the gate can compare the candidate to it."""
    backend: str = "auto"
    threads: int = 0
    """CPU threads (0: physical cores)."""


def write_job(job: TrainJob, path: Path) -> None:
    path.write_text(json.dumps(asdict(job)), encoding="utf-8")


def read_job(path: Path) -> TrainJob:
    raw = json.loads(path.read_text(encoding="utf-8"))
    hparams = raw.get("hparams", {})
    if "targets" in hparams:
        hparams["targets"] = tuple(hparams["targets"])  # JSON has lists; HParams is frozen and hashable
    raw["hparams"] = HParams(**hparams)
    raw["train"] = [Example(**e) for e in raw["train"]]
    raw["heldout"] = [Example(**e) for e in raw["heldout"]]
    raw["regression"] = [RegressionItem(**r) for r in raw["regression"]]
    return TrainJob(**raw)


def event_line(kind: str, **fields: Any) -> str:
    """One progress event as a JSON line: `{"event": "progress", "step": 3, ...}`."""
    return json.dumps({"event": kind, **fields}, default=float)


def regression_prompts() -> list[tuple[str, str]]:
    """The fixed neutral (question, reference answer) set the gate measures drift on."""
    raw = json.loads((Path(__file__).parent / "regression.json").read_text(encoding="utf-8"))
    return [(item["prompt"], item["answer"]) for item in raw]
