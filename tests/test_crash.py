"""Crash safety: kill -9 the daemon and the trainer at seeded random points, 20+ times in one run.

Two subprocess daemons (`rlhi serve`), each in its own RLHI_HOME and reused across its kills, run
side by side so the cheap kills overlap the expensive ones:
- the *traffic* daemon is killed mid-stream (answers streaming, one more queued), mid-write (bursts of
  concurrent small chats, thumbs, edits and persona PUTs) and both at once;
- the *training* daemon trains one user's adapter again and again, and its trainer child or the
  daemon itself is killed when the run reaches a phase (training, export, install: the step that
  moves the candidate into the registry and promotes it), after a random delay inside it, with a
  stream or a write burst in flight on the daemon for two of them.

After every kill (and restart) the database passes `PRAGMA integrity_check` (opened read-only);
every message, feedback and persona version the client saw acknowledged is there with its text;
an answer cut mid-stream is `incomplete` (never lost, never `streaming`); no `.staging-*` directory
survives a restart or is named by an adapter row; an `active` adapter's file exists, matches the
sha256 and size recorded with it and answers a chat; the daemon answers /health and a chat. At the
end the training daemon trains and promotes an adapter (the system still learns). The crash
points tried and survived go to benchmarks/results/crash_report.json.

RLHI_CRASH_SEED picks other random points (the report names the seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rlhi_local.client import Client
from rlhi_local.errors import DaemonError
from tests._base import shared_base_dir, shared_cache_root
from tests.conftest import process_alive, wait_for

SEED = int(os.environ.get("RLHI_CRASH_SEED", "20261129"))
REPORT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "crash_report.json"
START_BOUND_S = 90.0
"""A restarted daemon must answer /health within this (it takes 1-3 s; the bound is for a busy machine)."""
TRAFFIC_LIVES = 17
TRAINING = {"rank": 2, "alpha": 4.0, "targets": "q_proj,v_proj", "epochs": 1, "batch_size": 2, "max_len": 32,
            "min_pairs": 2, "heldout_fraction": 0.0, "threads": 1, "lr": 5e-3, "max_kl": 100.0,
            "max_ppl_ratio": 100.0, "min_accuracy": 0.0, "min_export_correlation": 0.9, "nice": 0}
"""The smallest real run: two pairs, one step, rank 2 on two projections, 32 tokens, one thread
(two OpenMP threads crawl on a contended 2-core machine), normal priority (at nice 10 other work
on a shared machine starves it). The gate still checks the export."""
LEARNING = {"mining_delay_s": 0.2, "rewrite_idle_s": 3600.0}
"""Mining runs after each write (part of what is killed); idle-time rewrites would only burn CPU."""
MODEL = {"n_threads": 1}
"""Two llama.cpp threads spin-wait on a contended 2-core machine: a 4-token chat cost 0.7-3 s of
CPU with two, 0.25 s with one (measured while other test suites ran)."""


# -- a daemon that dies and comes back ---------------------------------------------------------------

@dataclass
class Ledger:
    """What clients saw acknowledged, so must survive any kill; and what was cut mid-answer."""

    messages: dict[str, str] = field(default_factory=dict)
    """message id → its full text (questions, answers, edits)."""
    cut: set[str] = field(default_factory=set)
    feedback: set[str] = field(default_factory=set)
    personas: set[tuple[str, int]] = field(default_factory=set)
    answers: dict[str, list[str]] = field(default_factory=dict)
    """user → acknowledged answers (to edit)."""
    fresh: dict[str, list[str]] = field(default_factory=dict)
    """user → acknowledged answers no thumbs has touched yet (a new thumbs replaces the old one)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack_chat(self, user: str, raw: dict[str, Any], question: str, answer: str) -> None:
        ids = raw["rlhi"]
        with self.lock:
            for mid in ids["new_message_ids"]:
                self.messages[mid] = question
            self.messages[ids["message_id"]] = answer
            self.answers.setdefault(user, []).append(ids["message_id"])
            self.fresh.setdefault(user, []).append(ids["message_id"])


