"""The persona-conditioned reward model: features, files, training, versions, and pair filtering.

Real all-MiniLM-L6-v2 (from its wheel, offline) and a real SQLite store. The synthetic users come
from `rlhi_local.reward._synth` with the held-out half of the bank (`HELDOUT_TOPICS`, `heldout`
wording), which the shipped prior never saw.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlhi_local.config import load_config
from rlhi_local.errors import ConfigError, RewardModelError
from rlhi_local.records import NewMessage, PairOrigin
from rlhi_local.reward import (
    STYLE_FEATURES,
    Comparison,
    Embedder,
    RewardModel,
    evaluate,
    load_prior,
    pair_features,
    persona_lines,
    style_features,
)
from rlhi_local.reward._bank import HELDOUT_TOPICS
from rlhi_local.reward._synth import Style, SyntheticUser, make_users, render, user_comparisons
from rlhi_local.reward.train_prior import fit_prior
from rlhi_local.rewarding import filter_pairs, refresh_reward_model, reward_model, score_pairs
from rlhi_local.store import Store

QUIET_CARD = "User persona:\n- Works as an accountant.\n- Has a dog."


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(threads=1)


@pytest.fixture()
def store(rlhi_home: Path) -> Iterator[Store]:
    s = Store(rlhi_home / "data" / "rlhi.db")
    yield s
    s.close()


def add_pairs(store: Store, user_id: str, card: str, comparisons: list[Comparison],
              origin: PairOrigin = "choice") -> list[str]:
    """Store each comparison as a real conversation: the rejected answer, then its regeneration
    (the chosen one), and a ready pair between them under the card's persona version."""
    persona = store.active_persona(user_id)
    if persona is None or persona.card != card:
        persona = store.add_persona(user_id, card, "[]", "user")
    ids = []
    for c in comparisons:
        history = [NewMessage(role="user", content=c.prompt[-1]["content"])]
        first = store.place_turns(user_id, history)
        store.finish_answer(first.answer_id, c.rejected, "complete", "stop")
        again = store.place_turns(user_id, history, conversation_id=first.conversation_id)
        store.finish_answer(again.answer_id, c.chosen, "complete", "stop")
        pair_id = store.add_pair(
            user_id=user_id, conversation_id=first.conversation_id, prompt=list(c.prompt),
            persona_version=persona.version, chosen=c.chosen, rejected=c.rejected,
            chosen_message_id=again.answer_id, rejected_message_id=first.answer_id or "", feedback_id=None,
            origin=origin, instruction="", status="ready")
        assert pair_id is not None
        ids.append(pair_id)
    return ids


def silent_user(prefs: dict[str, str], name: str = "quiet") -> SyntheticUser:
    """A user with a real preference their card does not state: the prior cannot know it."""
    return SyntheticUser(name, prefs, QUIET_CARD)


# -- features and files ------------------------------------------------------------------------

