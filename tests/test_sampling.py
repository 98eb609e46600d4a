"""User-Based Rewards and the gate's reward check, on the real model and the real reward model.

Answers are sampled by the running daemon's model (the same background path the schedule uses)
and scored by the shipped reward prior with the real sentence encoder; the pairs land in the
daemon's store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import rlhi_local.reward as reward
from rlhi_local.client import Client
from rlhi_local.reward import Embedder, load_prior
from rlhi_local.sampling import sample_user_rewards
from rlhi_local.scheduler import RewardJobs
from tests.conftest import RunningDaemon

CARD = "User persona:\n- Prefers concise answers."


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def state(d: RunningDaemon) -> Any:
    return d.daemon._state


def generator(d: RunningDaemon, temperature: float = 0.8) -> Any:
    s = state(d)

    def generate(messages: list[dict[str, str]]) -> str | None:
        s.miner._last_request = 0.0  # the test is the only client: the model is idle
        return s.miner.sample_in_background(messages, s.scheduler._loop, max_tokens=48, temperature=temperature)

    return generate


def test_user_based_rewards_pair_best_and_worst_of_unjudged_turns(daemon: RunningDaemon, client: Client,
                                                                  embedder: Embedder) -> None:
    user = "ubr-ulla"
    s = state(daemon)
    s.store.add_persona(user, CARD, "[]", "user")
    asked = [client.chat([{"role": "user", "content": q}], user=user, max_tokens=48, temperature=0.9)
             for q in ("What is a comet?", "Why do cats purr?", "What is rye bread?")]
    client.feedback(asked[2].message_id, "thumbs_down", user=user)  # judged: not for sampling
    prior = load_prior()
    scored: list[tuple[str, list[str], list[float]]] = []

    def score(card: str, prompt: Any, answers: Any) -> list[float]:
        values = [float(x) for x in prior.score_many(embedder, card, prompt, answers)]
        scored.append((card, list(answers), values))
        return values

    report = sample_user_rewards(s.store, s.config, user, generator(daemon), score, k=3, margin=0.3, limit=10,
                                 recent_days=1)
    assert report.answers == 2 and not report.stopped
    assert all(card == CARD for card, _, _ in scored)  # the persona conditions the scores
    assert all(len(answers) == 4 for _, answers, _ in scored)  # the stored answer + K samples
    pairs = [p for p in s.store.pairs(user) if p.origin == "user_reward"]
    assert {p.rejected_message_id for p in pairs} == {asked[0].message_id, asked[1].message_id}
    for pair, (_, answers, values) in zip(sorted(pairs, key=lambda p: p.created_at), scored):
        assert pair.chosen == answers[values.index(max(values))]
        assert pair.rejected == answers[values.index(min(values))]
        assert pair.quality == pytest.approx(max(values) - min(values), abs=1e-3)
        assert (pair.status == "ready") == (pair.quality >= 0.3), pair
        if pair.status == "dropped":
            assert pair.reason == "margin_small"
        assert pair.prompt[-1] == {"role": "user", "content": pair.prompt[-1]["content"]}
    assert report.added + sum(report.dropped.values()) == 2
    # Each turn is sampled once: a second run finds nothing left to do.
    again = sample_user_rewards(s.store, s.config, user, generator(daemon), score, k=3, margin=0.3, limit=10,
                                recent_days=1)
    assert again.answers == 0


def test_sampling_stops_as_soon_as_the_model_is_wanted(daemon: RunningDaemon, client: Client) -> None:
    user = "ubr-ulf"
    s = state(daemon)
    client.chat([{"role": "user", "content": "Name a river."}], user=user, max_tokens=16)
    report = sample_user_rewards(s.store, s.config, user, lambda m: None, lambda c, p, a: [0.0] * len(a),
                                 k=2, margin=0.5, limit=5, recent_days=1)
    assert report.stopped and report.answers == 0
    assert not s.store.pairs(user)


def _trusted_prior(s: Any, user: str, heldout_margin: float = 2.0) -> None:
    path = Path(reward.__file__).parent / reward.PRIOR_FILES[True]
    s.store.add_reward_model(user, 1, str(path), accuracy=0.9, accuracy_without_persona=0.6, n_train=20,
                             n_heldout=5, trusted=True,
                             metrics={"heldout": {"pairs": 5, "rewards/margins": heldout_margin}})
    s.store.activate_reward_model(user, 1, reason="test")


def test_untrusted_reward_models_are_not_used_for_sampling(daemon: RunningDaemon) -> None:
    s = state(daemon)
    jobs = RewardJobs(s.store, s.config)
    scorer, why = jobs.scorer("ubr-nobody")
    assert scorer is None and why == "no reward model yet"
    path = Path(reward.__file__).parent / reward.PRIOR_FILES[True]
    s.store.add_reward_model("ubr-vera", 1, str(path), accuracy=0.5, accuracy_without_persona=0.5, n_train=8,
                             n_heldout=4, trusted=False, metrics={})
    s.store.activate_reward_model("ubr-vera", 1, reason="test")
    scorer, why = jobs.scorer("ubr-vera")
    assert scorer is None and "not trusted (held-out accuracy 0.50 < reward.min_accuracy=0.6)" in why


def test_the_gate_reward_check_compares_candidate_and_served_answers(daemon: RunningDaemon,
                                                                    client: Client) -> None:
    from trainers.job import Example

    user = "ubr-gina"
    s = state(daemon)
    s.store.add_persona(user, CARD, "[]", "user")
    _trusted_prior(s, user)
    answer = client.chat([{"role": "user", "content": "What is a fjord?"}], user=user, max_tokens=32)
    pair_id = s.store.add_pair(
        user_id=user, conversation_id=answer.conversation_id, prompt=[{"role": "user", "content": "What is a fjord?"}],
        persona_version=1, chosen="A sea inlet between cliffs.", rejected=answer.text, chosen_message_id=None,
        rejected_message_id=answer.message_id, feedback_id=None, origin="user_edit", instruction="", status="ready")
    example = Example(pair_id or "", [{"role": "system", "content": CARD},
                                      {"role": "user", "content": "What is a fjord?"}], "", "")
    jobs = RewardJobs(s.store, s.config)
    jobs._embedder = Embedder()
    generate = generator(daemon, temperature=0.0)
    # A recent turn no pair trains on is a prompt the candidate never saw: it is judged too.
    client.chat([{"role": "user", "content": "Name a bird."}], user=user, max_tokens=8)
    seen: list[str] = []

    def answer_with(messages: list[dict[str, str]], path: Any) -> str | None:
        seen.append(messages[-1]["content"])
        return generate(messages)

    # Candidate and served are both the base here: the same greedy answers score the same.
    verdict = jobs.judge(user, [example], None, None, "base", answer_with)  # type: ignore[arg-type]
    assert verdict["prompts"] == 2 and verdict["served"] == "base", verdict
    assert seen == ["What is a fjord?"] * 2 + ["Name a bird."] * 2
    assert verdict["candidate_mean"] == pytest.approx(verdict["served_mean"], abs=0.05)
    # The drop is in units of the reward model's own held-out margin (2.0 here).
    assert verdict["scale"] == 2.0 and abs(verdict["drop"]) < 0.05
    # The model was needed for a chat: the check says so instead of guessing.
    busy = jobs.judge(user, [example], None, None, "base", lambda messages, path: None)  # type: ignore[arg-type]
    assert "skipped" in busy and "idle" in busy["skipped"]


def test_the_gate_reward_check_skips_a_model_that_cannot_rank_held_out_pairs(daemon: RunningDaemon) -> None:
    """A reward model whose held-out margin is not positive has no scale to judge by."""
    from trainers.job import Example

    user = "ubr-hank"
    s = state(daemon)
    _trusted_prior(s, user, heldout_margin=-0.3)
    jobs = RewardJobs(s.store, s.config)
    verdict = jobs.judge(user, [Example("p", [{"role": "user", "content": "Hi"}], "", "")], None, None,  # type: ignore[arg-type]
                         "base", lambda messages, path: "never asked")
    assert "no positive held-out margin" in verdict["skipped"]
