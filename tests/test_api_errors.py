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


# -- More bad input: each is a 4xx in the OpenAI error shape, nothing is stored, and the daemon
#    answers a normal request right after.

def raw(text: str) -> bytes:
    """A body written by hand, for what json.dumps will not write (NaN, Infinity, bad escapes)."""
    return text.encode("utf-8", "surrogatepass")


MSG = '"messages": [{"role": "user", "content": "x"}]'
MORE_CASES = [
    ("deep json in messages", b'{"model": "default", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, []),
    ("deep object in metadata", raw('{"model": "default", ' + MSG + ', "metadata": ' + '{"a": ' * 50_000 + "1"
                                    + "}" * 50_000 + "}"), 400, []),
    ("truncated utf-8", b'{"model": "default", "messages": [{"role": "user", "content": "\xc3"}]}', 400, []),
    ("encoded surrogate", b'{"model": "default", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', 400, []),
    ("overlong utf-8", b'{"model": "default", "messages": [{"role": "user", "content": "\xc0\xaf"}]}', 400, []),
    ("invalid utf-8 in a key", b'{"model": "default", ' + raw(MSG) + b', "\xff": 1}', 400, []),
    ("bad escape", raw('{"model": "default", "messages": [{"role": "user", "content": "\\x41"}]}'), 400, []),
    ("lone surrogate in stop", raw('{"model": "default", ' + MSG + ', "stop": ["\\udc00"]}'), 400, ["surrogate"]),
    ("lone surrogate in a part", raw('{"model": "default", "messages": [{"role": "user", "content": '
                                     '[{"type": "text", "text": "\\ud83d"}]}]}'), 400, ["unicode"]),
    ("negative max_completion_tokens", with_(max_completion_tokens=-1), 400, ["max_completion_tokens"]),
    ("max_tokens past int64, negative", with_(max_tokens=-(10**30)), 400, ["max_tokens"]),
    ("fractional max_tokens", with_(max_tokens=2.5), 400, ["max_tokens"]),
    ("max_tokens an object", with_(max_tokens={"n": 5}), 400, ["max_tokens"]),
    ("negative temperature", with_(temperature=-0.1), 400, ["temperature"]),
    ("infinite temperature", raw('{"model": "default", ' + MSG + ', "temperature": Infinity}'), 400, ["temperature"]),
    ("temperature a string", with_(temperature="hot"), 400, ["temperature"]),
    ("top_p above 1", with_(top_p=1.5), 400, ["top_p"]),
    ("negative top_k", with_(top_k=-1), 400, ["top_k"]),
    ("huge top_k", with_(top_k=10**9), 400, ["top_k"]),
    ("min_p above 1", with_(min_p=2), 400, ["min_p"]),
    ("absurd presence_penalty", with_(presence_penalty=1e300), 400, ["presence_penalty"]),
    ("-inf frequency_penalty", raw('{"model": "default", ' + MSG + ', "frequency_penalty": -Infinity}'), 400,
     ["frequency_penalty"]),
    ("seed below int64", with_(seed=-(2**63) - 1), 400, ["seed"]),
    ("seed a float", with_(seed=1.5), 400, ["seed"]),
    ("n=0", with_(n=0), 400, ["n"]),
    ("huge n", with_(n=10**6), 400, ["n"]),
    ("stop too long", with_(stop="x" * 257), 400, ["stop"]),
    ("stop not strings", with_(stop=[1, 2]), 400, ["stop"]),
    ("stream not a boolean", with_(stream="yes"), 400, ["stream"]),
    ("stream as 1", with_(stream=1), 400, ["stream"]),  # booleans are strict: 1 is not true
    ("10k messages", with_(messages=[{"role": "user", "content": "x"}] * 10_000), 400, ["messages"]),
    ("messages an object", with_(messages={"role": "user", "content": "x"}), 400, ["messages"]),
    ("message a string", with_(messages=["hi"]), 400, []),
    ("text part without text", with_(messages=[{"role": "user", "content": [{"type": "text"}]}]), 400, []),
    ("content too long", with_(messages=[{"role": "user", "content": "x" * 1_000_001}]), 400, ["content"]),
    ("too many metadata keys", with_(metadata={str(i): "x" for i in range(17)}), 400, ["metadata"]),
    ("metadata value not a string", with_(metadata={"a": 1}), 400, []),
    ("metadata key too long", with_(metadata={"k" * 65: "x"}), 400, ["metadata"]),
    ("conversation id with NUL", with_(metadata={"conversation_id": "a\x00b"}), 400, []),
    ("adapter not a version", with_(metadata={"adapter": "v1; DROP TABLE"}), 400, []),
    ("empty model", with_(model=""), 400, ["model"]),
    ("model a list", with_(model=["default"]), 400, ["model"]),
    ("user with NUL", with_(user="a\x00b"), 400, ["user"]),
    ("user too long", with_(user="u" * 129), 400, ["user"]),
]


@pytest.mark.parametrize("name, body, status, needles", MORE_CASES, ids=[c[0] for c in MORE_CASES])
def test_more_bad_requests_are_refused_and_the_daemon_answers_next(
    http: httpx.Client, daemon: RunningDaemon, name: str, body: bytes, status: int, needles: list[str]
) -> None:
    before = message_count(daemon)
    expect_error(post_raw(http, body), status, *needles)
    assert message_count(daemon) == before
    answer = post_raw(http, with_(max_tokens=1))
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 1, answer.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml", None])
def test_a_body_that_is_not_sent_as_json_is_refused_naming_the_content_type(
    http: httpx.Client, daemon: RunningDaemon, content_type: str | None
) -> None:
    before = message_count(daemon)
    headers = {"content-type": content_type} if content_type else {}
    r = http.post("/v1/chat/completions", content=with_(), headers=headers)
    err = expect_error(r, 400, "Content-Type: application/json")
    assert repr(content_type or "") in err["message"]
    assert message_count(daemon) == before
    assert post_raw(http, with_(max_tokens=1)).status_code == 200


def test_bad_bytes_in_headers_query_and_path(http: httpx.Client) -> None:
    expect_error(post_raw(http, with_(), headers={"x-rlhi-conversation": b"\xff\xfe"}), 400,  # type: ignore[dict-item]
                 "x-rlhi-conversation")
    expect_error(http.get("/v1/conversations", params={"user": "\x00"}), 400, "query.user")
    expect_error(http.get("/v1/conversations?user=%FF%FE"), 400, "query.user")
    expect_error(http.get("/v1/conversations/%00"), 404)
    expect_error(http.get("/v1/conversations/" + "a" * 30_000), 404)
    expect_error(http.post("/v1/adapters/99999999999999999999999999/activate"), 400, "version")  # was a 500
    expect_error(http.post("/v1/adapters/-1/activate"), 400, "version")
    assert http.get("/health", headers={"x-big": "a" * 100_000}).json()["status"] == "ok"


def test_nul_and_control_characters_round_trip_through_the_store(http: httpx.Client, daemon: RunningDaemon) -> None:
    """Binary in text fields is stored and given back byte for byte, never mangled or refused."""
    nasty = "NUL\x00 BEL\x07 ESC\x1b[31m DEL\x7f NEL\x85 LS\u2028 BOM\ufeff 🙂 end"
    r = post_raw(http, with_(messages=[{"role": "user", "content": nasty}], max_tokens=1))
    assert r.status_code == 200, r.text
    conv_id = r.json()["rlhi"]["conversation_id"]
    title = "title\x00\x01\x02"
    assert http.patch(f"/v1/conversations/{conv_id}", json={"title": title}).json()["title"] == title
    answer_id = r.json()["rlhi"]["message_id"]
    edit = http.post(f"/v1/messages/{answer_id}/edit", json={"content": "edited\x00\x1f"})
    assert edit.status_code == 200 and edit.json()["content"] == "edited\x00\x1f"
    stored = http.get(f"/v1/conversations/{conv_id}").json()
    assert stored["title"] == title
    assert [m["content"] for m in stored["messages"] if m["role"] == "user"] == [nasty]
    conn = sqlite3.connect(daemon.db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        [(content,)] = conn.execute("SELECT content FROM messages WHERE conversation_id = ? AND role = 'user'",
                                    [conv_id]).fetchall()
        assert content == nasty
    finally:
        conn.close()


def test_a_huge_prompt_is_refused_without_tokenizing_it(http: httpx.Client, daemon: RunningDaemon) -> None:
    """Regression: a 3 MB message was tokenized on the event loop before the context check,
    stalling every other request for ~20 s; now anything that cannot fit is refused unread."""
    body = with_(messages=[{"role": "user", "content": "x" * 1_000_000}] * 3)
    assert len(body) <= daemon.daemon.config.server.max_body_bytes
    err = expect_error(post_raw(http, body), 400, "context_length_exceeded")
    assert "at least" in err["message"] and "4096" in err["message"]
    assert post_raw(http, with_(max_tokens=1)).status_code == 200
