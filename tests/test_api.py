"""The HTTP API over the real socket, on the real model: OpenAI compatibility and persistence."""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

import httpx
import openai
import pytest

from rlhi_local.client import Client
from tests.conftest import RunningDaemon, wait_for

Q = [{"role": "user", "content": "Name three colours."}]


def oai(daemon: RunningDaemon) -> openai.OpenAI:
    """The official `openai` package, unchanged, over the Unix socket."""
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)))
    return openai.OpenAI(base_url="http://rlhi/v1", api_key="unused", http_client=http)


def db_rows(daemon: RunningDaemon, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(daemon.db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_openai_package_non_streaming(daemon: RunningDaemon) -> None:
    r = oai(daemon).chat.completions.create(model="default", messages=Q, max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    ids = r.model_extra["rlhi"]  # type: ignore[index]
    rows = db_rows(daemon, "SELECT role, content, status, origin, model_fingerprint, completion_tokens "
                   "FROM messages WHERE conversation_id = ? ORDER BY created_at, rowid", (ids["conversation_id"],))
    assert rows[0][:2] == ("user", "Name three colours.")
    assert rows[1][:4] == ("assistant", r.choices[0].message.content, "complete", "model")
    assert rows[1][4] and len(rows[1][4]) == 64
    assert rows[1][5] == r.usage.completion_tokens


def test_openai_package_streaming_matches_non_streaming(daemon: RunningDaemon) -> None:
    client = oai(daemon)
    whole = client.chat.completions.create(model="default", messages=Q, max_tokens=16, temperature=0)
    stream = client.chat.completions.create(
        model="default", messages=Q, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: same answer either way
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert len({c.id for c in chunks}) == 1


def test_seed_makes_sampling_reproducible(client: Client) -> None:
    args = dict(max_tokens=20, temperature=1.0, top_p=0.95, seed=1234)
    a = client.chat(Q, **args)
    b = client.chat(Q, **args)
    assert a.text == b.text


def test_stop_sequence_is_honoured_and_not_emitted(client: Client) -> None:
    free = client.chat([{"role": "user", "content": "Count from 1 to 10, comma separated."}],
                       max_tokens=40, temperature=0)
    assert "3" in free.text
    cut = free.text[: free.text.index("3")]
    stopped = client.chat([{"role": "user", "content": "Count from 1 to 10, comma separated."}],
                          max_tokens=40, temperature=0, stop=["3"])
    assert stopped.text == cut
    assert stopped.finish_reason == "stop"


def test_conversation_named_by_header_continues_and_branches(client: Client, daemon: RunningDaemon) -> None:
    conv = "test-branching"
    first = client.chat([{"role": "user", "content": "Say one word."}], conversation_id=conv,
                        max_tokens=8, temperature=0)
    assert first.conversation_id == conv
    history = [{"role": "user", "content": "Say one word."}, {"role": "assistant", "content": first.text}]
    client.chat([*history, {"role": "user", "content": "Another word."}], conversation_id=conv, max_tokens=8)
    client.chat([*history, {"role": "user", "content": "A different one."}], conversation_id=conv, max_tokens=8)
    stored = client.conversation(conv)
    msgs = stored["messages"]
    assert len(msgs) == 6  # 1 question, 1 answer, 2 sibling follow-ups, their 2 answers
    followups = [m for m in msgs if m["content"] in ("Another word.", "A different one.")]
    assert {m["parent_id"] for m in followups} == {first.message_id}
    assert conv in [c["id"] for c in client.conversations()]


def test_metadata_names_the_conversation_and_user(daemon: RunningDaemon) -> None:
    r = oai(daemon).chat.completions.create(
        model="default", messages=Q, max_tokens=4, user="alice",
        metadata={"conversation_id": "meta-conv"},
    )
    assert r.model_extra["rlhi"]["conversation_id"] == "meta-conv"  # type: ignore[index]
    with Client(daemon.socket) as c:
        assert [x["id"] for x in c.conversations(user="alice")] == ["meta-conv"]
        assert "meta-conv" not in [x["id"] for x in c.conversations()]


def test_resent_history_is_stored_once(client: Client) -> None:
    first = client.chat([{"role": "user", "content": "Hello there"}], max_tokens=6, temperature=0)
    history = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first.text},
               {"role": "user", "content": "Tell me more"}]
    second = client.chat(history, max_tokens=6)
    assert second.conversation_id == first.conversation_id  # unnamed, matched by its history
    assert second.raw["rlhi"]["new_message_ids"] and len(second.raw["rlhi"]["new_message_ids"]) == 1
    assert client.conversation(first.conversation_id or "")["message_count"] == 4


def test_regenerate_and_edit_are_recorded(client: Client) -> None:
    conv = "test-regen"
    q = [{"role": "user", "content": "Give me a name for a cat."}]
    a = client.chat(q, conversation_id=conv, max_tokens=8)
    b = client.chat(q, conversation_id=conv, max_tokens=8)
    assert b.raw["rlhi"]["origin"] == "regenerate" and b.raw["rlhi"]["parent_id"] == a.raw["rlhi"]["parent_id"]
    edited = [*q, {"role": "assistant", "content": "Whiskers."}, {"role": "user", "content": "Thanks!"}]
    client.chat(edited, conversation_id=conv, max_tokens=4)
    msgs = client.conversation(conv)["messages"]
    edit = next(m for m in msgs if m["content"] == "Whiskers.")
    assert edit["origin"] == "user_edit" and edit["parent_id"] == a.raw["rlhi"]["parent_id"]


def test_off_the_record_is_answered_but_not_stored(client: Client, daemon: RunningDaemon) -> None:
    secret = "my off-the-record secret 9817"
    r = client.chat([{"role": "user", "content": secret}], off_record=True, max_tokens=4)
    assert r.text and r.raw["rlhi"]["stored"] is False
    assert db_rows(daemon, "SELECT count(*) FROM messages WHERE content LIKE ?", (f"%{secret}%",)) == [(0,)]


def test_delete_conversation(client: Client) -> None:
    r = client.chat([{"role": "user", "content": "delete me"}], conversation_id="test-del", max_tokens=2)
    assert r.conversation_id == "test-del"
    client.delete_conversation("test-del")
    assert "test-del" not in [c["id"] for c in client.conversations()]
    with pytest.raises(Exception, match="404"):
        client.conversation("test-del")


def test_client_disconnect_stops_generation_and_stores_partial(daemon: RunningDaemon) -> None:
    conv = "test-disconnect"
    with Client(daemon.socket) as c:
        stream = c.stream_chat([{"role": "user", "content": "Write a very long essay about rivers."}],
                               conversation_id=conv, max_tokens=2000, temperature=0)
        got = ""
        for chunk in stream:
            got += chunk.text
            if len(got) > 40:
                break
        stream.close()  # closes the HTTP response: the daemon sees the client go

    def stored() -> list[tuple[Any, ...]]:
        return db_rows(daemon, "SELECT status, finish_reason, content, completion_tokens FROM messages "
                       "WHERE conversation_id = ? AND role = 'assistant'", (conv,))

    assert wait_for(lambda: stored() and stored()[0][0] != "streaming", timeout=60)
    status, reason, content, tokens = stored()[0]
    assert (status, reason) == ("incomplete", "cancelled")
    assert content.startswith(got[:40]) and tokens < 2000
    with Client(daemon.socket) as c:
        assert c.health()["status"] == "ok"


def test_two_clients_at_once_are_both_served_in_full(daemon: RunningDaemon) -> None:
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    prompts = ["List five animals.", "List five cities."]

    def run(i: int) -> None:
        try:
            with Client(daemon.socket) as c:
                parts = [ch.text for ch in c.stream_chat([{"role": "user", "content": prompts[i]}],
                                                         max_tokens=40, temperature=0)]
                results[i] = "".join(parts)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    with Client(daemon.socket) as c:
        for i, prompt in enumerate(prompts):
            alone = c.chat([{"role": "user", "content": prompt}], max_tokens=40, temperature=0)
            assert results[i] == alone.text  # full and not mixed with the other client's answer


def test_models_health_and_openapi(daemon: RunningDaemon) -> None:
    models = oai(daemon).models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]
    with Client(daemon.socket) as c:
        h = c.health()
    assert h["model"]["n_ctx"] >= 4096 and h["model"]["embedded"] is True
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://rlhi")
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/chat/completions", "/v1/models", "/health", "/v1/conversations",
                 "/v1/conversations/{conversation_id}"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("ChatCompletionRequest")


def test_curl_over_the_unix_socket(daemon: RunningDaemon) -> None:
    import subprocess

    body = json.dumps({"model": "default", "messages": Q, "max_tokens": 5})
    out = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(daemon.socket), "http://localhost/v1/chat/completions",
         "-H", "Content-Type: application/json", "-d", body],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert json.loads(out)["choices"][0]["message"]["content"]


