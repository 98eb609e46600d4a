"""`rlhi import`: bootstrap the history from chats held elsewhere, then learn from them.

Two formats: OpenAI-style JSONL (one `{"messages": [...]}` per line, optionally with `title`
and `conversation_id`), and a ChatGPT data export's `conversations.json` (a list of
conversations whose `mapping` is a message tree; the branch shown last, ending at
`current_node`, is imported). Turns are stored like any resent history, so importing the same
file twice adds nothing; then the same mining as after a chat labels, pairs and persona.
A bad line or conversation is reported with its number and skipped; nothing stored is touched.
"Bad" covers anything a file can hold: invalid UTF-8 (per JSONL line; in an export, replaced),
JSON nested too deeply, wrong types anywhere, lone surrogates, ids the API would refuse.
"""

from __future__ import annotations

import json
import logging
import re
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
# The API's ID_PATTERN (api/schemas.py): an imported conversation can be continued by its name.
CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
BAD_ITEM = (ValueError, KeyError, TypeError, StopIteration, UnicodeError, RecursionError)
"""What parsing one untrusted line or conversation can raise; it costs that item only."""


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
        # Parts that are not text (images, or a "text" that is not a string) count as none.
        return "".join(p if isinstance(p, str) else _text_part(p) for p in content)
    if isinstance(content, dict):
        return _text(content.get("parts") or content.get("text") or "")
    raise ValueError(f"content of type {type(content).__name__} is not text")


def _text_part(part: Any) -> str:
    text = part.get("text") if isinstance(part, dict) else None
    return text if isinstance(text, str) else ""


def _obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: exports put anything anywhere."""
    return value if isinstance(value, dict) else {}


def _valid_text(value: str, what: str) -> str:
    try:
        value.encode("utf-8")  # a lone surrogate (JSON "\ud800") fails here, before the store
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
    return value


def _title(value: Any) -> str | None:
    return _valid_text(value, "title") if isinstance(value, str) and value else None


def _openai_messages(raw: Any) -> list[NewMessage]:
    if not isinstance(raw, list) or not raw:
        raise ValueError('"messages" must be a non-empty list')
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES | {"developer"}:
            raise ValueError(f"message {i} needs a role of system, user or assistant")
        role = "system" if m["role"] == "developer" else m["role"]
        text = _valid_text(_text(m.get("content") or ""), f"message {i}'s content")
        out.append(NewMessage(role, text))
    if not any(m.role == "user" for m in out):
        raise ValueError("no user message")
    return out


def _chatgpt_branch(conv: dict[str, Any]) -> list[NewMessage]:
    mapping = conv.get("mapping")
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError('"mapping" must be a non-empty object')
    node_id = conv.get("current_node")
    if not isinstance(node_id, str) or node_id not in mapping:  # follow the last child from the root
        node_id = next(k for k, v in mapping.items() if not _obj(v).get("parent"))
        seen: set[str] = set()
        while (children := _obj(mapping[node_id]).get("children")) and node_id not in seen:
            seen.add(node_id)
            node_id = children[-1]
    path = []
    seen = set()
    while isinstance(node_id, str) and node_id not in seen:
        seen.add(node_id)
        node = _obj(mapping[node_id])
        path.append(node)
        node_id = node.get("parent")
    out = []
    for node in reversed(path):
        message = _obj(node.get("message"))
        role = _obj(message.get("author")).get("role")
        text = _text(message.get("content") or "").strip() if message else ""
        if role in ROLES and text:
            out.append(NewMessage(role, _valid_text(text, f"the {role} message {len(out)}")))
    if not any(m.role == "user" for m in out):
        raise ValueError("no user message on the current branch")
    return out


def _problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "not valid JSON (nested too deeply)"
    if isinstance(exc, json.JSONDecodeError):  # a JSONL line is one line: its column says where
        where = f"column {exc.colno}" if exc.lineno == 1 else f"line {exc.lineno}, column {exc.colno}"
        return f"not valid JSON ({exc.msg} at {where})"
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1})"
    if isinstance(exc, KeyError):  # only a ChatGPT export's node ids are looked up
        return f'node {str(exc.args[0])[:80]!r} is not in "mapping"'
    return str(exc) or type(exc).__name__


def _jsonl_conversation(line: bytes) -> _Conversation | None:
    text = line.decode("utf-8")
    if not text.strip():
        return None
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    conv_id = obj.get("conversation_id")
    if conv_id is not None and not (isinstance(conv_id, str) and CONVERSATION_ID.match(conv_id)):
        raise ValueError(f'"conversation_id" {str(conv_id)[:80]!r} must match {CONVERSATION_ID.pattern}')
    return _Conversation("", _openai_messages(obj.get("messages")), _title(obj.get("title")), conv_id)


def parse_file(path: Path) -> Iterator[_Conversation | str]:
    """Conversations from `path`, or a problem string (naming the line or item) per bad one."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a BOM, as Windows tools write
    items: Any = None
    if data.lstrip().startswith(b"["):  # a ChatGPT export: one JSON array
        try:
            items = json.loads(data.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                yield f"{path.name}: {_problem(exc)}"
                return
            # More JSON after the first array: JSONL whose line 1 is an array (a bad line).
        except RecursionError as exc:
            yield f"{path.name}: {_problem(exc)}"
            return
    if isinstance(items, list):
        for i, conv in enumerate(items, start=1):
            try:
                if not isinstance(conv, dict):
                    raise ValueError("not an object")
                yield _Conversation(f"conversation {i}", _chatgpt_branch(conv), _title(conv.get("title")))
            except BAD_ITEM as exc:
                yield f"conversation {i}: {_problem(exc)}; skipped"
        return
    # Bytes, split on \n and \r only: str.splitlines() would also split inside a JSON string
    # at U+2028 or U+0085, which JSON allows unescaped; and each line is decoded on its own.
    for n, line in enumerate(data.splitlines(), start=1):
        try:
            conv = _jsonl_conversation(line)
        except BAD_ITEM as exc:
            yield f"line {n}: {_problem(exc)}; skipped"
            continue
        if conv is not None:
            yield _Conversation(f"line {n}", conv.messages, conv.title, conv.conversation_id)


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
