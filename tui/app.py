"""The chat app: conversations, streamed answers, and the actions on answers that feed learning.

It reaches the daemon only through `rlhi_local.client.AsyncClient`, and it never loses what the
user typed: the prompt is cleared only when a message goes out, and the text comes back into it
when the daemon refuses the message or cannot be reached. Edits that cannot be saved reopen.

Example:

    from tui.app import run_chat

    run_chat()                      # the default socket; starts `rlhi serve` if no daemon runs
    run_chat(Path("/tmp/rlhi.sock"))
"""

from __future__ import annotations

import asyncio
import time
import logging
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.theme import Theme
from textual.widgets import Footer

from rlhi_local.client import AsyncClient, ensure_daemon
from rlhi_local.errors import APIError, DaemonError

from . import branches
from .privacy import OFF_RECORD_HINT, OFF_RECORD_NOTE, OFF_RECORD_PLACEHOLDER, learning_note, off_record_turn
from .screens import ConfirmScreen, EditScreen, HelpScreen, PersonaScreen, RenameScreen, TrainingScreen
from .screens.training import adapter_label
from .widgets import ChatView, ConversationList, MessageBox, PromptInput, StatusLine
from .widgets.chat_view import EMPTY_HINT
from .widgets.prompt_input import PLACEHOLDER as PROMPT_PLACEHOLDER

__all__ = ["THEME", "ChatApp", "run_chat"]

log = logging.getLogger(__name__)

RENDER_INTERVAL_S = 0.5
"""How often a streaming answer is re-rendered (measured by benchmarks/tui_render.py)."""
T = TypeVar("T")

# Built from the terminal's own palette (ANSI colours, default foreground and background), so
# the app reads the same in a light or a dark terminal; no fill assumes either.
THEME = Theme(
    name="rlhi",
    ansi=True,
    primary="ansi_blue",
    secondary="ansi_cyan",
    accent="ansi_magenta",
    warning="ansi_yellow",
    error="ansi_red",
    success="ansi_green",
    foreground="ansi_default",
    background="ansi_default",
    surface="ansi_default",
    panel="ansi_default",
    boost="ansi_default",
    dark=True,
    variables={
        "ansi-background": "ansi_default",
        "ansi-foreground": "ansi_default",
        "border": "ansi_blue",
        "border-blurred": "ansi_bright_black",
        "block-cursor-foreground": "ansi_bright_white",
        "block-cursor-background": "ansi_blue",
        "block-cursor-blurred-foreground": "ansi_default",
        "block-cursor-blurred-background": "ansi_default",
        "block-cursor-blurred-text-style": "reverse",
        "block-hover-background": "ansi_default",
        "input-cursor-background": "ansi_default",
        "input-cursor-foreground": "ansi_default",
        "input-cursor-text-style": "reverse",
        "input-selection-background": "ansi_blue",
        "input-selection-foreground": "ansi_bright_white",
        "screen-selection-background": "ansi_blue",
        "screen-selection-foreground": "ansi_bright_white",
        "footer-background": "ansi_default",
        "footer-key-foreground": "ansi_blue",
        "footer-description-foreground": "ansi_default",
        "scrollbar": "ansi_bright_black",
        "scrollbar-hover": "ansi_blue",
        "scrollbar-active": "ansi_blue",
        "scrollbar-background": "ansi_default",
        "scrollbar-background-hover": "ansi_default",
        "scrollbar-background-active": "ansi_default",
        "scrollbar-corner-color": "ansi_default",
    },
)


class _Failed:
    """What `_ask` returns when the daemon refused or could not be reached (already reported)."""


FAILED = _Failed()
FEEDBACK_NOTES = {
    "thumbs_up": "Marked as a good answer.",
    "thumbs_down": "Marked as a bad answer.",
    "choice": "Marked as the answer you prefer.",
}


