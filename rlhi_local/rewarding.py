"""Each user's reward model: train it from the store, version it, load it, filter pairs with it.

The orchestrator between the store and the `reward` signal. A user's pairs of every origin (each
with the persona card it was mined under) train a new version warm-started from the active one,
or from the shipped prior; the held-out pairs are the adapter gate's (`training.split_pairs`), so
the reward model never learns from the pairs that judge an adapter. Each version records its
held-out accuracy with and without the persona input, and is trusted (for sampling and for
filtering pairs) only at `reward.min_accuracy` on at least `reward.min_heldout` pairs.

Invariant: a user's active version changes only by one store transaction, after its file is
complete on disk (temp + fsync + rename) and has been read back. A failed or interrupted refresh,
or a file that later turns out corrupt, leaves the user on the previous good version (else the
prior), and says why in the log and in the row (`reason`). A user with fewer than
`reward.min_pairs` pairs has the prior, trusted only if `reward.trust_prior` says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from .config import Config, data_dir
from .errors import RewardModelError, RlhiError
from .records import Pair, RewardModelRow
from .reward import Comparison, Embedder, RewardModel, evaluate, load_prior, pair_features, train
from .store import Store
from .training import split_pairs

__all__ = ["FILTERED_ORIGINS", "filter_pairs", "refresh_reward_model", "reward_dir", "reward_model",
           "score_pairs"]

log = logging.getLogger(__name__)

FILTERED_ORIGINS = ("guided_rewrite", "thumbs")
"""Pairs whose chosen side was not written or picked by the user: the reward model may veto them."""


def reward_dir(user_id: str, store: Store | None = None) -> Path:
    """Where a user's reward-model files live (one `vN.npz` per version): next to the database
    (the store's directory is fixed when the daemon starts; `data_dir()` follows RLHI_HOME)."""
    root = store.path.parent if store is not None else data_dir()
    return root / "reward" / user_id


def _comparisons(store: Store, user_id: str, pairs: Sequence[Pair]) -> list[Comparison]:
    cards: dict[int | None, str] = {}
    out = []
    for p in pairs:
        if p.persona_version not in cards:
            cards[p.persona_version] = store.persona_card(user_id, p.persona_version)
        out.append(Comparison(cards[p.persona_version], tuple(p.prompt), p.chosen, p.rejected))
    return out


def _digest(pairs: Sequence[Pair]) -> str:
    return hashlib.sha256("\n".join(sorted(p.id for p in pairs)).encode()).hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _load_row(row: RewardModelRow) -> RewardModel:
    model = RewardModel.load(Path(row.path))
    return replace(model, version=row.version, trusted=row.trusted)


def reward_model(store: Store, config: Config, user_id: str) -> RewardModel | None:
    """The user's active reward model (`trusted` set from its row), else the prior (trusted per
    `reward.trust_prior`); None only when not even the prior can be loaded.

    An active file that cannot be read is marked `rejected` with the reason, and the newest
    earlier version that still loads is activated again in its place."""
    row = store.active_reward_model(user_id)
    if row is not None:
        try:
            return _load_row(row)
        except RewardModelError as exc:
            log.warning("reward model v%d of user %s is unusable, rejecting it: %s", row.version, user_id, exc)
            store.set_reward_model_status(user_id, row.version, "rejected", f"file unusable: {exc}")
            for earlier in reversed(store.reward_models(user_id)):
                if earlier.status != "retired" or earlier.version > row.version:
                    continue
                try:
                    model = _load_row(earlier)
                except RewardModelError as exc2:
                    store.set_reward_model_status(user_id, earlier.version, "rejected", f"file unusable: {exc2}")
                    continue
                store.activate_reward_model(user_id, earlier.version, reason="")
                log.info("reward model v%d of user %s is active again (v%d was unusable)", earlier.version,
                         user_id, row.version)
                return model
    try:
        return replace(load_prior(), trusted=config.reward.trust_prior)
    except RewardModelError:
        log.exception("the reward-model prior cannot be loaded; user %s has no reward model", user_id)
        return None


def _start(store: Store, config: Config, user_id: str) -> RewardModel:
    """Where a new version starts (and what it must not be worse than): the active one, or the prior."""
    active = reward_model(store, config, user_id)
    return active if active is not None else load_prior()


def refresh_reward_model(store: Store, config: Config, user_id: str, embedder: Embedder) -> RewardModelRow | None:
    """Train the user's next reward-model version if they have enough pairs and new ones since
    the last version; returns its row (active, or rejected with the reason), or None when there
    was nothing to do. RewardModelError (logged) when it failed: the active version is unchanged.

    A new version is activated unless the version it started from (the active one, or the prior)
    ranks the same held-out pairs better.
    """
    r = config.reward
    for stale in store.reward_models(user_id):
        if stale.status == "candidate":  # a refresh was interrupted between its file and its verdict
            store.set_reward_model_status(user_id, stale.version, "rejected", "interrupted before it was judged")
    pairs = store.pairs(user_id, status="ready")
    if len(pairs) < r.min_pairs:
        log.info("reward model for user %s: %d ready pairs, reward.min_pairs=%d; the prior serves", user_id,
                 len(pairs), r.min_pairs)
        return None
    digest = _digest(pairs)
    versions = store.reward_models(user_id)
    if versions and json.loads(versions[-1].metrics or "{}").get("pairs_digest") == digest:
        return None
    version = store.next_reward_model_version(user_id)
    path = reward_dir(user_id, store) / f"v{version}.npz"
    started = time.monotonic()
    try:
        train_pairs, heldout = split_pairs(pairs, config.training.heldout_fraction)
        start = _start(store, config, user_id)
        features = pair_features(embedder, _comparisons(store, user_id, train_pairs))
        held = pair_features(embedder, _comparisons(store, user_id, heldout))
        embed_s = time.monotonic() - started
        model = train(start, features, l2=r.l2, max_iter=r.max_iter, version=version, with_persona=True)
        ablation = train(load_prior(with_persona=False), features, l2=r.l2, max_iter=r.max_iter,
                         version=version, with_persona=False)
        with_p, without_p, before = evaluate(model, held), evaluate(ablation, held), evaluate(start, held)
        n_held = len(heldout)
        accuracy = with_p["rewards/accuracies"] if n_held else None
        without = without_p["rewards/accuracies"] if n_held else None
        trusted = accuracy is not None and n_held >= r.min_heldout and accuracy >= r.min_accuracy
        metrics: dict[str, Any] = {
            **model.metrics, "pairs_digest": digest, "started_from": start.version,
            "heldout": with_p, "heldout_without_persona": without_p, "heldout_started_from": before,
            "origins": {o: sum(p.origin == o for p in pairs) for o in sorted({p.origin for p in pairs})},
            "embed_seconds": round(embed_s, 3), "seconds": round(time.monotonic() - started, 3),
        }
        model = replace(model, metrics=metrics)
        _write_atomic(path, model.to_bytes())
        RewardModel.load(path)  # read back: a file that does not load is never activated
    except (RlhiError, OSError, RuntimeError, ValueError) as exc:
        active = store.active_reward_model(user_id)
        keeps = f"v{active.version}" if active else "the prior"
        log.warning("reward model v%d for user %s failed, %s stays active: %s", version, user_id, keeps, exc)
        raise RewardModelError(f"Training reward model v{version} for user {user_id!r} failed ({exc}); "
                               f"{keeps} stays active.") from exc
    row = store.add_reward_model(user_id, version, str(path), accuracy=accuracy,
                                 accuracy_without_persona=without, n_train=len(train_pairs), n_heldout=n_held,
                                 trusted=trusted, metrics=metrics)
    if n_held and with_p["rewards/accuracies"] < before["rewards/accuracies"]:
        reason = (f"held-out accuracy {with_p['rewards/accuracies']:.3f} is below "
                  f"{before['rewards/accuracies']:.3f} of the version it started from (v{start.version}) "
                  f"on the same {n_held} pairs")
        store.set_reward_model_status(user_id, version, "rejected", reason)
    else:
        store.activate_reward_model(user_id, version, reason=f"replaced by v{version}")
    row = store.get_reward_model(user_id, version)
    log.info("reward model v%d for user %s: %s, held-out accuracy %s (without persona %s) on %d pairs, "
             "trained on %d, %s, %.1fs", version, user_id, row.status, accuracy, without, n_held, len(train_pairs),
             "trusted" if trusted else "not trusted", metrics["seconds"])
    return row


def score_pairs(store: Store, user_id: str, model: RewardModel, embedder: Embedder,
                pairs: Sequence[Pair]) -> dict[str, Any]:
    """How `model` ranks `pairs` (e.g. the gate's held-out ones): `pairs`, `rewards/accuracies`
    (chosen above rejected; ties count half), `rewards/margins` (mean chosen − rejected)."""
    return evaluate(model, pair_features(embedder, _comparisons(store, user_id, pairs)))


def filter_pairs(store: Store, user_id: str, model: RewardModel, embedder: Embedder, margin: float) -> int:
    """Drop ready guided_rewrite and thumbs pairs whose chosen side `model` scores worse than the
    rejected one by more than `margin` (reason `reward_disagrees`, the margin kept as `quality`);
    returns how many. Callers pass a trusted model (`reward_model(...).trusted`)."""
    pairs = [p for p in store.pairs(user_id, status="ready") if p.origin in FILTERED_ORIGINS]
    if not pairs:
        return 0
    features = pair_features(embedder, _comparisons(store, user_id, pairs))
    margins = model.score_features(features.chosen) - model.score_features(features.rejected)
    dropped = 0
    for pair, m in zip(pairs, margins):
        if m < -margin:
            store.update_pair(pair.id, chosen=pair.chosen, status="dropped", reason="reward_disagrees",
                              quality=round(float(m), 4))
            dropped += 1
            log.info("pair dropped origin=%s reason=reward_disagrees margin=%.3f pair=%s reward_model=v%d",
                     pair.origin, m, pair.id, model.version)
    return dropped
