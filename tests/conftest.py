"""Shared fixtures: a private RLHI_HOME per test, and one real daemon for the run.

The run-wide daemon loads the real embedded GGUF once and serves it on a temporary Unix socket
from a thread (as mlx-lm's server tests do); tests reach it only through its socket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rlhi_local.config import Config, load_config
from rlhi_local.daemon import Daemon


@pytest.fixture(autouse=True)
def rlhi_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    monkeypatch.setenv("RLHI_HOME", str(home))
    for name in list(os.environ):
        if name.startswith("RLHI_") and name != "RLHI_HOME":
            monkeypatch.delenv(name)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@dataclass
class RunningDaemon:
    daemon: Daemon
    home: Path
    thread: threading.Thread

    @property
    def socket(self) -> Path:
        return self.daemon.socket_path

    @property
    def db_path(self) -> Path:
        return self.home / "data" / "rlhi.db"


def start_thread_daemon(home: Path, flags: dict[str, dict[str, Any]] | None = None) -> RunningDaemon:
    """Start a real daemon in a thread with RLHI_HOME=home; returns once it accepts requests."""
    old = os.environ.get("RLHI_HOME")
    os.environ["RLHI_HOME"] = str(home)
    flags = dict(flags or {})
    # The learning schedule runs only in the tests about it: elsewhere a job firing in the
    # middle of a test (a nightly training window can be now) would make it flaky.
    flags.setdefault("schedule", {"enabled": False})
    try:
        config: Config = load_config(flags)
        daemon = Daemon(config)
        daemon.start()
    finally:
        if old is None:
            os.environ.pop("RLHI_HOME", None)
        else:
            os.environ["RLHI_HOME"] = old
    thread = threading.Thread(target=daemon.run, name="rlhi-daemon", daemon=True)
    thread.start()
    assert daemon.started.wait(30), "daemon did not start serving"
    return RunningDaemon(daemon, home, thread)


def stop_thread_daemon(running: RunningDaemon) -> None:
    running.daemon.request_stop()
    running.thread.join(30)
    assert not running.thread.is_alive(), "daemon thread did not stop"


@pytest.fixture(scope="session")
def daemon() -> Iterator[RunningDaemon]:
    home = Path(tempfile.mkdtemp(prefix="rhd", dir="/tmp"))
    # Rewrites after 2 quiet seconds (30 by default) so the background-learning test is quick.
    running = start_thread_daemon(home, {"learning": {"rewrite_idle_s": 2.0}})
    yield running
    stop_thread_daemon(running)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture()
def client(daemon: RunningDaemon) -> Iterator[Any]:
    from rlhi_local.client import Client

    with Client(daemon.socket) as c:
        yield c


def rlhi_cmd(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `rlhi` command (as `python -m rlhi_local`) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "rlhi_local", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
        input=input,
    )


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs: a zombie does not, nor one that ended between the checks."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state follows the (command name)
