"""Off the record, from every surface (API `metadata.off_record`, the `x-rlhi-off-record` header
of `rlhi ask --off-record` and of F9 in the chat, which streams): answered, but nothing of it is stored, mined or learned from, and across a
daemon restart its words are in no file under RLHI_HOME. A stored conversation with its own
marker, chatted alongside, shows that the same checks do find what is stored.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from rlhi_local.cli import cli
from rlhi_local.client import Client
from tests.conftest import start_thread_daemon, stop_thread_daemon, wait_for
from tests.test_tui import FAST, SIZE, connected, send, until
from tui.app import ChatApp
from tui.screens import EditScreen
from tui.widgets import ChatView


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql, params).fetchall()


def files_holding(home: Path, text: str) -> list[str]:
    needle = text.encode()
    return sorted(str(p) for p in home.rglob("*") if p.is_file() and needle in p.read_bytes())


async def chat_off_record_in_the_ui(socket: Path, marker: str) -> None:
    app = ChatApp(socket, user="t-off", **{**FAST, "max_tokens": 4})
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await connected(pilot)
        await pilot.press("f9")
        await until(pilot, lambda: app.off_record and app.status.off_record)
        assert "off the record" in str(app.status.render())
        await send(pilot, f"My code word is {marker}. I prefer very short answers.")
        await send(pilot, "Say my code word again.")
        # The conversation goes on in memory (the history is resent with the header each time).
        assert [m["role"] for m in app.path] == ["user", "assistant", "user", "assistant"]
        assert all(m["off_record"] for m in app.path) and app.conversation_id is None
        answer = app.query_one(ChatView).boxes[1]
        assert "off the record" in str(answer.border_title)
        # Nothing here can teach the model: edit, regenerate, thumbs and prefer are off; copy is not.
        answer.focus()
        await pilot.press("e")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, EditScreen)
        assert [answer.check_action(a, ()) for a in ("edit", "regenerate", "thumbs_up", "thumbs_down", "copy")] \
            == [False, False, False, False, True]
        # Leaving it drops it for good.
        await pilot.press("ctrl+n")
        await until(pilot, lambda: not app.off_record and not app.path)
        assert app.messages == [] and not app.status.off_record
        assert app.client is not None and await app.client.conversations(user="t-off") == []


def test_off_record_is_answered_but_leaves_no_trace(rlhi_home: Path) -> None:
    marker = f"Qz{uuid.uuid4().hex[:12]}"
    control = f"Cq{uuid.uuid4().hex[:12]}"
    flags = {"learning": {"mining_delay_s": 0.1}}
    running = start_thread_daemon(rlhi_home, flags)
    db = running.db_path
    try:
        with Client(running.socket) as c:
            # The API's `metadata.off_record` (the header goes with the CLI's and the UI's requests),
            # on a history a follow-up detector and persona miner would learn from if it were stored.
            history = [{"role": "user", "content": f"My code word is {marker}. I prefer very short answers."},
                       {"role": "assistant", "content": f"Noted, {marker}. Here is a long answer about it."},
                       {"role": "user", "content": f"Too long, {marker}. Answer in one word."}]
            answer = c.chat(history, metadata={"off_record": "true"}, max_tokens=4)
            assert answer.text and answer.raw["rlhi"]["stored"] is False and answer.conversation_id is None

            asked = CliRunner().invoke(cli, ["ask", "--off-record", "--no-start", "--max-tokens", "4",
                                             f"Spell {marker} backwards."], catch_exceptions=False)
            assert asked.exit_code == 0 and asked.output.strip(), asked.output

            asyncio.run(chat_off_record_in_the_ui(running.socket, marker))

            # A stored conversation beside it is kept and mined as usual.
            c.chat([{"role": "user", "content": f"My code word is {control}. I prefer very short answers."}],
                   max_tokens=4)
            assert wait_for(lambda: c.health()["learning"]["runs"] >= 1, 60)
            for job in ("detector", "persona"):
                assert c.run_job(job)["status"] == "ok"
            assert marker not in json.dumps(c.persona()) and marker not in json.dumps(c.persona(user="t-off"))
            assert c.conversations(user="t-off") == [] and len(c.conversations()) == 1
    finally:
        stop_thread_daemon(running)

    running = start_thread_daemon(rlhi_home, flags)  # nothing comes back after a restart either
    try:
        with Client(running.socket) as c:
            assert len(c.conversations()) == 1 and c.conversations(user="t-off") == []
    finally:
        stop_thread_daemon(running)

    assert files_holding(rlhi_home, marker) == []
    assert files_holding(rlhi_home, control), "the scan must find what was stored"
    like = f"%{marker}%"
    assert rows(db, "SELECT count(*) FROM messages WHERE content LIKE ?", like) == [(0,)]
    assert rows(db, "SELECT count(*) FROM messages WHERE content LIKE ?", f"%{control}%") == [(1,)]
    assert rows(db, "SELECT count(*) FROM conversations WHERE title LIKE ? OR user_id = 't-off'", like) == [(0,)]
    assert rows(db, "SELECT count(*) FROM pairs WHERE prompt LIKE ? OR chosen LIKE ? OR rejected LIKE ?",
                like, like, like) == [(0,)]
    assert rows(db, "SELECT count(*) FROM feedback WHERE instruction LIKE ?", like) == [(0,)]
    assert rows(db, "SELECT count(*) FROM personas WHERE card LIKE ? OR facts LIKE ?", like, like) == [(0,)]
