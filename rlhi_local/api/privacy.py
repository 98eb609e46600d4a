"""`GET /v1/export` and `POST /v1/forget`: a user's data out as JSON Lines, or parts of it gone.

The work is `rlhi_local.privacy`'s; this module adds what only the daemon holds: the engine
frees retired adapters and its prompt cache, and mining is kept from writing back what it read
before the forget (a run that overlapped it is followed by another persona scrub).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query
from starlette.responses import Response, StreamingResponse

from ..privacy import export_lines, forget, scrub_persona
from .chat import DEFAULT_USER
from .schemas import ID_PATTERN, ErrorBody, ForgetOut, ForgetRequest
from .state import AppState

__all__ = ["add_privacy_routes"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request (no selector, a bad date, an empty range)"},
    404: {"model": ErrorBody, "description": "Unknown conversation"},
}


def add_privacy_routes(app: FastAPI, state: AppState) -> None:
    @app.get("/v1/export", responses={
        200: {"description": "One JSON object per line: `{\"table\": ..., \"row\": {...}}` (README: \"Your data\")",
              "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
        400: {"model": ErrorBody, "description": "Invalid user name"}})
    async def export_data(user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)) -> Response:
        """Everything stored about the user, streamed as JSON Lines: a header line
        (`"table": "export"`), one line per row of every per-user table, and a last line
        (`"table": "export_end"`) with the row counts."""
        return StreamingResponse(
            export_lines(state.store, user), media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="rlhi-export-{user}.jsonl"',
                     "cache-control": "no-store"})

    @app.post("/v1/forget", response_model=ForgetOut, responses=_ERRORS)
    async def forget_data(body: ForgetRequest) -> dict[str, object]:
        """Forget one conversation, a date range or everything of a user: rows deleted, the
        database vacuumed and its WAL truncated, adapters and reward models that learned from it
        retired and their files deleted; a retraining run is queued when the served adapter was
        retired and enough pairs remain."""
        user = body.user or DEFAULT_USER
        await state.miner.idle()
        runs = state.miner.runs
        report = await asyncio.to_thread(
            forget, state.store, user, conversation_id=body.conversation_id, since=body.since,
            until=body.until, everything=body.everything, trainings=state.trainings)
        paths = [Path(p) for p in report.adapter_paths]
        if state.warmer is not None:
            state.warmer.forget()
        await state.queue.run_exclusive(lambda engine: engine.forget(paths))
        await state.miner.idle()
        if state.miner.runs != runs:  # it read messages before they were deleted: scrub what it wrote
            await asyncio.to_thread(state.store.scrub_personas, user, scrub_persona)
        return report.to_dict()
