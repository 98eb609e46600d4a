"""The Textual chat (tui/) driven by Pilot against the real daemon and model, checked on screen
and in the store; plus a few snapshots of screens that show no model output.

Each test chats as its own `user`, so its conversation list holds only its own conversations.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.app import App, ComposeResult
from textual.content import Content
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from rlhi_local.client import Client
from tests.conftest import RunningDaemon, start_thread_daemon, stop_thread_daemon
from tui.app import ChatApp
from tui.screens import ConfirmScreen, EditScreen, HelpScreen, RenameScreen
from tui.widgets import ChatView, ConversationList, MessageBox, PromptInput, StatusLine, StreamText

SIZE = (100, 40)
FAST = {"max_tokens": 12, "temperature": 0.0, "seed": 7}


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql, params).fetchall()


async def until(pilot: Pilot[Any], predicate: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the UI"
        await pilot.pause(0.05)


async def connected(pilot: Pilot[Any]) -> ChatApp:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await until(pilot, lambda: app.connected and app.status.state == "ready")
    return app


async def send(pilot: Pilot[Any], text: str) -> None:
    """Type `text` (pasted), press Enter, and wait for the stored answer to be on screen."""
    app = pilot.app
    assert isinstance(app, ChatApp)
    prompt = app.query_one(PromptInput)
    prompt.focus()
    app.post_message(events.Paste(text))
    await until(pilot, lambda: prompt.text == text)
    before = last_id(app)
    await pilot.press("enter")
    await answered(pilot, before)


def last_id(app: ChatApp) -> str | None:
    return app.path[-1]["id"] if app.path else None


async def answered(pilot: Pilot[Any], before: str | None) -> None:
    """Wait until a new answer (not `before`) is stored and shown, and nothing streams."""
    app = pilot.app
    assert isinstance(app, ChatApp)
    await until(pilot, lambda: not app.generating and _settled(app) and last_id(app) != before
                and app.path[-1]["role"] == "assistant")


def _settled(app: ChatApp) -> bool:
    if any(w.is_running for w in app.workers if w.group in ("reply", "settle", "actions", "load")):
        return False
    boxes = app.query_one(ChatView).boxes
    return bool(boxes) and all(b.message_id is not None for b in boxes) and \
        boxes[-1].message.get("status") != "streaming"


def shown(app: ChatApp) -> list[tuple[str, str]]:
    return [(b.message["role"], b.message.get("content") or "") for b in app.query_one(ChatView).boxes]


def notes(app: ChatApp) -> list[str]:
    return [n.message for n in app._notifications]


def test_send_streams_an_answer_and_stores_it(daemon: RunningDaemon) -> None:
    partial: list[str] = []  # the answer box's text while the answer was still streaming

    def watch(message: object) -> None:
        if not app.screen_stack:
            return
        boxes = app.query(MessageBox)
        if boxes and boxes.last().message.get("status") == "streaming":
            source = boxes.last().text
            if source and (not partial or partial[-1] != source):
                partial.append(source)

    async def main() -> None:
        async with app.run_test(size=SIZE, notifications=True, message_hook=watch) as pilot:
            await connected(pilot)
            assert app.status.model == "SmolLM2-135M-Instruct.Q4_1"
            assert app.status.adapter == "base"

            # Whitespace only: nothing goes out, nothing is stored, the text stays.
            prompt = app.query_one(PromptInput)
            await pilot.press("space", "space", "enter")
            await pilot.pause(0.2)
            assert app.conversation_id is None and not app.generating
            assert prompt.text == "  "
            prompt.clear()

            # Ctrl+J adds a line instead of sending.
            await pilot.press("a", "ctrl+j", "b")
            assert prompt.text == "a\nb" and not app.generating
            prompt.clear()

            await send(pilot, "Say hello in French.")
            assert prompt.text == ""
            (user, question), (role, answer) = shown(app)
            assert (user, question, role) == ("user", "Say hello in French.", "assistant")
            assert answer.strip()
            assert app.query_one(ChatView).boxes[-1].markdown.source == answer
            # It arrived in pieces: each partial text was a prefix of the stored answer.
            assert partial and all(answer.startswith(p.rstrip()) for p in partial), partial
            stored = rows(daemon.db_path, "SELECT role, content, origin, status FROM messages "
                          "WHERE conversation_id = ? ORDER BY rowid", app.conversation_id)
            assert stored == [("user", "Say hello in French.", "user", "complete"),
                              ("assistant", answer, "model", "complete")]
            # The conversation list shows it, highlighted.
            conversations = app.query_one(ConversationList)
            assert conversations.option_count == 1
            assert conversations.highlighted_id == app.conversation_id

            # A follow-up continues the same conversation with the whole branch as history.
            await send(pilot, "And in Spanish?")
            assert [r for r, _ in shown(app)] == ["user", "assistant", "user", "assistant"]
            assert rows(daemon.db_path, "SELECT count(*) FROM messages WHERE conversation_id = ?",
                        app.conversation_id) == [(4,)]

    app = ChatApp(daemon.socket, user="t-send", **{**FAST, "max_tokens": 24})
    asyncio.run(main())


def test_edit_regenerate_branches_thumbs_and_choice(daemon: RunningDaemon) -> None:
    async def main() -> None:
        app = ChatApp(daemon.socket, user="t-learn", **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            await send(pilot, "Name a fruit.")
            original = app.path[-1]

            # Edit: the answer opens in an editor; saving stores a user_edit sibling.
            await pilot.press("ctrl+up")
            box = app.focused
            assert isinstance(box, MessageBox) and box.message_id == original["id"]
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, EditScreen))
            editor = app.screen.query_one("#editor", TextArea)
            assert editor.text == original["content"]
            editor.load_text("A **mango**.")
            await pilot.press("ctrl+s")
            await until(pilot, lambda: not isinstance(app.screen, EditScreen))
            await until(pilot, lambda: app.path[-1]["origin"] == "user_edit")
            edit_row = rows(daemon.db_path, "SELECT id, parent_id, content FROM messages "
                            "WHERE conversation_id = ? AND origin = 'user_edit'", app.conversation_id)
            assert edit_row == [(app.path[-1]["id"], original["parent_id"], "A **mango**.")]
            focused = app.focused
            assert isinstance(focused, MessageBox) and focused.message_id == edit_row[0][0]
            assert (focused.index, focused.count) == (2, 2)
            assert "your edit" in str(focused.border_title)

            # Previous sibling: the original answer again.
            await pilot.press("left")
            await until(pilot, lambda: app.path[-1]["id"] == original["id"])
            focused = app.focused
            assert isinstance(focused, MessageBox) and (focused.index, focused.count) == (1, 2)

            # Regenerate: a third answer to the same prompt, origin regenerate.
            await pilot.press("r")
            await answered(pilot, original["id"])
            regen = rows(daemon.db_path, "SELECT id, parent_id, status FROM messages "
                         "WHERE conversation_id = ? AND origin = 'regenerate'", app.conversation_id)
            assert len(regen) == 1 and regen[0][1] == original["parent_id"]
            assert regen[0][2] == "complete"
            assert app.path[-1]["id"] == regen[0][0]
            last = app.query_one(ChatView).boxes[-1]
            assert (last.index, last.count) == (3, 3)

            # Navigate back to the edit (2/3), prefer it, and judge two answers.
            last.focus()
            await pilot.press("left")
            await until(pilot, lambda: app.path[-1]["id"] == edit_row[0][0])
            await pilot.press("p")
            await until(pilot, lambda: "choice" in (app.path[-1].get("feedback") or []))
            assert "preferred" in str(app.query_one(ChatView).boxes[-1].border_title)
            await pilot.press("plus")
            await until(pilot, lambda: "thumbs_up" in (app.path[-1].get("feedback") or []))
            await pilot.press("right")
            await until(pilot, lambda: app.path[-1]["id"] == regen[0][0])
            await pilot.press("minus")
            await until(pilot, lambda: "thumbs_down" in (app.path[-1].get("feedback") or []))
            feedback = rows(daemon.db_path, "SELECT message_id, kind FROM feedback WHERE user_id = ? "
                            "AND source = 'user' ORDER BY rowid", "t-learn")
            assert feedback == [(original["id"], "edit"),  # the edit names the answer it rewrote
                                (edit_row[0][0], "choice"), (edit_row[0][0], "thumbs_up"),
                                (regen[0][0], "thumbs_down")]

            # Copy puts the answer on the clipboard.
            await pilot.press("c")
            assert app.clipboard == app.path[-1]["content"]

            # Continuing from the regenerated answer keeps that branch as the history.
            await send(pilot, "Another one?")
            parent = rows(daemon.db_path, "SELECT parent_id FROM messages WHERE content = ? "
                          "AND conversation_id = ?", "Another one?", app.conversation_id)
            assert parent == [(regen[0][0],)]
            # ...and the daemon records that as choosing it (the earlier choice moves).
            assert rows(daemon.db_path, "SELECT message_id FROM feedback WHERE user_id = ? AND "
                        "kind = 'choice'", "t-learn") == [(regen[0][0],)]

    asyncio.run(main())


def test_conversations_new_switch_rename_delete(daemon: RunningDaemon) -> None:
    async def main() -> None:
        app = ChatApp(daemon.socket, user="t-convs", **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            await send(pilot, "First topic.")
            first = app.conversation_id
            await pilot.press("ctrl+n")
            await until(pilot, lambda: app.conversation_id is None and not app.query_one(ChatView).boxes)
            await send(pilot, "Second topic.")
            second = app.conversation_id
            assert second != first
            listing = app.query_one(ConversationList)
            await until(pilot, lambda: listing.option_count == 2)
            assert [listing.get_option_at_index(i).id for i in range(2)] == [second, first]

            # `n` in the list starts a new conversation too; then switch to the first one.
            listing.focus()
            await pilot.press("n")
            await until(pilot, lambda: app.conversation_id is None and not app.query_one(ChatView).boxes)
            listing.focus()
            listing.highlighted = 1
            await pilot.press("enter")
            await until(pilot, lambda: app.conversation_id == first and shown(app)[:1] == [("user", "First topic.")])

            # Rename it.
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, RenameScreen))
            title_input = app.screen.query_one(Input)
            assert title_input.value == "First topic."
            title_input.value = ""
            await pilot.press(*"Fruit talk", "enter")
            await until(pilot, lambda: rows(daemon.db_path, "SELECT title FROM conversations WHERE id = ?",
                                            first) == [("Fruit talk",)])
            await until(pilot, lambda: "Fruit talk" in str(listing.get_option(first).prompt))

            # Delete it: "no" keeps it, "yes" removes it from the store and the list.
            await pilot.press("f8")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "Fruit talk" in str(app.screen.question) and "2 messages" in app.screen.question
            await pilot.press("n")
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
            assert rows(daemon.db_path, "SELECT count(*) FROM conversations WHERE id = ?", first) == [(1,)]
            await pilot.press("f8")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: listing.option_count == 1)
            assert rows(daemon.db_path, "SELECT count(*) FROM conversations WHERE id = ?", first) == [(0,)]
            assert rows(daemon.db_path, "SELECT count(*) FROM messages WHERE conversation_id = ?", first) == [(0,)]
            assert app.conversation_id is None and not app.query_one(ChatView).boxes

    asyncio.run(main())


def test_escape_stops_generation_and_keeps_the_partial_answer(daemon: RunningDaemon) -> None:
    async def main() -> None:
        app = ChatApp(daemon.socket, user="t-stop", max_tokens=2000, temperature=0.8, seed=3)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            prompt = app.query_one(PromptInput)
            app.post_message(events.Paste("Write a long story about a dragon and a lighthouse."))
            await pilot.pause(0.1)
            await pilot.press("enter")
            await until(pilot, lambda: app.generating and app.query_one(ChatView).boxes
                        and app.query_one(ChatView).boxes[-1].text)
            await pilot.press("escape")
            await until(pilot, lambda: not app.generating and _settled(app))
            answer = app.path[-1]
            assert answer["status"] == "incomplete"
            assert rows(daemon.db_path, "SELECT status FROM messages WHERE id = ?", answer["id"]) == [("incomplete",)]
            assert "stopped" in str(app.query_one(ChatView).boxes[-1].border_title)
            assert app.query_one(ChatView).boxes[-1].markdown.source == answer["content"]

    asyncio.run(main())


def test_a_streaming_answer_is_laid_out_in_steps_and_ends_as_markdown() -> None:
    """Regression: re-laying out the chat on every refresh of a streaming answer slowed the model
    (benchmarks/tui_render.py). The answer keeps room below its text, so text that fits is only
    repainted; once the answer ends it is the Markdown a stored answer shows."""

    class Chat(App[None]):
        CSS_PATH = Path(__file__).resolve().parent.parent / "tui" / "app.tcss"

        def compose(self) -> ComposeResult:
            yield ChatView()

    async def main() -> None:
        app = Chat()
        async with app.run_test(size=SIZE) as pilot:
            box = await app.query_one(ChatView).begin_turn("Hi")
            box.append("# A title\n\nThe first")
            await pilot.pause()
            stream = box.query_one(StreamText)
            room = stream.size.height
            assert room > 3  # three lines of text, and room below them

            box.append(" line goes on")
            await pilot.pause()
            assert stream.size.height == room  # it fitted: no layout
            shown = [strip.text.rstrip() for strip in stream.render_lines(stream.size.region)]
            assert shown[:3] == ["# A title", "", "The first line goes on"]  # plain text, repainted

            box.append("\n" * room)
            await pilot.pause()
            assert stream.size.height > room  # outgrew its room: laid out again

            await box.end_stream()
            assert not box.query(StreamText)
            assert box.markdown.source == box.text == "# A title\n\nThe first line goes on" + "\n" * room
            assert box.markdown.query("MarkdownH1")  # rendered, not typed out

    asyncio.run(main())


def test_an_over_long_paste_is_refused_and_kept(daemon: RunningDaemon) -> None:
    async def main() -> None:
        app = ChatApp(daemon.socket, user="t-long", **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            n_ctx = Client(daemon.socket).health()["model"]["n_ctx"]
            text = "lorem ipsum dolor sit amet " * (n_ctx // 2)
            prompt = app.query_one(PromptInput)
            app.post_message(events.Paste(text))
            await until(pilot, lambda: prompt.text == text)
            await pilot.press("enter")
            await until(pilot, lambda: any(str(n_ctx) in m for m in notes(app)))
            await until(pilot, lambda: not app.generating and prompt.text == text)
            assert rows(daemon.db_path, "SELECT count(*) FROM conversations WHERE user_id = ?", "t-long") == [(0,)]
            assert not app.query_one(ChatView).boxes

    asyncio.run(main())


def test_help_screen_lists_every_binding(daemon: RunningDaemon) -> None:
    async def main() -> None:
        app = ChatApp(daemon.socket, user="t-help", **FAST)
        async with app.run_test(size=SIZE) as pilot:
            await connected(pilot)
            await pilot.press("f1")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen))
            described = [d for _, keys in app.screen.sections for _, d in keys]
            for cls in (ChatApp, PromptInput, MessageBox, ConversationList):
                for binding in cls.BINDINGS:
                    assert binding.tooltip in described, binding  # type: ignore[union-attr]
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, HelpScreen))

    asyncio.run(main())


def test_a_daemon_that_cannot_start_is_reported(rlhi_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No daemon on the socket: the app starts one (`rlhi serve`), which fails on a missing
    model; the status line and a notification say so, and the typed text stays."""
    monkeypatch.setenv("RLHI_MODEL__PATH", str(rlhi_home / "missing.gguf"))

    async def main() -> None:
        app = ChatApp(rlhi_home / "d.sock", user="t-nostart", **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            assert app.status.state == "starting daemon…"
            # The status line and the notification are two updates: wait for both.
            await until(pilot, lambda: app.status.problem and notes(app))
            assert "not running" in app.status.state
            assert any("could not start" in m and "missing.gguf" in m for m in notes(app)), notes(app)
            app.post_message(events.Paste("Hello?"))
            await pilot.pause(0.1)
            await pilot.press("enter")
            assert app.query_one(PromptInput).text == "Hello?"
            assert any("not reachable" in m for m in notes(app))

    asyncio.run(main())


def test_daemon_restart_keeps_the_text_and_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(tempfile.mkdtemp(prefix="rhr", dir="/tmp"))
    running = start_thread_daemon(home)
    monkeypatch.setattr(ChatApp, "HEARTBEAT_S", 0.5)

    async def main() -> None:
        nonlocal running
        app = ChatApp(running.socket, user="t-restart", **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            await send(pilot, "Hello before the restart.")
            conversation = app.conversation_id

            await asyncio.to_thread(stop_thread_daemon, running)
            prompt = app.query_one(PromptInput)
            app.post_message(events.Paste("Typed while it was down."))
            await until(pilot, lambda: prompt.text == "Typed while it was down.")
            await pilot.press("enter")
            await until(pilot, lambda: app.query_one(StatusLine).problem)
            assert not app.connected and "unreachable" in app.status.state
            assert prompt.text == "Typed while it was down."
            assert any("went away" in m or "not reachable" in m or "No rlhi daemon" in m for m in notes(app))

            running = await asyncio.to_thread(start_thread_daemon, home)
            await until(pilot, lambda: app.connected and app.status.state == "ready")
            assert not app.query_one(StatusLine).problem
            before = last_id(app)
            await pilot.press("enter")
            await answered(pilot, before)
            assert app.conversation_id == conversation
            assert rows(running.db_path, "SELECT count(*) FROM messages WHERE conversation_id = ? "
                        "AND content = ?", conversation, "Typed while it was down.") == [(1,)]

    try:
        asyncio.run(main())
    finally:
        if running.thread.is_alive():
            stop_thread_daemon(running)
        shutil.rmtree(home, ignore_errors=True)


# ---- snapshots (no model output on screen) ----------------------------------------------------


def _snapshot_app(daemon: RunningDaemon, user: str) -> ChatApp:
    return ChatApp(daemon.socket, user=user, **FAST)


async def _ready(pilot: Pilot[Any]) -> None:
    await connected(pilot)
    await pilot.pause(0.2)


def _seed_conversations(daemon: RunningDaemon, user: str) -> None:
    with Client(daemon.socket) as client:
        if client.conversations(user=user):
            return
        for title in ("Plan a picnic for Sunday", "What is SQLite?", "Draft a birthday note"):
            client.chat([{"role": "user", "content": title}], user=user, max_tokens=1)


def test_snapshot_app_with_conversation_list(daemon: RunningDaemon, snap_compare: Any) -> None:
    _seed_conversations(daemon, "snap-list")
    assert snap_compare(_snapshot_app(daemon, "snap-list"), terminal_size=SIZE, run_before=_ready)


def test_snapshot_help_screen(daemon: RunningDaemon, snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))

    assert snap_compare(_snapshot_app(daemon, "snap-help"), terminal_size=SIZE, run_before=run_before)


def test_snapshot_delete_confirmation(daemon: RunningDaemon, snap_compare: Any) -> None:
    _seed_conversations(daemon, "snap-delete")

    async def run_before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        listing = pilot.app.query_one(ConversationList)
        await until(pilot, lambda: listing.option_count == 3)
        listing.focus()
        listing.highlighted = 1
        await pilot.press("d")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))

    assert snap_compare(_snapshot_app(daemon, "snap-delete"), terminal_size=SIZE, run_before=run_before)


