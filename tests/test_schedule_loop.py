"""The whole loop, unattended: two users chat through the API, and the schedule alone mines their
edits into pairs, trains, gates and promotes one adapter per user; each user's next answers come
from their own adapter and move toward their own preference, not the other's. Then a daemon
killed with -9 mid-training recovers on restart and the schedule trains again by itself.

Real parts throughout: the embedded model, the daemon and its APScheduler jobs in SQLite, the
trainer child. Settings keep each run to about a minute (rank 8, short sequences).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlhi_local.client import Client
from tests._base import shared_base_dir, shared_cache_root
from tests.egress import egress_env, read_egress, recorded_processes
from tests.conftest import RunningDaemon, process_alive, start_thread_daemon, stop_thread_daemon, wait_for

TRAINING = {"rank": 8, "alpha": 16.0, "epochs": 3, "batch_size": 2, "max_len": 192, "lr": 3e-4,
            "min_pairs": 6, "threads": 2, "min_accuracy": 0.5, "max_kl": 1.0, "max_ppl_ratio": 3.0}
SCHEDULE = {"enabled": True, "detector_minutes": 0.03, "persona_minutes": 0.05, "reward_minutes": 0.1,
            "sampling_minutes": 0.1, "training_minutes": 0.05, "training_window": "", "train_idle_minutes": 0,
            "train_min_new_pairs": 6, "skip_on_battery": False, "sampling_k": 2, "sampling_turns": 2,
            "sampling_max_tokens": 48, "sampling_margin": 0.5}
REWARD = {"min_heldout": 2, "min_accuracy": 0.5}
"""Twelve pairs leave two held out: enough here for the reward model to be trusted, so sampling
and the gate's reward check take part in the loop."""
TOPICS = ["tea", "bicycles", "volcanoes", "libraries", "rain", "bridges", "clocks", "honey", "maps", "kites",
          "glass", "salt"]
HELD_OUT = ["Tell me about lighthouses.", "Tell me about pianos.", "Tell me about deserts.",
            "Tell me about trains.", "Tell me about owls.", "Tell me about candles."]
TERSE, DETAILED = "terse-tom", "detailed-dana"


def words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def terse_edit(answer: str) -> str:
    first = re.split(r"(?<=[.!?])\s", answer.strip(), maxsplit=1)[0]
    return " ".join(first.split()[:12]).rstrip(",;:") + ("" if first.endswith(".") else ".")


def detailed_edit(answer: str, topic: str) -> str:
    """The whole answer, with a concrete example up front (the way this user likes to start)."""
    return (f"For example, picture a friend asking you about {topic}: you would show one concrete case "
            f"first, then explain. {answer.strip()}")


@pytest.fixture(scope="module")
def loop_daemon() -> Iterator[RunningDaemon]:
    shared_base_dir()
    home = Path(tempfile.mkdtemp(prefix="rhl", dir="/tmp"))
    running = start_thread_daemon(home, {
        "training": {**TRAINING, "cache_dir": str(shared_cache_root())}, "schedule": SCHEDULE, "reward": REWARD,
        "learning": {"rewrite_idle_s": 1.0, "mining_delay_s": 0.2}})
    yield running
    stop_thread_daemon(running)
    shutil.rmtree(home, ignore_errors=True)


def chat_and_edit(c: Client, user: str, preference: str, edit: Any, max_tokens: int = 64) -> None:
    """The user states a preference once, then edits each answer into what they wanted."""
    c.chat([{"role": "user", "content": preference}], user=user, max_tokens=16)
    for topic in TOPICS:
        question = f"Tell me about {topic}."
        answer = c.chat([{"role": "user", "content": question}], user=user, max_tokens=max_tokens, temperature=0)
        c.edit_message(answer.message_id, edit(answer.text, topic), user=user)


def answers(c: Client, user: str, adapter: str | None = None) -> list[str]:
    extra = {"metadata": {"adapter": adapter}} if adapter else {}
    return [c.chat([{"role": "user", "content": q}], user=user, max_tokens=160, temperature=0, **extra).text
            for q in HELD_OUT]


