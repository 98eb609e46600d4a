"""Permissions checked at every start: a data dir or database files opened up by a copy, a restore
or a umask are closed again (with a warning naming the path and the old mode); a data dir that
another user owns is refused with a message that says what to do. (The socket's 0600, a second
user refused by it and loopback TCP with its token are in test_daemon.py.)
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from rlhi_local.errors import DaemonError
from rlhi_local.store import Store
from tests.conftest import rlhi_cmd, start_thread_daemon, stop_thread_daemon


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_loose_modes_are_repaired_at_start_and_said(rlhi_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = rlhi_home / "data"
    Store(data / "rlhi.db").close()  # a database from an earlier run
    os.chmod(data, 0o755)
    os.chmod(data / "rlhi.db", 0o644)
    caplog.set_level(logging.WARNING, logger="rlhi_local")
    running = start_thread_daemon(rlhi_home)
    try:
        assert mode(data) == 0o700 and mode(data / "rlhi.db") == 0o600
        assert mode(running.socket) == 0o600
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert f"repairing permissions of {data}: 755 -> 700 (it held private data)" in said, said
        assert f"repairing permissions of {data / 'rlhi.db'}: 644 -> 600 (it holds private data)" in said, said
    finally:
        stop_thread_daemon(running)


def test_a_data_dir_owned_by_another_user_is_refused(rlhi_home: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root to give the data dir to another user")
    data = rlhi_home / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    with pytest.raises(DaemonError, match="belongs to uid 65534"):
        start_thread_daemon(rlhi_home)
    out = rlhi_cmd("serve", timeout=60)  # a subprocess: a regression would serve, not hang the run
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{data} belongs to uid 65534" in out.stderr and "RLHI_HOME" in out.stderr, out.stderr
    assert not (rlhi_home / "run" / "rlhi.sock").exists() and list(data.iterdir()) == []
