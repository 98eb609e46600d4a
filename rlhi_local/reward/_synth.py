"""Synthetic users for the reward-model prior: personas with stated, measurable style preferences.

`render` writes one topic's facts (`_bank`) in a given `Style` by deterministic transforms (keep
or drop points, list or prose, add the example and code, contractions or their expansion, openers
and closers, emojis, the follow-up offer), so two answers to one question differ only in style.
A `SyntheticUser` states preferences on a few style dimensions (in the words of a persona card),
plus facts unrelated to style; of two answers it prefers the one that matches more of what it
stated. Some pairs test what every user wants instead: an on-topic, finished, non-repeating
answer over an off-topic, cut-off or looping one.

Deterministic for a given seed: `python -m rlhi_local.reward.train_prior` rebuilds the same pairs,
and so the shipped prior (up to float rounding across thread counts).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace
from typing import Literal, Sequence

from ._bank import DIMENSIONS, DISTRACTORS, Topic
from ._features import Comparison

__all__ = ["Style", "SyntheticUser", "degrade", "make_card", "make_users", "render", "user_comparisons"]

Split = Literal["train", "heldout"]

STYLE_VALUES: dict[str, tuple[str, ...]] = {
    "length": ("short", "long"),
    "format": ("bullets", "numbered", "prose"),
    "examples": ("yes", "no"),
    "tone": ("casual", "formal", "plain"),
    "emoji": ("yes", "no"),
    "followup": ("yes", "no"),
}

_CONTRACTIONS = (
    ("it is", "it's"), ("do not", "don't"), ("does not", "doesn't"), ("is not", "isn't"), ("are not", "aren't"),
    ("cannot", "can't"), ("will not", "won't"), ("you are", "you're"), ("they are", "they're"),
    ("that is", "that's"), ("there is", "there's"), ("what is", "what's"), ("I am", "I'm"), ("we are", "we're"),
    ("you will", "you'll"), ("let us", "let's"), ("have not", "haven't"), ("did not", "didn't"),
    ("was not", "wasn't"), ("here is", "here's"), ("would not", "wouldn't"), ("you would", "you'd"),
)
_OPENERS = {
    "casual": ("Sure!", "Good question!", "Oh, fun one.", "Okay, so here's the deal.", "Nice one!"),
    "formal": ("Certainly.", "Thank you for your question.", "Please find the explanation below.",
               "The answer is as follows."),
    "plain": ("",),
}
_CLOSERS = {
    "casual": ("Hope that helps!", "Have fun with it!", "Pretty cool stuff, honestly.", "Cheers!"),
    "formal": ("I trust this clarifies the matter.", "I hope this information proves useful.",
               "Kindly note that details may vary by circumstance."),
    "plain": ("",),
}
_EMOJIS = ("🙂", "😊", "👍", "💡", "🚀", "✨", "🌱", "🎉")


@dataclass(frozen=True)
class Style:
    length: str = "long"
    format: str = "prose"
    examples: str = "no"
    tone: str = "plain"
    emoji: str = "no"
    followup: str = "no"


@dataclass(frozen=True)
class SyntheticUser:
    name: str
    prefs: dict[str, str]
    """Stated preferences: dimension → wanted value (a subset of `STYLE_VALUES`)."""
    card: str
    """The persona card, in the format `persona.render_card` writes."""

    def utility(self, style: Style) -> int:
        """+1 per stated preference the style meets, −1 per one it breaks (a plain tone is 0)."""
        total = 0
        for dim, want in self.prefs.items():
            got = getattr(style, dim)
            if dim == "tone" and got == "plain":
                continue
            total += 1 if got == want else -1
        return total


def _pick(options: Sequence[str], *key: object) -> str:
    digest = hashlib.sha256("|".join(map(str, key)).encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def _casualise(text: str) -> str:
    for long, short in _CONTRACTIONS:
        text = re.sub(rf"\b{long}\b", short, text)
        text = re.sub(rf"\b{long.capitalize()}\b", short.capitalize() if short[0] != "I" else short, text)
    return text


def _formalise(text: str) -> str:
    for long, short in _CONTRACTIONS:
        text = re.sub(rf"\b{re.escape(short)}\b", long, text)
        text = re.sub(rf"\b{re.escape(short.capitalize())}\b", long.capitalize() if long[0] != "I" else long, text)
    return text


def render(topic: Topic, style: Style) -> str:
    """The topic's answer written in `style` (same facts, different form)."""
    key = (topic.question, style)
    short = style.length == "short"
    points = list(topic.points[:2] if short and style.format != "prose" else topic.points[:1] if short
                  else topic.points)
    opener = _pick(_OPENERS[style.tone], "open", *key)
    closer = _pick(_CLOSERS[style.tone], "close", *key) if not short else ""
    emoji = _pick(_EMOJIS, "emoji", *key) if style.emoji == "yes" else ""
    lead = topic.direct
    if emoji:
        opener = f"{opener} {emoji}" if opener else ""
        lead = lead if opener else f"{lead} {emoji}"
        closer = f"{closer} {_pick(_EMOJIS, 'emoji2', *key)}" if closer else ""
    first = f"{opener} {lead}".strip()
    blocks: list[str] = []
    if style.format == "prose":
        if short:
            blocks.append(" ".join([first, *points]))
        else:
            blocks += [" ".join([first, *points[:2]]), " ".join(points[2:])]
    else:
        marker = (lambda i: "- ") if style.format == "bullets" else (lambda i: f"{i}. ")
        blocks += [first, "\n".join(marker(i + 1) + p for i, p in enumerate(points))]
    if style.examples == "yes":
        blocks.append(f"For example, {topic.example}")
        if topic.code and not short:
            blocks.append(f"```\n{topic.code}\n```")
    if closer:
        blocks.append(closer)
    if style.followup == "yes":
        follow = topic.followup
        if style.tone == "casual":
            follow = follow.replace("Would you like me to", "Want me to").replace("Would you like", "Want")
        elif style.tone == "formal":
            follow = follow.replace("Would you like me to", "Shall I")
        blocks.append(follow)
    out = []
    for block in blocks:
        if block.startswith("```"):
            out.append(block)
        elif style.tone == "casual":
            out.append(_casualise(block))
        elif style.tone == "formal":
            out.append(_formalise(block))
        else:
            out.append(block)
    return "\n\n".join(b for b in out if b.strip())


