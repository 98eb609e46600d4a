"""Store queries and writes for the learning signals: detector labels, pairs and personas.

A mixin of `Store` (which owns the connection and the lock); split out so each file keeps one
job: `_store.py` holds conversations, this file what is learned from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import NotFoundError
from ..records import Message, Pair, PairOrigin, PairStatus, Persona
from ._ids import utc_now, new_id

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlite_utils import Database

__all__ = ["DetectorLabel", "SignalsMixin"]

_M = (
    "m.id, m.conversation_id, m.parent_id, m.role, m.content, m.origin, m.status, m.created_at, "
    "m.model, m.model_fingerprint, m.adapter_version, m.prompt_tokens, m.completion_tokens, "
    "m.ttft_ms, m.latency_ms, m.finish_reason"
)
_PAIR = (
    "id, user_id, conversation_id, prompt, persona_version, chosen, rejected, chosen_message_id, "
    "rejected_message_id, feedback_id, origin, instruction, quality, status, reason, created_at"
)


@dataclass(frozen=True)
class DetectorLabel:
    """A stored detector label: `followup_id` judged `message_id` as `kind`."""

    id: str
    message_id: str
    followup_id: str
    kind: str
    actionable: bool
    instruction: str
    confidence: float
    detector: str = "rules"
    """Which detector produced it: 'rules' or 'model' (`detector.model` in the config)."""


def _msg(row: dict[str, Any]) -> Message:
    return Message(**row)


def _pair(row: dict[str, Any]) -> Pair:
    row = dict(row)
    row["prompt"] = tuple(json.loads(row["prompt"]))
    return Pair(**row)


class SignalsMixin:
    """Needs `_atomic`, `_rows` and `get_message` from `Store`."""

    if TYPE_CHECKING:
        def _atomic(self) -> AbstractContextManager[Database]: ...
        def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
        def get_message(self, message_id: str) -> Message: ...

    # -- reading history --------------------------------------------------------------------

    def user_ids(self) -> list[str]:
        return [r["id"] for r in self._rows("SELECT id FROM users ORDER BY id")]

    def user_messages(self, user_id: str) -> list[Message]:
        """Every stored message of the user, oldest first (the persona's input)."""
        return [_msg(r) for r in self._rows(
            f"SELECT {_M} FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.user_id = ? AND m.status != 'streaming' ORDER BY m.created_at, m.rowid",
            [user_id],
        )]

    def last_message_at(self, user_id: str) -> str | None:
        """When the user's newest finished message was stored (None: no messages)."""
        rows = self._rows(
            "SELECT max(m.created_at) AS at FROM messages m JOIN conversations c "
            "ON c.id = m.conversation_id WHERE c.user_id = ? AND m.status != 'streaming'",
            [user_id],
        )
        return rows[0]["at"] if rows else None

    def branch(self, message_id: str) -> list[Message]:
        """The path from the conversation's root to `message_id`, inclusive."""
        rows = self._rows(
            f"WITH RECURSIVE up(id, depth) AS (SELECT ?, 0 UNION ALL "
            f"SELECT m.parent_id, up.depth + 1 FROM messages m JOIN up ON m.id = up.id "
            f"WHERE m.parent_id IS NOT NULL) "
            f"SELECT {_M} FROM up JOIN messages m ON m.id = up.id ORDER BY up.depth DESC",
            [message_id],
        )
        if not rows:
            raise NotFoundError(f"No message {message_id!r}.")
        return [_msg(r) for r in rows]

    def children(self, message_id: str, role: str = "assistant") -> list[Message]:
        return [_msg(r) for r in self._rows(
            f"SELECT {_M} FROM messages m WHERE m.parent_id = ? AND m.role = ? "
            "AND m.status != 'streaming' ORDER BY m.created_at, m.rowid",
            [message_id, role],
        )]

    def unlabelled_followups(self, user_id: str, detector_version: str, limit: int = 1000) -> list[Message]:
        """User turns that answer an assistant turn and have no label from this detector yet."""
        return [_msg(r) for r in self._rows(
            f"SELECT {_M} FROM messages m JOIN messages a ON a.id = m.parent_id "
            "JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.user_id = ? AND m.role = 'user' AND a.role = 'assistant' AND NOT EXISTS ("
            "  SELECT 1 FROM feedback f WHERE f.followup_id = m.id AND f.source = 'detector' "
            "  AND f.detector_version = ?) ORDER BY m.rowid LIMIT ?",
            [user_id, detector_version, limit],
        )]

    # -- feedback -----------------------------------------------------------------------------

    def add_detector_label(
        self, user_id: str, message_id: str, followup_id: str, kind: str, actionable: bool,
        instruction: str, confidence: float, detector_version: str, detector: str = "rules",
    ) -> None:
        with self._atomic() as db:
            db.execute(
                "INSERT OR IGNORE INTO feedback (id, user_id, message_id, followup_id, kind, source, "
                "actionable, instruction, confidence, detector_version, created_at, detector) "
                "VALUES (?, ?, ?, ?, ?, 'detector', ?, ?, ?, ?, ?, ?)",
                [new_id("fb"), user_id, message_id, followup_id, kind, int(actionable), instruction,
                 confidence, detector_version, utc_now(), detector],
            )

    def detector_labels(self, user_id: str, detector_version: str) -> list[DetectorLabel]:
        return [
            DetectorLabel(r["id"], r["message_id"], r["followup_id"], r["kind"], bool(r["actionable"]),
                          r["instruction"], r["confidence"], r["detector"] or "rules")
            for r in self._rows(
                "SELECT id, message_id, followup_id, kind, actionable, instruction, confidence, detector "
                "FROM feedback WHERE user_id = ? AND source = 'detector' AND detector_version = ? "
                "ORDER BY rowid",
                [user_id, detector_version],
            )
        ]

    def user_judgements(self, user_id: str, kind: str) -> list[tuple[str, Message]]:
        """(feedback id, judged answer) for the user's own `thumbs_up|thumbs_down|choice`."""
        rows = self._rows(
            f"SELECT f.id AS feedback_id, {_M} FROM feedback f JOIN messages m ON m.id = f.message_id "
            "WHERE f.user_id = ? AND f.source = 'user' AND f.kind = ? ORDER BY f.rowid",
            [user_id, kind],
        )
        return [(r.pop("feedback_id"), _msg(r)) for r in rows]

    def user_edits(self, user_id: str) -> list[tuple[str, Message, Message]]:
        """(feedback id, original answer, the user's edit of it), oldest first."""
        out = []
        for feedback_id, original in self.user_judgements(user_id, "edit"):
            row = self._rows("SELECT followup_id FROM feedback WHERE id = ?", [feedback_id])
            if row and row[0]["followup_id"]:
                out.append((feedback_id, original, self.get_message(row[0]["followup_id"])))
        return out

    # -- pairs --------------------------------------------------------------------------------

    def add_pair(
        self, *, user_id: str, conversation_id: str, prompt: Sequence[dict[str, str]],
        persona_version: int | None, chosen: str, rejected: str, chosen_message_id: str | None,
        rejected_message_id: str, feedback_id: str | None, origin: PairOrigin, instruction: str,
        status: PairStatus, reason: str = "", quality: float | None = None,
    ) -> str | None:
        """Insert a pair unless the same one (origin, both sides, feedback) exists; its id or None."""
        with self._atomic() as db:
            exists = db.execute(
                "SELECT 1 FROM pairs WHERE origin = ? AND rejected_message_id = ? "
                "AND chosen_message_id IS ? AND feedback_id IS ?",
                [origin, rejected_message_id, chosen_message_id, feedback_id],
            ).fetchone()
            if exists:
                return None
            pair_id = new_id("pair")
            db.execute(
                f"INSERT INTO pairs ({_PAIR}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [pair_id, user_id, conversation_id, json.dumps(list(prompt), ensure_ascii=False),
                 persona_version, chosen, rejected, chosen_message_id, rejected_message_id, feedback_id,
                 origin, instruction, quality, status, reason, utc_now()],
            )
            return pair_id

    def update_pair(self, pair_id: str, *, chosen: str, status: PairStatus, reason: str = "",
                    quality: float | None = None) -> None:
        with self._atomic() as db:
            db.execute(
                "UPDATE pairs SET chosen = ?, status = ?, reason = ?, quality = ? WHERE id = ?",
                [chosen, status, reason, quality, pair_id],
            )

    def pairs(self, user_id: str, status: PairStatus | None = None, origin: PairOrigin | None = None) -> list[Pair]:
        sql = f"SELECT {_PAIR} FROM pairs WHERE user_id = ?"
        params: list[Any] = [user_id]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        if origin is not None:
            sql += " AND origin = ?"
            params.append(origin)
        return [_pair(r) for r in self._rows(sql + " ORDER BY rowid", params)]

    # -- personas -----------------------------------------------------------------------------

    def active_persona(self, user_id: str) -> Persona | None:
        rows = self._rows(
            "SELECT id, user_id, version, card, facts, source, created_at FROM personas "
            "WHERE user_id = ? ORDER BY version DESC LIMIT 1",
            [user_id],
        )
        return Persona(**rows[0]) if rows else None

    def persona_history(self, user_id: str) -> list[Persona]:
        return [Persona(**r) for r in self._rows(
            "SELECT id, user_id, version, card, facts, source, created_at FROM personas "
            "WHERE user_id = ? ORDER BY version",
            [user_id],
        )]

    def update_persona_facts(self, persona_id: str, facts: str) -> None:
        """Refresh counts and evidence of a version whose card is unchanged (see mining)."""
        with self._atomic() as db:
            db.execute("UPDATE personas SET facts = ? WHERE id = ?", [facts, persona_id])

    def add_persona(self, user_id: str, card: str, facts: str, source: str) -> Persona:
        """A new persona version (the newest is active)."""
        with self._atomic() as db:
            db.execute("INSERT OR IGNORE INTO users (id, created_at) VALUES (?, ?)", [user_id, utc_now()])
            version = db.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM personas WHERE user_id = ?", [user_id]
            ).fetchone()[0]
            db.execute(
                "INSERT INTO personas (id, user_id, version, card, facts, source, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [new_id("persona"), user_id, version, card, facts, source, utc_now()],
            )
        persona = self.active_persona(user_id)
        assert persona is not None
        return persona
