"""Store queries and writes for training: runs, and the adapter registry.

A mixin of `Store`. The registry's invariant lives in SQL: at most one `active` adapter per user
(a partial unique index), and activation retires the previous one in the same transaction.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import NotFoundError
from ..records import Adapter, AdapterStatus, TrainRun
from ._ids import new_id, utc_now

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlite_utils import Database

__all__ = ["TrainingMixin"]

_RUN = "id, user_id, status, backend, pairs, adapter_version, progress, metrics, error, created_at, started_at, finished_at"
_ADAPTER = ("id, user_id, version, base_fingerprint, path, pair_ids, metrics, status, reason, run_id, "
            "created_at, activated_at")
_RUN_FIELDS = {"status", "backend", "pairs", "adapter_version", "progress", "metrics", "error", "started_at",
               "finished_at"}


class TrainingMixin:
    if TYPE_CHECKING:
        def _atomic(self) -> AbstractContextManager[Database]: ...
        def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
        def _ensure_user_in_transaction(self, db: Database, user_id: str) -> None: ...

    # -- runs ---------------------------------------------------------------------------------

    def add_train_run(self, user_id: str) -> TrainRun:
        run_id = new_id("run")
        with self._atomic() as db:
            self._ensure_user_in_transaction(db, user_id)
            db.execute("INSERT INTO train_runs (id, user_id, status, created_at) VALUES (?, ?, 'queued', ?)",
                       [run_id, user_id, utc_now()])
        return self.get_train_run(run_id)

    def update_train_run(self, run_id: str, **fields: Any) -> None:
        unknown = set(fields) - _RUN_FIELDS
        if unknown:
            raise ValueError(f"unknown train_runs fields: {sorted(unknown)}")
        values = [json.dumps(v) if k in ("progress", "metrics") and not isinstance(v, str) else v
                  for k, v in fields.items()]
        with self._atomic() as db:
            db.execute(f"UPDATE train_runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                       [*values, run_id])

    def get_train_run(self, run_id: str) -> TrainRun:
        rows = self._rows(f"SELECT {_RUN} FROM train_runs WHERE id = ?", [run_id])
        if not rows:
            raise NotFoundError(f"No training run {run_id!r}.")
        return TrainRun(**rows[0])

    def train_runs(self, user_id: str, limit: int = 20) -> list[TrainRun]:
        return [TrainRun(**r) for r in self._rows(
            f"SELECT {_RUN} FROM train_runs WHERE user_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
            [user_id, limit])]

    def fail_unfinished_runs(self, reason: str) -> int:
        """At start-up: runs left queued or running by a daemon that died cannot be resumed."""
        with self._atomic() as db:
            cursor = db.execute(
                "UPDATE train_runs SET status = 'failed', error = ?, finished_at = ? "
                "WHERE status IN ('queued', 'running')", [reason, utc_now()])
            return cursor.rowcount

    # -- adapters -----------------------------------------------------------------------------

    def next_adapter_version(self, user_id: str) -> int:
        return int(self._rows("SELECT coalesce(max(version), 0) + 1 AS v FROM adapters WHERE user_id = ?",
                              [user_id])[0]["v"])

    def add_adapter(self, user_id: str, version: int, base_fingerprint: str, path: str,
                    pair_ids: Sequence[str], metrics: dict[str, Any], status: AdapterStatus,
                    reason: str = "", run_id: str | None = None) -> Adapter:
        with self._atomic() as db:
            self._ensure_user_in_transaction(db, user_id)
            db.execute(
                f"INSERT INTO adapters ({_ADAPTER}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                [new_id("adapter"), user_id, version, base_fingerprint, path, json.dumps(list(pair_ids)),
                 json.dumps(metrics), status, reason, run_id, utc_now()])
        return self.get_adapter(user_id, version)

    def adapters(self, user_id: str) -> list[Adapter]:
        return [Adapter(**r) for r in self._rows(
            f"SELECT {_ADAPTER} FROM adapters WHERE user_id = ? ORDER BY version", [user_id])]

    def get_adapter(self, user_id: str, version: int) -> Adapter:
        rows = self._rows(f"SELECT {_ADAPTER} FROM adapters WHERE user_id = ? AND version = ?", [user_id, version])
        if not rows:
            raise NotFoundError(f"User {user_id!r} has no adapter version {version}; `rlhi adapters list` shows them.")
        return Adapter(**rows[0])

    def active_adapter(self, user_id: str) -> Adapter | None:
        rows = self._rows(f"SELECT {_ADAPTER} FROM adapters WHERE user_id = ? AND status = 'active'", [user_id])
        return Adapter(**rows[0]) if rows else None

    def active_adapters(self) -> list[Adapter]:
        """Every user's served adapter (the daemon checks their files at start)."""
        return [Adapter(**r) for r in self._rows(
            f"SELECT {_ADAPTER} FROM adapters WHERE status = 'active' ORDER BY user_id")]

    def set_adapter_status(self, user_id: str, version: int, status: AdapterStatus, reason: str = "") -> None:
        with self._atomic() as db:
            db.execute("UPDATE adapters SET status = ?, reason = ? WHERE user_id = ? AND version = ?",
                       [status, reason, user_id, version])

    def activate_adapter(self, user_id: str, version: int | None, reason: str) -> Adapter | None:
        """Make `version` the user's served adapter (None: the base), retiring the one before,
        in one transaction. `reason` is recorded on the retired adapter."""
        if version is not None:
            self.get_adapter(user_id, version)  # NotFoundError before anything changes
        with self._atomic() as db:
            db.execute("UPDATE adapters SET status = 'retired', reason = ? WHERE user_id = ? AND status = 'active'",
                       [reason, user_id])
            if version is not None:
                db.execute("UPDATE adapters SET status = 'active', reason = '', activated_at = ? "
                           "WHERE user_id = ? AND version = ?", [utc_now(), user_id, version])
        return self.active_adapter(user_id)

    def record_trained_adapter(self, run_id: str, user_id: str, version: int, base_fingerprint: str, path: str,
                               pair_ids: Sequence[str], metrics: dict[str, Any], reason: str) -> Adapter:
        """A finished run's candidate, in one transaction: its row, `active` (the one before it
        retired) when the gate gave no `reason`, else `rejected` with it; and the run `done`.
        A daemon killed while it registers lands before or after this commit, never between:
        no stranded `candidate`, and no run marked failed while its adapter is served."""
        promoted = not reason
        now = utc_now()
        progress = {"event": "finished", "promoted": promoted, "reason": reason}
        with self._atomic() as db:
            self._ensure_user_in_transaction(db, user_id)
            if promoted:
                db.execute("UPDATE adapters SET status = 'retired', reason = ? WHERE user_id = ? AND status = 'active'",
                           [f"replaced by v{version}", user_id])
            db.execute(
                f"INSERT INTO adapters ({_ADAPTER}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [new_id("adapter"), user_id, version, base_fingerprint, path, json.dumps(list(pair_ids)),
                 json.dumps(metrics), "active" if promoted else "rejected", reason, run_id, now,
                 now if promoted else None])
            db.execute("UPDATE train_runs SET status = 'done', metrics = ?, progress = ?, finished_at = ? WHERE id = ?",
                       [json.dumps(metrics), json.dumps(progress), now, run_id])
        return self.get_adapter(user_id, version)

    def trained_pair_ids(self, user_id: str) -> set[str]:
        """Pairs some adapter of this user was trained on (new pairs are the others)."""
        out: set[str] = set()
        for row in self._rows("SELECT pair_ids FROM adapters WHERE user_id = ?", [user_id]):
            out.update(json.loads(row["pair_ids"]))
        return out

    def persona_card(self, user_id: str, version: int | None) -> str:
        """The card of one persona version ('' for none): what a pair was mined under."""
        if version is None:
            return ""
        rows = self._rows("SELECT card FROM personas WHERE user_id = ? AND version = ?", [user_id, version])
        return rows[0]["card"] if rows else ""
