"""Every key binding of the chat, grouped by where it works."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

Section = tuple[str, Sequence[tuple[str, str]]]


class HelpScreen(ModalScreen[None]):
    """Shows the sections it is given (the app collects them from the widgets' BINDINGS)."""

    BINDINGS = [Binding("escape,f1,q", "close", "Close")]

    def __init__(self, sections: Sequence[Section]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Static("Keys  (Esc closes)", id="question")
            for title, keys in self.sections:
                table = Table.grid(padding=(0, 2))
                table.add_column(style="bold", no_wrap=True, min_width=16)
                table.add_column()
                for key, description in keys:
                    table.add_row(Text(key), Text(description))
                yield Static(title, markup=False, classes="help-section")
                yield Static(table, classes="help-keys")

    def action_close(self) -> None:
        self.dismiss(None)
