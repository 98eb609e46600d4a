"""Keep the next answer fast when what conditions it changes: a promoted adapter, a new persona.

Either change invalidates the KV cache of the user's conversation, and the next answer would
first re-read its whole prompt (~4 ms a token on two cores: 1.9 s for a 450-token conversation,
measured by benchmarks/training.py). So the daemon re-reads it *before* that answer, in the
background (`RequestQueue.warm`: short steps between requests, in a side context):

- an adapter the daemon promoted (training): until the conversation is warmed under it, the
  user's requests are answered by the adapter served before, and each stored answer records that
  version. The switch happens between two answers, at most `SWITCH_TIMEOUT_S` later (after that
  the new adapter answers, cold).
- an adapter the user activated (`rlhi adapters activate`, `rollback`) or a new persona card
  (mined or edited): the next request gets it at once, as the API promises; it starts from the
  warmed conversation if that is ready by then, else it reads the prompt itself.

Only the last answered conversation is warmed (the one llama.cpp's single cache holds), and only
when it belongs to the user whose adapter or persona changed. What is kept in memory for this is
that conversation's messages: the text the cache holds anyway; `forget` drops both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..persona import with_persona
from ..records import Adapter
from ..store import FORGOTTEN
from ..training import adapter_file

if TYPE_CHECKING:
    from .state import AppState

__all__ = ["Warmer"]

log = logging.getLogger(__name__)

SWITCH_TIMEOUT_S = 120.0
"""The longest the adapter served before may go on answering after another one was activated."""


@dataclass
class _Conversation:
    """The last answered conversation: what the next request of its user will most likely extend."""

    user_id: str
    messages: list[dict[str, str]]
    """As the client sent them (no persona), then the answer."""
    system_prompt: str
    """The default system prompt the request got ("" when it brought its own)."""


@dataclass
class _Switch:
    old: Adapter | None
    new: int | None
    started: float
    task: asyncio.Task[None] | None = None


class Warmer:
    """Decides which adapter answers a user while a switch warms up, and starts the warm-ups."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._last: _Conversation | None = None
        self._served: dict[str, int | None] = {}
        """The adapter version each user's requests were last answered with (no explicit choice)."""
        self._switches: dict[str, _Switch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the chat route tells it ---------------------------------------------------------------

    def answered(self, user_id: str, messages: list[dict[str, str]], system_prompt: str, answer: str) -> None:
        """A request of `user_id` was answered: its conversation is now the one in the cache."""
        self._last = _Conversation(user_id, [*messages, {"role": "assistant", "content": answer}], system_prompt)

    def serving(self, user_id: str, active: Adapter | None) -> Adapter | None:
        """The adapter that answers `user_id`'s next request, `active` being the one that should:
        the one served before while a switch to `active` warms up."""
        new = active.version if active else None
        switch = self._switches.get(user_id)
        if switch is not None:
            if (switch.new == new and time.monotonic() - switch.started < SWITCH_TIMEOUT_S
                    and self._usable(user_id, switch.old)):
                return switch.old
            self._end(user_id, switch)
        self._served[user_id] = new
        return active

    # -- what changes it ---------------------------------------------------------------------------

    def changed(self, user_id: str, hold: bool = False) -> None:
        """`user_id`'s active adapter or persona changed: warm their conversation for it, if it is
        the cached one. With `hold` (a promotion by the daemon), the adapter served before goes on
        answering until the warm-up is done; without (`activate`, `rollback`, a new persona), the
        next request gets the change at once, from the warmed prompt if it is ready by then.
        Call on the event loop."""
        if user_id in self._switches or self._last is None or self._last.user_id != user_id:
            return
        active = self._active(user_id)
        if hold and user_id in self._served and (active.version if active else None) != self._served[user_id]:
            self._begin(user_id, self._adapter(user_id, self._served[user_id]))
        else:
            self._spawn(self._warm(user_id, active, abandon_on_request=True))

    def forget(self) -> None:
        """Drop the remembered conversation and every switch (`rlhi forget`)."""
        self._last = None
        for user_id, switch in list(self._switches.items()):
            self._end(user_id, switch)
        self._served.clear()

    # -- inside ---------------------------------------------------------------------------------

    def _begin(self, user_id: str, old: Adapter | None) -> bool:
        """Start switching `user_id` to their active adapter; False if there is nothing to warm
        (their conversation is not the cached one) or the old adapter may not answer any more."""
        if self._last is None or self._last.user_id != user_id or not self._usable(user_id, old):
            return False
        active = self._active(user_id)
        switch = _Switch(old, active.version if active else None, time.monotonic())
        self._switches[user_id] = switch
        switch.task = self._spawn(self._warm(user_id, active, abandon_on_request=False, switch=switch))
        log.info("warming user=%s's conversation under %s (v%s answers meanwhile)", user_id,
                 f"v{switch.new}" if switch.new else "the base", old.version if old else " base")
        return True

    def _end(self, user_id: str, switch: _Switch) -> None:
        if self._switches.get(user_id) is switch:
            del self._switches[user_id]
            self._served[user_id] = switch.new

    async def _warm(self, user_id: str, adapter: Adapter | None, *, abandon_on_request: bool,
                    switch: _Switch | None = None) -> None:
        state, last = self.state, self._last
        try:
            if last is None:
                return
            card = ""
            if state.config.learning.persona_in_prompt:
                persona = state.store.active_persona(user_id)
                card = persona.card if persona is not None else ""
            messages = with_persona(last.messages, card, last.system_prompt)
            tokens = await asyncio.to_thread(state.engine.render, messages)
            started = time.perf_counter()
            ready = await state.queue.warm(tokens, adapter_file(adapter) if adapter else None,
                                           abandon_on_request=abandon_on_request)
            log.info("warmed user=%s tokens=%d ready=%s in %.2fs", user_id, len(tokens), ready,
                     time.perf_counter() - started)
        except Exception:  # boundary: a failed warm-up only costs the next answer its speed
            log.exception("warming user=%s's conversation failed", user_id)
        finally:
            if switch is not None:
                self._end(user_id, switch)

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _active(self, user_id: str) -> Adapter | None:
        from .serving import adapter_problem

        active = self.state.store.active_adapter(user_id)
        return None if active is None or adapter_problem(self.state, active) is not None else active

    def _adapter(self, user_id: str, version: int | None) -> Adapter | None:
        if version is None:
            return None
        try:
            return self.state.store.get_adapter(user_id, version)
        except Exception:  # deleted since: not usable
            return _GONE

    def _usable(self, user_id: str, adapter: Adapter | None) -> bool:
        """May `adapter` (None: the base) still answer `user_id` for a moment?"""
        from .serving import adapter_problem

        if adapter is None:
            return True
        if adapter is _GONE:
            return False
        fresh = self._adapter(user_id, adapter.version)
        return (fresh is not _GONE and fresh is not None and not fresh.reason.startswith(FORGOTTEN)
                and adapter_problem(self.state, fresh) is None)


_GONE: Adapter = object()  # type: ignore[assignment]
"""A version that no longer exists."""
