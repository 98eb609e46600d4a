"""Turn an actionable follow-up into a short normalised instruction for a rewrite.

The instruction is what a guided rewrite puts in the prompt ("shorter, one sentence", "use
Python 3", "for Windows, not macOS"), so it keeps the user's substance and drops their politeness.
Known style requests map to one canonical English phrase each, whatever the language they were
asked in, so that the persona can count them; anything else keeps the user's own words.
"""

from __future__ import annotations

import re
from typing import Final

from ._lexicon import ERROR_LINE

__all__ = ["instruction_for", "error_line"]

MAX_CHARS: Final = 120

_N = r"(one|two|three|four|five|\d+|une?|deux|trois|ein|eine|zwei|drei|una?|dos|tres)"
_NUM = {"une": "one", "un": "one", "deux": "two", "trois": "three", "ein": "one", "eine": "one",
        "zwei": "two", "drei": "three", "una": "one", "dos": "two", "tres": "three"}

# (pattern, canonical phrase); a phrase may use \1 for a captured group.
_STYLE: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (re.compile(p, re.IGNORECASE), s) for p, s in (
        (r"\b(?:shorter|too long|tl;?dr|shorten|briefer|too much text|summari[sz]e|condense|kürzer"
         r"|plus courte?|más cort[oa]|hazlo más corto|resúmelo|résume)\b", "shorter"),
        (r"\b(?:longer|expand|plus longue?|länger|más largo)\b", "longer"),
        (r"\b(?:concise|succinct|less wordy|too wordy|less verbose)\b", "more concise"),
        (r"\b(?:one or two (?:short )?sentences|an? (?:short )?sentence or two|1-2 sentences)\b",
         "one or two sentences"),
        (r"(?<!or )\b" + _N + r" (?:short )?(?:sentences?|phrases?|sätzen?|frases?)\b", r"\1 sentence"),
        (_N + r" (?:paragraphs?|paragraphes?|absätzen?|párrafos?)\b", r"\1 paragraph"),
        (r"\b(?:under|at most|no more than|max(?:imum)?) (\d+ (?:words|minutes?|lines?|characters?))\b", r"under \1"),
        (r"\b(?:simpler|simplify|more simply|simple|eli5|plus simple|einfacher|más (?:simple|sencillo)"
         r"|simplifícalo|layman'?s terms|plain english|drop the jargon|no jargon)\b", "simpler"),
        (r"\b(?:explain (?:it )?like i'?m (?:\d+|five|a child|a kid)|eli5|for a (?:\w+ )?(?:grader|child|kid)"
         r"|like i'?m (?:\d+|five))\b", "for a child"),
        (r"\b(?:less (?:formal|stiff)|more (?:casual|relaxed|friendly)|less stiff|sound less stiff|lockerer)\b", "less formal"),
        (r"\b(?:more (?:formal|professional)|formeller|más formal|plus formel)\b", "more professional"),
        (r"\b(?:bullet(?:s| points?| list)?)\b", "use bullet points"),
        (r"\b(?:numbered list)\b", "as a numbered list"),
        (r"\b(?:as a table|in a table|a table|tableau|tabelle|tabla)\b", "as a table"),
        (r"\b(?:as a list|in a list|en (?:una )?lista|en liste|als liste)\b", "as a list"),
        (r"\b(?:code block)\b", "as a code block"),
        (r"\b(?:python ?3)\b", "use Python 3"),
        (r"\b(?:with |use )?hooks\b", "use hooks"),
        (r"\b(?:in|to) (typescript|javascript|rust|go|java|c\+\+|c#|english|french|german|spanish)\b", r"in \1"),
        (r"\b(?:en anglais|auf englisch|en inglés)\b", "in English"),
        (r"\bin (first|third) person\b", r"in \1 person"),
        (r"\b(?:type hints?)\b", "add type hints"),
        (r"\b(?:docstrings?)\b", "add a docstring"),
        (r"\b(?:comments?|kommentaren|commentaires|comentarios)\b", "add comments"),
        (r"\b(?:give me an example|an example|with an example|examples?)\b", "add an example"),
        (r"\b(?:more detail(?:s|ed)?|more depth|elaborate|plus détaillé|ausführlicher|más detall(?:e|ado)"
         r"|con más detalle)\b", "more detail"),
        (r"\b(?:more specific)\b", "more specific"),
        (r"\b(?:effizienter|more efficient|faster)\b", "more efficient"),
        (r"\b(?:fewer|less|no|without(?: the)?) (emojis?|hashtags?|jargon|cheese|cheesy)\b", r"less \1"),
        (r"\b(funnier|scarier|clearer|friendlier|warmer|punchier|catchier|more playful|less cheesy)\b", r"\1"),
        (r"\bexplain (each|every|what each) (\w+)", r"explain each \2"),
        (r"\b(?:just the key points|key points only|just the key points)\b", "key points only"),
    )
)
_LEAD: Final = re.compile(
    r"^(?:(?:ok(?:ay)?|so|well|hmm+|oh|ah|sorry|oops|hey|also|and|but|thanks?|thank you|nice|great"
    r"|perfect|cool|that'?s (?:great|nice|good|cool)|this is (?:great|nice|good)|yes|yeah|no+|nope|nah"
    r"|not quite|wrong|incorrect|actually|careful|hm|non|nein|no es correcto|está mal|c'est faux|das stimmt nicht"
    r"|falsch|that'?s (?:wrong|not right|incorrect)|this is wrong|it'?s wrong)\b[\s,.!:;—–-]*)+",
    re.IGNORECASE,
)
_POLITE: Final = re.compile(
    r"\b(?:could|can|would|will) you(?: please)?(?: also)?|\bplease\b|\bpls\b|\bplz\b|\bmaybe\b"
    r"|\bi (?:would|'d) like\b|\bi want\b|\bkannst du\b|\bbitte\b|\bpeux-tu\b|\bstp\b|\bs'il te plaît\b"
    r"|\bpor favor\b|¿?puedes\b|\bjust to clarify\b|\bto clarify\b|\bto be clear\b",
    re.IGNORECASE,
)
_CLARIFY_LEAD: Final = re.compile(
    r"^(?:.*?\b(?:what i meant was|i meant|i mean|i didn'?t mean [^,]*, i meant|my question was about"
    r"|i was asking (?:about|for)|i'?m asking about|i should (?:have )?(?:said|mention(?:ed)?)(?: that)?"
    r"|je voulais dire|je parlais d[eu']s?|ich meinte|gemeint war|me refería a|quería decir|quise decir)\b[\s:,—–-]*)",
    re.IGNORECASE,
)
_ON: Final = re.compile(r"\bi'?m (?:on|using|running)\s+(.+)", re.IGNORECASE)
_SPACE: Final = re.compile(r"\s+")