def degrade(topic: Topic, other: Topic, style: Style, rng: random.Random) -> str:
    """An answer every user should like less than `render(topic, style)`: off-topic, cut off
    mid-sentence (shorter), or stuck in a loop (longer), so that degeneration, not length, is
    what these pairs teach."""
    kind = rng.choice(("off_topic", "truncated", "looping"))
    if kind == "off_topic":
        return render(other, style)
    text = render(topic, style)
    words = text.split(" ")
    if kind == "truncated":
        return " ".join(words[: max(4, int(len(words) * rng.uniform(0.4, 0.8)))]).rstrip(".!?,;:")
    return " ".join([text] + [topic.points[-1]] * rng.randint(3, 6))


CARD_TEXT_SHARE = 0.4
"""How often a training user states a preference in the mined card's own words (the first
phrasing): most real cards are mined, and those exact texts must be read well."""


def _phrasing(options: Sequence[str], split: Split, rng: random.Random) -> str:
    if split == "train" and len(options) > 1 and rng.random() < CARD_TEXT_SHARE:
        return options[0]
    return rng.choice(options)


def make_users(n: int, seed: int, split: Split = "train", max_prefs: int = 3,
               silent_share: float = 0.0) -> list[SyntheticUser]:
    """`n` users, each stating 1–`max_prefs` preferences (dimensions and values drawn at random)
    and 0–3 unrelated facts, in the `split`'s phrasings. A `silent_share` of them state none."""
    rng = random.Random(seed)
    users = []
    for i in range(n):
        silent = rng.random() < silent_share
        dims = [] if silent else rng.sample(sorted(DIMENSIONS), rng.randint(1, max_prefs))
        prefs = {d: rng.choice(sorted(DIMENSIONS[d])) for d in dims}
        users.append(SyntheticUser(f"{split}-{seed}-{i}", prefs, make_card(prefs, split, rng)))
    return users


def make_card(prefs: dict[str, str], split: Split, rng: random.Random) -> str:
    """A persona card stating `prefs` (one line each) among 0–3 facts unrelated to style."""
    lines = [_phrasing(DIMENSIONS[d][v][split], split, rng) for d, v in prefs.items()]
    lines += rng.sample(DISTRACTORS[split], rng.randint(0 if prefs else 1, 3))
    rng.shuffle(lines)
    return "User persona:\n" + "\n".join(f"- {line}." for line in lines)


def _random_style(rng: random.Random) -> Style:
    return Style(**{d: rng.choice(v) for d, v in STYLE_VALUES.items()})


def user_comparisons(user: SyntheticUser, topics: Sequence[Topic], n: int, seed: int,
                     universal_share: float = 0.15, noise: float = 0.0,
                     prefs: dict[str, str] | None = None) -> list[Comparison]:
    """`n` preference pairs of `user` over `topics`. Most differ in a stated dimension (and
    sometimes one more, at random); `universal_share` contrast a good answer with a degraded one;
    a `noise` share are flipped. `prefs` overrides what the user really prefers (a preference
    the card does not state)."""
    rng = random.Random(f"{seed}-{user.name}")
    judge = replace(user, prefs=prefs) if prefs is not None else user
    out: list[Comparison] = []
    guard = 0
    while len(out) < n and guard < n * 50:
        guard += 1
        topic = rng.choice(list(topics))
        prompt = ({"role": "user", "content": topic.question},)
        if not judge.prefs or rng.random() < universal_share:
            style = _random_style(rng)
            for dim, want in judge.prefs.items():
                style = replace(style, **{dim: want})
            other = rng.choice([t for t in topics if t is not topic])
            chosen, rejected = render(topic, style), degrade(topic, other, style, rng)
        else:
            a = _random_style(rng)
            dim = rng.choice(sorted(judge.prefs))
            b = replace(a, **{dim: rng.choice([v for v in STYLE_VALUES[dim] if v != getattr(a, dim)])})
            if rng.random() < 0.5:
                extra = rng.choice(sorted(STYLE_VALUES))
                b = replace(b, **{extra: rng.choice(STYLE_VALUES[extra])})
            ua, ub = judge.utility(a), judge.utility(b)
            if ua == ub:
                continue
            good, bad = (a, b) if ua > ub else (b, a)
            chosen, rejected = render(topic, good), render(topic, bad)
        if chosen == rejected:
            continue
        if rng.random() < noise:
            chosen, rejected = rejected, chosen
        out.append(Comparison(user.card, prompt, chosen, rejected))
    return out
