"""Store queries and writes for the reward-model registry (`reward_models`).

A mixin of `Store`. As for adapters, the invariant lives in SQL: at most one `active` version per
user (a partial unique index), and activation retires the previous one in the same transaction.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import NotFoundError
from ..records import RewardModelRow, RewardModelStatus
from ._ids import new_id, utc_now

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlite_utils import Database

__all__ = ["RewardMixin"]

_COLUMNS = ("id, user_id, version, path, accuracy, accuracy_without_persona, n_train, n_heldout, "
            "trusted, status, reason, metrics, created_at, activated_at")


def _row(r: dict[str, Any]) -> RewardModelRow:
    return RewardModelRow(**{**r, "trusted": bool(r["trusted"])})


class RewardMixin:
    if TYPE_CHECKING:
        def _atomic(self) -> AbstractContextManager[Database]: ...
        def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
        def _ensure_user_in_transaction(self, db: Database, user_id: str) -> None: ...

    def next_reward_model_version(self, user_id: str) -> int:
        return int(self._rows("SELECT coalesce(max(version), 0) + 1 AS v FROM reward_models WHERE user_id = ?",
                              [user_id])[0]["v"])

    def add_reward_model(
        self, user_id: str, version: int, path: str, *, accuracy: float | None,
        accuracy_without_persona: float | None, n_train: int, n_heldout: int, trusted: bool,
        metrics: dict[str, Any], status: RewardModelStatus = "candidate", reason: str = "",
    ) -> RewardModelRow:
        """Register a version whose file is already complete on disk."""
        with self._atomic() as db:
            self._ensure_user_in_transaction(db, user_id)
            db.execute(
                f"INSERT INTO reward_models ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                [new_id("rm"), user_id, version, path, accuracy, accuracy_without_persona, n_train,
                 n_heldout, int(trusted), status, reason, json.dumps(metrics), utc_now()])
        return self.get_reward_model(user_id, version)

    def get_reward_model(self, user_id: str, version: int) -> RewardModelRow:
        rows = self._rows(f"SELECT {_COLUMNS} FROM reward_models WHERE user_id = ? AND version = ?",
                          [user_id, version])
        if not rows:
            raise NotFoundError(f"User {user_id!r} has no reward model version {version}.")
        return _row(rows[0])

    def reward_models(self, user_id: str) -> list[RewardModelRow]:
        """Every version of the user's reward model, oldest first."""
        return [_row(r) for r in self._rows(
            f"SELECT {_COLUMNS} FROM reward_models WHERE user_id = ? ORDER BY version", [user_id])]

    def active_reward_model(self, user_id: str) -> RewardModelRow | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM reward_models WHERE user_id = ? AND status = 'active'",
                          [user_id])
        return _row(rows[0]) if rows else None

    def set_reward_model_status(self, user_id: str, version: int, status: RewardModelStatus,
                                reason: str = "") -> None:
        with self._atomic() as db:
            db.execute("UPDATE reward_models SET status = ?, reason = ? WHERE user_id = ? AND version = ?",
                       [status, reason, user_id, version])

    def activate_reward_model(self, user_id: str, version: int, reason: str) -> RewardModelRow:
        """Make `version` the user's reward model, retiring the active one (with `reason`), in one
        transaction."""
        self.get_reward_model(user_id, version)  # NotFoundError before anything changes
        with self._atomic() as db:
            db.execute("UPDATE reward_models SET status = 'retired', reason = ? "
                       "WHERE user_id = ? AND status = 'active'", [reason, user_id])
            db.execute("UPDATE reward_models SET status = 'active', reason = '', activated_at = ? "
                       "WHERE user_id = ? AND version = ?", [utc_now(), user_id, version])
        return self.get_reward_model(user_id, version)
