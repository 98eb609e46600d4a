"""`rlhi pause` and `rlhi resume`: switch all learning off and on; chats are still answered and stored.

With a daemon running, the switch goes through it (`POST /v1/learning/pause|resume`), which also
stops background mining and cancels a training run at once. With none, it is written to the store,
where the next daemon reads it at start: pausing never starts a daemon that could learn first.
"""

from __future__ import annotations

from typing import Any

import click

from .config import Config, data_dir, load_config, socket_path
from .errors import DaemonError, RlhiError

__all__ = ["pause", "resume"]

CONFIG_PAUSED = "learning is paused (learning.mining = false in the config)"


def _switch(ctx: click.Context, paused: bool) -> dict[str, Any]:
    """The learning state after the switch, from the daemon or (none running) the store."""
    from .client import Client

    try:
        config = load_config((ctx.obj or {}).get("flags"))
        if socket_path(config).exists():
            with Client(socket_path(config)) as client:
                try:
                    return client.pause_learning() if paused else client.resume_learning()
                except DaemonError:
                    pass  # a socket left by a crash: no daemon, so the store keeps the switch
        return _switch_in_store(config, paused)
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc


def _switch_in_store(config: Config, paused: bool) -> dict[str, Any]:
    from .daemon import ensure_private_dir
    from .store import Store

    ensure_private_dir(data_dir())
    store = Store(data_dir() / "rlhi.db")
    try:
        store.set_learning_paused(paused)
    finally:
        store.close()
    reason = ("learning is paused (rlhi pause; `rlhi resume` turns it back on)" if paused
              else CONFIG_PAUSED if not config.learning.mining else "")
    return {"paused": bool(reason), "reason": reason, "cancelled_run": None}


@click.command()
@click.pass_context
def pause(ctx: click.Context) -> None:
    """Pause all learning until `rlhi resume`, across restarts: nothing is mined, sampled or
    trained, and a training run in progress is cancelled. Chats are still answered and stored.

    Example: rlhi pause
    """
    state = _switch(ctx, True)
    click.echo("learning paused: nothing is mined, sampled or trained until `rlhi resume`; "
               "chats are still answered and stored")
    if state.get("cancelled_run"):
        click.echo(f"cancelled training run {state['cancelled_run']}")


@click.command()
@click.pass_context
def resume(ctx: click.Context) -> None:
    """Learn again after `rlhi pause`; what you said meanwhile is mined soon after.

    Example: rlhi resume
    """
    state = _switch(ctx, False)
    if state["paused"]:
        click.echo(f"resumed `rlhi pause`, but {state['reason']}")
    else:
        click.echo("learning resumed")