@dataclass
class Daemon:
    name: str
    home: Path
    env: dict[str, str]
    ledger: Ledger = field(default_factory=Ledger)
    proc: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)

    @property
    def sock(self) -> Path:
        return self.home / "run" / "rlhi.sock"

    @property
    def db(self) -> Path:
        return self.home / "data" / "rlhi.db"

    def log_tail(self, n: int = 3000) -> str:
        path = self.home / "daemon.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def spawn(self) -> None:
        with open(self.home / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "rlhi_local", "serve"], env=self.env,
                                         stdout=log, stderr=log)

    def start(self) -> None:
        """Start and wait for /health: the restart after a kill must be clean (stale socket, lock)."""
        began = time.monotonic()
        self.spawn()
        # One client for all the polls: making one costs ~30 ms of CPU (httpx builds an SSL context).
        with Client(self.sock, timeout=10) as c:
            assert wait_for(lambda: self._healthy(c), START_BOUND_S, 0.05), \
                f"{self.name}: no /health\n{self.log_tail()}"
        self.starts.append(round(time.monotonic() - began, 2))

    def _healthy(self, c: Client) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}"
        try:
            return c.health()["status"] == "ok"
        except DaemonError:
            return False

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def children(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


def make_daemon(name: str, sections: dict[str, dict[str, Any]]) -> Daemon:
    home = Path(tempfile.mkdtemp(prefix=f"rhx{name[:2]}", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHI_")}
    env["RLHI_HOME"] = str(home)
    for section, values in {"schedule": {"enabled": False}, **sections}.items():
        for key, value in values.items():
            env[f"RLHI_{section.upper()}__{key.upper()}"] = str(value)
    return Daemon(name, home, env)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the checks after every kill -----------------------------------------------------------------------

def verify(d: Daemon, user: str) -> dict[str, Any]:
    """Everything the issue asks of a restarted daemon; returns counts for the report."""
    assert d.rows("PRAGMA integrity_check") == [("ok",)], d.name
    # Before any new request: the crash's open answers were recovered at start.
    assert d.rows("SELECT id FROM messages WHERE status = 'streaming'") == [], d.log_tail()
    led = d.ledger
    with led.lock:
        messages, cut = dict(led.messages), set(led.cut)
        feedback, personas = set(led.feedback), set(led.personas)
    stored = {mid: (content, status) for mid, content, status in d.rows("SELECT id, content, status FROM messages")}
    lost = [mid for mid, text in messages.items() if stored.get(mid) != (text, "complete")]
    assert not lost, [(mid, messages[mid][:40], stored.get(mid)) for mid in lost[:5]]
    assert all(stored.get(mid, ("", ""))[1] in ("incomplete", "complete") for mid in cut), \
        [(mid, stored.get(mid)) for mid in cut]
    have = {r[0] for r in d.rows("SELECT id FROM feedback")}
    assert feedback <= have, feedback - have
    have_p = set(d.rows("SELECT user_id, version FROM personas"))
    assert personas <= have_p, personas - have_p
    adapters = check_adapters(d)
    with Client(d.sock) as c:  # serves a chat (with the user's active adapter, if any)
        question = f"Say hi ({len(messages)})."
        reply = c.chat([{"role": "user", "content": question}], user=user, max_tokens=4)
        led.ack_chat(user, reply.raw, question, reply.text)
    return {"acked": len(messages) + len(feedback) + len(personas), "cut": len(cut),
            "cut_incomplete": sum(stored.get(mid, ("", ""))[1] == "incomplete" for mid in cut), "adapters": adapters}


def check_adapters(d: Daemon) -> list[tuple[str, int, str]]:
    """No half-written adapter is active, and no staging directory is an adapter."""
    root = d.home / "data" / "adapters"
    assert not list(root.glob("*/.staging-*")), "a staging directory survived the restart"
    rows = d.rows("SELECT user_id, version, path, status, metrics FROM adapters ORDER BY user_id, version")
    for user, version, path, status, metrics in rows:
        assert ".staging" not in path, path
        if status != "active":
            continue
        gguf = Path(path) / "adapter.gguf"
        recorded = json.loads(metrics)["adapter_file"]
        assert gguf.is_file() and gguf.stat().st_size == recorded["bytes"] and sha256(gguf) == recorded["sha256"], path
        with Client(d.sock) as c:  # the engine loads it: llama.cpp refuses a truncated file
            assert c.adapters(user=user)["active"] == version
            assert not [p for p in c.health().get("problems", []) if p.get("kind") == "adapter"]
            reply = c.chat([{"role": "user", "content": "Hello."}], user=user, max_tokens=2)
            assert reply.raw["rlhi"]["adapter_version"] == version
            d.ledger.ack_chat(user, reply.raw, "Hello.", reply.text)
    return [(u, v, s) for u, v, _, s, _ in rows]


# -- traffic: streams and bursts of small writes --------------------------------------------------------

def stream(d: Daemon, user: str, tag: str, chunks: list[str], max_tokens: int = 64) -> None:
    """One streamed answer; acknowledged only when the stream ended with its finish chunk."""
    question = f"Tell me a long story about {tag}."
    message_id, finished = None, False
    try:
        with Client(d.sock) as c:
            for chunk in c.stream_chat([{"role": "user", "content": question}], user=user,
                                       max_tokens=max_tokens, ignore_eos=True):
                message_id = message_id or chunk.message_id
                chunks.append(chunk.text)
                finished = finished or chunk.finish_reason is not None
    except DaemonError:
        finished = False
    with d.ledger.lock:
        if finished and message_id:
            d.ledger.messages[message_id] = "".join(chunks)
        elif message_id:
            d.ledger.cut.add(message_id)


def writes(d: Daemon, user: str, rng: random.Random, stop: threading.Event, errors: list[BaseException]) -> None:
    """Small requests until the daemon dies: each acknowledged one goes into the ledger."""
    led = d.ledger
    try:
        with Client(d.sock) as c:
            while not stop.is_set():
                op = rng.choice(("chat", "thumbs", "edit", "edit", "persona"))  # mostly store writes
                with led.lock:
                    answers, fresh = list(led.answers.get(user, [])), led.fresh.setdefault(user, [])
                    target = fresh.pop(rng.randrange(len(fresh))) if op == "thumbs" and fresh else None
                if op == "chat" or not answers:
                    question = f"Name a colour, {rng.randrange(10**6)}."
                    reply = c.chat([{"role": "user", "content": question}], user=user, max_tokens=3)
                    led.ack_chat(user, reply.raw, question, reply.text)
                elif op == "thumbs":
                    if target is not None:
                        out = c.feedback(target, rng.choice(("thumbs_up", "thumbs_down")), user=user)
                        with led.lock:
                            led.feedback.add(out["id"])
                elif op == "edit":
                    text = f"An edited answer, number {rng.randrange(10**6)}."
                    out = c.edit_message(rng.choice(answers), text, user=user)
                    with led.lock:
                        led.messages[out["id"]] = text
                else:
                    out = c.set_persona([{"text": f"I like colour number {rng.randrange(1000)}."}], user=user)
                    with led.lock:
                        led.personas.add((user, out["version"]))
    except DaemonError:
        pass  # the kill
    except BaseException as exc:  # anything else fails the test in the main thread
        errors.append(exc)


@dataclass
class Traffic:
    """Streams and write bursts on a daemon, in threads, until it is killed."""

    d: Daemon
    user: str
    rng: random.Random
    threads: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    first: list[str] = field(default_factory=list)

    def streams(self, n: int = 2) -> Traffic:
        for i in range(n):  # the second waits in the queue behind the first
            chunks = self.first if i == 0 else []
            self._spawn(stream, self.d, self.user, f"{self.rng.randrange(10**6)}", chunks)
        return self

    def burst(self, workers: int = 3) -> Traffic:
        for _ in range(workers):
            self._spawn(writes, self.d, self.user, random.Random(self.rng.random()), self.stop, self.errors)
        return self

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def wait_for_chunks(self, k: int) -> bool:
        return wait_for(lambda: len(self.first) > k or not self.threads[0].is_alive(), 60, 0.005)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive(), "a client thread hangs after the kill"
        if self.errors:
            raise self.errors[0]


def traffic_series(d: Daemon, rng: random.Random, report: list[dict[str, Any]]) -> None:
    """Kills of the traffic daemon mid-stream, mid-write or both; some restarts are killed too,
    while the daemon recovers from the kill before (TRAFFIC_LIVES kills in all)."""
    kinds = ["stream"] * 5 + ["write"] * 5 + ["stream+write"] * 4
    rng.shuffle(kinds)
    killed_starts = set(rng.sample(range(len(kinds)), TRAFFIC_LIVES - len(kinds)))
    d.start()
    verify(d, "ana")
    for life, kind in enumerate(kinds):
        t = Traffic(d, "ana", rng)
        entries: list[dict[str, Any]] = [{"daemon": d.name, "life": life, "target": "daemon", "point": {
            "stream": "mid-stream", "write": "mid-write"}.get(kind, "mid-stream+write")}]
        if "write" in kind:
            t.burst()
        if "stream" in kind:
            t.streams()
            t.wait_for_chunks(rng.randrange(0, 12))
            entries[0]["after_chunks"] = len(t.first)
        else:
            delay = rng.uniform(0.2, 1.5)
            time.sleep(delay)
            entries[0]["delay_s"] = round(delay, 3)
        d.kill()
        t.join()
        if life in killed_starts:
            delay = rng.uniform(0.1, 2.0)
            d.spawn()
            time.sleep(delay)
            d.kill()
            entries.append({"daemon": d.name, "life": life, "target": "daemon", "point": "mid-start",
                            "delay_s": round(delay, 3)})
        report.extend(entries)
        d.start()
        result = verify(d, "ana")
        for entry in entries:
            entry.update(result, restart_s=d.starts[-1], survived=True)
    d.stop()


# -- training: kills aimed at the run's phases ------------------------------------------------------------

def seed_pairs(d: Daemon, user: str, n: int) -> None:
    """n ready user_edit pairs with real stored turns, written before the daemon first starts."""
    from rlhi_local.records import NewMessage
    from rlhi_local.store import Store

    long = "Sure! Here is a long and detailed answer that goes on and on about it."
    store = Store(d.db)
    try:
        for i in range(n):
            prompt = [{"role": "user", "content": f"Explain idea {i}."}]
            placed = store.place_turns(user, [NewMessage(role="user", content=prompt[0]["content"])])
            store.finish_answer(placed.answer_id, long, "complete", "stop")
            store.add_pair(user_id=user, conversation_id=placed.conversation_id, prompt=prompt, persona_version=None,
                           chosen="Short.", rejected=long, chosen_message_id=None,
                           rejected_message_id=placed.answer_id, feedback_id=None, origin="user_edit",
                           instruction="", status="ready")
    finally:
        store.close()


def phase(progress: str | None) -> str:
    event = json.loads(progress) if progress else {}
    if event.get("event") == "phase":
        return str(event["phase"])
    return {"started": "train", "progress": "train", "finished": "finished"}.get(event.get("event", ""), "queued")


def run_state(d: Daemon, run_id: str) -> tuple[str, str]:
    status, progress = d.rows("SELECT status, progress FROM train_runs WHERE id = ?", (run_id,))[0]
    return status, phase(progress)


def train_until(d: Daemon, user: str, target: str) -> str:
    """Start a run and return its id once it reaches phase `target` (polling the store).
    Only `install` (milliseconds long) may be missed: the kill then lands just after the commit."""
    with Client(d.sock) as c:
        run_id = c.train(user=user)["id"]
    seen: list[tuple[str, str]] = []

    def reached(phases: tuple[str, ...]) -> Callable[[], bool]:
        def check() -> bool:
            seen.append(run_state(d, run_id))
            return seen[-1][1] in phases or seen[-1][0] not in ("queued", "running")
        return check

    if target != "install":
        assert wait_for(reached((target,)), 600, 0.02), (seen[-1], d.log_tail())
        assert seen[-1] == ("running", target), (seen[-1], d.log_tail())
        return run_id
    # `install` lasts milliseconds: polled finely only from the trainer's exit, which starts it
    # (the daemon reaps the child and begins within 0.25 s). A poll that misses it finds the run
    # done, and the kill lands just after the commit.
    assert wait_for(reached(("evaluate",)), 600, 0.02), (seen[-1], d.log_tail())
    assert seen[-1] == ("running", "evaluate"), (seen[-1], d.log_tail())
    child = d.children()
    assert wait_for(lambda: not any(process_alive(p) for p in child), 600, 0.002), d.log_tail()
    assert wait_for(reached(("install",)), 60, 0.002), (seen[-1], d.log_tail())
    assert seen[-1] in (("running", "install"), ("done", "finished")), (seen[-1], d.log_tail())
    return run_id


def training_kill(d: Daemon, rng: random.Random, target: str, who: str, delay_max: float,
                  traffic: str = "") -> dict[str, Any]:
    """One training run killed in phase `target`: the trainer child, or the daemon (with its child),
    optionally while a stream or a write burst runs on it. Returns the report entry."""
    run_id = train_until(d, "kim", target)
    t = Traffic(d, "lee", rng)
    if traffic == "write":
        t.burst()
    elif traffic == "stream":
        t.streams(1)
    delay = rng.uniform(0, delay_max)
    time.sleep(delay)
    if traffic == "stream":
        t.wait_for_chunks(rng.randrange(1, 6))
    children = d.children()
    assert len(children) == (target != "install"), children  # the trainer has exited by `install`
    at_kill = run_state(d, run_id)
    entry = {"daemon": d.name, "target": who, "point": f"mid-{target}", "delay_s": round(delay, 3),
             "phase_at_kill": at_kill[1], "status_at_kill": at_kill[0], "with": traffic or None}
    if who == "trainer":
        os.kill(children[0], signal.SIGKILL)
        assert wait_for(lambda: run_state(d, run_id)[0] not in ("queued", "running"), 60, 0.05), d.log_tail()
        status, error = d.rows("SELECT status, error FROM train_runs WHERE id = ?", (run_id,))[0]
        assert status == "failed" and "exited with code -9" in error, (status, error)
        t.join()
        entry.update(verify(d, "kim"), survived=True)
        return entry
    d.kill()
    t.join()
    # The trainer dies with the daemon: no orphan keeps writing into the staging directory.
    assert wait_for(lambda: not any(process_alive(p) for p in children), 15, 0.05), "the trainer outlived its daemon"
    assert d.rows("PRAGMA integrity_check") == [("ok",)]
    entry["left_on_disk"] = sorted(p.name for p in (d.home / "data" / "adapters" / "kim").glob("*"))
    d.start()
    status, error = d.rows("SELECT status, error FROM train_runs WHERE id = ?", (run_id,))[0]
    assert status == "done" or (status == "failed" and "stopped during this run" in error), (status, error)
    entry.update(verify(d, "kim"), run_status=status, restart_s=d.starts[-1], survived=True)
    return entry


def plant_orphan(d: Daemon, user: str) -> str:
    """The narrowest crash window: killed after the candidate's directory was renamed to vN and
    before the registry's commit. No row names vN, so the next run gets version N again. This
    used to fail every later run ("Directory not empty" on the rename); the state is built here
    because a seeded random kill hits that window only sometimes."""
    version = d.rows("SELECT coalesce(max(version), 0) + 1 FROM adapters WHERE user_id = ?", (user,))[0][0]
    orphan = d.home / "data" / "adapters" / user / f"v{version}"
    if orphan.exists():
        return f"v{version} (left by the install kill)"
    orphan.mkdir(parents=True)
    (orphan / "adapter.gguf").write_bytes(b"GGUF half-written")
    return f"v{version} (planted)"


def test_a_trained_adapter_its_promotion_and_its_run_are_one_commit(tmp_path: Path) -> None:
    """Regression: the row, the activation and the run's `done` were three commits, so a kill
    between them left a `candidate` for ever, or a run marked failed whose adapter was served."""
    from rlhi_local.errors import StoreError
    from rlhi_local.store import Store

    store = Store(tmp_path / "rlhi.db")
    runs = [store.add_train_run("kim").id for _ in range(3)]
    for run_id in runs:
        store.update_train_run(run_id, status="running")
    store.record_trained_adapter(runs[0], "kim", 1, "f" * 64, "/a/v1", ["p1"], {"seconds": 1.0}, "")
    # A commit that fails half-way (version 1 again: UNIQUE(user_id, version)) changes nothing.
    with pytest.raises(StoreError):
        store.record_trained_adapter(runs[1], "kim", 1, "f" * 64, "/a/v1", ["p2"], {}, "")
    assert store.active_adapter("kim").version == 1 and store.get_train_run(runs[1]).status == "running"
    store.record_trained_adapter(runs[1], "kim", 2, "f" * 64, "/a/v2", ["p2"], {}, "")
    store.record_trained_adapter(runs[2], "kim", 3, "f" * 64, "/a/v3", ["p3"], {}, "drifted from the base")
    assert [(a.version, a.status, a.reason) for a in store.adapters("kim")] == [
        (1, "retired", "replaced by v2"), (2, "active", ""), (3, "rejected", "drifted from the base")]
    done = [store.get_train_run(r) for r in runs]
    assert [(r.status, json.loads(r.progress)["promoted"]) for r in done] == [("done", True), ("done", True),
                                                                              ("done", False)]
    store.close()


@pytest.mark.slow
@pytest.mark.timeout(1500)  # ~150 s; the bound is for a machine busy with other suites
def test_kill_9_at_random_points_loses_nothing_acknowledged_and_never_serves_a_half_adapter() -> None:
    shared_base_dir()  # the converted base, shared with the other training tests
    rng = random.Random(SEED)
    traffic = make_daemon("traffic", {"learning": LEARNING, "model": MODEL})
    trainer = make_daemon("training", {"training": {**TRAINING, "cache_dir": str(shared_cache_root())},
                                       "learning": LEARNING, "model": MODEL})
    report: dict[str, Any] = {"seed": SEED, "kills": [], "final_run": None}
    kills: list[dict[str, Any]] = report["kills"]
    began = time.monotonic()
    traffic_errors: list[BaseException] = []
    traffic_rng = random.Random(rng.random())

    def run_traffic() -> None:
        try:
            traffic_series(traffic, traffic_rng, kills)
        except BaseException as exc:
            traffic_errors.append(exc)

    background = threading.Thread(target=run_traffic, name="traffic-series", daemon=True)
    passed = False
    try:
        seed_pairs(trainer, "kim", TRAINING["min_pairs"])
        trainer.start()
        verify(trainer, "kim")
        background.start()
        for target, who, delay_max, with_traffic in (
                ("train", "trainer", 1.0, ""),
                ("train", "daemon", 1.0, "stream"),
                ("export", "daemon", 2.0, "write"),
                ("install", "daemon", 0.02, "")):
            kills.append(training_kill(trainer, rng, target, who, delay_max, with_traffic))
        background.join(600)
        assert not background.is_alive(), "the traffic series hangs"
        if traffic_errors:
            raise traffic_errors[0]

        # After all the kills the system still learns: a run trains, installs and promotes.
        orphan = plant_orphan(trainer, "kim")
        with Client(trainer.sock) as c:
            run = c.train(user="kim")
            assert wait_for(lambda: c.train_run(run["id"])["status"] not in ("queued", "running"), 600, 0.2)
            done = c.train_run(run["id"])
            assert done["status"] == "done" and done["progress"]["promoted"], (done, trainer.log_tail())
            active = c.adapters(user="kim")["active"]
            assert active == done["adapter_version"]
        report["final_run"] = {"version": active, "orphan_before": orphan, "seconds": done["metrics"]["seconds"],
                               "adapter_file": done["metrics"]["adapter_file"]}
        verify(trainer, "kim")

        assert len(kills) >= 20 and all(k.get("survived") for k in kills), kills
        points = {k["point"] for k in kills}
        assert {"mid-stream", "mid-write", "mid-start", "mid-train", "mid-export", "mid-install"} <= points, points
        passed = True
    finally:
        report["seconds"] = round(time.monotonic() - began, 1)
        report["tried"] = len(kills)
        report["survived"] = sum(bool(k.get("survived")) for k in kills)
        report["restart_s"] = {"traffic": traffic.starts, "training": trainer.starts}
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(json.dumps({k: v for k, v in report.items() if k != "kills"}))
        for d in (traffic, trainer):
            d.stop()
        background.join(60)
        for d in (traffic, trainer):  # kept for a post-mortem when the test failed
            if passed:
                shutil.rmtree(d.home, ignore_errors=True)
            else:
                print(f"{d.name} daemon's home kept: {d.home}")
