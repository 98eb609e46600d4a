"""Turning stored chats into learning signals: labels, preference pairs, the persona.

The orchestrator between the store and the pure signal functions (`feedback`, `persona`): it
reads the store, calls them, and writes the results back. Everything here is idempotent (a
re-run adds nothing new) and runs off the chat's hot path: the daemon calls `mine` in a worker
thread after answers, and `rewrite_pending` only while the model is idle.

Pairs, strongest first (DESIGN §4): `user_edit`, `choice`, `guided_rewrite`, `thumbs`. Each
candidate goes through `feedback.pair_problem`; a rejected one is stored as `dropped` with its
reason, so every learning decision can be listed and explained.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .feedback import (DETECTOR_VERSION, Detect, FollowupLabel, LocalModel, classify, classify_with_model,
                       is_harmful_instruction, normalise, pair_problem)
from .persona import facts_from_json, facts_to_json, merge_facts, mine_facts, render_card
from .config import DetectorConfig, LearningConfig
from .engine import Job, RequestQueue, SamplingParams
from .errors import BusyError, RlhiError
from .records import Message, PairOrigin, Persona
from .store import Store

__all__ = ["Miner", "MiningReport", "mine", "refresh_persona", "rewrite_pending", "rewrite_prompt"]

log = logging.getLogger(__name__)

NEGATIVE = frozenset({"complaint", "correction", "retry", "rewrite_request", "clarification"})
"""Follow-up kinds that say the answer before them was not accepted."""


@dataclass
class MiningReport:
    labelled: int = 0
    added: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    pending: int = 0
    persona_version: int | None = None
    deferred: int = 0
    """Follow-ups left unlabelled because the detector model was wanted for a chat."""


def _as_prompt(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def label_backlog(store: Store, user_id: str, report: MiningReport, detect: Detect | None = None) -> None:
    """Label every user turn that follows an answer and has no label from this detector.

    `detect` (default: the rules) may return None when its model is busy with a chat: the rest
    of the backlog then stays unlabelled for the next run rather than get the rules' label."""
    detect = detect or classify
    for followup in store.unlabelled_followups(user_id, DETECTOR_VERSION):
        path = store.branch(followup.id)
        previous = path[-2]
        label = detect(previous.content, followup.content, _as_prompt(path[:-2][-6:]))
        if label is None:
            report.deferred += 1
            break
        store.add_detector_label(user_id, previous.id, followup.id, label.kind, label.actionable,
                                 label.instruction, label.confidence, DETECTOR_VERSION, detector=label.detector)
        report.labelled += 1


class _PairWriter:
    """Filters and stores candidate pairs, skipping near-duplicates of ones already kept."""

    def __init__(self, store: Store, user_id: str, persona_version: int | None, report: MiningReport):
        self.store, self.user_id, self.persona_version, self.report = store, user_id, persona_version, report
        self.seen = {
            (json.dumps(p.prompt[-1:]), normalise(p.chosen), normalise(p.rejected))
            for p in store.pairs(user_id, status="ready")
        }

    def add(self, origin: PairOrigin, rejected: Message, chosen: Message | None, *,
            feedback_id: str | None = None, instruction: str = "", feedback: str = "") -> None:
        prompt = _as_prompt(self.store.branch(rejected.parent_id)) if rejected.parent_id else []
        chosen_text = chosen.content if chosen else ""
        if chosen is None and is_harmful_instruction(f"{instruction}\n{feedback}"):
            status, reason = "dropped", "harmful_instruction"  # never rewritten, never learned
        elif chosen is None:
            status, reason = "pending", "awaiting_rewrite"
        else:
            reason = pair_problem(chosen_text, rejected.content, instruction, origin, feedback)
            key = (json.dumps(prompt[-1:]), normalise(chosen_text), normalise(rejected.content))
            if not reason and key in self.seen:
                reason = "near_duplicate"
            status = "dropped" if reason else "ready"
            if status == "ready":
                self.seen.add(key)
        pair_id = self.store.add_pair(
            user_id=self.user_id, conversation_id=rejected.conversation_id, prompt=prompt,
            persona_version=self.persona_version, chosen=chosen_text, rejected=rejected.content,
            chosen_message_id=chosen.id if chosen else None, rejected_message_id=rejected.id,
            feedback_id=feedback_id, origin=origin, instruction=instruction, status=status,
            reason=reason,
        )
        if pair_id is None:
            return
        if status == "ready":
            self.report.added[origin] += 1
        elif status == "pending":
            self.report.pending += 1
        else:
            self.report.dropped[reason] += 1
            log.info("pair dropped origin=%s reason=%s rejected=%s", origin, reason, rejected.id)


