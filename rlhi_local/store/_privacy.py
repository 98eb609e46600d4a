"""Store side of "export and forget": every row about a user out, or chosen rows gone for good.

A mixin of `Store`. Which tables are per-user (DESIGN §6: everything the store knows about a user):

- `users` (the user's row), `conversations`, `messages` (through their conversation),
  `feedback`, `personas`, `pairs`, `train_runs`, `adapters`, `reward_models`, and the `job_runs`
  rows that name the user; also any table a later migration adds with a `user_id` column.
- Not per-user: `_sqlite_migrations` (schema history), `schedule_jobs` (APScheduler's timers),
  `learning_state` (the global pause flag) and `job_runs` rows without a user (global job log).
  None of these holds anything a user said.

Invariant of `forget`: once it returns, no text of a forgotten message survives in the database
files. Rows are deleted with `secure_delete` on (freed cells are zeroed), shadow copies are
deleted in the same transaction (pairs quote prompts and answers; persona facts quote what was
said and are scrubbed through the caller's `PersonaScrub`; feedback holds extracted
instructions), then `VACUUM` rebuilds the file (no free pages left) and
`wal_checkpoint(TRUNCATE)` empties the WAL, which still held the old pages. There is no FTS index
or other shadow table of message text. Adapters and reward models that learned from forgotten
data are marked `retired` (reason `forgotten: ...`) in the same transaction, so from the commit
on none of them is served; their files are the caller's to delete (`rlhi_local.privacy`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Sequence

from ..errors import InvalidRequestError, NotFoundError, StoreError
from ..records import Adapter, RewardModelRow
from ._ids import utc_now
from ._reward import _COLUMNS as _RM_COLUMNS, _row as _rm_row
from ._training import _ADAPTER

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    import threading

    from sqlite_utils import Database

__all__ = ["FORGOTTEN", "Forgotten", "PersonaScrub", "PrivacyMixin"]

log = logging.getLogger(__name__)

FORGOTTEN = "forgotten: "
"""Prefix of the `reason` of an adapter or reward model retired because its data was forgotten."""

PersonaScrub = Callable[[str, Callable[[Collection[str]], set[str]]], "tuple[str, str] | None"]
"""(a persona version's facts JSON, alive(ids) → those of `ids` still stored) → the version's new
(card, facts JSON) without what cites messages that are gone, or None when nothing changes.
Supplied by the caller because facts are the `persona` package's format, not the store's."""

KNOWN_TABLES = ("users", "conversations", "messages", "feedback", "personas", "pairs", "train_runs",
                "adapters", "reward_models", "job_runs")
"""Per-user tables in export order (parents first)."""
_JSON_COLUMNS = {"pairs": ("prompt",), "personas": ("facts",), "adapters": ("pair_ids", "metrics"),
                 "train_runs": ("progress", "metrics"), "reward_models": ("metrics",)}
_CHUNK = 500


@dataclass(frozen=True)
class Forgotten:
    """What one `forget` deleted and retired, before the caller deletes files."""

    user_id: str
    counts: dict[str, int]
    """Rows deleted per table, and `personas_rewritten` (versions whose facts were scrubbed)."""
    pair_ids: tuple[str, ...]
    persona_versions: tuple[int, ...]
    """Persona versions whose card changed: whatever trained with them saw forgotten text."""
    adapters: tuple[Adapter, ...]
    """Adapters that learned from forgotten data, as they were before (now retired or deleted)."""
    reward_models: tuple[RewardModelRow, ...]
    active_adapter: int | None
    """The version that was served before the forget (None: the base)."""
    active_reward_model: int | None
    database_bytes: int = 0
    wal_bytes: int = 0
    """Size of the WAL after the checkpoint: 0 unless another process held a read open."""
    deleted_user: bool = False


def _cell(value: Any) -> Any:
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value


class PrivacyMixin:
    if TYPE_CHECKING:
        path: Path
        db: Database
        _lock: threading.RLock

        def _atomic(self) -> AbstractContextManager[Database]: ...
        def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    # -- which tables hold a user's rows ---------------------------------------------------------

    def user_tables(self) -> list[str]:
        """Per-user tables (see the module docstring), known ones first, then any later table
        with a `user_id` column."""
        names = [r["name"] for r in self._rows(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        extra = [n for n in names if n not in KNOWN_TABLES and not n.startswith("_")
                 and "user_id" in self._columns(n)]
        return [t for t in KNOWN_TABLES if t in names] + extra

    def _columns(self, table: str) -> list[str]:
        return [r["name"] for r in self._rows(f"PRAGMA table_info({_quote(table)})")]

    @staticmethod
    def _owner_clause(table: str) -> str:
        if table == "users":
            return "id = ?"
        if table == "messages":
            return "conversation_id IN (SELECT id FROM conversations WHERE user_id = ?)"
        return "user_id = ?"

    # -- export -----------------------------------------------------------------------------------

    def export_rows(self, user_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every row of every per-user table that belongs to `user_id`, as (table, columns).

        All columns, as stored, except that JSON columns come decoded and BLOBs as base64. Read
        in chunks of rowids, each under the lock for one query only, so a long export never
        holds up a chat (rows written meanwhile may or may not be included).
        """
        for table in self.user_tables():
            decode = _JSON_COLUMNS.get(table, ())
            last = -(2**63)
            while True:
                rows = self._rows(
                    f"SELECT rowid AS _rowid, * FROM {_quote(table)} WHERE {self._owner_clause(table)} "
                    f"AND rowid > ? ORDER BY rowid LIMIT {_CHUNK}", [user_id, last])
                for row in rows:
                    last = row.pop("_rowid")
                    out = {k: _cell(v) for k, v in row.items()}
                    for col in decode:
                        if isinstance(out.get(col), str):
                            try:
                                out[col] = json.loads(out[col])
                            except ValueError:
                                pass
                    yield table, out
                if len(rows) < _CHUNK:
                    break

    # -- forget -----------------------------------------------------------------------------------

    def forget(self, user_id: str, conversation_id: str | None = None, since: str | None = None,
               until: str | None = None, everything: bool = False,
               scrub_persona: PersonaScrub | None = None) -> Forgotten:
        """Delete one conversation, the messages stored in [since, until), or everything of
        `user_id`, with all that was derived from them, then compact the files (module docstring).

        `since`/`until` are ISO-8601 UTC texts as the rows store them (`utc_now()`'s format). A
        range deletes the messages created in it and, since a turn cannot outlive the turn it
        answers, every turn below them in their branch; a conversation left empty goes too, and
        so do the user's own judgements (thumbs, choices, edits) made in the range.

        Derived rows: pairs built from any of those messages or judgements; detector labels;
        persona facts citing them (`scrub_persona` rewrites each version; without it a version
        citing them is deleted). Adapters that trained on a forgotten pair, or on a pair whose
        persona card changed, and reward models created after the earliest of those (they keep
        no pair list, and each starts from the one before) are retired in the same transaction.
        """
        chosen = [conversation_id is not None, since is not None or until is not None, everything]
        if sum(chosen) != 1:
            raise InvalidRequestError(
                "Say what to forget: a conversation_id, a date range (since and/or until), or everything; "
                f"exactly one of them, not {sum(chosen)}.")
        if since is not None and until is not None and since >= until:
            raise InvalidRequestError(f"since {since!r} is not before until {until!r}; nothing lies between them.")
        with self._atomic() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS forget_messages (id TEXT PRIMARY KEY)")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS forget_feedback (id TEXT PRIMARY KEY)")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS forget_conversations (id TEXT PRIMARY KEY)")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS forget_pairs (id TEXT PRIMARY KEY)")
            for t in ("forget_messages", "forget_feedback", "forget_conversations", "forget_pairs"):
                db.execute(f"DELETE FROM temp.{t}")
            try:
                done = self._forget_in_transaction(db, user_id, conversation_id, since, until, everything,
                                                   scrub_persona)
            finally:
                for t in ("forget_messages", "forget_feedback", "forget_conversations", "forget_pairs"):
                    db.execute(f"DROP TABLE IF EXISTS temp.{t}")
        size, wal = self.compact()
        log.info("forgot user=%s %s pairs=%d adapters=%s reward_models=%s db_bytes=%d wal_bytes=%d", user_id,
                 done.counts, len(done.pair_ids), [a.version for a in done.adapters],
                 [r.version for r in done.reward_models], size, wal)
        return replace(done, database_bytes=size, wal_bytes=wal)

    def scrub_personas(self, user_id: str, scrub: PersonaScrub) -> set[int]:
        """Scrub the user's persona versions of evidence citing messages that are gone (as
        `forget` does) and compact; returns the versions whose card changed. For a learning run
        that read messages before a forget and wrote its persona after it."""
        counts: dict[str, int] = {}
        with self._atomic() as db:
            changed, _ = self._scrub_personas_in_transaction(db, user_id, False, scrub, counts)
        if counts.get("personas_rewritten") or counts.get("personas"):
            self.compact()
        return changed

    def _forget_in_transaction(self, db: Database, user_id: str, conversation_id: str | None,
                               since: str | None, until: str | None, everything: bool,
                               scrub: PersonaScrub | None) -> Forgotten:
        counts: dict[str, int] = {}
        if conversation_id is not None:
            if db.execute("SELECT 1 FROM conversations WHERE id = ? AND user_id = ?",
                          [conversation_id, user_id]).fetchone() is None:
                raise NotFoundError(f"No conversation {conversation_id!r} for user {user_id!r}; "
                                    f"`GET /v1/conversations?user={user_id}` lists them.")
            db.execute("INSERT INTO temp.forget_conversations VALUES (?)", [conversation_id])
            db.execute("INSERT INTO temp.forget_messages SELECT id FROM messages WHERE conversation_id = ?",
                       [conversation_id])
        elif everything:
            db.execute("INSERT INTO temp.forget_conversations SELECT id FROM conversations WHERE user_id = ?",
                       [user_id])
            db.execute("INSERT INTO temp.forget_messages SELECT m.id FROM messages m JOIN conversations c "
                       "ON c.id = m.conversation_id WHERE c.user_id = ?", [user_id])
        else:
            lo, hi = since or "", until or "\uffff"
            db.execute(
                "INSERT INTO temp.forget_messages WITH RECURSIVE below(id) AS ("
                "  SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id"
                "  WHERE c.user_id = ? AND m.created_at >= ? AND m.created_at < ?"
                "  UNION SELECT m.id FROM messages m JOIN below ON m.parent_id = below.id) "
                "SELECT id FROM below", [user_id, lo, hi])
            # A conversation goes when nothing of it is left.
            db.execute(
                "INSERT INTO temp.forget_conversations SELECT DISTINCT m.conversation_id FROM messages m "
                "WHERE m.id IN (SELECT id FROM temp.forget_messages) AND NOT EXISTS (SELECT 1 FROM messages o "
                "WHERE o.conversation_id = m.conversation_id AND o.id NOT IN (SELECT id FROM temp.forget_messages))")
            db.execute("INSERT OR IGNORE INTO temp.forget_feedback SELECT id FROM feedback WHERE user_id = ? "
                       "AND source = 'user' AND created_at >= ? AND created_at < ?", [user_id, lo, hi])
        db.execute(
            "INSERT OR IGNORE INTO temp.forget_feedback SELECT id FROM feedback "
            "WHERE message_id IN (SELECT id FROM temp.forget_messages) "
            "OR followup_id IN (SELECT id FROM temp.forget_messages)")
        if everything:
            db.execute("INSERT OR IGNORE INTO temp.forget_feedback SELECT id FROM feedback WHERE user_id = ?",
                       [user_id])
            db.execute("INSERT INTO temp.forget_pairs SELECT id FROM pairs WHERE user_id = ?", [user_id])
        else:
            db.execute(
                "INSERT INTO temp.forget_pairs SELECT id FROM pairs WHERE "
                "conversation_id IN (SELECT id FROM temp.forget_conversations) "
                "OR rejected_message_id IN (SELECT id FROM temp.forget_messages) "
                "OR chosen_message_id IN (SELECT id FROM temp.forget_messages) "
                "OR feedback_id IN (SELECT id FROM temp.forget_feedback)")
        pairs = db.execute("SELECT id, created_at FROM pairs WHERE id IN (SELECT id FROM temp.forget_pairs) "
                           "ORDER BY rowid").fetchall()
        active_adapter = db.execute("SELECT version FROM adapters WHERE user_id = ? AND status = 'active'",
                                    [user_id]).fetchone()
        active_rm = db.execute("SELECT version FROM reward_models WHERE user_id = ? AND status = 'active'",
                               [user_id]).fetchone()

        counts["pairs"] = db.execute("DELETE FROM pairs WHERE id IN (SELECT id FROM temp.forget_pairs)").rowcount
        counts["feedback"] = db.execute(
            "DELETE FROM feedback WHERE id IN (SELECT id FROM temp.forget_feedback)").rowcount
        counts["messages"] = db.execute(
            "SELECT count(*) FROM messages WHERE id IN (SELECT id FROM temp.forget_messages)").fetchone()[0]
        db.execute("DELETE FROM messages WHERE id IN (SELECT id FROM temp.forget_messages)")
        counts["conversations"] = db.execute(
            "DELETE FROM conversations WHERE id IN (SELECT id FROM temp.forget_conversations)").rowcount

        changed_versions, cut = self._scrub_personas_in_transaction(db, user_id, everything, scrub, counts)
        cutoffs = [r[1] for r in pairs] + ([cut] if cut else [])
        cutoff = min(cutoffs) if cutoffs else None
        adapters = self._retire_adapters_in_transaction(db, user_id, changed_versions, everything, len(pairs))
        reward_models = self._retire_reward_models_in_transaction(db, user_id, cutoff, everything)
        if everything:
            counts.update(self._delete_user_in_transaction(db, user_id))
        return Forgotten(
            user_id=user_id, counts=counts, pair_ids=tuple(r[0] for r in pairs),
            persona_versions=tuple(sorted(changed_versions)), adapters=tuple(adapters),
            reward_models=tuple(reward_models), active_adapter=active_adapter[0] if active_adapter else None,
            active_reward_model=active_rm[0] if active_rm else None, deleted_user=everything)

    def _scrub_personas_in_transaction(self, db: Database, user_id: str, everything: bool, scrub: PersonaScrub | None,
                                       counts: dict[str, int]) -> tuple[set[int], str | None]:
        """Rewrite (or delete) persona versions whose facts cite messages that are gone; returns
        the versions whose card changed and the earliest creation time among them."""
        rows = db.execute("SELECT id, version, card, facts, created_at FROM personas WHERE user_id = ? "
                          "ORDER BY version", [user_id]).fetchall()
        if everything:
            counts["personas"] = db.execute("DELETE FROM personas WHERE user_id = ?", [user_id]).rowcount
            return {r[1] for r in rows}, rows[0][4] if rows else None

        def alive(ids: Collection[str]) -> set[str]:
            ids = list(ids)
            found: set[str] = set()
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                found.update(r[0] for r in db.execute(
                    f"SELECT id FROM messages WHERE id IN ({','.join('?' * len(part))})", part).fetchall())
            return found

        changed: set[int] = set()
        earliest: str | None = None
        rewritten = deleted = 0
        for persona_id, version, card, facts, created_at in rows:
            if scrub is not None:
                new = scrub(facts, alive)
                if new is None:
                    continue
                db.execute("UPDATE personas SET card = ?, facts = ? WHERE id = ?", [new[0], new[1], persona_id])
                rewritten += 1
                new_card = new[0]
            else:
                cited = {e for e in _evidence_ids(facts)}
                if cited == alive(cited):
                    continue
                db.execute("DELETE FROM personas WHERE id = ?", [persona_id])
                deleted += 1
                new_card = None
            if new_card != card:
                changed.add(version)
                earliest = created_at if earliest is None else min(earliest, created_at)
        counts["personas_rewritten"] = rewritten
        counts["personas"] = deleted
        return changed, earliest

    def _retire_adapters_in_transaction(self, db: Database, user_id: str, persona_versions: set[int],
                                        everything: bool, n_pairs: int) -> list[Adapter]:
        """Adapters with a trained-on pair that no longer exists (forgotten now, or deleted with
        its conversation before) or whose pair's persona card changed."""
        names = [c.strip() for c in _ADAPTER.split(",")]
        out: list[Adapter] = []
        for row in db.execute(f"SELECT {_ADAPTER} FROM adapters WHERE user_id = ? ORDER BY version",
                              [user_id]).fetchall():
            adapter = Adapter(**dict(zip(names, row)))
            if adapter.reason.startswith(FORGOTTEN):
                continue
            ids = list(json.loads(adapter.pair_ids or "[]"))
            why = ""
            if everything:
                why = "trained on the user's data, all of which was forgotten"
            elif ids:
                kept: dict[str, int | None] = {}
                for i in range(0, len(ids), 500):
                    part = ids[i:i + 500]
                    kept.update(db.execute(f"SELECT id, persona_version FROM pairs WHERE id IN "
                                           f"({','.join('?' * len(part))})", part).fetchall())
                gone = len(set(ids) - set(kept))
                if gone:
                    why = f"trained on {gone} forgotten pair(s)"
                elif persona_versions & {v for v in kept.values() if v is not None}:
                    why = "trained with a persona card that quoted forgotten messages"
            if not why:
                continue
            out.append(adapter)
            db.execute("UPDATE adapters SET status = 'retired', reason = ? WHERE id = ?",
                       [f"{FORGOTTEN}{why} ({utc_now()[:10]})", adapter.id])
        return out

    def _retire_reward_models_in_transaction(self, db: Database, user_id: str, cutoff: str | None,
                                             everything: bool) -> list[RewardModelRow]:
        if not everything and cutoff is None:
            return []
        rows = db.execute(f"SELECT {_RM_COLUMNS} FROM reward_models WHERE user_id = ? AND created_at >= ? "
                          "ORDER BY version", [user_id, "" if everything else cutoff]).fetchall()
        names = [c.strip() for c in _RM_COLUMNS.split(",")]
        out = [_rm_row(dict(zip(names, r))) for r in rows]
        out = [r for r in out if not r.reason.startswith(FORGOTTEN)]
        for r in out:
            db.execute("UPDATE reward_models SET status = 'retired', reason = ? WHERE id = ?",
                       [f"{FORGOTTEN}may have learned from forgotten pairs ({utc_now()[:10]})", r.id])
        return out

    def _delete_user_in_transaction(self, db: Database, user_id: str) -> dict[str, int]:
        """Everything else of the user, children before parents (later tables first: they may
        point at ours)."""
        counts: dict[str, int] = {}
        tables = self.user_tables()
        order = [t for t in tables if t not in KNOWN_TABLES] + [
            "adapters", "train_runs", "reward_models", "job_runs"]
        for table in order:
            if table in tables:
                counts[table] = db.execute(f"DELETE FROM {_quote(table)} WHERE user_id = ?", [user_id]).rowcount
        counts["users"] = db.execute("DELETE FROM users WHERE id = ?", [user_id]).rowcount
        return counts

    # -- compaction ----------------------------------------------------------------------------------

    def compact(self, attempts: int = 20) -> tuple[int, int]:
        """Rebuild the database file and empty the WAL, so freed pages (which may hold deleted
        text) leave no copy in any file; returns (database bytes, WAL bytes).

        VACUUM's scratch copy stays in memory (`temp_store`), not in a temp file. The checkpoint
        is retried while another process reads (it cannot truncate under a reader)."""
        with self._lock:
            try:
                self.db.execute("PRAGMA temp_store = MEMORY")
                self.db.execute("VACUUM")
                for _ in range(attempts):
                    busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                    if not busy:
                        break
                    time.sleep(0.1)
                else:
                    log.warning("WAL of %s not truncated: another process keeps reading it", self.path)
                self.db.execute("PRAGMA temp_store = DEFAULT")
            except sqlite3.Error as exc:
                raise StoreError(f"Compacting {self.path} after a forget failed: {exc}. The rows are "
                                 f"deleted; run the forget again to compact.") from exc
        wal = Path(str(self.path) + "-wal")
        return os.path.getsize(self.path), wal.stat().st_size if wal.exists() else 0


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _evidence_ids(facts: str) -> set[str]:
    """Message ids a persona facts JSON cites, read without the persona package (its format:
    `{"facts": [{"evidence": [...]}, ...]}`); on anything unreadable, none."""
    try:
        data = json.loads(facts)
        items = data.get("facts", []) if isinstance(data, dict) else data
        return {e for f in items if isinstance(f, dict) for e in f.get("evidence", []) if isinstance(e, str)}
    except (ValueError, AttributeError, TypeError):
        return set()
