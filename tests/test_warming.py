"""A promoted adapter or a new persona does not make the next answer re-read its conversation.

The real daemon and model: the conversation is warmed in the background under the adapter about to
be promoted (or with the new card) while the active adapter keeps answering; the answer after the
switch reads only its new tokens, from a cache that holds exactly its prompt; every stored answer
names the adapter that produced it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from rlhi_local.client import Client
from rlhi_local.persona import with_persona
from tests.conftest import RunningDaemon, start_thread_daemon, stop_thread_daemon
from tests.test_engine_adapter import decoded, write_lora

FILLER = ("The moon's phases follow its orbit: new, waxing crescent, first quarter, waxing gibbous, full, "
          "waning gibbous, last quarter and waning crescent, about 29.5 days in all. ") * 3


def register(d: RunningDaemon) -> Path:
    state = d.daemon._state
    folder = d.home / "data" / "adapters" / "local" / "v1"
    folder.mkdir(parents=True)
    write_lora(folder / "adapter.gguf", seed=5)
    state.store.add_adapter("local", 1, state.spec.fingerprint, str(folder), [], {}, "candidate")
    return (folder / "adapter.gguf").resolve()


def wait_warmed(d: RunningDaemon, adapter: Path | None, deadline_s: float = 120) -> None:
    state = d.daemon._state
    deadline = time.monotonic() + deadline_s
    while not state.engine.warm_ready(adapter):
        assert time.monotonic() < deadline, "the conversation was not warmed"
        time.sleep(0.02)


def cold(d: RunningDaemon) -> None:
    """Empty the serving cache (between requests: nothing else uses the engine here)."""
    llm = d.daemon._state.engine._llm
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    llm.reset()


def cached(d: RunningDaemon, n: int) -> list[int]:
    """The first `n` tokens the serving cache holds."""
    return [int(t) for t in d.daemon._state.engine._llm.input_ids[:n]]


def same_start(a: str, b: str) -> bool:
    """Greedy answers from a warmed and a cold cache: the same, up to float noise (llama.cpp's sums
    differ with the batch sizes a prompt was read in, and a near-tie may tip late in the answer)."""
    return a[:16] == b[:16]


def ask_counting(c: Client, d: RunningDaemon, conv: list[dict[str, str]], **params: object) -> tuple[Any, list[int]]:
    """The answer to `conv`, and the tokens each decode of the serving context evaluated for it."""
    counts = decoded(d.daemon._state.engine)
    try:
        return c.chat(conv, conversation_id="warm", **params), counts
    finally:
        del d.daemon._state.engine._llm._ctx.decode


def test_a_promotion_and_a_new_persona_warm_the_conversation_before_the_next_answer(rlhi_home: Path) -> None:
    # No mining: a mined persona would start warm-ups of its own in the middle of the checks.
    running = start_thread_daemon(rlhi_home, {"learning": {"mining": False}})
    state = running.daemon._state
    greedy = {"max_tokens": 24, "temperature": 0, "seed": 1}
    try:
        lora = register(running)
        with Client(running.socket) as c:
            conv = [{"role": "user", "content": FILLER + "What is the moon made of?"}]
            answers = []
            r = c.chat(conv, conversation_id="warm", **greedy)
            answers.append(r)
            conv += [{"role": "assistant", "content": r.text}]

            # Promotion, as the training run does it, from its own thread: the conversation (~200
            # tokens: seconds to read on 2 cores) is warmed under v1 while the base, still the
            # active one, answers a request sent meanwhile; then v1 is activated.
            promote = threading.Thread(target=state.trainings.prewarm, args=("local", lora))
            promote.start()
            deadline = time.monotonic() + 10
            while state.engine.warming is None:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            r = c.chat(conv + [{"role": "user", "content": "Why?"}], conversation_id="warm2", **greedy)
            answers.append(r)
            assert r.raw["rlhi"]["adapter_version"] is None
            promote.join(60)
            assert not promote.is_alive() and state.engine.warm_ready(lora)  # it waited for the warm-up
            state.store.activate_adapter("local", 1, reason="replaced by v1")
            assert state.engine.adapter is None  # installed by the first request that wants v1
            conv += [{"role": "user", "content": "And the sun?"}]
            r, counts = ask_counting(c, running, conv, **greedy)
            answers.append(r)
            assert r.raw["rlhi"]["adapter_version"] == 1 and state.engine.adapter == lora
            prompt = state.engine.render(with_persona(conv, "", state.config.generation.system_prompt))
            assert len(prompt) > 150
            assert counts[0] < 20  # only the new turn was read, not the ~200 warmed tokens
            assert cached(running, len(prompt)) == prompt  # the cache held exactly this prompt
            cold(running)
            assert same_start(c.chat(conv, conversation_id="warm-cold", **greedy).text, r.text)

            # A new persona card: the conversation is warmed again with it (same adapter).
            conv += [{"role": "assistant", "content": r.text}]
            c.set_persona([{"text": "Prefers answers with concrete numbers."}])
            card = c.persona()["card"]
            assert card
            wait_warmed(running, lora)
            conv += [{"role": "user", "content": "How far away is it?"}]
            r, counts = ask_counting(c, running, conv, **greedy)
            answers.append(r)
            assert counts[0] < 20
            assert r.raw["rlhi"]["persona_version"] == c.persona()["version"]
            prompt = state.engine.render(with_persona(conv, card, state.config.generation.system_prompt))
            assert cached(running, len(prompt)) == prompt  # warmed with the new card, not the old
            cold(running)
            assert same_start(c.chat(conv, conversation_id="warm-cold2", **greedy).text, r.text)

            # An adapter the user chooses (here: rollback to the base) answers the very next request.
            c.rollback_adapter()
            answers.append(c.chat(conv, conversation_id="warm-rollback", **greedy))
            assert answers[-1].raw["rlhi"]["adapter_version"] is None and state.engine.adapter is None

            # Every stored answer names the adapter that produced it (the header said the same).
            for a in answers:
                with sqlite3.connect(running.db_path) as db:
                    stored = db.execute("SELECT adapter_version FROM messages WHERE id = ?", [a.message_id]).fetchall()
                want = a.raw["rlhi"]["adapter_version"]
                assert stored == [(str(want) if want is not None else None,)]

            # Forgetting everything drops the remembered conversation and what was warmed.
            c.set_persona([{"text": "Prefers answers in French."}])
            c.forget(everything=True)
            assert state.warmer._last is None and state.engine.warming is None
    finally:
        stop_thread_daemon(running)
