"""`rlhi train` and `rlhi adapters`: start training, watch it, list, activate and roll back.

They talk to the daemon through the client (starting it if needed), like `rlhi persona`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import click

from .config import load_config, socket_path
from .errors import RlhiError

__all__ = ["adapters", "train"]


def _call(ctx: click.Context, fn: Callable[[Any], Any]) -> Any:
    from .client import Client, ensure_daemon

    try:
        config = load_config((ctx.obj or {}).get("flags"))
        extra = ["--model", config.model.path] if config.model.path else []
        ensure_daemon(socket_path(config), extra_args=extra)
        with Client(socket_path(config)) as client:
            return fn(client)
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc


def _progress_line(run: dict[str, Any]) -> str:
    p = run.get("progress") or {}
    if p.get("event") == "progress":
        return (f"step {p['step']}/{p['total']}  loss {p['loss']:.3f}  reward acc {p['rewards/accuracies']:.2f}  "
                f"eta {p['eta_s']:.0f}s")
    if p.get("event") == "phase":
        return f"{p['phase']}..."
    return run["status"]


@click.command()
@click.option("--now", is_flag=True, help="Start at once instead of when you have been idle a while.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the run until it ends.")
@click.option("--user", default=None, help="Whose adapter to train (default: local).")
@click.pass_context
def train(ctx: click.Context, now: bool, wait: bool, user: str | None) -> None:
    """Train a personal adapter on your preference pairs; the gate decides if it is served.

    Example: rlhi train --now
    """
    run = _call(ctx, lambda c: c.train(user=user, now=now))
    click.echo(f"training run {run['id']} {run['status']}" + ("" if now else " (starts when you are idle)"))
    if not wait:
        return
    last = ""
    while run["status"] in ("queued", "running"):
        time.sleep(1.0)
        run = _call(ctx, lambda c: c.train_run(run["id"]))
        line = _progress_line(run)
        if line != last:
            click.echo(line, err=True)
            last = line
    if run["status"] != "done":
        raise click.ClickException(f"training run {run['id']} {run['status']}: {run['error']}")
    outcome = run["progress"]
    verdict = "promoted: it answers from now on" if outcome.get("promoted") else f"rejected: {outcome.get('reason')}"
    click.echo(f"adapter v{run['adapter_version']} {verdict}")


@click.group()
def adapters() -> None:
    """Your adapter versions: list them, serve one, roll back."""


@adapters.command("list")
@click.option("--user", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def adapters_list(ctx: click.Context, user: str | None, as_json: bool) -> None:
    """Every version with its status, held-out accuracy and drift. Example: rlhi adapters list"""
    out = _call(ctx, lambda c: c.adapters(user=user))
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"serving: {'v' + str(out['active']) if out['active'] else 'the base model'}")
    for a in out["data"]:
        m = a["metrics"]
        acc = (m.get("candidate") or {}).get("rewards/accuracies")
        kl = (m.get("drift") or {}).get("kl")
        stats = f"acc {acc:.2f} kl {kl:.3f}" if acc is not None and kl is not None else ""
        click.echo(f"v{a['version']:<3} {a['status']:<9} {len(a['pair_ids']):>4} pairs  {stats}  {a['reason']}".rstrip())


@adapters.command("activate")
@click.argument("version", type=str)
@click.option("--user", default=None)
@click.pass_context
def adapters_activate(ctx: click.Context, version: str, user: str | None) -> None:
    """Serve VERSION (e.g. 3 or v3) from the next answer on. Example: rlhi adapters activate v2"""
    try:
        number = int(version.lower().removeprefix("v"))
    except ValueError:
        raise click.BadParameter(f"{version!r} is not a version like 3 or v3") from None
    a = _call(ctx, lambda c: c.activate_adapter(number, user=user))
    click.echo(f"serving v{a['version']}")


@adapters.command("rollback")
@click.option("--user", default=None)
@click.pass_context
def adapters_rollback(ctx: click.Context, user: str | None) -> None:
    """Stop serving the active adapter; the one before it (or the base) answers again."""
    out = _call(ctx, lambda c: c.rollback_adapter(user=user))
    click.echo(f"serving: {'v' + str(out['active']) if out['active'] else 'the base model'}")
