"""Stated facts about the user: job, system, place, family, what they learn, their expertise.

Only first-person statements the user makes in their own voice count (see `_text.statements`),
and only about things on the lexicon's closed lists: "I'm a nurse", "I use Windows", "j'habite à
Lyon", "my kids", "I'm new to Python". Possessives ("my kids") also count inside questions.
"""

from __future__ import annotations

import re
from typing import Callable, Final

from . import _lexicon as lx
from ._text import guarded, slug, statements

Add = Callable[[str, str, str, bool], None]
"""add(key, category, text, strong) for the message being mined."""

_I_AM = r"\b(?:I'm|I’m|I am|Im)\s+(?:currently\s+|now\s+|also\s+|actually\s+|just\s+|really\s+)?"
_JOB_ALT = lx.alternation(lx.JOBS_EN)
_JOB = re.compile(
    rf"(?:{_I_AM}|\bI\s+(?:currently\s+)?work\s+as\s+|\bmy\s+job\s+as\s+|^\W*as\s+)"
    rf"(an?)\s+((?:[\w+#.-]+\s+){{0,3}}?)({_JOB_ALT})\b(?!-)(['’]s\b|\s+[\w'’]+)?",
    re.IGNORECASE,
)
_AS_A_JOB_THEN_I = re.compile(r"^\W*as\s+an?\s+[^,]{1,40},\s*I\b", re.IGNORECASE)
_RETIRED = re.compile(rf"{_I_AM}retired\b", re.IGNORECASE)
_JOB_FOREIGN = re.compile(
    r"\b(?:je\s+suis|je\s+travaille\s+comme|ich\s+bin|ich\s+arbeite\s+als|soy|trabajo\s+como)\s+"
    rf"(?:(?:un|une|ein|eine|un|una)\s+)?({lx.alternation(lx.JOBS_FOREIGN)})\b(?![-'’])",
    re.IGNORECASE,
)
_PARENT = re.compile(rf"{_I_AM}(?:a\s+)?(?:proud\s+|single\s+|new\s+)?(mom|mum|mother|dad|father|parent"
                     r"|grandma|grandmother|grandpa|grandfather|grandparent)\b(?!['’])", re.IGNORECASE)

_OS_ALT = lx.alternation(list(lx.OS) + list(lx.PHONES))
_DEVICE_NOUN = r"(?:laptop|pc|machine|computer|desktop|box|install|partition|phone|tablet|rechner|ordi|ordinateur|portátil)"
_OS_USE = re.compile(
    r"(?i:\bI\s+(?:mostly\s+|mainly\s+|only\s+|also\s+|now\s+|currently\s+|usually\s+)?(?:use|run|work on|code on|daily[- ]drive)"
    r"|\bI(?:'m|’m|\sam|m)\s+(?:currently\s+|now\s+|mostly\s+)?(?:on|using|running)"
    r"|\bj['’]utilise|\bje\s+suis\s+sous|\bich\s+(?:nutze|benutze|verwende)|\bich\s+bin\s+auf"
    r"|\b(?:uso|utilizo)|\bestoy\s+en)"
    rf"\s+(?:(?i:an?|the|einen?|un|una)\s+)?({_OS_ALT})\b(?![-.'’]\w)",
    re.IGNORECASE,
)
_OS_USER = re.compile(rf"{_I_AM}an?\s+({_OS_ALT})\s+(?:user|person|guy|girl)\b", re.IGNORECASE)
_OS_OWN = re.compile(
    r"\b(?:I\s+(?:have|own|got|bought)\s+an?|my|mon|mein(?:en)?|mi|tengo\s+un)\s+(?:new\s+|old\s+|work\s+)?"
    rf"({_OS_ALT})(?:\s+({_DEVICE_NOUN}))?\b",
    re.IGNORECASE,
)
_DEVICE_ITSELF = frozenset({"mac", "macbook", "macbook pro", "macbook air", "imac", "chromebook",
                            "iphone", "ipad", "android phone"})
_AMBIGUOUS_OS = frozenset({"arch", "mint", "pixel", "android", "mac"})

