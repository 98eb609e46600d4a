"""A small typed client for the daemon's socket (sync `Client`, async `AsyncClient`).

Example:

    from rlhi_local.client import Client

    with Client() as client:                      # the default socket of this user
        answer = client.chat([{"role": "user", "content": "Hi!"}], max_tokens=32)
        print(answer.text, answer.conversation_id)
        for chunk in client.stream_chat([{"role": "user", "content": "Count to 3"}]):
            print(chunk.text, end="", flush=True)

Errors: `DaemonError` when no daemon answers on the socket, `APIError` (status, message, code)
when it answers with an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence

import httpx

from .errors import APIError, DaemonError

__all__ = ["AsyncClient", "ChatChunk", "ChatResult", "Client", "default_socket", "ensure_daemon"]

BASE_URL = "http://rlhi"
Messages = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class ChatResult:
    """A whole answer and where the daemon stored it."""

    text: str
    finish_reason: str
    model: str
    usage: dict[str, int]
    conversation_id: str | None
    message_id: str | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class ChatChunk:
    """A piece of a streamed answer. The first carries the ids; the last the finish reason."""

    text: str
    finish_reason: str | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    usage: dict[str, int] | None = None
    adapter_version: int | None = None
    """On the first chunk: the adapter version that answers (None: the base model)."""


def default_socket() -> Path:
    """The socket the daemon of this user listens on (honours RLHI_HOME and the config file)."""
    from .config import load_config, socket_path

    return socket_path(load_config())


def _payload(
    messages: Messages, model: str, stream: bool, user: str | None, params: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if user is not None:
        body["user"] = user
    body.update({k: v for k, v in params.items() if v is not None})
    return body


def _headers(conversation_id: str | None, off_record: bool) -> dict[str, str]:
    headers = {}
    if conversation_id:
        headers["x-rlhi-conversation"] = conversation_id
    if off_record:
        headers["x-rlhi-off-record"] = "1"
    return headers


def _error(status: int, body: bytes) -> APIError:
    try:
        err = json.loads(body)["error"]
        return APIError(status, str(err.get("message")), str(err.get("type", "")), err.get("code"))
    except (ValueError, KeyError, TypeError):
        return APIError(status, body.decode("utf-8", "replace")[:500])


def _result(data: dict[str, Any]) -> ChatResult:
    choice = data["choices"][0]
    ids = data.get("rlhi") or {}
    return ChatResult(
        text=choice["message"]["content"],
        finish_reason=choice["finish_reason"],
        model=data["model"],
        usage=data["usage"],
        conversation_id=ids.get("conversation_id"),
        message_id=ids.get("message_id"),
        raw=data,
    )


def _chunk(line: str) -> ChatChunk | None:
    """Parse one SSE line; None for blank lines, comments and `[DONE]`."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    event = json.loads(data)
    if "error" in event:
        err = event["error"]
        raise APIError(500, str(err.get("message")), str(err.get("type", "")), err.get("code"))
    ids = event.get("rlhi") or {}
    choices = event.get("choices") or []
    text = ""
    reason = None
    if choices:
        text = choices[0].get("delta", {}).get("content") or ""
        reason = choices[0].get("finish_reason")
    return ChatChunk(
        text=text,
        finish_reason=reason,
        conversation_id=ids.get("conversation_id"),
        message_id=ids.get("message_id"),
        usage=event.get("usage"),
        adapter_version=ids.get("adapter_version"),
    )


def _forget_body(conversation_id: str | None, since: str | None, until: str | None, everything: bool,
                 user: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"conversation_id": conversation_id, "since": since, "until": until,
                            "everything": everything, "user": user}
    return {k: v for k, v in body.items() if v not in (None, False)}


def _no_daemon(socket: Path, exc: Exception) -> DaemonError:
    return DaemonError(
        f"No rlhi daemon answers on {socket} ({exc}). Start one with `rlhi serve`, "
        f"or let `rlhi ask` start it."
    )