def preference_shift(d: RunningDaemon, store: Any) -> dict[tuple[str, str], float]:
    """{(adapter's user, pairs' user): mean over 6 of that user's pairs of the change, from the base
    to the adapter, in log p(chosen) - log p(rejected)}, computed with llama.cpp on the served
    GGUF and the exported adapters, the prompt rendered as the daemon renders it."""
    import numpy as np
    from llama_cpp import Llama

    state = d.daemon._state  # type: ignore[attr-defined]
    from rlhi_local.training import _messages

    sequences: dict[str, list[tuple[list[int], list[int], list[int]]]] = {}
    for user in (TERSE, DETAILED):
        sequences[user] = []
        for pair in store.pairs(user, status="ready")[:6]:
            prompt = state.engine.render(_messages(store, state.config, user, pair.prompt, pair.persona_version))
            sequences[user].append((prompt, *(state.engine._llm.tokenize(t.encode(), add_bos=False, special=False)
                                              + [state.engine._llm.token_eos()] for t in (pair.chosen, pair.rejected))))

    def margins(lora: str | None) -> dict[str, list[float]]:
        llm = Llama(str(state.spec.path), n_ctx=1024, n_threads=2, logits_all=True, verbose=False, lora_path=lora)
        out: dict[str, list[float]] = {}
        for user, seqs in sequences.items():
            out[user] = []
            for prompt, chosen, rejected in seqs:
                lp = []
                for answer in (chosen, rejected):
                    llm.reset()
                    llm.eval(prompt + answer)
                    logits = np.asarray(llm.scores[len(prompt) - 1:len(prompt) + len(answer) - 1], dtype=np.float64)
                    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
                    lp.append(float(logp[np.arange(len(answer)), answer].sum()))
                out[user].append(lp[0] - lp[1])
        llm.close()
        return out

    base = margins(None)
    shift = {}
    for owner in (TERSE, DETAILED):
        adapter = store.active_adapter(owner)
        tuned = margins(str(Path(adapter.path) / "adapter.gguf"))
        for user in (TERSE, DETAILED):
            shift[(owner, user)] = round(float(np.mean(np.subtract(tuned[user], base[user]))), 2)
    return shift


@pytest.mark.timeout(1200)
def test_two_users_each_learn_their_own_preference_unattended(loop_daemon: RunningDaemon) -> None:
    with Client(loop_daemon.socket) as c:
        chat_and_edit(c, TERSE, "I prefer short answers.", lambda a, t: terse_edit(a))
        # The detailed user's answers run to the held-out answers' length (160 tokens): an edit of
        # an answer cut at 64 tokens also taught the adapter to stop early, and made the detailed
        # adapter's answers shorter than the base's (114 vs 132 words once; another time the
        # gate's reward check rightly refused it).
        chat_and_edit(c, DETAILED, "I prefer detailed answers with examples.", detailed_edit, max_tokens=160)
        # Nothing more is asked of the daemon: the schedule mines, trains, gates and promotes.
        assert wait_for(lambda: all(c.adapters(user=u)["active"] for u in (TERSE, DETAILED)), 900, 2.0), \
            [(j["name"], j["last"]) for j in c.schedule()["jobs"]] + [c.train_runs(user=u) for u in (TERSE, DETAILED)]

        # The next answer comes from the user's new adapter.
        for user in (TERSE, DETAILED):
            version = c.adapters(user=user)["active"]
            reply = c.chat([{"role": "user", "content": "Say hello."}], user=user, max_tokens=8)
            assert reply.raw["rlhi"]["adapter_version"] == version

        base = answers(c, TERSE, "base")
        terse, detailed = answers(c, TERSE), answers(c, DETAILED)
        mean = {name: sum(map(words, a)) / len(a) for name, a in
                (("base", base), ("terse", terse), ("detailed", detailed))}
        # Preference in log-probability: how much each adapter raises log p(chosen) - log p(rejected)
        # over the base on each user's pairs (what DPO moves; greedy text shows only the top token).
        store = loop_daemon.daemon._state.store  # type: ignore[attr-defined]
        shift = preference_shift(loop_daemon, store)
        report = f"mean words {mean}; preference shift (nats) {shift}"
        print(report)
        # Each moves toward its own preference...
        assert mean["terse"] < 0.8 * mean["base"], report
        assert shift[(TERSE, TERSE)] > 1.0 and shift[(DETAILED, DETAILED)] > 1.0, report
        # ...and not toward the other's.
        assert mean["detailed"] >= 0.9 * mean["base"], report
        assert shift[(TERSE, DETAILED)] < 0.5 * shift[(DETAILED, DETAILED)], report
        assert shift[(DETAILED, TERSE)] < 0.5 * shift[(TERSE, TERSE)], report

        # No leakage: personas, pairs and adapters stay with their user.
        tom, dana = c.persona(user=TERSE)["card"].lower(), c.persona(user=DETAILED)["card"].lower()
        assert "concise" in tom and "detailed" not in tom and "example" not in tom, tom
        assert "detailed" in dana and "concise" not in dana, dana
        for user in (TERSE, DETAILED):
            own = {p.id for p in store.pairs(user)}
            for adapter in store.adapters(user):
                assert set(json.loads(adapter.pair_ids)) <= own
                assert f"/adapters/{user}/" in adapter.path

        # The reward half ran unattended too: trusted reward models, User-Based Rewards sampled for
        # the turns nobody judged, and the gate's reward check on each promoted adapter.
        checks = {}
        for user in (TERSE, DETAILED):
            row = store.active_reward_model(user)
            assert row is not None and row.trusted, row
            # The first promotion: later runs (on sampled pairs) may overlap this test's own
            # chats, and a check that finds the user chatting skips rather than wait.
            first = next(a for a in store.adapters(user) if a.status in ("active", "retired"))
            checks[user] = json.loads(first.metrics).get("reward", {})
        print(f"gate reward checks {checks}")
        # It judged, on whole answers to prompts the adapter never trained on, with the product's
        # bound (training.max_reward_drop = 0.5 held-out margins), and let both adapters through.
        assert all(c.get("prompts", 0) >= 2 and (c["drop"] <= 0.5 or c["win_rate"] >= 0.5)
                   for c in checks.values()), checks
        assert wait_for(lambda: any(p.origin == "user_reward" for u in (TERSE, DETAILED) for p in store.pairs(u)),
                        180, 1.0), store.job_runs("sampling", 5)
        sampled = [r for r in store.job_runs("sampling", 200) if r.status == "ok" and "turns" in r.detail]
        assert sampled, store.job_runs("sampling", 5)
        jobs = {j["name"]: j for j in c.schedule()["jobs"]}
        assert jobs["detector"]["last"]["status"] == "ok"
        assert jobs["training"]["last"] is not None


