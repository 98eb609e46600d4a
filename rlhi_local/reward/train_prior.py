"""Build the reward-model prior that ships with the package, so a new user is not at zero.

Usage (2 to 7 minutes on 2 cores, most of it embedding; offline):

    python -m rlhi_local.reward.train_prior                 # rewrites rlhi_local/reward/prior*.npz
    python -m rlhi_local.reward.train_prior --out /tmp/p --users 40   # a quick experiment

The data, and why it is a fair prior: synthetic users (`_synth`) whose persona cards state
opposite, measurable preferences (concise or detailed, lists or prose, examples or none, casual or
formal, emojis or none, a follow-up question or none), written in the same words `persona` puts on
mined cards plus paraphrases, among facts unrelated to style. Their answers are the hand-written
facts of `_bank.PRIOR_TOPICS` rendered in each style by deterministic transforms, so a pair differs
in style only; each user prefers the answer that matches more of what its card says, with 5% of
labels flipped. 15% of pairs contrast a good answer with an off-topic, cut-off or looping one,
which every user dislikes. Nothing is copied from a data set, and a rerun reproduces the files.

The persona encoder is fitted first: a line gate (preference phrasings against unrelated facts,
`persona_gate`) and the gated mean line as centre; then both heads, with that encoder fixed.

What it says about real users is limited to those stated preferences: the prior learns to read
such a card, and how much a user's own pairs move it is up to `reward.l2`. Both heads are written:
`prior.npz` (with the persona input) and `prior_nopersona.npz` (the same head without it, the
comparison every user version reports). The report printed at the end measures both on users that
the prior never saw: other topics (`HELDOUT_TOPICS`) and, separately, other wording of the cards.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import PRIOR_FILES
from ._bank import DIMENSIONS, DISTRACTORS, HELDOUT_TOPICS, PRIOR_TOPICS, Topic
from ._embed import Embedder
from ._features import Comparison, PairFeatures, pair_features
from ._model import RewardModel
from ._synth import Split, make_users, user_comparisons
from ._train import blank, evaluate, fit_gate, train

__all__ = ["PRIOR_HPARAMS", "build_comparisons", "fit_prior", "heldout_report", "main", "persona_gate"]

log = logging.getLogger(__name__)

PRIOR_HPARAMS = {"users": 240, "pairs_per_user": 30, "seed": 0, "noise": 0.05, "l2": 1e-3, "max_iter": 300}


def build_comparisons(n_users: int, pairs_per_user: int, seed: int, topics: Sequence[Topic] = PRIOR_TOPICS,
                      split: Split = "train", noise: float = 0.0) -> list[Comparison]:
    """Pairs of `n_users` synthetic users (a tenth of them state no preference at all)."""
    out: list[Comparison] = []
    for user in make_users(n_users, seed, split, silent_share=0.1):
        out += user_comparisons(user, topics, pairs_per_user, seed, noise=noise)
    return out


def persona_gate(embedder: Embedder) -> tuple[np.ndarray, float]:
    """The line gate, fitted on the training half of the bank: every preference phrasing against
    every fact unrelated to style."""
    positive = [line for values in DIMENSIONS.values() for value in values.values() for line in value["train"]]
    return fit_gate(embedder.embed(positive), embedder.embed(list(DISTRACTORS["train"])))


def fit_prior(embedder: Embedder, pairs: PairFeatures, l2: float, max_iter: int) -> tuple[RewardModel, RewardModel]:
    """(with persona, without persona) heads fitted from zero. The style counts are standardised
    with the mean and spread of the training answers; the persona encoder is the line gate
    (`persona_gate`) and, as centre, the gated mean of the training cards' lines."""
    styles = np.concatenate([pairs.chosen.style, pairs.rejected.style])
    mean = styles.mean(0)
    scale = styles.std(0)
    scale[scale < 1e-3] = 1.0
    gate = persona_gate(embedder)
    probe = blank(mean, scale, persona_gate=gate)
    lines = pairs.chosen.lines
    weight = probe.line_gates(lines) if len(lines) else np.zeros(0)
    center = (weight[:, None] * lines).sum(0) / weight.sum() if weight.sum() > 0 else np.zeros(lines.shape[1])
    out = []
    for with_persona in (True, False):
        init = blank(mean, scale, persona_center=center, persona_gate=gate, with_persona=with_persona)
        model = train(init, pairs, l2=l2, max_iter=max_iter, version=0)
        out.append(model)
    return out[0], out[1]


def heldout_report(embedder: Embedder, models: dict[str, RewardModel], n_users: int = 40,
                   pairs_per_user: int = 20, seed: int = 1000) -> dict[str, Any]:
    """Accuracy of each model on users the prior never saw: held-out topics with the training
    wording of cards, and held-out topics with held-out wording."""
    report: dict[str, Any] = {}
    for split in ("train", "heldout"):
        pairs = pair_features(embedder, build_comparisons(n_users, pairs_per_user, seed, HELDOUT_TOPICS, split))
        report[f"heldout_topics/{split}_wording"] = {name: evaluate(m, pairs) for name, m in models.items()}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = PRIOR_HPARAMS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder for prior.npz and prior_nopersona.npz (default: the package)")
    parser.add_argument("--users", type=int, default=p["users"])
    parser.add_argument("--pairs-per-user", type=int, default=p["pairs_per_user"])
    parser.add_argument("--seed", type=int, default=p["seed"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    embedder = Embedder(threads=args.threads, cache_size=100_000)
    started = time.monotonic()
    comparisons = build_comparisons(args.users, args.pairs_per_user, args.seed, noise=p["noise"])
    pairs = pair_features(embedder, comparisons)
    embed_s = time.monotonic() - started
    started = time.monotonic()
    with_p, without_p = fit_prior(embedder, pairs, p["l2"], p["max_iter"])
    fit_s = time.monotonic() - started
    report = heldout_report(embedder, {"with_persona": with_p, "without_persona": without_p})
    summary = {"hparams": {**p, "users": args.users, "pairs_per_user": args.pairs_per_user, "seed": args.seed},
               "pairs": len(comparisons), "texts_encoded": embedder.encoded, "embed_seconds": round(embed_s, 1),
               "fit_seconds": round(fit_s, 1), **report}
    args.out.mkdir(parents=True, exist_ok=True)
    for model, with_persona in ((with_p, True), (without_p, False)):
        metrics = {**model.metrics, **{k: v[("with" if with_persona else "without") + "_persona"]
                                       for k, v in report.items()}, "source": "rlhi_local.reward.train_prior"}
        (args.out / PRIOR_FILES[with_persona]).write_bytes(replace(model, metrics=metrics).to_bytes())
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