class ChatApp(App[None]):
    """The chat. `generation` (max_tokens, temperature, seed, ...) goes with every request."""

    CSS_PATH = "app.tcss"
    TITLE = "rlhi"
    BINDINGS: list[BindingType] = [
        # Shown under the conversation list rather than in the footer, which needs the room.
        Binding("ctrl+n", "new_conversation", "New", show=False, tooltip="Start a new conversation"),
        Binding("f2", "rename_conversation", "Rename", show=False, tooltip="Rename this conversation"),
        Binding("f8", "delete_conversation", "Delete", show=False,
                tooltip="Delete this conversation (asks first)"),
        Binding("escape", "stop", "Stop",
                tooltip="Stop the answer being written (it is kept, marked stopped); else back to the prompt"),
        Binding("ctrl+up", "focus_messages", "Messages", key_display="^↑",
                tooltip="Focus the last message, to act on it"),
        Binding("ctrl+l", "focus_conversations", "List", show=False, tooltip="Focus the conversation list"),
        Binding("f3", "persona", "Persona", show=False,
                tooltip="See and edit what the model is told about you"),
        Binding("f4", "training", "Training", show=False,
                tooltip="Training: progress, adapters, train or roll back"),
        Binding("f5", "toggle_learning", "Pause learning", show=False,
                tooltip="Pause all learning, or resume it (chats are still stored while paused)"),
        Binding("f9", "off_record", "Off the record", show=False,
                tooltip="Start a conversation off the record: answered, never stored or learned from"),
        Binding("f1", "help", "Help", tooltip="Show this list of keys"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True,
                tooltip="Quit (the daemon keeps running)"),
    ]
    HEARTBEAT_S = 5.0
    """How often an idle app checks that the daemon is still there."""
    RECONNECT_S = 0.5
    """How often an app that lost the daemon looks for it again."""

    def __init__(
        self,
        socket: str | Path | None = None,
        *,
        user: str | None = None,
        theme: str = "rlhi",
        **generation: Any,
    ) -> None:
        super().__init__()
        self.socket = Path(socket) if socket is not None else None
        self.user = user
        self.generation = generation
        self.client: AsyncClient | None = None
        self.connected = False
        self.generating = False
        self.conversations: list[dict[str, Any]] = []
        self.conversation_id: str | None = None
        self.messages: list[dict[str, Any]] = []
        self.selected: branches.Selection = {}
        self.path: list[dict[str, Any]] = []
        self.off_record = False
        """The conversation on screen is off the record: its turns live only in `messages`."""
        self.register_theme(THEME)
        self.theme = theme

    def notify(self, message: str, *, markup: bool = False, **kwargs: Any) -> None:  # type: ignore[override]
        """As App.notify, but plain text by default: our messages carry the daemon's words and
        paths (`[Errno 2]`), which must not be read as markup."""
        super().notify(message, markup=markup, **kwargs)

    # ---- layout and start ------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield ConversationList(id="conversations")
            with Vertical(id="chat-pane"):
                yield ChatView(id="chat")
                yield PromptInput(id="prompt")
        yield StatusLine(id="status")
        yield Footer(show_command_palette=False)  # ^p still opens it (themes); the help says so

    async def on_mount(self) -> None:
        self.query_one(PromptInput).focus()
        await self.query_one(ChatView).show([], [])
        self.set_interval(self.HEARTBEAT_S, self._heartbeat)
        self._start_daemon()

    async def on_unmount(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    @work(thread=True, exclusive=True, group="daemon", exit_on_error=False)
    def _start_daemon(self) -> None:
        """`ensure_daemon` blocks (it may spawn `rlhi serve` and wait for the model to load)."""
        try:
            ensure_daemon(self.socket)
        except DaemonError as exc:
            self.call_from_thread(self._daemon_failed, str(exc))
        except Exception as exc:  # boundary: a thread worker must report, not crash the app
            log.exception("starting the daemon failed")
            self.call_from_thread(self._daemon_failed, f"Starting the daemon failed: {exc}")
        else:
            self.call_from_thread(self._reconnect)

    def _daemon_failed(self, message: str) -> None:
        self._set_state("not running (see the message)", problem=True)
        self.notify(message, title="The daemon could not start", severity="error", timeout=60)
        self._reconnect()  # someone may start it by hand; connect when it answers

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    def _set_state(self, state: str, problem: bool = False) -> None:
        self.status.state = state
        self.status.problem = problem

    @work(exclusive=True, group="connect", exit_on_error=False)
    async def _reconnect(self) -> None:
        """Poll `health()` on a fresh client until the daemon answers, then reload everything."""
        if self.client is not None:
            await self.client.aclose()
        self.client = AsyncClient(self.socket)
        while True:
            try:
                health = await self.client.health()
                break
            except DaemonError:
                await asyncio.sleep(self.RECONNECT_S)
        was_lost = self.status.problem
        self.connected = True
        self.status.model = str(health.get("model", {}).get("id", "?"))
        self.status.paused = bool(health.get("learning", {}).get("paused"))
        self._set_state("ready")
        if was_lost:
            self.notify("The daemon is back.", title="Reconnected")
        await self._load_adapter()
        await self._load_conversations()
        if self.conversation_id is not None and not self.generating and not self.off_record:
            await self._load_conversation()

    def _lost(self, reason: str) -> None:
        if self.connected:
            self.notify(f"{reason} Reconnecting when it is back; nothing you typed is lost.",
                        title="The daemon went away", severity="error", timeout=15)
        self.connected = False
        self._set_state("unreachable, reconnecting…", problem=True)
        self._reconnect()

    def _heartbeat(self) -> None:
        if self.connected and not self.generating:
            self._check_health()

    @work(exclusive=True, group="heartbeat", exit_on_error=False)
    async def _check_health(self) -> None:
        health = await self._ask(self._client().health())
        if not isinstance(health, _Failed):
            self.status.paused = bool(health.get("learning", {}).get("paused"))

    def _client(self) -> AsyncClient:
        assert self.client is not None, "no client before the first connection"
        return self.client

    async def _ask(self, call: Awaitable[T]) -> T | _Failed:
        """Await one daemon call; report a refusal or a lost daemon and return FAILED."""
        try:
            return await call
        except APIError as exc:
            self.notify(exc.message, title=f"The daemon refused ({exc.status_code})", severity="error",
                        timeout=15)
        except DaemonError as exc:
            self._lost(str(exc))
        return FAILED

    async def _load_adapter(self) -> None:
        """Show the adapter that answers this user by default in the status line."""
        listing = await self._ask(self._client().adapters(user=self.user))
        if not isinstance(listing, _Failed):
            self.status.adapter = adapter_label(listing.get("active"))

    # ---- showing conversations -------------------------------------------------------------

    async def _load_conversations(self) -> None:
        conversations = await self._ask(self._client().conversations(user=self.user))
        if isinstance(conversations, _Failed):
            return
        self.conversations = conversations
        self.query_one(ConversationList).set_conversations(conversations, self.conversation_id)

    async def _load_conversation(self, focus: str | None = None, show: str | None = None,
                                 settle: str | None = None) -> None:
        """Fetch the current conversation and show it. `show`: a message id to bring on screen
        (its ancestors become the selected branch); `focus`: the same, and focus its box;
        `settle`: an answer id to wait for while the daemon still writes it (after a stop)."""
        if self.conversation_id is None:
            self.messages, self.selected = [], {}
            await self._show()
            return
        for _ in range(50):
            conversation = await self._ask(self._client().conversation(self.conversation_id, user=self.user))
            if isinstance(conversation, _Failed):
                return
            streaming = any(m["id"] == settle and m["status"] == "streaming" for m in conversation["messages"])
            if not streaming:
                break
            await asyncio.sleep(0.1)
        self.messages = conversation["messages"]
        target = focus or show
        if target is not None:
            self.selected = branches.select(self.messages, self.selected, target)
        await self._show(focus)

    async def _show(self, focus: str | None = None) -> None:
        self.path = branches.branch(self.messages, self.selected)
        positions = [branches.position(self.messages, m) for m in self.path]
        chat = self.query_one(ChatView)
        await chat.show(self.path, positions)
        if focus is not None and (box := chat.box_for(focus)) is not None:
            box.focus()
            chat.scroll_to_widget(box, animate=False)

    def _message(self, message_id: str) -> dict[str, Any] | None:
        return next((m for m in self.messages if m["id"] == message_id), None)

    def _busy(self) -> bool:
        """True (and says so) while an answer is written: switching away would orphan it."""
        if self.generating:
            self.notify("An answer is still being written: wait, or press Esc to stop it.",
                        severity="warning")
        return self.generating

    @on(ConversationList.ConversationSelected)
    async def _open_conversation(self, event: ConversationList.ConversationSelected) -> None:
        if self._busy():
            return
        if not self.connected:
            self.notify("The daemon is not reachable yet; conversations open once it is back.",
                        severity="warning")
            return
        if event.conversation_id != self.conversation_id or self.off_record:
            self._leave_off_record()
            self.conversation_id = event.conversation_id
            self.selected = {}
            self._load_selected()
        self.query_one(PromptInput).focus()

    @work(exclusive=True, group="load", exit_on_error=False)
    async def _load_selected(self) -> None:
        await self._load_conversation()

    # ---- sending and streaming -------------------------------------------------------------

    @on(PromptInput.Submitted)
    def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if not text.strip():
            return  # nothing to send; whatever whitespace was typed stays
        if self._busy():
            return
        if not self.connected:
            self.notify("The daemon is not reachable yet; your text stays here until it is back.",
                        severity="error")
            return
        history = [*branches.history(self.path), {"role": "user", "content": text}]
        event.prompt_input.clear()
        self._reply(history, text, keep=len(self.path))

    @work(exclusive=True, group="reply", exit_on_error=False)
    async def _reply(self, history: list[dict[str, str]], user_text: str | None, keep: int) -> None:
        """Stream one answer into a new box: plain text appended in batches while it arrives,
        rendered as Markdown once when it ends (see `StreamText` for why). Cancelling this worker
        (Esc) closes the stream: the daemon stops and stores the partial answer as incomplete."""
        chat = self.query_one(ChatView)
        self.generating = True
        self._set_state("generating…")
        answer_id: str | None = None
        error: Exception | None = None
        stopped = False
        await chat.truncate(keep)
        box = await chat.begin_turn(user_text)
        pending: list[str] = []
        answer: list[str] = []  # the whole text, kept in memory when off the record
        off_record = self.off_record
        flushed = time.monotonic()
        try:
            async for chunk in self._client().stream_chat(
                history, conversation_id=self.conversation_id, user=self.user, off_record=off_record,
                **self.generation
            ):
                if chunk.conversation_id and chunk.conversation_id != self.conversation_id:
                    self.conversation_id = chunk.conversation_id  # the daemon named a new one
                    self.selected = {}
                if chunk.message_id:
                    answer_id = chunk.message_id
                if chunk.text:
                    answer.append(chunk.text)
                    # Render at most every RENDER_INTERVAL_S: on a small machine the UI shares the
                    # cores with the model, and a re-render per token slowed generation 2x.
                    pending.append(chunk.text)
                    if time.monotonic() - flushed >= RENDER_INTERVAL_S:
                        box.append("".join(pending))
                        pending.clear()
                        flushed = time.monotonic()
        except asyncio.CancelledError:
            stopped = True
            raise
        except (APIError, DaemonError) as exc:
            error = exc
        except Exception as exc:  # boundary: report, keep the app and the text
            log.exception("streaming an answer failed")
            error = exc
        finally:
            try:
                box.append("".join(pending))
                await box.end_stream()  # the whole answer as Markdown, as a stored one shows
            finally:
                self.generating = False
                kept = (off_record_turn(self.messages, user_text, "".join(answer), stopped)
                        if off_record and error is None else [])
                self._settle(answer_id, user_text, error, stopped, kept if off_record else None)

    @work(group="settle", exit_on_error=False)
    async def _settle(self, answer_id: str | None, user_text: str | None, error: Exception | None,
                      stopped: bool, off_record: list[dict[str, Any]] | None = None) -> None:
        """After an answer ends: report what went wrong, give back unsent text, show the store.
        `off_record`: the turn to keep in memory (empty after a failure) instead of the store's."""
        if off_record is not None:
            self.messages = [*self.messages, *off_record]
            await self._show()
        prompt = self.query_one(PromptInput)
        if isinstance(error, APIError):
            if user_text is not None:
                prompt.restore(user_text)
            self.notify(error.message, title=f"The daemon refused ({error.status_code})",
                        severity="error", timeout=20)
        elif isinstance(error, DaemonError):
            if user_text is not None:
                prompt.restore(user_text)  # resending it later continues the same turn
            self._lost(str(error))
            return  # the reconnect reloads the conversation
        elif error is not None:
            if user_text is not None:
                prompt.restore(user_text)
            self.notify(f"The answer failed: {error}", severity="error", timeout=20)
        if self.connected:
            self._set_state("ready")
        if stopped:
            self.notify("Stopped. The partial answer is kept, marked stopped.")
        if off_record is not None:
            return
        await self._load_conversation(show=answer_id, settle=answer_id if stopped else None)
        if answer_id is not None and (answer := self._message(answer_id)) is not None:
            self.status.adapter = adapter_label(answer.get("adapter_version"))  # the one that answered
        await self._load_conversations()

    def action_stop(self) -> None:
        if self.generating:
            self.workers.cancel_group(self, "reply")
        else:
            self.query_one(PromptInput).focus()

    # ---- actions on a message --------------------------------------------------------------

    @on(MessageBox.RegenerateRequested)
    def _regenerate(self, event: MessageBox.RegenerateRequested) -> None:
        if self._busy() or not self.connected:
            return
        index = next((i for i, m in enumerate(self.path) if m["id"] == event.message_id), None)
        if index is None or index == 0 or self.path[index - 1]["role"] != "user":
            self.notify("Only an answer to a prompt can be regenerated.", severity="warning")
            return
        self.query_one(PromptInput).focus()
        self._reply(branches.history(self.path[:index]), None, keep=index)

    @on(MessageBox.EditRequested)
    def _edit_requested(self, event: MessageBox.EditRequested) -> None:
        self._edit(event.message_id)

    @work(group="actions", exit_on_error=False)
    async def _edit(self, message_id: str) -> None:
        message = self._message(message_id)
        if message is None:
            return
        draft = str(message.get("content") or "")
        while True:  # an edit the daemon could not take reopens with the user's text
            text = await self.push_screen_wait(EditScreen(draft))
            if text is None:
                return
            edited = await self._ask(self._client().edit_message(message_id, text, user=self.user))
            if not isinstance(edited, _Failed):
                break
            draft = text
        self.notify("Saved your edit; the original answer is kept as its sibling.")
        await self._load_conversation(focus=edited["id"])

    @on(MessageBox.FeedbackGiven)
    def _feedback_given(self, event: MessageBox.FeedbackGiven) -> None:
        self._feedback(event.message_id, event.kind)

    @work(group="actions", exit_on_error=False)
    async def _feedback(self, message_id: str, kind: str) -> None:
        result = await self._ask(self._client().feedback(message_id, kind, user=self.user))
        if isinstance(result, _Failed):
            return
        self.notify(FEEDBACK_NOTES.get(kind, "Saved."))
        await self._load_conversation(focus=message_id)

    @on(MessageBox.SiblingRequested)
    async def _sibling(self, event: MessageBox.SiblingRequested) -> None:
        message = self._message(event.message_id)
        if message is None:
            return
        group = branches.siblings(self.messages, message)
        ids = [m["id"] for m in group]
        index = ids.index(event.message_id) + event.step
        if not 0 <= index < len(group) or self._busy():
            return
        self.selected = branches.select(self.messages, self.selected, ids[index])
        await self._show(focus=ids[index])

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "focus_messages" and isinstance(self.focused, MessageBox):
            return False  # already there; the footer needs the room for the message's keys
        return True

    def action_focus_messages(self) -> None:
        boxes = [b for b in self.query_one(ChatView).boxes if b.message_id is not None]
        if boxes:
            boxes[-1].focus()

    def action_focus_conversations(self) -> None:
        self.query_one(ConversationList).focus()

    # ---- conversations ---------------------------------------------------------------------

    @on(ConversationList.NewRequested)
    def action_new_conversation(self) -> None:
        if self._busy():
            return
        self._leave_off_record()
        self.conversation_id = None
        self.messages, self.selected, self.path = [], {}, []
        self.query_one(ConversationList).highlighted = None
        self._load_selected()
        self.query_one(PromptInput).focus()

    def action_off_record(self) -> None:
        """A new conversation off the record: answered, never stored, mined or learned from; its
        turns stay in this window's memory until it is left."""
        if self._busy():
            return
        self.action_new_conversation()
        self.off_record = True
        self.status.off_record = True
        self.query_one(ChatView).hint = OFF_RECORD_HINT
        self.query_one(PromptInput).placeholder = OFF_RECORD_PLACEHOLDER
        self.notify(OFF_RECORD_NOTE, title="Off the record")

    def _leave_off_record(self) -> None:
        """Drop the off-the-record conversation for good (it was never anywhere else)."""
        if not self.off_record:
            return
        self.off_record = False
        self.messages, self.selected, self.path = [], {}, []
        self.status.off_record = False
        self.query_one(ChatView).hint = EMPTY_HINT
        self.query_one(PromptInput).placeholder = PROMPT_PLACEHOLDER

    def action_rename_conversation(self) -> None:
        if self.conversation_id is not None:
            self._rename(self.conversation_id)

    @on(ConversationList.RenameRequested)
    def _rename_requested(self, event: ConversationList.RenameRequested) -> None:
        self._rename(event.conversation_id)

    @work(group="actions", exit_on_error=False)
    async def _rename(self, conversation_id: str) -> None:
        title = await self.push_screen_wait(RenameScreen(self._title(conversation_id)))
        if title is None:
            return
        renamed = await self._ask(self._client().rename_conversation(conversation_id, title, user=self.user))
        if not isinstance(renamed, _Failed):
            await self._load_conversations()

    def action_delete_conversation(self) -> None:
        if self.conversation_id is not None:
            self._delete(self.conversation_id)

    @on(ConversationList.DeleteRequested)
    def _delete_requested(self, event: ConversationList.DeleteRequested) -> None:
        self._delete(event.conversation_id)

    @work(group="actions", exit_on_error=False)
    async def _delete(self, conversation_id: str) -> None:
        if conversation_id == self.conversation_id and self._busy():
            return
        count = next((c.get("message_count", 0) for c in self.conversations if c["id"] == conversation_id), 0)
        question = (f"Delete “{self._title(conversation_id)}” and its {count} messages? "
                    f"Everything learned from it goes too. This cannot be undone.")
        if not await self.push_screen_wait(ConfirmScreen(question)):
            return

        async def delete() -> bool:
            await self._client().delete_conversation(conversation_id, user=self.user)
            return True

        if isinstance(await self._ask(delete()), _Failed):
            return
        self.notify("Conversation deleted.")
        if conversation_id == self.conversation_id:
            self.action_new_conversation()
        await self._load_conversations()

    def _title(self, conversation_id: str) -> str:
        return next((str(c.get("title") or "") for c in self.conversations if c["id"] == conversation_id), "")

    # ---- persona ---------------------------------------------------------------------------

    def action_persona(self) -> None:
        if isinstance(self.screen, PersonaScreen):
            return
        if not self.connected:
            self.notify("The daemon is not reachable yet; the persona opens once it is back.",
                        severity="warning")
            return
        self.push_screen(PersonaScreen(self._client, self.user, self.messages))

    # ---- training --------------------------------------------------------------------------

    def action_training(self) -> None:
        if isinstance(self.screen, TrainingScreen):
            return
        if not self.connected:
            self.notify("The daemon is not reachable yet; training opens once it is back.",
                        severity="warning")
            return
        self.push_screen(TrainingScreen(self._client, self.user))

    @on(TrainingScreen.ServedChanged)
    def _served_changed(self, event: TrainingScreen.ServedChanged) -> None:
        self.status.adapter = adapter_label(event.version)

    # ---- pausing learning --------------------------------------------------------------------

    def action_toggle_learning(self) -> None:
        if not self.connected:
            self.notify("The daemon is not reachable yet; learning can be paused once it is back.",
                        severity="warning")
            return
        self._toggle_learning(resume=self.status.paused)

    @work(group="actions", exit_on_error=False)
    async def _toggle_learning(self, resume: bool) -> None:
        client = self._client()
        state = await self._ask(client.resume_learning() if resume else client.pause_learning())
        if isinstance(state, _Failed):
            return
        self.status.paused = bool(state.get("paused"))
        self.notify(learning_note(state, resumed=resume), title="Learning")

    # ---- help ------------------------------------------------------------------------------

    def help_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Every binding, grouped by where it works, from the classes' own BINDINGS."""

        def rows(bindings: Iterable[BindingType]) -> list[tuple[str, str]]:
            out = []
            for binding in bindings:
                assert isinstance(binding, Binding)
                keys = [k.strip() for k in binding.key.split(",")]
                shown = (binding.key_display if binding.key_display and len(keys) == 1
                         else " / ".join(self.get_key_display(Binding(k, binding.action)) for k in keys))
                out.append((shown, binding.tooltip or binding.description))
            return out

        return [
            ("Anywhere", [*rows(self.BINDINGS),
                          ("^p", "Command palette: switch the theme (e.g. a light or dark one) and more")]),
            ("Typing a message", [*rows(PromptInput.BINDINGS),
                                  ("tab / shift+tab", "Move the focus (list, messages, prompt)")]),
            ("A focused message (click it, or ^↑)", rows(MessageBox.BINDINGS)),
            ("The conversation list", [("enter", "Open the highlighted conversation"),
                                       *rows(ConversationList.BINDINGS)]),
        ]

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_sections()))


def run_chat(socket: Path | None = None, **generation: Any) -> None:
    """Open the chat on `socket` (default: this user's), starting the daemon if none runs."""
    ChatApp(socket=socket, **generation).run()
