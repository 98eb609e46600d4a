"""The persona: facts about one user mined from their history, and the card rendered from them.

Pure functions over records (DESIGN §4): the caller reads the user's messages from the store,
calls `mine_facts`, merges the result into the active facts with `merge_facts`, renders the card
with `render_card`, and stores facts (as `facts_to_json`) and card as a new persona version. The
invariant: a fact the user typed, edited or deleted is never changed by mining, and a deleted
key never comes back. The card is what goes into the system prompt, at inference and in training.

Example:

    >>> from rlhi_local.persona import fact_from_user_text, render_card
    >>> print(render_card([fact_from_user_text("Prefers metric units")]))
    User persona:
    - Prefers metric units.

A rebuild from scratch (after the user deleted conversations) keeps only the user's own facts:
`merge_facts([f for f in current if f.source == "user" or f.deleted], mine_facts(history))`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import replace
from typing import Final, Sequence

from ..errors import InvalidRequestError
from ..records import Message
from . import _lexicon as lx
from ._fact import CATEGORIES, Fact, FactCategory, FactSource, facts_from_json, facts_to_json
from ._mine import CATEGORY_ORDER, MAX_EVIDENCE, mine_facts
from ._text import slug

__all__ = [
    "Fact",
    "FactCategory",
    "FactSource",
    "delete_fact",
    "edit_fact",
    "estimate_tokens",
    "fact_from_user_text",
    "facts_from_json",
    "facts_to_json",
    "merge_facts",
    "mine_facts",
    "render_card",
    "user_edit_facts",
    "with_persona",
]

CARD_HEADER: Final = "User persona:"
MAX_USER_FACT_CHARS: Final = 300
_THIRD_PERSON: Final = (
    (r"^uses\b", "I use"), (r"^is\b", "I am"), (r"^has\b", "I have"), (r"^lives\b", "I live"),
    (r"^prefers\b", "I prefer"), (r"^likes\b", "I like"), (r"^wants\b", "I want"),
    (r"^works as\b", "I work as"),
)
_PREFERENCE_START: Final = re.compile(
    r"^(?:prefers?|likes?|wants?|no|never|always|don'?t|do not|use|avoid|keep|answer|reply|respond"
    r"|write|please|be)\b", re.IGNORECASE,
)


def estimate_tokens(text: str) -> int:
    """A conservative token estimate: the larger of ceil(words × 1.4) and ceil(characters / 4).

    Words × 1.4 fits English prose; characters / 4 catches text with few spaces (code, long
    compounds, CJK). Taking the larger keeps the card under budget for either tokenizer habit.
    """
    return max(math.ceil(len(text.split()) * 1.4), math.ceil(len(text) / 4))


def merge_facts(current: Sequence[Fact], mined: Sequence[Fact]) -> list[Fact]:
    """`current` facts updated with newly `mined` ones; idempotent (merging the same mined facts
    again changes nothing).

    - A user fact (`source == "user"`) or a deleted one keeps its key, text and state whatever is
      mined under that key; a deleted key therefore never comes back.
    - A mined fact takes the newly mined text, and the union of old and new evidence (newest
      mined first, at most 50 ids), with `count` the largest of old, new and evidence counts:
      counts never go down, so mining a window of new messages is also safe. Style statistics
      are measurements, not tallies: they are replaced.
    - Mined facts not mined again are kept (rebuild from scratch as the module docstring shows).
    Order: `current` order, then new keys in `mined` order.
    """
    out: dict[str, Fact] = {}
    for fact in current:
        held = out.get(fact.key)
        if held is None or (held.source == "mined" and not held.deleted) or fact.deleted:
            out[fact.key] = fact
    for new in mined:
        held = out.get(new.key)
        if held is not None and (held.source == "user" or held.deleted):
            continue
        if new.category == "style" or new.source == "user":
            out[new.key] = new
            continue
        old_evidence, old_count = (held.evidence, held.count) if held is not None else ((), 0)
        seen = set(new.evidence)
        evidence = (new.evidence + tuple(e for e in old_evidence if e not in seen))[:MAX_EVIDENCE]
        count = max(old_count, new.count, len(set(evidence)))
        out[new.key] = replace(new, evidence=evidence, count=count)
    return list(out.values())


def render_card(facts: Sequence[Fact], max_tokens: int = 300) -> str:
    """The persona card for the system prompt: a header and one line per fact, most important
    first (the user's own facts, then preferences, about the user, expertise, topics, style), of
    at most `max_tokens` by `estimate_tokens`. A fact that does not fit is left out and the next
    one tried. Deleted facts never appear; no visible facts (or no room) gives ''.

    Counts are not shown, so the card (and the training examples that carry it) changes only
    when a fact does, not every time one more message agrees.
    """
    visible = [(i, f) for i, f in enumerate(facts) if not f.deleted and f.text.strip()]
    visible.sort(key=lambda p: (p[1].source != "user", _rank(p[1].category),
                                0 if p[1].source == "user" else -p[1].count,
                                p[0] if p[1].source == "user" else 0, p[1].key))
    lines: list[str] = []
    seen: set[str] = set()
    for _, fact in visible:
        text = " ".join(fact.text.split())
        line = "- " + (text if text[-1] in ".!?" else text + ".")
        if line.lower() in seen:
            continue
        if estimate_tokens("\n".join([CARD_HEADER, *lines, line])) <= max_tokens:
            lines.append(line)
            seen.add(line.lower())
    return "\n".join([CARD_HEADER, *lines]) if lines else ""


def _rank(category: str) -> int:
    return CATEGORY_ORDER.index(category) if category in CATEGORY_ORDER else len(CATEGORY_ORDER)


def fact_from_user_text(text: str, category: FactCategory | None = None) -> Fact:
    """A fact the user typed ("Uses Windows", "I'm vegetarian"), with `source == "user"`.

    When the text says something the miners know (a job, a system, a style preference), the fact
    takes the mined key, so the same fact mined later does not show twice; otherwise the key is
    `<category>:user=<slug of the text>`. `category` defaults to a guess from the wording.
    """
    text = " ".join(str(text).split()).rstrip(".")
    if not text:
        raise InvalidRequestError("A persona fact needs some text; got an empty string.")
    if len(text) > MAX_USER_FACT_CHARS:
        raise InvalidRequestError(f"A persona fact may have at most {MAX_USER_FACT_CHARS} characters; "
                                  f"this one has {len(text)}. Shorten it or split it into several facts.")
    if category is not None and category not in CATEGORIES:
        raise InvalidRequestError(f"Persona fact category {category!r} is not one of {', '.join(CATEGORIES)}.")
    known = _known_key(text)
    if known is not None and category in (None, known[1]):
        key, category = known
    else:
        category = category or ("preference" if _PREFERENCE_START.match(text) else "about_user")
        key = f"{category}:user={_user_slug(text)}"
    return Fact(key, category, text, 0, (), "user")


def _known_key(text: str) -> tuple[str, FactCategory] | None:
    for key, shown in lx.PREFERENCES.items():
        if text.lower() == shown.lower():
            return f"preference:{key}", "preference"
    first_person = text
    for pattern, repl in _THIRD_PERSON:
        first_person = re.sub(pattern, repl, first_person, count=1, flags=re.IGNORECASE)
    probe = Message(id="typed", conversation_id="typed", parent_id=None, role="user",
                    content=first_person + ".", origin="user", status="complete", created_at="")
    found = [f for f in mine_facts([probe]) if f.category in ("preference", "about_user", "expertise")]
    return (found[0].key, found[0].category) if len(found) == 1 else None


def _user_slug(text: str) -> str:
    s = slug(text)
    return s if len(s) <= 60 else s[:51].rstrip("-") + "-" + hashlib.sha1(s.encode()).hexdigest()[:8]


def edit_fact(fact: Fact, text: str) -> Fact:
    """`fact` as the user rewrote it: same key, new text, and from now on the user's own."""
    edited = fact_from_user_text(text, fact.category)
    return replace(fact, text=edited.text, source="user", deleted=False)


def delete_fact(fact: Fact) -> Fact:
    """`fact` marked deleted by the user: hidden from the card, and never mined back."""
    return replace(fact, deleted=True, source="user")


def with_persona(messages: Sequence[dict[str, str]], card: str, system_prompt: str = "") -> list[dict[str, str]]:
    """The messages the model sees: the persona card (and the configured system prompt) in the
    system turn. One function for inference and training, so both see the same text."""
    messages = [dict(m) for m in messages]
    extra = "\n\n".join(part for part in (system_prompt, card) if part)
    if not extra:
        return messages
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{extra}" if messages[0]["content"] else extra
    else:
        messages.insert(0, {"role": "system", "content": extra})
    return messages


def user_edit_facts(current: Sequence[Fact], wanted: Sequence[tuple[str | None, str, bool]]) -> list[Fact]:
    """The facts after the user replaced the visible list with `wanted` (key, text, deleted).

    A known key with new text is edited, with `deleted` it is deleted; an unknown or missing key
    is a new fact typed by the user; a visible fact left out of `wanted` is deleted. Everything
    the user touched becomes theirs, so mining never changes it again.
    """
    by_key = {f.key: f for f in current}
    out: dict[str, Fact] = {}
    for key, text, deleted in wanted:
        fact = by_key.get(key) if key else None
        if fact is None:
            if not deleted:
                new = fact_from_user_text(text)
                out[new.key] = new
            continue
        if deleted:
            out[fact.key] = delete_fact(fact)
        elif text.strip() != fact.text.strip() or fact.deleted:
            out[fact.key] = edit_fact(fact, text)
        else:
            out[fact.key] = fact
    for fact in current:
        if fact.key not in out:
            out[fact.key] = fact if fact.deleted else delete_fact(fact)
    return list(out.values())
