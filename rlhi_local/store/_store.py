"""The SQLite store: the only code that writes SQL. Opening it migrates.

Invariants: a user's turn is committed before the model sees it; an answer row exists (status
`streaming`) from the moment generation starts, so a crash leaves it `incomplete`, never missing;
a resent history stores only what is new, and a divergent one becomes a branch.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from sqlite_utils import Database

from ..errors import InvalidRequestError, NotFoundError, StoreError, StoreUnwritableError
from ..records import Conversation, Message, NewMessage, Origin, Status, User, UserFeedbackKind
from ._faults import check_database_file, open_error, read_error, write_error
from ._ids import utc_now, new_id, path_hash
from ._privacy import PrivacyMixin
from ._reward import RewardMixin
from ._schedule import ScheduleMixin
from ._training import TrainingMixin
from ._signals import SignalsMixin
from .migrations import migrations

__all__ = ["PlacedTurn", "Store", "new_id", "path_hash"]

log = logging.getLogger(__name__)

_MESSAGE_COLUMNS = (
    "id, conversation_id, parent_id, role, content, origin, status, created_at, model, "
    "model_fingerprint, adapter_version, prompt_tokens, completion_tokens, ttft_ms, latency_ms, "
    "finish_reason"
)


@dataclass(frozen=True)
class PlacedTurn:
    """Where a request's turns went: the ids a response reports back to its client."""

    conversation_id: str
    new_message_ids: tuple[str, ...]
    """Ids of the turns of this request that were not stored before (usually the user's last)."""
    parent_id: str | None
    """The stored message the answer follows (the request's last turn)."""
    answer_id: str | None
    """The answer's row, `streaming` until `finish_answer`; None when nothing is stored."""
    answer_origin: Origin