def test_feedback_edit_and_rename_endpoints(client: Client, daemon: RunningDaemon) -> None:
    from rlhi_local.errors import APIError

    conv = "test-actions"
    q = [{"role": "user", "content": "Suggest a dog name."}]
    a = client.chat(q, conversation_id=conv, max_tokens=6)
    with pytest.raises(APIError) as info:
        client.feedback(a.message_id or "", "choice")  # one answer: nothing to choose between
    assert info.value.status_code == 400 and "two or more" in info.value.message
    b = client.chat(q, conversation_id=conv, max_tokens=6)
    client.feedback(a.message_id or "", "thumbs_down")
    client.feedback(b.message_id or "", "choice")
    edit = client.edit_message(a.message_id or "", "Biscuit.")
    assert edit["origin"] == "user_edit" and edit["parent_id"] == a.raw["rlhi"]["parent_id"]
    assert client.rename_conversation(conv, "Dog names")["title"] == "Dog names"
    msgs = {m["id"]: m for m in client.conversation(conv)["messages"]}
    assert msgs[a.message_id]["feedback"] == ["thumbs_down", "edit"]  # it was also edited
    assert msgs[b.message_id]["feedback"] == ["choice"]
    rows = db_rows(daemon, "SELECT kind, source FROM feedback WHERE message_id IN (?, ?) ORDER BY rowid",
                   (a.message_id, b.message_id))
    assert rows == [("thumbs_down", "user"), ("choice", "user"), ("edit", "user")]
    for bad in (lambda: client.feedback("msg_nope", "thumbs_up"),
                lambda: client.edit_message("msg_nope", "x"),
                lambda: client.rename_conversation("nope-conv", "x")):
        with pytest.raises(APIError) as info:
            bad()
        assert info.value.status_code == 404
    with pytest.raises(APIError) as info:
        client.feedback(a.message_id or "", "love")
    assert info.value.status_code == 400
    with pytest.raises(APIError) as info:
        client.edit_message(a.raw["rlhi"]["parent_id"], "edit a question")
    assert info.value.status_code == 400 and "only answers" in info.value.message
