"""The scrolling chat: one `MessageBox` per turn of the branch on screen.

It follows the tail while new text arrives only when the user is at the bottom (Textual's anchor
lets go as soon as they scroll up and takes hold again when they return).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.containers import VerticalScroll
from textual.widgets import Static

from .message_box import MessageBox

EMPTY_HINT = "A new conversation. Type below and press Enter; F1 lists every key."


class ChatView(VerticalScroll, can_focus=False):
    """Shows the branch the app hands it; keeps boxes that did not change, so focus and
    rendered Markdown survive an update."""

    hint = EMPTY_HINT
    """What an empty conversation says (the app sets another one for an off-the-record one)."""

    def on_mount(self) -> None:
        self.anchor()

    @property
    def boxes(self) -> list[MessageBox]:
        return list(self.query_children(MessageBox))

    async def show(self, path: Sequence[dict[str, Any]], positions: Sequence[tuple[int, int]]) -> None:
        """Display `path` (root to leaf); `positions[i]` is (index, count) among siblings."""
        boxes = self.boxes
        keep = 0
        for box, message in zip(boxes, path):
            same = box.message_id == message["id"] and box.message.get("status") != "streaming"
            if not same:
                break
            keep += 1
        for box, message, (index, count) in zip(boxes[:keep], path, positions):
            box.update(message, index, count)
        await self.remove_children(boxes[keep:])
        new = [MessageBox(m, i, n) for m, (i, n) in zip(path[keep:], positions[keep:])]
        await self._set_hint(not path)
        if new:
            await self.mount_all(new)
        self.anchor()

    async def truncate(self, keep: int) -> None:
        """Drop every box after the first `keep` (a regeneration replaces the answer shown)."""
        await self.remove_children(self.boxes[keep:])

    async def begin_turn(self, user_text: str | None) -> MessageBox:
        """Show the user's new turn (if any) and an empty answer to stream into."""
        await self._set_hint(False)
        new: list[MessageBox] = []
        if user_text is not None:
            new.append(MessageBox({"id": None, "role": "user", "content": user_text, "status": "complete"}))
        answer = MessageBox({"id": None, "role": "assistant", "content": "", "status": "streaming"},
                            streaming=True)
        new.append(answer)
        await self.mount_all(new)
        self.anchor()
        return answer

    def box_for(self, message_id: str) -> MessageBox | None:
        return next((b for b in self.boxes if b.message_id == message_id), None)

    async def _set_hint(self, show: bool) -> None:
        hints = list(self.query_children(".empty-hint"))
        if show and hints:
            for hint in hints:
                if isinstance(hint, Static):
                    hint.update(self.hint)
        elif show and not hints:
            await self.mount(Static(self.hint, classes="empty-hint"))
        elif not show and hints:
            await self.remove_children(hints)