def build_pairs(store: Store, user_id: str, persona_version: int | None, report: MiningReport) -> None:
    writer = _PairWriter(store, user_id, persona_version, report)
    for feedback_id, original, edit in store.user_edits(user_id):
        writer.add("user_edit", rejected=original, chosen=edit, feedback_id=feedback_id)
    for feedback_id, chosen in store.user_judgements(user_id, "choice"):
        for other in store.children(chosen.parent_id or ""):
            if other.id != chosen.id:
                writer.add("choice", rejected=other, chosen=chosen, feedback_id=feedback_id)
    downed = {m.id for _, m in store.user_judgements(user_id, "thumbs_down")}
    upped = {m.id for _, m in store.user_judgements(user_id, "thumbs_up")}
    for feedback_id, bad in store.user_judgements(user_id, "thumbs_down"):
        others = [m for m in store.children(bad.parent_id or "") if m.id not in downed]
        if others:
            best = next((m for m in others if m.id in upped), others[-1])
            writer.add("thumbs", rejected=bad, chosen=best, feedback_id=feedback_id)
    labels = store.detector_labels(user_id, DETECTOR_VERSION)
    by_judged: dict[str, list[str]] = {}
    for label in labels:
        by_judged.setdefault(label.message_id, []).append(label.kind)
    for label in labels:
        if not label.actionable:
            continue
        original = store.get_message(label.message_id)
        # The model's own next answer is the rewrite when the user took it without complaint.
        accepted = [b for b in store.children(label.followup_id) if b.status == "complete"
                    and not NEGATIVE.intersection(by_judged.get(b.id, ()))]
        followup = store.get_message(label.followup_id)
        writer.add("guided_rewrite", rejected=original, chosen=accepted[-1] if accepted else None,
                   feedback_id=label.id, instruction=label.instruction, feedback=followup.content if followup else "")


def refresh_persona(store: Store, user_id: str) -> Persona | None:
    """Re-mine the persona from the whole history; store a new version only if it changed.

    Facts the user edited or deleted are kept as they are (`persona.merge_facts`)."""
    active = store.active_persona(user_id)
    last = store.last_message_at(user_id)
    if active is not None and (last is None or last < active.created_at):
        return active  # nothing said since this version: re-mining would find the same facts
    current = facts_from_json(active.facts) if active else []
    merged = merge_facts(current, mine_facts(store.user_messages(user_id)))
    facts = facts_to_json(merged)
    if active is not None and facts == active.facts:
        return active
    if active is None and not merged:
        return None
    card = render_card(merged)
    if active is not None and card == active.card:
        # A version is the text that conditions the model: new evidence for the same card
        # updates it in place, so the system prompt (and the KV cache's prefix) stays the same.
        store.update_persona_facts(active.id, facts)
        return store.active_persona(user_id)
    return store.add_persona(user_id, card, facts, "mined")


