"""User-Based Rewards: preference pairs for turns the user gave no feedback on (RLHI §2).

For a recent answer that no signal covers (no thumbs, no actionable or negative follow-up, no
pair), sample K answers from the current policy in the original context, with the persona card
the chat route would use, score them with the user's persona-conditioned reward model, and
store best vs worst as a `user_reward` pair when the margin is clear. A turn whose margin is not
clear is stored as a `dropped` pair with the reason, so it is not sampled again and the
decision can be listed. The scheduler runs this only while the user is away and only with a
reward model that is trusted (held-out accuracy above `reward.min_accuracy`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Sequence

from .config import Config
from .feedback import pair_problem
from .store import Store
from .training import _messages

__all__ = ["SamplingReport", "sample_user_rewards"]

log = logging.getLogger(__name__)

Generate = Callable[[list[dict[str, str]]], "str | None"]
"""One sampled answer to these messages, or None to stop (the user needs the model)."""
Score = Callable[[str, Sequence[dict[str, str]], Sequence[str]], Sequence[float]]
"""Rewards of answers to a prompt (persona card, prompt messages, answers)."""


@dataclass
class SamplingReport:
    answers: int = 0
    """Turns sampled."""
    added: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    stopped: bool = False
    """The user came back (or the model was needed) before every turn was done."""


def sample_user_rewards(
    store: Store, config: Config, user_id: str, generate: Generate, score: Score, *,
    k: int, margin: float, limit: int, recent_days: float,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> SamplingReport:
    """Sample, score and pair up to `limit` recent turns of `user_id`; returns what it did."""
    report = SamplingReport()
    since = (datetime.now(timezone.utc) - timedelta(days=recent_days)).isoformat(timespec="milliseconds")
    answers = store.answers_without_feedback(user_id, since, limit)
    persona = store.active_persona(user_id)
    version = persona.version if persona else None
    card = persona.card if (persona and config.learning.persona_in_prompt) else ""
    for i, answer in enumerate(answers):
        progress(i, len(answers))
        path = store.branch(answer.parent_id or "")
        prompt = [{"role": m.role, "content": m.content} for m in path]
        messages = _messages(store, config, user_id, prompt, version)  # as the chat route builds them
        samples: list[str] = []
        for _ in range(k):
            text = generate(messages)
            if text is None:
                report.stopped = True
                return report
            if text.strip():
                samples.append(text.strip())
        report.answers += 1
        # The stored answer was sampled from the policy too: it competes with the new samples.
        candidates = [answer.content, *samples]
        rewards = list(score(card, prompt, candidates))
        best = max(range(len(candidates)), key=rewards.__getitem__)
        worst = min(range(len(candidates)), key=rewards.__getitem__)
        gap = rewards[best] - rewards[worst]
        chosen, rejected = candidates[best], candidates[worst]
        reason = pair_problem(chosen, rejected, "", "user_reward")
        if not reason and gap < margin:
            reason = "margin_small"
        pair_id = store.add_pair(
            user_id=user_id, conversation_id=answer.conversation_id, prompt=prompt, persona_version=version,
            chosen=chosen, rejected=rejected, chosen_message_id=None,
            # For user_reward, rejected_message_id names the turn the samples answer (provenance).
            rejected_message_id=answer.id, feedback_id=None, origin="user_reward",
            instruction="", status="dropped" if reason else "ready", reason=reason, quality=round(gap, 4),
        )
        if pair_id is None:
            continue
        if reason:
            report.dropped[reason] += 1
        else:
            report.added += 1
        log.info("user_reward user=%s answer=%s margin=%.3f %s", user_id, answer.id, gap,
                 f"dropped: {reason}" if reason else "pair added")
    progress(len(answers), len(answers))
    return report
