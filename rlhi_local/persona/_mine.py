"""Mine persona facts from one user's whole history: what they say, ask for, and accept.

Each miner adds evidence (a message id) to a key; thresholds then decide which keys become facts.
A general statement ("I prefer short answers", "I'm a nurse") is enough on its own; a one-off
request ("no emojis", a "shorter" follow-up) must recur before it is called a preference, because
a wrong fact in the system prompt costs more than a missing one.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Final, Sequence

from ..feedback import classify, is_harmful_instruction
from ..records import Message
from . import _lexicon as lx
from ._fact import Fact
from ._self import Add, mine_self
from ._text import HYPOTHETICAL, clean, sentences, slug, statements

MAX_EVIDENCE: Final = 50
"""Evidence ids kept per fact (the latest); `count` still counts them all."""
MIN_ACCEPTED: Final = 5
"""Accepted answers needed before style statistics say anything."""
MIN_JARGON_TERMS: Final = 5
CATEGORY_ORDER: Final = ("preference", "about_user", "expertise", "topic", "style")
OPPOSITES: Final = (("concise", "detailed"), ("bullets", "no_bullets"), ("emojis", "no_emojis"),
                    ("casual", "formal"), ("metric", "imperial"))
NOT_ACCEPTED: Final = frozenset({"rewrite_request", "correction", "clarification", "complaint", "retry"})


@dataclass
class Tally:
    category: str
    texts: Counter[str] = field(default_factory=Counter)
    last_text: dict[str, int] = field(default_factory=dict)
    evidence: dict[str, int] = field(default_factory=dict)  # message id -> position in history
    conversations: set[str] = field(default_factory=set)
    strong: bool = False
    terms: set[str] = field(default_factory=set)


# -- explicit preferences --------------------------------------------------------------------------

_GENERAL = re.compile(
    r"\b(?:i\s+(?:really\s+|much\s+|generally\s+|usually\s+|always\s+|definitely\s+)?(?:prefer|like|love|hate|dislike"
    r"|appreciate|enjoy)|i['’]?d\s+(?:rather|prefer)|i\s+would\s+(?:rather|prefer)|i\s+can['’]?t\s+stand"
    r"|i['’]?m\s+not\s+a\s+fan\s+of|i\s+don['’]?t\s+(?:like|want|need|care for)|always|never|from now on|in general"
    r"|generally|going forward|in (?:the )?future|every time|each time|by default|my preference|je préfère"
    r"|j['’]aime|j['’]adore|je déteste|toujours|jamais|désormais|à l['’]avenir|dorénavant|ich\s+(?:bevorzuge|mag|hasse)"
    r"|immer|nie|niemals|ab jetzt|in zukunft|künftig|prefiero|me gusta|me encanta|odio|siempre|nunca"
    r"|de ahora en adelante)\b",
    re.IGNORECASE,
)
_ANSWER_NOUNS = re.compile(
    r"\b(?:answers?|responses?|replies|reply|explanations?|summar(?:y|ies)|outputs?|messages|texts?|it|them"
    r"|things|everything|réponses?|explications?|antworten|antwort|erklärungen|respuestas?|explicaciones)\b",
    re.IGNORECASE,
)
_PLURAL_ANSWERS = re.compile(r"\b(?:answers|responses|replies|explanations|réponses|antworten|respuestas)\b", re.IGNORECASE)
_INHERENT = re.compile(r"\b(?:concise|succinct|to the point|terse|verbose|wordy|concis|knapp|conciso|concisa)\b", re.IGNORECASE)
_MEH = re.compile(r"\b(?:don['’]?t mind|do not mind|doesn['’]?t matter|fine with|ok with|okay with|not sure|don['’]?t care"
                  r"|either way|whatever|not always|don['’]?t always|not necessarily)\b", re.IGNORECASE)
_CONTRAST = re.compile(r"\b(?:over|rather than|instead of|than|versus|vs\.?|plutôt que|statt|anstatt|en lugar de|en vez de)\b",
                       re.IGNORECASE)
_TOO = re.compile(r"\b(?:too|trop|zu|demasiado)\s*$", re.IGNORECASE)
_POLITE_Q = re.compile(r"^\W*(?:can|could|would|will)\s+you\b|^\W*please\b", re.IGNORECASE)
_ANSWER_IN = re.compile(
    r"\b(?:answer|reply|respond|write|talk|speak)(?:\s+[\w'’]+){0,2}?\s+in\s+(\w+)"
    r"|\bréponds?(?:-moi)?(?:\s+[\w'’]+){0,2}?\s+en\s+(\w+)"
    r"|\bantworte(?:\s+mir)?(?:\s+\w+){0,2}?\s+auf\s+(\w+)|\bresponde(?:me)?(?:\s+\w+){0,2}?\s+en\s+(\w+)",
    re.IGNORECASE,
)
_UNITS = re.compile(r"\bI\s+(?:use|prefer|work in|think in|live with)\s+(?:the\s+)?(metric|imperial|celsius|fahrenheit)\b",
                    re.IGNORECASE)
_I_USE_PY3 = re.compile(r"\bI\s+(?:use|am using|['’]m using|code in|write|work (?:in|with))\s+python\s?3\b", re.IGNORECASE)

_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)
_WORD = re.compile(r"[^\W_][\w'’.+#-]*")


def _preference_clauses(text: str) -> list[str]:
    out = statements(text)
    out += [s for s in sentences(text) if _POLITE_Q.match(s) and not HYPOTHETICAL.search(s)]
    return out


def mine_preferences(text: str, add: Add) -> None:
    """Explicit style preferences: "I prefer bullet points", "keep answers short", "no emojis"."""
    for clause in _preference_clauses(text):
        general = bool(_GENERAL.search(clause)) or bool(_PLURAL_ANSWERS.search(clause))
        contrast = _CONTRAST.search(clause)
        for pattern, pos, neg in lx.STYLE_WORDS:
            for m in pattern.finditer(clause):
                window = clause[max(0, m.start() - 40): m.start()]
                window = " ".join(window.split()[-5:])
                if _MEH.search(clause[max(0, m.start() - 40): m.end()]):
                    continue
                negated = bool(lx.NEGATORS.search(window)) ^ bool(contrast and contrast.start() < m.start())
                negated ^= bool(_TOO.search(window))  # "too long" asks for shorter
                key = neg if negated else pos
                if key is None:
                    continue
                if key in {"concise", "detailed"} and not (_INHERENT.search(m.group(0))
                                                           or _ANSWER_NOUNS.search(clause)):
                    continue  # "I like short stories" is about stories, not answers
                add(f"preference:{key}", "preference", lx.PREFERENCES[key], general)
        for m in _ANSWER_IN.finditer(clause):
            word = next(g for g in m.groups() if g).lower()
            if word in lx.ANSWER_LANGUAGES:
                lang = lx.ANSWER_LANGUAGES[word]
                add(f"preference:language={slug(lang)}", "preference", f"Wants answers in {lang}", general)
        for m in _UNITS.finditer(clause):
            key = "metric" if m.group(1).lower() in {"metric", "celsius"} else "imperial"
            add(f"preference:{key}", "preference", lx.PREFERENCES[key], True)
        if _I_USE_PY3.search(clause):
            add("preference:python3", "preference", lx.PREFERENCES["python3"], True)


def mine_followup(label_kind: str, instruction: str, add: Add) -> None:
    """A follow-up's instruction, in the detector's canonical phrases, as weak evidence."""
    for part in instruction.lower().split(", "):
        if label_kind == "clarification" and part.startswith("for "):
            for word, shown in lx.OS.items():
                if re.search(rf"^for {re.escape(word)}\b", part):
                    add(f"about_user:os={slug(shown)}", "about_user", f"Uses {shown}", False)
                    break
            continue
        for pattern, key in lx.INSTRUCTION_KEYS:
            if pattern.match(part):
                add(f"preference:{key}", "preference", lx.PREFERENCES[key], False)
                break


def mine_topics(text: str, add: Add) -> None:
    body = clean(text)
    for key, (name, pattern) in lx.TOPICS.items():
        if pattern.search(body):
            add(f"topic:{key}", "topic", f"Often asks about {name}", False)


def jargon_terms(text: str) -> dict[str, set[str]]:
    body = clean(text)
    return {d: {m.group(0).lower() for m in p.finditer(body)} for d, (_, p) in lx.JARGON.items()}


def style_fact(answers: Sequence[Message]) -> tuple[str, list[str]] | None:
    """Text and evidence of the style statistics of `answers` (accepted ones), if there are enough."""
    if len(answers) < MIN_ACCEPTED:
        return None
    words = statistics.median(len(_WORD.findall(a.content)) for a in answers)
    rounded = max(10, round(words / 10) * 10) if words < 100 else round(words / 50) * 50
    lists = sum(1 for a in answers if len(_LIST_LINE.findall(a.content)) >= 2) / len(answers)
    code = sum(1 for a in answers if "```" in a.content) / len(answers)
    return (f"Answers the user accepted: about {rounded} words (median), {round(lists * 10) * 10}% with lists, "
            f"{round(code * 10) * 10}% with code", [a.id for a in answers])


def accepted_answers(messages: Sequence[Message], labels: dict[str, str]) -> list[Message]:
    """Complete assistant answers the user did not complain about, retry, correct, regenerate away
    from or thumb down. `labels`: follow-up id -> detector kind."""
    children: dict[str | None, list[Message]] = {}
    for m in messages:
        children.setdefault(m.parent_id, []).append(m)
    out: list[Message] = []
    for siblings in children.values():
        answers = [a for a in siblings if a.role == "assistant"]
        if not answers:
            continue

        def won(a: Message) -> bool:
            return bool(children.get(a.id)) or a.origin == "user_edit" or bool(
                {"thumbs_up", "choice"} & set(a.feedback))

        winners = [a for a in answers if won(a)] or answers[-1:]
        for a in winners:
            followups = [c for c in children.get(a.id, []) if c.role == "user"]
            if a.status != "complete" or "thumbs_down" in a.feedback or not a.content.strip():
                continue
            if any(labels.get(c.id) in NOT_ACCEPTED for c in followups):
                continue
            out.append(a)
    order = {m.id: i for i, m in enumerate(messages)}
    return sorted(out, key=lambda a: order[a.id])


# -- the whole history ----------------------------------------------------------------------------

def _context(answer: Message, by_id: dict[str, Message], limit: int = 4) -> list[dict[str, str]]:
    """The OpenAI-style turns before `answer` (the question in particular), oldest first."""
    out: list[dict[str, str]] = []
    current = by_id.get(answer.parent_id or "")
    while current is not None and len(out) < limit:
        out.append({"role": current.role, "content": current.content})
        current = by_id.get(current.parent_id or "")
    return out[::-1]


def _passes(key: str, t: Tally) -> bool:
    n, convs = len(t.evidence), len(t.conversations)
    if t.category == "topic":
        return convs >= 2
    if key.endswith("=jargon"):
        return len(t.terms) >= MIN_JARGON_TERMS and convs >= 2
    return t.strong or (n >= 2 and convs >= 2) or n >= 3


def _latest(t: Tally) -> int:
    return max(t.evidence.values())


def _resolve(kept: dict[str, Tally]) -> dict[str, Tally]:
    """Drop the weaker of contradicting facts: opposite preferences, old places, old levels."""
    drop: set[str] = set()
    for a, b in OPPOSITES:
        ta, tb = kept.get(f"preference:{a}"), kept.get(f"preference:{b}")
        if ta and tb:
            loser = a if (len(ta.evidence), _latest(ta)) < (len(tb.evidence), _latest(tb)) else b
            drop.add(f"preference:{loser}")
    groups: dict[str, list[str]] = {}
    for key in kept:
        head = key.split("=", 1)[0]
        if head in {"about_user:location", "about_user:from"} or (
                head.startswith("expertise:") and not key.endswith("=jargon")):
            groups.setdefault(head, []).append(key)
    for keys in groups.values():
        newest = max(keys, key=lambda k: _latest(kept[k]))
        drop.update(k for k in keys if k != newest)
    if {"expertise:programming=beginner", "expertise:tech=beginner"} & set(kept):
        drop.add("expertise:programming=jargon")
    return {k: t for k, t in kept.items() if k not in drop}


def mine_facts(messages: Sequence[Message]) -> list[Fact]:
    """Facts about the user from their whole history (every conversation), strongest first.

    Deterministic: the same messages give the same facts, keys and evidence. Never raises on any
    text. Thresholds apply to what is passed in, so pass the whole history, not the newest turns.
    """
    history = sorted(messages, key=lambda m: m.created_at)  # stable: ties keep the caller's order
    by_id = {m.id: m for m in history}
    tallies: dict[str, Tally] = {}
    labels: dict[str, str] = {}
    for i, m in enumerate(history):
        if m.role != "user" or not m.content.strip():
            continue
        if is_harmful_instruction(m.content):
            # A message that tries to talk the model out of its safety (typed, pasted or
            # imported) says nothing about the user that belongs in every system prompt.
            continue

        def add(key: str, category: str, text: str, strong: bool, m: Message = m, i: int = i) -> None:
            t = tallies.setdefault(key, Tally(category))
            t.texts[text] += 1
            t.last_text[text] = i
            t.evidence.setdefault(m.id, i)
            t.conversations.add(m.conversation_id)
            t.strong = t.strong or strong

        mine_self(m.content, add)
        mine_preferences(m.content, add)
        mine_topics(m.content, add)
        for domain, terms in jargon_terms(m.content).items():
            if terms:
                add(f"expertise:{domain}=jargon", "expertise",
                    f"Comfortable with {lx.JARGON[domain][0]} terminology", False)
                tallies[f"expertise:{domain}=jargon"].terms |= terms
        parent = by_id.get(m.parent_id or "")
        if parent is not None and parent.role == "assistant":
            label = classify(parent.content, m.content, _context(parent, by_id))
            labels[m.id] = label.kind
            if label.actionable:
                mine_followup(label.kind, label.instruction, add)

    kept = _resolve({k: t for k, t in tallies.items() if _passes(k, t)})
    facts = []
    for key, t in kept.items():
        text = max(t.texts, key=lambda s: (t.texts[s], t.last_text[s]))
        ids = sorted(t.evidence, key=t.evidence.__getitem__)
        facts.append(Fact(key, t.category, text, len(ids), tuple(ids[-MAX_EVIDENCE:]), "mined"))  # type: ignore[arg-type]
    style = style_fact(accepted_answers(history, labels))
    if style is not None:
        text, ids = style
        facts.append(Fact("style:accepted_answers", "style", text, len(ids), tuple(ids[-MAX_EVIDENCE:]), "mined"))
    return sorted(facts, key=lambda f: (CATEGORY_ORDER.index(f.category), -f.count, f.key))
