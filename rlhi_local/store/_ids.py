"""Ids, timestamps and history hashes shared by the store's modules."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import datetime, timezone

__all__ = ["new_id", "path_hash", "utc_now"]


def new_id(prefix: str) -> str:
    """A time-ordered, unguessable id such as `msg_18a3f0c2b1d4e5f6a7b8c9d0`."""
    return f"{prefix}_{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"


def path_hash(parent_hash: str, role: str, content: str) -> str:
    """Hash of a turn and everything before it: equal hashes mean equal histories."""
    h = hashlib.sha256()
    for part in (parent_hash, role, content):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


def utc_now() -> str:
    """Now, as the ISO-8601 UTC text every row stores (sortable as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