class Store(SignalsMixin, TrainingMixin, ScheduleMixin, RewardMixin, PrivacyMixin):
    """Owns the SQLite connection. Safe to call from several threads (one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self.unwritable: str | None = None
        """Why the last write failed when the disk refused it (full, read-only), until a write
        succeeds again; /health shows it."""
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fresh = not self.path.exists()
            check_database_file(self.path)  # a damaged file is refused before SQLite writes to it
            old_umask = os.umask(0o077)
            try:
                conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
                self.db = Database(conn, execute_plugins=False)
                # WAL must be switched on outside any transaction.
                self.db.enable_wal()
                self.db.execute("PRAGMA foreign_keys = ON")
                self.db.execute("PRAGMA synchronous = NORMAL")
                # Deleted rows are zeroed on disk, not just unlinked (`forget`, DESIGN §6).
                self.db.execute("PRAGMA secure_delete = ON")
                migrations.apply(self.db)
            finally:
                os.umask(old_umask)
            self._secure_files()
            recovered = self._recover_streaming()
        except (sqlite3.DatabaseError, StoreError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, StoreError):
                raise
            raise open_error(exc, self.path) from exc
        log.info("store open path=%s fresh=%s recovered_incomplete=%d", self.path, fresh, recovered)

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()

    # -- internals -------------------------------------------------------------------------

    def _secure_files(self) -> None:
        """Database files are 0600; a looser mode (a copy, a restore, a umask) is repaired and said."""
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                mode = p.stat().st_mode & 0o777
                if mode != 0o600:
                    log.warning("repairing permissions of %s: %o -> 600 (it holds private data)", p, mode)
                os.chmod(p, 0o600)

    @contextmanager
    def _atomic(self) -> Iterator[Database]:
        with self._lock:
            try:
                with self.db.atomic():
                    yield self.db
            except sqlite3.Error as exc:
                error = write_error(exc, self.path)
                if isinstance(error, StoreUnwritableError):
                    self.unwritable = str(error)
                raise error from exc
            self.unwritable = None

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            try:
                cursor = self.db.execute(sql, params)
                names = [d[0] for d in cursor.description]
                return [dict(zip(names, row)) for row in cursor.fetchall()]
            except sqlite3.Error as exc:
                raise read_error(exc, self.path) from exc

    def _recover_streaming(self) -> int:
        """Answers left `streaming` by a crash become `incomplete`: kept, and marked so."""
        with self._atomic() as db:
            cursor = db.execute(
                "UPDATE messages SET status = 'incomplete', finish_reason = 'interrupted' "
                "WHERE status = 'streaming'"
            )
            return cursor.rowcount

    # -- users and conversations ------------------------------------------------------------

    def _ensure_user_in_transaction(self, db: Database, user_id: str) -> None:
        db.execute(
            "INSERT OR IGNORE INTO users (id, created_at) VALUES (?, ?)", [user_id, utc_now()]
        )

    def get_user(self, user_id: str) -> User | None:
        rows = self._rows("SELECT id, created_at FROM users WHERE id = ?", [user_id])
        return User(**rows[0]) if rows else None

    def list_conversations(self, user_id: str, limit: int = 100, offset: int = 0) -> list[Conversation]:
        rows = self._rows(
            "SELECT c.id, c.user_id, c.title, c.created_at, c.updated_at, "
            "(SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count "
            "FROM conversations c WHERE c.user_id = ? ORDER BY c.updated_at DESC, c.id DESC "
            "LIMIT ? OFFSET ?",
            [user_id, limit, offset],
        )
        return [Conversation(**r) for r in rows]

    def get_conversation(self, user_id: str, conversation_id: str) -> Conversation:
        rows = self._rows(
            "SELECT id, user_id, title, created_at, updated_at FROM conversations "
            "WHERE id = ? AND user_id = ?",
            [conversation_id, user_id],
        )
        if not rows:
            raise NotFoundError(f"No conversation {conversation_id!r} for user {user_id!r}.")
        kinds: dict[str, list[str]] = {}
        for r in self._rows(
            "SELECT f.message_id, f.kind FROM feedback f JOIN messages m ON m.id = f.message_id "
            "WHERE m.conversation_id = ? AND f.source = 'user' AND f.user_id = ? ORDER BY f.rowid",
            [conversation_id, user_id],
        ):
            kinds.setdefault(r["message_id"], []).append(r["kind"])
        messages = tuple(
            Message(**r, feedback=tuple(kinds.get(r["id"], ())))
            for r in self._rows(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? "
                "ORDER BY created_at, rowid",
                [conversation_id],
            )
        )
        return Conversation(**rows[0], message_count=len(messages), messages=messages)

    def rename_conversation(self, user_id: str, conversation_id: str, title: str) -> Conversation:
        with self._atomic() as db:
            cursor = db.execute(
                "UPDATE conversations SET title = ?, updated_at = ? WHERE id = ? AND user_id = ?",
                [title, utc_now(), conversation_id, user_id],
            )
            if cursor.rowcount == 0:
                raise NotFoundError(f"No conversation {conversation_id!r} for user {user_id!r}.")
        return self.get_conversation(user_id, conversation_id)

    def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        with self._atomic() as db:
            cursor = db.execute(
                "DELETE FROM conversations WHERE id = ? AND user_id = ?", [conversation_id, user_id]
            )
            if cursor.rowcount == 0:
                raise NotFoundError(f"No conversation {conversation_id!r} for user {user_id!r}.")

    def _owned_message_in_transaction(self, db: Database, user_id: str, message_id: str) -> Message:
        cursor = db.execute(
            f"SELECT {', '.join('m.' + c.strip() for c in _MESSAGE_COLUMNS.split(','))} "
            "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE m.id = ? AND c.user_id = ?",
            [message_id, user_id],
        )
        row = cursor.fetchone()
        if row is None:
            raise NotFoundError(f"No message {message_id!r} for user {user_id!r}.")
        return Message(**dict(zip([d[0] for d in cursor.description], row)))

    def edit_message(self, user_id: str, message_id: str, content: str) -> Message:
        """Store the user's rewrite of an answer as its `user_edit` sibling (the original stays)."""
        with self._atomic() as db:
            original = self._owned_message_in_transaction(db, user_id, message_id)
            if original.role != "assistant":
                raise InvalidRequestError(
                    f"Message {message_id!r} is a {original.role} turn; only answers are edited this "
                    f"way. To change a question, resend the conversation with the new text."
                )
            parent_hash = ""
            if original.parent_id is not None:
                row = db.execute(
                    "SELECT path_hash FROM messages WHERE id = ?", [original.parent_id]
                ).fetchone()
                parent_hash = row[0] if row else ""
            edit_id = new_id("msg")
            now = utc_now()
            db.execute(
                "INSERT INTO messages (id, conversation_id, parent_id, role, content, origin, status, "
                "path_hash, created_at) VALUES (?, ?, ?, 'assistant', ?, 'user_edit', 'complete', ?, ?)",
                [edit_id, original.conversation_id, original.parent_id, content,
                 path_hash(parent_hash, "assistant", content), now],
            )
            db.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = ?", [now, original.conversation_id]
            )
            self._insert_feedback(db, user_id, message_id, "edit", followup_id=edit_id)
        return self.get_message(edit_id)

    def record_feedback(self, user_id: str, message_id: str, kind: UserFeedbackKind) -> str:
        """Record a thumbs or a choice. A new thumbs replaces the user's previous one on that
        message; a choice replaces any earlier choice among the same prompt's answers."""
        with self._atomic() as db:
            message = self._owned_message_in_transaction(db, user_id, message_id)
            if message.role != "assistant":
                raise InvalidRequestError(f"Message {message_id!r} is not an answer; only answers are judged.")
            if kind == "choice":
                siblings = self._answer_siblings(db, message)
                if len(siblings) < 2:
                    raise InvalidRequestError(
                        f"Message {message_id!r} is the only answer to its prompt; a choice needs two "
                        f"or more (regenerate first)."
                    )
                return self._choose_in_transaction(db, user_id, message_id, siblings)
            db.execute(
                "DELETE FROM feedback WHERE user_id = ? AND message_id = ? AND source = 'user' "
                "AND kind IN ('thumbs_up', 'thumbs_down')",
                [user_id, message_id],
            )
            return self._insert_feedback(db, user_id, message_id, kind)

    @staticmethod
    def _answer_siblings(db: Database, message: Message) -> list[str]:
        if message.parent_id is None:
            return [message.id]
        return [
            r[0]
            for r in db.execute(
                "SELECT id FROM messages WHERE parent_id = ? AND role = 'assistant'", [message.parent_id]
            ).fetchall()
        ]

    def _choose_in_transaction(self, db: Database, user_id: str, message_id: str, siblings: list[str]) -> str:
        placeholders = ",".join("?" * len(siblings))
        db.execute(
            f"DELETE FROM feedback WHERE user_id = ? AND kind = 'choice' AND source = 'user' "
            f"AND message_id IN ({placeholders})",
            [user_id, *siblings],
        )
        return self._insert_feedback(db, user_id, message_id, "choice")

    @staticmethod
    def _insert_feedback(
        db: Database, user_id: str, message_id: str, kind: str, followup_id: str | None = None
    ) -> str:
        """A user judgement; kind `edit` links the judged answer to its edit (`followup_id`)."""
        feedback_id = new_id("fb")
        db.execute(
            "INSERT INTO feedback (id, user_id, message_id, followup_id, kind, source, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'user', ?)",
            [feedback_id, user_id, message_id, followup_id, kind, utc_now()],
        )
        return feedback_id

    def get_message(self, message_id: str) -> Message:
        rows = self._rows(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", [message_id])
        if not rows:
            raise NotFoundError(f"No message {message_id!r}.")
        return Message(**rows[0])

    # -- turns -------------------------------------------------------------------------------

    def place_turns(
        self,
        user_id: str,
        history: Sequence[NewMessage],
        conversation_id: str | None = None,
        model: str | None = None,
        model_fingerprint: str | None = None,
        imported: bool = False,
        adapter_version: str | None = None,
    ) -> PlacedTurn:
        """Store what is new in `history` and open the answer row, in one transaction.

        `imported=True` (history from elsewhere, `rlhi import`): assistant turns are `imported`,
        never edits, and no answer row is opened.

        The history is matched against stored turns by chained hashes: inside the named
        conversation, or (unnamed) in the user's most recent conversation that holds the same
        history including at least one answer, so an OpenAI client that resends its messages
        continues one conversation. A turn that differs from the stored one starts a branch.
        """
        if not history:
            raise ValueError("history must hold at least one message")
        hashes: list[str] = []
        parent = ""
        for m in history:
            parent = path_hash(parent, m.role, m.content)
            hashes.append(parent)
        with self._atomic() as db:
            self._ensure_user_in_transaction(db, user_id)
            now = utc_now()
            if conversation_id is not None:
                owner = db.execute(
                    "SELECT user_id FROM conversations WHERE id = ?", [conversation_id]
                ).fetchone()
                if owner is None:
                    self._create_conversation_in_transaction(db, conversation_id, user_id, history, now)
                elif owner[0] != user_id:
                    raise NotFoundError(f"No conversation {conversation_id!r} for user {user_id!r}.")
            depth, parent_id, found_conversation = self._match_in_transaction(
                db, user_id, hashes, history, conversation_id, imported
            )
            if conversation_id is None:
                conversation_id = found_conversation or new_id("conv")
                if found_conversation is None:
                    self._create_conversation_in_transaction(db, conversation_id, user_id, history, now)
            new_ids: list[str] = []
            if parent_id is not None and depth < len(history) and history[depth].role == "user":
                # Continuing from one of several answers to a prompt is choosing it.
                parent = self.get_message(parent_id)
                if parent.role == "assistant":
                    siblings = self._answer_siblings(db, parent)
                    if len(siblings) >= 2:
                        self._choose_in_transaction(db, user_id, parent_id, siblings)
            for i in range(depth, len(history)):
                m = history[i]
                origin: Origin = "user"
                edited: str | None = None
                if m.role == "assistant" and not imported:
                    edited = self._latest_answer(db, parent_id)
                    origin = "user_edit" if edited else "imported"
                elif m.role == "assistant":
                    origin = "imported"
                msg_id = new_id("msg")
                db.execute(
                    "INSERT INTO messages (id, conversation_id, parent_id, role, content, origin, "
                    "status, path_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, 'complete', ?, ?)",
                    [msg_id, conversation_id, parent_id, m.role, m.content, origin, hashes[i], now],
                )
                if edited is not None:
                    # A client resent an answer that differs from the stored one: an edit of the
                    # latest answer at that point (the UI's edit action names it exactly).
                    self._insert_feedback(db, user_id, edited, "edit", followup_id=msg_id)
                new_ids.append(msg_id)
                parent_id = msg_id
            answer_origin: Origin = (
                "regenerate" if self._has_answer(db, parent_id) else "model"
            )
            if imported:
                db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", [now, conversation_id])
                return PlacedTurn(conversation_id, tuple(new_ids), parent_id, None, "imported")
            answer_id = new_id("msg")
            db.execute(
                "INSERT INTO messages (id, conversation_id, parent_id, role, content, origin, status, "
                "path_hash, model, model_fingerprint, adapter_version, created_at) "
                "VALUES (?, ?, ?, 'assistant', '', ?, 'streaming', '', ?, ?, ?, ?)",
                [answer_id, conversation_id, parent_id, answer_origin, model, model_fingerprint,
                 adapter_version, now],
            )
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", [now, conversation_id])
        return PlacedTurn(conversation_id, tuple(new_ids), parent_id, answer_id, answer_origin)

    def _create_conversation_in_transaction(
        self, db: Database, conversation_id: str, user_id: str, history: Sequence[NewMessage], now: str
    ) -> None:
        first_user = next((m.content for m in history if m.role == "user"), "")
        title = " ".join(first_user.split())[:80]
        db.execute(
            "INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [conversation_id, user_id, title, now, now],
        )

    def _match_in_transaction(
        self,
        db: Database,
        user_id: str,
        hashes: list[str],
        history: Sequence[NewMessage],
        conversation_id: str | None,
        imported: bool = False,
    ) -> tuple[int, str | None, str | None]:
        """The longest stored prefix of the history: (its length, its last id, its conversation)."""
        placeholders = ",".join("?" * len(hashes))
        if conversation_id is not None:
            rows = db.execute(
                f"SELECT path_hash, id, conversation_id FROM messages "
                f"WHERE conversation_id = ? AND path_hash IN ({placeholders}) ORDER BY rowid DESC",
                [conversation_id, *hashes],
            ).fetchall()
        else:
            rows = db.execute(
                f"SELECT m.path_hash, m.id, m.conversation_id FROM messages m "
                f"JOIN conversations c ON c.id = m.conversation_id "
                f"WHERE c.user_id = ? AND m.path_hash IN ({placeholders}) "
                f"ORDER BY c.updated_at DESC, m.rowid DESC",
                [user_id, *hashes],
            ).fetchall()
        first_seen: dict[str, tuple[str, str]] = {}
        for h, msg_id, conv in rows:
            first_seen.setdefault(h, (msg_id, conv))
        for depth in range(len(hashes), 0, -1):
            hit = first_seen.get(hashes[depth - 1])
            if hit is None:
                continue
            # An unnamed request continues a stored conversation only when the shared history
            # includes an answer; a bare "hi" is a new conversation, not the last one that began so.
            # (An import that matches whole is the same conversation imported again.)
            if (conversation_id is None and not any(m.role == "assistant" for m in history[:depth])
                    and not (imported and depth == len(history))):
                return 0, None, None
            return depth, hit[0], hit[1]
        return 0, None, None

    @staticmethod
    def _latest_answer(db: Database, parent_id: str | None) -> str | None:
        if parent_id is None:
            return None
        row = db.execute(
            "SELECT id FROM messages WHERE parent_id = ? AND role = 'assistant' "
            "AND origin != 'user_edit' AND status != 'streaming' ORDER BY rowid DESC LIMIT 1",
            [parent_id],
        ).fetchone()
        return row[0] if row else None

    @staticmethod
    def _has_answer(db: Database, parent_id: str | None) -> bool:
        if parent_id is None:
            return False
        return (
            db.execute(
                "SELECT 1 FROM messages WHERE parent_id = ? AND role = 'assistant' LIMIT 1",
                [parent_id],
            ).fetchone()
            is not None
        )

    def finish_answer(
        self,
        answer_id: str,
        content: str,
        status: Status,
        finish_reason: str | None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        ttft_ms: float | None = None,
        latency_ms: float | None = None,
        base_fallback: bool = False,
    ) -> None:
        """Write the generated text into the answer row opened by `place_turns`.
        `base_fallback`: the base model answered because the recorded adapter could not be
        loaded; the row then records no adapter, as it must say what produced the answer."""
        with self._atomic() as db:
            row = db.execute(
                "SELECT parent_id FROM messages WHERE id = ?", [answer_id]
            ).fetchone()
            if row is None:
                # The conversation was deleted while its answer streamed: nothing to keep.
                log.info("answer %s finished after its conversation was deleted", answer_id)
                return
            parent_hash = ""
            if row[0] is not None:
                parent_row = db.execute(
                    "SELECT path_hash FROM messages WHERE id = ?", [row[0]]
                ).fetchone()
                parent_hash = parent_row[0] if parent_row else ""
            db.execute(
                "UPDATE messages SET content = ?, status = ?, finish_reason = ?, prompt_tokens = ?, "
                "completion_tokens = ?, ttft_ms = ?, latency_ms = ?, path_hash = ? WHERE id = ?",
                [
                    content,
                    status,
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                    ttft_ms,
                    latency_ms,
                    path_hash(parent_hash, "assistant", content),
                    answer_id,
                ],
            )
            if base_fallback:
                db.execute("UPDATE messages SET adapter_version = NULL WHERE id = ?", [answer_id])

    def integrity_check(self) -> str:
        return str(self._rows("PRAGMA integrity_check")[0]["integrity_check"])
