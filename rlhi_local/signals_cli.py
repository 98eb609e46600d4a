"""`rlhi signals`: the learning signals as batch commands over JSONL, with no daemon.

`classify` streams: it reads one line, labels it, writes it, so a history of any size runs in
constant memory, and a bad line costs only itself. Exit codes: 0 when at least one line was
labelled (bad lines, if any, are reported on stderr as warnings); 1 when there were bad lines
and none was labelled; 0 for empty input.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

import click

from .feedback import classify

__all__ = ["signals"]

log = logging.getLogger(__name__)


@click.group()
def signals() -> None:
    """Learning signals: label follow-ups, from files or pipes."""


def _problem(obj: Any) -> str:
    """Why `obj` is not a valid input line ('' when it is)."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for key in ("previous", "followup"):
        if not isinstance(obj.get(key), str):
            return f'"{key}" must be a string, got {json.dumps(obj.get(key))[:40]}'
    context = obj.get("context", [])
    if context is None:
        return ""
    if not isinstance(context, list) or not all(isinstance(m, dict) for m in context):
        return '"context" must be a list of {"role": ..., "content": ...} messages'
    return ""


def _text(content: Any) -> str:
    """A message's text: OpenAI content is a string or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def classify_lines(lines: IO[str], out: IO[str], err: IO[str]) -> tuple[int, int]:
    """Label every JSONL line of `lines` onto `out`; report bad ones on `err`. Returns (ok, bad)."""
    ok = bad = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            bad += 1
            err.write(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno}); skipped\n")
            continue
        problem = _problem(obj)
        if problem:
            bad += 1
            err.write(f"line {number}: {problem}; skipped\n")
            continue
        context = [{"role": str(m.get("role", "")), "content": _text(m.get("content"))}
                   for m in obj.get("context") or []]
        label = classify(obj["previous"], obj["followup"], context)
        obj.update(kind=label.kind, actionable=label.actionable, instruction=label.instruction,
                   confidence=label.confidence)
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        ok += 1
    return ok, bad


@signals.command("classify")
def classify_command() -> None:
    """Label follow-ups: JSONL on stdin, the same objects with labels on stdout.

    Each input line is {"previous": <assistant text>, "followup": <user text>, "context":
    [optional OpenAI-style messages before them]}. Each output line adds "kind", "actionable",
    "instruction" ('' unless actionable) and "confidence" (0-1). Bad lines are reported on stderr
    with their line number and skipped; the exit code is 1 only if no line could be labelled.

    Example: echo '{"previous": "Hi!", "followup": "shorter"}' | rlhi signals classify
    """
    # sys streams, not click.echo per line: thousands of lines a minute, and CliRunner swaps them.
    stderr = sys.stderr
    ok, bad = classify_lines(sys.stdin, sys.stdout, stderr)
    log.info("classified %d follow-ups, skipped %d bad lines", ok, bad)
    if bad and not ok:
        raise click.ClickException(f"none of the {bad} input lines could be labelled; see the errors above")
    if bad:
        stderr.write(f"warning: skipped {bad} bad line(s); labelled {ok}\n")


if __name__ == "__main__":  # pragma: no cover - `python -m rlhi_local.signals_cli classify`
    signals()
