"""A simulated user with one measurable preference: answers of at most 40 words.

It chats through the real API as a person would: a new question per conversation; when an
answer runs long it says so in its own words (one of several natural phrasings), and accepts the
model's next attempt when it is short enough (or gives up after two tries). Used by the learning
proof (tests/test_learning.py) and benchmarks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MAX_WORDS = 40

TOPICS = [
    "photosynthesis", "black holes", "the stock market", "vaccines", "the water cycle", "blockchains",
    "the French Revolution", "volcanoes", "machine learning", "compound interest", "the immune system",
    "plate tectonics", "inflation", "the internet", "solar panels", "DNA", "the Roman Empire", "gravity",
    "electric cars", "climate change", "the moon landing", "earthquakes", "coffee roasting", "sleep",
    "meditation", "jazz music", "the printing press", "antibiotics", "recycling", "rainbows", "tides",
    "bread baking", "the heart", "glaciers", "democracy", "batteries", "coral reefs", "chess openings",
    "the Olympic games", "honey bees", "nuclear power", "the Great Wall of China", "taxes", "marathon training",
    "password security", "composting", "the Renaissance", "submarines", "hurricanes", "wind turbines",
]
TEMPLATES = [
    "Explain {t} to me.", "How does {t} work?", "Tell me about {t}.", "What should I know about {t}?",
    "Can you describe {t}?", "Why is {t} important?",
]
FOLLOWUPS = [
    "That's too long. Answer in one or two short sentences.",
    "Way too wordy. Please make it shorter, two sentences max.",
    "Too long, I just want the short version in a sentence or two.",
    "Can you make that much shorter? One or two sentences.",
    "Shorter please, no more than two sentences.",
]


def words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def meets(text: str) -> bool:
    return 0 < words(text) <= MAX_WORDS


def prompts(start: int, count: int) -> list[str]:
    """Deterministic varied questions; disjoint ranges give disjoint train and held-out sets."""
    out = []
    for i in range(start, start + count):
        topic = TOPICS[i % len(TOPICS)]
        template = TEMPLATES[(i * 7 + i // len(TOPICS)) % len(TEMPLATES)]
        out.append(template.format(t=topic))
    return out


@dataclass
class Session:
    turns: int = 0
    complaints: int = 0
    accepted: int = 0
    met_first: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)


def chat_like_a_person(client: Any, questions: list[str], user: str, seed: int = 0,
                       max_tokens: int = 160) -> Session:
    """Ask each question in its own conversation and react to long answers."""
    s = Session()
    for n, question in enumerate(questions):
        messages = [{"role": "user", "content": question}]
        result = client.chat(messages, user=user, max_tokens=max_tokens, seed=seed + n)
        s.turns += 1
        if meets(result.text):
            s.met_first += 1
            continue
        for attempt in range(2):
            messages += [{"role": "assistant", "content": result.text},
                         {"role": "user", "content": FOLLOWUPS[(n + attempt) % len(FOLLOWUPS)]}]
            s.complaints += 1
            result = client.chat(messages, user=user, max_tokens=max_tokens, seed=seed + 1000 + n * 3 + attempt)
            s.turns += 1
            if meets(result.text):
                s.accepted += 1
                break
    return s


def rate(client: Any, questions: list[str], user: str, adapter: str | None, max_tokens: int = 120) -> float:
    """Share of first answers meeting the preference (off the record: the check teaches nothing)."""
    hits = 0
    for n, question in enumerate(questions):
        meta = {"adapter": adapter} if adapter else {}
        result = client.chat([{"role": "user", "content": question}], user=user, max_tokens=max_tokens,
                             seed=10_000 + n, off_record=True, metadata=meta)
        hits += meets(result.text)
    return hits / len(questions)
