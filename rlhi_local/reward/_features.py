"""What the reward model sees of (persona, conversation, answer): embeddings and style counts.

The persona is kept as the embeddings of the card's lines (one fact each); the model turns them
into one vector (`RewardModel.persona`), so facts add up independently of their order and count,
and a missing persona is the zero vector. The prompt
is the last user turn with the tail of the turn before it. Style features are cheap counts over
the answer text (length, lists, code, questions, tone markers, degeneration).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from ._embed import Embedder

__all__ = ["Comparison", "Features", "Judged", "PairFeatures", "STYLE_FEATURES", "featurize", "pair_features",
           "persona_lines", "prompt_text", "style_features"]

STYLE_FEATURES = (
    "log_words", "log_sentences", "words_per_sentence", "bullet_lines", "numbered_lines", "code_blocks",
    "questions", "ends_with_question", "exclamations", "emojis", "contractions", "formal_markers",
    "casual_markers", "example_markers", "paragraphs", "headings", "repetition", "unfinished",
)
"""Names and order of `style_features`; a model file records them and must match."""

CONTEXT_CHARS = 300
"""How much of the turn before the last user turn goes into the prompt text."""

_WORD = re.compile(r"[A-Za-z0-9_']+")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_BULLET = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)
_NUMBERED = re.compile(r"^\s*\d{1,2}[.)]\s+\S", re.MULTILINE)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+\S.*|\*\*[^*\n]+\*\*:?|[A-Z][^.!?\n]{0,60}:)\s*$", re.MULTILINE)
_CONTRACTION = re.compile(r"\b[A-Za-z]+'(?:s|t|re|ll|ve|d|m)\b", re.IGNORECASE)
_FORMAL = re.compile(
    r"\b(?:certainly|therefore|furthermore|moreover|consequently|thus|regards|kindly|accordingly|"
    r"nevertheless|I trust|please note|it should be noted|in addition|with respect to|hence|proves useful)\b",
    re.IGNORECASE)
_CASUAL = re.compile(
    r"\b(?:hey|gonna|wanna|cool|awesome|yeah|yep|okay|ok|pretty|stuff|lol|super|fun|cheers|totally|"
    r"basically|nice|neat|folks|kinda)\b", re.IGNORECASE)
_EXAMPLE = re.compile(r"\b(?:for example|for instance|e\.g\.|such as|imagine|say you)\b", re.IGNORECASE)
_EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B50\u2B55]")
_FINISHED = re.compile(r"[.!?)\]\"'`*:]\s*$|[\U0001F300-\U0001FAFF\u2600-\u27BF]\s*$")


@dataclass(frozen=True)
class Judged:
    """One answer to score: in the conversation `prompt`, for the user whose card is `persona`."""

    persona: str
    prompt: tuple[dict[str, str], ...]
    answer: str


@dataclass(frozen=True)
class Comparison:
    """A preference to learn from or test on: `chosen` is better than `rejected` for `persona`."""

    persona: str
    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Features:
    """Per answer: prompt and answer embeddings (n, 384) and raw style counts (n, k); the persona
    as its lines' embeddings (m, 384) with, for each line, the answer it belongs to (m,)."""

    lines: np.ndarray
    line_item: np.ndarray
    prompt: np.ndarray
    answer: np.ndarray
    style: np.ndarray

    def __len__(self) -> int:
        return int(self.answer.shape[0])

    def take(self, index: Sequence[int] | np.ndarray) -> "Features":
        """The answers at `index`, in that order, with their persona lines."""
        idx = np.asarray(index, dtype=np.int64)
        new_pos = np.full(len(self), -1, dtype=np.int64)
        new_pos[idx] = np.arange(len(idx))
        # An answer taken twice keeps one copy of its lines per copy.
        order = np.argsort(self.line_item, kind="stable")
        starts = np.searchsorted(self.line_item[order], np.arange(len(self) + 1))
        rows, owners = [], []
        for pos, i in enumerate(idx):
            these = order[starts[i]:starts[i + 1]]
            rows.append(these)
            owners.append(np.full(len(these), pos, dtype=np.int64))
        keep = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
        return Features(self.lines[keep], owner, self.prompt[idx], self.answer[idx], self.style[idx])


