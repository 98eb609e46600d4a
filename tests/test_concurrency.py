"""Eight clients at once against one private daemon: nothing fails, nothing is lost or mixed.

Each client is its own user with its own conversations (two turns each, so prompts stay short:
the model re-reads a whole prompt whenever another client ran in between) and sends 50 requests:
streamed chats whose prompts carry the client's marker (60%), mixed with thumbs, edits of its last
answer, persona edits and reads of its conversation. Halfway through, one client promotes an adapter (a
registered random LoRA) for its user while the others keep streaming. Afterwards the database is
read directly: every turn is stored exactly once, each stored answer is exactly the text its
client received, in that client's conversation, and only the promoted user's later answers record
the adapter. The run's size and duration go to benchmarks/results/concurrency_report.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhi_local.client import AsyncClient
from rlhi_local.errors import RlhiError
from tests.conftest import RunningDaemon, start_thread_daemon, stop_thread_daemon
from tests.test_engine_adapter import write_lora

CLIENTS = 8
REQUESTS = 50
TURNS = 2
"""Chats per conversation before the client starts a new one (the second resends the first)."""
PROMOTED = 3
"""The client whose user gets the adapter, at request PROMOTE_AT."""
PROMOTE_AT = 25
REPORT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "concurrency_report.json"


@dataclass
class Answer:
    conversation_id: str
    message_id: str
    question: str
    text: str
    adapter_version: int | None
    promoted: bool
    """Sent after this client's user got the adapter (only ever true for PROMOTED)."""


@dataclass
class ClientLog:
    user: str
    answers: list[Answer] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    """Messages each conversation must hold: 2 per chat (question, answer), 1 per edit."""
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


def operation(i: int, k: int) -> str:
    if i == PROMOTED and k == PROMOTE_AT:
        return "promote"
    return {3: "thumbs", 6: "edit", 8: "persona", 9: "read"}.get(k % 10, "chat")


async def run_client(i: int, socket: Path, out: ClientLog) -> None:
    marker = f"client-{i}"
    promoted = False
    history: list[dict[str, str]] = []
    conversation = f"{marker}-0"
    n_conversations = 0
    async with AsyncClient(socket, timeout=300) as c:
        for k in range(REQUESTS):
            op = operation(i, k)
            last = out.answers[-1] if out.answers else None
            out.requests += 1
            try:
                if op == "chat":
                    if len(history) >= 2 * TURNS:
                        n_conversations += 1
                        conversation, history = f"{marker}-{n_conversations}", []
                    question = f"[{marker}] Request {k}: name one {('fruit', 'colour', 'city')[k % 3]}."
                    history.append({"role": "user", "content": question})
                    started = time.perf_counter()
                    text, ids = "", None
                    async for chunk in c.stream_chat(history, conversation_id=conversation, user=out.user,
                                                     max_tokens=4 + k % 3, temperature=0.7):
                        if chunk.message_id is not None:
                            ids = chunk
                        text += chunk.text
                    out.latencies_ms.append((time.perf_counter() - started) * 1000)
                    assert ids is not None and ids.conversation_id == conversation
                    history.append({"role": "assistant", "content": text})
                    out.rows[conversation] = out.rows.get(conversation, 0) + 2
                    out.answers.append(Answer(conversation, str(ids.message_id), question, text,
                                              ids.adapter_version, promoted))
                elif op == "thumbs" and last is not None:
                    await c.feedback(last.message_id, ("thumbs_up", "thumbs_down")[k % 2], user=out.user)
                elif op == "edit" and last is not None:
                    edit = await c.edit_message(last.message_id, f"[{marker}] my better answer {k}", user=out.user)
                    assert edit["conversation_id"] == last.conversation_id
                    out.rows[last.conversation_id] += 1
                elif op == "read" and last is not None:
                    stored = await c.conversation(last.conversation_id, user=out.user)
                    assert last.text in [m["content"] for m in stored["messages"]]
                elif op == "persona":
                    await c.set_persona([{"text": f"I go by {marker}."}, {"text": f"I like topic {k}."}],
                                        user=out.user)
                elif op == "promote":
                    await c.activate_adapter(1, user=out.user)
                    promoted = True
            except (RlhiError, AssertionError) as exc:
                out.failures.append(f"{marker} request {k} ({op}): {type(exc).__name__}: {exc}")


