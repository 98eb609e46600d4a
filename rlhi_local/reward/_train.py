"""Fitting the head: Bradley–Terry (logistic loss on score differences) with L2 toward a start.

The objective is convex, so the result depends on the data, the anchor and `l2`, not on the
optimiser: full-batch L-BFGS from the anchor (the active model or the prior: a warm start).
torch rather than numpy because torch's thread count is ours to set (numpy's BLAS threads spun
against the other jobs on 2 cores and made a fit 10x slower). 200 pairs train in well under a
second once embedded.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from ._features import PairFeatures
from ._model import DIM, K, PERSONA_BLOCKS, TRAINABLE, RewardModel

__all__ = ["blank", "evaluate", "fit_gate", "train"]


def blank(style_mean: np.ndarray, style_scale: np.ndarray, *, persona_center: np.ndarray | None = None,
          persona_gate: tuple[np.ndarray, float] | None = None, with_persona: bool = True) -> RewardModel:
    """An untrained head (all weights 0) with the given style standardisation, persona centre
    and line gate (weights, bias; default: every line counts half)."""
    center = np.zeros(DIM, np.float32) if persona_center is None else persona_center
    gate_w, gate_b = persona_gate if persona_gate is not None else (np.zeros(DIM, np.float32), 0.0)
    weights = {
        "style_mean": np.asarray(style_mean, np.float32), "style_scale": np.asarray(style_scale, np.float32),
        "persona_center": np.asarray(center, np.float32), "persona_gate_w": np.asarray(gate_w, np.float32),
        "persona_gate_b": np.asarray([gate_b], np.float32),
        "w_style": np.zeros(K, np.float32), "w_answer": np.zeros(DIM, np.float32),
        "w_relevance": np.zeros(1, np.float32), "w_persona_style": np.zeros((DIM, K), np.float32),
        "w_persona_answer": np.zeros(DIM, np.float32),
    }
    return RewardModel(0, with_persona, weights)


def train(init: RewardModel, pairs: PairFeatures, *, l2: float, max_iter: int = 100,
          version: int | None = None, with_persona: bool | None = None) -> RewardModel:
    """Fit the trainable weights to `pairs`, pulled toward `init`'s by `l2`/2·‖w − w_init‖².

    `with_persona=False` trains the same head with the persona input removed. L-BFGS (torch,
    float64, the threads torch has) stops after `max_iter` iterations or once converged. The
    returned model's metrics hold the final training loss and accuracy and the time taken.
    """
    import torch

    started = time.monotonic()
    with_persona = init.with_persona if with_persona is None else with_persona
    names = [n for n in TRAINABLE if with_persona or n not in PERSONA_BLOCKS]
    weights = {k: v.copy() for k, v in init.weights.items()}
    if not with_persona:
        for n in PERSONA_BLOCKS:
            weights[n] = np.zeros_like(weights[n])
    n = len(pairs)
    loss_value = 0.0
    if n and max_iter > 0:
        def t(a: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))

        mean, scale = t(weights["style_mean"]), t(weights["style_scale"])
        fixed = replace(init, weights=weights)  # the persona encoder (centre, gate) is never trained here
        sides = []
        for f in (pairs.chosen, pairs.rejected):
            s = (t(f.style) - mean) / scale
            sides.append((t(fixed.persona(f)), t(f.answer), (t(f.prompt) * t(f.answer)).sum(1), s))
        params = {k: t(weights[k]).clone().requires_grad_(True) for k in names}
        anchor = {k: t(init.weights[k]) for k in names}

        def scores(persona: Any, answer: Any, relevance: Any, s: Any) -> Any:
            out = s @ params["w_style"] + answer @ params["w_answer"] + params["w_relevance"][0] * relevance
            if with_persona:
                out = out + ((persona @ params["w_persona_style"]) * s).sum(1) \
                    + (persona * answer) @ params["w_persona_answer"]
            return out

        def objective() -> Any:
            margin = scores(*sides[0]) - scores(*sides[1])
            penalty = sum(((params[k] - anchor[k]) ** 2).sum() for k in names)
            return torch.nn.functional.softplus(-margin).mean() + 0.5 * l2 * penalty

        optimizer = torch.optim.LBFGS(list(params.values()), lr=1.0, max_iter=max_iter, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

        def closure() -> Any:
            optimizer.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            loss_value = float(objective())
        for k in names:
            weights[k] = params[k].detach().numpy().astype(np.float32)
    model = replace(init, weights=weights, with_persona=with_persona, trusted=False,
                    version=init.version if version is None else version)
    fit = evaluate(model, pairs)
    metrics: dict[str, Any] = {"train/pairs": n, "train/loss": round(loss_value, 6),
                               "train/accuracy": fit["rewards/accuracies"], "train/l2": l2,
                               "train/seconds": round(time.monotonic() - started, 4)}
    return replace(model, metrics=metrics)


def fit_gate(positive: np.ndarray, negative: np.ndarray, l2: float = 1e-3) -> tuple[np.ndarray, float]:
    """A logistic line gate: embeddings of lines that state how to answer (`positive`) against
    lines about anything else (`negative`); returns (weights, bias)."""
    import torch

    x = torch.from_numpy(np.concatenate([positive, negative]).astype(np.float64))
    y = torch.cat([torch.ones(len(positive), dtype=torch.float64), torch.zeros(len(negative), dtype=torch.float64)])
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().numpy().astype(np.float32), float(b.detach()[0])


def evaluate(model: RewardModel, pairs: PairFeatures) -> dict[str, Any]:
    """Preference accuracy (ties count half) and mean margin of `model` on `pairs`."""
    n = len(pairs)
    if n == 0:
        return {"pairs": 0, "rewards/accuracies": 0.0, "rewards/margins": 0.0}
    margin = model.score_features(pairs.chosen) - model.score_features(pairs.rejected)
    accuracy = float(((margin > 0).sum() + 0.5 * (margin == 0).sum()) / n)
    return {"pairs": n, "rewards/accuracies": round(accuracy, 4), "rewards/margins": round(float(margin.mean()), 4)}
