"""Score a follow-up against each kind: cue phrases plus a few structural features.

Pure and fast: a handful of compiled regular expressions over the casefolded text and a word
overlap with the previous answer and the last user message. Nothing here allocates per kind
beyond a dict of floats, so a line costs tens of microseconds.
"""

from __future__ import annotations

import math
import re
from typing import Final, Mapping, Sequence

from ._instruction import error_line
from ._lexicon import ANAPHORA, CUES, ERROR_HINT, NEW_TOPIC, STOPWORDS

__all__ = ["ACTIONABLE", "KINDS", "Scored", "score"]

KINDS: Final = ("rewrite_request", "correction", "clarification", "complaint", "retry", "positive",
                "continuation", "new_request")
ACTIONABLE: Final = frozenset({"rewrite_request", "correction", "clarification"})
"""Kinds that say how the answer should change, so they can become `guided_rewrite` pairs."""

Scored = tuple[str, float, dict[str, float]]
MAX_CHARS: Final = 2000
"""Longer follow-ups are scored on their first and last thousand characters."""

# A leading acknowledgement ("Thanks!", "great, but", "perfect, thanks.") that may be followed by
# the real message; it is scored on its own so that "thanks! now write X" is a new request.
_ACK: Final = re.compile(
    r"^(?:(?:thanks?(?: you)?(?: so much| a lot| very much)?|thx|ty|perfect|great|awesome|nice|cool|ok(?:ay)?"
    r"|good|wow|yes|yep|yeah|merci(?: beaucoup)?|danke(?: schön)?|gracias|muchas gracias|super|genial|parfait"
    r"|perfekt|perfecto|that worked|that works|it works|this is (?:great|good|nice)|that'?s (?:great|good|nice|perfect)"
    r"|love it|nice one|ok thx|ok thanks)[\s,!.;:—–-]*)+",
    re.IGNORECASE,
)
_BUT: Final = re.compile(r"^(?:but|however|mais|aber|pero)\b[\s,]*", re.IGNORECASE)
_WORD: Final = re.compile(r"[^\W\d_]{2,}|\d+", re.UNICODE)
_REQUEST: Final = re.compile(
    r"\?|^(?:can|could|would|will|how|what|which|who|why|when|where|is|are|do|does|should|write|give|make"
    r"|tell|explain|translate|help|recommend|suggest|show|list|create|plan|find|summari[sz]e|draft|escríbeme"
    r"|escribe|écris|peux|kannst|was|wie|wer|qué|cómo|cuál|quelle?|comment|dame|gib|schreib)\b",
    re.IGNORECASE,
)
_PRONOUN: Final = re.compile(r"\b(?:it|this|them|these|those|that (?:one|part|into|to|in|for|with)|ça|davon|damit|lo|eso|esto)\b"
                             r"|\b(?:it|this|that|them)\W*$", re.IGNORECASE)
_OPENER: Final = re.compile(r"^(?:now|next|also|another thing|one more thing)\b[\s,:]*",
                           re.IGNORECASE)
_IMPERATIVE: Final = re.compile(r"^(?:summari[sz]e|convert|explain|translate|rewrite|write)\b", re.IGNORECASE)
_VERDICT: Final = re.compile(
    r"\b(?:wrong|incorrect|not (?:right|correct|true|quite|what)|mistake|forgot|missed|(?:no|any) sense"
    r"|what do you mean|talking about|faux|falsch|stimmt nicht|mal|incorrecto|error)\b", re.IGNORECASE)
_SELF: Final = re.compile(r"^(?:no,? |nah,? |nope,? )?i (?:do not|don'?t|dont|am not|'m not|im not|would|'d|want|need|just)\b",
                          re.IGNORECASE)
_REASK: Final = re.compile(r"\b(?:i'?ll ask again|again:|ask(?:ed)? again|answer the question again)\b",
                           re.IGNORECASE)


def _stems(text: str) -> set[str]:
    """Content words cut to five letters: a crude stem that works across the four languages."""
    return {w.rstrip("s")[:5] for w in (m.group(0).lower() for m in _WORD.finditer(text))
            if w not in STOPWORDS}


def _last_user(context: Sequence[Mapping[str, str]]) -> str:
    for message in reversed(context):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def _cue_scores(text: str) -> dict[str, float]:
    scores = dict.fromkeys(KINDS, 0.0)
    for kind, cues in CUES.items():
        scores[kind] = sum(w for pattern, w in cues if pattern.search(text))
    return scores