def test_embedder_is_offline_normalised_and_cached(embedder: Embedder) -> None:
    before = embedder.encoded
    vectors = embedder.embed(["Prefers concise answers", "", "Prefers concise answers"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-5) and not vectors[1].any()
    assert np.array_equal(vectors[0], vectors[2])
    embedder.embed(["Prefers concise answers"])
    assert embedder.encoded - before <= 1  # the repeat and the empty text never reach the encoder
    concise, detailed, cats = embedder.embed(["I like brief answers", "Keep answers short", "Has two cats"])
    assert float(concise @ detailed) > float(concise @ cats)


def test_style_features_see_form_not_content() -> None:
    topic = HELDOUT_TOPICS[6]
    short = dict(zip(STYLE_FEATURES, style_features(render(topic, Style(length="short")))))
    long_list = dict(zip(STYLE_FEATURES, style_features(render(topic, Style(format="bullets", examples="yes",
                                                                             followup="yes", emoji="yes")))))
    assert long_list["log_words"] > short["log_words"] and long_list["bullet_lines"] > 0 == short["bullet_lines"]
    assert long_list["code_blocks"] > 0 and long_list["ends_with_question"] == 1 and long_list["emojis"] > 0
    cut = dict(zip(STYLE_FEATURES, style_features("It works because the")))
    loop = dict(zip(STYLE_FEATURES, style_features("It is good. " * 8)))
    assert cut["unfinished"] == 1 and loop["repetition"] > 0.5
    assert persona_lines("User persona:\n- Prefers concise answers.\n- Has a dog.") == [
        "Prefers concise answers.", "Has a dog."]


def test_model_file_round_trips_and_bad_files_raise_with_the_path(tmp_path: Path) -> None:
    prior = load_prior()
    assert prior.version == 0 and prior.with_persona and not prior.trusted
    again = RewardModel.from_bytes(prior.to_bytes())
    assert all(np.array_equal(prior.weights[k], again.weights[k]) for k in prior.weights)
    assert again.metrics == prior.metrics
    path = tmp_path / "v1.npz"
    data = prior.to_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RewardModelError, match=str(path)):
        RewardModel.load(path)
    path.write_bytes(b"not a model at all" * 10)
    with pytest.raises(RewardModelError, match="not a readable .npz"):
        RewardModel.load(path)
    bad_shape = replace(prior, weights={**prior.weights, "w_answer": np.zeros(10, np.float32)})
    with pytest.raises(RewardModelError, match="w_answer has shape"):
        RewardModel.from_bytes(bad_shape.to_bytes(), "x.npz")
    nan = replace(prior, weights={**prior.weights, "w_style": np.full(len(STYLE_FEATURES), np.nan, np.float32)})
    with pytest.raises(RewardModelError, match="non-finite"):
        RewardModel.from_bytes(nan.to_bytes(), "x.npz")
    with pytest.raises(RewardModelError, match="nowhere.npz cannot be read"):
        RewardModel.load(tmp_path / "nowhere.npz")


def test_reward_config_is_validated_at_load(rlhi_home: Path) -> None:
    config = load_config(environ={"RLHI_REWARD__MIN_ACCURACY": "0.7", "RLHI_REWARD__TRUST_PRIOR": "yes"})
    assert config.reward.min_accuracy == 0.7 and config.reward.trust_prior is True
    for key, value in (("min_accuracy", 1.5), ("l2", -1), ("min_pairs", 1), ("filter_margin", -0.1),
                       ("threads", 0)):
        with pytest.raises(ConfigError, match=rf"reward\.{key}"):
            load_config({"reward": {key: value}})


# -- persona conditioning ----------------------------------------------------------------------

def test_persona_conditioning_generalises_to_held_out_users(embedder: Embedder) -> None:
    """Trained on some synthetic users, the head ranks *other* users' pairs better with their
    persona than the same head without it; the shipped prior does too, on topics and card
    wording it never saw."""
    users = make_users(18, seed=11, split="heldout")
    fit_users, test_users = users[:12], users[12:]

    def pairs_of(group: list[SyntheticUser], n: int, seed: int) -> list[list[Comparison]]:
        return [user_comparisons(u, HELDOUT_TOPICS, n, seed) for u in group]

    train_pairs = pair_features(embedder, [c for cs in pairs_of(fit_users, 24, 1) for c in cs])
    with_p, without_p = fit_prior(embedder, train_pairs, l2=1e-3, max_iter=200)
    per_user = [pair_features(embedder, cs) for cs in pairs_of(test_users, 16, 2)]
    acc = {name: [evaluate(m, f)["rewards/accuracies"] for f in per_user]
           for name, m in {"with": with_p, "without": without_p, "prior": load_prior(),
                           "prior_without": load_prior(with_persona=False)}.items()}
    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    print("held-out users, mean accuracy:", {k: round(v, 3) for k, v in mean.items()})
    assert mean["with"] >= 0.75 and mean["with"] - mean["without"] >= 0.15, mean
    # Every held-out user, not just on average: never worse with the persona, mostly better.
    assert all(a >= b for a, b in zip(acc["with"], acc["without"])), acc
    assert sum(a > b for a, b in zip(acc["with"], acc["without"])) >= len(test_users) // 2, acc
    assert mean["prior"] >= 0.8 and mean["prior"] - mean["prior_without"] >= 0.2, mean