def error_line(text: str) -> str:
    """The last line of `text` that looks like an error message ('' when none does).

    The last one, because a traceback ends with the exception that matters.
    """
    lines = [(m.group("error") or m.group(0)).strip() for m in ERROR_LINE.finditer(text)]
    return lines[-1] if lines else ""


def _tidy(text: str) -> str:
    text = _SPACE.sub(" ", text).strip(" \t\n,.;:!?¿¡—–-")
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit(" ", 1)[0] + "…"
    return text


def _plain(text: str) -> str:
    """The user's own words without greetings, verdicts and politeness."""
    text = _LEAD.sub("", text.strip())
    text = _POLITE.sub("", text)
    return _tidy(text)


def _style(text: str) -> str:
    """Canonical style phrases found in `text`, in the order the user gave them."""
    found: list[tuple[int, str]] = []
    for pattern, phrase in _STYLE:
        for m in pattern.finditer(text):
            out = m.expand(phrase).lower()
            out = " ".join(_NUM.get(w, w) for w in out.split())
            out = out.replace("use python 3", "use Python 3").replace("in english", "in English")
            if not any(out == seen for _, seen in found):
                found.append((m.start(), out))
            break
    return ", ".join(p for _, p in sorted(found))


def instruction_for(kind: str, followup: str) -> str:
    """A short instruction for an actionable `kind`; '' for any other kind."""
    if kind == "rewrite_request":
        return _style(followup) or _plain(followup)
    if kind == "correction":
        err = error_line(followup)
        if err:
            return _tidy("fix the error: " + err)
        plain = _plain(followup)
        return plain if len(plain.split()) >= 2 else "fix the error"
    if kind == "clarification":
        text = _CLARIFY_LEAD.sub("", followup.strip(), count=1)
        on = _ON.search(text)
        if on:
            return _tidy("for " + on.group(1))
        return re.sub(r"^(?:on|in) ", "for ", _plain(text), flags=re.IGNORECASE)
    return ""
