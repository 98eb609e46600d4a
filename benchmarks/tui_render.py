"""Does the chat UI keep up with the stream? Render time of a 1,000-token answer vs the raw stream.

Run: `.venv/bin/python benchmarks/tui_render.py --rounds 3 --tokens 1000`

In one run, alternating: (raw) the same greedy request streamed with `AsyncClient.stream_chat`
and consumed without rendering; (app) the Textual app, headless, sending the prompt and rendering
the streamed Markdown until the answer is settled on screen. Both go through a daemon started
for the run (`rlhi serve`, temporary RLHI_HOME) and ask for exactly `--tokens` tokens
(`ignore_eos`). Reports the median times and their ratio (target ≤ 1.10) and writes JSON to
benchmarks/results/tui_render.json.
"""

from __future__ import annotations

import argparse
import asyncio
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

PROMPT = "Write a long, detailed history of the printing press, with headings and lists."


async def raw_once(socket: Path, params: dict[str, object]) -> float:
    from rlhi_local.client import AsyncClient

    async with AsyncClient(socket) as client:
        start = time.perf_counter()
        async for _ in client.stream_chat([{"role": "user", "content": PROMPT}], user="bench-raw", **params):
            pass
        return time.perf_counter() - start


async def app_once(socket: Path, params: dict[str, object]) -> float:
    from textual import events

    from tui.app import ChatApp
    from tui.widgets import PromptInput

    app = ChatApp(socket=socket, user="bench-app", **params)
    async with app.run_test(size=(120, 40)) as pilot:
        while not (app.connected and app.status.state == "ready"):
            await pilot.pause(0.05)
        prompt = app.query_one(PromptInput)
        prompt.focus()
        app.post_message(events.Paste(PROMPT))
        while prompt.text != PROMPT:
            await pilot.pause(0.01)
        start = time.perf_counter()
        await pilot.press("enter")
        # Plain sleeps, not pilot.pause: pausing the pilot forces extra message processing that a
        # person at a terminal does not cause, and it cost the app ~10% here.
        await asyncio.sleep(0.05)
        while app.generating or any(w.is_running for w in app.workers if w.group == "reply"):
            await asyncio.sleep(0.02)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tui_render.json")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rlhi-tui-bench-"))
    os.environ["RLHI_HOME"] = str(home)
    from rlhi_local.client import ensure_daemon
    from rlhi_local.config import load_config, socket_path

    socket = socket_path(load_config())
    ensure_daemon(socket)
    params = {"max_tokens": args.tokens, "temperature": 0.0, "seed": 1, "ignore_eos": True}
    raw: list[float] = []
    app: list[float] = []
    try:
        asyncio.run(raw_once(socket, {**params, "max_tokens": 16}))  # warm-up
        for _ in range(args.rounds):
            raw.append(asyncio.run(raw_once(socket, params)))
            app.append(asyncio.run(app_once(socket, params)))
    finally:
        subprocess.run([sys.executable, "-m", "rlhi_local", "stop"], check=False, capture_output=True)
    report = {
        "tokens": args.tokens,
        "rounds": args.rounds,
        "raw_s": raw,
        "app_s": app,
        "median_raw_s": statistics.median(raw),
        "median_app_s": statistics.median(app),
        "ratio_app_over_raw": statistics.median(app) / statistics.median(raw),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"\n{args.tokens}-token answer: raw stream {report['median_raw_s']:.2f}s, rendered in the app "
          f"{report['median_app_s']:.2f}s = {report['ratio_app_over_raw']:.3f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
