"""The no-egress recorder (tests/egress) itself: a process run with `egress_env` and its children
log, and are refused, every attempt to reach an address that is not a Unix socket, while Unix
sockets (the daemon's own) pass untouched. The whole loop under it is in test_schedule_loop.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.egress import egress_env, read_egress, recorded_processes

ROOT = Path(__file__).resolve().parent.parent


def test_outbound_attempts_of_a_process_and_its_children_are_logged_and_refused(tmp_path: Path) -> None:
    log = tmp_path / "egress.jsonl"
    unix = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(unix))
    server.listen(1)
    child = ("import socket\n"
             "try:\n    socket.create_connection(('10.255.255.2', 443), timeout=1)\n"
             "except OSError as exc:\n    print(type(exc).__name__)\n")
    code = textwrap.dedent(f"""
        import os, socket, subprocess, sys
        u = socket.socket(socket.AF_UNIX)
        u.connect({str(unix)!r})
        u.close()
        t = socket.socket()
        t.settimeout(1)
        try:
            t.connect(("10.255.255.1", 80))
        except ConnectionRefusedError:
            print("refused")
        try:
            socket.getaddrinfo("huggingface.co", 443)
        except socket.gaierror:
            print("unresolved")
        env = dict(os.environ)  # as the daemon builds its trainer child's environment
        env["PYTHONPATH"] = os.pathsep.join([{str(ROOT)!r}, env.get("PYTHONPATH", "")])
        sys.stdout.flush()
        subprocess.run([sys.executable, "-c", {child!r}], env=env, check=True)
    """)
    try:
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **egress_env(log)},
                             capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused", "unresolved", "gaierror"]
    events = read_egress(log)
    assert [(e["event"], e["address"]) for e in events] == [
        ("socket.connect", "('10.255.255.1', 80)"),
        ("socket.getaddrinfo", "('huggingface.co', 443)"),
        ("socket.getaddrinfo", "('10.255.255.2', 443)"),
    ]
    assert events[0]["pid"] == events[1]["pid"] != events[2]["pid"]  # the child inherited the recorder
    assert not any(str(unix) in e["address"] for e in events)
    processes = recorded_processes(log)
    assert len(processes) == 2 and all(p.startswith(f"{sys.executable} -c ") for p in processes), processes


def test_without_the_log_variable_nothing_is_recorded(tmp_path: Path) -> None:
    log = tmp_path / "egress.jsonl"
    env = {**os.environ, **egress_env(log)}
    del env["RLHI_EGRESS_LOG"]
    code = "import socket\ntry:\n    socket.getaddrinfo('localhost', 80)\nexcept OSError:\n    pass\n"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert read_egress(log) == [] and not log.exists()
