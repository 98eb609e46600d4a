"""Export and forget (DESIGN §6): everything stored about a user out as JSONL, or parts of it gone.

The orchestrator between the store (rows: `Store.export_rows`, `Store.forget`), the persona
(facts citing forgotten messages are scrubbed), training and rewarding (their files). The
invariant of `forget`: once it returns, no forgotten text is left in any file under the data
dir, and nothing that learned from it is served:

1. the user's training run, if one is queued or running, is cancelled (its job file quotes pairs);
2. one store transaction deletes the rows, scrubs persona versions and retires every adapter and
   reward model that learned from forgotten data; the database is vacuumed and its WAL truncated;
3. their files go: adapter directories (GGUF, peft weights, job file, log), reward-model `.npz`
   files, staging directories, and the job files of the adapters that stay (they quote pairs);
4. if the served adapter was retired, the newest earlier-served adapter that did not learn from
   forgotten data answers (else the base), and a retraining run is queued when enough pairs
   remain (`training.min_pairs`); a retired active reward model falls back the same way (else the
   shipped prior).

The caller (the API) also drops the engine's copies: loaded adapters and the prompt cache.

Export format (one JSON object per line, documented in the README, "Your data"):
`{"table": "export", "row": {"format": "rlhi-local", "version": 1, "user", "created_at", "tables"}}`,
then `{"table": <table>, "row": {<column>: <value>}}` for every row, then
`{"table": "export_end", "row": {"rows": {<table>: <count>}}}` (a file without it is truncated).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from .errors import InvalidRequestError, NotFoundError, RlhiError
from .persona import Fact, fact_from_user_text, facts_from_json, facts_to_json, render_card
from .rewarding import reward_dir
from .store import FORGOTTEN, Forgotten, Store
from .store._ids import utc_now
from .training import CANCEL_GRACE_S, Trainings, adapter_file

__all__ = ["EXPORT_VERSION", "ForgetReport", "export_lines", "forget", "parse_time", "scrub_persona"]

log = logging.getLogger(__name__)

EXPORT_VERSION = 1
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _line(table: str, row: dict[str, Any]) -> str:
    """One JSONL line. UTF-8 as is, except the characters some line readers split on
    (`str.splitlines`), which can only occur inside JSON strings and are escaped there."""
    text = json.dumps({"table": table, "row": row}, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in _LINE_BREAKS.items():
        text = text.replace(char, escaped)
    return text + "\n"


def export_lines(store: Store, user_id: str) -> Iterator[str]:
    """Everything the store holds about `user_id`, as JSON lines (module docstring)."""
    tables = store.user_tables()
    yield _line("export", {"format": "rlhi-local", "version": EXPORT_VERSION, "user": user_id,
                           "created_at": utc_now(), "tables": tables})
    counts = dict.fromkeys(tables, 0)
    for table, row in store.export_rows(user_id):
        counts[table] += 1
        yield _line(table, row)
    yield _line("export_end", {"rows": counts})
    log.info("export user=%s rows=%s", user_id, counts)


# -- selectors ----------------------------------------------------------------------------------

def parse_time(text: str, *, end: bool = False, name: str = "since") -> str:
    """An ISO-8601 date or time as the UTC text rows store. Without a zone it is this machine's
    local time; a bare date is its midnight, or with `end` (an `until`) the next midnight, so
    `--until 2024-05-03` includes that day."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime.combine(day + timedelta(days=1) if end else day, time())
        else:
            moment = datetime.fromisoformat(value)
        return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError):  # not ISO 8601, or a day before year 1 / after 9999 in UTC
        raise InvalidRequestError(
            f"{name} {text[:40]!r} is not a date or time (years 1 to 9999). Use ISO 8601: 2024-05-01, "
            f"2024-05-01T14:30 (local time) or 2024-05-01T12:30Z.") from None


# -- persona scrub ------------------------------------------------------------------------------

