"""Training in the daemon: a job from the store, the trainer child, the gate, the registry.

Data flows one way: the user's ready pairs (store) become a job file with the persona card of
each pair in its system turn, exactly as at inference (`persona.with_persona`); the trainer runs
in a child process (`python -m trainers`) at low priority with bounded threads and a memory
budget; its candidate is moved into the registry only once complete, then promoted or rejected
by the gate. The served adapter changes only by one transaction in the store, so a crash or a
kill at any point leaves the active adapter as it was.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import Config, TrainingConfig, cache_dir, data_dir
from .errors import BusyError, InvalidRequestError, NotFoundError
from .models import OFFLINE_ENV, ModelSpec
from .persona import with_persona
from .records import Adapter, Pair, TrainRun
from .store import FORGOTTEN, Store
from .store._ids import utc_now

__all__ = ["Trainings", "activate", "adapter_file", "build_job", "gate", "rollback", "served_adapter", "split_pairs"]

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 20.0
"""After SIGTERM the trainer stops at its next step; past this it is killed."""


Judge = Callable[[str, Path, Sequence[Any]], "dict[str, Any] | None"]
"""(user, candidate adapter.gguf, held-out examples) → the reward model's comparison of the
candidate's answers with the served adapter's: {"prompts", "candidate_mean", "served_mean", "scale", "drop",
"served", "win_rate"}, or {"skipped": why} (no trusted reward model, the user was chatting)."""


def adapter_file(adapter: Adapter) -> Path:
    return Path(adapter.path) / "adapter.gguf"


def split_pairs(pairs: Sequence[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out). Held-out pairs are chosen by a hash of their id, so the choice is
    stable and does not depend on the order pairs arrived in; at least 2 when fraction > 0."""
    if fraction <= 0 or len(pairs) < 4:
        return list(pairs), []
    n_held = min(len(pairs) - 2, max(2, round(len(pairs) * fraction)))
    ranked = sorted(pairs, key=lambda p: hashlib.sha256(p.id.encode()).hexdigest())
    held = {p.id for p in ranked[:n_held]}
    return [p for p in pairs if p.id not in held], [p for p in pairs if p.id in held]


def _messages(store: Store, config: Config, user_id: str, prompt: Sequence[dict[str, str]],
              persona_version: int | None) -> list[dict[str, str]]:
    """What the model saw (or would see) for `prompt`: the same function as the chat route."""
    card = store.persona_card(user_id, persona_version) if config.learning.persona_in_prompt else ""
    system_prompt = "" if prompt and prompt[0]["role"] == "system" else config.generation.system_prompt
    return with_persona(prompt, card, system_prompt)


def ready_pairs(store: Store, config: Config, user_id: str) -> list[Pair]:
    """The user's pairs to train on; InvalidRequestError naming the setting if too few."""
    pairs = store.pairs(user_id, status="ready")
    if len(pairs) < config.training.min_pairs:
        raise InvalidRequestError(
            f"User {user_id!r} has {len(pairs)} ready preference pairs; training needs at least "
            f"training.min_pairs={config.training.min_pairs}. Keep chatting (corrections, edits, thumbs) "
            f"or lower the setting.")
    return pairs


def build_job(store: Store, config: Config, spec: ModelSpec, user_id: str, version: int, out_dir: Path,
              base_cache: Path | None = None) -> Any:
    """The `trainers.TrainJob` for the user's ready pairs; InvalidRequestError if too few."""
    from trainers.job import Example, HParams, RegressionItem, TrainJob, regression_prompts

    t = config.training
    pairs = ready_pairs(store, config, user_id)
    train, heldout = split_pairs(pairs, t.heldout_fraction)

    def example(p: Pair) -> Any:
        return Example(p.id, _messages(store, config, user_id, p.prompt, p.persona_version), p.chosen, p.rejected)

    persona = store.active_persona(user_id)
    regression = [RegressionItem(_messages(store, config, user_id, [{"role": "user", "content": q}],
                                           persona.version if persona else None), a)
                  for q, a in regression_prompts()]
    active = store.active_adapter(user_id)
    active_peft = Path(active.path) / "peft" if active is not None else None
    hparams = HParams(rank=t.rank, alpha=t.alpha, targets=tuple(s.strip() for s in t.targets.split(",") if s.strip()),
                      beta=t.beta, nll_weight=t.nll_weight, lr=t.lr, epochs=t.epochs, batch_size=t.batch_size,
                      max_len=t.max_len)
    return TrainJob(
        base_gguf=str(spec.path), base_fingerprint=spec.fingerprint,
        cache_dir=str(base_cache or cache_dir(config) / "base"),
        out_dir=str(out_dir), version=str(version), train=[example(p) for p in train],
        heldout=[example(p) for p in heldout], regression=regression, hparams=hparams,
        active_adapter=str(active_peft) if active_peft is not None and active_peft.is_dir() else None,
        backend=t.backend, threads=t.threads,
    )


