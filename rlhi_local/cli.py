"""The `rlhi` command: each subcommand parses, calls one domain function, and formats.

Our errors leave as `click.ClickException` (exit 1, a message that says what to do).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import click
from click_default_group import DefaultGroup

from . import __version__
from .config import Config, data_dir, load_config, socket_path
from .errors import DaemonError, RlhiError
from .learning_cli import pause, resume
from .privacy_cli import export, forget
from .signals_cli import signals
from .train_cli import adapters, train

__all__ = ["cli", "ensure_daemon"]

log = logging.getLogger(__name__)


def _config(ctx: click.Context) -> Config:
    obj = ctx.ensure_object(dict)
    if "config" not in obj:
        try:
            obj["config"] = load_config(obj.get("flags"))
        except RlhiError as exc:
            raise click.ClickException(str(exc)) from exc
    return obj["config"]  # type: ignore[no-any-return]


def _client(config: Config) -> Any:
    from .client import Client

    return Client(socket_path(config))


def _daemon_log() -> Path:
    return data_dir() / "logs" / "daemon.log"


def ensure_daemon(config: Config) -> None:
    """Start the daemon in the background (with this config's model) unless one answers."""
    from .client import ensure_daemon as _ensure

    extra = ["--model", config.model.path] if config.model.path else []
    _ensure(socket_path(config), extra_args=extra)


@click.group(cls=DefaultGroup, default="chat", default_if_no_args=True)
@click.version_option(__version__, prog_name="rlhi")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="A local GGUF file to serve.")
@click.option("--socket", "socket", type=click.Path(), help="The daemon's Unix socket path.")
@click.pass_context
def cli(ctx: click.Context, model_path: str | None, socket: str | None) -> None:
    """rlhi-local: a private assistant that learns from how you talk to it.

    Everything stays on this machine. With no subcommand, opens the chat.
    """
    ctx.ensure_object(dict)["flags"] = {"model": {"path": model_path}, "server": {"socket": socket}}


