"""`/v1/learning`: learning as a whole, paused or running, switched at run time.

`paused` is one concept with two switches: the config's `learning.mining = false`, and the
run-time one (`rlhi pause`, `POST /v1/learning/pause`, F5 in the chat), which is stored, so a
restarted daemon stays paused until resumed. While paused nothing learns: background mining
and rewrites stop (a pass under way finishes its user, a sample stops at its next token), every
scheduled job skips ("learning is paused"; one already running finishes, sampling stops at its
next answer), a queued or running training run is cancelled and no new one starts. Chats are
still answered and stored; resuming mines what was said meanwhile.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel

from .state import AppState

__all__ = ["LearningOut", "add_learning_routes", "learning_state"]


class LearningOut(BaseModel):
    object: Literal["learning"] = "learning"
    paused: bool
    reason: str
    """Why learning is paused ("" when it runs): the config's switch, or `rlhi pause`."""
    changed_at: str | None
    """When the run-time switch last changed (None: never used)."""
    cancelled_run: str | None = None
    """The training run that this pause cancelled, if one was queued or running."""


def learning_state(state: AppState) -> dict[str, Any]:
    reason = state.miner.paused()
    _, changed_at = state.store.learning_paused()
    return {"object": "learning", "paused": bool(reason), "reason": reason, "changed_at": changed_at}


def add_learning_routes(app: FastAPI, state: AppState) -> None:
    """Register the three routes on `app` (before its operation ids are set)."""

    @app.get("/v1/learning", response_model=LearningOut)
    async def get_learning() -> dict[str, Any]:
        """Whether learning is paused, and why."""
        return learning_state(state)

    @app.post("/v1/learning/pause", response_model=LearningOut)
    async def pause_learning() -> dict[str, Any]:
        """Pause learning as a whole (kept across restarts): nothing is mined, sampled or trained
        until resumed, and a queued or running training run is cancelled. Chats are still stored."""
        state.miner.pause()
        await state.miner.idle()  # a mining pass already under way finishes its user first
        cancelled = state.trainings.current
        if cancelled is not None:
            state.trainings.cancel(cancelled)
        return learning_state(state) | {"cancelled_run": cancelled}

    @app.post("/v1/learning/resume", response_model=LearningOut)
    async def resume_learning() -> dict[str, Any]:
        """Learn again; what was said while paused is mined soon after. The config's
        `learning.mining = false`, if set, still pauses (the answer says so)."""
        state.miner.resume()
        return learning_state(state)
