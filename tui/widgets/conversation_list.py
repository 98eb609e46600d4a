"""The list of conversations, most recently active first; picks one, and asks to rename or delete."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from textual import on
from textual.binding import Binding
from textual.message import Message
from textual.widgets import OptionList
from textual.content import Content
from textual.widgets.option_list import Option, OptionDoesNotExist


class ConversationList(OptionList):
    """Options are conversations (option id = conversation id)."""

    BINDINGS = [
        Binding("n", "new", "New", tooltip="Start a new conversation"),
        Binding("r", "rename", "Rename", tooltip="Rename the highlighted conversation"),
        Binding("delete,d", "delete", "Delete", tooltip="Delete the highlighted conversation (asks first)"),
    ]

    @dataclass
    class ConversationSelected(Message):
        """The user opened a conversation."""

        conversation_list: ConversationList
        conversation_id: str

    @dataclass
    class NewRequested(Message):
        """The user wants a fresh conversation."""

        conversation_list: ConversationList

    @dataclass
    class RenameRequested(Message):
        conversation_list: ConversationList
        conversation_id: str

    @dataclass
    class DeleteRequested(Message):
        conversation_list: ConversationList
        conversation_id: str

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "Conversations"
        self.border_subtitle = "^n new  f2 rename  f8 delete"

    def set_conversations(self, conversations: Sequence[dict[str, Any]], current: str | None) -> None:
        """Replace the options, keeping `current` highlighted."""
        self.clear_options()
        self.add_options(Option(Content(_title(c)), id=c["id"]) for c in conversations)
        if current is not None:
            try:
                self.highlighted = self.get_option_index(current)
            except OptionDoesNotExist:  # deleted elsewhere meanwhile
                self.highlighted = None
        else:
            self.highlighted = None

    @property
    def highlighted_id(self) -> str | None:
        option = self.highlighted_option
        return option.id if option is not None else None

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.ConversationSelected(self, event.option.id))

    def action_new(self) -> None:
        self.post_message(self.NewRequested(self))

    def action_rename(self) -> None:
        if (cid := self.highlighted_id) is not None:
            self.post_message(self.RenameRequested(self, cid))

    def action_delete(self) -> None:
        if (cid := self.highlighted_id) is not None:
            self.post_message(self.DeleteRequested(self, cid))


def _title(conversation: dict[str, Any]) -> str:
    return " ".join(str(conversation.get("title") or "").split()) or "(untitled)"
