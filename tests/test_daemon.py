"""The daemon as a process: CLI lifecycle, start-up failures, permissions, one per socket, TCP."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from rlhi_local.client import Client
from rlhi_local.config import load_config, socket_path
from rlhi_local.errors import DaemonError, DaemonRunningError
from tests.conftest import rlhi_cmd, start_thread_daemon, stop_thread_daemon, wait_for


def sock() -> Path:
    return socket_path(load_config())


@pytest.fixture()
def cli_daemon(rlhi_home: Path) -> Iterator[Path]:
    """`rlhi ask` starts a background daemon; make sure it is stopped afterwards."""
    yield rlhi_home
    rlhi_cmd("stop")


def test_ask_starts_a_daemon_streams_and_stop_ends_it(cli_daemon: Path) -> None:
    with pytest.raises(DaemonError, match="No rlhi daemon"):
        Client(sock()).health()
    out = rlhi_cmd("ask", "Say hello.", "--max-tokens", "8", "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    status = rlhi_cmd("status")
    assert status.returncode == 0 and "SmolLM2-135M-Instruct.Q4_1" in status.stdout
    again = rlhi_cmd("ask", "Say hello.", "--max-tokens", "8", "--temperature", "0", "--no-start")
    assert again.stdout == out.stdout  # the same daemon answers, greedily the same
    with Client(sock()) as c:
        convs = c.conversations()
    assert len(convs) == 2 and all(x["title"] == "Say hello." for x in convs)
    log = cli_daemon / "data" / "logs" / "daemon.log"
    assert "chat conversation=" in log.read_text()
    assert "Say hello" not in log.read_text()  # user text stays out of INFO logs
    stopped = rlhi_cmd("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not sock().exists()
    assert rlhi_cmd("status").returncode == 1


def test_chat_reads_lines_from_a_pipe(cli_daemon: Path) -> None:
    # The daemon that `chat` starts inherits the environment: keep its answers short.
    out = rlhi_cmd("chat", input="Hi!\nWhat did I just say?\n", env={"RLHI_GENERATION__MAX_TOKENS": "16"})
    assert out.returncode == 0, out.stderr
    with Client(sock()) as c:
        convs = c.conversations()
        assert len(convs) == 1  # one conversation, continued turn by turn
        assert c.conversation(convs[0]["id"])["message_count"] == 4


def test_missing_model_exits_non_zero_naming_file_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    out = rlhi_cmd("--model", str(missing), "serve", timeout=60)
    assert out.returncode != 0
    assert str(missing) in out.stderr and "model.path" in out.stderr
    assert not sock().exists()


@pytest.mark.parametrize("content", [b"PK\x03\x04 not a gguf" * 10, b"GGUF" + os.urandom(4096)],
                         ids=["not-gguf", "truncated-gguf"])
def test_corrupt_model_exits_non_zero_naming_file(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    out = rlhi_cmd("--model", str(bad), "serve", timeout=60)
    assert out.returncode != 0
    assert str(bad) in out.stderr
    assert "Traceback" not in out.stderr


def test_permissions_socket_0600_and_data_dir_0700(rlhi_home: Path) -> None:
    data = rlhi_home / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # too open: repaired at start
    running = start_thread_daemon(rlhi_home)
    try:
        assert stat.S_IMODE(running.socket.stat().st_mode) == 0o600
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE(running.socket.parent.stat().st_mode) == 0o700
        for f in data.glob("rlhi.db*"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    finally:
        stop_thread_daemon(running)


def test_second_user_cannot_connect(rlhi_home: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root to act as a second user")
    running = start_thread_daemon(rlhi_home)
    try:
        code = (
            "import os, socket, sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            f"    s.connect({str(running.socket)!r})\n"
            "except PermissionError:\n"
            "    sys.exit(13)\n"
            "sys.exit(0)\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
        assert result.returncode == 13, result.stderr
    finally:
        stop_thread_daemon(running)


def test_second_daemon_is_refused_clearly(rlhi_home: Path) -> None:
    running = start_thread_daemon(rlhi_home)
    try:
        out = rlhi_cmd("serve", timeout=60)
        assert out.returncode != 0
        assert "already serves" in out.stderr and "rlhi stop" in out.stderr
        with pytest.raises(DaemonRunningError):
            start_thread_daemon(rlhi_home)
        with Client(running.socket) as c:
            assert c.health()["status"] == "ok"  # the first one is untouched
    finally:
        stop_thread_daemon(running)


def test_stale_socket_from_a_killed_daemon_is_replaced(rlhi_home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "rlhi_local", "serve"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _healthy(sock()), timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert sock().exists()  # left behind by the kill
        with pytest.raises(DaemonError):
            Client(sock()).health()
        running = start_thread_daemon(rlhi_home)
        try:
            with Client(running.socket) as c:
                assert c.health()["status"] == "ok"
        finally:
            stop_thread_daemon(running)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_stops_cleanly(rlhi_home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "rlhi_local", "serve"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: _healthy(sock()), timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not sock().exists()


def test_socket_path_too_long_is_explained(rlhi_home: Path) -> None:
    long = rlhi_home / ("x" * 120) / "rlhi.sock"
    out = rlhi_cmd("--socket", str(long), "serve", timeout=60)
    assert out.returncode != 0 and "server.socket" in out.stderr


def test_loopback_tcp_requires_the_token(rlhi_home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    running = start_thread_daemon(rlhi_home, {"server": {"tcp_port": port}})
    try:
        token = (rlhi_home / "data" / "token").read_text().strip()
        assert stat.S_IMODE((rlhi_home / "data" / "token").stat().st_mode) == 0o600
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/health").status_code == 401
        assert httpx.get(f"{base}/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(f"{base}/health", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["status"] == "ok"
        with Client(running.socket) as c:  # the socket needs no token
            assert c.health()["status"] == "ok"
    finally:
        stop_thread_daemon(running)


def _healthy(path: Path) -> bool:
    try:
        with Client(path) as c:
            return c.health()["status"] == "ok"
    except DaemonError:
        return False


def test_shutdown_mid_answer_stops_promptly_and_keeps_the_partial_answer(rlhi_home: Path) -> None:
    import threading

    from rlhi_local.store import Store

    running = start_thread_daemon(rlhi_home)
    errors: list[BaseException] = []

    def long_answer() -> None:
        try:
            with Client(running.socket) as c:
                c.chat([{"role": "user", "content": "Write a very long essay about mountains."}],
                       conversation_id="shutdown", max_tokens=3000, temperature=0)
        except BaseException as exc:  # noqa: BLE001 - the daemon went away: expected
            errors.append(exc)

    t = threading.Thread(target=long_answer)
    t.start()
    with Client(running.socket) as c:
        assert wait_for(lambda: c.health()["queue"]["busy"], timeout=30)
    time.sleep(0.5)
    started = time.monotonic()
    stop_thread_daemon(running)
    assert time.monotonic() - started < 20
    t.join(30)
    store = Store(rlhi_home / "data" / "rlhi.db")
    answer = [m for m in store.get_conversation("local", "shutdown").messages if m.role == "assistant"][0]
    assert answer.status == "incomplete" and answer.content
    assert store.integrity_check() == "ok"
