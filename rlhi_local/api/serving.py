"""Which adapter answers a request, and what the daemon cannot serve as it should right now.

A user's active adapter that cannot be served (llama.cpp refused its file, or it was trained for
another base model) does not stop that user's chats: they are answered by the base model, each
stored answer says so (no adapter version), and the problem is listed in GET /health and
`rlhi status` with the file and the fix until the user rolls back, activates another version,
or the file changes. An adapter a request names ("v3") is never swapped silently: that request
is refused, before anything is stored. A disk that refuses writes is listed the same way.
"""

from __future__ import annotations

from typing import Any

from ..errors import AdapterError, InvalidRequestError, StoreError
from ..records import Adapter
from ..training import adapter_file, served_adapter
from .state import AppState

__all__ = ["adapter_problem", "answering_adapter", "check_activation", "problems"]


def adapter_problem(state: AppState, adapter: Adapter) -> str | None:
    """Why `adapter` cannot answer now (None: it can), naming the file and the fix."""
    user, v = adapter.user_id, adapter.version
    fix = (f"Activate another version (`rlhi adapters activate VERSION --user {user}`), go back to the "
           f"previous one (`rlhi adapters rollback --user {user}`), or train again.")
    if adapter.base_fingerprint != state.spec.fingerprint:
        return (f"Adapter v{v} of user {user!r} was trained for base {adapter.base_fingerprint[:16]}, but this "
                f"daemon serves {state.spec.id} ({state.spec.fingerprint[:16]}): that user is answered by the "
                f"base model. {fix}")
    if state.queue.adapter_problem(adapter_file(adapter)) is not None:
        return (f"Adapter v{v} of user {user!r} cannot be loaded from {adapter_file(adapter)} (missing, "
                f"truncated or damaged): that user is answered by the base model. {fix}")
    return None


def answering_adapter(state: AppState, user_id: str, requested: str | None) -> Adapter | None:
    """The adapter for this request: the one it names, else the user's active one unless that
    cannot be served (then the base model, None). A named one that cannot be loaded is refused."""
    if requested is not None and requested.strip():
        adapter = served_adapter(state.store, state.spec, user_id, requested)  # 400/404
        if adapter is not None and state.queue.adapter_problem(adapter_file(adapter)) is not None:
            raise AdapterError(
                f"Adapter v{adapter.version} cannot be loaded from {adapter_file(adapter)} (missing, truncated "
                f"or damaged). Ask for another version or for 'base', or train again.")
        return adapter
    adapter = state.store.active_adapter(user_id)
    if adapter is None or adapter_problem(state, adapter) is not None:
        return None
    return adapter


async def check_activation(state: AppState, user_id: str, version: int) -> None:
    """Refuse to activate an adapter whose file llama.cpp cannot load (it is tried now, between
    two answers), so `rlhi adapters activate` says so instead of the next chat."""
    adapter = state.store.get_adapter(user_id, version)
    path = adapter_file(adapter)
    if adapter.base_fingerprint != state.spec.fingerprint or not path.is_file():
        return  # `training.activate` refuses these with its own messages
    if await state.queue.check_adapter(path) is not None:
        raise InvalidRequestError(
            f"Adapter v{version} of user {user_id!r} cannot be activated: llama.cpp cannot load {path} "
            f"(truncated or damaged). The served adapter is unchanged. Activate another version, or train again.")


def problems(state: AppState) -> list[dict[str, Any]]:
    """What the daemon cannot do as it should right now, each with the fix (GET /health)."""
    out: list[dict[str, Any]] = []
    if state.store.unwritable:
        out.append({"kind": "store", "path": str(state.store.path), "message": state.store.unwritable})
    try:
        active = state.store.active_adapters()
    except StoreError as exc:  # health still answers, and says what it could not read
        return [*out, {"kind": "store", "path": str(state.store.path), "message": str(exc)}]
    for adapter in active:
        message = adapter_problem(state, adapter)
        if message is not None:
            out.append({"kind": "adapter", "user": adapter.user_id, "version": adapter.version,
                        "path": str(adapter_file(adapter)), "message": message})
    return out
