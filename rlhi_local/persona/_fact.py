"""The `Fact` record and its JSON form (how the store keeps a persona's facts)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, Sequence, get_args

from ..errors import InvalidRequestError

FactCategory = Literal["preference", "about_user", "expertise", "topic", "style"]
FactSource = Literal["mined", "user"]
CATEGORIES: Final = get_args(FactCategory)
JSON_VERSION: Final = 1


@dataclass(frozen=True)
class Fact:
    """One thing the persona knows about the user, with the messages that show it."""

    key: str
    """Stable normalised id ("preference:concise", "about_user:os=windows"): re-mining the same
    history gives the same keys, and a key the user deleted stays deleted."""
    category: FactCategory
    text: str
    """What the card says, without a final period ("Prefers concise answers")."""
    count: int
    """How many messages support it (for style: how many accepted answers were measured)."""
    evidence: tuple[str, ...]
    """Ids of supporting messages, oldest first; at most the latest 50 (`count` counts them all)."""
    source: FactSource
    """`user`: the user typed or edited it, so mining never changes it."""
    deleted: bool = False
    """The user deleted it: kept as a marker so mining never brings it back, never shown."""


def facts_to_json(facts: Sequence[Fact]) -> str:
    """`facts` as the JSON text the store keeps (`{"version": 1, "facts": [...]}`)."""
    rows = [asdict(f) | {"evidence": list(f.evidence)} for f in facts]
    return json.dumps({"version": JSON_VERSION, "facts": rows}, ensure_ascii=False, sort_keys=True)


def facts_from_json(text: str) -> list[Fact]:
    """Facts from `facts_to_json` output (or a bare JSON list of fact objects, as an API client
    may send). Raises `InvalidRequestError` naming the first bad fact and field."""
    try:
        data: Any = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"Persona facts are not valid JSON ({exc}); expected "
                                  '{"version": 1, "facts": [...]}.') from exc
    if isinstance(data, dict):
        if data.get("version", JSON_VERSION) != JSON_VERSION:
            raise InvalidRequestError(f"Persona facts have version {data.get('version')!r}; "
                                      f"this build reads version {JSON_VERSION}.")
        data = data.get("facts")
    if not isinstance(data, list):
        raise InvalidRequestError('Persona facts must be a list or {"version": 1, "facts": [...]}, '
                                  f"not {type(data).__name__}.")
    return [_fact(i, row) for i, row in enumerate(data)]


def _fact(i: int, row: Any) -> Fact:
    def bad(field: str, value: Any, expected: str) -> InvalidRequestError:
        return InvalidRequestError(f"Persona fact {i} has {field}={value!r}; expected {expected}.")

    if not isinstance(row, dict):
        raise bad("type", type(row).__name__, "an object")
    for name in ("key", "text"):
        if not isinstance(row.get(name), str) or not row[name].strip():
            raise bad(name, row.get(name), "a non-empty string")
    if row.get("category") not in CATEGORIES:
        raise bad("category", row.get("category"), f"one of {', '.join(CATEGORIES)}")
    if row.get("source", "user") not in ("mined", "user"):
        raise bad("source", row.get("source"), "'mined' or 'user'")
    count = row.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise bad("count", count, "an integer >= 0")
    evidence = row.get("evidence", [])
    if not isinstance(evidence, list) or not all(isinstance(e, str) for e in evidence):
        raise bad("evidence", evidence, "a list of message ids")
    if not isinstance(row.get("deleted", False), bool):
        raise bad("deleted", row.get("deleted"), "true or false")
    return Fact(row["key"], row["category"], row["text"], count, tuple(evidence),
                row.get("source", "user"), row.get("deleted", False))
