"""Faults of the disk and of the files: said clearly, survived, and nothing stored is damaged.

The faults are real, not simulated in our code: a full disk is a small tmpfs filled to ENOSPC
(not RLIMIT_FSIZE: its EFBIG reaches SQLite as a plain I/O error, not the SQLITE_FULL a full disk
gives, so it would test another path than the one users hit); a read-only data dir is a
read-only bind mount; files that refuse writes under a running daemon are immutable (`chattr
+i`: a filesystem cannot be remounted read-only while SQLite holds files open for writing, so
this is the nearest real thing). Mounting needs root (CAP_SYS_ADMIN), which
this suite's machines give. Damaged databases, adapters and models are real files cut short or
overwritten. A corrupt reward-model file is covered by tests/test_reward.py
(`test_versions_trust_and_a_corrupt_file_keep_the_last_good_model`).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rlhi_local.client import Client
from rlhi_local.errors import APIError
from rlhi_local.models import embedded_model_path, fingerprint
from rlhi_local.records import NewMessage
from rlhi_local.store import Store
from tests.conftest import RunningDaemon, rlhi_cmd, start_thread_daemon, stop_thread_daemon
from tests.test_engine_adapter import write_lora

Q = [{"role": "user", "content": "Name a colour."}]


@contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    """A real filesystem of `size` mounted at `path` (tmpfs)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` bind-mounted read-only over itself."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(folder: Path) -> Path:
    """Write a file into `folder` until its disk reports ENOSPC; returns it (unlink to free)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    # Never the -shm file: SQLite maps it, and a store into an immutable mapping is a SIGBUS.
    subprocess.run(["chattr", "+i", *map(str, paths)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


def store_problems(c: Client) -> list[dict[str, object]]:
    return [p for p in c.health()["problems"] if p["kind"] == "store"]


# -- the disk --------------------------------------------------------------------------------------

def test_a_full_disk_refuses_new_turns_clearly_keeps_old_ones_and_recovers(rlhi_home: Path) -> None:
    data = rlhi_home / "data"
    with small_disk(data):
        running = start_thread_daemon(rlhi_home, {"model": {"n_threads": 1}})
        try:
            with Client(running.socket) as c:
                before = c.chat(Q, conversation_id="before", max_tokens=4)
                filler = fill(data)
                with pytest.raises(APIError) as err:
                    c.chat(Q, conversation_id="during", max_tokens=4)
                assert err.value.status_code == 507 and err.value.code == "disk_full"
                assert str(data) in err.value.message and "Free disk space" in err.value.message
                # Health and reads go on; what was stored is intact; the refused turn left nothing.
                assert [p["path"] for p in store_problems(c)] == [str(data / "rlhi.db")]
                stored = c.conversation("before")["messages"]
                assert [m["content"] for m in stored] == [Q[0]["content"], before.text]
                assert [x["id"] for x in c.conversations()] == ["before"]

                # Space runs out while the model answers: the answer is not passed off as stored.
                filler.unlink()
                filler = None
                with pytest.raises(APIError) as err:
                    for chunk in c.stream_chat(Q, conversation_id="mid", max_tokens=200, ignore_eos=True):
                        if chunk.text and filler is None:
                            filler = fill(data)
                assert err.value.code == "disk_full" and "Free disk space" in err.value.message
                assert filler is not None

                filler.unlink()  # space returns: so does storing, and the problem clears
                after = c.chat(Q, conversation_id="after", max_tokens=4)
                assert c.conversation("after")["messages"][-1]["content"] == after.text
                assert store_problems(c) == []
            assert running.daemon._state.store.integrity_check() == "ok"  # type: ignore[union-attr]
        finally:
            stop_thread_daemon(running)


def test_files_that_refuse_writes_are_named_and_reads_go_on(rlhi_home: Path) -> None:
    running = start_thread_daemon(rlhi_home, {"model": {"n_threads": 1}})
    db = running.db_path
    try:
        with Client(running.socket) as c:
            before = c.chat(Q, conversation_id="before", max_tokens=4)
            with immutable(db, Path(f"{db}-wal")):
                with pytest.raises(APIError) as err:
                    c.chat(Q, conversation_id="during", max_tokens=4)
                assert err.value.status_code == 503 and err.value.code == "store_unwritable"
                assert str(db) in err.value.message and "lsattr" in err.value.message
                assert [m["content"] for m in c.conversation("before")["messages"]][-1] == before.text
                assert len(store_problems(c)) == 1
            c.chat(Q, conversation_id="after", max_tokens=4)
            assert sorted(x["id"] for x in c.conversations()) == ["after", "before"]
            assert store_problems(c) == []
    finally:
        stop_thread_daemon(running)


def seeded_store(home: Path) -> Path:
    """A database with a few stored turns, closed; returns its path."""
    store = Store(home / "data" / "rlhi.db")
    for i in range(30):
        placed = store.place_turns("local", [NewMessage(role="user", content=f"Question {i}? " * 40)])
        store.finish_answer(placed.answer_id or "", "An answer. " * 80, "complete", "stop")
    store.close()
    return store.path


def test_a_read_only_data_dir_stops_the_start_clearly_and_changes_nothing(rlhi_home: Path) -> None:
    db = seeded_store(rlhi_home)
    data, before = db.parent, db.read_bytes()
    with read_only(data):
        out = rlhi_cmd("serve", timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert str(data) in out.stderr and "read-only" in out.stderr and "Remount it read-write" in out.stderr
    assert db.read_bytes() == before


def _garbage_header(db: Path) -> None:
    with db.open("r+b") as f:
        f.write(b"\xde\xad\xbe\xef" * 16)


def _cut_mid_page(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2 + 100)


def _cut_at_page(db: Path) -> None:
    os.truncate(db, (db.stat().st_size // 4096 // 2) * 4096)


@pytest.mark.parametrize("damage", [_garbage_header, _cut_mid_page, _cut_at_page],
                         ids=["garbage-header", "truncated", "truncated-at-a-page"])
def test_a_damaged_database_stops_the_start_naming_it_and_is_left_untouched(rlhi_home: Path, damage) -> None:  # type: ignore[no-untyped-def]
    db = seeded_store(rlhi_home)
    damage(db)
    before = db.read_bytes()
    out = rlhi_cmd("serve", timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert str(db) in out.stderr and "damaged" in out.stderr and "restore it from a backup" in out.stderr
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.glob("rlhi.db*")) == ["rlhi.db"]  # no WAL opened on it


# -- adapters and the model ------------------------------------------------------------------------

def register(store: Store, user: str, base: str, *, truncate: bool = False) -> Path:
    """Version 1 of `user`: a random LoRA (cut in half when `truncate`), made the active one."""
    folder = store.path.parent / "adapters" / user / "v1"
    folder.mkdir(parents=True)
    path = write_lora(folder / "adapter.gguf", seed=len(user))
    if truncate:
        os.truncate(path, path.stat().st_size // 2)
    store.add_adapter(user, 1, base, str(folder), [], {}, "candidate")
    store.activate_adapter(user, 1, reason="replaced by v1")
    return path


def adapter_problems(c: Client) -> dict[str, str]:
    return {str(p["user"]): str(p["message"]) for p in c.health()["problems"] if p["kind"] == "adapter"}


def test_an_unreadable_adapter_leaves_its_user_on_the_base_model_and_says_why(rlhi_home: Path) -> None:
    base = fingerprint(embedded_model_path())
    store = Store(rlhi_home / "data" / "rlhi.db")
    broken = register(store, "alice", base, truncate=True)
    register(store, "bob", base)
    store.close()
    running: RunningDaemon = start_thread_daemon(rlhi_home, {"model": {"n_threads": 1}})
    live = running.daemon._state.store  # type: ignore[union-attr]
    try:
        with Client(running.socket) as c:
            problems = adapter_problems(c)
            assert list(problems) == ["alice"]  # found at start, before any chat
            assert str(broken) in problems["alice"] and "rlhi adapters rollback" in problems["alice"]
            alice = c.chat(Q, user="alice", max_tokens=4)
            bob = c.chat(Q, user="bob", max_tokens=4)
            assert alice.raw["rlhi"]["adapter_version"] is None and bob.raw["rlhi"]["adapter_version"] == 1
            assert live.get_message(alice.message_id).adapter_version is None
            assert live.get_message(bob.message_id).adapter_version == "1"

            status = rlhi_cmd("status", env={"RLHI_HOME": str(rlhi_home)}, timeout=60)
            assert status.returncode == 0 and str(broken) in status.stdout and "rollback" in status.stdout

            # Asked for by name, it is refused before anything is stored; activating it again too.
            with pytest.raises(APIError) as err:
                c.chat(Q, user="alice", max_tokens=4, metadata={"adapter": "v1"})
            assert str(broken) in err.value.message and len(c.conversations(user="alice")) == 1
            with pytest.raises(APIError) as err:
                c.activate_adapter(1, user="alice")
            assert err.value.status_code == 400 and str(broken) in err.value.message

            # Promoted straight in the store (as training does) and unreadable at its first answer:
            # that answer comes from the base model and is recorded so.
            carol = register(live, "carol", base, truncate=True)
            answer = c.chat(Q, user="carol", max_tokens=4)
            assert answer.raw["rlhi"]["adapter_version"] is None
            assert live.get_message(answer.message_id).adapter_version is None
            assert str(carol) in adapter_problems(c)["carol"]

            c.rollback_adapter(user="alice")
            assert sorted(adapter_problems(c)) == ["carol"]
            assert c.chat(Q, user="bob", max_tokens=4).raw["rlhi"]["adapter_version"] == 1
    finally:
        stop_thread_daemon(running)


def test_a_truncated_model_stops_the_start_naming_it(tmp_path: Path) -> None:
    whole = embedded_model_path()
    half = tmp_path / "half.gguf"
    with whole.open("rb") as src, half.open("wb") as dst:
        dst.write(src.read(whole.stat().st_size // 2))
    out = rlhi_cmd("--model", str(half), "serve", timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert str(half) in out.stderr and "model.path" in out.stderr
