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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Iterable, Iterator, Literal, Mapping, Sequence

from ._instruction import instruction_for
from ._quality import instruction_met, is_harmful_instruction, normalise, pair_problem
from ._rules import KINDS, score

__all__ = [
    "ACTIONABLE",
    "DETECTOR_VERSION",
    "KINDS",
    "FollowupKind",
    "FollowupLabel",
    "classify",
    "classify_many",
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
ACTIONABLE: Final = frozenset({"rewrite_request", "correction", "clarification"})
"""Kinds that say how the answer should change, so they can become `guided_rewrite` pairs."""


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
