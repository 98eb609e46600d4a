"""`rlhi import`: bootstrap the history from chats held elsewhere, then learn from them.

Two formats: OpenAI-style JSONL (one `{"messages": [...]}` per line, optionally with `title`
and `conversation_id`), and a ChatGPT data export's `conversations.json` (a list of
conversations whose `mapping` is a message tree; the branch shown last, ending at
`current_node`, is imported). Turns are stored like any resent history, so importing the same
file twice adds nothing; then the same mining as after a chat labels, pairs and persona.
A bad line or conversation is reported with its number and skipped; nothing stored is touched.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import RlhiError
from .mining import MiningReport, mine
from .records import NewMessage
from .store import Store

__all__ = ["ImportReport", "import_file", "parse_file"]

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}


@dataclass
class ImportReport:
    conversations: int = 0
    messages: int = 0
    problems: list[str] = field(default_factory=list)
    mining: MiningReport | None = None


@dataclass(frozen=True)
class _Conversation:
    where: str
    messages: list[NewMessage]
    title: str | None = None
    conversation_id: str | None = None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI parts, or ChatGPT's `parts`
        return "".join(p if isinstance(p, str) else p.get("text", "") if isinstance(p, dict) else ""
                       for p in content)
    if isinstance(content, dict):
        return _text(content.get("parts") or content.get("text") or "")
    raise ValueError(f"content of type {type(content).__name__} is not text")


def _openai_messages(raw: Any) -> list[NewMessage]:
    if not isinstance(raw, list) or not raw:
        raise ValueError('"messages" must be a non-empty list')
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES | {"developer"}:
            raise ValueError(f"message {i} needs a role of system, user or assistant")
        role = "system" if m["role"] == "developer" else m["role"]
        text = _text(m.get("content") or "")
        text.encode("utf-8")  # a lone surrogate fails here, before anything is stored
        out.append(NewMessage(role, text))
    if not any(m.role == "user" for m in out):
        raise ValueError("no user message")
    return out


def _chatgpt_branch(conv: dict[str, Any]) -> list[NewMessage]:
    mapping = conv.get("mapping")
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError('"mapping" must be a non-empty object')
    node_id = conv.get("current_node")
    if node_id not in mapping:  # no current node: follow the last child from the root
        node_id = next(k for k, v in mapping.items() if not v.get("parent"))
        while mapping[node_id].get("children"):
            node_id = mapping[node_id]["children"][-1]
    path = []
    seen = set()
    while node_id is not None and node_id not in seen:
        seen.add(node_id)
        path.append(mapping[node_id])
        node_id = mapping[node_id].get("parent")
    out = []
    for node in reversed(path):
        message = node.get("message") or {}
        role = (message.get("author") or {}).get("role")
        text = _text(message.get("content") or "").strip() if message else ""
        if role in ROLES and text:
            out.append(NewMessage(role, text))
    if not any(m.role == "user" for m in out):
        raise ValueError("no user message on the current branch")
    return out


def parse_file(path: Path) -> Iterator[_Conversation | str]:
    """Conversations from `path`, or a problem string (naming the line or item) per bad one."""
    text = path.read_text(encoding="utf-8", errors="replace")
    stripped = text.lstrip()
    if stripped.startswith("["):  # a ChatGPT export: one JSON array
        try:
            items = json.loads(stripped)
        except ValueError as exc:
            yield f"{path.name}: not valid JSON ({exc})"
            return
        for i, conv in enumerate(items, start=1):
            try:
                if not isinstance(conv, dict):
                    raise ValueError("not an object")
                yield _Conversation(f"conversation {i}", _chatgpt_branch(conv), conv.get("title") or None)
            except (ValueError, KeyError, TypeError, StopIteration, UnicodeError) as exc:
                yield f"conversation {i}: {exc or type(exc).__name__}; skipped"
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("expected a JSON object")
            conv_id = obj.get("conversation_id")
            yield _Conversation(f"line {n}", _openai_messages(obj.get("messages")),
                                obj.get("title") if isinstance(obj.get("title"), str) else None,
                                conv_id if isinstance(conv_id, str) else None)
        except (ValueError, UnicodeError) as exc:
            yield f"line {n}: {exc}; skipped"


def import_file(store: Store, path: Path, user_id: str = "local", learn: bool = True) -> ImportReport:
    """Store every conversation in `path` for `user_id`, then mine them (unless `learn=False`)."""
    report = ImportReport()
    for item in parse_file(path):
        if isinstance(item, str):
            report.problems.append(item)
            continue
        try:
            placed = store.place_turns(user_id, item.messages, conversation_id=item.conversation_id,
                                       imported=True)
        except RlhiError as exc:
            report.problems.append(f"{item.where}: {exc}; skipped")
            continue
        if item.title and placed.new_message_ids:
            store.rename_conversation(user_id, placed.conversation_id, item.title[:200])
        report.conversations += 1 if placed.new_message_ids else 0
        report.messages += len(placed.new_message_ids)
    if learn and report.messages:
        report.mining = mine(store, user_id)
    log.info("imported %s: conversations=%d messages=%d problems=%d", path, report.conversations,
             report.messages, len(report.problems))
    return report
