"""LoRA adapter hot-swap on the real embedded model: no stale KV, clean failures, the queue.

The adapters are random LoRA GGUFs written here with `gguf`. Layout llama.cpp accepts: for a
model weight of ggml shape ne=[n_in, n_out], `lora_a` has ne=[n_in, r] and `lora_b` ne=[r, n_out];
numpy shapes are the reverse, [r, n_in] and [n_out, r] (the transposed pair is rejected).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from rlhi_local.config import ModelConfig, load_config
from rlhi_local.engine import Engine, Finish, Job, RequestQueue, SamplingParams
from rlhi_local.errors import AdapterError, EngineError
from rlhi_local.models import resolve_model

GREEDY = SamplingParams(max_tokens=24, temperature=0, seed=7)
Q = [{"role": "user", "content": "List the days of the week."}]
Q2 = [{"role": "user", "content": "Name three colours."}]

# SmolLM2-135M: n_embd 576, ffn 1536, 30 layers. attn_q is [576 -> 576], ffn_down [1536 -> 576].
TARGETS = (("attn_q", 576, 576), ("ffn_down", 1536, 576))


def write_lora(path: Path, seed: int, rank: int = 8, std: float = 0.1, n_embd: int = 576) -> Path:
    """A random LoRA adapter, strong enough that greedy answers clearly change."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))  # scale alpha / rank = 1
    for i in range(30):
        for name, n_in, n_out in TARGETS:
            n_in = n_embd if name == "attn_q" else n_in
            w.add_tensor(f"blk.{i}.{name}.weight.lora_a", (rng.standard_normal((rank, n_in)) * std).astype(np.float32))
            w.add_tensor(f"blk.{i}.{name}.weight.lora_b", (rng.standard_normal((n_out, rank)) * std).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    os.environ.setdefault("RLHI_HOME", "/tmp/rlhi-engine-tests")
    # One thread: on a busy shared CI box llama.cpp's spinning worker threads slow down ~20x.
    e = Engine(resolve_model(load_config()), ModelConfig(n_threads=1))
    yield e
    e.close()
    assert not e._adapters  # close() freed them


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lora(tmp_path_factory.mktemp("lora") / "a.gguf", seed=1)


def answer(engine: Engine, messages: list[dict[str, str]] = Q) -> str:
    finish = [i for i in engine.generate(engine.render(messages), GREEDY) if isinstance(i, Finish)]
    return finish[0].text


def fresh_answer(engine: Engine, messages: list[dict[str, str]] = Q) -> str:
    """The answer from an empty cache, cleared here by hand (independently of `set_adapter`)."""
    engine._llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    engine._llm.reset()
    return answer(engine, messages)


@pytest.fixture(scope="module")
def ref(engine: Engine, lora: Path) -> dict[tuple[Path | None, str], str]:
    """Greedy answers from an empty cache: (adapter, prompt name) -> text."""
    out = {}
    for adapter in (None, lora.resolve()):
        engine.set_adapter(adapter)
        for name, messages in (("Q", Q), ("Q2", Q2)):
            out[adapter, name] = fresh_answer(engine, messages)
    engine.set_adapter(None)
    assert out[lora.resolve(), "Q"] != out[None, "Q"]
    assert out[lora.resolve(), "Q2"] != out[None, "Q2"]
    return out


def test_swapping_changes_the_answer_and_back_reproduces_the_base(engine: Engine, lora: Path, ref) -> None:  # type: ignore[no-untyped-def]
    a = lora.resolve()
    engine.set_adapter(None)
    assert answer(engine) == ref[None, "Q"]
    assert engine.set_adapter(lora) is True and engine.adapter == a
    assert answer(engine) == ref[a, "Q"]
    assert engine.set_adapter(None) is True and engine.adapter is None
    assert answer(engine) == ref[None, "Q"]
    # base -> adapter -> same adapter: the second call is a no-op that keeps the cache.
    assert engine.set_adapter(lora) is True
    assert answer(engine) == ref[a, "Q"]
    cached = engine._llm.n_tokens
    assert cached > 0
    assert engine.set_adapter(lora) is False
    assert engine._llm.n_tokens == cached
    assert answer(engine) == ref[a, "Q"]
    # A different scale is a different adapter.
    assert engine.set_adapter(lora, scale=0.5) is True and engine._llm.n_tokens == 0
    engine.set_adapter(None)


def test_the_old_adapters_kv_is_not_reused(engine: Engine, lora: Path, ref) -> None:  # type: ignore[no-untyped-def]
    a = lora.resolve()
    engine.set_adapter(None)
    assert answer(engine) == ref[None, "Q"]  # the cache now holds Q under the base model
    engine.set_adapter(lora)
    assert answer(engine) == ref[a, "Q"]
    # The test has teeth: swapping the weights but keeping the KV gives a mixed answer.
    engine.set_adapter(None)
    assert answer(engine) == ref[None, "Q"]
    engine._apply((a, 1.0))
    assert answer(engine) != ref[a, "Q"]
    engine.set_adapter(None)


def test_an_unloadable_adapter_is_named_and_the_engine_keeps_serving(engine: Engine, lora: Path, ref, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = lora.resolve()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(lora.read_bytes()[: lora.stat().st_size // 2])
    wrong_shape = write_lora(tmp_path / "other-model.gguf", seed=2, n_embd=512)
    missing = tmp_path / "missing.gguf"
    engine.set_adapter(lora)
    assert answer(engine) == ref[a, "Q"]
    cached = engine._llm.n_tokens
    for bad in (truncated, wrong_shape, missing):
        with pytest.raises(AdapterError, match=bad.name) as info:
            engine.set_adapter(bad)
        assert isinstance(info.value, EngineError) and "rlhi adapters rollback" in str(info.value)
        assert engine.adapter == a and engine._llm.n_tokens == cached
        assert bad.resolve() not in engine._adapters
    assert answer(engine) == ref[a, "Q"]
    engine.set_adapter(None)


def test_loaded_adapters_are_capped_and_the_active_one_is_kept(engine: Engine, lora: Path, tmp_path: Path) -> None:
    from rlhi_local.engine.model import MAX_LOADED_ADAPTERS

    engine.set_adapter(lora)
    for i in range(MAX_LOADED_ADAPTERS + 1):
        engine._load_adapter(write_lora(tmp_path / f"x{i}.gguf", seed=10 + i, rank=1).resolve())
    assert len(engine._adapters) == MAX_LOADED_ADAPTERS and lora.resolve() in engine._adapters
    engine.set_adapter(None)


def run_jobs(engine: Engine, specs: list[tuple[list[dict[str, str]], Path | None, bool]]) -> list[Job]:
    """Submit (messages, adapter, background) jobs at once; they run one after the other."""

    async def main() -> list[Job]:
        queue = RequestQueue(engine, max_waiting=len(specs))
        jobs = []
        for messages, adapter, background in specs:
            queue.reserve()
            jobs.append(queue.submit(engine.render(messages), GREEDY, background=background, adapter=adapter))
        await asyncio.gather(*(job.wait() for job in jobs), return_exceptions=True)
        queue.close()
        return jobs

    return asyncio.run(main())


def test_queued_jobs_answer_with_their_own_adapter(engine: Engine, lora: Path, ref) -> None:  # type: ignore[no-untyped-def]
    a = lora.resolve()
    adapters = [None, lora, None, lora, lora, None]
    jobs = run_jobs(engine, [(Q, adapter, False) for adapter in adapters])
    assert [job.adapter for job in jobs] == [None if x is None else a for x in adapters]
    assert [job.finish.text for job in jobs] == [ref[job.adapter, "Q"] for job in jobs]  # type: ignore[union-attr]


@pytest.mark.parametrize("chat_on_lora", [False, True])
def test_a_background_job_on_another_adapter_leaves_the_chat_intact(engine: Engine, lora: Path, ref, chat_on_lora: bool) -> None:  # type: ignore[no-untyped-def]
    chat, side = (lora.resolve(), None) if chat_on_lora else (None, lora.resolve())
    jobs = run_jobs(engine, [(Q, chat, False), (Q2, side, True)])
    assert jobs[1].adapter == side and jobs[1].finish.text == ref[side, "Q2"]  # type: ignore[union-attr]
    # The chat's adapter came back together with its KV cache (not an emptied cache).
    assert engine.adapter == chat and engine._llm.n_tokens > len(engine.render(Q))
    jobs = run_jobs(engine, [(Q, chat, False)])
    assert jobs[0].finish.text == ref[chat, "Q"]  # type: ignore[union-attr]
    engine.set_adapter(None)


def test_a_job_with_a_broken_adapter_fails_with_adapter_error(engine: Engine, ref, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    jobs = run_jobs(engine, [(Q, tmp_path / "gone.gguf", False), (Q, None, False)])
    assert isinstance(jobs[0].error, AdapterError) and "gone.gguf" in str(jobs[0].error)
    assert jobs[1].finish.text == ref[None, "Q"]  # type: ignore[union-attr]


def decoded(engine: Engine) -> list[int]:
    """Counts the tokens each decode of the serving context evaluates, from now on."""
    counts: list[int] = []
    ctx = engine._llm._ctx
    original = type(ctx).decode

    def counting(batch):  # type: ignore[no-untyped-def]
        counts.append(batch.n_tokens())
        return original(ctx, batch)

    ctx.decode = counting  # type: ignore[method-assign]
    return counts


@pytest.mark.parametrize("cut", [0, 5])
def test_a_prompt_warmed_under_a_new_adapter_is_served_without_reading_it_again(
        engine: Engine, lora: Path, ref, cut: int) -> None:  # type: ignore[no-untyped-def]
    """The promotion pause (issue 5): the next prompt is evaluated under the new adapter in a side
    context, a step at a time while the base keeps answering, then moved in; the answer is the one
    a cold cache under the adapter gives, and only the prompt's unwarmed tail is evaluated."""
    a = lora.resolve()
    engine.set_adapter(None)
    prompt = engine.render(Q)
    engine.warm_start(prompt[: len(prompt) - cut], lora)
    assert engine.warming == (a, len(prompt) - cut)
    steps = 0
    while not engine.warm_step(8):
        steps += 1
        assert answer(engine, Q2) == ref[None, "Q2"]  # serving goes on, on the base, between steps
    assert steps >= 2 and engine.adapter is None
    assert engine.warm_install() is True
    assert engine.adapter == a and engine.warming is None and engine._llm.n_tokens == len(prompt) - cut
    counts = decoded(engine)
    try:
        assert answer(engine, Q) == ref[a, "Q"]
    finally:
        del engine._llm._ctx.decode
    assert counts[0] == max(cut, 1)  # the tail only (all matched: the last token, for its logits)
    engine.set_adapter(None)


def test_a_warm_up_can_be_dropped_and_keeps_its_adapter_loaded(engine: Engine, lora: Path, ref, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from rlhi_local.engine.model import MAX_LOADED_ADAPTERS

    engine.set_adapter(None)
    engine.warm_start(engine.render(Q), lora)
    assert engine.warm_install() is False  # not evaluated yet: nothing changes
    engine.warm_step(4)
    for i in range(MAX_LOADED_ADAPTERS + 1):  # an adapter a side context uses is never evicted
        engine._load_adapter(write_lora(tmp_path / f"w{i}.gguf", seed=30 + i, rank=1).resolve())
    assert lora.resolve() in engine._adapters
    engine.forget([])  # forgetting drops the warm-up (its KV may hold forgotten text)
    assert engine.warming is None and engine.warm_install() is False and engine.warm_step() is True
    assert engine.adapter is None and answer(engine, Q) == ref[None, "Q"]
    with pytest.raises(AdapterError):
        engine.warm_start(engine.render(Q), tmp_path / "gone.gguf")
    assert engine.warming is None
