"""One way for screens to call the daemon: a refusal or a lost daemon becomes a notification."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

from textual.screen import Screen

from rlhi_local.errors import APIError, DaemonError

__all__ = ["ask_daemon"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def ask_daemon(screen: Screen[object], call: Awaitable[T], failure: str) -> T | None:
    """Await one daemon call; report why it failed (`failure` prefixes unexpected errors) and
    return None, so the screen and whatever the user typed stay as they are."""
    try:
        return await call
    except APIError as exc:
        screen.notify(exc.message, title=f"The daemon refused ({exc.status_code})",
                      severity="error", timeout=15, markup=False)
    except DaemonError as exc:
        screen.notify(str(exc), title="The daemon is not reachable", severity="error",
                      timeout=15, markup=False)
    except Exception as exc:  # boundary: report, keep the screen
        log.exception("%s", failure)
        screen.notify(f"{failure}: {exc}", severity="error", timeout=15, markup=False)
    return None