# -- kill -9 during a scheduled training, then restart ------------------------------------------------

def _serve(home: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RLHI_HOME": str(home), "RLHI_TRAINING__CACHE_DIR": str(shared_cache_root())}
    for section, values in (("training", TRAINING), ("schedule", SCHEDULE)):
        for key, value in values.items():
            env[f"RLHI_{section.upper()}__{key.upper()}"] = str(value)
    env["RLHI_SCHEDULE__TRAIN_MIN_NEW_PAIRS"] = "4"
    env.update(egress_env(home / "egress.jsonl"))  # every outbound connection attempt, daemon and trainer
    log = open(home / "daemon.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "rlhi_local", "serve"], env=env, stdout=log, stderr=log)


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.timeout(900)
def test_a_daemon_killed_mid_training_recovers_and_trains_again(tmp_path: Path) -> None:
    from tests.test_training import LONG, SHORT
    from rlhi_local.records import NewMessage
    from rlhi_local.store import Store

    shared_base_dir()
    home = Path(tempfile.mkdtemp(prefix="rhk", dir="/tmp"))
    db = home / "data" / "rlhi.db"
    proc = _serve(home)
    try:
        sock = home / "run" / "rlhi.sock"
        assert wait_for(sock.exists, 60, 0.2), (home / "daemon.log").read_text()
        with Client(sock) as c:  # a chat, an edit, mining: the start of the workflow, through the API
            answer = c.chat([{"role": "user", "content": "Tell me about tea."}], user="kim", max_tokens=16)
            c.edit_message(answer.message_id, "Tea is a drink.", user="kim")
            c._request("POST", "/v1/signals/mine", params={"user": "kim"})
        store = Store(db)
        for i in range(8):  # more pairs arrive as if mined: the schedule takes it from here
            placed = store.place_turns("kim", [NewMessage(role="user", content=f"Explain idea {i}.")])
            store.finish_answer(placed.answer_id, LONG, "complete", "stop")
            store.add_pair(user_id="kim", conversation_id=placed.conversation_id,
                           prompt=[{"role": "user", "content": f"Explain idea {i}."}], persona_version=None,
                           chosen=SHORT, rejected=LONG, chosen_message_id=None, rejected_message_id=placed.answer_id,
                           feedback_id=None, origin="user_edit", instruction="", status="ready")
        store.close()
        # The schedule starts a run by itself; kill the daemon once the trainer child is training.
        assert wait_for(lambda: _rows(db, "SELECT 1 FROM train_runs WHERE status = 'running' "
                                          "AND progress LIKE '%progress%'"), 300, 0.2), (home / "daemon.log").read_text()
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "no trainer child"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The trainer dies with the daemon (no orphan writing into the staging directory).
        assert wait_for(lambda: not any(process_alive(int(p)) for p in children), 10, 0.1)
        assert _rows(db, "SELECT status FROM train_runs") == [("running",)]
        assert _rows(db, "PRAGMA integrity_check") == [("ok",)]

        proc = _serve(home)
        assert wait_for(lambda: _rows(db, "SELECT status FROM adapters WHERE user_id = 'kim'") == [("active",)],
                        400, 0.5), (_rows(db, "SELECT status, error FROM train_runs"), (home / "daemon.log").read_text()[-3000:])
        runs = _rows(db, "SELECT status, error FROM train_runs ORDER BY created_at")
        assert runs[0][0] == "failed" and "stopped during this run" in runs[0][1]
        assert runs[-1][0] == "done"
        assert not list((home / "data" / "adapters" / "kim").glob(".staging-*"))
        with Client(sock) as c:
            reply = c.chat([{"role": "user", "content": "Hi."}], user="kim", max_tokens=4)
            assert reply.raw["rlhi"]["adapter_version"] == 1
        # No egress: chat, mining, training, export, gate and promotion made no outbound connection
        # attempt, in the daemon or in its trainer children (the recorder ran in both).
        egress = home / "egress.jsonl"
        assert read_egress(egress) == [], read_egress(egress)
        assert any("-m trainers" in p for p in recorded_processes(egress)), recorded_processes(egress)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(home, ignore_errors=True)