# -- per user, from the store ------------------------------------------------------------------

def test_own_pairs_teach_what_the_card_does_not_say(store: Store, embedder: Embedder) -> None:
    """A user's own pairs (all origins, from the store) train a version that ranks their fresh
    pairs well where the prior cannot know: a preference the card does not state, and one the
    card states the other way round (stale, or mined wrong)."""
    config = load_config()
    cases = {
        "u1": silent_user({"examples": "no", "format": "bullets"}),
        "u4": SyntheticUser("stale", {"length": "long"}, "User persona:\n- Prefers concise answers.\n- Has a dog."),
    }
    accuracy: dict[str, tuple[float, float]] = {}
    for user_id, user in cases.items():
        add_pairs(store, user_id, user.card, user_comparisons(user, HELDOUT_TOPICS, 50, seed=3, universal_share=0.0))
        row = refresh_reward_model(store, config, user_id, embedder)
        assert row is not None and row.status == "active" and row.version == 1
        assert row.n_train + row.n_heldout == 50 and row.n_heldout == 10
        assert row.accuracy is not None and row.accuracy >= 0.7 and row.trusted
        assert row.accuracy_without_persona is not None
        metrics = row.to_dict()["metrics"]
        assert metrics["started_from"] == 0 and metrics["heldout"]["pairs"] == 10
        assert metrics["heldout_without_persona"]["pairs"] == 10
        model = reward_model(store, config, user_id)
        assert model is not None and model.version == 1 and model.trusted
        fresh = pair_features(embedder, user_comparisons(user, HELDOUT_TOPICS, 40, seed=99, universal_share=0.0))
        accuracy[user_id] = (evaluate(load_prior(), fresh)["rewards/accuracies"],
                             evaluate(model, fresh)["rewards/accuracies"])
    print("prior -> own version, on 40 fresh pairs:", accuracy)
    for prior, own in accuracy.values():
        assert own >= 0.8 and own >= prior
    prior, own = accuracy["u4"]
    assert prior <= 0.3 and own - prior >= 0.5  # the prior believed the card; the pairs won


