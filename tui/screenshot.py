"""Save an SVG screenshot of the chat with a short real conversation (for the README).

Run from the repository root:

    .venv/bin/python -m tui.screenshot                      # writes docs/screenshot.svg
    .venv/bin/python -m tui.screenshot --out /tmp/shot.svg --socket "$(rlhi path socket)"

Without `--socket` it works in a fresh temporary RLHI_HOME: the app starts its own daemon there
(as `rlhi chat` does), asks two questions with greedy decoding, focuses the last answer so the
footer shows the learning actions, saves the screenshot, and stops that daemon.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from textual import events
from textual.pilot import Pilot

from .app import ChatApp

QUESTIONS = (
    "What is SQLite? Two sentences.",
    "Show me a Python one-liner that reverses a string.",
)


async def _script(pilot: Pilot[Any], out: Path) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    deadline = time.monotonic() + 180
    while not app.connected:
        if time.monotonic() > deadline:
            raise SystemExit("the daemon did not become ready within 180 s")
        await pilot.pause(0.1)
    for question in QUESTIONS:
        before = app.path[-1]["id"] if app.path else None
        app.post_message(events.Paste(question))
        await pilot.pause(0.1)
        await pilot.press("enter")
        while app.generating or not app.path or app.path[-1]["id"] == before:
            await pilot.pause(0.1)
    await pilot.press("ctrl+up")
    await pilot.pause(0.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    app.save_screenshot(filename=out.name, path=str(out.parent))
    app.exit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot.svg"))
    parser.add_argument("--socket", type=Path, default=None, help="use this running daemon")
    parser.add_argument("--size", default="100x32", help="terminal size, COLSxROWS")
    args = parser.parse_args(argv)
    cols, rows = (int(n) for n in args.size.split("x"))
    home = None if args.socket else tempfile.mkdtemp(prefix="rlhi-shot-", dir="/tmp")
    if home is not None:
        os.environ["RLHI_HOME"] = home
    try:
        app = ChatApp(args.socket, max_tokens=120, temperature=0.0, seed=1)
        app.run(headless=True, size=(cols, rows), auto_pilot=lambda pilot: _script(pilot, args.out))
    finally:
        if home is not None:
            subprocess.run([sys.executable, "-m", "rlhi_local", "stop"], check=False,
                           capture_output=True, timeout=60)
            shutil.rmtree(home, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