def scrub_persona(facts_json: str, alive: Callable[[Collection[str]], set[str]]) -> tuple[str, str] | None:
    """A persona version without what only forgotten messages showed (a `store.PersonaScrub`).

    A fact keeps the evidence that is still stored (its count drops by what went). A mined fact,
    or a deletion marker, with no evidence left goes: its text and key quote forgotten messages.
    A fact the user edited keeps their text, under a key made from it (the old key was mined).
    The card is rendered again from what is left."""
    try:
        facts = facts_from_json(facts_json)
    except InvalidRequestError:
        log.warning("unreadable persona facts are cleared by a forget: they may quote forgotten messages")
        return "", facts_to_json([])
    cited = {e for f in facts for e in f.evidence}
    kept_ids = alive(cited) if cited else set()
    if kept_ids == cited:
        return None
    out: list[Fact] = []
    for f in facts:
        evidence = tuple(e for e in f.evidence if e in kept_ids)
        if len(evidence) == len(f.evidence):
            out.append(f)
            continue
        if not evidence:
            if f.source == "mined" or f.deleted:
                continue
            try:
                f = replace(f, key=fact_from_user_text(f.text, f.category).key)
            except InvalidRequestError:
                continue
        lost = len(f.evidence) - len(evidence)
        out.append(replace(f, evidence=evidence, count=max(len(evidence), f.count - lost)))
    return render_card(out), facts_to_json(out)


# -- forget -------------------------------------------------------------------------------------

@dataclass
class ForgetReport:
    """What a forget did: rows, files, what is served now, and the retraining it queued."""

    user: str
    selector: dict[str, Any]
    deleted: dict[str, int]
    pair_ids: list[str]
    persona_versions_changed: list[int]
    """Persona versions whose card lost a fact: adapters trained with them were retired."""
    adapters_retired: list[int]
    reward_models_retired: list[int]
    active_adapter: int | None
    """The adapter served from now on (None: the base)."""
    active_reward_model: int | None
    retraining: dict[str, Any]
    """{"queued": bool, "run_id": str | None, "reason": why not (or why)}."""
    files_deleted: int
    database_bytes: int
    wal_bytes: int
    cancelled_run: str | None = None
    adapter_paths: list[str] = field(default_factory=list)
    """Retired adapters' GGUF files: the engine frees them if loaded (not part of the API answer)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("adapter_paths")
        return {"object": "forget", **out}


def _selector(conversation_id: str | None, since: str | None, until: str | None,
              everything: bool) -> tuple[str | None, str | None]:
    given = [conversation_id is not None, since is not None or until is not None, bool(everything)]
    if sum(given) != 1:
        raise InvalidRequestError(
            "Say what to forget: conversation_id (one conversation), since and/or until (a date range), or "
            f"everything: true. Exactly one of them is needed; this request names {sum(given)}.")
    lo = parse_time(since, name="since") if since is not None else None
    hi = parse_time(until, end=True, name="until") if until is not None else None
    if lo is not None and hi is not None and lo >= hi:
        raise InvalidRequestError(f"since {since!r} is not before until {until!r}: the range is empty. "
                                  f"Swap them, or widen the range.")
    return lo, hi


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve()) and path.resolve() != root.resolve()
    except OSError:
        return False


def _remove(path: Path, root: Path) -> int:
    """Delete a file or a directory tree under `root` (never anything outside it); files removed."""
    if not _inside(path, root) or not (path.exists() or path.is_symlink()):
        if path.exists() and not _inside(path, root):
            log.warning("not deleting %s: it lies outside the data dir %s", path, root)
        return 0
    if path.is_dir() and not path.is_symlink():
        n = sum(1 for p in path.rglob("*") if p.is_file() or p.is_symlink())
        shutil.rmtree(path, ignore_errors=True)
        return n
    path.unlink(missing_ok=True)
    return 1


def _run_of(store: Store, trainings: Trainings | None, user_id: str) -> str | None:
    """The id of the user's queued or running training run, if any."""
    run_id = trainings.current if trainings is not None else None
    if run_id is None:
        return None
    try:
        return run_id if store.get_train_run(run_id).user_id == user_id else None
    except NotFoundError:
        return None


def _stop_training(store: Store, trainings: Trainings | None, user_id: str) -> str | None:
    """Cancel the user's queued or running training run (its job file quotes their pairs)."""
    run_id = _run_of(store, trainings, user_id)
    if trainings is None or run_id is None:
        return None
    trainings.cancel(run_id)
    trainings.wait(CANCEL_GRACE_S + 5)
    return run_id


def _delete_files(store: Store, done: Forgotten, trainings: Trainings | None) -> int:
    data = store.path.parent
    user = done.user_id
    n = 0
    for adapter in done.adapters:
        path = Path(adapter.path)
        n += _remove(path, data) if path.is_dir() else _remove(adapter_file(adapter), data)
    for rm in done.reward_models:
        path = Path(rm.path)
        n += _remove(path, data) + _remove(path.with_name(f".{path.name}.tmp"), data)
    adapters_root, user_adapters = data / "adapters", data / "adapters" / user
    if user_adapters.parent.resolve() != adapters_root.resolve():
        return n  # a user id like ".." must never name another directory
    if done.deleted_user:
        return n + _remove(user_adapters, data) + _remove(reward_dir(user, store), data)
    if user_adapters.is_dir():
        running = _run_of(store, trainings, user) is not None
        for child in user_adapters.iterdir():
            if child.name.startswith(".staging-") and not running:
                n += _remove(child, data)
            elif (child / "job.json").is_file():
                n += _remove(child / "job.json", data)  # a finished run's input: pairs and persona cards
    return n