_PLACE = r"((?:the\s+)?[A-Z][\w'’-]*(?:\s+(?:(?:de|du|des|la|le|am|an|del|upon|on|sur)\s+)?[A-Z][\w'’-]*){0,3})"
_LIVE = re.compile(
    r"(?i:\bI\s+(?:currently\s+|now\s+|still\s+)?live\s+in|\bI(?:'m|’m|\sam)\s+(?:currently\s+|now\s+)?(?:living|based|located)\s+in"
    r"|\bI\s+(?:just\s+|recently\s+)?moved\s+to|\bj['’]habite\s+(?:à|a|en|au|aux|dans)"
    r"|\bje\s+vis\s+(?:à|a|en|au|aux)|\bich\s+(?:wohne|lebe)\s+(?:in|im)|\bvivo\s+en)"
    r"\s+(?:(?i:la|le|les|l['’]|der)\s+)?" + _PLACE
)
_FROM = re.compile(
    r"(?i:\bI(?:'m|’m|\sam)\s+(?:originally\s+)?from|\bI\s+(?:originally\s+)?come\s+from|\bich\s+komme\s+aus"
    r"|\bsoy\s+de|\bje\s+viens\s+(?:de|du|d['’]))\s+" + _PLACE
)
_PLACE_BLOCK: Final = frozenset({
    "i", "windows", "linux", "python", "excel", "google", "microsoft", "apple", "amazon", "meta",
    "ibm", "it", "hr", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
    "sunday", "january", "february", "march", "april", "may", "june", "july", "august",
    "september", "october", "november", "december", "dr", "mr", "mrs", "ms", "minecraft",
    "angst", "armut", "ok", "okay", "the", "sales", "marketing", "support",
})

_KIDS = re.compile(
    r"\b(?:my\s+(?:(?:two|three|four|\d|little|young|older|younger|oldest|youngest|eldest|teenage|adult)\s+)?"
    r"(kids|children|son|sons|daughter|daughters|toddler|teenager|teenagers|stepson|stepdaughter|grandkids|grandchildren)"
    r"|I\s+have\s+(?:a|an|one|two|three|four|five|\d)\s+(?:little\s+|young\s+|teenage\s+|adult\s+)?"
    r"(kids?|children|child|sons?|daughters?|grandkids|grandchildren)"
    r"|(?:mes\s+enfants|mon\s+fils|ma\s+fille|mes\s+filles|meine\s+kinder|meinen?\s+kindern|mein(?:em|en)?\s+sohn"
    r"|meine[rn]?\s+tochter|mis\s+hij[oa]s|mi\s+hij[oa]))\b",
    re.IGNORECASE,
)
_PARTNER = re.compile(
    r"\b(?:my\s+(wife|husband|partner|girlfriend|boyfriend|fiancée?)|(mon\s+mari|ma\s+femme|mon\s+copain|ma\s+copine"
    r"|mein(?:em|en)?\s+mann|meine[rn]?\s+frau|mi\s+(?:esposo|marido|esposa|mujer|novio|novia)))\b(?!['’]s\s+friend)",
    re.IGNORECASE,
)
_PARTNER_WORD = {"mon mari": "husband", "ma femme": "wife", "mon copain": "boyfriend", "ma copine": "girlfriend",
                 "mann": "husband", "frau": "wife", "esposo": "husband", "marido": "husband",
                 "esposa": "wife", "mujer": "wife", "novio": "boyfriend", "novia": "girlfriend"}
_PET = re.compile(
    r"\b(?:my\s+(?:(?:old|new|little|senior|rescue|two|three)\s+)?(dogs?|puppy|cats?|kitten)"
    r"|I\s+have\s+(?:a|an|one|two|three|\d)\s+(dogs?|puppy|cats?|kitten)|(mon\s+chien|mon\s+chat"
    r"|mein(?:em|en)?\s+hund|meine[rn]?\s+katze|mi\s+perr[oa]|mi\s+gat[oa]))\b(?!\s+food)",
    re.IGNORECASE,
)

_SKILL_ALT = lx.alternation([k for k in lx.SKILLS if k not in {"go"}])
_LEARN_ALT = lx.alternation(lx.LEARN_TO)
_LEARNING = re.compile(
    rf"(?:{_I_AM}(?:slowly\s+)?(?:learning|studying|teaching myself|trying to learn|getting into)"
    r"|\bI(?:'ve|’ve|\shave)\s+(?:just\s+|recently\s+)?(?:been learning|started learning|begun learning|been studying)"
    r"|\bI\s+(?:just\s+|recently\s+)?started\s+(?:learning|studying)|\bj['’]apprends(?:\s+(?:le|la|les|l['’]|à))?"
    r"|\bich\s+lerne(?:\s+(?:gerade|jetzt))?|\b(?:estoy\s+aprendiendo|aprendo)(?:\s+(?:a|el|la))?)"
    rf"\s*(?:(to\s+(?:{_LEARN_ALT}))|({_SKILL_ALT}))(?![\w+#])",
    re.IGNORECASE,
)
_BEGINNER = re.compile(
    rf"(?:{_I_AM}(?:a\s+|an\s+)?(?:complete\s+|total\s+|absolute\s+|relative\s+|pretty\s+|very\s+|quite\s+|still\s+)?"
    r"(?:beginner|newbie|noob|novice|new)\s+(?:at|in|with|to)|\bI(?:'ve|’ve|\shave)\s+never\s+(?:used|written|coded in"
    r"|programmed in|worked with|touched|done)|\bI\s+(?:don'?t|do not|barely)\s+know\s+(?:much\s+|anything\s+)?(?:about\s+)?"
    r"|\bI\s+have\s+(?:no|zero|little)\s+(?:experience|background)\s+(?:with|in)|\bje\s+débute\s+en"
    r"|\bje\s+suis\s+(?:débutante?|nouveau|nouvelle)\s+en|\bich\s+bin\s+(?:ein\s+|eine\s+)?(?:anfänger|anfängerin|neu)\s+(?:in|bei|mit)"
    rf"|\bsoy\s+(?:principiante|nuevo|nueva)\s+en)\s*(?:the\s+)?({_SKILL_ALT})(?![\w+#])",
    re.IGNORECASE,
)
_NOT_TECH = re.compile(rf"{_I_AM}not\s+(?:a\s+|very\s+|really\s+|that\s+|super\s+)?(technical|techy|tech-savvy|tech savvy"
                       r"|a techie|an?\s+(?:programmer|developer|coder|software engineer))\b", re.IGNORECASE)
