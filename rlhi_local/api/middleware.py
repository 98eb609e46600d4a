"""ASGI guards that run before any route: body size (413) and the TCP bearer token (401).

Both answer in the same OpenAI error shape as the routes. The Unix socket needs no token (its
0600 mode is the access control); a request that arrives over TCP carries a client address and
must present the token.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable

__all__ = ["BodyLimitMiddleware", "TokenAuthMiddleware"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _send_error(send: Send, status: int, message: str, type_: str, code: str) -> None:
    body = json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Reads the body up front (it is small by construction) and refuses it past `limit` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = (
            f"The request body is larger than server.max_body_bytes={self.limit} bytes. "
            f"Send less (shorten the conversation) or raise the limit in the config file."
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "Content-Length is not a number.", "invalid_request_error", "invalid_request")
                    return
                if declared > self.limit:
                    await _send_error(send, 413, too_big, "request_too_large", "request_too_large")
                    return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_error(send, 413, too_big, "request_too_large", "request_too_large")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class TokenAuthMiddleware:
    """Requests from a network peer (TCP) must send `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client"):
            expected = f"Bearer {self.token}".encode() if self.token else None
            given = dict(scope.get("headers", [])).get(b"authorization", b"")
            if expected is None or not hmac.compare_digest(given, expected):
                await _send_error(
                    send, 401,
                    "TCP requests need 'Authorization: Bearer <token>' (the token is server.token, "
                    "or the file 'token' in the data dir). The Unix socket needs none.",
                    "authentication_error", "invalid_token",
                )
                return
        await self.app(scope, receive, send)
