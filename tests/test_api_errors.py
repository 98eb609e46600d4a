"""Bad input gets a clear OpenAI-shaped error, nothing is half-stored, and the daemon keeps serving."""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any, Iterator

import httpx
import pytest

from rlhi_local.client import Client
from tests.conftest import RunningDaemon, start_thread_daemon, stop_thread_daemon

GOOD = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture()
def http(daemon: RunningDaemon) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://rlhi",
                      timeout=120) as h:
        yield h


def message_count(daemon: RunningDaemon) -> int:
    conn = sqlite3.connect(daemon.db_path)
    try:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


def post_raw(http: httpx.Client, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post("/v1/chat/completions", content=content,
                     headers={"content-type": "application/json", **(headers or {})})


def expect_error(r: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    for needle in needles:
        assert needle in err["message"] or needle == err.get("param") or needle == err.get("code"), err
    return err


def with_(**changes: Any) -> bytes:
    body = {**GOOD, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


CASES = [
    ("malformed json", b'{"model": "default", "messages": [', 400, ["not valid JSON"]),
    ("not an object", b'[1, 2, 3]', 400, []),
    ("empty body", b"", 400, []),
    ("invalid utf-8", b'{"model": "default", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, []),
    ("deep json", b'{"model": "default", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, []),
    ("lone surrogate", b'{"model": "default", "messages": [{"role": "user", "content": "a\\ud800b"}]}', 400, ["surrogate"]),
    ("missing messages", with_(messages=...), 400, ["messages"]),
    ("empty messages", with_(messages=[]), 400, ["messages"]),
    ("wrong role", with_(messages=[{"role": "wizard", "content": "x"}]), 400, ["messages.0.role"]),
    ("content wrong type", with_(messages=[{"role": "user", "content": 42}]), 400, []),
    ("image part", with_(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400, []),
    ("last message not user", with_(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), 400, ["last message"]),
    ("negative max_tokens", with_(max_tokens=-5), 400, ["max_tokens"]),
    ("zero max_tokens", with_(max_tokens=0), 400, ["max_tokens"]),
    ("string max_tokens", with_(max_tokens="many"), 400, ["max_tokens"]),
    ("absurd temperature", with_(temperature=1e9), 400, ["temperature"]),
    ("nan top_p", b'{"model": "default", "messages": [{"role": "user", "content": "x"}], "top_p": NaN}', 400, []),
    ("negative top_p", with_(top_p=-1), 400, ["top_p"]),
    ("huge seed", with_(seed=10**30), 400, ["seed"]),
    ("n=2", with_(n=2), 400, ["n"]),
    ("too many stops", with_(stop=["a", "b", "c", "d", "e"]), 400, ["stop"]),
    ("bad user id", with_(user="../../etc"), 400, ["user"]),
    ("binary in text", with_(messages=[{"role": "user", "content": "\x00\x01\x02 bytes"}], max_tokens=2), 200, []),
]


@pytest.mark.parametrize("name, body, status, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_refused_clearly_and_nothing_is_stored(
    http: httpx.Client, daemon: RunningDaemon, name: str, body: bytes, status: int, needles: list[str]
) -> None:
    before = message_count(daemon)
    r = post_raw(http, body)
    if status == 200:
        assert r.status_code == 200, r.text
    else:
        expect_error(r, status, *needles)
        assert message_count(daemon) == before
    assert http.get("/health").json()["status"] == "ok"


def test_unknown_model_is_404_with_the_served_name(http: httpx.Client) -> None:
    err = expect_error(post_raw(http, with_(model="gpt-9")), 404, "model_not_found")
    assert "SmolLM2-135M-Instruct.Q4_1" in err["message"]


def test_oversized_body_is_413(http: httpx.Client, daemon: RunningDaemon) -> None:
    limit = daemon.daemon.config.server.max_body_bytes
    big = with_(messages=[{"role": "user", "content": "x" * (limit + 10)}])
    expect_error(post_raw(http, big), 413, "server.max_body_bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    r = http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    expect_error(r, 413)


def test_prompt_longer_than_context_is_400_naming_the_limit(http: httpx.Client, daemon: RunningDaemon) -> None:
    before = message_count(daemon)
    long = " ".join(["word"] * 6000)
    err = expect_error(post_raw(http, with_(messages=[{"role": "user", "content": long}])), 400,
                       "context_length_exceeded")
    assert "4096" in err["message"]
    assert message_count(daemon) == before


def test_huge_max_tokens_is_capped_by_the_context(http: httpx.Client) -> None:
    r = post_raw(http, with_(max_tokens=10**12, messages=[{"role": "user", "content": "Say hi."}]))
    assert r.status_code == 200
    assert r.json()["usage"]["total_tokens"] <= 4096


def test_unknown_route_and_method(http: httpx.Client) -> None:
    expect_error(http.get("/v1/nothing"), 404)
    expect_error(http.put("/v1/models"), 405)
    expect_error(http.get("/v1/conversations/does-not-exist"), 404)
    expect_error(http.get("/v1/conversations", params={"limit": -1}), 400)


def test_bad_conversation_header(http: httpx.Client) -> None:
    expect_error(post_raw(http, with_(), headers={"x-rlhi-conversation": "bad id with spaces"}), 400)


def test_full_queue_answers_503_and_recovers(rlhi_home: Any) -> None:
    running = start_thread_daemon(rlhi_home, {"server": {"max_queue": 1}})
    try:
        started = threading.Event()
        results: list[int] = []

        def long_stream() -> None:
            with Client(running.socket) as c:
                for _ in c.stream_chat([{"role": "user", "content": "Write a long story."}],
                                       max_tokens=300, temperature=0):
                    started.set()

        def waiting() -> None:
            with Client(running.socket) as c:
                c.chat([{"role": "user", "content": "hi"}], max_tokens=2)
                results.append(200)

        t1 = threading.Thread(target=long_stream)
        t1.start()
        assert started.wait(60)
        t2 = threading.Thread(target=waiting)
        t2.start()
        with Client(running.socket) as c:
            assert _wait_waiting(c, 1)
            with pytest.raises(Exception) as info:
                c.chat([{"role": "user", "content": "one too many"}], max_tokens=2)
            assert getattr(info.value, "status_code", None) == 503
            assert "server.max_queue" in str(info.value)
        t1.join(120)
        t2.join(120)
        assert results == [200]
        with Client(running.socket) as c:
            assert c.chat([{"role": "user", "content": "hi"}], max_tokens=2).text is not None
    finally:
        stop_thread_daemon(running)


def _wait_waiting(c: Client, n: int) -> bool:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if c.health()["queue"]["waiting"] >= n:
            return True
        time.sleep(0.02)
    return False
