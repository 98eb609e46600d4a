"""The conversation tree as the chat shows it: which branch is on screen, and each turn's siblings.

The daemon returns a conversation as a flat list of messages linked by `parent_id` (a tree;
siblings share a parent). The UI shows one path from a root to a leaf. `selected` maps a parent id
(None for the roots) to the child shown under it; a parent without an entry shows the child whose
subtree holds the newest message, so a fresh answer, an edit, a regeneration or the branch the
user continued last is what opens. Pure functions over plain dicts: no widgets, no client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Selection", "branch", "children", "history", "position", "select", "siblings"]

Message = Mapping[str, Any]
Selection = dict[str | None, str]


def children(messages: Sequence[Message]) -> dict[str | None, list[Message]]:
    """Each parent id (None for roots) to its children, oldest first (the daemon's order)."""
    out: dict[str | None, list[Message]] = {}
    for m in messages:
        out.setdefault(m.get("parent_id"), []).append(m)
    return out


def _newest(messages: Sequence[Message]) -> dict[str, tuple[str, int]]:
    """Each message id to the newest (created_at, list index) found in its subtree."""
    kids = children(messages)
    order = {m["id"]: (str(m.get("created_at", "")), i) for i, m in enumerate(messages)}
    newest: dict[str, tuple[str, int]] = {}

    def visit(message_id: str) -> tuple[str, int]:
        stack = [message_id]
        post: list[str] = []
        while stack:  # iterative: a long conversation is a deep tree
            current = stack.pop()
            post.append(current)
            stack.extend(k["id"] for k in kids.get(current, []))
        for current in reversed(post):
            best = order[current]
            for k in kids.get(current, []):
                best = max(best, newest[k["id"]])
            newest[current] = best
        return newest[message_id]

    for root in kids.get(None, []):
        visit(root["id"])
    return newest


def branch(messages: Sequence[Message], selected: Mapping[str | None, str] | None = None) -> list[Message]:
    """The path shown: from a root down, the selected child at each step, else the newest."""
    selected = selected or {}
    kids = children(messages)
    newest = _newest(messages)
    path: list[Message] = []
    parent: str | None = None
    seen: set[str] = set()
    while kids.get(parent):
        options = kids[parent]
        wanted = selected.get(parent)
        chosen = next((m for m in options if m["id"] == wanted), None)
        if chosen is None:
            chosen = max(options, key=lambda m: newest.get(m["id"], ("", -1)))
        if chosen["id"] in seen:  # a malformed tree must not hang the UI
            break
        seen.add(chosen["id"])
        path.append(chosen)
        parent = chosen["id"]
    return path


def siblings(messages: Sequence[Message], message: Message) -> list[Message]:
    """The message and its siblings (same parent), oldest first."""
    return children(messages).get(message.get("parent_id"), [message])


def position(messages: Sequence[Message], message: Message) -> tuple[int, int]:
    """(1-based index among its siblings, number of siblings)."""
    group = siblings(messages, message)
    ids = [m["id"] for m in group]
    return (ids.index(message["id"]) + 1 if message["id"] in ids else 1), len(group)


def select(messages: Sequence[Message], selected: Mapping[str | None, str], message_id: str) -> Selection:
    """A selection that shows `message_id`: every ancestor on its chain is chosen."""
    by_id = {m["id"]: m for m in messages}
    out: Selection = dict(selected)
    current = by_id.get(message_id)
    while current is not None:
        parent = current.get("parent_id")
        out[parent] = current["id"]
        current = by_id.get(parent) if parent is not None else None
    return out


def history(path: Sequence[Message]) -> list[dict[str, str]]:
    """The turns to resend for `path`, as chat messages.

    An answer with no text (one the daemon never got to write, after a crash) is left out:
    resending it empty would be stored as the user's own rewrite of that answer.
    """
    return [
        {"role": str(m["role"]), "content": str(m.get("content") or "")}
        for m in path
        if not (m["role"] == "assistant" and not (m.get("content") or "").strip())
    ]
