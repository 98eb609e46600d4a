"""Numbered schema migrations. Names are keys: never edit or rename a shipped migration.

Each runs in one transaction together with its record (sqlite-utils `Migrations`), so a crash
mid-migration leaves the previous schema intact.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

__all__ = ["migrations"]

migrations = Migrations("rlhi")


@migrations()
def m001_initial(db: Database) -> None:
    # IF NOT EXISTS tolerates a development database that was half-built by hand.
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS users (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS conversations (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            title TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS conversations_user ON conversations(user_id, updated_at)"
    )
    # path_hash chains sha256(parent's path_hash, role, content) from the root, so a resent
    # history is matched against stored turns with one indexed lookup per prefix.
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS messages (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            parent_id TEXT REFERENCES messages(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            origin TEXT NOT NULL
                CHECK (origin IN ('user', 'model', 'user_edit', 'regenerate', 'imported')),
            status TEXT NOT NULL CHECK (status IN ('streaming', 'complete', 'incomplete')),
            path_hash TEXT NOT NULL,
            model TEXT,
            model_fingerprint TEXT,
            adapter_version TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            ttft_ms REAL,
            latency_ms REAL,
            finish_reason TEXT,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS messages_path ON messages(path_hash)")
    db.execute(
        "CREATE INDEX IF NOT EXISTS messages_conversation ON messages(conversation_id, created_at)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS messages_parent ON messages(parent_id)")


@migrations()
def m002_feedback(db: Database) -> None:
    # One table for every judgement of a message: the user's own (thumbs, choice) and, later,
    # the follow-up detector's labels (kind, instruction, confidence, detector_version).
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS feedback (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            followup_id TEXT REFERENCES messages(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            source TEXT NOT NULL CHECK (source IN ('user', 'detector')),
            actionable INTEGER NOT NULL DEFAULT 0,
            instruction TEXT NOT NULL DEFAULT '',
            confidence REAL NOT NULL DEFAULT 1.0,
            detector_version TEXT,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS feedback_message ON feedback(message_id)")
    db.execute("CREATE INDEX IF NOT EXISTS feedback_user ON feedback(user_id, created_at)")


@migrations()
def m003_signals(db: Database) -> None:
    # Persona versions: each rebuild or user edit adds a row; the newest is active. `facts` is
    # JSON (rlhi_local.persona), where facts the user edited or deleted are marked so.
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS personas (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            version INTEGER NOT NULL,
            card TEXT NOT NULL,
            facts TEXT NOT NULL,
            source TEXT NOT NULL CHECK (source IN ('mined', 'user')),
            created_at TEXT NOT NULL,
            UNIQUE (user_id, version)
        )
        """
    )
    # Preference pairs with provenance. `prompt` is the JSON list of messages the answers
    # reply to; a `pending` guided_rewrite waits for a generated chosen side; a `dropped` pair
    # keeps the quality filter's reason (learning decisions are rows, not log lines).
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS pairs (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            prompt TEXT NOT NULL,
            persona_version INTEGER,
            chosen TEXT NOT NULL,
            rejected TEXT NOT NULL,
            chosen_message_id TEXT REFERENCES messages(id) ON DELETE CASCADE,
            rejected_message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            feedback_id TEXT REFERENCES feedback(id) ON DELETE CASCADE,
            origin TEXT NOT NULL
                CHECK (origin IN ('user_edit', 'choice', 'guided_rewrite', 'user_reward', 'thumbs')),
            instruction TEXT NOT NULL DEFAULT '',
            quality REAL,
            status TEXT NOT NULL CHECK (status IN ('ready', 'pending', 'dropped')),
            reason TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            UNIQUE (origin, rejected_message_id, chosen_message_id, feedback_id)
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS pairs_user ON pairs(user_id, status)")
    db.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS feedback_detector_once "
        "ON feedback(followup_id, detector_version) WHERE source = 'detector'"
    )


