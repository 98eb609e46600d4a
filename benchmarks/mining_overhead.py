"""Does learning slow the chat? Chat latency with mining on vs off, in one run.

Run: `.venv/bin/python benchmarks/mining_overhead.py --conversations 12`

Two daemons (`rlhi serve`, each with its own temporary RLHI_HOME): one with learning.mining on
(the default: follow-ups labelled, pairs built, the persona refreshed and guided rewrites sampled
in the background), one with it off. The same multi-turn conversations (a question, a follow-up
that asks for a change, thanks) are sent to each in turn, alternating, with a think time like a
person's (default 2 s: reading a short answer and typing a follow-up takes longer; 0.7 s is a
stress setting, where a new persona card's re-read of the conversation cannot be warmed in time).
Reports median time to first token and total latency per turn, their ratios (on/off), and what
the mining daemon learned. Writes benchmarks/results/mining_overhead.json.
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

QUESTIONS = [
    "What is a Python list?", "How do I make tea?", "Explain DNS briefly.", "What is a mortgage?",
    "How do plants make food?", "What is a CPU cache?", "Why is the sky blue?", "What is inflation?",
]
FOLLOWUPS = ["Shorter, one sentence please.", "Can you put that in a bulleted list?", "No, I meant for Windows."]


def start(home: Path, mining: bool, delay: float) -> tuple[subprocess.Popen[bytes], Path]:
    env = {**os.environ, "RLHI_HOME": str(home), "RLHI_LEARNING__MINING": "true" if mining else "false",
           "RLHI_LEARNING__MINING_DELAY_S": str(delay)}
    proc = subprocess.Popen([sys.executable, "-m", "rlhi_local", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, home / "run" / "rlhi.sock"


def turn(client: object, messages: list[dict[str, str]], conv: str) -> tuple[float, float, str]:
    start = time.perf_counter()
    first = None
    parts = []
    for chunk in client.stream_chat(messages, conversation_id=conv, max_tokens=48, temperature=0):  # type: ignore[attr-defined]
        if chunk.text and first is None:
            first = time.perf_counter()
        parts.append(chunk.text)
    end = time.perf_counter()
    return ((first or end) - start) * 1000, (end - start) * 1000, "".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--think", type=float, default=2.0, help="seconds between a user's turns")
    parser.add_argument("--mining-delay", type=float, default=0.5,
                        help="learning.mining_delay_s: below --think, mining runs in every pause")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mining_overhead.json")
    args = parser.parse_args()
    from rlhi_local.client import Client

    daemons = {name: start(Path(tempfile.mkdtemp(prefix=f"rlhi-{name}-")), name == "on", args.mining_delay) for name in ("on", "off")}
    clients = {}
    try:
        for name, (proc, sock) in daemons.items():
            deadline = time.monotonic() + 120
            while True:
                try:
                    Client(sock).health()
                    break
                except Exception:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit(f"daemon {name} did not start")
                    time.sleep(0.1)
            clients[name] = Client(sock)
        samples: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
        for i in range(args.conversations):
            for name in (("on", "off") if i % 2 == 0 else ("off", "on")):
                c = clients[name]
                history = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
                for nxt in (FOLLOWUPS[i % len(FOLLOWUPS)], "Thanks!", None):
                    ttft, total, text = turn(c, history, f"bench-{i}")
                    samples[name].append((ttft, total))
                    if nxt is None:
                        break
                    history += [{"role": "assistant", "content": text}, {"role": "user", "content": nxt}]
                    time.sleep(args.think)
        time.sleep(3)  # let the last mining run finish before reading what was learned
        learned = {"pairs": len(clients["on"].pairs()), "persona_version": clients["on"].persona()["version"],
                   "mining_runs": clients["on"].health()["learning"]["runs"],
                   "pairs_with_mining_off": len(clients["off"].pairs())}
    finally:
        for proc, _ in daemons.values():
            proc.terminate()
            proc.wait(30)
    med = {name: {"ttft_ms": statistics.median(s[0] for s in xs), "latency_ms": statistics.median(s[1] for s in xs),
                  "turns": len(xs)} for name, xs in samples.items()}
    report = {
        "think_s": args.think,
        "mining_delay_s": args.mining_delay,
        "median": med,
        "ratios_on_over_off": {
            "ttft": med["on"]["ttft_ms"] / med["off"]["ttft_ms"],
            "latency": med["on"]["latency_ms"] / med["off"]["latency_ms"],
        },
        "learned": learned,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    r = report["ratios_on_over_off"]
    print(f"\nmining on/off: TTFT {r['ttft']:.3f}x, turn latency {r['latency']:.3f}x; learned {learned}")


if __name__ == "__main__":
    main()