def gate(metrics: dict[str, Any], t: TrainingConfig) -> str:
    """Why the candidate must not be served ('' when it may be). It must move the held-out
    preferences the user's way (vs the base, and at least as well as the adapter it replaces),
    stay near the base on neutral prompts, and have exported faithfully."""
    correlation = float(metrics.get("export_correlation", 0.0))
    if correlation < t.min_export_correlation:
        return f"export check failed: llama.cpp logit change correlates {correlation:.3f} with torch's " \
               f"(training.min_export_correlation={t.min_export_correlation})"
    drift = metrics.get("drift", {})
    if drift.get("kl", 0.0) > t.max_kl:
        return f"drifted from the base: KL {drift['kl']:.3f} nats/token on neutral prompts > training.max_kl={t.max_kl}"
    if drift.get("ppl_ratio", 1.0) > t.max_ppl_ratio:
        return (f"degraded neutral answers: perplexity x{drift['ppl_ratio']:.2f} vs base > "
                f"training.max_ppl_ratio={t.max_ppl_ratio}")
    cand = metrics.get("candidate", {})
    if cand.get("pairs", 0):
        acc, margin = cand["rewards/accuracies"], cand["rewards/margins"]
        if acc < t.min_accuracy or margin <= 0:
            return (f"not better than the base on {cand['pairs']} held-out pairs: accuracy {acc:.2f} "
                    f"(needs {t.min_accuracy}), margin {margin:.3f}")
        active = metrics.get("active")
        if active and active.get("pairs", 0):
            if acc < active["rewards/accuracies"] or margin <= active["rewards/margins"]:
                return (f"not better than the active adapter on held-out pairs: accuracy {acc:.2f} vs "
                        f"{active['rewards/accuracies']:.2f}, margin {margin:.3f} vs {active['rewards/margins']:.3f}")
    reward = metrics.get("reward") or {}
    # Systematic, not one outlier: most answers lose, and on average by more than the bound.
    if reward.get("prompts") and "drop" in reward:
        if reward["drop"] > t.max_reward_drop and reward["win_rate"] < 0.5:
            return (f"the user's reward model prefers the served {reward['served']}'s answers: the candidate "
                    f"wins {reward['win_rate']:.0%} of {reward['prompts']} prompts it never trained on and "
                    f"scores {reward['drop']:.2f} held-out margins lower (training.max_reward_drop="
                    f"{t.max_reward_drop})")
    return ""


def served_adapter(store: Store, spec: ModelSpec, user_id: str, requested: str | None) -> Adapter | None:
    """The adapter that answers this request: the user's active one, or the one asked for
    ("base" for none, "3" or "v3" for a version). An adapter of another base is refused."""
    if requested is not None and requested.strip().lower() == "base":
        return None
    if requested is None or not requested.strip():
        adapter = store.active_adapter(user_id)
    else:
        try:
            version = int(requested.strip().lower().removeprefix("v"))
        except ValueError:
            raise InvalidRequestError(f"adapter {requested[:40]!r} is not 'base' or a version like 'v3'.") from None
        adapter = store.get_adapter(user_id, version)
        if adapter.reason.startswith(FORGOTTEN):
            raise NotFoundError(f"Adapter v{version} is gone: {adapter.reason.removeprefix(FORGOTTEN)}, so it "
                                f"was retired and its files deleted. Ask for 'base' or another version.")
    if adapter is not None and adapter.base_fingerprint != spec.fingerprint:
        raise InvalidRequestError(
            f"Adapter v{adapter.version} was trained for base {adapter.base_fingerprint[:16]}, but this daemon "
            f"serves {spec.id} ({spec.fingerprint[:16]}). Activate an adapter of this base, or train again.")
    return adapter


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
        return int(out.stdout.strip() or 0) / 1024
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0.0


