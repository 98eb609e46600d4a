"""Keep the next answer fast when what conditions it changes: a promoted adapter, a new persona.

Either change invalidates the KV cache of the user's conversation, and the next answer would
first re-read its whole prompt (~4 ms a token on two cores: 1.9 s for a 450-token conversation,
measured by benchmarks/training.py). So the daemon re-reads it *before* that answer, in the
background (`RequestQueue.warm`: steps of a tenth of a second between requests, in a side
context), and the first request that wants the new adapter starts from it:

- a trained adapter that passed the gate is warmed before it is promoted (`prewarm`, called by
  the training run): until then the adapter served so far answers, as the registry says; from
  the promotion on, the new one answers without a pause.
- an adapter the user activates (`rlhi adapters activate`, `rollback`) or a new persona card
  (mined or edited) applies to the very next request, as the API promises: it starts from the
  warmed conversation if that is ready by then, else it reads the prompt itself (`changed`).

Only the last answered conversation is warmed (the one llama.cpp's single cache holds), and only
when it belongs to the user whose adapter or persona changed. What is kept in memory for this is
that conversation's messages: the text the cache holds anyway; `forget` drops both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..persona import with_persona
from ..training import adapter_file

if TYPE_CHECKING:
    from .state import AppState

__all__ = ["Warmer"]

log = logging.getLogger(__name__)


@dataclass
class _Conversation:
    """The last answered conversation: what the next request of its user will most likely extend."""

    user_id: str
    messages: list[dict[str, str]]
    """As the client sent them (no persona), then the answer."""
    system_prompt: str
    """The default system prompt the request got ("" when it brought its own)."""


class Warmer:
    """Starts the warm-ups of the conversation in the cache when its adapter or persona changes."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._last: _Conversation | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def answered(self, user_id: str, messages: list[dict[str, str]], system_prompt: str, answer: str) -> None:
        """A request of `user_id` was answered: its conversation is now the one in the cache."""
        self._last = _Conversation(user_id, [*messages, {"role": "assistant", "content": answer}], system_prompt)

    async def prewarm(self, user_id: str, adapter: Path) -> bool:
        """Warm `user_id`'s conversation under `adapter` (not active yet) and wait until it is
        ready; False when there is nothing to warm or it was superseded."""
        return await self._warm(user_id, adapter, abandon_on_request=False)

    def changed(self, user_id: str) -> None:
        """`user_id`'s active adapter or persona changed: warm their conversation for the next
        request, which gets the change whether or not this is done. Call on the event loop."""
        from .serving import answering_adapter

        active = answering_adapter(self.state, user_id, None)  # what this user's next request gets
        task = asyncio.get_running_loop().create_task(
            self._warm(user_id, adapter_file(active) if active else None, abandon_on_request=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self) -> None:
        """Drop the remembered conversation (`rlhi forget`; the engine drops what was warmed)."""
        self._last = None

    async def _warm(self, user_id: str, adapter: Path | None, *, abandon_on_request: bool) -> bool:
        state, last = self.state, self._last
        if last is None or last.user_id != user_id:
            return False
        try:
            card = ""
            if state.config.learning.persona_in_prompt:
                persona = state.store.active_persona(user_id)
                card = persona.card if persona is not None else ""
            messages = with_persona(last.messages, card, last.system_prompt)
            tokens = await asyncio.to_thread(state.engine.render, messages)
            started = time.perf_counter()
            ready = await state.queue.warm(tokens, adapter, abandon_on_request=abandon_on_request)
            log.info("warmed user=%s tokens=%d adapter=%s ready=%s in %.2fs", user_id, len(tokens),
                     adapter.parent.name if adapter else "base", ready, time.perf_counter() - started)
            return ready
        except Exception:  # boundary: a failed warm-up only costs the next answer its speed
            log.exception("warming user=%s's conversation failed", user_id)
            return False
