"""The follow-up detector: label the user turn that follows an assistant turn (DESIGN §4).

Every user turn after an assistant turn gets one of eight kinds; the first three are actionable
and carry a short normalised instruction that a guided rewrite applies. The detector is pure
(text in, label out), runs on a CPU in well under a millisecond a line, and imports nothing heavy,
so the scheduler can label a whole history without touching the chat's hot path. Callers read the
store and write labels back with `detector_version`, so labels from an older detector can be found
and redone.

Example:

    >>> from rlhi_local.feedback import classify
    >>> classify("Here is a long answer...", "shorter please, one sentence").instruction
    'shorter, one sentence'

When the user configured a capable model (`detector.model`), `classify_with_model` asks it
instead, through a grammar that forces a JSON label, and keeps the rules' label whenever the
model's is unusable or below `detector.min_confidence`; each label says which detector made it.
The rules stay the default: on our labelled sets they beat the embedded 135M model by far
(benchmarks/feedback_detector.py --model), in microseconds instead of seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable, Final, Iterable, Iterator, Literal, Mapping, Sequence

from ..errors import RlhiError
from ._instruction import instruction_for
from ._llm import Generate, LocalModel, detector_messages, parse_verdict, verdict_grammar
from ._quality import instruction_met, is_harmful_instruction, normalise, pair_problem
from ._rules import ACTIONABLE, KINDS, score

__all__ = [
    "ACTIONABLE",
    "DETECTOR_VERSION",
    "KINDS",
    "Detect",
    "FollowupKind",
    "FollowupLabel",
    "Generate",
    "LocalModel",
    "classify",
    "classify_many",
    "classify_with_model",
    "instruction_met",
    "is_harmful_instruction",
    "normalise",
    "pair_problem",
]

log = logging.getLogger(__name__)

DETECTOR_VERSION: Final = "rules-1"
"""Stored with every label; bump it whenever a change could relabel a stored follow-up."""

FollowupKind = Literal["rewrite_request", "correction", "clarification", "complaint", "retry",
                       "positive", "continuation", "new_request"]


@dataclass(frozen=True)
class FollowupLabel:
    kind: FollowupKind
    """One of `KINDS`."""
    actionable: bool
    """`kind` is in `ACTIONABLE`."""
    instruction: str
    """A short normalised instruction ("shorter, one sentence"); '' when not actionable."""
    confidence: float
    """0–1: how far the winning kind is ahead of the others, not a calibrated probability."""
    detector_version: str = DETECTOR_VERSION
    detector: Literal["rules", "model"] = "rules"
    """Which detector produced this label: the rules, or the configured model."""
    fallback: str = ""
    """Why a configured model's label was not used ('' when it was, or when none was asked):
    `low_confidence`, `bad_output: ...` or `model_error: ...`."""


Detect = Callable[[str, str, Sequence[Mapping[str, str]]], "FollowupLabel | None"]
"""How a caller labels one `(previous, followup, context)`: `classify`, or `classify_with_model`
bound to a model; None means "not now" (the model is busy), so the follow-up waits unlabelled."""


def classify(previous: str, followup: str, context: Sequence[Mapping[str, str]] = ()) -> FollowupLabel:
    """Label `followup`, the user's turn after the assistant's `previous` answer.

    `context` is the OpenAI-style messages before `previous` (the user's question in particular,
    which tells a re-asked question apart from a new one). Never raises on any text.
    """
    kind, confidence, _ = score(previous or "", followup or "", context or ())
    actionable = kind in ACTIONABLE
    instruction = instruction_for(kind, followup) if actionable else ""
    if actionable and not instruction:
        instruction = "revise the answer"
    log.debug("follow-up %r -> %s (%.2f)", followup, kind, confidence)
    return FollowupLabel(kind, actionable, instruction, confidence)  # type: ignore[arg-type]


def classify_many(
    items: Iterable[tuple[str, str] | tuple[str, str, Sequence[Mapping[str, str]]]],
) -> Iterator[FollowupLabel]:
    """Label many `(previous, followup[, context])` tuples lazily, in order."""
    for item in items:
        yield classify(*item)


def classify_with_model(
    previous: str, followup: str, context: Sequence[Mapping[str, str]] = (), *, generate: Generate,
    n_ctx: int, max_tokens: int = 96, min_confidence: float = 0.5,
) -> FollowupLabel | None:
    """Label `followup` with a model (`generate`), keeping the rules' label when the model's fails.

    The model's label wins only if its output parses into a known kind with a confidence of at
    least `min_confidence`; otherwise the rules' label is returned with `fallback` saying why.
    Returns None when `generate` does (the model is wanted for a chat): label it later. An error
    of ours from the model (`RlhiError`, e.g. a prompt that does not fit) falls back, never raises.
    """
    rules = classify(previous, followup, context)
    try:
        messages = detector_messages(previous, followup, context, n_ctx=n_ctx, max_tokens=max_tokens)
        text = generate(messages, verdict_grammar(), max_tokens)
    except RlhiError as exc:
        log.warning("detector model failed, the rules' label stands: %s", exc)
        return replace(rules, fallback=f"model_error: {exc}"[:300])
    if text is None:
        return None
    verdict, problem = parse_verdict(text)
    if verdict is None:
        log.info("detector model output unusable, the rules' label stands: %s", problem)
        return replace(rules, fallback=f"bad_output: {problem}")
    if verdict.confidence < min_confidence:
        return replace(rules, fallback="low_confidence")
    instruction = verdict.instruction
    if verdict.actionable and not instruction:
        # The model named an actionable kind but no change: the rules' wording of the same text.
        instruction = instruction_for(verdict.kind, followup) or "revise the answer"
    log.debug("follow-up %r -> %s (%.2f) by the model", followup, verdict.kind, verdict.confidence)
    return FollowupLabel(verdict.kind, verdict.actionable, instruction,  # type: ignore[arg-type]
                         verdict.confidence, detector="model")
