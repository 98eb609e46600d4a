"""Does persona conditioning help the reward model, and how fast is it? (rlhi_local.reward, issue 6)

Run from the repository root (about 5 minutes on 2 cores; no network):

    .venv/bin/python benchmarks/reward_model.py [--skip-convai2]

It prints a summary and writes benchmarks/results/reward_model.json with:

- `prior`: the shipped prior with and without the persona input on synthetic users it never saw
  (held-out topics; card wording seen in training, and wording never seen);
- `per_user`: one synthetic user at a time, the user's own N pairs (N = 10, 20, 40; 20% held
  out as in the daemon) train a version warm-started from the prior (`reward.l2`); accuracy on 40
  fresh pairs of the same user, for a preference the card states and for one it does not, with
  and without the persona input;
- `timing`: texts embedded per second (one thread), and the seconds to fit 200 pairs;
- `convai2` (external, real people; ../shared/datasets/convai2/bot_turn_ratings.jsonl, read in
  place, never copied): volunteers liked (1) or disliked (0) chatbot replies, with the persona
  sentences they were given. A pair is a liked and a disliked reply in one dialogue (each with
  its own context). Reported: the prior with/without persona, and a head fitted on half of the
  volunteers and tested on the other half, with/without persona. This is the honest check of the
  paper's claim on data we did not make: these personas describe the volunteer's character, not
  how they like answers written, so little gain is expected.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhi_local.config import RewardConfig  # noqa: E402
from rlhi_local.reward import (  # noqa: E402
    Embedder, Judged, PairFeatures, evaluate, featurize, load_prior, pair_features, train,
)
from rlhi_local.reward._bank import HELDOUT_TOPICS  # noqa: E402
from rlhi_local.reward._synth import SyntheticUser, make_users, user_comparisons  # noqa: E402
from rlhi_local.reward.train_prior import build_comparisons, fit_prior  # noqa: E402

CONVAI2 = ROOT.parent / "shared" / "datasets" / "convai2" / "bot_turn_ratings.jsonl"


def prior_report(embedder: Embedder) -> dict[str, Any]:
    models = {"with_persona": load_prior(), "without_persona": load_prior(with_persona=False)}
    out = {}
    for split in ("train", "heldout"):
        pairs = pair_features(embedder, build_comparisons(40, 20, 2024, HELDOUT_TOPICS, split))
        out[f"{split}_wording"] = {k: evaluate(m, pairs) for k, m in models.items()}
    return out


def per_user_report(embedder: Embedder, n_users: int = 8) -> dict[str, Any]:
    cfg = RewardConfig()
    out: dict[str, Any] = {}
    for kind in ("stated", "unstated"):
        users = make_users(n_users, 77, "heldout", max_prefs=2)
        for n in (10, 20, 40):
            rows = defaultdict(list)
            for u in users:
                prefs = dict(u.prefs) or {"length": "long"}
                user = u if kind == "stated" else SyntheticUser(u.name, prefs, "User persona:\n- Has a dog.")
                own = user_comparisons(user, HELDOUT_TOPICS, n, 5, universal_share=0.1)
                fit = pair_features(embedder, own[: n - max(2, n // 5)])
                test = pair_features(embedder, user_comparisons(user, HELDOUT_TOPICS, 40, 99, universal_share=0.1))
                prior, prior_np = load_prior(), load_prior(with_persona=False)
                mine = train(prior, fit, l2=cfg.l2, max_iter=cfg.max_iter)
                mine_np = train(prior_np, fit, l2=cfg.l2, max_iter=cfg.max_iter, with_persona=False)
                for name, m in (("prior", prior), ("prior_without_persona", prior_np), ("user", mine),
                                ("user_without_persona", mine_np)):
                    rows[name].append(evaluate(m, test)["rewards/accuracies"])
            out[f"{kind}/{n}_pairs"] = {k: round(float(np.mean(v)), 4) for k, v in rows.items()}
            print(kind, n, out[f"{kind}/{n}_pairs"], flush=True)
    return out


def timing_report(embedder: Embedder) -> dict[str, Any]:
    texts = [f"Sample answer {i}: " + " ".join(t.points) for i, t in enumerate(HELDOUT_TOPICS * 9)]
    fresh = Embedder(threads=1, cache_size=0)
    fresh.embed(["warm up"])
    started = time.monotonic()
    fresh.embed(texts)
    per_s = len(texts) / (time.monotonic() - started)
    users = make_users(10, 3, "heldout")
    pairs = pair_features(embedder, [c for u in users for c in user_comparisons(u, HELDOUT_TOPICS, 20, 1)])
    cfg = RewardConfig()
    started = time.monotonic()
    train(load_prior(), pairs, l2=cfg.l2, max_iter=cfg.max_iter)
    return {"texts_per_second_1_thread": round(per_s, 1), "fit_200_pairs_seconds": round(time.monotonic() - started, 3)}


def convai2_report(embedder: Embedder, max_pairs_per_dialog: int = 6) -> dict[str, Any]:
    if not CONVAI2.is_file():
        return {"skipped": f"{CONVAI2} not found"}
    rows = [json.loads(line) for line in CONVAI2.read_text(encoding="utf-8").splitlines() if line.strip()]
    dialogs: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        dialogs[(r["source_file"], r["dialog_index"])].append(r)
    rng = random.Random(0)
    chosen: list[Judged] = []
    rejected: list[Judged] = []
    owners: list[str] = []

    def judged(r: dict[str, Any]) -> Judged:
        card = "User persona:\n" + "\n".join(f"- {s.strip()}" for s in r["user_profile"])
        prompt = tuple({"role": "user" if t["role"] == "user" else "assistant", "content": t["text"]}
                       for t in r["context"])
        return Judged(card, prompt, r["bot_utterance"])

    for turns in dialogs.values():
        liked = [r for r in turns if r["evaluation_score"] == 1]
        disliked = [r for r in turns if r["evaluation_score"] == 0]
        combos = [(a, b) for a in liked for b in disliked]
        rng.shuffle(combos)
        for a, b in combos[:max_pairs_per_dialog]:
            chosen.append(judged(a))
            rejected.append(judged(b))
            owners.append(a["user_id"])
    pairs = PairFeatures(featurize(embedder, chosen), featurize(embedder, rejected))
    out: dict[str, Any] = {"pairs": len(pairs), "dialogs": sum(1 for d in dialogs.values()
                                                              if {0, 1} <= {r["evaluation_score"] for r in d}),
                           "volunteers": len(set(owners))}
    out["prior"] = {"with_persona": evaluate(load_prior(), pairs),
                    "without_persona": evaluate(load_prior(with_persona=False), pairs)}
    # Fitted on half of the volunteers, tested on the others (nobody is in both halves).
    people = sorted(set(owners))
    rng.shuffle(people)
    fit_people = set(people[: len(people) // 2])
    fit_idx = [i for i, o in enumerate(owners) if o in fit_people]
    test_idx = [i for i, o in enumerate(owners) if o not in fit_people]
    with_p, without_p = fit_prior(embedder, pairs.subset(fit_idx), l2=1e-2, max_iter=200)
    out["fitted_on_half"] = {"fit_pairs": len(fit_idx), "test_pairs": len(test_idx),
                             "with_persona": evaluate(with_p, pairs.subset(test_idx)),
                             "without_persona": evaluate(without_p, pairs.subset(test_idx))}
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-convai2", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reward_model.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    embedder = Embedder(threads=1, cache_size=100_000)
    result: dict[str, Any] = {"prior": prior_report(embedder)}
    print("prior", json.dumps(result["prior"]), flush=True)
    result["per_user"] = per_user_report(embedder)
    result["timing"] = timing_report(embedder)
    print("timing", result["timing"], flush=True)
    if not args.skip_convai2:
        result["convai2"] = convai2_report(embedder)
        print("convai2", json.dumps(result["convai2"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
