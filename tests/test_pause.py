"""Pausing learning as a whole, from the CLI, the API and the UI: while paused nothing is mined,
sampled or trained (a queued run is cancelled, every job skips, requests to learn are refused)
but chats are still answered and stored; the pause survives a restart, and resuming mines what
was said meanwhile. Real daemons (threads), the real `rlhi` command and the Textual app.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from rlhi_local.cli import cli
from rlhi_local.client import Client
from rlhi_local.errors import APIError
from rlhi_local.records import NewMessage
from rlhi_local.scheduler import JOBS
from rlhi_local.store import Store
from tests.conftest import start_thread_daemon, stop_thread_daemon, wait_for
from tests.test_tui import SIZE, FAST, connected, notes, until
from tui.app import ChatApp

LEARN = {"training": {"min_pairs": 2}, "learning": {"rewrite_idle_s": 600.0, "mining_delay_s": 0.1}}
"""Two pairs are enough to queue a run, and a run not asked for `now` waits (600 s) for the user to
be idle: it stays queued until the pause cancels it, with no trainer started."""


def rlhi(*args: str, env: dict[str, str] | None = None) -> Result:
    """The `rlhi` command, in process (click's runner), as a user would type it."""
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def labels(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM feedback WHERE source = 'detector'").fetchone()[0])


def stored_pause(db: Path) -> bool:
    store = Store(db)
    try:
        return store.learning_paused()[0]
    finally:
        store.close()


def add_ready_pairs(db: Path, user: str, n: int) -> None:
    store = Store(db)
    try:
        for i in range(n):
            question = f"Explain tides, part {i}."
            placed = store.place_turns(user, [NewMessage(role="user", content=question)])
            assert placed.answer_id is not None
            store.finish_answer(placed.answer_id, "Tides are long and complicated.", "complete", "stop")
            store.add_pair(user_id=user, conversation_id=placed.conversation_id,
                           prompt=[{"role": "user", "content": question}], persona_version=None,
                           chosen="The moon pulls the sea.", rejected="Tides are long and complicated.",
                           chosen_message_id=None, rejected_message_id=placed.answer_id, feedback_id=None,
                           origin="user_edit", instruction="", status="ready")
    finally:
        store.close()


def test_pause_stops_all_learning_survives_a_restart_and_resume_catches_up(rlhi_home: Path) -> None:
    running = start_thread_daemon(rlhi_home, LEARN)
    db = running.db_path
    try:
        with Client(running.socket) as c:
            assert c.learning()["paused"] is False
            add_ready_pairs(db, "pat", 2)
            run = c.train(user="pat", now=False)
            assert run["status"] == "queued"

            out = rlhi("pause")
            assert out.exit_code == 0, out.output
            assert "learning paused" in out.stdout and f"cancelled training run {run['id']}" in out.stdout
            assert wait_for(lambda: c.train_run(run["id"])["status"] == "cancelled", 30)
            assert "learning is paused" in c.train_run(run["id"])["error"]
            state = c.learning()
            assert state["paused"] and "rlhi pause" in state["reason"] and state["changed_at"]
            assert c.health()["learning"]["paused"] and c.schedule()["paused"]

            # Nothing learns: every job skips, and asking to train or mine is refused with the fix.
            for job in JOBS:
                outcome = c.run_job(job)
                assert outcome["status"] == "skipped" and "learning is paused" in outcome["detail"], outcome
            with pytest.raises(APIError, match="rlhi resume") as refused:
                c.train(user="pat")
            assert refused.value.status_code == 400
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(running.socket))) as http:
                mined = http.post("http://rlhi/v1/signals/mine", params={"user": "pat"})
            assert mined.status_code == 400 and "rlhi resume" in mined.json()["error"]["message"]

            # Chats are still answered and stored, but not mined (this one holds a follow-up to label).
            history = [{"role": "user", "content": "Name a colour."},
                       {"role": "assistant", "content": "Blue is a calm, deep colour that many people like."},
                       {"role": "user", "content": "Too long. Answer in one word."}]
            reply = c.chat(history, user="pat", max_tokens=4)
            assert reply.text and reply.conversation_id is not None
            assert c.conversation(reply.conversation_id, user="pat")["message_count"] == 4
            time.sleep(1.0)  # ten mining delays: background mining would have run by now
            assert c.health()["learning"]["runs"] == 0 and labels(db) == 0

            status = rlhi("status")
            assert "learning  paused (rlhi pause; `rlhi resume` turns it back on)" in status.stdout, status.stdout
    finally:
        stop_thread_daemon(running)

    # The pause is kept across a restart; resuming mines what was said meanwhile.
    running = start_thread_daemon(rlhi_home, LEARN)
    try:
        with Client(running.socket) as c:
            assert c.learning()["paused"]
            assert c.run_job("detector")["status"] == "skipped"
            resumed = c.resume_learning()
            assert resumed["paused"] is False and resumed["reason"] == ""
            assert wait_for(lambda: labels(db) >= 1, 60), "resuming did not mine the backlog"
            assert wait_for(lambda: c.health()["learning"]["runs"] >= 1, 60)
            assert not c.schedule()["paused"]
    finally:
        stop_thread_daemon(running)

    # With no daemon the switch goes to the store (no daemon is started to learn first); the
    # config's own switch still pauses after a resume, and says so.
    still = rlhi("resume", env={"RLHI_LEARNING__MINING": "false"})
    assert still.exit_code == 0, still.output
    assert "but learning is paused (learning.mining = false in the config)" in still.stdout
    out = rlhi("pause")
    assert out.exit_code == 0 and "learning paused" in out.stdout, out.output
    assert not (rlhi_home / "run" / "rlhi.sock").exists()
    assert stored_pause(db)


def test_the_chat_shows_a_pause_and_f5_toggles_it(rlhi_home: Path) -> None:
    running = start_thread_daemon(rlhi_home, LEARN)
    db = running.db_path
    with Client(running.socket) as c:
        c.pause_learning()  # e.g. `rlhi pause` before the UI opened

    async def main() -> None:
        app = ChatApp(running.socket, user="t-pause", **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            await until(pilot, lambda: app.status.paused)
            assert "learning paused" in str(app.status.render())
            await pilot.press("f5")
            await until(pilot, lambda: not app.status.paused)
            assert "learning paused" not in str(app.status.render())
            assert not stored_pause(db)
            assert any("Learning resumed" in n for n in notes(app))
            await pilot.press("f5")
            await until(pilot, lambda: app.status.paused)
            assert stored_pause(db)
            assert any("Learning paused" in n and "Chats are still answered and stored" in n for n in notes(app))

    try:
        asyncio.run(main())
    finally:
        stop_thread_daemon(running)
