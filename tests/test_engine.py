"""The engine on the real embedded model: template, sampling, stops, limits, cancellation."""

from __future__ import annotations

import os
import threading
from typing import Iterator

import pytest

from rlhi_local.config import ModelConfig, load_config
from rlhi_local.engine import Engine, Finish, Piece, SamplingParams, physical_cores
from rlhi_local.errors import ContextLengthError, ModelCorruptError, ModelNotFoundError
from rlhi_local.models import EMBEDDED_FILE, ModelSpec, fingerprint, resolve_model

Q = [{"role": "user", "content": "List the days of the week."}]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    os.environ.setdefault("RLHI_HOME", "/tmp/rlhi-engine-tests")
    e = Engine(resolve_model(load_config()), ModelConfig())
    yield e
    e.close()


def run(engine: Engine, params: SamplingParams, cancel: threading.Event | None = None,
        messages: list[dict[str, str]] = Q) -> tuple[list[str], Finish]:
    pieces: list[str] = []
    finish = None
    for item in engine.generate(engine.render(messages), params, cancel):
        if isinstance(item, Piece):
            pieces.append(item.text)
        else:
            finish = item
    assert finish is not None
    return pieces, finish


def test_embedded_model_is_resolved_and_fingerprinted() -> None:
    spec = resolve_model(load_config())
    assert spec.embedded and spec.path.name == EMBEDDED_FILE
    assert len(spec.fingerprint) == 64
    assert fingerprint(spec.path) == spec.fingerprint  # second time from the cache


def test_settings_are_explicit(engine: Engine) -> None:
    assert engine.n_ctx == 4096  # not llama-cpp-python's default of 512
    assert engine.n_threads == physical_cores() >= 1
    assert engine._llm.context_params.n_threads == engine.n_threads


def test_prompt_uses_the_ggufs_own_chat_template(engine: Engine) -> None:
    tokens = engine.render([{"role": "system", "content": "Be terse."}, *Q])
    text = engine._llm.detokenize(tokens, special=True).decode()
    assert text.startswith("<|im_start|>system\nBe terse.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_greedy_is_deterministic_and_pieces_add_up(engine: Engine) -> None:
    a, fa = run(engine, SamplingParams(max_tokens=24, temperature=0))
    b, fb = run(engine, SamplingParams(max_tokens=24, temperature=0))
    assert "".join(a) == fa.text == fb.text
    assert fa.completion_tokens <= 24 and fa.prompt_tokens == len(engine.render(Q))
    assert fa.ttft_ms is not None and fa.ttft_ms > 0


def test_max_tokens_gives_length(engine: Engine) -> None:
    _, f = run(engine, SamplingParams(max_tokens=3, temperature=0))
    assert (f.finish_reason, f.completion_tokens) == ("length", 3)


def test_stop_strings_cut_before_the_match(engine: Engine) -> None:
    _, free = run(engine, SamplingParams(max_tokens=40, temperature=0))
    word = "Tuesday"
    assert word in free.text
    pieces, f = run(engine, SamplingParams(max_tokens=40, temperature=0, stop=(word,)))
    assert f.finish_reason == "stop" and word not in "".join(pieces)
    assert "".join(pieces) == free.text[: free.text.index(word)]


def test_cancel_stops_between_tokens(engine: Engine) -> None:
    cancel = threading.Event()
    got = 0
    finish = None
    for item in engine.generate(engine.render(Q), SamplingParams(max_tokens=500, temperature=0), cancel):
        if isinstance(item, Piece):
            got += 1
            if got == 3:
                cancel.set()
        else:
            finish = item
    assert finish is not None and finish.finish_reason == "cancelled"
    assert finish.completion_tokens <= 4


def test_prompt_over_the_context_is_refused(engine: Engine) -> None:
    with pytest.raises(ContextLengthError, match="4096"):
        engine.render([{"role": "user", "content": "word " * 5000}])


def test_missing_and_corrupt_files_are_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelNotFoundError, match="nope.gguf"):
        Engine(ModelSpec(tmp_path / "nope.gguf", "nope", "0", False), ModelConfig())
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelCorruptError, match="bad.gguf"):
        Engine(ModelSpec(bad, "bad", "0", False), ModelConfig())


def test_ignore_eos_generates_exactly_max_tokens(engine: Engine) -> None:
    short = [{"role": "user", "content": "Say OK."}]
    _, natural = run(engine, SamplingParams(max_tokens=200, temperature=0), messages=short)
    assert natural.finish_reason == "stop" and natural.completion_tokens < 200
    _, forced = run(engine, SamplingParams(max_tokens=200, temperature=0, ignore_eos=True), messages=short)
    assert (forced.finish_reason, forced.completion_tokens) == ("length", 200)


def test_the_persona_card_reaches_the_prompt_in_the_system_turn(engine: Engine) -> None:
    from rlhi_local.persona import with_persona

    card = "User persona:\n- Prefers concise answers."
    text = engine._llm.detokenize(engine.render(with_persona(Q, card)), special=True).decode()
    assert text.startswith(f"<|im_start|>system\n{card}<|im_end|>")
    both = engine._llm.detokenize(engine.render(with_persona([{"role": "system", "content": "Be kind."}, *Q], card, "ignored?")), special=True).decode()
    assert f"Be kind.\n\nignored?\n\n{card}" in both


def test_a_side_job_leaves_the_conversation_cache_as_it_was(engine: Engine) -> None:
    long_q = [{"role": "user", "content": "Describe, in detail, how a bicycle works, part by part."}]
    _, before = run(engine, SamplingParams(max_tokens=30, temperature=0), messages=long_q)
    n, ids = engine._llm.n_tokens, list(engine._llm.input_ids[: engine._llm.n_tokens])
    with engine.keep_cache():
        run(engine, SamplingParams(max_tokens=20, temperature=0), messages=[{"role": "user", "content": "Rewrite: hi"}])
        assert list(engine._llm.input_ids[:5]) != ids[:5] or engine._llm.n_tokens != n
    assert engine._llm.n_tokens == n and list(engine._llm.input_ids[:n]) == ids
    _, after = run(engine, SamplingParams(max_tokens=30, temperature=0), messages=long_q)
    assert after.text == before.text  # the restored cells give the same greedy answer
