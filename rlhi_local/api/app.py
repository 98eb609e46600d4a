"""The ASGI application: OpenAI-compatible routes plus rlhi-local's native ones.

Routes are `async def` so they all run on the event loop thread (the store is touched from there
and the model only from the engine's worker thread). `/openapi.json` documents every route.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict
import time
from typing import Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from .. import __version__
from ..errors import InvalidRequestError, NotFoundError
from ..mining import mine
from ..persona import facts_from_json, facts_to_json, render_card, user_edit_facts
from ..records import Persona
from ..training import activate, rollback
from .chat import DEFAULT_USER, chat_completions
from .learning import add_learning_routes
from .privacy import add_privacy_routes
from .errors import install_error_handlers
from .serving import check_activation, problems
from .middleware import BodyLimitMiddleware, TokenAuthMiddleware
from .schemas import (
    ID_PATTERN,
    ChatCompletion,
    ChatCompletionRequest,
    ConversationList,
    ConversationOut,
    Deleted,
    EditRequest,
    ErrorBody,
    FeedbackOut,
    FeedbackRequest,
    JobRunOut,
    Health,
    MessageOut,
    MiningOut,
    ModelList,
    PairList,
    PersonaHistory,
    PersonaIn,
    PersonaOut,
    RenameRequest,
    ScheduleOut,
    AdapterList,
    AdapterOut,
    TrainRequest,
    TrainRunList,
    TrainRunOut,
)
from .state import AppState

__all__ = ["create_app"]

_ERRORS = {
    400: {"model": ErrorBody, "description": "Invalid request"},
    404: {"model": ErrorBody, "description": "Unknown model or conversation"},
    413: {"model": ErrorBody, "description": "Body too large"},
    503: {"model": ErrorBody, "description": "Queue full, or the data dir refuses writes"},
    507: {"model": ErrorBody, "description": "Disk full: nothing of the request was stored"},
}


def create_app(state: AppState, token: str | None = None) -> FastAPI:
    """Build the app around a started daemon's state. `token` guards TCP requests."""
    app = FastAPI(
        title="rlhi-local",
        version=__version__,
        description=(
            "A private, on-device assistant daemon. OpenAI-compatible chat completions over a "
            "Unix socket. Name a conversation with the `x-rlhi-conversation` header or "
            "`metadata.conversation_id`; name the user with `user` (default: `local`). Send "
            "`x-rlhi-off-record: 1` to be answered without anything being stored."
        ),
        docs_url=None,
        redoc_url=None,
    )
    app.state.rlhi = state
    install_error_handlers(app)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={
            **_ERRORS,
            200: {
                "description": "The answer, or with `stream: true` an SSE stream of chunks",
                # The schema of one event (as OpenAPI 3.2's itemSchema): every `data` is a
                # chat.completion.chunk in JSON, or an error object, and the last one is [DONE].
                "content": {"text/event-stream": {"schema": {
                    "type": "object", "required": ["data"],
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                }}},
            },
        },
    )
    async def create_chat_completion(request: Request, body: ChatCompletionRequest) -> Response:
        """Answer the last user message; store the turn (unless off the record)."""
        return await chat_completions(request, body)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> dict[str, object]:
        spec = state.spec
        created = int(spec.path.stat().st_mtime) if spec.path.exists() else 0
        return {
            "object": "list",
            "data": [{"id": spec.id, "object": "model", "created": created, "owned_by": "rlhi-local"}],
        }

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, object]:
        spec = state.spec
        return {
            "status": "ok",
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - state.started_at, 3),
            "model": {
                "id": spec.id,
                "path": str(spec.path),
                "fingerprint": spec.fingerprint,
                "embedded": spec.embedded,
                "n_ctx": state.engine.n_ctx,
                "n_threads": state.engine.n_threads,
            },
            "queue": {"waiting": state.queue.waiting, "busy": state.queue.busy, "max": state.queue.max_waiting},
            "problems": problems(state),
            "learning": {"mining": state.config.learning.mining, "paused": bool(state.miner.paused()),
                         "runs": state.miner.runs,
                         "training": state.trainings.current,
                         "schedule": state.scheduler.settings.enabled if state.scheduler else False},
        }

    @app.get("/v1/conversations", response_model=ConversationList, responses=_ERRORS)
    async def list_conversations(
        user: str = Query(DEFAULT_USER, pattern=ID_PATTERN),
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=10**9),
    ) -> dict[str, object]:
        """The user's conversations, most recently active first."""
        rows = state.store.list_conversations(user, limit=limit, offset=offset)
        return {"object": "list", "data": [c.to_dict() for c in rows]}

    @app.get("/v1/conversations/{conversation_id}", response_model=ConversationOut, responses=_ERRORS)
    async def get_conversation(
        conversation_id: str, user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)
    ) -> dict[str, object]:
        """One conversation with every message (a tree: follow `parent_id`)."""
        return state.store.get_conversation(user, conversation_id).to_dict(with_messages=True)

    @app.delete("/v1/conversations/{conversation_id}", response_model=Deleted, responses=_ERRORS)
    async def delete_conversation(
        conversation_id: str, user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)
    ) -> dict[str, object]:
        """Delete a conversation and all its messages."""
        state.store.delete_conversation(user, conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    @app.patch("/v1/conversations/{conversation_id}", response_model=ConversationOut, responses=_ERRORS)
    async def rename_conversation(
        conversation_id: str, body: RenameRequest, user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)
    ) -> dict[str, object]:
        """Give a conversation a new title."""
        return state.store.rename_conversation(user, conversation_id, body.title).to_dict()

    @app.post("/v1/messages/{message_id}/edit", response_model=MessageOut, responses=_ERRORS)
    async def edit_message(message_id: str, body: EditRequest) -> dict[str, object]:
        """Store the user's rewrite of an answer as a `user_edit` sibling (the original stays)."""
        edit = state.store.edit_message(body.user or DEFAULT_USER, message_id, body.content)
        state.miner.notify(body.user or DEFAULT_USER)
        return edit.to_dict()

    @app.post("/v1/feedback", response_model=FeedbackOut, responses=_ERRORS)
    async def create_feedback(body: FeedbackRequest) -> dict[str, object]:
        """Thumbs up/down on an answer, or `choice`: the preferred of two or more answers."""
        feedback_id = state.store.record_feedback(body.user or DEFAULT_USER, body.message_id, body.kind)
        state.miner.notify(body.user or DEFAULT_USER)
        return {"id": feedback_id, "object": "feedback", "message_id": body.message_id, "kind": body.kind}

    @app.post("/v1/signals/mine", response_model=MiningOut, responses=_ERRORS)
    async def mine_now(user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)) -> dict[str, object]:
        """Label follow-ups and build pairs for the user now (normally done in the background)."""
        if state.miner.paused():
            raise InvalidRequestError(f"Nothing is mined while {state.miner.paused()}. "
                                      f"Resume learning first (`rlhi resume` or POST /v1/learning/resume).")
        await state.miner.idle()
        report = await asyncio.to_thread(mine, state.store, user, None,
                                         state.miner.detect(asyncio.get_running_loop()))
        return {"labelled": report.labelled, "added": dict(report.added),
                "dropped": dict(report.dropped), "pending": report.pending}

    @app.get("/v1/pairs", response_model=PairList, responses=_ERRORS)
    async def list_pairs(
        user: str = Query(DEFAULT_USER, pattern=ID_PATTERN),
        status: Literal["ready", "pending", "dropped"] | None = None,
    ) -> dict[str, object]:
        """The user's preference pairs with their provenance and filter decisions."""
        return {"object": "list", "data": [p.to_dict() for p in state.store.pairs(user, status=status)]}

    def persona_out(user: str, persona: Persona | None) -> dict[str, object]:
        if persona is None:
            return {"user_id": user, "version": 0, "card": "", "facts": [], "source": None, "created_at": None}
        facts = [asdict(f) | {"evidence": list(f.evidence)} for f in facts_from_json(persona.facts)]
        return persona.to_dict() | {"facts": facts}

    @app.get("/v1/persona", response_model=PersonaOut, responses=_ERRORS)
    async def get_persona(user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)) -> dict[str, object]:
        """The active persona: the card in the system prompt and the facts (with evidence)."""
        return persona_out(user, state.store.active_persona(user))

    @app.put("/v1/persona", response_model=PersonaOut, responses=_ERRORS)
    async def put_persona(body: PersonaIn, user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)) -> dict[str, object]:
        """Replace the visible facts: edited, added and removed facts become the user's own and
        are never changed by mining. Makes a new persona version."""
        active = state.store.active_persona(user)
        current = facts_from_json(active.facts) if active else []
        facts = user_edit_facts(current, [(f.key, f.text, f.deleted) for f in body.facts])
        persona = state.store.add_persona(user, render_card(facts), facts_to_json(facts), "user")
        if state.warmer is not None:
            state.warmer.changed(user)
        return persona_out(user, persona)

    @app.get("/v1/persona/history", response_model=PersonaHistory, responses=_ERRORS)
    async def persona_history(user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)) -> dict[str, object]:
        """Every persona version, oldest first."""
        return {"object": "list", "data": [persona_out(user, p) for p in state.store.persona_history(user)]}

    @app.post("/v1/train", response_model=TrainRunOut, status_code=202, responses=_ERRORS)
    async def start_training(body: TrainRequest) -> dict[str, object]:
        """Train a new adapter on the user's ready pairs (one run at a time: 503 while one runs).
        Poll `GET /v1/train/{id}` for progress; the gate decides whether it is served."""
        run = await asyncio.to_thread(state.trainings.start, body.user or DEFAULT_USER, body.now)
        return run.to_dict()

    @app.get("/v1/train", response_model=TrainRunList, responses=_ERRORS)
    async def list_training(user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)) -> dict[str, object]:
        """The user's recent training runs, newest first."""
        return {"object": "list", "data": [r.to_dict() for r in state.store.train_runs(user)]}

    @app.get("/v1/train/{run_id}", response_model=TrainRunOut, responses=_ERRORS)
    async def get_training(run_id: str) -> dict[str, object]:
        """One run: status, live progress (step, loss, reward accuracy, ETA) and final metrics."""
        return state.store.get_train_run(run_id).to_dict()

    @app.delete("/v1/train/{run_id}", response_model=TrainRunOut, responses=_ERRORS)
    async def cancel_training(run_id: str) -> dict[str, object]:
        """Stop a queued or running run; the served adapter is untouched."""
        return state.trainings.cancel(run_id).to_dict()

    @app.get("/v1/adapters", response_model=AdapterList, responses=_ERRORS)
    async def list_adapters(user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)) -> dict[str, object]:
        """Every adapter version of the user with its metrics and status (why rejected)."""
        active = state.store.active_adapter(user)
        return {"object": "list", "active": active.version if active else None,
                "data": [a.to_dict() for a in state.store.adapters(user)]}

    @app.post("/v1/adapters/rollback", response_model=AdapterList, responses=_ERRORS)
    async def rollback_adapter(user: str = Query(DEFAULT_USER, pattern=ID_PATTERN)) -> dict[str, object]:
        """Serve the previously active adapter (or the base) instead of the active one."""
        rollback(state.store, user)
        if state.warmer is not None:
            state.warmer.changed(user)
        return await list_adapters(user)

    @app.post("/v1/adapters/{version}/activate", response_model=AdapterOut, responses=_ERRORS)
    async def activate_adapter(
        # Bounded: an integer past SQLite's 64-bit INTEGER made the store raise OverflowError (a 500).
        version: int = Path(ge=1, le=2**31 - 1),
        user: str = Query(DEFAULT_USER, pattern=ID_PATTERN),
    ) -> dict[str, object]:
        """Serve this version from the next request on (an adapter of another base is refused)."""
        await check_activation(state, user, version)  # a file llama.cpp cannot load is refused
        adapter = activate(state.store, state.spec, user, version)
        if state.warmer is not None:
            state.warmer.changed(user)
        return adapter.to_dict()

    @app.get("/v1/schedule", response_model=ScheduleOut, responses=_ERRORS)
    async def get_schedule() -> dict[str, object]:
        """The learning jobs: each one's last run (or why it skipped), next run and live progress."""
        jobs = state.scheduler.status() if state.scheduler else []
        return {"object": "schedule", "enabled": bool(state.scheduler and state.scheduler.settings.enabled),
                "paused": bool(state.miner.paused()), "paused_reason": state.miner.paused(),
                "jobs": [j.to_dict() for j in jobs]}

    @app.post("/v1/schedule/{job}/run", response_model=JobRunOut, responses=_ERRORS)
    async def run_job_now(job: Literal["detector", "persona", "reward", "sampling", "training"]) -> dict[str, object]:
        """Run one learning job now, with the same checks as a scheduled run; returns its outcome."""
        if state.scheduler is None:
            raise NotFoundError("The daemon runs no learning schedule.")
        return (await state.scheduler.run(job)).to_dict()

    add_learning_routes(app, state)
    add_privacy_routes(app, state)
    for route in app.routes:
        if isinstance(route, APIRoute):
            route.operation_id = route.name
    # Added last runs first: the token is checked before a body is read.
    app.add_middleware(BodyLimitMiddleware, limit=state.config.server.max_body_bytes)
    app.add_middleware(TokenAuthMiddleware, token=token)
    return app