@migrations()
def m004_training(db: Database) -> None:
    # Training runs and the adapters they produce. An adapter row is written only after its
    # files are complete on disk; `active` is at most one per user (partial unique index), so a
    # crash between two updates can never leave two adapters served.
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS train_runs (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            backend TEXT NOT NULL DEFAULT '',
            pairs INTEGER NOT NULL DEFAULT 0,
            adapter_version INTEGER,
            progress TEXT NOT NULL DEFAULT '{}',
            metrics TEXT NOT NULL DEFAULT '{}',
            error TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT
        )
        """
    )
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS adapters (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            version INTEGER NOT NULL,
            base_fingerprint TEXT NOT NULL,
            path TEXT NOT NULL,
            pair_ids TEXT NOT NULL,
            metrics TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'rejected', 'retired')),
            reason TEXT NOT NULL DEFAULT '',
            run_id TEXT REFERENCES train_runs(id),
            created_at TEXT NOT NULL,
            activated_at TEXT,
            UNIQUE (user_id, version)
        )
        """
    )
    db.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS adapters_one_active ON adapters(user_id) WHERE status = 'active'"
    )


@migrations()
def m005_reward(db: Database) -> None:
    # Reward-model versions per user. A row is written only once its file is complete on disk;
    # at most one `active` per user (partial unique index), and activation retires the previous
    # one in the same transaction, so a crash never leaves a user without their last good model.
    # The accuracies are on the user's held-out pairs, with and without the persona input.
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS reward_models (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            version INTEGER NOT NULL,
            path TEXT NOT NULL,
            accuracy REAL,
            accuracy_without_persona REAL,
            n_train INTEGER NOT NULL DEFAULT 0,
            n_heldout INTEGER NOT NULL DEFAULT 0,
            trusted INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'rejected', 'retired')),
            reason TEXT NOT NULL DEFAULT '',
            metrics TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            activated_at TEXT,
            UNIQUE (user_id, version)
        )
        """
    )
    db.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS reward_models_one_active ON reward_models(user_id) "
        "WHERE status = 'active'"
    )


@migrations()
def m006_schedule(db: Database) -> None:
    # APScheduler's persistent job store (its SQLAlchemy store's layout: next run as a UTC
    # timestamp, the pickled job state), and our log of what each scheduled job did or why it
    # skipped. The job rows are rebuilt from the config if they cannot be read.
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS schedule_jobs (
            id TEXT PRIMARY KEY,
            next_run_time REAL,
            job_state BLOB NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS schedule_jobs_next ON schedule_jobs(next_run_time)")
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS job_runs (
            id INTEGER PRIMARY KEY,
            job TEXT NOT NULL,
            user_id TEXT,
            status TEXT NOT NULL
                CHECK (status IN ('running', 'ok', 'skipped', 'failed', 'missed', 'interrupted')),
            detail TEXT NOT NULL DEFAULT '',
            started_at TEXT NOT NULL,
            finished_at TEXT
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS job_runs_job ON job_runs(job, id)")


@migrations()
def m007_privacy(db: Database) -> None:
    # `forget` deletes messages, feedback and pairs by these keys, and every cascade from a
    # deleted message looks them up: without an index each deleted row scans the whole table.
    # Ids only; no text is copied into an index.
    for name, table, column in (
        ("feedback_followup", "feedback", "followup_id"),
        ("pairs_conversation", "pairs", "conversation_id"),
        ("pairs_rejected", "pairs", "rejected_message_id"),
        ("pairs_chosen", "pairs", "chosen_message_id"),
        ("pairs_feedback", "pairs", "feedback_id"),
    ):
        db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table}({column})")


@migrations()
def m008_learning_state(db: Database) -> None:
    # Learning as a whole, paused or not, set at run time (`rlhi pause` / `rlhi resume`): one
    # row, so the choice survives a restart. Independent of every other table (a migration
    # numbered before it may be added or applied later without touching it).
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS learning_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
            changed_at TEXT NOT NULL
        )
        """
    )


@migrations()
def m009_detector(db: Database) -> None:
    # Which detector produced each label: 'rules' or 'model' (a configured model, DESIGN §4), so
    # labels from a model can be listed, compared and redone. NULL for the user's own judgements.
    # The column check tolerates a dev database that already has it.
    columns = {row[1] for row in db.execute("PRAGMA table_info(feedback)").fetchall()}
    if "detector" not in columns:
        db.execute("ALTER TABLE feedback ADD COLUMN detector TEXT CHECK (detector IN ('rules', 'model'))")
    db.execute("UPDATE feedback SET detector = 'rules' WHERE source = 'detector' AND detector IS NULL")
