"""`rlhi export` and `rlhi forget`: your data out as JSON Lines, or parts of it gone for good.

They talk to the daemon through the client (starting it if needed), like `rlhi train`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from .config import load_config, socket_path
from .errors import RlhiError

__all__ = ["export", "forget"]


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


def _write_export(client: Any, user: str | None, output: Path | None) -> dict[str, int]:
    """Stream the export to `output` (created 0600: it holds everything you said) or stdout."""
    if output is None:
        out, close = sys.stdout, False
    else:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        out, close = os.fdopen(fd, "w", encoding="utf-8"), True
    counts: dict[str, int] = {}
    try:
        for obj in client.export(user=user):
            line = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
            # As the daemon writes them: characters `str.splitlines` breaks on stay escaped.
            for char, escaped in (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
                line = line.replace(char, escaped)
            out.write(line + "\n")
            if obj["table"] == "export_end":
                counts = obj["row"]["rows"]
    finally:
        if close:
            out.close()
        else:
            out.flush()
    return counts


@click.command()
@click.option("--user", default=None, help="Whose data (default: local).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to FILE (mode 0600) instead of stdout.")
@click.pass_context
def export(ctx: click.Context, user: str | None, output: Path | None) -> None:
    """Write everything stored about you as JSON Lines: one {"table", "row"} object per row of
    conversations, messages, feedback, personas, pairs, training runs, adapters and reward models
    (the README's "Your data" section describes the format).

    Example: rlhi export -o my-data.jsonl
    """
    counts = _call(ctx, lambda c: _write_export(c, user, output))
    if output is not None:
        total = sum(counts.values())
        click.echo(f"exported {total} rows to {output}: "
                   + ", ".join(f"{t} {n}" for t, n in counts.items() if n), err=True)


def _describe(conversation_id: str | None, since: str | None, until: str | None, everything: bool) -> str:
    if everything:
        return "EVERYTHING stored about you (conversations, persona, pairs, adapters, reward models)"
    if conversation_id:
        return f"conversation {conversation_id} and everything learned from it"
    span = f"from {since}" if since else ""
    span += f"{' ' if span else ''}until {until}" if until else ""
    return f"every message {span} and everything learned from them"


@click.command()
@click.option("--conversation", "conversation_id", default=None, help="Forget this conversation.")
@click.option("--since", default=None, help="Forget messages from this date/time on (ISO 8601, local time).")
@click.option("--until", default=None, help="...up to this date (a bare date includes that day).")
@click.option("--all", "everything", is_flag=True, help="Forget everything stored about you.")
@click.option("--user", default=None, help="Whose data (default: local).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def forget(ctx: click.Context, conversation_id: str | None, since: str | None, until: str | None,
           everything: bool, user: str | None, yes: bool) -> None:
    """Forget a conversation, a date range, or everything, for good: the rows are deleted and
    the database compacted, and every adapter that learned from them is retired (and retrained
    without them when enough pairs remain).

    Example: rlhi forget --since 2024-05-01 --until 2024-05-03
    """
    given = sum([conversation_id is not None, since is not None or until is not None, everything])
    if given != 1:
        raise click.UsageError("Name exactly one of --conversation ID, --since/--until DATE, or --all.")
    if not yes:
        click.confirm(f"Forget {_describe(conversation_id, since, until, everything)}"
                      f"{' for user ' + user if user else ''}? This cannot be undone", abort=True, err=True)
    out = _call(ctx, lambda c: c.forget(conversation_id=conversation_id, since=since, until=until,
                                        everything=everything, user=user))
    deleted = out["deleted"]
    click.echo("forgot " + ", ".join(f"{n} {t}" for t, n in deleted.items() if n) if any(deleted.values())
               else "forgot nothing: no stored rows matched")
    if out["adapters_retired"]:
        serving = f"v{out['active_adapter']}" if out["active_adapter"] else "the base model"
        click.echo(f"retired adapters {', '.join('v' + str(v) for v in out['adapters_retired'])}; serving {serving}")
    if out["reward_models_retired"]:
        click.echo(f"retired reward models {', '.join('v' + str(v) for v in out['reward_models_retired'])}")
    retrain = out["retraining"]
    if retrain["queued"]:
        click.echo(f"retraining without it: run {retrain['run_id']} (starts when you are idle)")
    elif out["adapters_retired"]:
        click.echo(f"not retrained: {retrain['reason']}")
    click.echo(f"database compacted to {out['database_bytes']} bytes (WAL {out['wal_bytes']} bytes), "
               f"{out['files_deleted']} files deleted")
