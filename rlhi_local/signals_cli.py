"""`rlhi signals`: the learning signals as batch commands over JSONL, with no daemon.

`classify` streams: it reads one line, labels it, writes it, so a history of any size runs in
constant memory, and a bad line costs only itself. Exit codes: 0 when at least one line was
labelled (bad lines, if any, are reported on stderr as warnings); 1 when there were bad lines
and none was labelled, or when the detector model cannot be used; 0 for empty input.

With a model (`--model PATH`, or `detector.model` set to a path in the config) each line is
labelled by the model, with the rules' label kept when the model's is unusable or below
`--min-confidence`; the output says which detector labelled it and what the model answered.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

import click

from .config import load_config
from .errors import RlhiError
from .feedback import FollowupLabel, LocalModel, classify, classify_with_model

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


def _decoded(line: str | bytes) -> str:
    return line.decode("utf-8") if isinstance(line, bytes) else line


def _unreadable(exc: UnicodeDecodeError | RecursionError) -> str:
    if isinstance(exc, RecursionError):
        return "not valid JSON (nested too deeply)"
    return f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1})"


def _dumps(obj: Any) -> str:
    """One output line, in UTF-8 as it came; but a lone surrogate (JSON allows "\\ud800") cannot be
    written to a UTF-8 stream, so such a line is written escaped, as JSON allows too."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj)
    return text


def classify_lines(lines: IO[str] | IO[bytes], out: IO[str], err: IO[str], model: LocalModel | None = None,
                   min_confidence: float = 0.5, max_tokens: int = 96) -> tuple[int, int]:
    """Label every JSONL line of `lines` onto `out`; report bad ones on `err`. Returns (ok, bad).
    Lines may be bytes (stdin's), so that one that is not UTF-8 costs only itself.

    With `model`, each output line also has "fallback" (why the rules' label was kept, '' when
    the model's was used) and "model_output" (the model's raw JSON, '' when it failed)."""
    raw: list[str] = []

    def generate(messages: list[dict[str, str]], grammar: str, limit: int) -> str:
        assert model is not None
        raw.append(model.generate(messages, grammar, limit))
        return raw[-1]

    ok = bad = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(_decoded(line))
        except json.JSONDecodeError as exc:
            bad += 1
            err.write(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno}); skipped\n")
            continue
        except (UnicodeDecodeError, RecursionError) as exc:
            bad += 1
            err.write(f"line {number}: {_unreadable(exc)}; skipped\n")
            continue
        problem = _problem(obj)
        if problem:
            bad += 1
            err.write(f"line {number}: {problem}; skipped\n")
            continue
        context = [{"role": str(m.get("role", "")), "content": _text(m.get("content"))}
                   for m in obj.get("context") or []]
        label: FollowupLabel | None
        if model is None:
            label = classify(obj["previous"], obj["followup"], context)
        else:
            raw.clear()
            label = classify_with_model(obj["previous"], obj["followup"], context, generate=generate,
                                        n_ctx=model.n_ctx, max_tokens=max_tokens, min_confidence=min_confidence)
        assert label is not None  # a local model is never "busy"
        obj.update(kind=label.kind, actionable=label.actionable, instruction=label.instruction,
                   confidence=label.confidence, detector=label.detector)
        if model is not None:
            obj.update(fallback=label.fallback, model_output=raw[-1] if raw else "")
        out.write(_dumps(obj) + "\n")
        ok += 1
    return ok, bad


def _detector_model(path: str | None, configured: str, threads: int) -> LocalModel | None:
    """The model `--model` (else the config's `detector.model`) names, loaded now (None: the rules)."""
    if path == "served":
        raise click.ClickException('--model served needs the daemon; give the path of a GGUF file instead.')
    if path is None:
        path = configured.strip()
        if path == "served":
            # No daemon here, so no served model: say so rather than quietly change the labels.
            sys.stderr.write('note: detector.model = "served" needs the daemon; labelling with the rules '
                             '(pass --model PATH to use a model here)\n')
            return None
        if not path:
            return None
    try:
        model = LocalModel(path, n_threads=threads)
        model.load()  # fail before reading stdin, naming the file, not once per line
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc
    return model


@signals.command("classify")
@click.option("--model", "model_path", metavar="PATH",
              help="Label with this GGUF model (rules' label as fallback). Default: config detector.model.")
@click.option("--min-confidence", type=float, default=None,
              help="Keep the model's label only at this confidence or above (default: detector.min_confidence).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="CPU threads for the model (0: one per physical core).")
def classify_command(model_path: str | None, min_confidence: float | None, threads: int) -> None:
    """Label follow-ups: JSONL on stdin, the same objects with labels on stdout.

    Each input line is {"previous": <assistant text>, "followup": <user text>, "context":
    [optional OpenAI-style messages before them]}. Each output line adds "kind", "actionable",
    "instruction" ('' unless actionable), "confidence" (0-1) and "detector" ("rules" or "model").
    With a model it also adds "fallback" (why the rules' label was kept; '' if the model's was
    used) and "model_output" (the model's raw JSON). Bad lines are reported on stderr with their
    line number and skipped; the exit code is 1 only if no line could be labelled.

    Example: echo '{"previous": "Hi!", "followup": "shorter"}' | rlhi signals classify

    Example: rlhi signals classify --model ~/models/qwen2.5-1.5b-instruct-q4_k_m.gguf < f.jsonl
    """
    try:
        settings = load_config().detector
    except RlhiError as exc:
        raise click.ClickException(str(exc)) from exc
    model = _detector_model(model_path, settings.model, threads)
    if min_confidence is None:
        min_confidence = settings.min_confidence
    # sys streams, not click.echo per line: thousands of lines a minute, and CliRunner swaps them.
    stderr = sys.stderr
    try:
        ok, bad = classify_lines(getattr(sys.stdin, "buffer", sys.stdin), sys.stdout, stderr, model,
                                 min_confidence, settings.max_tokens)
    finally:
        if model is not None:
            model.close()
    log.info("classified %d follow-ups, skipped %d bad lines", ok, bad)
    if bad and not ok:
        raise click.ClickException(f"none of the {bad} input lines could be labelled; see the errors above")
    if bad:
        stderr.write(f"warning: skipped {bad} bad line(s); labelled {ok}\n")


if __name__ == "__main__":  # pragma: no cover - `python -m rlhi_local.signals_cli classify`
    signals()