class Client:
    """Synchronous client over the Unix socket."""

    def __init__(self, socket: str | Path | None = None, timeout: float = 600.0) -> None:
        self.socket = Path(socket) if socket is not None else default_socket()
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url=BASE_URL, timeout=timeout
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, url, **kwargs)
        except (httpx.TransportError, FileNotFoundError) as exc:
            raise _no_daemon(self.socket, exc) from exc
        if response.status_code >= 400:
            raise _error(response.status_code, response.content)
        return response.json()

    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/health"))

    def models(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/models")["data"])

    def chat(
        self, messages: Messages, *, model: str = "default", conversation_id: str | None = None,
        user: str | None = None, off_record: bool = False, **params: Any,
    ) -> ChatResult:
        """Ask for a whole answer. `params`: max_tokens, temperature, top_p, stop, seed, ..."""
        body = _payload(messages, model, False, user, params)
        return _result(self._request("POST", "/v1/chat/completions", json=body,
                                     headers=_headers(conversation_id, off_record)))

    def stream_chat(
        self, messages: Messages, *, model: str = "default", conversation_id: str | None = None,
        user: str | None = None, off_record: bool = False, **params: Any,
    ) -> Iterator[ChatChunk]:
        """Stream the answer; closing the iterator early stops generation on the daemon."""
        body = _payload(messages, model, True, user, params)
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body,
                                   headers=_headers(conversation_id, off_record)) as response:
                if response.status_code >= 400:
                    raise _error(response.status_code, response.read())
                for line in response.iter_lines():
                    chunk = _chunk(line)
                    if chunk is not None:
                        yield chunk
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise _no_daemon(self.socket, exc) from exc
        except httpx.TransportError as exc:
            raise DaemonError(f"The daemon on {self.socket} went away mid-answer ({exc}).") from exc

    def conversations(self, user: str | None = None) -> list[dict[str, Any]]:
        params = {"user": user} if user else {}
        return list(self._request("GET", "/v1/conversations", params=params)["data"])

    def conversation(self, conversation_id: str, user: str | None = None) -> dict[str, Any]:
        params = {"user": user} if user else {}
        return dict(self._request("GET", f"/v1/conversations/{conversation_id}", params=params))

    def delete_conversation(self, conversation_id: str, user: str | None = None) -> None:
        params = {"user": user} if user else {}
        self._request("DELETE", f"/v1/conversations/{conversation_id}", params=params)

    def rename_conversation(self, conversation_id: str, title: str, user: str | None = None) -> dict[str, Any]:
        params = {"user": user} if user else {}
        return dict(self._request("PATCH", f"/v1/conversations/{conversation_id}",
                                  json={"title": title}, params=params))

    def edit_message(self, message_id: str, content: str, user: str | None = None) -> dict[str, Any]:
        """Store your rewrite of an answer (a `user_edit` sibling); returns the new message."""
        return dict(self._request("POST", f"/v1/messages/{message_id}/edit",
                                  json={"content": content, "user": user}))

    def feedback(self, message_id: str, kind: str, user: str | None = None) -> dict[str, Any]:
        """`thumbs_up`, `thumbs_down`, or `choice` (the preferred of several answers)."""
        return dict(self._request("POST", "/v1/feedback",
                                  json={"message_id": message_id, "kind": kind, "user": user}))

    def persona(self, user: str | None = None) -> dict[str, Any]:
        """The active persona: `card` (what the model sees), `facts` (with evidence), `version`."""
        return dict(self._request("GET", "/v1/persona", params={"user": user} if user else {}))

    def set_persona(self, facts: Sequence[Mapping[str, Any]], user: str | None = None) -> dict[str, Any]:
        """Replace the visible facts ({key?, text, deleted?}); what you change stays yours."""
        return dict(self._request("PUT", "/v1/persona", json={"facts": list(facts)},
                                  params={"user": user} if user else {}))

    def persona_history(self, user: str | None = None) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/persona/history", params={"user": user} if user else {})["data"])

    def pairs(self, user: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("user", user), ("status", status)) if v}
        return list(self._request("GET", "/v1/pairs", params=params)["data"])

    def train(self, user: str | None = None, now: bool = True) -> dict[str, Any]:
        """Start a training run (`now`, or once you are idle); returns the run to poll."""
        return dict(self._request("POST", "/v1/train", json={"user": user, "now": now}))

    def train_run(self, run_id: str) -> dict[str, Any]:
        """A run's status, live `progress` (step, total, loss, eta_s) and final `metrics`."""
        return dict(self._request("GET", f"/v1/train/{run_id}"))

    def train_runs(self, user: str | None = None) -> list[dict[str, Any]]:
        """The user's recent training runs, newest first."""
        return list(self._request("GET", "/v1/train", params={"user": user} if user else {})["data"])

    def cancel_training(self, run_id: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/v1/train/{run_id}"))

    def adapters(self, user: str | None = None) -> dict[str, Any]:
        """`{"active": version or None, "data": [adapter, ...]}` with metrics and reasons."""
        return dict(self._request("GET", "/v1/adapters", params={"user": user} if user else {}))

    def activate_adapter(self, version: int, user: str | None = None) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/adapters/{version}/activate", params={"user": user} if user else {}))

    def rollback_adapter(self, user: str | None = None) -> dict[str, Any]:
        """Serve the adapter that was active before the current one (or the base)."""
        return dict(self._request("POST", "/v1/adapters/rollback", params={"user": user} if user else {}))

    def schedule(self) -> dict[str, Any]:
        """The learning jobs: `{"enabled", "paused", "jobs": [{name, next_run, last, running, progress}]}`."""
        return dict(self._request("GET", "/v1/schedule"))

    def run_job(self, job: str) -> dict[str, Any]:
        """Run one learning job now (detector, persona, reward, sampling, training); its outcome."""
        return dict(self._request("POST", f"/v1/schedule/{job}/run"))

    def export(self, user: str | None = None) -> Iterator[dict[str, Any]]:
        """Everything stored about the user, one `{"table", "row"}` object per stored row, between
        an `export` header and an `export_end` line with the counts (README: "Your data")."""
        params = {"user": user} if user else {}
        try:
            with self._http.stream("GET", "/v1/export", params=params) as response:
                if response.status_code >= 400:
                    raise _error(response.status_code, response.read())
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise _no_daemon(self.socket, exc) from exc
        except httpx.TransportError as exc:
            raise DaemonError(f"The daemon on {self.socket} went away mid-export ({exc}).") from exc

    def forget(self, *, conversation_id: str | None = None, since: str | None = None, until: str | None = None,
               everything: bool = False, user: str | None = None) -> dict[str, Any]:
        """Forget one conversation, a date range (ISO dates or times) or everything, for good;
        returns what was deleted and retired, and the retraining queued."""
        return dict(self._request("POST", "/v1/forget",
                                  json=_forget_body(conversation_id, since, until, everything, user)))

    def learning(self) -> dict[str, Any]:
        """`{"paused", "reason", "changed_at"}`: whether learning as a whole is paused, and why."""
        return dict(self._request("GET", "/v1/learning"))

    def pause_learning(self) -> dict[str, Any]:
        """Pause all learning (kept across restarts); cancels a training run (`cancelled_run`)."""
        return dict(self._request("POST", "/v1/learning/pause"))

    def resume_learning(self) -> dict[str, Any]:
        """Learn again; `paused` stays true while the config's learning.mining is false."""
        return dict(self._request("POST", "/v1/learning/resume"))


class AsyncClient:
    """Asynchronous client over the Unix socket (the TUI uses this one)."""

    def __init__(self, socket: str | Path | None = None, timeout: float = 600.0) -> None:
        self.socket = Path(socket) if socket is not None else default_socket()
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)), base_url=BASE_URL, timeout=timeout
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, url, **kwargs)
        except (httpx.TransportError, FileNotFoundError) as exc:
            raise _no_daemon(self.socket, exc) from exc
        if response.status_code >= 400:
            raise _error(response.status_code, response.content)
        return response.json()

    async def health(self) -> dict[str, Any]:
        return dict(await self._request("GET", "/health"))

    async def models(self) -> list[dict[str, Any]]:
        return list((await self._request("GET", "/v1/models"))["data"])

    async def chat(
        self, messages: Messages, *, model: str = "default", conversation_id: str | None = None,
        user: str | None = None, off_record: bool = False, **params: Any,
    ) -> ChatResult:
        body = _payload(messages, model, False, user, params)
        return _result(await self._request("POST", "/v1/chat/completions", json=body,
                                           headers=_headers(conversation_id, off_record)))

    async def stream_chat(
        self, messages: Messages, *, model: str = "default", conversation_id: str | None = None,
        user: str | None = None, off_record: bool = False, **params: Any,
    ) -> AsyncIterator[ChatChunk]:
        body = _payload(messages, model, True, user, params)
        try:
            async with self._http.stream("POST", "/v1/chat/completions", json=body,
                                         headers=_headers(conversation_id, off_record)) as response:
                if response.status_code >= 400:
                    raise _error(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    chunk = _chunk(line)
                    if chunk is not None:
                        yield chunk
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise _no_daemon(self.socket, exc) from exc
        except httpx.TransportError as exc:
            raise DaemonError(f"The daemon on {self.socket} went away mid-answer ({exc}).") from exc

    async def conversations(self, user: str | None = None) -> list[dict[str, Any]]:
        params = {"user": user} if user else {}
        return list((await self._request("GET", "/v1/conversations", params=params))["data"])

    async def conversation(self, conversation_id: str, user: str | None = None) -> dict[str, Any]:
        params = {"user": user} if user else {}
        return dict(await self._request("GET", f"/v1/conversations/{conversation_id}", params=params))

    async def delete_conversation(self, conversation_id: str, user: str | None = None) -> None:
        params = {"user": user} if user else {}
        await self._request("DELETE", f"/v1/conversations/{conversation_id}", params=params)

    async def rename_conversation(self, conversation_id: str, title: str, user: str | None = None) -> dict[str, Any]:
        params = {"user": user} if user else {}
        return dict(await self._request("PATCH", f"/v1/conversations/{conversation_id}",
                                        json={"title": title}, params=params))

    async def edit_message(self, message_id: str, content: str, user: str | None = None) -> dict[str, Any]:
        return dict(await self._request("POST", f"/v1/messages/{message_id}/edit",
                                        json={"content": content, "user": user}))

    async def feedback(self, message_id: str, kind: str, user: str | None = None) -> dict[str, Any]:
        return dict(await self._request("POST", "/v1/feedback",
                                        json={"message_id": message_id, "kind": kind, "user": user}))

    async def persona(self, user: str | None = None) -> dict[str, Any]:
        return dict(await self._request("GET", "/v1/persona", params={"user": user} if user else {}))

    async def set_persona(self, facts: Sequence[Mapping[str, Any]], user: str | None = None) -> dict[str, Any]:
        return dict(await self._request("PUT", "/v1/persona", json={"facts": list(facts)},
                                        params={"user": user} if user else {}))

    async def train(self, user: str | None = None, now: bool = True) -> dict[str, Any]:
        return dict(await self._request("POST", "/v1/train", json={"user": user, "now": now}))

    async def train_run(self, run_id: str) -> dict[str, Any]:
        return dict(await self._request("GET", f"/v1/train/{run_id}"))

    async def train_runs(self, user: str | None = None) -> list[dict[str, Any]]:
        return list((await self._request("GET", "/v1/train", params={"user": user} if user else {}))["data"])

    async def adapters(self, user: str | None = None) -> dict[str, Any]:
        return dict(await self._request("GET", "/v1/adapters", params={"user": user} if user else {}))

    async def activate_adapter(self, version: int, user: str | None = None) -> dict[str, Any]:
        return dict(await self._request("POST", f"/v1/adapters/{version}/activate",
                                        params={"user": user} if user else {}))

    async def rollback_adapter(self, user: str | None = None) -> dict[str, Any]:
        return dict(await self._request("POST", "/v1/adapters/rollback", params={"user": user} if user else {}))

    async def schedule(self) -> dict[str, Any]:
        return dict(await self._request("GET", "/v1/schedule"))

    async def export(self, user: str | None = None) -> AsyncIterator[dict[str, Any]]:
        params = {"user": user} if user else {}
        try:
            async with self._http.stream("GET", "/v1/export", params=params) as response:
                if response.status_code >= 400:
                    raise _error(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise _no_daemon(self.socket, exc) from exc
        except httpx.TransportError as exc:
            raise DaemonError(f"The daemon on {self.socket} went away mid-export ({exc}).") from exc

    async def forget(self, *, conversation_id: str | None = None, since: str | None = None,
                     until: str | None = None, everything: bool = False, user: str | None = None) -> dict[str, Any]:
        return dict(await self._request("POST", "/v1/forget",
                                        json=_forget_body(conversation_id, since, until, everything, user)))

    async def learning(self) -> dict[str, Any]:
        return dict(await self._request("GET", "/v1/learning"))

    async def pause_learning(self) -> dict[str, Any]:
        return dict(await self._request("POST", "/v1/learning/pause"))

    async def resume_learning(self) -> dict[str, Any]:
        return dict(await self._request("POST", "/v1/learning/resume"))


def ensure_daemon(socket: str | Path | None = None, wait_s: float = 120.0,
                  extra_args: Sequence[str] = ()) -> None:
    """Start `rlhi serve` in the background unless a daemon answers; block until it is ready.

    Its output goes to `daemon.out` in the data dir's `logs/`. Raises `DaemonError` with the
    tail of that output if the daemon exits instead of becoming ready.
    """
    from .config import data_dir

    path = Path(socket) if socket is not None else default_socket()
    with Client(path) as client:
        try:
            client.health()
            return
        except DaemonError:
            pass
        logs = data_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        out_path = logs / "daemon.out"
        args = [*extra_args]
        if socket is not None:
            args += ["--socket", str(path)]
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rlhi_local", *args, "serve"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                text = out_path.read_text(encoding="utf-8", errors="replace")
                tail = text.strip().splitlines()[-5:]
                raise DaemonError(
                    "The daemon could not start:\n  " + "\n  ".join(tail) + f"\n(full log: {out_path})"
                )
            try:
                client.health()
                return
            except DaemonError:
                time.sleep(0.1)
    raise DaemonError(f"The daemon did not become ready within {wait_s:.0f}s; see {out_path}.")