def score(previous: str, followup: str, context: Sequence[Mapping[str, str]] = ()) -> Scored:
    """(best kind, confidence in [0, 1], every kind's raw score)."""
    text = followup.strip().replace("’", "'").replace("‘", "'")
    if len(text) > MAX_CHARS:
        # The cues sit at the start (the verdict) and the end (a traceback's last line); the
        # middle of a long paste only costs time.
        text = text[: MAX_CHARS // 2] + "\n" + text[-MAX_CHARS // 2 :]
    previous = previous[-4 * MAX_CHARS :]
    if not text:
        return "new_request", 0.0, dict.fromkeys(KINDS, 0.0)

    if error_line(text) or (ERROR_HINT.search(text) and len(text) < 200):
        scores = dict.fromkeys(KINDS, 0.0)
        scores["correction"] = 4.0 if error_line(text) else 2.5
        return "correction", _confidence(scores), scores

    ack = _ACK.match(text)
    rest = text[ack.end():] if ack else text
    rest = _BUT.sub("", rest).strip()
    # "Thanks! Now/Next, write X": after an acknowledgement these open a new request.
    opener = _OPENER.match(rest) if ack else None
    if opener:
        rest = rest[opener.end():]
    if ack and not rest:
        scores = dict.fromkeys(KINDS, 0.0)
        scores["positive"] = 3.0
        return "positive", _confidence(scores), scores

    scores = _cue_scores(rest)
    words = _stems(rest)
    prev_words = _stems(previous)
    asked = _stems(_last_user(context))
    overlap_prev = len(words & prev_words)
    overlap_ask = len(words & asked) / max(1, len(words | asked)) if asked else 0.0
    is_request = bool(_REQUEST.search(rest))
    pronoun = bool(_PRONOUN.search(rest))

    # "Thanks! <something>": the acknowledgement itself says nothing about the rest, but a
    # statement after it ("I'll send it as is") is still approval.
    if ack:
        scores["positive"] += 0.8 if not is_request else -1.0
    elif is_request:
        scores["positive"] -= 1.0  # "recommend a good podcast" asks; it does not approve

    # Re-asking the same question is a retry, even without the word "again".
    if overlap_ask >= 0.5 and is_request:
        scores["retry"] += 2.0 + overlap_ask
    if _REASK.search(rest):
        scores["retry"] += 1.5

    # "No, ..." answering the assistant's own question ("Shall I book it?") judges nothing, and
    # neither does a statement about the user ("I don't need a booking").
    if previous.rstrip().endswith("?") and not _VERDICT.search(rest):
        scores["correction"] -= 1.2
        scores["complaint"] -= 1.2
    if _SELF.search(rest) and not _VERDICT.search(rest):
        scores["correction"] -= 0.8

    # A verdict followed by the right answer is a correction; a bare verdict is a complaint.
    negative = (scores["complaint"] > 0 or scores["correction"] >= 1.0) and scores["clarification"] < 2.0
    substance = len(words - prev_words) + (2 if re.search(r"\d|[\"'`]\w", rest) else 0)
    if negative and len(words) >= 4 and substance >= 2:
        scores["correction"] += 1.0 + 0.2 * min(substance, 5)
        scores["complaint"] -= 0.8
    elif scores["correction"] > 0 and len(words) <= 2:
        scores["complaint"] += 1.0

    # A style change needs an object in the answer: "make it shorter", not "summarize Hamlet".
    if scores["rewrite_request"] > 0:
        if pronoun:
            scores["rewrite_request"] += 0.8
        elif overlap_prev == 0 and _IMPERATIVE.match(rest):
            scores["rewrite_request"] -= 1.2

    # A question or request: builds on the answer, or changes the subject.
    if is_request or scores["continuation"] > 0:
        scores["continuation"] += 0.9 * min(overlap_prev, 3) + (0.9 if pronoun else 0.0)
        scores["new_request"] += 0.7 + (2.0 if NEW_TOPIC.search(rest) else 0.0) + (1.2 if opener else 0.0)
        if ANAPHORA.match(rest) and not ack:
            scores["continuation"] += 0.6
    else:
        scores["new_request"] = 0.0
        if not any(scores.values()):
            # A statement with no cue: most often more detail on the same thread.
            scores["continuation"] = 0.5 + 0.3 * min(overlap_prev, 3)

    scores = {k: max(0.0, v) for k, v in scores.items()}
    if not any(scores.values()):
        # Every cue was discounted: an answer to the assistant's question, or small talk.
        scores["continuation"] = 0.5
    kind = max(KINDS, key=lambda k: scores[k])
    return kind, _confidence(scores), scores


def _confidence(scores: Mapping[str, float]) -> float:
    """How far the winner is ahead, squashed into [0, 1]: a lone strong cue is near 1."""
    ranked = sorted((max(0.0, s) for s in scores.values()), reverse=True)
    top, second = ranked[0], ranked[1]
    strength = 1.0 - math.exp(-top)
    margin = 0.5 + 0.5 * math.tanh(top - second)
    return round(min(1.0, max(0.0, strength * margin)), 3)
