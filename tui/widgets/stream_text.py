"""An answer while it streams: plain text that is repainted, and laid out again only in steps.

Re-laying out the chat on every refresh of a growing answer cost the model a tenth of its speed
on a two-core machine (benchmarks/tui_render.py): each layout moves every box below the new text
and repaints the whole chat. So this widget claims its height in steps of up to `STEP` lines
ahead of its text; while the text fits, a refresh repaints only the lines that changed. Lines
that ended are wrapped once; only the line being written is wrapped again. Its owner swaps in the Markdown
rendering once the answer is complete.
"""

from __future__ import annotations

from textual.content import Content
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.visual import Visual
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
        self._text = ""
        self._height = 0
        """The height of the last layout (text lines and room to grow)."""
        self._width = 0
        """The width `_ended` was wrapped at."""
        self._ended: list[Strip] = []
        """The wrapped lines of the text up to its last newline."""
        self._ended_at = 0
        """Where that text ends (just after the newline)."""
        self._lines: tuple[int, int, list[Strip]] = (0, 0, [])
        """(text length, width, all wrapped lines) of the last render."""

    @property
    def text(self) -> str:
        """Everything appended so far."""
        return self._text

    def append(self, text: str) -> None:
        """Add `text` at the end; lay out again only when it no longer fits the room kept."""
        if not text:
            return
        self._text += text
        width = self.size.width
        changed = len(self._ended)  # the first line that can change: the one being written
        lines = len(self._wrapped(width)) if width else 0
        if not width or lines > self._height:
            self.refresh(layout=True)
        else:
            self.refresh(Region(0, changed, width, lines - changed))  # repaint only those lines

    def render(self) -> Content:
        # Used for text selection (and to render while a selection is shown).
        return Content(self._text)

    def render_line(self, y: int) -> Strip:
        if self.text_selection is not None:
            return super().render_line(y)
        lines = self._wrapped(self.size.width)
        return lines[y] if y < len(lines) else Strip.blank(self.size.width, self.visual_style.rich_style)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        lines = len(self._wrapped(width)) if width else 0
        # Room for half as much again, at most STEP lines: a short answer opens in a short box.
        self._height = lines + min(self.STEP, lines // 2 + 1)
        return self._height

    def _wrapped(self, width: int) -> list[Strip]:
        """The text wrapped to `width`."""
        length, wrapped_width, lines = self._lines
        if (length, wrapped_width) == (len(self._text), width):
            return lines
        if width != self._width:
            self._width, self._ended, self._ended_at = width, [], 0
        end = self._text.rfind("\n") + 1
        if end > self._ended_at:
            self._ended += self._strips(self._text[self._ended_at:end - 1], width)
            self._ended_at = end
        lines = self._ended + self._strips(self._text[end:], width)
        self._lines = (len(self._text), width, lines)
        return lines

    def _strips(self, text: str, width: int) -> list[Strip]:
        return Visual.to_strips(self, Content(text), width, None, self.visual_style, apply_selection=False)
