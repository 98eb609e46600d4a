"""Training: the latest run as it goes (progress, loss, reward accuracy, ETA) and how it ended,
and the history of the user's adapters, the one that answers marked.

While a run is queued or running the screen polls it every POLL_S, and stops when the run ends or
the screen closes. `t` starts a run now, `r` rolls back to the adapter served before (asks first).
Whenever the served adapter may have changed, the screen posts `ServedChanged` for the status line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, ProgressBar, Static

from rlhi_local.client import AsyncClient

from ._calls import ask_daemon
from .confirm import ConfirmScreen

log = logging.getLogger(__name__)

POLL_S = 1.0
"""How often a queued or running run is asked for its progress."""
ACTIVE = ("queued", "running")
T = TypeVar("T")


def adapter_label(version: int | str | None) -> str:
    """`v3` for an adapter version, `base` for the base model (None)."""
    return f"v{version}" if version not in (None, "") else "base"


class TrainingScreen(ModalScreen[None]):
    """Training of `user`; `client` gives the app's current client (it changes on reconnects)."""

    BINDINGS = [
        Binding("t", "train", "Train now", tooltip="Train a new adapter on your preference pairs now"),
        Binding("r", "rollback", "Roll back", tooltip="Serve the adapter served before (asks first)"),
        Binding("escape", "close", "Close", tooltip="Close (a run goes on in the daemon)"),
    ]

    class ServedChanged(Message):
        """The adapter that answers is now `version` (None: the base model)."""

        def __init__(self, version: int | None) -> None:
            super().__init__()
            self.version = version

    def __init__(self, client: Callable[[], AsyncClient], user: str | None) -> None:
        super().__init__()
        self.client = client
        self.user = user
        self.latest: dict[str, Any] | None = None
        """The run on screen (the newest)."""
        self.served: int | None = None
        """The adapter version that answers (None: the base model)."""

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Training: a personal adapter learned from your preference pairs. It is "
                         "served only if it passes the gate.  (Esc closes)", id="question")
            with Vertical(id="run"):
                yield Static("Loading…", markup=False, id="run-title")
                yield ProgressBar(show_eta=False, id="run-progress")
                yield Static("", markup=False, id="run-detail")
                yield Static("", markup=False, id="run-outcome")
            yield DataTable(cursor_type="row", zebra_stripes=False, id="adapters")
            yield Static("", markup=False, id="schedule")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#run", Vertical).border_title = "Latest run"
        table = self.query_one("#adapters", DataTable)
        table.border_title = "Adapters"
        for label, key in (("Version", "version"), ("Status", "status"), ("Held-out acc", "accuracy"),
                           ("KL", "kl"), ("Trained on", "pairs"), ("Reason", "reason")):
            table.add_column(label, key=key)
        self.query_one("#schedule", Static).border_title = "Learning schedule"
        table.focus()
        self._load()

    # ---- showing ---------------------------------------------------------------------------

    @work(exclusive=True, group="training-load", exit_on_error=False)
    async def _load(self) -> None:
        await self._refresh_adapters()
        runs = await self._ask(self.client().train_runs(user=self.user))
        if runs is None:
            return
        latest = runs[0] if runs else None
        self._show_run(latest)
        if latest is not None and latest["status"] in ACTIVE:
            self._poll(latest["id"])

    async def _refresh_adapters(self) -> None:
        listing = await self._ask(self.client().adapters(user=self.user))
        if listing is not None:
            self._show_adapters(listing)
        schedule = await self._ask(self.client().schedule())
        if schedule is not None:
            self.query_one("#schedule", Static).update(describe_schedule(schedule))

    def _show_adapters(self, listing: dict[str, Any]) -> None:
        self.served = listing.get("active")
        table = self.query_one("#adapters", DataTable)
        table.clear()
        for adapter in listing.get("data", []):
            metrics = adapter.get("metrics") or {}
            candidate, drift = metrics.get("candidate") or {}, metrics.get("drift") or {}
            mark = "● " if adapter["version"] == self.served else "  "
            accuracy = _percent(candidate.get("rewards/accuracies"))
            if candidate.get("pairs"):
                accuracy += f" of {candidate['pairs']}"  # held-out pairs
            trained = len(adapter.get("pair_ids") or []) or metrics.get("pairs", 0)
            table.add_row(mark + adapter_label(adapter["version"]), adapter["status"], accuracy,
                          _number(drift.get("kl")), str(trained), adapter.get("reason") or "",
                          key=str(adapter["version"]))
        table.border_subtitle = f"{adapter_label(self.served)} answers  (● marks it)"
        self.post_message(self.ServedChanged(self.served))

    def _show_run(self, run: dict[str, Any] | None) -> None:
        if run is None or self.latest is None or run["id"] != self.latest["id"]:
            self.query_one("#run-progress", ProgressBar).update(total=None, progress=0)
        self.latest = run
        title, bar = self.query_one("#run-title", Static), self.query_one("#run-progress", ProgressBar)
        detail, outcome = self.query_one("#run-detail", Static), self.query_one("#run-outcome", Static)
        if run is None:
            title.update(f"No training yet; {adapter_label(self.served)} answers. Press t to train "
                         f"on your preference pairs.")
            detail.update("")
            outcome.update("")
            return
        event = run.get("progress") or {}
        started = str(run.get("started_at") or run.get("created_at") or "")[:19].replace("T", " ")
        title.update(f"{run['status']} · {run.get('backend') or 'backend ?'} · {run.get('pairs', 0)} pairs"
                     f" · started {started}")
        if event.get("event") == "progress" and event.get("total"):
            bar.update(total=event["total"], progress=event.get("step", 0))
        elif run["status"] == "done":
            bar.update(total=bar.total or 1, progress=bar.total or 1)
        detail.update(describe_progress(run))
        outcome.update(describe_outcome(run))

    # ---- polling ---------------------------------------------------------------------------

    @work(exclusive=True, group="training-poll", exit_on_error=False)
    async def _poll(self, run_id: str) -> None:
        """Follow the run until it ends (the worker is cancelled when the screen closes)."""
        while True:
            await asyncio.sleep(POLL_S)
            run = await self._ask(self.client().train_run(run_id))
            if run is None:
                return
            self._show_run(run)
            if run["status"] not in ACTIVE:
                await self._refresh_adapters()
                return

    def on_unmount(self) -> None:
        self.workers.cancel_node(self)

    # ---- actions ---------------------------------------------------------------------------

    def action_train(self) -> None:
        self._train()

    @work(group="training-action", exit_on_error=False)
    async def _train(self) -> None:
        run = await self._ask(self.client().train(user=self.user, now=True))
        if run is not None:
            self.notify("Training started; it goes on if you close this screen.")
            self._show_run(run)
            self._poll(run["id"])

    def action_rollback(self) -> None:
        if self.served is None:
            self.notify("The base model answers already: nothing to roll back.", severity="warning")
            return
        self._rollback(self.served)

    @work(group="training-action", exit_on_error=False)
    async def _rollback(self, version: int) -> None:
        question = (f"Stop serving {adapter_label(version)}? The adapter served before it (or the base "
                    f"model) answers from the next message; {adapter_label(version)} stays in the history.")
        if not await self.app.push_screen_wait(ConfirmScreen(question, confirm_label="Roll back")):
            return
        listing = await self._ask(self.client().rollback_adapter(user=self.user))
        if listing is not None:
            self._show_adapters(listing)
            self.notify(f"Rolled back: {adapter_label(self.served)} answers now.")

    def action_close(self) -> None:
        self.dismiss(None)

    async def _ask(self, call: Awaitable[T]) -> T | None:
        return await ask_daemon(self, call, "The training call failed")


