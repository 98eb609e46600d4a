"""The chat's widgets, one class per module."""

from __future__ import annotations

from .chat_view import ChatView
from .conversation_list import ConversationList
from .message_box import MessageBox
from .prompt_input import PromptInput
from .status_line import StatusLine
from .stream_text import StreamText

__all__ = ["ChatView", "ConversationList", "MessageBox", "PromptInput", "StatusLine", "StreamText"]
