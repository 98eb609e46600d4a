"""The one-line status under the chat: the model, the adapter serving it, and the daemon's state."""

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

    def render(self) -> Content:
        return Content.assemble(
            ("model ", "dim"), self.model,
            ("  ·  adapter ", "dim"), self.adapter,
            ("  ·  daemon ", "dim"), (self.state, "bold"),
        )

    def watch_problem(self, problem: bool) -> None:
        self.set_class(problem, "-problem")
