"""Outbound-connection recording for tests: run a process (and its children) with
`egress_env(log)` merged into its environment, then `read_egress(log)` lists every attempt it
made to reach a non-Unix-socket address ([] when it made none). See `sitecustomize.py` here.

Example:

    env = {**os.environ, **egress_env(home / "egress.jsonl")}
    proc = subprocess.Popen([sys.executable, "-m", "rlhi_local", "serve"], env=env)
    ...
    assert read_egress(home / "egress.jsonl") == []
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["egress_env", "read_egress", "recorded_processes"]

HERE = Path(__file__).resolve().parent


def egress_env(log_path: Path, block: bool = True) -> dict[str, str]:
    """Variables to add to a child's environment: this directory first on PYTHONPATH (so its
    `sitecustomize` loads), the log file, and whether attempts are blocked after being logged."""
    pythonpath = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": pythonpath, "RLHI_EGRESS_LOG": str(log_path), "RLHI_EGRESS_BLOCK": "1" if block else "0"}


def _lines(log_path: Path) -> list[dict[str, Any]]:
    path = Path(log_path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_egress(log_path: Path) -> list[dict[str, Any]]:
    """Every recorded attempt, in order: {"pid", "event", "address", "argv"}."""
    return [e for e in _lines(log_path) if e["event"] != "recorder.start"]


def recorded_processes(log_path: Path) -> list[str]:
    """The command line of each process the recorder ran in (so an empty `read_egress` is known
    to cover, say, the trainer child: `any("-m trainers" in p for p in ...)`)."""
    return [" ".join(e["argv"]) for e in _lines(log_path) if e["event"] == "recorder.start"]
