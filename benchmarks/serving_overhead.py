"""What does serving through the daemon cost, against calling llama-cpp-python in-process?

Run: `make bench` (or `.venv/bin/python benchmarks/serving_overhead.py --rounds 5 --tokens 128`).

In one run, alternating, on the same greedy prompt:
- daemon:      `rlhi serve` in a subprocess, streamed over its Unix socket (HTTP + SSE);
- inproc-default: `llama_cpp.Llama(path)` with its defaults (n_ctx 512, half the cores, no flash
  attention), `create_chat_completion(stream=True)` — what a developer gets out of the box;
- inproc-matched: the same with the daemon's settings (threads, n_ctx, flash attention), which
  isolates the socket + HTTP + SSE overhead.
Reports generation tok/s (after the first token), time to first token, their ratios, the idle RSS
of the daemon against an in-process model, and RSS over many distinct conversations (the prompt
cache must stay bounded). Writes JSON to benchmarks/results/serving_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


def _stream_stats(chunks: object) -> tuple[float, float, int]:
    """(ttft_s, tok_per_s after the first token, content chunks) from an iterator of texts."""
    start = time.perf_counter()
    first = None
    n = 0
    for text in chunks:  # type: ignore[attr-defined]
        if not text:
            continue
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None, "no tokens generated"
    rate = (n - 1) / (end - first) if n > 1 and end > first else 0.0
    return first - start, rate, n


def run_daemon_once(client: object, tokens: int) -> tuple[float, float, int]:
    def texts():  # noqa: ANN202
        for chunk in client.stream_chat(PROMPT, max_tokens=tokens, temperature=0):  # type: ignore[attr-defined]
            yield chunk.text

    return _stream_stats(texts())


def run_inproc_once(llm: object, tokens: int) -> tuple[float, float, int]:
    def texts():  # noqa: ANN202
        for c in llm.create_chat_completion(PROMPT, max_tokens=tokens, temperature=0, stream=True):  # type: ignore[attr-defined]
            yield c["choices"][0]["delta"].get("content", "")

    return _stream_stats(texts())


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def inproc_rss_mb(model_path: str, **kwargs: object) -> float:
    """RSS of a fresh process that loaded the model (defaults, or `kwargs`) and answered once."""
    code = (
        "import llama_cpp, psutil, os, sys\n"
        f"l = llama_cpp.Llama({model_path!r}, verbose=False, **{kwargs!r})\n"
        "l.create_chat_completion([{'role':'user','content':'hi'}], max_tokens=8)\n"
        "print(psutil.Process(os.getpid()).memory_info().rss / 2**20)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--conversations", type=int, default=200, help="for the memory-growth check")
    parser.add_argument("--persona", action="store_true",
                        help="keep the persona card in the daemon's prompts (it changes the prompt, "
                             "so by default it is off to compare the same tokens)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_overhead.json")
    args = parser.parse_args()

    import llama_cpp

    from rlhi_local.client import Client
    from rlhi_local.config import load_config
    from rlhi_local.engine import physical_cores
    from rlhi_local.models import resolve_model

    home = Path(tempfile.mkdtemp(prefix="rlhi-bench-"))
    env = {**os.environ, "RLHI_HOME": str(home)}
    if not args.persona:
        env["RLHI_LEARNING__PERSONA_IN_PROMPT"] = "false"
    os.environ["RLHI_HOME"] = str(home)
    config = load_config()
    spec = resolve_model(config)
    proc = subprocess.Popen([sys.executable, "-m", "rlhi_local", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = Client()
        deadline = time.monotonic() + 120
        while True:
            try:
                health = client.health()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.1)
        n_threads = health["model"]["n_threads"]
        default = llama_cpp.Llama(str(spec.path), verbose=False)
        matched = llama_cpp.Llama(str(spec.path), n_ctx=config.model.n_ctx, n_threads=n_threads,
                                  n_threads_batch=n_threads, flash_attn=config.model.flash_attn, verbose=False)
        runners = {
            "daemon": lambda: run_daemon_once(client, args.tokens),
            "inproc_default": lambda: run_inproc_once(default, args.tokens),
            "inproc_matched": lambda: run_inproc_once(matched, args.tokens),
        }
        for run in runners.values():  # warm-up: page in weights, fill caches
            run()
        samples: dict[str, list[tuple[float, float, int]]] = {k: [] for k in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                samples[name].append(run())
        med = {
            name: {
                "ttft_ms": statistics.median(s[0] for s in xs) * 1000,
                "tok_per_s": statistics.median(s[1] for s in xs),
                "tokens": statistics.median(s[2] for s in xs),
            }
            for name, xs in samples.items()
        }
        idle_rss = rss_mb(proc.pid)
        inproc_rss = inproc_rss_mb(str(spec.path))
        inproc_matched_rss = inproc_rss_mb(str(spec.path), n_ctx=config.model.n_ctx, n_threads=n_threads,
                                           flash_attn=config.model.flash_attn)
        growth = []
        for i in range(args.conversations):
            client.chat([{"role": "user", "content": f"Conversation {i}: name a number near {i * 7}."}],
                        max_tokens=8, temperature=0)
            if i % max(1, args.conversations // 10) == 0 or i == args.conversations - 1:
                growth.append((i + 1, rss_mb(proc.pid)))
    finally:
        proc.terminate()
        proc.wait(30)

    d, dflt, m = med["daemon"], med["inproc_default"], med["inproc_matched"]
    report = {
        "model": spec.id,
        "cores": physical_cores(),
        "rounds": args.rounds,
        "max_tokens": args.tokens,
        "persona_in_prompt": args.persona,
        "median": med,
        "ratios": {
            "throughput_vs_inproc_default": d["tok_per_s"] / dflt["tok_per_s"],
            "throughput_vs_inproc_matched": d["tok_per_s"] / m["tok_per_s"],
            "ttft_overhead_ms_vs_matched": d["ttft_ms"] - m["ttft_ms"],
            "ttft_overhead_ms_vs_default": d["ttft_ms"] - dflt["ttft_ms"],
        },
        "memory_mb": {
            "daemon_idle_rss": idle_rss,
            "inproc_rss": inproc_rss,
            "inproc_matched_rss": inproc_matched_rss,
            "daemon_minus_inproc_default": idle_rss - inproc_rss,
            "daemon_minus_inproc_matched": idle_rss - inproc_matched_rss,
            "rss_over_conversations": growth,
            "growth_after_first_tenth": growth[-1][1] - growth[1][1] if len(growth) > 2 else None,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(
        f"\nthroughput: daemon {d['tok_per_s']:.1f} tok/s = {report['ratios']['throughput_vs_inproc_default']:.2f}x "
        f"in-process defaults, {report['ratios']['throughput_vs_inproc_matched']:.2f}x matched; "
        f"TTFT overhead vs matched {report['ratios']['ttft_overhead_ms_vs_matched']:+.1f} ms; "
        f"idle RSS {idle_rss:.0f} MB vs in-process {inproc_rss:.0f} MB (defaults), "
        f"{inproc_matched_rss:.0f} MB (same n_ctx)"
    )


if __name__ == "__main__":
    main()