_YEARS = r"(?:\d+|two|three|four|five|six|seven|eight|nine|ten|many|several|a decade|decades)\+?"
_EXPERT = re.compile(
    rf"(?:{_I_AM}(?:an?\s+)?(?:expert|fluent|proficient|experienced|advanced|very experienced|quite experienced|very comfortable)"
    rf"\s+(?:in|with|at)\s+({_SKILL_ALT})|\bI(?:'ve|’ve|\shave)\s+(?:been\s+)?(?:using|writing|coding in|programming in|working with"
    rf"|working in|doing|playing|speaking)\s+({_SKILL_ALT})\s+for\s+(?:over\s+|more than\s+|about\s+|almost\s+|nearly\s+)?{_YEARS}"
    rf"|\bI\s+have\s+(?:over\s+|more than\s+|about\s+)?{_YEARS}\s+years\s+(?:of\s+)?(?:professional\s+)?(?:experience\s+)?"
    rf"(?:in|with|of|writing|using|doing)\s+({_SKILL_ALT})|{_I_AM}(?:an?\s+)?(?:experienced|senior|seasoned|professional|expert|veteran)"
    rf"\s+({_SKILL_ALT})\s+(?:developer|programmer|engineer|dev|player|teacher|translator))(?![\w+#])",
    re.IGNORECASE,
)
_NATIVE = re.compile(
    rf"(?:{_I_AM}(?:a\s+)?native\s+({_SKILL_ALT})\s+speaker|\b({_SKILL_ALT})\s+is\s+my\s+(?:native|first|mother)\s+"
    r"(?:language|tongue))\b", re.IGNORECASE,
)



def _expertise_text(skill: str, level: str) -> str:
    if level == "native":
        return f"Native {skill} speaker"
    if skill in lx.NATURAL_LANGUAGES:
        return f"Fluent in {skill}" if level == "expert" else f"Beginner in {skill}"
    return f"Experienced with {skill}" if level == "expert" else f"Beginner at {skill}"


