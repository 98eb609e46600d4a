"""The multi-line prompt: Enter sends, Ctrl+J (or Shift+Enter where the terminal reports it) adds a line."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


PLACEHOLDER = "Ask anything (Enter sends, Ctrl+J adds a line, F1 keys)"


class PromptInput(TextArea):
    """A TextArea whose Enter sends. Sending clears nothing: the app decides, so a refused
    message stays where it was typed."""

    BINDINGS = [
        Binding("enter", "submit", "Send", tooltip="Send the message"),
        Binding("ctrl+j,shift+enter", "newline", "Newline", tooltip="Start a new line"),
    ]

    @dataclass
    class Submitted(Message):
        """The user asked to send the text."""

        prompt_input: PromptInput
        text: str

        @property
        def control(self) -> PromptInput:
            return self.prompt_input

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(
            soft_wrap=True,
            tab_behavior="focus",
            show_line_numbers=False,
            placeholder=PLACEHOLDER,
            id=id,
        )

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            # Keep TextArea from inserting a newline; the key bubbles on to the `enter` binding.
            event.prevent_default()

    def action_submit(self) -> None:
        self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.insert("\n")

    def restore(self, text: str) -> None:
        """Put back text that could not be sent, ahead of anything typed since."""
        current = self.text
        self.load_text(text if not current.strip() else f"{text}\n{current}")
        self.move_cursor(self.document.end)