@cli.command()
@click.option("--tcp-port", type=int, default=None, help="Also listen on loopback TCP (bearer token).")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.pass_context
def serve(ctx: click.Context, tcp_port: int | None, verbose: bool) -> None:
    """Run the daemon in the foreground (logs to the data dir and stderr).

    Example: rlhi serve
    """
    obj = ctx.ensure_object(dict)
    obj["flags"]["server"]["tcp_port"] = tcp_port
    config = _config(ctx)
    from .daemon import Daemon, ensure_private_dir

    handlers: list[logging.Handler] = [logging.StreamHandler()]
    try:
        ensure_private_dir(data_dir())
    except RlhiError as exc:  # a data dir another user owns: refused before anything is written
        raise click.ClickException(str(exc)) from exc
    try:
        _daemon_log().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handlers.append(logging.FileHandler(_daemon_log(), encoding="utf-8"))
        os.chmod(_daemon_log(), 0o600)
    except OSError as exc:
        click.echo(f"warning: cannot write the log file {_daemon_log()}: {exc}", err=True)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
    )
    daemon = Daemon(config)
    try:
        daemon.start()
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rlhi daemon serving on {daemon.socket_path} (pid {os.getpid()})", err=True)
    daemon.run()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw health document.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Say whether the daemon runs, and what it serves.

    Example: rlhi status --json
    """
    config = _config(ctx)
    with _client(config) as client:
        try:
            health = client.health()
            schedule = client.schedule()
        except DaemonError as exc:
            raise click.ClickException(f"not running: {exc}") from exc
    if as_json:
        click.echo(json.dumps(health | {"schedule": schedule}, indent=2))
        return
    m, q = health["model"], health["queue"]
    click.echo(f"running   pid {health['pid']}, up {health['uptime_s']:.0f}s, version {health['version']}")
    click.echo(f"socket    {socket_path(config)}")
    click.echo(f"model     {m['id']} (n_ctx {m['n_ctx']}, {m['n_threads']} threads)")
    click.echo(f"          {m['path']}")
    click.echo(f"          sha256 {m['fingerprint']}")
    click.echo(f"queue     {'busy' if q['busy'] else 'idle'}, {q['waiting']} waiting")
    for problem in health.get("problems", []):
        click.echo(f"problem   {problem['message']}")
    for line in schedule_lines(schedule):
        click.echo(line)


def schedule_lines(schedule: dict[str, Any]) -> list[str]:
    """`rlhi status`'s learning part: each job's last outcome (or skip reason) and next run."""
    reason = str(schedule.get("paused_reason") or "learning is paused").removeprefix("learning is ")
    paused = [f"learning  {reason}"] if schedule.get("paused") else []
    if not schedule.get("enabled"):
        return [*paused, "learning  schedule off (schedule.enabled = false): learning runs only when asked"]
    lines = paused or ["learning  schedule"]
    for job in schedule.get("jobs", []):
        if not job["interval_s"]:
            lines.append(f"  {job['name']:<9} off")
            continue
        last = job.get("last")
        said = f"{last['status']} {last['started_at'][:19].replace('T', ' ')}: {last['detail']}" if last else "not run yet"
        if job.get("running"):
            progress = job.get("progress") or {}
            done = (f" {progress['step']}/{progress['total']}" if "step" in progress
                    else f" {progress['done']}/{progress['total']}" if "done" in progress else "")
            said = f"running{done}; last {said}"
        nxt = (job.get("next_run") or "")[:19].replace("T", " ") or "-"
        lines.append(f"  {job['name']:<9} next {nxt} UTC | {said}"[:200])
    return lines


def _stream(client: Any, messages: list[dict[str, str]], conversation_id: str | None,
            params: dict[str, Any]) -> Iterator[Any]:
    try:
        yield from client.stream_chat(messages, conversation_id=conversation_id, **params)
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.argument("prompt")
@click.option("-c", "--conversation", "conversation_id", help="Continue this conversation id.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None)
@click.option("--temperature", type=click.FloatRange(0, 2), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--no-start", is_flag=True, help="Fail instead of starting a daemon.")
@click.option("--off-record", is_flag=True,
              help="Answer without storing anything: never mined, learned from or kept.")
@click.pass_context
def ask(ctx: click.Context, prompt: str, conversation_id: str | None, max_tokens: int | None,
        temperature: float | None, seed: int | None, no_start: bool, off_record: bool) -> None:
    """Ask one question and stream the answer (starts the daemon if none runs).

    Example: rlhi ask "What is a LoRA adapter?"   (--off-record: nothing of it is kept)
    """
    if off_record and conversation_id:
        raise click.UsageError("--off-record cannot continue a stored conversation (-c): nothing of it "
                               "would be stored, and the stored part would be sent as history.")
    config = _config(ctx)
    try:
        if not no_start:
            ensure_daemon(config)
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc
    params = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed, "off_record": off_record}
    with _client(config) as client:
        for chunk in _stream(client, [{"role": "user", "content": prompt}], conversation_id, params):
            click.echo(chunk.text, nl=False)
    click.echo()


@cli.command()
@click.pass_context
def chat(ctx: click.Context) -> None:
    """Chat in the full-screen terminal UI (F1 lists the keys).

    With stdin or stdout not a terminal (a pipe, a script), a line-based chat instead: each
    input line is a message, each answer is printed. Example: rlhi chat
    """
    config = _config(ctx)
    if sys.stdin.isatty() and sys.stdout.isatty():
        from tui.app import run_chat

        if config.model.path:  # the UI starts a default daemon itself; this one needs --model
            try:
                ensure_daemon(config)
            except RlhiError as exc:
                raise click.ClickException(str(exc)) from exc
        run_chat(socket_path(config))
        return
    try:
        ensure_daemon(config)
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc
    messages: list[dict[str, str]] = []
    conversation_id: str | None = None
    with _client(config) as client:
        for raw in sys.stdin:
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            parts: list[str] = []
            for chunk in _stream(client, messages, conversation_id, {}):
                if chunk.conversation_id:
                    conversation_id = chunk.conversation_id
                parts.append(chunk.text)
                click.echo(chunk.text, nl=False)
            click.echo()
            messages.append({"role": "assistant", "content": "".join(parts)})


@cli.command()
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.pass_context
def stop(ctx: click.Context, timeout: float) -> None:
    """Stop the running daemon (SIGTERM; it finishes the current answer).

    Example: rlhi stop
    """
    from .daemon import pid_path

    config = _config(ctx)
    path = pid_path(config)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        raise click.ClickException(f"not running (no pid file at {path})") from None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        raise click.ClickException(f"not running (stale pid {pid} removed)") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            click.echo(f"stopped (pid {pid})")
            return
        time.sleep(0.1)
    raise click.ClickException(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s")


@cli.group()
def persona() -> None:
    """What the assistant knows about you: view it, edit it (your edits always win)."""


def _persona_call(ctx: click.Context, call: str, *args: Any) -> Any:
    config = _config(ctx)
    try:
        ensure_daemon(config)
        with _client(config) as client:
            return getattr(client, call)(*args)
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc


@persona.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def persona_show(ctx: click.Context, as_json: bool) -> None:
    """Show the card the model sees and every fact with its evidence count.

    Example: rlhi persona show
    """
    p = _persona_call(ctx, "persona")
    if as_json:
        click.echo(json.dumps(p, indent=2, ensure_ascii=False))
        return
    click.echo(f"persona version {p['version']}" + (f" ({p['source']})" if p["source"] else ""))
    click.echo(p["card"] or "(no persona yet: it grows as you chat)")
    for f in p["facts"]:
        mark = "deleted" if f["deleted"] else f"{f['source']}, {f['count']}x"
        click.echo(f"  [{f['key']}] {f['text']}  ({mark})")


@persona.command("history")
@click.pass_context
def persona_history_cmd(ctx: click.Context) -> None:
    """List every persona version. Example: rlhi persona history"""
    for p in _persona_call(ctx, "persona_history"):
        live = sum(1 for f in p["facts"] if not f["deleted"])
        click.echo(f"v{p['version']}  {p['created_at']}  {p['source']:<5}  {live} facts")


@persona.command("add")
@click.argument("text")
@click.pass_context
def persona_add(ctx: click.Context, text: str) -> None:
    """Tell the assistant a fact about you. Example: rlhi persona add "I use Windows" """
    facts = _persona_call(ctx, "persona")["facts"]
    wanted = [*({"key": f["key"], "text": f["text"], "deleted": f["deleted"]} for f in facts), {"text": text}]
    click.echo(_persona_call(ctx, "set_persona", wanted)["card"])


@persona.command("delete")
@click.argument("key")
@click.pass_context
def persona_delete(ctx: click.Context, key: str) -> None:
    """Delete a fact for good (it is never mined back). Example: rlhi persona delete topic:cooking"""
    facts = _persona_call(ctx, "persona")["facts"]
    if key not in {f["key"] for f in facts}:
        raise click.ClickException(f"No fact {key!r}; `rlhi persona show` lists the keys.")
    wanted = [{"key": f["key"], "text": f["text"], "deleted": f["deleted"] or f["key"] == key} for f in facts]
    click.echo(_persona_call(ctx, "set_persona", wanted)["card"] or "(empty persona)")


@persona.command("edit")
@click.pass_context
def persona_edit(ctx: click.Context) -> None:
    """Edit the facts in $EDITOR: one per line as `[key] text`; remove a line to delete it, add a
    line without a key to add a fact. Example: rlhi persona edit
    """
    facts = [f for f in _persona_call(ctx, "persona")["facts"] if not f["deleted"]]
    text = "\n".join(f"[{f['key']}] {f['text']}" for f in facts)
    edited = click.edit(text + "\n")
    if edited is None:
        click.echo("unchanged")
        return
    wanted = []
    for line in edited.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("[") and "]" in line:
            key, _, rest = line[1:].partition("]")
            wanted.append({"key": key, "text": rest.strip()})
        else:
            wanted.append({"text": line})
    click.echo(_persona_call(ctx, "set_persona", wanted)["card"] or "(empty persona)")


@cli.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--user", default="local", show_default=True, help="Whose history this is.")
@click.option("--no-learn", is_flag=True, help="Store the turns without mining them.")
def import_(file: Path, user: str, no_learn: bool) -> None:
    """Import chats from OpenAI-style JSONL or a ChatGPT export's conversations.json.

    Bad lines are reported with their number and skipped; importing twice adds nothing.
    Example: rlhi import ~/Downloads/conversations.json
    """
    from .daemon import ensure_private_dir
    from .importer import import_file
    from .store import Store

    try:
        ensure_private_dir(data_dir())
        store = Store(data_dir() / "rlhi.db")
        report = import_file(store, file, user_id=user, learn=not no_learn)
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc
    for problem in report.problems:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"imported {report.conversations} conversations, {report.messages} messages")
    if report.mining is not None:
        m = report.mining
        click.echo(f"learned: {m.labelled} follow-ups labelled, pairs {dict(m.added) or '{}'}, "
                   f"{m.pending} awaiting a rewrite, dropped {dict(m.dropped) or '{}'}")
    if report.problems and not report.messages:
        raise SystemExit(1)


@cli.command()
@click.argument("what", type=click.Choice(["socket", "data", "config", "log"]), required=False)
@click.pass_context
def path(ctx: click.Context, what: str | None) -> None:
    """Print where rlhi keeps its files (all of them, or one).

    Example: curl --unix-socket "$(rlhi path socket)" http://localhost/health
    """
    from .config import config_path

    paths = {
        "socket": socket_path(_config(ctx)),
        "data": data_dir(),
        "config": config_path(),
        "log": _daemon_log(),
    }
    if what:
        click.echo(str(paths[what]))
        return
    for name, value in paths.items():
        click.echo(f"{name:<7} {value}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """Show the base model the daemon serves (or would serve) and its fingerprint.

    Example: rlhi models --json
    """
    from .models import resolve_model

    try:
        spec = resolve_model(_config(ctx))
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc
    row = {"id": spec.id, "path": str(spec.path), "sha256": spec.fingerprint, "embedded": spec.embedded}
    click.echo(json.dumps(row, indent=2) if as_json else f"{spec.id}  {spec.path}  sha256:{spec.fingerprint[:16]}")

cli.add_command(signals)
cli.add_command(train)
cli.add_command(adapters)
cli.add_command(export)
cli.add_command(forget)
cli.add_command(pause)
cli.add_command(resume)