def mine_self(text: str, add: Add) -> None:
    """Stated facts about the user: job, system, place, family, what they learn, expertise."""
    for clause in statements(text):
        for m in _JOB.finditer(clause):
            if m.group(0).lower().lstrip(" ,").startswith("as") and not _AS_A_JOB_THEN_I.match(clause):
                continue
            mods = m.group(2).split()
            nxt = (m.group(4) or "").strip().lower()
            if guarded(clause, m.start()) or any(w.lower().strip("-") in lx.JOB_MODIFIER_BLOCK for w in mods) \
                    or nxt in lx.JOB_NEXT_BLOCK or nxt.startswith(("'", "’")):
                continue
            job = m.group(3).lower()
            key = lx.JOB_KEY.get(job, job)
            phrase = " ".join([*mods, m.group(3)])
            article = "an" if phrase[:1].lower() in "aeiou" else "a"
            add(f"about_user:job={slug(key)}", "about_user", f"Is {article} {phrase}", True)
            if key == "stay-at-home parent":
                add("about_user:family=children", "about_user", "Has children", True)
        for m in _RETIRED.finditer(clause):
            if not guarded(clause, m.start()):
                add("about_user:job=retired", "about_user", "Is retired", True)
        for m in _JOB_FOREIGN.finditer(clause):
            key = lx.JOBS_FOREIGN[m.group(1).lower()]
            if key == "retired":
                add("about_user:job=retired", "about_user", "Is retired", True)
            else:
                article = "an" if key[0] in "aeiou" else "a"
                add(f"about_user:job={slug(key)}", "about_user", f"Is {article} {key}", True)
        for m in _PARENT.finditer(clause):
            if not guarded(clause, m.start()):
                grand = m.group(1).lower().startswith("grand")
                add(f"about_user:family={'grandchildren' if grand else 'children'}", "about_user",
                    "Has grandchildren" if grand else "Has children", True)
        for m in _OS_USE.finditer(clause):
            _add_os(m.group(1), clause, m.start(), add, device=None)
        for m in _OS_USER.finditer(clause):
            _add_os(m.group(1), clause, m.start(), add, device=None)
        for m in _OS_OWN.finditer(clause):
            _add_os(m.group(1), clause, m.start(), add, device=m.group(2) or "")
        for pattern, what in ((_LIVE, "location"), (_FROM, "from")):
            for m in pattern.finditer(clause):
                place = re.sub(r"^the\s+", "the ", m.group(1))
                head = re.sub(r"^the\s+", "", place).split()[0].lower().strip("'’")
                if guarded(clause, m.start()) or head in _PLACE_BLOCK:
                    continue
                verb = "Lives in" if what == "location" else "Is from"
                add(f"about_user:{what}={slug(place.removeprefix('the '))}", "about_user", f"{verb} {place}", True)
        for m in _LEARNING.finditer(clause):
            if guarded(clause, m.start()):
                continue
            if m.group(1):
                shown = lx.LEARN_TO[re.sub(r"^to\s+", "", m.group(1).lower())]
            else:
                shown = lx.SKILLS[m.group(2).lower()]
            add(f"about_user:learning={slug(shown.removeprefix('to '))}", "about_user", f"Is learning {shown}", True)
        for m in _BEGINNER.finditer(clause):
            if not guarded(clause, m.start()):
                skill = lx.SKILLS[m.group(1).lower()]
                add(f"expertise:{slug(skill)}=beginner", "expertise", _expertise_text(skill, "beginner"), True)
        for m in _NOT_TECH.finditer(clause):
            if guarded(clause, m.start()):
                continue
            if "tech" in m.group(1).lower():
                add("expertise:tech=beginner", "expertise", "Is not technical", True)
            else:
                add("expertise:programming=beginner", "expertise", "Is not a programmer", True)
        for m in _EXPERT.finditer(clause):
            if not guarded(clause, m.start()):
                skill = lx.SKILLS[next(g for g in m.groups() if g).lower()]
                add(f"expertise:{slug(skill)}=expert", "expertise", _expertise_text(skill, "expert"), True)
        for m in _NATIVE.finditer(clause):
            skill = lx.SKILLS[next(g for g in m.groups() if g).lower()]
            if skill in lx.NATURAL_LANGUAGES and not guarded(clause, m.start()):
                add(f"expertise:{slug(skill)}=native", "expertise", _expertise_text(skill, "native"), True)
    # Possessives hold in questions too: "how do I get my kids to sleep?" says the user has kids.
    for clause in statements(text, keep_questions=True):
        for m in _KIDS.finditer(clause):
            if guarded(clause, m.start()):
                continue
            grand = "grand" in m.group(0).lower()
            add(f"about_user:family={'grandchildren' if grand else 'children'}", "about_user",
                "Has grandchildren" if grand else "Has children", True)
        for m in _PARTNER.finditer(clause):
            if guarded(clause, m.start()):
                continue
            word = (m.group(1) or m.group(2)).lower()
            word = _PARTNER_WORD.get(word, _PARTNER_WORD.get(word.split()[-1], word))
            word = "fiancé(e)" if word.startswith("fianc") else word
            add(f"about_user:partner={slug(word)}", "about_user", f"Has a {word}", True)
        for m in _PET.finditer(clause):
            if guarded(clause, m.start()):
                continue
            word = (m.group(1) or m.group(2) or m.group(3)).lower()
            pet = "cat" if re.search(r"cat|kitten|chat|katze|gat", word) else "dog"
            add(f"about_user:pet={pet}", "about_user", f"Has a {pet}", True)


def _add_os(word: str, clause: str, start: int, add: Add, device: str | None) -> None:
    low = word.lower()
    if guarded(clause, start) or (low in _AMBIGUOUS_OS and not word[:1].isupper()):
        return
    if device is not None and low not in _DEVICE_ITSELF and not device:
        return  # "my windows" may be glass; "my Windows laptop" is not
    if low in lx.PHONES:
        shown = lx.PHONES[low]
        add(f"about_user:phone={slug(shown.split(' ', 1)[1])}", "about_user", f"Has {shown}", True)
    else:
        shown = lx.OS[low]
        add(f"about_user:os={slug(shown)}", "about_user", f"Uses {shown}", True)
