"""Store queries and writes for the learning schedule: APScheduler's job rows, and job runs.

A mixin of `Store`. `schedule_jobs` is APScheduler's persistent job store (one row per job:
its next run time and its pickled state, as APScheduler's own SQLAlchemy store keeps it), so a
restart keeps the schedule. `job_runs` is our log of what each job did, or why it skipped: the
rows `rlhi status` and the UI show. Both live in the user's private database (mode 0600).
`learning_state` holds whether learning as a whole is paused at run time (`rlhi pause`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..records import JobRun, Message
from ._ids import utc_now
from ._signals import _M

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlite_utils import Database

__all__ = ["ScheduleMixin"]

_JOB_RUN = "id, job, user_id, status, detail, started_at, finished_at"


class ScheduleMixin:
    if TYPE_CHECKING:
        def _atomic(self) -> AbstractContextManager[Database]: ...
        def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    # -- APScheduler's job store -------------------------------------------------------------

    def schedule_jobs(self, job_id: str | None = None, due: float | None = None) -> list[tuple[str, float | None, bytes]]:
        """(id, next run as a UTC timestamp or None when paused, state), soonest first."""
        sql = "SELECT id, next_run_time, job_state FROM schedule_jobs"
        params: list[Any] = []
        if job_id is not None:
            sql, params = sql + " WHERE id = ?", [job_id]
        elif due is not None:
            sql, params = sql + " WHERE next_run_time <= ?", [due]
        rows = self._rows(sql + " ORDER BY next_run_time IS NULL, next_run_time", params)
        return [(r["id"], r["next_run_time"], r["job_state"]) for r in rows]

    def next_schedule_time(self) -> float | None:
        rows = self._rows("SELECT MIN(next_run_time) AS t FROM schedule_jobs WHERE next_run_time IS NOT NULL")
        return rows[0]["t"] if rows else None

    def put_schedule_job(self, job_id: str, next_run_time: float | None, state: bytes, *, insert: bool) -> bool:
        """Insert (False if the id exists) or update (False if it does not) one job row."""
        with self._atomic() as db:
            if insert:
                if db.execute("SELECT 1 FROM schedule_jobs WHERE id = ?", [job_id]).fetchone():
                    return False
                db.execute("INSERT INTO schedule_jobs (id, next_run_time, job_state) VALUES (?, ?, ?)",
                           [job_id, next_run_time, state])
                return True
            cur = db.execute("UPDATE schedule_jobs SET next_run_time = ?, job_state = ? WHERE id = ?",
                             [next_run_time, state, job_id])
            return cur.rowcount > 0

    def delete_schedule_jobs(self, job_id: str | None = None) -> int:
        with self._atomic() as db:
            if job_id is None:
                return db.execute("DELETE FROM schedule_jobs").rowcount
            return db.execute("DELETE FROM schedule_jobs WHERE id = ?", [job_id]).rowcount

    # -- what the jobs did --------------------------------------------------------------------

    def add_job_run(self, job: str, user_id: str | None = None) -> int:
        with self._atomic() as db:
            cur = db.execute("INSERT INTO job_runs (job, user_id, status, detail, started_at) "
                             "VALUES (?, ?, 'running', '', ?)", [job, user_id, utc_now()])
            return int(cur.lastrowid or 0)

    def finish_job_run(self, run_id: int, status: str, detail: str) -> None:
        with self._atomic() as db:
            db.execute("UPDATE job_runs SET status = ?, detail = ?, finished_at = ? WHERE id = ?",
                       [status, detail[:2000], utc_now(), run_id])

    def job_runs(self, job: str | None = None, limit: int = 50) -> list[JobRun]:
        sql = f"SELECT {_JOB_RUN} FROM job_runs"
        params: list[Any] = []
        if job is not None:
            sql, params = sql + " WHERE job = ?", [job]
        return [JobRun(**r) for r in self._rows(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])]

    def last_job_runs(self) -> dict[str, JobRun]:
        """The latest run of each job."""
        rows = self._rows(f"SELECT {_JOB_RUN} FROM job_runs WHERE id IN (SELECT MAX(id) FROM job_runs GROUP BY job)")
        return {r["job"]: JobRun(**r) for r in rows}

    def interrupt_unfinished_job_runs(self) -> int:
        """Runs left `running` by a stop or a crash: marked `interrupted` (at start-up)."""
        with self._atomic() as db:
            return db.execute("UPDATE job_runs SET status = 'interrupted', finished_at = ?, "
                              "detail = 'the daemon stopped during this run' WHERE status = 'running'",
                              [utc_now()]).rowcount

    # -- User-Based Rewards ---------------------------------------------------------------------

    def answers_without_feedback(self, user_id: str, since: str, limit: int) -> list[Message]:
        """The user's recent model answers that no signal covers yet: no pair uses them, and no
        judgement says they fell short (no thumbs, no actionable or negative follow-up). These
        are the turns User-Based Rewards samples alternatives for, newest first."""
        rows = self._rows(
            f"""SELECT {_M} FROM messages m JOIN conversations c ON c.id = m.conversation_id
            WHERE c.user_id = ? AND m.role = 'assistant' AND m.status = 'complete'
              AND m.origin IN ('model', 'regenerate') AND m.created_at >= ? AND m.parent_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM pairs p WHERE p.rejected_message_id = m.id OR p.chosen_message_id = m.id)
              AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.message_id = m.id AND (f.source = 'user'
                  OR f.actionable = 1 OR f.kind IN ('complaint', 'correction', 'retry', 'rewrite_request',
                                                    'clarification')))
            ORDER BY m.created_at DESC LIMIT ?""",
            [user_id, since, limit],
        )
        return [Message(**r) for r in rows]

    def prune_job_runs(self, keep: int = 2000) -> None:
        with self._atomic() as db:
            db.execute("DELETE FROM job_runs WHERE id <= (SELECT MAX(id) FROM job_runs) - ?", [keep])

    # -- learning paused at run time (`rlhi pause`) ----------------------------------------------

    def learning_paused(self) -> tuple[bool, str | None]:
        """(paused by `rlhi pause`, when that was last set); (False, None) if never set."""
        rows = self._rows("SELECT paused, changed_at FROM learning_state WHERE id = 1")
        return (bool(rows[0]["paused"]), rows[0]["changed_at"]) if rows else (False, None)

    def set_learning_paused(self, paused: bool) -> bool:
        """Pause or resume learning as a whole; returns whether this changed it. The row
        survives a restart: a daemon started later stays paused until resumed."""
        with self._atomic() as db:
            row = db.execute("SELECT paused FROM learning_state WHERE id = 1").fetchone()
            if row is not None and bool(row[0]) == paused:
                return False
            db.execute("INSERT INTO learning_state (id, paused, changed_at) VALUES (1, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET paused = excluded.paused, changed_at = excluded.changed_at",
                       [int(paused), utc_now()])
            return True
