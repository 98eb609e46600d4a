"""What does learning cost: our DPO step against TRL's, one full training cycle, and the swap.

Run: `.venv/bin/python benchmarks/training.py` on a quiet machine (needs `pip install -e
'.[train,bench]'`; --skip-trl, --skip-cycle and --skip-swap run parts alone).

In one run, on the same synthetic pairs (a persona system line, a ~30-word chosen answer, a
~120-word rejected one):
1. step time: `trainers.torch_dpo.DPOTrainer` against TRL's `DPOTrainer` with its defaults, same
   batch (4 pairs), lr, beta, max_length and LoRA; N optimiser steps timed after 1 warm-up step;
2. one training cycle as the daemon runs it: a `TrainJob` (80/20 train/held-out split, regression
   set, default hparams) in `python -m trainers JOB` with the daemon's environment (nice 10, OpenMP
   threads that sleep when idle); wall time, peak RSS, time per phase;
3. the serving pause when the daemon promotes that adapter: a client streams answers (one ongoing
   conversation, so the KV cache holds its prefix) when the daemon promotes the adapter as a
   training run does: the conversation is warmed under it between streams, then it is activated.
   The pause is the worst first-token latency of any stream from the warm-up's start on, over the
   median before; also how long the warm-up took, and failures.
Writes JSON to benchmarks/results/training-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainers.job import Example, HParams, RegressionItem, TrainJob, regression_prompts, write_job  # noqa: E402

BATCH, LR, BETA, MAX_LEN = 4, 1e-4, 0.1, 512
PERSONAS = ["a night-shift nurse in Lyon", "a retired engineer who restores clocks", "a student of law",
            "a parent of two toddlers", "a backend developer on call", "a beekeeper in Vermont"]
TASKS = ["plan a week of meals", "learn to touch-type", "prepare for a job interview", "fix a slow laptop",
         "start running", "save for a holiday", "read more books", "keep houseplants alive"]
SHORT = ["Start small and be consistent.", "Pick one step for today.", "Write it down tonight.",
         "Check progress every Sunday.", "Drop what does not help.", "Ask a friend to join you."]
LONG = ["Great question, and it is one that many people ask at some point in their lives.",
        "There are a great many factors to consider here, and each of them deserves careful thought.",
        "Experts often disagree, so you may want to consult several sources and compare their views.",
        "In addition, your personal circumstances will play a large role in what works best for you.",
        "Finally, remember that there is no single right answer, and flexibility is always valuable."]


def words(rng: random.Random, pool: list[str], n: int) -> str:
    """Sentences from `pool` until the text has at least `n` words."""
    out: list[str] = []
    while sum(len(s.split()) for s in out) < n:
        out.append(rng.choice(pool))
    return " ".join(out)


def make_pairs(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    return [Example(
        f"bench{i}",
        [{"role": "system", "content": f"User persona: {rng.choice(PERSONAS)}; prefers short, direct answers."},
         {"role": "user", "content": f"How should I {TASKS[i % len(TASKS)]}? (question {i})"}],
        words(rng, SHORT, 30), words(rng, LONG, 120)) for i in range(n)]


# -- 1. step time ---------------------------------------------------------------------------------

def bench_ours(base_dir: Path, pairs: list[Example], steps: int) -> dict[str, Any]:
    from trainers.torch_dpo import Cancelled, DPOTrainer

    epochs = math.ceil((steps + 1) / math.ceil(len(pairs) / BATCH))
    t0 = time.perf_counter()
    trainer = DPOTrainer(base_dir, HParams(lr=LR, beta=BETA, batch_size=BATCH, max_len=MAX_LEN, epochs=epochs))
    events: list[tuple[float, float]] = []  # (perf_counter on arrival, elapsed_s)
    try:
        trainer.train(pairs, lambda kind, **f: events.append((time.perf_counter(), f["elapsed_s"])),
                      lambda: len(events) > steps)
    except Cancelled:
        pass
    del trainer
    gc.collect()
    return {"s_per_step": (events[-1][1] - events[0][1]) / steps, "setup_and_warmup_s": events[0][0] - t0,
            "settings": "hand-written loop: reference log-probs once before training, pairs one at a time "
                        "with gradient accumulation, LM head on answer tokens only, NLL weight 1.0, float32"}


def bench_trl(base_dir: Path, pairs: list[Example], steps: int) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer, __version__ as trl_version

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter())

    hp = HParams()
    rows = [{"prompt": e.messages, "chosen": [{"role": "assistant", "content": e.chosen}],
             "rejected": [{"role": "assistant", "content": e.rejected}]} for e in pairs]
    overrides = dict(per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, learning_rate=LR, beta=BETA,
                     max_length=MAX_LEN, max_steps=steps + 1, bf16=False, use_cpu=True, seed=hp.seed,
                     report_to=[], logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True)
    lora = LoraConfig(r=hp.rank, lora_alpha=hp.alpha, lora_dropout=0.0, target_modules=list(hp.targets),
                      bias="none", task_type="CAUSAL_LM")
    timer, out = StepTimes(), tempfile.mkdtemp(prefix="rlhi-bench-trl-")
    try:
        config = DPOConfig(output_dir=out, model_init_kwargs={"dtype": "float32"}, **overrides)
        t0 = time.perf_counter()
        trainer = DPOTrainer(model=str(base_dir), ref_model=None, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=AutoTokenizer.from_pretrained(str(base_dir)), peft_config=lora,
                             callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics even with logging off
        trainer.train()
        del trainer
        gc.collect()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    t = timer.times
    return {"s_per_step": (t[-1] - t[0]) / steps, "setup_and_warmup_s": t[0] - t0, "trl_version": trl_version,
            "settings": {**overrides, "ref_model": None, "precompute_ref_log_probs": config.precompute_ref_log_probs,
                         "gradient_checkpointing": config.gradient_checkpointing, "loss_type": config.loss_type,
                         "lora": {"r": hp.rank, "alpha": hp.alpha, "targets": list(hp.targets), "dropout": 0.0}}}


# -- 2. one training cycle ------------------------------------------------------------------------

CYCLE_PHASES = {"base": "load_base", "started": "train", "export": "export_and_roundtrip", "evaluate": "evaluate",
                "done": "done"}
"""Event (or `phase` event) name -> the phase it starts; before the first: python_and_imports."""


def run_cycle(pairs: list[Example], threads: int, work: Path, hparams: HParams = HParams()) -> dict[str, Any]:
    """`python -m trainers JOB` as the daemon runs it: wall time, peak RSS, events by phase."""
    from tests._base import base_gguf, shared_base_dir, shared_cache_dir

    base_dir = shared_base_dir()  # converted once and cached, as the daemon's training cache is
    fingerprint = json.loads((base_dir / "rlhi-base.json").read_text())["fingerprint"]
    n_held = min(len(pairs) - 2, max(2, round(len(pairs) * 0.2)))  # as rlhi_local.training.split_pairs
    system = pairs[0].messages[0]
    job = TrainJob(str(base_gguf()), fingerprint, str(shared_cache_dir()), str(work / "out"), "1",
                   pairs[:-n_held], pairs[-n_held:],
                   [RegressionItem([system, {"role": "user", "content": q}], a) for q, a in regression_prompts()],
                   hparams, threads=threads)
    write_job(job, work / "job.json")
    phase = ["python_and_imports"]
    starts = {phase[0]: 0.0}
    # The child's VmHWM (its peak RSS so far) polled every 0.1 s, by phase. Not ru_maxrss: Linux
    # keeps the high-water mark of the forked copy of this process, which part 1 made ~4 GB.
    hwm_kb: dict[str, int] = {}
    # The environment and priority `rlhi_local.training.Trainings._child` gives the trainer.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE",
           "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(work / "trainer.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trainers", str(work / "job.json")], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=lambda: os.nice(10))

        def poll() -> None:
            while proc.returncode is None:
                try:
                    kb = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmHWM:")[1].split()[0])
                except (OSError, IndexError):
                    return
                hwm_kb[phase[0]] = kb
                time.sleep(0.1)

        threading.Thread(target=poll, daemon=True).start()
        events = []
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("{"):
                events.append({**json.loads(line), "t": time.perf_counter() - t0})
                if name := CYCLE_PHASES.get(events[-1].get("phase") or events[-1]["event"]):
                    phase[0], starts[name] = name, events[-1]["t"]
        proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not events or events[-1]["event"] != "done":
        raise SystemExit(f"training failed (exit {proc.returncode}): {events[-1:]}\n"
                         + (work / "trainer.log").read_text()[-3000:])
    names = list(starts)
    steps = [e for e in events if e["event"] == "progress"]
    return {"wall_s": wall, "peak_rss_mb": max(hwm_kb.values()) / 1024,
            "peak_rss_mb_at_end_of_phase": {k: v / 1024 for k, v in hwm_kb.items()},
            "train_pairs": len(job.train), "heldout_pairs": len(job.heldout), "threads": threads,
            "steps": len(steps), "s_per_step": steps[-1]["elapsed_s"] / len(steps) if steps else None,
            "phases_s": {n: starts[m] - starts[n] for n, m in zip(names, names[1:])}, "metrics": events[-1]["metrics"]}


# -- 3. serving pause during promotion ------------------------------------------------------------

def bench_swap(adapter_dir: Path, streams: int, tokens: int) -> dict[str, Any]:
    from rlhi_local.client import Client
    from tests.conftest import start_thread_daemon, stop_thread_daemon

    rng = random.Random(1)
    history = [{"role": role, "content": f"Turn {i}: " + words(rng, SHORT if role == "user" else LONG, 40)}
               for i, role in enumerate(["user", "assistant"] * 2)]
    home = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: Unix socket paths are limited
    running = start_thread_daemon(home)
    state = running.daemon._state
    state.store.add_adapter("local", 1, state.spec.fingerprint, str(adapter_dir), [], {}, "candidate")
    records: list[dict[str, Any]] = []
    window: dict[str, float] = {}  # when the promotion began (warm-up) and ended (activated)
    stop = threading.Event()

    def stream(client: Any, i: int, prefix: list[dict[str, str]] = history) -> dict[str, Any]:
        rec: dict[str, Any] = {"start": time.perf_counter(), "ttft": None, "max_gap": 0.0, "chunks": 0, "error": None}
        last = rec["start"]
        try:
            for chunk in client.stream_chat(prefix + [{"role": "user", "content": f"And what about step {i}?"}],
                                            max_tokens=tokens, ignore_eos=True, temperature=0, off_record=True):
                if chunk.text:
                    now = time.perf_counter()
                    if rec["chunks"]:
                        rec["max_gap"] = max(rec["max_gap"], now - last)
                    else:
                        rec["ttft"] = now - rec["start"]
                    last, rec["chunks"] = now, rec["chunks"] + 1
            rec["error"] = None if rec["chunks"] else "no tokens"
        except Exception as exc:  # a failed request is what we count
            rec["error"] = repr(exc)
        rec["end"] = time.perf_counter()
        return rec

    def streamer() -> None:
        with Client(running.socket) as client:
            while not stop.is_set():
                records.append(stream(client, len(records)))

    thread = threading.Thread(target=streamer, daemon=True)
    try:
        with Client(running.socket) as client:
            stream(client, -1, [])  # warm-up: first allocations, page-ins
            cold = stream(client, -1)  # the conversation's prefix not yet in the KV cache, base model
        thread.start()
        while len(records) < streams:
            time.sleep(0.01)
        time.sleep(statistics.median(r["end"] - r["start"] for r in records) / 2)  # mid-way through a stream
        # Promoted as a training run does it (from its thread): the user's conversation is warmed
        # under the adapter between streams (rlhi_local/api/warming.py), then it is activated.
        wanted = (adapter_dir / "adapter.gguf").resolve()
        window["begin"] = time.perf_counter()
        state.trainings.prewarm("local", wanted)
        state.store.activate_adapter("local", 1, reason="replaced by v1")
        window["end"] = time.perf_counter()
        deadline = time.perf_counter() + 120
        while state.engine.adapter != wanted and time.perf_counter() < deadline:
            time.sleep(0.005)  # the next stream installs it
        window["switched"] = time.perf_counter()
        while sum(r["start"] > window["switched"] for r in records) < streams:
            time.sleep(0.01)
        stop.set()
        thread.join(120)
        served = state.engine.adapter
    finally:
        stop.set()
        stop_thread_daemon(running)
        shutil.rmtree(home, ignore_errors=True)
    before = [r for r in records if r["end"] < window["begin"]]
    after = [r for r in records if r["start"] > window["switched"]]
    during = [r for r in records if r not in before and r not in after]
    median_before = statistics.median(r["ttft"] for r in before if not r["error"])
    first_after = after[0]["ttft"]
    since = [r["ttft"] for r in records if r["end"] > window["begin"] and r["ttft"] is not None]
    return {
        "streams_before": len(before), "streams_during": len(during), "streams_after": len(after),
        "switch_s": window["switched"] - window["begin"],
        "tokens_per_stream": tokens, "failed": sum(bool(r["error"]) for r in records),
        "errors": [r["error"] for r in records if r["error"]][:5], "warm_then_activate_s": window["end"] - window["begin"],
        "ttft_median_before_s": median_before, "ttft_first_after_s": first_after, "ttft_cold_prefix_s": cold["ttft"],
        "ttft_median_after_s": statistics.median(r["ttft"] for r in after if not r["error"]),
        # The worst first-token delay of any stream from the activation on, over the usual one.
        "pause_s": max(since) - median_before,
        "first_after_switch_minus_median_before_s": first_after - median_before if first_after is not None else None,
        "max_gap_before_s": max(r["max_gap"] for r in before),
        "max_gap_during_s": max((r["max_gap"] for r in during), default=0.0),
        "max_gap_after_s": max(r["max_gap"] for r in after),
        "ttft_s": {"before": [r["ttft"] for r in before], "during": [r["ttft"] for r in during],
                   "after": [r["ttft"] for r in after]},
        "adapter_in_use_after": served is not None and Path(served) == (adapter_dir / "adapter.gguf").resolve(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64, help="synthetic preference pairs")
    parser.add_argument("--steps", type=int, default=8, help="timed optimiser steps (after 1 warm-up step)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every part")
    parser.add_argument("--streams", type=int, default=10, help="streams before, and after, the promotion")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--skip-trl", action="store_true", help="skip the step-time comparison")
    parser.add_argument("--skip-cycle", action="store_true",
                        help="skip the full cycle (the swap then promotes a 2-step adapter from 8 pairs)")
    parser.add_argument("--skip-swap", action="store_true", help="skip the serving-pause measurement")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / f"training-{time.strftime('%Y%m%d-%H%M%S')}.json")
    args = parser.parse_args()
    if not args.skip_trl and not all(importlib.util.find_spec(m) for m in ("trl", "datasets")):
        raise SystemExit("TRL (the baseline) is not installed: pip install -e '.[bench]', or pass --skip-trl.")

    import torch

    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.pairs)
    # OpenMP threads spin-wait: on a busy 2-core machine 2 torch threads ran 25x slower than 1. Record the load.
    report: dict[str, Any] = {"pairs": args.pairs, "threads": args.threads, "torch": torch.__version__,
                              "omp_wait_policy_parts_1_3": os.environ.get("OMP_WAIT_POLICY", "(default)"),
                              "cpus": os.cpu_count(), "loadavg_1m_at_start": os.getloadavg()[0]}
    lines: list[str] = []
    if not args.skip_trl:
        from tests._base import shared_base_dir

        ours = bench_ours(shared_base_dir(), pairs, args.steps)
        theirs = bench_trl(shared_base_dir(), pairs, args.steps)
        ratio = ours["s_per_step"] / theirs["s_per_step"]
        report["step_time"] = {"timed_steps": args.steps, "ours": ours, "trl": theirs, "ratio_ours_over_trl": ratio}
        s = theirs["settings"]
        lines += [f"step time ({args.steps} steps after 1 warm-up, {BATCH} pairs/step): ours {ours['s_per_step']:.2f} s, "
                  f"TRL {theirs['trl_version']} {theirs['s_per_step']:.2f} s -> ours/TRL {ratio:.2f} (target <= 1.0)",
                  f"  TRL defaults kept: precompute_ref_log_probs={s['precompute_ref_log_probs']}, gradient_checkpointing="
                  f"{s['gradient_checkpointing']}, loss_type={s['loss_type']}; set: bf16=False, use_cpu, lr {LR}, "
                  f"beta {BETA}, max_length {MAX_LEN}, ref_model=None (the adapter-disabled model)",
                  f"  setup + warm-up step: ours {ours['setup_and_warmup_s']:.1f} s, TRL {theirs['setup_and_warmup_s']:.1f} s"]
    work = Path(tempfile.mkdtemp(prefix="rlhi-bench-cycle-"))
    try:
        if not args.skip_cycle:
            cycle = report["cycle"] = run_cycle(pairs, args.threads, work)
            lines += [f"cycle ({cycle['train_pairs']} train / {cycle['heldout_pairs']} held-out pairs, {cycle['steps']} "
                      f"steps): {cycle['wall_s']:.1f} s (target <= 120), peak RSS {cycle['peak_rss_mb']:.0f} MB "
                      "(target <= 2560)",
                      "  phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in cycle["phases_s"].items()),
                      "  peak RSS so far at the end of each phase: " + ", ".join(
                          f"{k} {v:.0f} MB" for k, v in cycle["peak_rss_mb_at_end_of_phase"].items())]
        elif not args.skip_swap:
            run_cycle(make_pairs(8), args.threads, work, HParams(epochs=1))  # just an adapter to promote
        if not args.skip_swap:
            swap = report["swap"] = bench_swap(work / "out", args.streams, args.tokens)
            pause = f"{swap['pause_s']:.3f} s" if swap["pause_s"] is not None else "n/a (first request failed)"
            lines += [f"promotion: pause {pause} (target <= 0.2): worst first token {max(swap['ttft_s']['during'] + swap['ttft_s']['after']):.3f} s "
                      f"from the promotion's start on vs median {swap['ttft_median_before_s']:.3f} s before; failed requests {swap['failed']} "
                      f"(target 0); warm-up before the promotion {swap['warm_then_activate_s']:.1f} s "
                      f"({swap['streams_during']} streams meanwhile)",
                      f"  (the KV cache is reset: first token with the conversation's prefix not cached, base model, "
                      f"no swap: {swap['ttft_cold_prefix_s']:.3f} s)",
                      f"  largest chunk gap before/during/after: {swap['max_gap_before_s']:.3f}/"
                      f"{swap['max_gap_during_s']:.3f}/{swap['max_gap_after_s']:.3f} s; adapter served after: "
                      f"{swap['adapter_in_use_after']}"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["loadavg_1m_at_end"] = os.getloadavg()[0]
    lines.append(f"load average (1 min) at start/end: {report['loadavg_1m_at_start']:.1f}/"
                 f"{report['loadavg_1m_at_end']:.1f} on {os.cpu_count()} CPUs (meaningful only on a quiet machine)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print("\n".join(lines) + f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