def mine(store: Store, user_id: str, persona_version: int | None = None,
         detect: Detect | None = None) -> MiningReport:
    """Label new follow-ups, refresh the persona, build new pairs (with the persona version
    they will train with) for one user; returns what changed. `persona_version` is used only
    while the user has no persona yet."""
    report = MiningReport(persona_version=persona_version)
    label_backlog(store, user_id, report, detect)
    persona = refresh_persona(store, user_id)
    report.persona_version = persona.version if persona else persona_version
    build_pairs(store, user_id, report.persona_version, report)
    log.info("mined user=%s labelled=%d added=%s dropped=%s pending=%d", user_id, report.labelled,
             dict(report.added), dict(report.dropped), report.pending)
    return report


def rewrite_prompt(prompt: Sequence[dict[str, str]], answer: str, instruction: str) -> list[dict[str, str]]:
    """Messages asking the model to apply `instruction` to `answer` (for a guided_rewrite)."""
    question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
    return [
        {"role": "system", "content": "You rewrite answers. Apply the instruction to the answer "
                                      "and reply with the rewritten answer only."},
        {"role": "user", "content": f"Question: {question}\n\nAnswer: {answer}\n\n"
                                    f"Instruction: {instruction}\n\nRewritten answer:"},
    ]


def rewrite_pending(
    store: Store, user_id: str, generate: Callable[[list[dict[str, str]]], str | None],
    samples: int = 4, limit: int = 8,
) -> MiningReport:
    """Fill pending guided_rewrite pairs with the best of `samples` generated rewrites.

    `generate(messages)` returns one sampled answer, or None to stop (the model is needed for a
    chat). A pair whose rewrites all fail the filter is dropped with the last reason.
    """
    report = MiningReport()
    for pair in store.pairs(user_id, status="pending", origin="guided_rewrite")[:limit]:
        messages = rewrite_prompt(pair.prompt, pair.rejected, pair.instruction)
        best: str | None = None
        reason = "no_rewrite"
        for _ in range(samples):  # at this model size most rewrites miss (DESIGN §7): sample, filter
            text = generate(messages)
            if text is None:
                return report
            reason = pair_problem(text, pair.rejected, pair.instruction, "guided_rewrite")
            if not reason:
                best = text
                break
        if best is not None:
            store.update_pair(pair.id, chosen=best, status="ready")
            report.added["guided_rewrite"] += 1
        else:
            store.update_pair(pair.id, chosen="", status="dropped", reason=f"rewrite_{reason}")
            report.dropped[f"rewrite_{reason}"] += 1
    return report