def test_streamed_text_wraps_as_if_it_came_at_once() -> None:
    """StreamText wraps ended lines once and only re-wraps the line being written (for speed);
    whatever the chunking, the lines shown must be Textual's own wrapping of the whole text, also
    after the width changes."""
    text = (
        "A first line that is long enough to wrap more than once at forty columns wide.\n"
        "\n"
        "- a list item\n"
        "    indented code with   spaces kept\n"
        "A last line, still being written, that also wraps around the edge"
    )

    class Holder(App[None]):
        def compose(self) -> ComposeResult:
            yield StreamText()

    def shown(stream: StreamText) -> list[str]:
        lines = [strip.text.rstrip() for strip in stream.render_lines(stream.size.region)]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def expected(width: int) -> list[str]:
        lines = [line.plain.rstrip() for line in Content(text).wrap(width)]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    async def main() -> None:
        app = Holder()
        async with app.run_test(size=(40, 30)) as pilot:
            stream = app.query_one(StreamText)
            for start in range(0, len(text), 7):  # chunks that split words and newlines
                stream.append(text[start:start + 7])
                await pilot.pause()
            assert stream.text == text
            assert shown(stream) == expected(stream.size.width)
            assert len(shown(stream)) > text.count("\n") + 1  # it did wrap

            await pilot.resize_terminal(60, 30)
            await pilot.pause()
            assert stream.size.width == 60
            assert shown(stream) == expected(60)

    asyncio.run(main())
