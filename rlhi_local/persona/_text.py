"""Reduce a user message to the statements the user makes about themselves, in their own words.

Pasted code, quoted text, reported speech, questions and hypotheticals are cut before any miner
looks, because "my friend said 'I'm a nurse'" and "are you a nurse?" say nothing about the user.
"""

from __future__ import annotations

import re
from typing import Final

MAX_CHARS: Final = 20_000
"""Only the start of a very long message is read: long pastes are documents, not self-statements."""

_FENCE: Final = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.DOTALL)
_INLINE_CODE: Final = re.compile(r"`[^`\n]*`")
_QUOTED: Final = re.compile(
    r"\"[^\"\n]{0,400}\"|“[^”\n]{0,400}”|«[^»\n]{0,400}»|„[^“”\n]{0,400}[“”]|‘[^’\n]{0,400}’"
    r"|(?<![\w’'])'[^'\n]{3,400}'(?![\w’'])"
)
_CODE_LINE: Final = re.compile(
    r"^(?:>.*|(?: {4}|\t).*|\s*(?:Traceback|File \"|\w+(?:Error|Exception)\b:?).*|.*[{};]\s*)$",
    re.MULTILINE,
)
_REPORTED: Final = re.compile(
    r"\b(?:said|says|say|told (?:me|him|her|them|us)|tells (?:me|him|her)|wrote|writes|asked|asks"
    r"|replied|claims?|claimed|quote|quoting|texted|messaged|dit|sagte|sagt|dijo|dice)\b",
    re.IGNORECASE,
)
_SENTENCE: Final = re.compile(r"(?<=[.!?])\s+|\n+|(?<=[.!?])(?=[A-Z¿¡])")
_QUESTION_START: Final = re.compile(
    r"^\W*(?:are|am|is|do|does|did|can|could|should|would|will|shall|may|might|must|what|how|why"
    r"|when|where|who|whom|which|have|has|was|were|isn'?t|aren'?t|don'?t|doesn'?t|est-ce|bist"
    r"|kannst|sollte|wie|warum|wo|qu[e']|quel|quelle|comment|pourquoi|où|suis-je|cómo|qué|por qué"
    r"|dónde)\b",
    re.IGNORECASE,
)
HYPOTHETICAL: Final = re.compile(
    r"\b(?:pretend|imagine|role-?play|act as|acting as|as if|as though|character|hypothetical\w*"
    r"|suppose|supposing|let'?s say|in the voice of|from the perspective of|persona|fictional"
    r"|where i|in which i|si j'étais|imagin\w+|stell dir vor|supongamos|finge)\b",
    re.IGNORECASE,
)
_GUARD_BEFORE: Final = re.compile(
    r"\b(?:if|whether|unless|when|whenever|once|should|would|could|might|must|shall|may|can|do"
    r"|does|did|will|like|until|before|after|wish|si|wenn|falls|ob|cuando)\W*$",
    re.IGNORECASE,
)


def clean(text: str) -> str:
    """`text` without code, quotes, logs and block quotes (what the user did not say themselves)."""
    text = text[:MAX_CHARS]
    text = _FENCE.sub("\n", text)
    text = _CODE_LINE.sub("", text)
    text = _INLINE_CODE.sub(" ", text)
    return _QUOTED.sub(" … ", text)


def sentences(text: str) -> list[str]:
    """Cleaned sentences of `text`, stripped, none empty."""
    return [s.strip() for s in _SENTENCE.split(clean(text)) if s and s.strip()]


def statements(text: str, keep_questions: bool = False) -> list[str]:
    """The declarative parts of `text` the user says in their own voice.

    A question keeps only what comes before its last comma ("I'm a nurse, how do I...?" keeps
    "I'm a nurse"), and nothing when it starts like a question or has no comma (unless
    `keep_questions`). Reported speech keeps what comes before the verb of saying. Hypotheticals
    ("pretend I'm...") are dropped.
    """
    out: list[str] = []
    for sentence in sentences(text):
        if HYPOTHETICAL.search(sentence):
            continue
        reported = _REPORTED.search(sentence)
        if reported:
            sentence = sentence[: reported.start()]
        stripped = sentence.rstrip(" )\"'”’»")
        if not keep_questions and _QUESTION_START.match(sentence):
            continue  # "do you always use this many emojis" asks, even without a question mark
        if not keep_questions and (stripped.endswith("?") or sentence.lstrip().startswith("¿")):
            if "," not in sentence:
                continue
            sentence = sentence.rsplit(",", 1)[0]
        if sentence.strip():
            out.append(sentence.strip())
    return out


def guarded(clause: str, start: int) -> bool:
    """True when the words just before `start` make what follows conditional or a question
    ("if I use Windows", "should I use Windows", "when I'm on Linux")."""
    before = clause[max(0, start - 40): start]
    return bool(_GUARD_BEFORE.search(before))


def slug(text: str) -> str:
    """A key-safe form of `text`: lowercase words joined by '-'."""
    return re.sub(r"[^\w+#!]+", "-", text.lower()).strip("-")