def test_versions_trust_and_a_corrupt_file_keep_the_last_good_model(
        store: Store, embedder: Embedder, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config({"reward": {"min_pairs": 8, "min_heldout": 4}})
    user = silent_user({"length": "long"}, "v")
    comparisons = user_comparisons(user, HELDOUT_TOPICS, 40, seed=5, universal_share=0.0)
    assert refresh_reward_model(store, config, "u2", embedder) is None  # no pairs: the prior serves
    prior = reward_model(store, config, "u2")
    assert prior is not None and prior.version == 0 and not prior.trusted
    trusting = load_config({"reward": {"trust_prior": True}})
    assert reward_model(store, trusting, "u2").trusted  # type: ignore[union-attr]

    add_pairs(store, "u2", user.card, comparisons[:20])
    v1 = refresh_reward_model(store, config, "u2", embedder)
    assert v1 is not None and v1.status == "active" and Path(v1.path).is_file()
    assert refresh_reward_model(store, config, "u2", embedder) is None  # nothing new since v1
    add_pairs(store, "u2", user.card, comparisons[20:])
    v2 = refresh_reward_model(store, config, "u2", embedder)
    assert v2 is not None and v2.version == 2 and v2.status == "active"
    assert [r.status for r in store.reward_models("u2")] == ["retired", "active"]
    assert v2.trusted == (v2.n_heldout >= 4 and (v2.accuracy or 0) >= config.reward.min_accuracy)
    too_few = load_config({"reward": {"min_heldout": 100}})  # accurate, but measured on too few pairs
    add_pairs(store, "u2", user.card, user_comparisons(user, HELDOUT_TOPICS, 4, seed=6, universal_share=0.0))
    v3 = refresh_reward_model(store, too_few, "u2", embedder)
    assert v3 is not None and v3.version == 3 and not v3.trusted

    # The active file goes bad on disk: it is rejected (and says why), the one before serves again.
    active = store.active_reward_model("u2")
    assert active is not None
    Path(active.path).write_bytes(Path(active.path).read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="rlhi_local.rewarding"):
        model = reward_model(store, config, "u2")
    assert model is not None and model.version == active.version - 1
    assert active.path in caplog.text
    bad = store.get_reward_model("u2", active.version)
    assert bad.status == "rejected" and "file unusable" in bad.reason and active.path in bad.reason
    assert store.active_reward_model("u2").version == active.version - 1  # type: ignore[union-attr]

    # A refresh that cannot write its file leaves the active version as it was, and says why.
    add_pairs(store, "u2", user.card, user_comparisons(user, HELDOUT_TOPICS, 2, seed=7, universal_share=0.0))
    before = store.active_reward_model("u2")
    blocked = Path(before.path).parent / f"v{store.next_reward_model_version('u2')}.npz"  # type: ignore[union-attr]
    blocked.mkdir()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlhi_local.rewarding"), \
            pytest.raises(RewardModelError, match="stays active"):
        refresh_reward_model(store, config, "u2", embedder)
    assert "stays active" in caplog.text
    assert store.active_reward_model("u2") == before
    assert not any(r.status == "candidate" for r in store.reward_models("u2"))


# -- filtering and scoring ---------------------------------------------------------------------

def test_filter_drops_pairs_whose_chosen_is_clearly_worse(store: Store, embedder: Embedder) -> None:
    card = "User persona:\n- Prefers concise answers.\n- Works as an accountant."
    topic_a, topic_b, topic_c = HELDOUT_TOPICS[0], HELDOUT_TOPICS[1], HELDOUT_TOPICS[2]
    short, long = Style(length="short"), Style(length="long", examples="yes")

    def cmp(topic: Any, chosen: str, rejected: str) -> Comparison:
        return Comparison(card, ({"role": "user", "content": topic.question},), chosen, rejected)

    good = add_pairs(store, "u3", card, [cmp(topic_a, render(topic_a, short), render(topic_a, long))],
                     "guided_rewrite")
    wordy = add_pairs(store, "u3", card, [cmp(topic_b, render(topic_b, long), render(topic_b, short))],
                      "guided_rewrite")
    looping = add_pairs(store, "u3", card, [cmp(topic_c, " ".join([topic_c.points[0]] * 6),
                                                render(topic_c, short))], "thumbs")
    edited = add_pairs(store, "u3", card, [cmp(topic_c, render(topic_c, long), render(topic_c, short))],
                       "user_edit")
    model = replace(load_prior(), trusted=True)
    assert filter_pairs(store, "u3", model, embedder, margin=1.0) == 2
    status = {p.id: (p.status, p.reason, p.quality) for p in store.pairs("u3")}
    assert status[good[0]][:2] == ("ready", "") and status[edited[0]][:2] == ("ready", "")  # user edits win
    for pair_id in wordy + looping:
        assert status[pair_id][:2] == ("dropped", "reward_disagrees") and status[pair_id][2] < -1.0
    assert filter_pairs(store, "u3", model, embedder, margin=1.0) == 0  # idempotent

    ready = store.pairs("u3", status="ready")
    metrics = score_pairs(store, "u3", model, embedder, ready)
    assert metrics["pairs"] == 2 and metrics["rewards/accuracies"] == 0.5  # the kept edit disagrees
    one = model.score(embedder, card, [{"role": "user", "content": topic_a.question}], render(topic_a, short))
    many = model.score_many(embedder, card, [{"role": "user", "content": topic_a.question}],
                            [render(topic_a, short), render(topic_a, long)])
    assert one == pytest.approx(many[0]) and many[0] > many[1]
