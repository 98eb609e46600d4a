"""`POST /v1/chat/completions`: validate, store the turn, queue the generation, stream or answer.

Order matters: everything that can refuse a request (model name, context length, a full queue)
runs before the store is touched, so a refused request leaves no half-stored turn; once the turn
is stored, the answer row exists, and whatever happens to the client, the job finishes it
(`complete`, or `incomplete` with the partial text when the client left or generation failed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, replace
from typing import AsyncIterator

from fastapi import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..engine import Job, SamplingParams
from ..errors import RlhiError, StoreError
from ..persona import with_persona
from ..records import NewMessage
from ..store import PlacedTurn
from ..training import adapter_file
from .errors import error_response, rlhi_error_response
from .serving import answering_adapter
from .schemas import ID_PATTERN, ChatCompletionRequest
from .state import AppState

__all__ = ["chat_completions"]

log = logging.getLogger(__name__)

DEFAULT_USER = "local"
MODEL_ALIASES = ("default", "rlhi")


@dataclass(frozen=True)
class _Turn:
    completion_id: str
    created: int
    placed: PlacedTurn | None
    user_id: str
    persona_version: int | None
    adapter_version: int | None

    def ids(self) -> dict[str, object]:
        p = self.placed
        return {
            "conversation_id": p.conversation_id if p else None,
            "message_id": p.answer_id if p else None,
            "parent_id": p.parent_id if p else None,
            "new_message_ids": list(p.new_message_ids) if p else [],
            "origin": p.answer_origin if p else None,
            "stored": p is not None,
            "persona_version": self.persona_version,
            "adapter_version": self.adapter_version,
        }

    def headers(self) -> dict[str, str]:
        p = self.placed
        adapter = {"x-rlhi-adapter": f"v{self.adapter_version}" if self.adapter_version else "base"}
        if p is None:
            return {"x-rlhi-stored": "false", **adapter}
        return {
            **adapter,
            "x-rlhi-stored": "true",
            "x-rlhi-conversation": p.conversation_id,
            "x-rlhi-message": p.answer_id or "",
        }


def _conversation_id(request: Request, body: ChatCompletionRequest) -> str | None:
    value = request.headers.get("x-rlhi-conversation") or (body.metadata or {}).get("conversation_id")
    if value is not None and not re.match(ID_PATTERN, value):
        raise ValueError(f"conversation id {value[:80]!r} must match {ID_PATTERN}")
    return value


def _requested_adapter(request: Request, body: ChatCompletionRequest) -> str | None:
    """`x-rlhi-adapter` / `metadata.adapter`: "base", or a version ("v3"); unset: the active one."""
    return request.headers.get("x-rlhi-adapter") or (body.metadata or {}).get("adapter")


def _off_record(request: Request, body: ChatCompletionRequest) -> bool:
    flag = request.headers.get("x-rlhi-off-record") or (body.metadata or {}).get("off_record", "")
    return flag.strip().lower() in {"1", "true", "yes"}


def _sampling(state: AppState, body: ChatCompletionRequest, prompt_len: int) -> SamplingParams:
    g = state.config.generation
    # A max_tokens beyond the context left is capped (finish_reason "length"), as OpenAI-style
    # servers for local models do, rather than refused.
    max_tokens = body.max_completion_tokens or body.max_tokens or g.max_tokens
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return SamplingParams(
        max_tokens=max(1, min(max_tokens, state.engine.n_ctx - prompt_len)),
        temperature=g.temperature if body.temperature is None else body.temperature,
        top_p=g.top_p if body.top_p is None else body.top_p,
        top_k=40 if body.top_k is None else body.top_k,
        min_p=0.05 if body.min_p is None else body.min_p,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop=stop,
        seed=None if body.seed is None else body.seed % (2**32),
        ignore_eos=body.ignore_eos,
    )


async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    state: AppState = request.app.state.rlhi
    state.miner.touch()
    spec = state.spec
    if body.model not in (spec.id, spec.path.name, *MODEL_ALIASES):
        return error_response(
            404,
            f"The model {body.model!r} does not exist here. This daemon serves {spec.id!r} "
            f"(also reachable as 'default'); GET /v1/models lists it.",
            "model",
            "model_not_found",
        )
    history = [
        NewMessage(role="system" if m.role == "developer" else m.role, content=m.text())
        for m in body.messages
    ]
    if history[-1].role != "user":
        return error_response(
            400, "The last message must come from the user: the daemon answers it.",
            f"messages.{len(history) - 1}.role", "invalid_request",
        )
    try:
        conversation_id = _conversation_id(request, body)
    except ValueError as exc:
        return error_response(400, str(exc), "x-rlhi-conversation", "invalid_request")
    user_id = body.user or DEFAULT_USER
    card = ""
    persona_version = None
    if state.config.learning.persona_in_prompt:
        persona = state.store.active_persona(user_id)
        if persona is not None and persona.card:
            card, persona_version = persona.card, persona.version
    system_prompt = "" if history[0].role == "system" else state.config.generation.system_prompt
    prompt_messages = with_persona([{"role": m.role, "content": m.content} for m in history],
                                   card, system_prompt)
    # Off the event loop: llama.cpp tokenizes in time quadratic in the special tokens (4,096 tiny
    # messages took 13 s), and no other request may wait for that. Tokenizing only reads the
    # vocabulary, which is safe beside a generation (llama.cpp's own server does the same).
    prompt = await asyncio.to_thread(state.engine.render, prompt_messages)  # ContextLengthError → 400
    params = _sampling(state, body, len(prompt))
    requested = _requested_adapter(request, body)
    adapter = answering_adapter(state, user_id, requested)  # 400/404; an unservable active one: the base

    state.queue.reserve()  # BusyError → 503, before anything is stored
    try:
        placed = None
        if not _off_record(request, body):
            placed = state.store.place_turns(
                body.user or DEFAULT_USER,
                history,
                conversation_id=conversation_id,
                model=spec.id,
                model_fingerprint=spec.fingerprint,
                adapter_version=str(adapter.version) if adapter else None,
            )
    except BaseException:
        state.queue.unreserve()
        raise
    turn = _Turn(
        completion_id=f"chatcmpl-{placed.answer_id if placed and placed.answer_id else time.time_ns()}",
        created=int(time.time()),
        placed=placed,
        user_id=user_id,
        persona_version=persona_version,
        adapter_version=adapter.version if adapter else None,
    )
    plain = [{"role": m.role, "content": m.content} for m in history]

    def finished(job: Job) -> None:
        _finish(state, turn, job)
        if (state.warmer is not None and not (requested and requested.strip()) and job.finish is not None
                and job.finish.finish_reason in ("stop", "length")):
            state.warmer.answered(user_id, plain, system_prompt, job.finish.text)

    job = state.queue.submit(prompt, params, on_finish=finished,
                             adapter=adapter_file(adapter) if adapter else None,
                             fallback=not (requested and requested.strip()))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(state, turn, job, include_usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", **turn.headers()},
        )
    try:
        finish = await job.wait()
    except StoreError as exc:  # answered, but the answer could not be stored: say so, not the text
        return rlhi_error_response(exc)
    except RlhiError as exc:
        return error_response(500, f"Generation failed: {exc}", code="engine_error", headers=turn.headers())
    if job.adapter_error is not None:  # the adapter could not be loaded: the base model answered
        turn = replace(turn, adapter_version=None)
    return JSONResponse(
        {
            "id": turn.completion_id,
            "object": "chat.completion",
            "created": turn.created,
            "model": spec.id,
            "system_fingerprint": spec.fingerprint[:16],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": finish.text},
                    "finish_reason": _openai_reason(finish.finish_reason),
                    "logprobs": None,
                }
            ],
            "usage": _usage(finish.prompt_tokens, finish.completion_tokens),
            "rlhi": turn.ids(),
        },
        headers=turn.headers(),
    )


def _openai_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _finish(state: AppState, turn: _Turn, job: Job) -> None:
    """Runs on the loop when the job ended: the answer row gets its text and status."""
    finish = job.finish
    text = finish.text if finish else "".join(job.text_parts)
    reason = finish.finish_reason if finish else "error"
    complete = finish is not None and reason in ("stop", "length")
    if finish is not None:
        log.info(
            "chat conversation=%s message=%s prompt_tokens=%d completion_tokens=%d ttft_ms=%.1f "
            "latency_ms=%.1f finish=%s",
            turn.placed.conversation_id if turn.placed else "-",
            turn.placed.answer_id if turn.placed else "-",
            finish.prompt_tokens, finish.completion_tokens, finish.ttft_ms or 0.0,
            finish.latency_ms, reason,
        )
    if turn.placed is None or turn.placed.answer_id is None:
        return
    try:
        state.store.finish_answer(
            turn.placed.answer_id,
            text,
            "complete" if complete else "incomplete",
            reason,
            prompt_tokens=finish.prompt_tokens if finish else None,
            completion_tokens=finish.completion_tokens if finish else None,
            ttft_ms=finish.ttft_ms if finish else None,
            latency_ms=finish.latency_ms if finish else None,
            base_fallback=job.adapter_error is not None,
        )
    except StoreError as exc:
        # The disk filled (or turned read-only) while the model answered. The client must not
        # take the answer for stored: its response ends with this error (the row stays
        # `streaming`, and becomes `incomplete` at the next start).
        log.error("answer %s could not be stored: %s", turn.placed.answer_id, exc)
        if job.error is None:
            job.error = exc
        return
    state.miner.notify(turn.user_id)


async def _sse(state: AppState, turn: _Turn, job: Job, include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI's chunk stream. If the client goes away, the generator is cancelled and the
    job is told to stop; the job still stores the partial answer as incomplete."""
    model = json.dumps(state.spec.id)
    head = (
        f'{{"id":"{turn.completion_id}","object":"chat.completion.chunk","created":{turn.created},'
        f'"model":{model},"system_fingerprint":"{state.spec.fingerprint[:16]}","choices":'
    )
    done = False
    try:
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield f'data: {head}[{json.dumps(first)}],"rlhi":{json.dumps(turn.ids())}}}\n\n'.encode()
        async for text in job.pieces():
            content = json.dumps(text, ensure_ascii=False)
            yield (
                f'data: {head}[{{"index":0,"delta":{{"content":{content}}},"finish_reason":null}}]}}\n\n'
            ).encode()
        finish = await job.wait()
        reason = json.dumps(_openai_reason(finish.finish_reason))
        yield f'data: {head}[{{"index":0,"delta":{{}},"finish_reason":{reason}}}]}}\n\n'.encode()
        if include_usage:
            usage = json.dumps(_usage(finish.prompt_tokens, finish.completion_tokens))
            yield f'data: {head}[],"usage":{usage}}}\n\n'.encode()
        done = True
    except StoreError as exc:
        yield b"data: " + bytes(rlhi_error_response(exc).body) + b"\n\n"
        done = True
    except RlhiError as exc:
        error = {"error": {"message": f"Generation failed: {exc}", "type": "server_error", "param": None, "code": "engine_error"}}
        yield f"data: {json.dumps(error)}\n\n".encode()
        done = True
    finally:
        if not done:
            job.cancel()
    yield b"data: [DONE]\n\n"