class Miner:
    """Runs `mine` and `rewrite_pending` in the daemon, in the background, after answers.

    `notify(user)` is called when an answer is stored; mining starts `mining_delay_s` later in a
    worker thread (a burst of turns is mined once). Rewrites use the model only while no chat
    request runs or waits, one sample at a time, so a chat waits at most one short sample.
    """

    def __init__(self, store: Store, queue: RequestQueue, config: LearningConfig,
                 detector: DetectorConfig | None = None) -> None:
        self.store, self.queue, self.config = store, queue, config
        self.detector_config = detector or DetectorConfig()
        model = self.detector_config.model.strip()
        self._detector_model = LocalModel(model) if model not in {"", "served"} else None
        """A separate detector GGUF: its file is checked now, loaded by the first mining run."""
        self._pending: set[str] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        self.last_report: MiningReport | None = None
        self._last_request = 0.0
        self._background: Job | None = None
        self._paused = store.learning_paused()[0]
        """`rlhi pause`, read once at start: only this daemon (its API) changes it afterwards."""
        self.persona_changed: Callable[[str], None] | None = None
        """Set by the daemon: called on the loop when mining made a new persona version."""

    # -- pausing learning as a whole -------------------------------------------------------------

    def paused(self) -> str:
        """Why learning is paused, or "" when it runs. Paused = `learning.mining = false` in the
        config, or `rlhi pause` (stored, so it lasts across restarts until `rlhi resume`)."""
        if not self.config.mining:
            return "learning is paused (learning.mining = false in the config)"
        if self._paused:
            return "learning is paused (rlhi pause; `rlhi resume` turns it back on)"
        return ""

    def pause(self) -> bool:
        """Stop learning now: pending mining is dropped and a background sample stops at its next
        token; nothing starts until `resume`. Returns whether it was running before."""
        changed = self.store.set_learning_paused(True)
        self._paused = True
        self._pending.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._background is not None:
            self._background.cancel()
        if changed:
            log.info("learning paused")
        return changed

    def resume(self) -> bool:
        """Learn again; what was chatted meanwhile (stored, not yet mined) is mined soon after.
        Returns whether it was paused before (by `pause`; the config's switch stays as set)."""
        changed = self.store.set_learning_paused(False)
        self._paused = False
        if changed:
            log.info("learning resumed")
            for user_id in self.store.user_ids():
                self.notify(user_id)
        return changed

    def notify(self, user_id: str) -> None:
        if self.paused():
            return
        self._pending.add(user_id)
        loop = asyncio.get_running_loop()
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_later(self.config.mining_delay_s, self._start)

    def touch(self) -> None:
        """A chat request arrived: a background rewrite stops at its next token (the chat never
        waits for it), and mining waits until the model has been idle for a while."""
        self._last_request = time.monotonic()
        if self._background is not None:
            self._background.cancel()

    def _quiet(self) -> bool:
        idle_for = time.monotonic() - self._last_request
        return not (self.queue.busy or self.queue.waiting) and idle_for >= self.config.mining_delay_s

    def user_idle(self) -> bool:
        """True once the user has sent nothing for `rewrite_idle_s` (background jobs may run)."""
        return time.monotonic() - self._last_request >= self.config.rewrite_idle_s

    def quiet_for_training(self) -> bool:
        """True once the user has sent nothing for `rewrite_idle_s` and no chat is running:
        a training run that was not asked for `now` waits for this (called from its thread)."""
        idle_for = time.monotonic() - self._last_request
        return not (self.queue.busy or self.queue.waiting) and idle_for >= self.config.rewrite_idle_s

    def _start(self) -> None:
        self._handle = None
        if (self._task is not None and not self._task.done()) or not self._quiet():
            # Mining shares the cores with generation: it waits for a quiet moment (measured:
            # mining right behind each answer added ~7 ms to the next answer's first token).
            self._handle = asyncio.get_running_loop().call_later(self.config.mining_delay_s, self._start)
            return
        users, self._pending = self._pending, set()
        self._task = asyncio.get_running_loop().create_task(self._run(users))

    async def _run(self, users: set[str]) -> None:
        loop = asyncio.get_running_loop()
        for user_id in sorted(users):
            if self.paused():
                break
            try:
                before = self.store.active_persona(user_id)
                report = await asyncio.to_thread(mine, self.store, user_id, None, self.detect(loop))
                after = self.store.active_persona(user_id)
                if self.persona_changed is not None and after is not None and (
                        before is None or before.card != after.card):
                    self.persona_changed(user_id)
                if report.deferred:  # the detector model was wanted for a chat: label the rest later
                    loop.call_later(self.config.mining_delay_s, self.notify, user_id)
                if report.pending or self.store.pairs(user_id, status="pending"):
                    if time.monotonic() - self._last_request >= self.config.rewrite_idle_s:
                        await asyncio.to_thread(
                            rewrite_pending, self.store, user_id, lambda m: self.sample_in_background(m, loop),
                            self.config.rewrite_samples,
                        )
                    if self.store.pairs(user_id, status="pending"):
                        loop.call_later(self.config.rewrite_idle_s, self.notify, user_id)
                self.last_report = report
            except Exception:  # boundary: a failed mining run must never disturb serving
                log.exception("mining failed for user %s", user_id)
        self.runs += 1

    def sample_in_background(self, messages: list[dict[str, str]], loop: asyncio.AbstractEventLoop, *,
                             adapter: Path | None = None, max_tokens: int | None = None,
                             temperature: float = 0.8) -> str | None:
        """One sample for learning (a rewrite, a User-Based Rewards answer), called from a worker
        thread: None when the model is wanted for a chat or the user was active too recently.
        The chat never waits for it: a request arriving mid-sample cancels it (`touch`)."""
        if self.queue.busy or self.queue.waiting or self.paused():
            return None
        if time.monotonic() - self._last_request < self.config.rewrite_idle_s:
            return None  # the user is back: learning samples wait for the next quiet spell
        coro = self._sample(messages, adapter, max_tokens, temperature)
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def _sample(self, messages: list[dict[str, str]], adapter: Path | None = None,
                      max_tokens: int | None = None, temperature: float = 0.8) -> str | None:
        if self.queue.busy or self.queue.waiting:
            return None
        try:
            prompt = self.queue.engine.render(messages)
            self.queue.reserve()
        except RlhiError:
            return None
        params = SamplingParams(max_tokens=max_tokens or self.config.rewrite_max_tokens, temperature=temperature)
        job = self._background = self.queue.submit(prompt, params, background=True, adapter=adapter)
        try:
            finish = await job.wait()
        except RlhiError:
            return None
        finally:
            self._background = None
        return finish.text if finish.finish_reason != "cancelled" else None

    # -- the follow-up detector's model (`detector.model`) -----------------------------------------

    def detect(self, loop: asyncio.AbstractEventLoop) -> Detect | None:
        """How `mine` labels follow-ups in this daemon, for worker threads of `loop`: None for the
        rules; else the configured model (`served`: the engine's queue; a path: its own model)
        with the rules' label as the fallback (`feedback.classify_with_model`)."""
        d = self.detector_config
        if not d.model.strip():
            return None
        local = self._detector_model
        if local is not None:
            generate, n_ctx = local.generate, local.n_ctx
        else:
            def generate(messages: list[dict[str, str]], grammar: str, max_tokens: int) -> str | None:
                return self.label_in_background(messages, loop, grammar=grammar, max_tokens=max_tokens)
            n_ctx = self.queue.engine.n_ctx

        def detect(previous: str, followup: str, context: Sequence[Mapping[str, str]]) -> FollowupLabel | None:
            return classify_with_model(previous, followup, context, generate=generate, n_ctx=n_ctx,
                                       max_tokens=d.max_tokens, min_confidence=d.min_confidence)
        return detect

    def label_in_background(self, messages: list[dict[str, str]], loop: asyncio.AbstractEventLoop, *,
                            grammar: str, max_tokens: int) -> str | None:
        """The served model's greedy, grammar-constrained answer for the detector, called from a
        worker thread: None when the model is wanted for a chat (or learning is paused).

        Unlike a rewrite it does not wait for `rewrite_idle_s`: mining already waited for a quiet
        model, the answer is a few dozen tokens, and a chat arriving cancels it at its next token
        (`touch`). Only the prompt's evaluation cannot be interrupted. A prompt too long for the
        context raises `ContextLengthError` (the caller keeps the rules' label)."""
        if self.queue.busy or self.queue.waiting or self.paused():
            return None
        return asyncio.run_coroutine_threadsafe(self._label(messages, grammar, max_tokens), loop).result()

    async def _label(self, messages: list[dict[str, str]], grammar: str, max_tokens: int) -> str | None:
        if self.queue.busy or self.queue.waiting:
            return None
        prompt = self.queue.engine.render(messages)
        try:
            self.queue.reserve()
        except BusyError:
            return None
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, grammar=grammar)
        # The base model (no adapter): a label must not drift with what the adapters learned.
        job = self._background = self.queue.submit(prompt, params, background=True)
        try:
            finish = await job.wait()
        finally:
            self._background = None
        return finish.text if finish.finish_reason != "cancelled" else None

    async def idle(self) -> None:
        """Wait until no mining run is in progress (a scheduled one may still come)."""
        while self._task is not None and not self._task.done():
            await asyncio.sleep(0.05)
