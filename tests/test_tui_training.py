"""The training screen (F4) driven by Pilot against the real daemon: the adapter history, a
rollback, a run's live progress and outcome, and the daemon's refusal to train on too few pairs.

Adapters and runs are written straight into the daemon's store (no model is trained here); each
test is its own `user`, so it sees only its own adapters and runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable, ProgressBar, Static

from rlhi_local.client import Client
from rlhi_local.store import Store
from tests.conftest import RunningDaemon
from tests.test_tui import FAST, SIZE, connected, notes, until
from tui.app import ChatApp
from tui.screens import ConfirmScreen, TrainingScreen

METRICS = {"candidate": {"rewards/accuracies": 0.75, "rewards/margins": 0.4, "pairs": 4},
           "drift": {"kl": 0.0123, "ppl_ratio": 1.01}}
REJECTED = "held-out accuracy 0.40 is below the gate's 0.55"


@contextmanager
def store(daemon: RunningDaemon) -> Iterator[Store]:
    s = Store(daemon.db_path)
    try:
        yield s
    finally:
        s.close()


def rows(screen: TrainingScreen) -> list[list[str]]:
    table = screen.query_one("#adapters", DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def text_of(screen: TrainingScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def open_training(pilot: Pilot[Any]) -> TrainingScreen:
    await pilot.press("f4")
    await until(pilot, lambda: isinstance(pilot.app.screen, TrainingScreen))
    screen = pilot.app.screen
    assert isinstance(screen, TrainingScreen)
    await until(pilot, lambda: text_of(screen, "#run-title") != "Loading…")
    return screen


def test_no_adapters_shows_base_and_refuses_too_few_pairs(daemon: RunningDaemon) -> None:
    async def main() -> None:
        app = ChatApp(daemon.socket, user="t-train-empty", **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            assert app.status.adapter == "base"
            screen = await open_training(pilot)
            assert rows(screen) == []
            assert "No training yet; base answers" in text_of(screen, "#run-title")
            # The test daemon runs no schedule: the screen says how learning happens then.
            await until(pilot, lambda: "Off (schedule.enabled = false)" in text_of(screen, "#schedule"))

            await pilot.press("t")
            await until(pilot, lambda: any("min_pairs" in m for m in notes(app)))
            refusal = next(n for n in app._notifications if "min_pairs" in n.message)
            assert refusal.severity == "error" and "0 ready preference pairs" in refusal.message

            await pilot.press("r")  # nothing to roll back: said, no question asked
            await until(pilot, lambda: any("nothing to roll back" in m for m in notes(app)))
            assert app.screen is screen
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, TrainingScreen))

    asyncio.run(main())


def test_adapter_history_and_rollback(daemon: RunningDaemon) -> None:
    user = "t-train-history"
    with Client(daemon.socket) as client:
        fingerprint = client.health()["model"]["fingerprint"]
    with store(daemon) as s:
        s.add_adapter(user, 1, fingerprint, "/nowhere/v1", ["p1", "p2"], METRICS, "candidate")
        s.activate_adapter(user, 1, reason="promoted")
        s.add_adapter(user, 2, fingerprint, "/nowhere/v2", ["p3"], {}, "rejected", reason=REJECTED)

    async def main() -> None:
        app = ChatApp(daemon.socket, user=user, **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            await until(pilot, lambda: app.status.adapter == "v1")
            screen = await open_training(pilot)
            await until(pilot, lambda: len(rows(screen)) == 2)
            assert rows(screen) == [["● v1", "active", "75% of 4", "0.012", "2", ""],
                                    ["  v2", "rejected", "–", "–", "1", REJECTED]]

            # "n" keeps v1; "y" rolls back to the base model.
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("n")
            await until(pilot, lambda: app.screen is screen)
            with Client(daemon.socket) as client:
                assert client.adapters(user=user)["active"] == 1
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: rows(screen)[0][:2] == ["  v1", "retired"])
            with Client(daemon.socket) as client:
                listing = client.adapters(user=user)
            assert listing["active"] is None
            assert listing["data"][0]["reason"] == "rolled back from v1"
            assert rows(screen)[0][5] == "rolled back from v1"
            assert app.status.adapter == "base"
            assert any("base answers now" in m for m in notes(app))

    asyncio.run(main())


def test_a_running_run_is_followed_until_it_ends(daemon: RunningDaemon) -> None:
    user = "t-train-live"
    with store(daemon) as s:
        run = s.add_train_run(user)
        s.update_train_run(run.id, status="running", backend="torch", pairs=10, progress={
            "event": "progress", "step": 3, "total": 10, "loss": 0.6931, "rewards/accuracies": 0.5,
            "eta_s": 75})

    async def main() -> None:
        app = ChatApp(daemon.socket, user=user, **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            screen = await open_training(pilot)
            bar = screen.query_one("#run-progress", ProgressBar)
            await until(pilot, lambda: (bar.progress, bar.total) == (3, 10), timeout=4)
            assert text_of(screen, "#run-detail") == \
                "step 3/10 · loss 0.693 · reward accuracy 50% · about 1 min 15 s left"
            assert text_of(screen, "#run-title").startswith("running · torch · 10 pairs")
            assert text_of(screen, "#run-outcome") == ""

            with store(daemon) as s:  # the daemon reports a later step, then a phase
                s.update_train_run(run.id, progress={"event": "progress", "step": 7, "total": 10,
                                                     "loss": 0.41, "rewards/accuracies": 0.8, "eta_s": 20})
            await until(pilot, lambda: bar.progress == 7, timeout=4)
            assert "about 20 s left" in text_of(screen, "#run-detail")
            with store(daemon) as s:
                s.update_train_run(run.id, progress={"event": "phase", "phase": "evaluating"})
            await until(pilot, lambda: text_of(screen, "#run-detail") == "evaluating…", timeout=4)

            with store(daemon) as s:  # ...and it ends
                s.update_train_run(run.id, status="done", adapter_version=3, progress={
                    "event": "finished", "promoted": True, "reason": "passed the gate"})
            await until(pilot, lambda: text_of(screen, "#run-outcome").startswith("v3 promoted"), timeout=4)
            assert bar.progress == bar.total == 10
            await until(pilot, lambda: not any(w.is_running for w in screen.workers
                                               if w.group == "training-poll"), timeout=4)

    asyncio.run(main())


def test_a_run_that_ends_rejected_or_failed_says_why(daemon: RunningDaemon) -> None:
    user = "t-train-ends"
    with store(daemon) as s:
        rejected = s.add_train_run(user)
        s.update_train_run(rejected.id, status="done", adapter_version=4, progress={
            "event": "finished", "promoted": False, "reason": REJECTED})

    async def main() -> None:
        app = ChatApp(daemon.socket, user=user, **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            screen = await open_training(pilot)
            assert text_of(screen, "#run-outcome") == f"v4 rejected: {REJECTED}"
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, TrainingScreen))

            with store(daemon) as s:
                failed = s.add_train_run(user)
                s.update_train_run(failed.id, status="failed", error="CUDA out of memory")
            screen = await open_training(pilot)
            assert text_of(screen, "#run-outcome") == "failed: CUDA out of memory"

    asyncio.run(main())
