"""Training through the daemon: the job, the child process, the gate, the registry, hot-swap.

One real daemon for the module, with settings that keep a run to seconds (rank 4, one epoch,
short sequences); pairs are seeded through its store. The trainer runs as the real child process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlhi_local.client import Client
from rlhi_local.config import TrainingConfig
from rlhi_local.errors import APIError
from rlhi_local.records import NewMessage, Pair
from rlhi_local.training import gate, split_pairs
from tests._base import shared_base_dir, shared_cache_root
from tests.conftest import RunningDaemon, rlhi_cmd, start_thread_daemon, stop_thread_daemon, wait_for

SHORT = "Practise a little every day."
LONG = ("Sure! Here is a detailed explanation. There are many aspects worth considering in depth, "
        "and several points to keep in mind before deciding anything at all.")
FAST = {"rank": 4, "alpha": 8.0, "epochs": 1, "batch_size": 2, "max_len": 128, "lr": 5e-4, "min_pairs": 4,
        "threads": 2}


@pytest.fixture(scope="module")
def trainer_daemon() -> Iterator[RunningDaemon]:
    shared_base_dir()  # convert once, outside the timed runs
    home = Path(tempfile.mkdtemp(prefix="rht", dir="/tmp"))
    running = start_thread_daemon(home, {"training": {**FAST, "cache_dir": str(shared_cache_root())}})
    yield running
    stop_thread_daemon(running)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture()
def tc(trainer_daemon: RunningDaemon) -> Iterator[Client]:
    with Client(trainer_daemon.socket) as c:
        yield c


def state(d: RunningDaemon) -> Any:
    return d.daemon._state


def seed_pairs(d: RunningDaemon, user: str, n: int) -> list[str]:
    """n ready user_edit pairs (short chosen over long rejected) with real stored messages."""
    store = state(d).store
    ids = []
    for i in range(n):
        question = f"How do I learn topic {i} quickly?"
        placed = store.place_turns(user, [NewMessage(role="user", content=question)])
        store.finish_answer(placed.answer_id, LONG, "complete", "stop")
        ids.append(store.add_pair(
            user_id=user, conversation_id=placed.conversation_id, prompt=[{"role": "user", "content": question}],
            persona_version=None, chosen=SHORT, rejected=LONG, chosen_message_id=None,
            rejected_message_id=placed.answer_id, feedback_id=None, origin="user_edit", instruction="",
            status="ready"))
    return ids


def finish(c: Client, run: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    assert wait_for(lambda: c.train_run(run["id"])["status"] not in ("queued", "running"), timeout, 0.5)
    return c.train_run(run["id"])


# -- pure parts ----------------------------------------------------------------------------------

def _pair(i: int) -> Pair:
    return Pair(f"pair_{i}", "u", "c", (), None, "a", "b", None, "m", None, "user_edit", "", None, "ready", "", "")


def test_held_out_pairs_are_stable_and_at_least_two() -> None:
    pairs = [_pair(i) for i in range(10)]
    train, held = split_pairs(pairs, 0.2)
    assert len(held) == 2 and len(train) == 8
    assert {p.id for p in split_pairs(list(reversed(pairs)), 0.2)[1]} == {p.id for p in held}
    assert split_pairs(pairs[:3], 0.2) == (pairs[:3], [])
    assert len(split_pairs(pairs, 0.5)[1]) == 5 and split_pairs(pairs, 0.0)[1] == []


GOOD = {"export_correlation": 0.99, "drift": {"kl": 0.05, "ppl_ratio": 1.02},
        "candidate": {"pairs": 5, "rewards/accuracies": 0.8, "rewards/margins": 0.4}}


@pytest.mark.parametrize(("change", "reason"), [
    ({}, ""),
    ({"export_correlation": 0.6}, "export check failed"),
    ({"drift": {"kl": 0.8, "ppl_ratio": 1.0}}, "drifted from the base: KL 0.800"),
    ({"drift": {"kl": 0.1, "ppl_ratio": 2.5}}, "degraded neutral answers: perplexity x2.50"),
    ({"candidate": {"pairs": 5, "rewards/accuracies": 0.4, "rewards/margins": 0.2}}, "not better than the base"),
    ({"candidate": {"pairs": 5, "rewards/accuracies": 0.8, "rewards/margins": -0.1}}, "not better than the base"),
    ({"active": {"pairs": 5, "rewards/accuracies": 1.0, "rewards/margins": 0.9}}, "not better than the active"),
    ({"active": {"pairs": 5, "rewards/accuracies": 0.6, "rewards/margins": 0.1}}, ""),
    ({"reward": {"prompts": 4, "served": "v2", "candidate_mean": -1.0, "served_mean": 0.2, "scale": 2.0,
                 "drop": 0.6, "win_rate": 0.0}}, "the user's reward model prefers the served v2's answers"),
    # The same raw gap is small next to a reward model whose held-out margin is large.
    ({"reward": {"prompts": 4, "served": "v2", "candidate_mean": -1.0, "served_mean": 0.2, "scale": 6.0,
                 "drop": 0.2, "win_rate": 0.0}}, ""),
    ({"reward": {"prompts": 4, "served": "base", "candidate_mean": 0.0, "served_mean": 0.3, "scale": 1.0,
                 "drop": 0.3, "win_rate": 0.5}}, ""),
    # One outlier: a large mean drop, but the candidate wins half the prompts.
    ({"reward": {"prompts": 4, "served": "base", "candidate_mean": 0.0, "served_mean": 3.0, "scale": 1.0,
                 "drop": 3.0, "win_rate": 0.5}}, ""),
    ({"reward": {"skipped": "no reward model yet"}}, ""),
])
def test_the_gate_names_what_failed(change: dict[str, Any], reason: str) -> None:
    verdict = gate({**GOOD, **change}, TrainingConfig())
    assert verdict.startswith(reason) if reason else verdict == ""


# -- through the daemon --------------------------------------------------------------------------

def test_too_few_pairs_is_refused_with_the_setting_named(tc: Client) -> None:
    with pytest.raises(APIError) as err:
        tc.train(user="nobody")
    assert err.value.status_code == 400 and "training.min_pairs=4" in str(err.value)


def test_a_run_trains_exports_gates_and_registers(trainer_daemon: RunningDaemon, tc: Client) -> None:
    pair_ids = seed_pairs(trainer_daemon, "alice", 8)
    run = finish(tc, tc.train(user="alice"))
    assert run["status"] == "done", run["error"]
    m = run["metrics"]
    assert m["backend"] == "cpu" and m["pairs"] == 6 and m["candidate"]["pairs"] == 2
    assert m["export_correlation"] >= 0.95, "llama.cpp must apply the adapter as torch does"
    listing = tc.adapters(user="alice")
    (adapter,) = listing["data"]
    assert adapter["version"] == run["adapter_version"] == 1
    assert set(adapter["pair_ids"]) < set(pair_ids) and len(adapter["pair_ids"]) == 6
    assert adapter["base_fingerprint"] == state(trainer_daemon).spec.fingerprint
    directory = Path(adapter["path"])
    assert (directory / "adapter.gguf").is_file() and (directory / "peft").is_dir()
    assert not list(directory.parent.glob(".staging-*")), "the staging directory is renamed into place"
    promoted = run["progress"]["promoted"]
    assert adapter["status"] == ("active" if promoted else "rejected")
    assert listing["active"] == (1 if promoted else None)
    assert promoted == (gate(m, state(trainer_daemon).config.training) == "")


def test_answers_record_the_adapter_and_base_can_be_asked_for(trainer_daemon: RunningDaemon, tc: Client) -> None:
    if not tc.adapters(user="alice")["data"]:
        seed_pairs(trainer_daemon, "alice", 8)
        finish(tc, tc.train(user="alice"))
    tc.activate_adapter(1, user="alice")
    question = [{"role": "user", "content": "Name a colour."}]
    tuned = tc.chat(question, user="alice", temperature=0, max_tokens=24)
    base = tc.chat(question, user="alice", temperature=0, max_tokens=24, metadata={"adapter": "base"})
    other = tc.chat(question, user="bob", temperature=0, max_tokens=24)  # bob has no adapter
    assert tuned.raw["rlhi"]["adapter_version"] == 1 and base.raw["rlhi"]["adapter_version"] is None
    assert other.raw["rlhi"]["adapter_version"] is None and other.text == base.text
    store = state(trainer_daemon).store
    assert store.get_message(tuned.message_id).adapter_version == "1"
    assert store.get_message(base.message_id).adapter_version is None
    with pytest.raises(APIError) as err:
        tc.chat(question, user="alice", metadata={"adapter": "v9"})
    assert err.value.status_code == 404


def test_cli_lists_activates_and_rolls_back(trainer_daemon: RunningDaemon, tc: Client) -> None:
    if not tc.adapters(user="alice")["data"]:
        seed_pairs(trainer_daemon, "alice", 8)
        finish(tc, tc.train(user="alice"))
    env = {"RLHI_HOME": str(trainer_daemon.home)}
    out = rlhi_cmd("adapters", "activate", "v1", "--user", "alice", env=env)
    assert out.returncode == 0 and "serving v1" in out.stdout, out.stderr
    listed = rlhi_cmd("adapters", "list", "--user", "alice", env=env)
    assert "serving: v1" in listed.stdout and "v1   active" in listed.stdout
    back = rlhi_cmd("adapters", "rollback", "--user", "alice", env=env)
    assert back.returncode == 0 and "serving: the base model" in back.stdout
    assert tc.adapters(user="alice")["data"][0]["reason"] == "rolled back from v1"
    again = rlhi_cmd("adapters", "rollback", "--user", "alice", env=env)
    assert again.returncode == 1 and "nothing to roll back" in again.stderr


def test_an_adapter_for_another_base_is_refused(trainer_daemon: RunningDaemon, tc: Client) -> None:
    store = state(trainer_daemon).store
    store.add_adapter("carol", 1, "0" * 64, "/nowhere", [], {}, "candidate")
    with pytest.raises(APIError) as err:
        tc.activate_adapter(1, user="carol")
    assert err.value.status_code == 400 and "trained for base 0000000000000000" in str(err.value)
    assert tc.adapters(user="carol")["active"] is None


def test_cancel_stops_the_child_and_changes_nothing(trainer_daemon: RunningDaemon, tc: Client) -> None:
    seed_pairs(trainer_daemon, "dave", 12)
    run = tc.train(user="dave")
    assert wait_for(lambda: tc.train_run(run["id"])["status"] == "running", 60, 0.2)
    tc.cancel_training(run["id"])
    done = finish(tc, run, 120)
    assert done["status"] == "cancelled"
    assert tc.adapters(user="dave") == {"object": "list", "active": None, "data": []}
    assert not (trainer_daemon.home / "data" / "adapters" / "dave" / ".staging-v1").exists()


def test_a_killed_trainer_fails_the_run_and_keeps_the_active_adapter(trainer_daemon: RunningDaemon,
                                                                     tc: Client) -> None:
    store = state(trainer_daemon).store
    seed_pairs(trainer_daemon, "erin", 8)
    store.add_adapter("erin", 1, state(trainer_daemon).spec.fingerprint, "/kept", [], {}, "candidate")
    store.activate_adapter("erin", 1, "test")
    run = tc.train(user="erin")
    trainings = state(trainer_daemon).trainings
    assert wait_for(lambda: trainings._proc is not None and trainings._proc.poll() is None, 60, 0.1)
    os.kill(trainings._proc.pid, signal.SIGKILL)
    done = finish(tc, run, 120)
    assert done["status"] == "failed" and "exited with code -9" in done["error"]
    assert tc.adapters(user="erin")["active"] == 1
    assert [a["version"] for a in tc.adapters(user="erin")["data"]] == [1]


def test_over_the_memory_budget_the_run_is_stopped_and_says_which_setting(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="rhm", dir="/tmp"))
    d = start_thread_daemon(home, {"training": {**FAST, "memory_mb": 256, "cache_dir": str(shared_cache_root())}})
    try:
        seed_pairs(d, "frank", 8)
        with Client(d.socket) as c:
            done = finish(c, c.train(user="frank"), 120)
        assert done["status"] == "failed" and "training.memory_mb=256" in done["error"]
        assert c is not None
    finally:
        stop_thread_daemon(d)
        shutil.rmtree(home, ignore_errors=True)


def test_a_daemon_that_died_mid_run_marks_the_run_failed_on_restart(tmp_path: Path) -> None:
    from rlhi_local.store import Store

    db = tmp_path / "rlhi.db"
    store = Store(db)
    run = store.add_train_run("gina")
    store.update_train_run(run.id, status="running")
    from rlhi_local.config import load_config
    from rlhi_local.training import Trainings

    Trainings(store, load_config(), None)  # type: ignore[arg-type]
    after = store.get_train_run(run.id)
    assert after.status == "failed" and "stopped during this run" in after.error
    store.close()


def test_job_messages_carry_the_persona_card_as_at_inference(trainer_daemon: RunningDaemon) -> None:
    from rlhi_local.training import build_job

    s = state(trainer_daemon)
    user = "hana"
    persona = s.store.add_persona(user, "User persona: prefers very concise answers.", "[]", "user")
    seed_pairs(trainer_daemon, user, 4)
    with s.store._atomic() as db:
        db.execute("UPDATE pairs SET persona_version = ? WHERE user_id = ?", [persona.version, user])
    job = build_job(s.store, s.config, s.spec, user, 1, tmp := Path(tempfile.mkdtemp()))
    shutil.rmtree(tmp)
    example = (job.train + job.heldout)[0]
    assert example.messages[0] == {"role": "system", "content": persona.card}
    assert all(item.messages[0]["content"] == persona.card for item in job.regression)
    assert json.loads(json.dumps(example.messages))[-1]["role"] == "user"
