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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence

import httpx

from .errors import APIError, DaemonError

__all__ = ["AsyncClient", "ChatChunk", "ChatResult", "Client", "default_socket"]

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
    )


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
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as exc:
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
        except httpx.RemoteProtocolError as exc:
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
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as exc:
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
        except httpx.RemoteProtocolError as exc:
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
