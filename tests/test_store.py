"""The SQLite store: schema, WAL, permissions, and how resent histories become trees."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhi_local.errors import NotFoundError, StoreError
from rlhi_local.records import NewMessage
from rlhi_local.store import Store

U, A, S = "user", "assistant", "system"


def msgs(*pairs: tuple[str, str]) -> list[NewMessage]:
    return [NewMessage(role=r, content=c) for r, c in pairs]  # type: ignore[arg-type]


def answer(store: Store, placed, text: str) -> None:  # type: ignore[no-untyped-def]
    store.finish_answer(placed.answer_id, text, "complete", "stop", 5, 3, 1.0, 2.0)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data" / "rlhi.db")


def test_blank_database_gets_exact_schema(store: Store) -> None:
    cols = {
        t: [r[1] for r in store.db.execute(f"PRAGMA table_info({t})").fetchall()]
        for t in ("users", "conversations", "messages", "feedback", "pairs", "personas", "adapters", "train_runs",
                  "reward_models")
    }
    assert cols["users"] == ["id", "created_at"]
    assert cols["conversations"] == ["id", "user_id", "title", "created_at", "updated_at"]
    assert cols["messages"] == [
        "id", "conversation_id", "parent_id", "role", "content", "origin", "status", "path_hash",
        "model", "model_fingerprint", "adapter_version", "prompt_tokens", "completion_tokens",
        "ttft_ms", "latency_ms", "finish_reason", "created_at",
    ]
    assert cols["feedback"] == [
        "id", "user_id", "message_id", "followup_id", "kind", "source", "actionable", "instruction",
        "confidence", "detector_version", "created_at", "detector",
    ]
    applied = [r[0] for r in store.db.execute("SELECT name FROM _sqlite_migrations").fetchall()]
    assert cols["personas"] == ["id", "user_id", "version", "card", "facts", "source", "created_at"]
    assert cols["pairs"] == [
        "id", "user_id", "conversation_id", "prompt", "persona_version", "chosen", "rejected",
        "chosen_message_id", "rejected_message_id", "feedback_id", "origin", "instruction",
        "quality", "status", "reason", "created_at",
    ]
    assert cols["adapters"] == [
        "id", "user_id", "version", "base_fingerprint", "path", "pair_ids", "metrics", "status", "reason",
        "run_id", "created_at", "activated_at",
    ]
    assert cols["train_runs"] == [
        "id", "user_id", "status", "backend", "pairs", "adapter_version", "progress", "metrics", "error",
        "created_at", "started_at", "finished_at",
    ]
    assert cols["reward_models"] == [
        "id", "user_id", "version", "path", "accuracy", "accuracy_without_persona", "n_train", "n_heldout",
        "trusted", "status", "reason", "metrics", "created_at", "activated_at",
    ]
    assert applied[:5] == ["m001_initial", "m002_feedback", "m003_signals", "m004_training", "m005_reward"]


def test_at_most_one_active_adapter_per_user_and_activation_retires_the_last(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    for v in (1, 2):
        store.add_adapter("u", v, "f" * 64, f"/a/v{v}", ["p1"], {"x": v}, "candidate")
    store.activate_adapter("u", 1, reason="first")
    store.activate_adapter("u", 2, reason="replaced by v2")
    assert store.active_adapter("u").version == 2  # type: ignore[union-attr]
    assert [(a.status, a.reason) for a in store.adapters("u")] == [("retired", "replaced by v2"), ("active", "")]
    with pytest.raises(StoreError):  # the partial unique index refuses a second active adapter
        with store._atomic() as db:
            db.execute("UPDATE adapters SET status = 'active' WHERE version = 1")
    with pytest.raises(NotFoundError):
        store.activate_adapter("u", 7, reason="x")
    assert store.active_adapter("u").version == 2  # type: ignore[union-attr]
    store.activate_adapter("u", None, reason="back to base")
    assert store.active_adapter("u") is None and store.trained_pair_ids("u") == {"p1"}
    store.close()


def test_at_most_one_active_reward_model_per_user(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    for v in (1, 2):
        store.add_reward_model("u", v, f"/r/v{v}.npz", accuracy=0.7, accuracy_without_persona=0.5, n_train=8,
                               n_heldout=4, trusted=v == 2, metrics={"v": v})
    assert store.next_reward_model_version("u") == 3 and store.active_reward_model("u") is None
    store.activate_reward_model("u", 1, reason="first")
    row = store.activate_reward_model("u", 2, reason="replaced by v2")
    assert (row.status, row.trusted, row.to_dict()["metrics"]) == ("active", True, {"v": 2})
    assert [(r.status, r.reason) for r in store.reward_models("u")] == [("retired", "replaced by v2"), ("active", "")]
    with pytest.raises(StoreError):  # the partial unique index refuses a second active version
        with store._atomic() as db:
            db.execute("UPDATE reward_models SET status = 'active' WHERE version = 1")
    with pytest.raises(NotFoundError):
        store.activate_reward_model("u", 9, reason="x")
    store.set_reward_model_status("u", 2, "rejected", "file unusable")
    assert store.active_reward_model("u") is None
    store.close()


def test_a_database_at_m001_migrates_and_keeps_its_rows(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from rlhi_local.store.migrations import migrations

    path = tmp_path / "old.db"
    db = Database(path)
    migrations.apply(db, stop_before="m002_feedback")
    db.execute("INSERT INTO users VALUES ('local', 'then')")
    db.execute("INSERT INTO conversations VALUES ('c', 'local', 't', 'then', 'then')")
    db.execute("INSERT INTO messages (id, conversation_id, role, content, origin, status, path_hash, "
               "created_at) VALUES ('m', 'c', 'user', 'kept', 'user', 'complete', 'h', 'then')")
    db.conn.commit()
    db.conn.close()
    store = Store(path)
    assert store.get_message("m").content == "kept"
    assert store.db.execute("SELECT count(*) FROM feedback").fetchone()[0] == 0


def test_wal_mode_foreign_keys_and_private_files(store: Store) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    store.place_turns("local", msgs((U, "hello")))
    wal = Path(str(store.path) + "-wal")
    assert wal.exists()
    for p in (store.path, wal):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700


def test_reopen_is_idempotent_and_half_built_dev_db_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "rlhi.db"
    conn = sqlite3.connect(path)  # a dev DB where someone created one table by hand
    conn.execute("CREATE TABLE users (id TEXT PRIMARY KEY, created_at TEXT NOT NULL)")
    conn.commit()
    conn.close()
    Store(path).close()
    store = Store(path)
    assert store.integrity_check() == "ok"


def test_corrupt_database_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "rlhi.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=str(path)):
        Store(path)


def test_resent_history_stores_only_what_is_new(store: Store) -> None:
    first = store.place_turns("local", msgs((U, "What is 2+2?")))
    answer(store, first, "4")
    second = store.place_turns("local", msgs((U, "What is 2+2?"), (A, "4"), (U, "And 3+3?")))
    assert second.conversation_id == first.conversation_id
    assert len(second.new_message_ids) == 1
    conv = store.get_conversation("local", first.conversation_id)
    assert [m.content for m in conv.messages] == ["What is 2+2?", "4", "And 3+3?", ""]
    assert conv.messages[2].parent_id == first.answer_id
    assert conv.messages[3].status == "streaming"


def test_divergent_user_turn_becomes_a_branch(store: Store) -> None:
    first = store.place_turns("local", msgs((U, "Name a fruit")))
    answer(store, first, "Apple")
    second = store.place_turns("local", msgs((U, "Name a fruit"), (A, "Apple"), (U, "Another")))
    answer(store, second, "Pear")
    # The user edits their second question: a sibling of "Another", under the same answer.
    third = store.place_turns("local", msgs((U, "Name a fruit"), (A, "Apple"), (U, "A red one")))
    assert third.conversation_id == first.conversation_id
    conv = store.get_conversation("local", first.conversation_id)
    by_content = {m.content: m for m in conv.messages}
    assert by_content["A red one"].parent_id == by_content["Another"].parent_id == first.answer_id


def test_edited_answer_is_user_edit_and_repeat_is_regenerate(store: Store) -> None:
    first = store.place_turns("local", msgs((U, "Say hi")))
    answer(store, first, "Hello there, how can I help you today?")
    edited = store.place_turns(
        "local", msgs((U, "Say hi"), (A, "Hi."), (U, "Thanks")), conversation_id=first.conversation_id
    )
    conv = store.get_conversation("local", first.conversation_id)
    edit = next(m for m in conv.messages if m.content == "Hi.")
    assert edit.origin == "user_edit"
    assert edit.parent_id == first.parent_id
    assert edited.answer_origin == "model"
    again = store.place_turns("local", msgs((U, "Say hi")), conversation_id=first.conversation_id)
    assert again.answer_origin == "regenerate"
    assert again.parent_id == first.parent_id
    assert again.new_message_ids == ()


def test_unnamed_bare_greeting_starts_a_new_conversation(store: Store) -> None:
    a = store.place_turns("local", msgs((U, "hi")))
    b = store.place_turns("local", msgs((U, "hi")))
    assert a.conversation_id != b.conversation_id


def test_history_from_elsewhere_is_imported(store: Store) -> None:
    placed = store.place_turns("local", msgs((S, "Be brief."), (U, "Q"), (A, "from another app"), (U, "Q2")))
    conv = store.get_conversation("local", placed.conversation_id)
    assert [m.origin for m in conv.messages] == ["user", "user", "imported", "user", "model"]


def test_conversations_are_per_user(store: Store) -> None:
    placed = store.place_turns("alice", msgs((U, "secret")), conversation_id="c1")
    with pytest.raises(NotFoundError):
        store.get_conversation("bob", "c1")
    with pytest.raises(NotFoundError):
        store.place_turns("bob", msgs((U, "x")), conversation_id="c1")
    with pytest.raises(NotFoundError):
        store.delete_conversation("bob", "c1")
    assert [c.id for c in store.list_conversations("alice")] == [placed.conversation_id]
    assert store.list_conversations("bob") == []


def test_delete_cascades_and_late_finish_is_harmless(store: Store) -> None:
    placed = store.place_turns("local", msgs((U, "hello")))
    store.delete_conversation("local", placed.conversation_id)
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    answer(store, placed, "too late")  # the answer finishes after its conversation was deleted
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_crash_leaves_streaming_answer_incomplete_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "rlhi.db"
    store = Store(path)
    placed = store.place_turns("local", msgs((U, "hello")))
    store.close()  # as if killed mid-answer: the row is still 'streaming'
    reopened = Store(path)
    row = reopened.get_message(placed.answer_id or "")
    assert (row.status, row.finish_reason) == ("incomplete", "interrupted")


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(texts, min_size=1, max_size=4), reply=texts)
def test_any_text_round_trips_and_resending_adds_nothing(store: Store, turns: list[str], reply: str) -> None:
    history: list[NewMessage] = []
    conversation_id = None
    for text in turns:
        history.append(NewMessage("user", text))
        placed = store.place_turns("h", history, conversation_id=conversation_id)
        conversation_id = placed.conversation_id
        answer(store, placed, reply)
        history.append(NewMessage("assistant", reply))
    conv = store.get_conversation("h", conversation_id or "")
    stored = [(m.role, m.content) for m in conv.messages]
    assert stored == [(m.role, m.content) for m in history]
    # Resending the full history plus one turn adds exactly that turn (and the answer row).
    before = conv.message_count
    placed = store.place_turns("h", [*history, NewMessage("user", "next")], conversation_id=conversation_id)
    assert len(placed.new_message_ids) == 1
    assert store.get_conversation("h", conversation_id or "").message_count == before + 2
    store.delete_conversation("h", conversation_id or "")


def two_answers(store: Store) -> tuple[str, str, str]:
    a = store.place_turns("local", msgs((U, "Pick a number")), conversation_id="c")
    answer(store, a, "7")
    b = store.place_turns("local", msgs((U, "Pick a number")), conversation_id="c")
    answer(store, b, "42")
    return a.answer_id or "", b.answer_id or "", a.parent_id or ""


def user_feedback(store: Store) -> list[tuple[str, str]]:
    return [tuple(r) for r in store.db.execute(
        "SELECT message_id, kind FROM feedback WHERE source = 'user' ORDER BY rowid").fetchall()]


def test_thumbs_replace_each_other_and_show_on_messages(store: Store) -> None:
    first, _, _ = two_answers(store)
    store.record_feedback("local", first, "thumbs_up")
    store.record_feedback("local", first, "thumbs_down")
    assert user_feedback(store) == [(first, "thumbs_down")]
    conv = store.get_conversation("local", "c")
    assert next(m for m in conv.messages if m.id == first).feedback == ("thumbs_down",)
    with pytest.raises(NotFoundError):
        store.record_feedback("mallory", first, "thumbs_up")


def test_choice_needs_siblings_and_the_latest_choice_wins(store: Store) -> None:
    from rlhi_local.errors import InvalidRequestError

    single = store.place_turns("local", msgs((U, "Only once")))
    answer(store, single, "ok")
    with pytest.raises(InvalidRequestError, match="two or more"):
        store.record_feedback("local", single.answer_id or "", "choice")
    first, second, _ = two_answers(store)
    store.record_feedback("local", first, "choice")
    store.record_feedback("local", second, "choice")
    assert user_feedback(store) == [(second, "choice")]


def test_continuing_from_a_sibling_records_a_choice(store: Store) -> None:
    first, second, _ = two_answers(store)
    store.place_turns("local", msgs((U, "Pick a number"), (A, "7"), (U, "Why 7?")), conversation_id="c")
    assert user_feedback(store) == [(first, "choice")]


def test_edit_makes_a_user_edit_sibling_that_a_resend_then_matches(store: Store) -> None:
    first, _, parent = two_answers(store)
    edit = store.edit_message("local", first, "Seven, because it is prime.")
    assert (edit.origin, edit.parent_id, edit.status) == ("user_edit", parent, "complete")
    assert store.get_message(first).content == "7"  # the original stays
    placed = store.place_turns(
        "local", msgs((U, "Pick a number"), (A, "Seven, because it is prime."), (U, "Thanks")),
        conversation_id="c")
    assert placed.new_message_ids and store.get_message(placed.new_message_ids[0]).parent_id == edit.id


def test_rename_conversation(store: Store) -> None:
    two_answers(store)
    assert store.rename_conversation("local", "c", "Numbers").title == "Numbers"
    with pytest.raises(NotFoundError):
        store.rename_conversation("other", "c", "x")
