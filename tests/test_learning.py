"""The proof that it learns: a simulated user's preference, from chat alone, to a served adapter.

A user who wants answers of at most 40 words chats through the real API on varied questions and,
like a person, says so when an answer runs long ("Too long. Answer in one or two short
sentences."). Nothing else is given: the daemon labels the follow-ups, mines the persona, builds
guided_rewrite pairs (the model's accepted re-attempt, else a filtered background rewrite),
and `rlhi train --now` trains, gates and promotes. On held-out questions the adapter must meet
the preference far more often than the base, and neutral factual questions stay answered.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from rlhi_local.client import Client
from tests._base import shared_base_dir, shared_cache_root
from tests._simuser import chat_like_a_person, prompts, rate
from tests.conftest import rlhi_cmd, start_thread_daemon, stop_thread_daemon, wait_for

USER = "sim"
NEUTRAL = [
    ("What is the capital of France?", "paris"),
    ("What is the capital of Japan?", "tokyo"),
    ("Who wrote Romeo and Juliet?", "shakespeare"),
    ("What is the largest planet in our solar system?", "jupiter"),
    ("What gas do plants absorb from the air?", "carbon dioxide"),
    ("How many days are there in a week?", "seven|7"),
    ("What is the boiling point of water in Celsius?", "100"),
    ("Which ocean is the largest?", "pacific"),
    ("What is the chemical symbol for water?", "h2o|h₂o"),
    ("Who painted the Mona Lisa?", "leonardo|da vinci"),
]


def neutral_correct(c: Client, adapter: str | None) -> int:
    import re

    hits = 0
    for question, pattern in NEUTRAL:
        answer = c.chat([{"role": "user", "content": question}], user=USER, temperature=0, max_tokens=80,
                        off_record=True, metadata={"adapter": adapter} if adapter else {}).text
        hits += bool(re.search(pattern, answer.lower()))
    return hits


@pytest.mark.slow
@pytest.mark.timeout(1800)  # chat ~3 min, rewrites, training ~3 min, evaluation: well past the default
def test_a_user_who_wants_short_answers_gets_them_after_training() -> None:
    shared_base_dir()
    home = Path(tempfile.mkdtemp(prefix="rhl", dir="/tmp"))
    flags = {
        # Rewrites run in the pauses between the simulated user's turns, and only short ones can
        # pass the filter for "one or two sentences", so 96 tokens and 2 samples suffice.
        "learning": {"rewrite_idle_s": 0.5, "rewrite_samples": 2, "rewrite_max_tokens": 96, "mining_delay_s": 0.2},
        # Three passes over ~40 pairs: two left the adapter at 65% (KL 0.06, far inside the gate's
        # 0.3), so there is room to fit the preference harder without drifting.
        "training": {"cache_dir": str(shared_cache_root()), "epochs": 3},
    }
    d = start_thread_daemon(home, flags)
    try:
        with Client(d.socket) as c:
            started = time.monotonic()
            session = chat_like_a_person(c, prompts(0, 40), USER)
            c._request("POST", "/v1/signals/mine", params={"user": USER})
            assert wait_for(lambda: not c.pairs(user=USER, status="pending"), 600, 1.0)
            ready = c.pairs(user=USER, status="ready")
            print(f"\nchat: {session.turns} turns, {session.complaints} complaints, {session.accepted} re-attempts "
                  f"accepted, {len(ready)} ready pairs in {time.monotonic() - started:.0f}s")
            assert len(ready) >= 20
            assert "concise" in c.persona(user=USER)["card"].lower(), "the persona must carry the preference"

            heldout = prompts(1000, 20)
            base_rate = rate(c, heldout, USER, "base")
            base_neutral = neutral_correct(c, "base")

            started = time.monotonic()
            out = rlhi_cmd("train", "--now", "--user", USER, env={"RLHI_HOME": str(home)}, timeout=900)
            print(out.stdout, out.stderr[-600:], f"train: {time.monotonic() - started:.0f}s")
            assert out.returncode == 0 and "promoted" in out.stdout

            tuned_rate = rate(c, heldout, USER, None)
            tuned_neutral = neutral_correct(c, None)
            run = c.train_runs(user=USER)[0]
            print(f"<=40 words: base {base_rate:.0%} -> adapter {tuned_rate:.0%}; neutral correct: base "
                  f"{base_neutral}/10 -> adapter {tuned_neutral}/10; drift {run['metrics']['drift']}; "
                  f"held-out {run['metrics']['candidate']}; export r={run['metrics']['export_correlation']:.3f}")
            assert tuned_rate >= 0.7 and tuned_rate >= base_rate + 0.5
            assert tuned_neutral >= base_neutral - 2
    finally:
        stop_thread_daemon(d)
        shutil.rmtree(home, ignore_errors=True)