def _child_setup(nice: int, parent: int) -> None:
    """In the trainer child before exec: low priority (`training.nice`: the chat keeps the cores
    it needs), and on Linux die with the daemon, so a daemon killed with -9 leaves no orphan
    trainer writing into a staging directory that the restarted daemon will reuse."""
    if hasattr(os, "nice") and nice:
        os.nice(nice)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
        if os.getppid() != parent:  # the daemon died before the signal was armed
            os._exit(1)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a power cut after it keeps the new name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_digest(path: Path) -> dict[str, Any]:
    """{"sha256", "bytes"} of a finished adapter file, recorded with its row so anyone can
    verify that the file served is the one the gate passed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def _remove_staging(root: Path) -> int:
    """At start-up: staging directories of runs a stopped daemon left behind (never adapters:
    the registry names only renamed, complete ones). Returns how many were removed."""
    leftovers = sorted(root.glob("*/.staging-v*")) if root.is_dir() else []
    for staging in leftovers:
        shutil.rmtree(staging, ignore_errors=True)
    return len(leftovers)


class Trainings:
    """Owns the (at most one) training child process of the daemon."""

    def __init__(self, store: Store, config: Config, spec: ModelSpec,
                 wait_quiet: Callable[[], bool] = lambda: True, paused: Callable[[], str] = lambda: "") -> None:
        self.judge: Judge | None = None
        """Set by the daemon once it serves: the reward model's verdict for the gate."""
        self.prewarm: Callable[[str, Path], None] | None = None
        """Set by the daemon: warms the user's conversation under an adapter about to be promoted
        (called from the training thread; returns when done, or after its own time limit)."""
        self.store, self.config, self.spec = store, config, spec
        # Paths are fixed when the daemon starts (RLHI_HOME may change later in this process).
        self.root = data_dir() / "adapters"
        self.base_cache = cache_dir(config) / "base"
        self._wait_quiet = wait_quiet
        """Returns True once the user is idle enough to start a run that was not `now`."""
        self._paused = paused
        """Why learning is paused ("" when not): no run starts then (`Miner.paused`)."""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._cancelled: set[str] = set()
        self.current: str | None = None
        self.peak_rss_mb = 0.0
        n = store.fail_unfinished_runs("the daemon stopped during this run")
        if n:
            log.warning("%d training run(s) were interrupted by a stop; the active adapters are unchanged", n)
        removed = _remove_staging(self.root)
        if removed:
            log.info("removed %d staging director(ies) of interrupted runs", removed)

    def start(self, user_id: str, now: bool = True) -> TrainRun:
        """Queue a run for `user_id` (it starts at once when `now`, else when the user is idle)."""
        with self._lock:
            paused = self._paused()
            if paused:
                raise InvalidRequestError(f"No training while {paused}. Resume learning first "
                                          f"(`rlhi resume`, POST /v1/learning/resume or F5 in the chat).")
            if self.current is not None:
                raise BusyError(f"Training run {self.current} is in progress; one run at a time. "
                                f"Cancel it (DELETE /v1/train/{self.current}) or wait for it.")
            ready_pairs(self.store, self.config, user_id)  # refuse now rather than fail in the thread
            run = self.store.add_train_run(user_id)
            self.current = run.id
            self._thread = threading.Thread(target=self._work, args=(run.id, user_id, now), daemon=True,
                                            name=f"train-{run.id}")
            self._thread.start()
        return run

    def cancel(self, run_id: str) -> TrainRun:
        run = self.store.get_train_run(run_id)
        if run.status in ("queued", "running"):
            self._cancelled.add(run_id)
            proc = self._proc
            if proc is not None and self.current == run_id and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return self.store.get_train_run(run_id)

    def wait(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        if self.current is not None:
            self.cancel(self.current)
        self.wait(CANCEL_GRACE_S + 5)

    # -- the worker thread ---------------------------------------------------------------------

    def _work(self, run_id: str, user_id: str, now: bool) -> None:
        try:
            self._run(run_id, user_id, now)
        except Exception as exc:  # boundary: a failed run is recorded, never raised into serving
            log.exception("training run %s failed", run_id)
            self.store.update_train_run(run_id, status="failed", error=f"{type(exc).__name__}: {exc}",
                                        finished_at=utc_now())
        finally:
            self._proc = None
            self.current = None

    def _run(self, run_id: str, user_id: str, now: bool) -> None:
        from trainers.job import write_job

        while not now and not self._wait_quiet() and run_id not in self._cancelled and not self._paused():
            time.sleep(1.0)
        paused = self._paused()
        if run_id in self._cancelled or paused:
            self.store.update_train_run(run_id, status="cancelled", finished_at=utc_now(),
                                        error=f"cancelled: {paused}" if paused else "cancelled by the user")
            return
        version = self.store.next_adapter_version(user_id)
        root = self.root / user_id
        staging, final = root / f".staging-v{version}", root / f"v{version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, mode=0o700)
        job = build_job(self.store, self.config, self.spec, user_id, version, staging, self.base_cache)
        job_path = staging / "job.json"
        write_job(job, job_path)
        pair_ids = [e.pair_id for e in job.train]
        self.store.update_train_run(run_id, status="running", pairs=len(job.train), adapter_version=version,
                                    started_at=utc_now())
        outcome, metrics, error = self._child(run_id, job_path, staging / "train.log")
        if outcome != "done":
            shutil.rmtree(staging, ignore_errors=True)
            self.store.update_train_run(run_id, status=outcome, error=error, finished_at=utc_now())
            log.info("training run %s %s: %s", run_id, outcome, error)
            return
        metrics["peak_rss_mb"] = round(self.peak_rss_mb, 1)  # the schedule sizes the next run by it
        self.store.update_train_run(run_id, progress={"event": "phase", "phase": "install"})
        metrics["adapter_file"] = _file_digest(staging / "adapter.gguf")
        _fsync_tree(staging)
        if final.exists():
            # Left by a daemon killed between this rename and the registry's commit below: no row
            # names it (the version comes from the rows), so it is debris, and the rename needs room.
            log.warning("removing %s: an adapter directory no registry row names (an earlier crash)", final)
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(root)
        if self.judge is not None:
            self.store.update_train_run(run_id, progress={"event": "phase", "phase": "reward"})
            try:
                verdict = self.judge(user_id, final / "adapter.gguf", job.heldout)
            except Exception:  # boundary: the reward check is one signal; its failure is logged
                log.exception("training run %s: the reward check failed; the gate goes without it", run_id)
                verdict = {"skipped": "the reward check failed (see the log)"}
            if verdict:
                metrics["reward"] = verdict
        reason = gate(metrics, self.config.training)
        if not reason and self.prewarm is not None:
            # Before the promotion: the first answer under the new adapter then starts from the
            # user's conversation read under it, instead of re-reading it (a pause of seconds).
            self.store.update_train_run(run_id, progress={"event": "phase", "phase": "warm"})
            try:
                self.prewarm(user_id, final / "adapter.gguf")
            except Exception:  # boundary: without it the first answer is only slower
                log.exception("training run %s: warming the conversation failed", run_id)
        self.store.record_trained_adapter(run_id, user_id, version, self.spec.fingerprint, str(final), pair_ids,
                                          metrics, reason)
        log.info("training run %s: adapter v%d %s", run_id, version, f"rejected: {reason}" if reason else "promoted")

    def _child(self, run_id: str, job_path: Path, log_path: Path) -> tuple[str, dict[str, Any], str]:
        """Run the trainer; returns (done | failed | cancelled, metrics, error)."""
        t = self.config.training
        # PASSIVE: idle OpenMP threads sleep instead of spinning; spinning threads of the trainer
        # and of llama.cpp fighting for the same cores made both 10-20x slower (measured).
        env = {**os.environ, **OFFLINE_ENV, "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE",
               "MALLOC_ARENA_MAX": "2"}
        if t.threads:
            env["OMP_NUM_THREADS"] = str(t.threads)
        project_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
        from trainers.backend import child_env

        env.update(child_env(t.backend, cache_dir(self.config)))  # mlx on Linux: OpenBLAS, ~15x faster
        with open(log_path, "w", encoding="utf-8") as log_file:
            # Low priority: the chat keeps the cores it needs while training runs.
            proc = self._proc = subprocess.Popen(
                [sys.executable, "-m", "trainers", str(job_path)], stdout=subprocess.PIPE, stderr=log_file,
                text=True, env=env, preexec_fn=functools.partial(_child_setup, t.nice, os.getpid()))
            if run_id in self._cancelled:
                proc.send_signal(signal.SIGTERM)
            watcher = threading.Thread(target=self._watch_memory, args=(proc, run_id), daemon=True)
            watcher.start()
            result: dict[str, Any] = {}
            last_write = 0.0
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind = event.get("event")
                if kind in ("done", "error", "cancelled"):
                    result = event
                if kind == "started":
                    self.store.update_train_run(run_id, backend=event.get("backend", ""))
                if kind in ("progress", "phase", "started") and (kind != "progress" or time.monotonic() - last_write > 0.5
                                                                 or event.get("step") == event.get("total")):
                    self.store.update_train_run(run_id, progress=event)
                    last_write = time.monotonic()
            proc.stdout.close()
            code = proc.wait()
            watcher.join(2)
        if getattr(proc, "over_budget", False):
            return "failed", {}, (f"stopped: the trainer used {self.peak_rss_mb:.0f} MB, over "
                                  f"training.memory_mb={t.memory_mb}. Raise it or lower training.max_len.")
        if run_id in self._cancelled or result.get("event") == "cancelled":
            paused = self._paused()
            return "cancelled", {}, f"cancelled: {paused}" if paused else "cancelled by the user"
        if code == 0 and result.get("event") == "done":
            return "done", result.get("metrics", {}), ""
        message = result.get("message") or f"the trainer exited with code {code}"
        return "failed", {}, f"{message} (log: {log_path})"

    def _watch_memory(self, proc: subprocess.Popen[str], run_id: str) -> None:
        budget = self.config.training.memory_mb
        self.peak_rss_mb = 0.0
        deadline: float | None = None
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            if rss > budget and not getattr(proc, "over_budget", False):
                proc.over_budget = True  # type: ignore[attr-defined]
                proc.kill()
            if run_id in self._cancelled:
                deadline = deadline or time.monotonic() + CANCEL_GRACE_S
                if time.monotonic() > deadline:
                    proc.kill()
            time.sleep(0.25)


def activate(store: Store, spec: ModelSpec, user_id: str, version: int) -> Adapter:
    """Serve `version` from the next request on (refusing an adapter of another base)."""
    adapter = store.get_adapter(user_id, version)
    served_adapter(store, spec, user_id, str(version))
    if not adapter_file(adapter).is_file():
        raise NotFoundError(f"Adapter v{version}'s file {adapter_file(adapter)} is missing; train again.")
    active = store.activate_adapter(user_id, version, reason=f"replaced by v{version}")
    assert active is not None
    return active


def rollback(store: Store, user_id: str) -> Adapter | None:
    """Retire the active adapter and serve the one that was active before it (or the base)."""
    current = store.active_adapter(user_id)
    if current is None:
        raise InvalidRequestError(f"User {user_id!r} is served by the base model already: nothing to roll back.")
    earlier = [a for a in store.adapters(user_id)
               if a.version < current.version and a.activated_at and a.status == "retired"
               and not a.reason.startswith(FORGOTTEN)]  # learned from forgotten data: never again
    previous = max(earlier, key=lambda a: a.activated_at or "", default=None)
    return store.activate_adapter(user_id, previous.version if previous else None,
                                  reason=f"rolled back from v{current.version}")
