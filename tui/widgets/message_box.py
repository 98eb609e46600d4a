"""One turn of the chat, and the learning actions on it (edit, regenerate, thumbs, copy, branches).

The box shows what the app gives it (`message`, its place among its siblings) and reports what
the user asked for as messages; only copying, which needs no daemon, it does itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Markdown, Static

from .stream_text import StreamText

FeedbackKind = Literal["thumbs_up", "thumbs_down", "choice"]

_ORIGIN = {"user_edit": "your edit", "regenerate": "regenerated", "imported": "imported"}
_FEEDBACK = {"thumbs_up": "liked", "thumbs_down": "disliked", "choice": "preferred"}
_ANSWER_ONLY = {"edit", "regenerate", "thumbs_up", "thumbs_down", "copy", "prefer"}
_TEACHING = {"edit", "regenerate", "thumbs_up", "thumbs_down", "prefer", "sibling"}
"""Actions that store something to learn from: none of them on an off-the-record turn."""


class MessageBox(Vertical, can_focus=True):
    """A user turn or an answer; its border title says who wrote it, how, what the user
    thought of it, and which of its siblings it is. Focus it (click, Tab, Ctrl+↑) to act on it."""

    BINDINGS = [
        Binding("e", "edit", "Edit", tooltip="Rewrite this answer; your version is stored as your edit"),
        Binding("r", "regenerate", "Regenerate", tooltip="Ask again; the new answer becomes a sibling"),
        Binding("plus", "thumbs_up", "Good", key_display="+", tooltip="Thumbs up"),
        Binding("minus", "thumbs_down", "Bad", key_display="-", tooltip="Thumbs down"),
        Binding("p", "prefer", "Prefer", tooltip="Prefer this answer over its siblings"),
        Binding("c", "copy", "Copy", tooltip="Copy the text to the clipboard"),
        Binding("left", "sibling(-1)", "Prev", key_display="←", tooltip="Show the previous sibling (branch)"),
        Binding("right", "sibling(1)", "Next", key_display="→", tooltip="Show the next sibling (branch)"),
        Binding("up", "focus_neighbour(-1)", "Up", show=False, tooltip="Focus the message above"),
        Binding("down", "focus_neighbour(1)", "Down", show=False, tooltip="Focus the message below"),
    ]

    @dataclass
    class EditRequested(Message):
        """The user wants to rewrite this answer."""

        box: MessageBox
        message_id: str

    @dataclass
    class RegenerateRequested(Message):
        """The user wants another answer to the same prompt."""

        box: MessageBox
        message_id: str

    @dataclass
    class FeedbackGiven(Message):
        """Thumbs up or down, or `choice`: this is the preferred of several answers."""

        box: MessageBox
        message_id: str
        kind: FeedbackKind

    @dataclass
    class SiblingRequested(Message):
        """Show the previous (-1) or next (+1) sibling of this turn instead."""

        box: MessageBox
        message_id: str
        step: int

    def __init__(self, message: dict[str, Any], index: int = 1, count: int = 1, *,
                 streaming: bool = False) -> None:
        """`streaming`: an answer about to be written: it shows plain text as it arrives
        (`append`) and renders as Markdown from `end_stream` on."""
        super().__init__(classes=f"-{message['role']}")
        self.message = dict(message)
        self.index = index
        self.count = count
        self.border_title = self._header_text()
        if streaming:
            self._body: Markdown | Static | StreamText = StreamText(classes="body")
        elif message["role"] == "assistant":
            self._body = Markdown(message.get("content") or "", classes="body")
        else:
            self._body = Static(message.get("content") or "", markup=False, classes="body")

    @property
    def message_id(self) -> str | None:
        return self.message.get("id")

    @property
    def markdown(self) -> Markdown:
        """The answer's Markdown widget (once the answer is complete)."""
        assert isinstance(self._body, Markdown), "only complete answers render Markdown"
        return self._body

    @property
    def text(self) -> str:
        """The text on screen: what has arrived of an answer being written, else the message's."""
        if isinstance(self._body, StreamText):
            return self._body.text
        if isinstance(self._body, Markdown):
            return self._body.source
        return self.message.get("content") or ""

    def compose(self) -> ComposeResult:
        yield self._body

    def append(self, text: str) -> None:
        """Add what arrived of the answer being written (plain text until `end_stream`)."""
        assert isinstance(self._body, StreamText), "only a streaming answer grows"
        self._body.append(text)

    async def end_stream(self) -> None:
        """The answer is complete or stopped: render it as Markdown in place of the plain text."""
        if not isinstance(self._body, StreamText) or not self.is_attached:  # e.g. the app quit
            return
        stream, self._body = self._body, Markdown(self._body.text, classes="body")
        with self.app.batch_update():  # one frame: no box without a body in between
            await self.mount(self._body)
            await stream.remove()

    def update(self, message: dict[str, Any], index: int, count: int) -> None:
        """Show a fresher copy of the same stored message (status, feedback, siblings)."""
        content_changed = (message.get("content") or "") != (self.message.get("content") or "")
        self.message, self.index, self.count = dict(message), index, count
        self.border_title = self._header_text()
        if content_changed and not isinstance(self._body, StreamText):  # a stream is only appended to
            self._body.update(message.get("content") or "")
        self.refresh_bindings()

    def _header_text(self) -> Content:
        m = self.message
        parts: list[str | tuple[str, str]] = [(" You" if m["role"] == "user" else " Assistant", "bold")]
        notes = ["off the record"] if m.get("off_record") else []
        if m.get("origin") in _ORIGIN:
            notes.append(_ORIGIN[m["origin"]])
        if m.get("status") == "incomplete":
            notes.append("stopped")
        elif m.get("status") == "streaming":
            notes.append("writing…")
        notes.extend(_FEEDBACK[k] for k in m.get("feedback") or [] if k in _FEEDBACK)
        if notes:
            parts.append(("  " + " · ".join(notes), "italic"))
        if self.count > 1:
            parts.append((f"  ‹ {self.index}/{self.count} ›", "bold"))
        parts.append(" ")
        return Content.assemble(*parts)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.message_id is None or self.message.get("status") == "streaming":
            return action == "focus_neighbour"
        if action in _ANSWER_ONLY and self.message["role"] != "assistant":
            return False
        if action in _TEACHING and self.message.get("off_record"):
            return False
        if action == "prefer" and self.count < 2:
            return False
        if action == "sibling":
            step = int(parameters[0]) if parameters else 0  # type: ignore[call-overload]
            return 1 <= self.index + step <= self.count
        return True

    def action_edit(self) -> None:
        assert self.message_id
        self.post_message(self.EditRequested(self, self.message_id))

    def action_regenerate(self) -> None:
        assert self.message_id
        self.post_message(self.RegenerateRequested(self, self.message_id))

    def action_thumbs_up(self) -> None:
        assert self.message_id
        self.post_message(self.FeedbackGiven(self, self.message_id, "thumbs_up"))

    def action_thumbs_down(self) -> None:
        assert self.message_id
        self.post_message(self.FeedbackGiven(self, self.message_id, "thumbs_down"))

    def action_prefer(self) -> None:
        assert self.message_id
        self.post_message(self.FeedbackGiven(self, self.message_id, "choice"))

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.message.get("content") or "")
        self.notify("Copied the answer to the clipboard.")

    def action_sibling(self, step: int) -> None:
        assert self.message_id
        self.post_message(self.SiblingRequested(self, self.message_id, step))

    def action_focus_neighbour(self, step: int) -> None:
        if step < 0:
            self.screen.focus_previous(MessageBox)
        else:
            self.screen.focus_next(MessageBox)
