"""One model, many callers: a bounded FIFO that runs one generation at a time.

Requests wait on an asyncio lock (FIFO in CPython) and are served whole, never interleaved. The
generation itself runs on one dedicated worker thread so the event loop keeps accepting
connections; pieces cross back to the loop with `call_soon_threadsafe`. Over `max_waiting`
waiting requests, `reserve` raises `BusyError` (the API answers 503). Each job names its LoRA
adapter; the worker switches to it before generating, so a swap never lands mid-answer. An adapter
llama.cpp cannot load is remembered (until its file changes): a job that may fall back answers
with the base model instead of failing. `warm` evaluates a prompt ahead of its request (under a
newly promoted adapter, or with a new persona) in short steps queued like jobs, so a request waits
behind one step at most.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, TypeVar

from ..errors import AdapterError, BusyError, EngineError
from .model import Engine, Finish, Piece, SamplingParams

__all__ = ["Job", "RequestQueue"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_END = object()


@dataclass(eq=False)
class Job:
    """One admitted request. `cancel()` stops it at the next token (or before it starts)."""

    prompt: list[int]
    params: SamplingParams
    cancel_event: threading.Event = field(default_factory=threading.Event)
    finish: Finish | None = None
    error: BaseException | None = None
    background: bool = False
    """A side job (learning): it keeps the chat's KV cache intact (`Engine.keep_cache`)."""
    adapter: Path | None = None
    """The LoRA adapter to answer with (None: the base model). Once the job started, the resolved
    path of the adapter that actually produced the answer (`Engine.adapter`)."""
    text_parts: list[str] = field(default_factory=list)
    """The text generated so far (kept for an answer that fails half-way)."""
    fallback: bool = False
    """If the adapter cannot be loaded, answer with the base model instead of failing (the
    user's active adapter; an adapter a request names is never swapped silently)."""
    adapter_error: str | None = None
    """Set when the job fell back: why its adapter could not be used."""
    _pieces: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    def cancel(self) -> None:
        self.cancel_event.set()

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text as it is generated; raises the job's error, if any, at the end.

        Pieces that queued up while the consumer was busy come out joined, so a slow reader
        costs fewer writes, not a growing backlog.
        """
        ended = False
        while not ended:
            item = await self._pieces.get()
            parts: list[str] = []
            while True:
                if item is _END:
                    ended = True
                    break
                parts.append(item)  # type: ignore[arg-type]
                if self._pieces.empty():
                    break
                item = self._pieces.get_nowait()
            if parts:
                yield "".join(parts)
        if self.error is not None:
            raise self.error

    async def wait(self) -> Finish:
        await self._done.wait()
        if self.error is not None:
            raise self.error
        assert self.finish is not None
        return self.finish


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


class RequestQueue:
    """Serialises access to the `Engine`."""

    def __init__(self, engine: Engine, max_waiting: int) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._running = False
        self._jobs: set[Job] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlhi-engine")
        self._unreadable: dict[Path, tuple[tuple[int, int] | None, str]] = {}
        """Adapters llama.cpp refused: resolved path -> (the file's size and mtime then, why)."""
        self._served = 0
        """Requests (not background jobs) run so far."""
        self._warm_id = 0
        """Which `warm` call is current: a newer one supersedes the one in progress."""

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._running

    def reserve(self) -> None:
        """Admit one more request or raise `BusyError`; pair with `submit`."""
        if self._waiting >= self.max_waiting:
            raise BusyError(
                f"The model is busy: {self._waiting} requests are waiting (server.max_queue="
                f"{self.max_waiting}). Retry shortly, or raise server.max_queue."
            )
        self._waiting += 1

    def unreserve(self) -> None:
        """Give back a reservation that will not be submitted."""
        self._waiting -= 1

    def adapter_problem(self, path: Path) -> str | None:
        """Why llama.cpp could not load the adapter at `path`, or None if no load of it failed.
        Forgotten once the file changes (replaced or restored), so the next job tries it again."""
        key = Path(path).resolve()
        found = self._unreadable.get(key)
        if found is None:
            return None
        if found[0] != _stamp(key):
            self._unreadable.pop(key, None)
            return None
        return found[1]

    def probe_adapter(self, path: Path) -> str | None:
        """Load the adapter at `path` now, keeping it loaded; returns (and remembers) why it cannot
        be used, else None. Only between jobs: at start-up, or through `check_adapter`."""
        try:
            self.engine.load_adapter(path)
        except AdapterError as exc:
            self._note_unreadable(Path(path), exc)
            return str(exc)
        self._unreadable.pop(Path(path).resolve(), None)
        return None

    async def check_adapter(self, path: Path) -> str | None:
        """`probe_adapter` on the engine's thread, between two answers (it waits its turn)."""
        return await self.run_exclusive(lambda _engine: self.probe_adapter(path))

    def _note_unreadable(self, path: Path, exc: AdapterError) -> None:
        key = path.resolve()
        if key not in self._unreadable:
            log.error("adapter unreadable, its user is answered by the base model: %s", exc)
        self._unreadable[key] = (_stamp(key), str(exc))

    def submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        on_finish: Callable[[Job], None] | None = None,
        background: bool = False,
        adapter: Path | None = None,
        fallback: bool = False,
    ) -> Job:
        """Start a reserved job; `on_finish` runs on the loop once it ended, whatever happened."""
        job = Job(prompt=prompt, params=params, background=background, adapter=adapter, fallback=fallback)
        self._jobs.add(job)
        asyncio.get_running_loop().create_task(self._run(job, on_finish))
        return job

    async def _run(self, job: Job, on_finish: Callable[[Job], None] | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self._lock:
                self._waiting -= 1
                self._running = True
                try:
                    await loop.run_in_executor(self._executor, self._generate, job, loop)
                finally:
                    self._running = False
        except BaseException as exc:  # boundary: the job's owner sees the error, the loop lives
            if job.error is None:
                job.error = exc if isinstance(exc, Exception) else EngineError(repr(exc))
            log.exception("generation job failed")
        finally:
            self._jobs.discard(job)
            job._pieces.put_nowait(_END)
            job._done.set()
            if on_finish is not None:
                try:
                    on_finish(job)
                except Exception:  # boundary: a failed bookkeeping step must not kill the loop
                    log.exception("on_finish failed")

    def _generate(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        """Runs on the worker thread."""
        if not job.background:
            self._served += 1
            if self.engine.warm_ready(job.adapter):
                self.engine.warm_install()  # this request starts from the prompt warmed for it
        if job.cancel_event.is_set():
            job.finish = Finish("cancelled", len(job.prompt), 0, "")
            return
        try:
            with self.engine.keep_cache() if job.background else nullcontext():
                # Inside keep_cache: the chat's KV is saved before a swap drops it.
                try:
                    self.engine.set_adapter(job.adapter)
                except AdapterError as exc:
                    if not job.fallback or job.adapter is None:
                        raise
                    self._note_unreadable(Path(job.adapter), exc)
                    job.adapter_error = str(exc)
                    self.engine.set_adapter(None)
                job.adapter = self.engine.adapter
                for item in self.engine.generate(job.prompt, job.params, job.cancel_event):
                    if isinstance(item, Piece):
                        job.text_parts.append(item.text)
                        loop.call_soon_threadsafe(job._pieces.put_nowait, item.text)
                    else:
                        job.finish = item
        except Exception as exc:  # boundary: reported through the job
            job.error = exc
            log.exception("engine failed")

    async def run_exclusive(self, fn: Callable[[Engine], T]) -> T:
        """Run `fn(engine)` on the worker thread between requests, after those already queued:
        for maintenance that must never land mid-answer (`Engine.forget`)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            return await loop.run_in_executor(self._executor, fn, self.engine)

    async def warm(self, tokens: list[int], adapter: Path | None, step_s: float = 0.1,
                   abandon_on_request: bool = False) -> bool:
        """Evaluate `tokens` under `adapter` ahead of the request that will start with them, in
        steps of about `step_s` seconds queued between jobs (a request waits behind one step at
        most). Returns True once all are evaluated: the next request that asks for `adapter`
        then starts from them (`Engine.warm_install`) and reads only its own new tokens; requests
        for other adapters leave them be. False when a newer `warm` superseded this one, or (with
        `abandon_on_request`) a request was served meanwhile, which made it moot."""
        self._warm_id += 1
        me, served = self._warm_id, self._served
        size = 16  # tokens per step, then sized from the last step's speed

        def current() -> bool:
            return me == self._warm_id and not (abandon_on_request and self._served != served)

        def start(engine: Engine) -> None:
            if current():
                engine.warm_start(tokens, adapter)

        def step(engine: Engine) -> bool | None:
            nonlocal size
            if not (current() and engine.warming):
                return None
            began = time.perf_counter()
            done = engine.warm_step(size)
            per_token = (time.perf_counter() - began) / size
            size = max(4, min(512, int(step_s / max(per_token, 1e-5))))
            return done

        await self.run_exclusive(start)
        while True:
            done = await self.run_exclusive(step)
            if done is None:  # superseded, abandoned or dropped (`Engine.forget`)
                if me == self._warm_id:
                    await self.run_exclusive(lambda engine: engine.warm_cancel())
                return False
            if done:
                return True

    def close(self) -> None:
        """Stop every job at its next token and wait for the worker: the model may then be freed."""
        for job in list(self._jobs):
            job.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
