"""Export and forget (DESIGN §6) against a private daemon, so forgetting disturbs no other test.

Forgetting is checked where it matters: the raw bytes of every file under RLHI_HOME (database,
WAL, shared memory, adapters, reward models, job files) hold no byte of a forgotten marker, what
is kept is still stored and served, and adapters that learned from forgotten pairs are retired,
deleted and no longer answer. No real training runs: adapters are registered with a random GGUF
LoRA (as the engine tests make them) and the retraining run waits for an idle user it never sees.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rlhi_local.client import Client
from rlhi_local.errors import APIError
from tests.conftest import RunningDaemon, rlhi_cmd, start_thread_daemon, stop_thread_daemon
from tests.test_engine_adapter import write_lora

SHORT = {"max_tokens": 6, "temperature": 0.0}


@pytest.fixture(scope="module")
def private() -> Iterator[RunningDaemon]:
    home = Path(tempfile.mkdtemp(prefix="rhp", dir="/tmp"))
    # Two pairs are enough to retrain; the queued retraining waits for an hour of quiet, so it
    # never starts a real trainer here. One llama.cpp thread: on a busy shared box spinning
    # worker threads made each short answer ~10x slower (as in the engine tests).
    running = start_thread_daemon(home, {"training": {"min_pairs": 2}, "learning": {"rewrite_idle_s": 3600.0},
                                         "model": {"n_threads": 1}})
    yield running
    stop_thread_daemon(running)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture()
def pc(private: RunningDaemon) -> Iterator[Client]:
    with Client(private.socket) as c:
        yield c


def state(d: RunningDaemon) -> Any:
    return d.daemon._state


def mine(d: RunningDaemon, user: str) -> dict[str, Any]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)), base_url="http://rlhi") as h:
        r = h.post("/v1/signals/mine", params={"user": user}, timeout=60)
        assert r.status_code == 200, r.text
        return dict(r.json())


def found(home: Path, *markers: str) -> dict[str, int]:
    """How many times each marker occurs in the raw bytes of every file under `home`."""
    counts = dict.fromkeys(markers, 0)
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for m in markers:
                counts[m] += data.count(m.encode())
    return counts


def register_adapter(d: RunningDaemon, user: str, version: int, pair_ids: list[str], job_text: str) -> Path:
    """An adapter as a finished run leaves it: GGUF + job file (which quotes its pairs) + row."""
    st = state(d)
    directory = d.home / "data" / "adapters" / user / f"v{version}"
    directory.mkdir(parents=True)
    write_lora(directory / "adapter.gguf", seed=version, std=0.01)
    (directory / "job.json").write_text(json.dumps({"train": [{"chosen": job_text}]}), encoding="utf-8")
    st.store.add_adapter(user, version, st.spec.fingerprint, str(directory), pair_ids, {}, "candidate")
    st.store.activate_adapter(user, version, reason=f"replaced by v{version}")
    return directory


def test_forgetting_a_conversation_leaves_no_byte_and_retires_what_learned_from_it(
        private: RunningDaemon, pc: Client) -> None:
    user = "alice"
    a1, a2, b1, b2, b3 = (uuid.uuid4().hex for _ in range(5))
    st = state(private)
    # Kept conversation first, so its pairs are mined before any persona fact exists.
    kept = pc.chat([{"role": "user", "content": f"My code word is {b1}. What is two plus two?"}], user=user, **SHORT)
    pc.edit_message(kept.message_id, f"Four ({b2}).", user=user)
    pc.edit_message(kept.message_id, f"It is four, {b3}.", user=user)
    mine(private, user)
    gone = pc.chat([{"role": "user", "content": f"I live in Zurich-{a1}. Which lake is there?"}], user=user, **SHORT)
    pc.edit_message(gone.message_id, f"Lake Zurich, {a2}.", user=user)
    mine(private, user)
    ready = pc.pairs(user=user, status="ready")
    pair_a = [p["id"] for p in ready if p["conversation_id"] == gone.conversation_id]
    pairs_b = [p["id"] for p in ready if p["conversation_id"] == kept.conversation_id]
    assert len(pair_a) == 1 and len(pairs_b) == 2, ready
    assert a1 in pc.persona(user=user)["card"]

    v1 = register_adapter(private, user, 1, pairs_b, f"Four ({b2}).")
    v2 = register_adapter(private, user, 2, pair_a + pairs_b, f"Lake Zurich, {a2}.")
    rm_dir = private.home / "data" / "reward" / user
    rm_dir.mkdir(parents=True)
    (rm_dir / "v1.npz").write_bytes(b"weights of a reward model")
    st.store.add_reward_model(user, 1, str(rm_dir / "v1.npz"), accuracy=None, accuracy_without_persona=None,
                              n_train=3, n_heldout=0, trusted=False, metrics={})
    st.store.activate_reward_model(user, 1, reason="first")
    served = pc.chat([{"role": "user", "content": "Hello"}], user=user, **SHORT)
    assert served.raw["rlhi"]["adapter_version"] == 2

    lines = list(pc.export(user=user))
    assert lines[0]["table"] == "export" and lines[0]["row"]["user"] == user
    assert lines[-1]["table"] == "export_end"
    rows = lines[1:-1]
    assert {t for t in lines[-1]["row"]["rows"] if lines[-1]["row"]["rows"][t]} == {r["table"] for r in rows}
    assert all(set(r) == {"table", "row"} for r in rows)
    assert sum(lines[-1]["row"]["rows"].values()) == len(rows)
    text = json.dumps(rows)
    assert all(m in text for m in (a1, a2, b1, b2, b3))
    assert {"users", "conversations", "messages", "feedback", "personas", "pairs", "adapters",
            "reward_models"} <= {r["table"] for r in rows}

    out = pc.forget(conversation_id=gone.conversation_id, user=user)
    assert out["deleted"]["conversations"] == 1 and out["deleted"]["messages"] == 3
    assert out["pair_ids"] == pair_a and out["persona_versions_changed"] == [1]
    assert out["adapters_retired"] == [2] and out["active_adapter"] == 1
    assert out["reward_models_retired"] == [1] and out["active_reward_model"] is None
    assert out["retraining"]["queued"] is True and out["wal_bytes"] == 0

    leftovers = found(private.home, a1, a2)
    print(f"\nbytes of forgotten markers found under RLHI_HOME after forget: {sum(leftovers.values())}")
    assert leftovers == {a1: 0, a2: 0}
    assert found(private.home / "data", b1)[b1] > 0
    assert not v2.exists() and (v1 / "adapter.gguf").is_file() and not (v1 / "job.json").exists()
    assert not (rm_dir / "v1.npz").exists()
    assert st.store.integrity_check() == "ok"
    assert st.store.db.execute("PRAGMA secure_delete").fetchone()[0] == 1

    conversation = pc.conversation(kept.conversation_id, user=user)
    assert b1 in conversation["messages"][0]["content"]
    with pytest.raises(APIError) as err:
        pc.conversation(gone.conversation_id, user=user)
    assert err.value.status_code == 404
    assert a1 not in json.dumps(pc.persona_history(user=user))
    adapters = {a["version"]: a for a in pc.adapters(user=user)["data"]}
    assert adapters[2]["status"] == "retired" and adapters[2]["reason"].startswith("forgotten: ")
    assert pc.adapters(user=user)["active"] == 1
    again = pc.chat([{"role": "user", "content": "Hello"}], user=user, **SHORT)
    assert again.raw["rlhi"]["adapter_version"] == 1 and st.engine.adapter == (v1 / "adapter.gguf").resolve()
    assert (v2 / "adapter.gguf").resolve() not in st.engine._adapters  # freed, not just unused
    with pytest.raises(APIError) as err:
        pc.chat([{"role": "user", "content": "Hello"}], user=user, metadata={"adapter": "v2"}, **SHORT)
    assert err.value.status_code == 404 and "v2 is gone" in err.value.message
    with pytest.raises(APIError):
        pc.activate_adapter(2, user=user)
    run = pc.train_run(out["retraining"]["run_id"])
    assert run["status"] == "queued" and run["user_id"] == user

    # Forgetting the rest retires v1 too; no pairs are left, so nothing is retrained, and the
    # queued run (its job would quote the pairs) is cancelled first.
    rest = pc.forget(conversation_id=kept.conversation_id, user=user)
    assert rest["cancelled_run"] == run["id"] and pc.train_run(run["id"])["status"] == "cancelled"
    assert rest["adapters_retired"] == [1] and rest["active_adapter"] is None
    assert rest["retraining"]["queued"] is False and "training.min_pairs=2" in rest["retraining"]["reason"]
    assert found(private.home, a1, a2, b1, b2, b3) == dict.fromkeys((a1, a2, b1, b2, b3), 0)
    assert not v1.exists()


def test_a_date_range_forgets_only_what_was_said_in_it(private: RunningDaemon, pc: Client) -> None:
    user = "carol"
    early, late = uuid.uuid4().hex, uuid.uuid4().hex
    first = pc.chat([{"role": "user", "content": f"Early note {early}."}], user=user, **SHORT)
    second = pc.chat([{"role": "user", "content": f"Late note {late}."}], user=user, **SHORT)
    since = pc.conversation(second.conversation_id, user=user)["created_at"]
    out = pc.forget(since=since, user=user)
    assert out["deleted"]["conversations"] == 1 and out["deleted"]["messages"] == 2
    assert [c["id"] for c in pc.conversations(user=user)] == [first.conversation_id]
    assert found(private.home, late)[late] == 0 and found(private.home / "data", early)[early] > 0


@pytest.mark.parametrize("body, status, says", [
    ({}, 400, "Say what to forget"),
    ({"since": "2024-05-03", "until": "2024-05-01"}, 400, "is not before until"),
    ({"since": "last tuesday"}, 400, "is not a date or time"),
    ({"conversation_id": "conv_unknown"}, 404, "No conversation 'conv_unknown' for user 'dave'"),
    ({"conversation_id": "c1", "everything": True}, 400, "this request names 2"),
    ({"conversation": "c1"}, 400, "conversation"),
])
def test_a_bad_forget_request_is_refused_and_changes_nothing(
        private: RunningDaemon, pc: Client, body: dict[str, Any], status: int, says: str) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(private.socket)), base_url="http://rlhi") as h:
        r = h.post("/v1/forget", json={"user": "dave", **body})
    assert r.status_code == status and says in r.json()["error"]["message"], r.text


def test_rlhi_export_and_forget_all(private: RunningDaemon, pc: Client, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    pc.chat([{"role": "user", "content": f"Say hi to {marker}."}], **SHORT)
    env = {"RLHI_HOME": str(private.home)}
    target = tmp_path / "mine.jsonl"
    out = rlhi_cmd("export", "-o", str(target), env=env)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600 and "exported" in out.stderr
    lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert marker in json.dumps(lines) and lines[-1]["table"] == "export_end"

    refused = rlhi_cmd("forget", "--all", env=env, input="n\n")
    assert refused.returncode == 1 and "cannot be undone" in refused.stderr
    assert pc.conversations()
    done = rlhi_cmd("forget", "--all", "--yes", env=env)
    assert done.returncode == 0 and done.stdout.startswith("forgot "), done.stderr
    assert pc.conversations() == [] and found(private.home, marker)[marker] == 0
    listed = rlhi_cmd("export", env=env)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["table"] for r in rows] == ["export", "export_end"]
