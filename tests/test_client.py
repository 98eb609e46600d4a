"""The typed client (sync and async) and the FIFO queue behind the socket."""

from __future__ import annotations

import asyncio

import pytest

from rlhi_local.client import AsyncClient, Client
from rlhi_local.config import ModelConfig, load_config
from rlhi_local.engine import Engine, RequestQueue, SamplingParams
from rlhi_local.errors import APIError, BusyError, DaemonError
from rlhi_local.models import resolve_model
from tests.conftest import RunningDaemon, rlhi_cmd


def test_async_client_chat_stream_and_conversations(daemon: RunningDaemon) -> None:
    async def main() -> None:
        async with AsyncClient(daemon.socket) as c:
            assert (await c.health())["status"] == "ok"
            assert (await c.models())[0]["id"] == "SmolLM2-135M-Instruct.Q4_1"
            whole = await c.chat([{"role": "user", "content": "Say yes."}], max_tokens=6, temperature=0,
                                 conversation_id="async-conv")
            chunks = [ch async for ch in c.stream_chat([{"role": "user", "content": "Say yes."}],
                                                        max_tokens=6, temperature=0)]
            assert "".join(ch.text for ch in chunks) == whole.text
            assert chunks[0].conversation_id and chunks[0].message_id
            assert chunks[-1].usage is not None
            conv = await c.conversation("async-conv")
            assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
            await c.delete_conversation("async-conv")
            with pytest.raises(APIError) as info:
                await c.conversation("async-conv")
            assert info.value.status_code == 404

    asyncio.run(main())


def test_client_without_daemon_says_how_to_start_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DaemonError, match="rlhi serve"):
        Client(tmp_path / "none.sock").health()

    async def main() -> None:
        async with AsyncClient(tmp_path / "none.sock") as c:
            await c.health()

    with pytest.raises(DaemonError, match="rlhi serve"):
        asyncio.run(main())


def test_queue_is_fifo_and_never_interleaves() -> None:
    engine = Engine(resolve_model(load_config()), ModelConfig())
    events: list[tuple[str, str]] = []

    async def main() -> None:
        queue = RequestQueue(engine, max_waiting=2)
        prompt = engine.render([{"role": "user", "content": "Write two sentences about tea."}])
        jobs = {}
        for name in "ABC":
            if name == "C":
                with pytest.raises(BusyError):
                    queue.reserve()  # A and B wait (A has not started yet): C is one too many
                await asyncio.sleep(0.3)  # let A start; now only B waits
            queue.reserve()
            jobs[name] = queue.submit(prompt, SamplingParams(max_tokens=12, temperature=0))

        async def consume(name: str) -> None:
            async for _ in jobs[name].pieces():
                events.append((name, "piece"))
            await jobs[name].wait()
            events.append((name, "done"))

        await asyncio.gather(*(consume(n) for n in "ABC"))
        queue.close()

    try:
        asyncio.run(main())
    finally:
        engine.close()
    order = [name for name, _ in events]
    # All of A, then all of B, then all of C: arrival order, no interleaving.
    assert order == sorted(order)
    assert [e for e in events if e[1] == "done"] == [("A", "done"), ("B", "done"), ("C", "done")]


def test_help_lists_the_commands() -> None:
    out = rlhi_cmd("--help")
    assert out.returncode == 0
    for command in ("chat", "ask", "serve", "status", "stop", "models", "path"):
        assert command in out.stdout