@dataclass(frozen=True)
class PairFeatures:
    chosen: Features
    rejected: Features

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, index: Sequence[int] | np.ndarray) -> "PairFeatures":
        return PairFeatures(self.chosen.take(index), self.rejected.take(index))


def persona_lines(card: str) -> list[str]:
    """The facts of a persona card: its lines without the header and list markers."""
    out = []
    for line in card.splitlines():
        text = line.strip().lstrip("-*• ").strip()
        if not text or text.lower().rstrip(":") == "user persona":
            continue
        out.append(text)
    return out


def prompt_text(prompt: Sequence[dict[str, str]]) -> str:
    """The last user turn, after the tail of the turn before it (what the answer replies to)."""
    turns = [m for m in prompt if m.get("role") in ("user", "assistant")]
    last = max((i for i, m in enumerate(turns) if m.get("role") == "user"), default=None)
    if last is None:
        return ""
    text = turns[last].get("content", "")
    if last > 0:
        before = turns[last - 1].get("content", "")[-CONTEXT_CHARS:]
        text = f"{before}\n{text}" if before else text
    return text


def style_features(text: str) -> np.ndarray:
    """Cheap counts over an answer, in the order of `STYLE_FEATURES` (float32)."""
    words = _WORD.findall(text)
    n_words = len(words)
    prose = re.sub(r"```.*?(?:```|$)", " ", text, flags=re.DOTALL)
    sentences = len(_SENTENCE_END.findall(prose)) + len(_BULLET.findall(prose)) + len(_NUMBERED.findall(prose))
    sentences = max(sentences, 1 if n_words else 0)
    lowered = [w.lower() for w in words]
    trigrams = list(zip(lowered, lowered[1:], lowered[2:]))
    repetition = 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    per_word = 10.0 / max(n_words, 1)
    stripped = text.strip()
    values = (
        math.log1p(n_words),
        math.log1p(sentences),
        n_words / max(sentences, 1) / 10.0,
        math.log1p(len(_BULLET.findall(prose))),
        math.log1p(len(_NUMBERED.findall(prose))),
        math.log1p(text.count("```") // 2),
        math.log1p(prose.count("?")),
        1.0 if stripped.endswith("?") else 0.0,
        math.log1p(prose.count("!")),
        math.log1p(len(_EMOJI.findall(text))),
        len(_CONTRACTION.findall(prose)) * per_word,
        len(_FORMAL.findall(prose)) * per_word,
        len(_CASUAL.findall(prose)) * per_word,
        math.log1p(len(_EXAMPLE.findall(prose))),
        math.log1p(len([p for p in re.split(r"\n\s*\n", stripped) if p.strip()])),
        math.log1p(len(_HEADING.findall(prose))),
        repetition,
        0.0 if not stripped or _FINISHED.search(stripped) else 1.0,
    )
    return np.asarray(values, dtype=np.float32)


def featurize(embedder: "Embedder", items: Sequence[Judged]) -> Features:
    """Embed and count every item (texts shared between items are encoded once)."""
    lines = [persona_lines(it.persona) for it in items]
    flat = [line for ls in lines for line in ls]
    prompts = [prompt_text(it.prompt) for it in items]
    answers = [it.answer for it in items]
    vectors = embedder.embed(flat + prompts + answers)
    n_lines, n = len(flat), len(items)
    owner = np.asarray([i for i, ls in enumerate(lines) for _ in ls], dtype=np.int64)
    style = (np.stack([style_features(a) for a in answers]) if answers
             else np.zeros((0, len(STYLE_FEATURES)), dtype=np.float32))
    return Features(vectors[:n_lines], owner, vectors[n_lines:n_lines + n], vectors[n_lines + n:], style)


def pair_features(embedder: "Embedder", comparisons: Sequence[Comparison]) -> PairFeatures:
    """Features of both sides of each comparison (one encoder pass for all of them)."""
    both = featurize(embedder, [Judged(c.persona, c.prompt, c.chosen) for c in comparisons]
                     + [Judged(c.persona, c.prompt, c.rejected) for c in comparisons])
    n = len(comparisons)
    return PairFeatures(both.take(np.arange(n)), both.take(np.arange(n, 2 * n)))