async def watch_queue(socket: Path, stop: asyncio.Event, seen: list[int]) -> None:
    """The deepest queue /health reports during the run (health must answer under load too)."""
    async with AsyncClient(socket, timeout=60) as c:
        while not stop.is_set():
            seen.append(int((await c.health())["queue"]["waiting"]))
            await asyncio.sleep(0.5)


async def run_all(socket: Path, logs: list[ClientLog], depths: list[int]) -> None:
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_queue(socket, stop, depths))
    await asyncio.gather(*(run_client(i, socket, log) for i, log in enumerate(logs)))
    stop.set()
    await watcher


def register_adapter(d: RunningDaemon, user: str) -> None:
    """Version 1 of `user`: a random LoRA for the served base, registered as a candidate."""
    state = d.daemon._state
    folder = d.home / "data" / "adapters" / user / "v1"
    folder.mkdir(parents=True)
    write_lora(folder / "adapter.gguf", seed=3)
    state.store.add_adapter(user, 1, state.spec.fingerprint, str(folder), [], {}, "candidate")


def test_eight_clients_fifty_requests_each_nothing_fails_lost_or_mixed(rlhi_home: Path) -> None:
    # Eight clients have at most one request each in flight: a queue of 8 holds them all. One
    # thread: on a busy shared box llama.cpp's spinning worker threads slow down many times over.
    running = start_thread_daemon(rlhi_home, {"server": {"max_queue": CLIENTS}, "model": {"n_threads": 1}})
    logs = [ClientLog(user=f"user{i}") for i in range(CLIENTS)]
    depths: list[int] = []
    try:
        register_adapter(running, logs[PROMOTED].user)
        started = time.perf_counter()
        asyncio.run(run_all(running.socket, logs, depths))
        duration = time.perf_counter() - started
    finally:
        stop_thread_daemon(running)

    failures = [f for log in logs for f in log.failures]
    chats = sorted(ms for log in logs for ms in log.latencies_ms)
    report = {
        "clients": CLIENTS, "requests_per_client": REQUESTS,
        "requests": sum(log.requests for log in logs), "chats": len(chats),
        "failed": len(failures), "duration_s": round(duration, 2),
        "requests_per_s": round(sum(log.requests for log in logs) / duration, 2),
        "chat_latency_ms": {"p50": round(chats[len(chats) // 2], 1), "p95": round(chats[int(len(chats) * 0.95)], 1),
                            "max": round(chats[-1], 1)},
        "max_queue_waiting_seen": max(depths, default=0), "server.max_queue": CLIENTS,
        # Other work on the machine stretches every timing above: say how busy it was.
        "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    assert failures == []
    db = sqlite3.connect(f"file:{running.db_path}?mode=ro", uri=True)
    try:
        check_store(db, logs)
    finally:
        db.close()


def check_store(db: sqlite3.Connection, logs: list[ClientLog]) -> None:
    for log in logs:
        stored = dict(db.execute(
            "SELECT c.id, count(m.id) FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id "
            "WHERE c.user_id = ? GROUP BY c.id", [log.user]).fetchall())
        assert stored == log.rows, f"{log.user}: rows per conversation"
        for a in log.answers:
            row = db.execute(
                "SELECT m.conversation_id, m.content, m.status, m.adapter_version, p.content, p.role "
                "FROM messages m JOIN messages p ON p.id = m.parent_id WHERE m.id = ?", [a.message_id]).fetchone()
            assert row is not None, a
            conversation, content, status, adapter, question, role = row
            # The stored answer is the very text this client received, under this client's question.
            assert (conversation, content, status) == (a.conversation_id, a.text, "complete"), a
            assert (question, role) == (a.question, "user"), a
            want = 1 if a.promoted else None
            assert a.adapter_version == want and adapter == (None if want is None else str(want)), a
    promoted = logs[PROMOTED].answers
    assert any(a.promoted for a in promoted) and any(not a.promoted for a in promoted)
    total = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert total == sum(sum(log.rows.values()) for log in logs)
