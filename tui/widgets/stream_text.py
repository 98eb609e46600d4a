"""An answer while it streams: plain text that is repainted, and laid out again only in steps.

Re-laying out the chat on every refresh of a growing answer cost the model a tenth of its speed
on a two-core machine (benchmarks/tui_render.py): each layout moves every box below the new text
and repaints the whole chat. So this widget claims its height in steps of up to `STEP` lines
ahead of its text; while the text fits, a refresh repaints this widget alone. Its owner swaps in
the Markdown rendering once the answer is complete.
"""

from __future__ import annotations

from textual.content import Content
from textual.geometry import Size
from textual.widget import Widget


class StreamText(Widget):
    """Text appended piece by piece, shown as typed (no Markdown), with room to grow."""

    DEFAULT_CSS = """
    StreamText {
        height: auto;
    }
    """

    STEP = 8
    """The most blank lines kept below the text, so that most appends need no layout."""

    def __init__(self, *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self._content = Content("")
        self._height = 0
        """The height of the last layout (text lines and room to grow)."""

    @property
    def text(self) -> str:
        """Everything appended so far."""
        return self._content.plain

    def append(self, text: str) -> None:
        """Add `text` at the end; lay out again only when it no longer fits the room kept."""
        if not text:
            return
        self._content = Content(self._content.plain + text)
        width = self.content_size.width
        if not width or self._content.get_height(self.styles, width) > self._height:
            self.refresh(layout=True)
        else:
            self.refresh()

    def render(self) -> Content:
        return self._content

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        lines = self._content.get_height(self.styles, width) if width else 0
        # Room for half as much again, at most STEP lines: a short answer opens in a short box.
        self._height = lines + min(self.STEP, lines // 2 + 1)
        return self._height