def describe_schedule(schedule: dict[str, Any]) -> str:
    """One line per learning job: when it runs next, and what it did last (or why it skipped)."""
    reason = str(schedule.get("paused_reason") or "learning is paused")
    paused = [f"{reason[:1].upper()}{reason[1:]}. F5 in the chat pauses and resumes it."] if schedule.get("paused") else []
    if not schedule.get("enabled"):
        return "\n".join([*paused, "Off (schedule.enabled = false): learning runs only when you press t."])
    lines = paused
    for job in schedule.get("jobs", []):
        if not job.get("interval_s"):
            lines.append(f"{job['name']:<9} off")
            continue
        last = job.get("last")
        said = f"{last['status']}: {last['detail']}" if last else "not run yet"
        if job.get("running"):
            said = "running now"
        nxt = str(job.get("next_run") or "")[11:16] or "-"
        lines.append(f"{job['name']:<9} next {nxt} UTC · {said}")
    return "\n".join(lines)


def describe_progress(run: dict[str, Any]) -> str:
    """The latest event of a run in words: step, loss, reward accuracy and ETA, or its phase."""
    event = run.get("progress") or {}
    if event.get("event") == "progress":
        parts = [f"step {event.get('step', 0)}/{event.get('total', '?')}"]
        if event.get("loss") is not None:
            parts.append(f"loss {_number(event['loss'])}")
        if event.get("rewards/accuracies") is not None:
            parts.append(f"reward accuracy {_percent(event['rewards/accuracies'])}")
        if event.get("eta_s") is not None:
            parts.append(f"about {_duration(event['eta_s'])} left")
        return " · ".join(parts)
    if event.get("event") == "phase":
        return f"{event.get('phase', '…')}…"
    return "waiting to start…" if run["status"] == "queued" else ""


def describe_outcome(run: dict[str, Any]) -> str:
    """How a run ended: "v3 promoted", "v3 rejected: <reason>", "failed: <error>"; else ""."""
    status, event = run["status"], run.get("progress") or {}
    name = adapter_label(run["adapter_version"]) if run.get("adapter_version") else "the new adapter"
    if status == "failed":
        return f"failed: {run.get('error') or 'no reason given'}"
    if status == "cancelled":
        return "cancelled; the served adapter is unchanged"
    if status == "done" and event.get("event") == "finished":
        if event.get("promoted"):
            return f"{name} promoted: it answers from now on"
        return f"{name} rejected: {event.get('reason') or 'no reason given'}"
    return "done" if status == "done" else ""


def _percent(value: Any) -> str:
    return f"{float(value):.0%}" if isinstance(value, (int, float)) else "–"


def _number(value: Any) -> str:
    return f"{float(value):.3f}" if isinstance(value, (int, float)) else "–"


def _duration(seconds: Any) -> str:
    s = int(round(float(seconds)))
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"
