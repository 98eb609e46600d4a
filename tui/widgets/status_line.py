"""The one-line status under the chat: the model, the adapter serving it, and the daemon's state;
and, when so, that learning is paused or that this conversation is off the record."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Static


class StatusLine(Static):
    """Shows what the app sets; it asks nothing itself (attributes down)."""

    model: reactive[str] = reactive("…")
    """The model id the daemon serves."""
    adapter: reactive[str] = reactive("base")
    """The adapter that answers: `v3`, or `base` for the base model (set by the app)."""
    state: reactive[str] = reactive("starting daemon…")
    """The daemon as the app last saw it: starting, ready, generating, unreachable…"""
    problem: reactive[bool] = reactive(False)
    """True while the state is a fault, so it can be styled as one."""
    paused: reactive[bool] = reactive(False)
    """Learning as a whole is paused (F5, `rlhi pause`, or the config): shown until resumed."""
    off_record: reactive[bool] = reactive(False)
    """The conversation on screen is off the record (F9): nothing of it is stored."""

    def render(self) -> Content:
        # What keeps data out of learning comes first, so a narrow terminal never cuts it off.
        parts: list[str | tuple[str, str]] = []
        if self.off_record:
            parts += [("off the record", "bold $accent"), ("  ·  ", "dim")]
        if self.paused:
            parts += [("learning paused", "bold $warning"), ("  ·  ", "dim")]
        parts += [
            ("model ", "dim"), self.model,
            ("  ·  adapter ", "dim"), self.adapter,
            ("  ·  daemon ", "dim"), (self.state, "bold"),
        ]
        return Content.assemble(*parts)

    def watch_problem(self, problem: bool) -> None:
        self.set_class(problem, "-problem")
