"""Rewrite an answer the way it should have been; saving stores it as the user's own (`user_edit`)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Static, TextArea


class EditScreen(ModalScreen[str | None]):
    """Dismisses with the rewritten text, or None when cancelled or unchanged."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, content: str) -> None:
        super().__init__()
        self.original = content

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(
                "Rewrite the answer as you wanted it. Ctrl+S saves it as your edit (the original "
                "is kept); Esc cancels.",
                id="question",
            )
            yield TextArea(self.original, soft_wrap=True, tab_behavior="indent", id="editor")
            with Horizontal(id="buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        editor = self.query_one("#editor", TextArea)
        editor.focus()
        editor.move_cursor(editor.document.end)

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        text = self.query_one("#editor", TextArea).text
        if not text.strip():
            self.notify("An empty answer cannot be saved; Esc cancels.", severity="warning")
            return
        self.dismiss(None if text == self.original else text)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