def _fall_back(store: Store, done: Forgotten) -> tuple[int | None, int | None]:
    """Serve the newest earlier-served adapter (and reward model) that learned nothing forgotten."""
    user = done.user_id
    retired = {a.version for a in done.adapters}
    active = store.active_adapter(user)
    if active is None and done.active_adapter in retired and not done.deleted_user:
        base = next(a.base_fingerprint for a in done.adapters if a.version == done.active_adapter)
        earlier = [a for a in store.adapters(user) if a.activated_at and a.status == "retired"
                   and not a.reason.startswith(FORGOTTEN) and a.base_fingerprint == base
                   and adapter_file(a).is_file()]
        if earlier:
            chosen = max(earlier, key=lambda a: a.version)
            active = store.activate_adapter(user, chosen.version, reason="")
            log.info("forget: user %s is served adapter v%d again (v%d learned from forgotten data)", user,
                     chosen.version, done.active_adapter)
    rm_retired = {r.version for r in done.reward_models}
    rm_active = store.active_reward_model(user)
    if rm_active is None and done.active_reward_model in rm_retired and not done.deleted_user:
        earlier_rm = [r for r in store.reward_models(user) if r.activated_at and r.status == "retired"
                      and not r.reason.startswith(FORGOTTEN) and Path(r.path).is_file()]
        if earlier_rm:
            rm_active = store.activate_reward_model(user, max(earlier_rm, key=lambda r: r.version).version,
                                                    reason="")
    return (active.version if active else None), (rm_active.version if rm_active else None)


def forget(store: Store, user_id: str, *, conversation_id: str | None = None, since: str | None = None,
           until: str | None = None, everything: bool = False,
           trainings: Trainings | None = None) -> ForgetReport:
    """Forget one conversation, a date range (`since`/`until`: ISO dates or times, see
    `parse_time`) or everything of `user_id` (module docstring). InvalidRequestError for a bad
    selector, NotFoundError for an unknown conversation; nothing changes then.

    Example:

        report = forget(store, "local", conversation_id="conv_18a3...", trainings=trainings)
        report.adapters_retired, report.retraining["queued"]
    """
    lo, hi = _selector(conversation_id, since, until, everything)
    if conversation_id is not None:
        store.get_conversation(user_id, conversation_id)  # NotFoundError before a run is cancelled
    cancelled = _stop_training(store, trainings, user_id)
    done = store.forget(user_id, conversation_id=conversation_id, since=lo, until=hi, everything=everything,
                        scrub_persona=scrub_persona)
    files = _delete_files(store, done, trainings)
    active, active_rm = _fall_back(store, done)
    retraining: dict[str, Any] = {"queued": False, "run_id": None,
                                  "reason": "the served adapter learned nothing forgotten"}
    if done.active_adapter is not None and done.active_adapter in {a.version for a in done.adapters}:
        if done.deleted_user:
            retraining["reason"] = "everything was forgotten: no pairs are left to train on"
        elif trainings is None:
            retraining["reason"] = "no trainer in this process"
        else:
            try:
                run = trainings.start(user_id, now=False)
                retraining = {"queued": True, "run_id": run.id,
                              "reason": f"adapter v{done.active_adapter} learned from forgotten data"}
            except RlhiError as exc:
                retraining["reason"] = str(exc)
    report = ForgetReport(
        user=user_id,
        selector={"conversation_id": conversation_id, "since": lo, "until": hi, "everything": everything},
        deleted=done.counts, pair_ids=list(done.pair_ids), persona_versions_changed=list(done.persona_versions),
        adapters_retired=[a.version for a in done.adapters],
        reward_models_retired=[r.version for r in done.reward_models],
        active_adapter=active, active_reward_model=active_rm, retraining=retraining, files_deleted=files,
        database_bytes=done.database_bytes, wal_bytes=done.wal_bytes, cancelled_run=cancelled,
        adapter_paths=[str(adapter_file(a)) for a in done.adapters])
    log.info("forget user=%s retired adapters=%s reward_models=%s files=%d serving=%s retraining=%s", user_id,
             report.adapters_retired, report.reward_models_retired, files, active, retraining["queued"])
    return report
