"""The reward model's head: a linear score over answer features and their persona interactions.

    score = style·w_style + answer·w_answer + w_relevance·cos(prompt, answer)
            + personaᵀ W_persona_style style + (persona ⊙ answer)·w_persona_answer

    persona = Σ over the card's lines of gate(line) · (embedding(line) − persona_center)

The gate, sigmoid(embedding · persona_gate_w + persona_gate_b), says whether a line states how to
answer ("Prefers concise answers") or something else about the person ("Works as a nurse"): a
linear read of raw MiniLM embeddings let such facts move the style weights about as much as the
preferences did (measured: a single unrelated fact swung accuracy on unstated preferences by 25
points), so the prior fits the gate on labelled lines and every version inherits it unchanged.

A Bradley–Terry loss only sees score(chosen) − score(rejected) for one persona and prompt, so any
term that does not depend on the answer cancels: persona and prompt act only through their
products with the answer. The first three terms are what every user prefers; the last two are how
the card moves that (a persona line → weights on style counts, and on answer-embedding directions).
The same head `with_persona=False` has the persona input removed: its two persona blocks are zero.

A model file is an `.npz` (no pickle) that records the encoder and the style-feature names its
weights were fitted to; `from_bytes` checks every array's shape and values and raises
`RewardModelError` naming the file for anything else.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import RewardModelError
from ._embed import EMBEDDING_ID
from ._features import STYLE_FEATURES, Features, Judged, featurize

if TYPE_CHECKING:
    from ._embed import Embedder

__all__ = ["FORMAT", "RewardModel", "WEIGHTS"]

FORMAT = "rlhi-reward/1"
DIM = 384
K = len(STYLE_FEATURES)
WEIGHTS: dict[str, tuple[int, ...]] = {
    "style_mean": (K,), "style_scale": (K,), "persona_center": (DIM,), "persona_gate_w": (DIM,),
    "persona_gate_b": (1,),
    "w_style": (K,), "w_answer": (DIM,), "w_relevance": (1,),
    "w_persona_style": (DIM, K), "w_persona_answer": (DIM,),
}
"""Array name → shape. `style_mean`/`style_scale` standardise the counts, `persona_center` is the
mean preference line and `persona_gate_*` the line gate; they are fixed by the prior and never
trained per user, so a user's weights stay comparable to the prior's."""
TRAINABLE = ("w_style", "w_answer", "w_relevance", "w_persona_style", "w_persona_answer")
PERSONA_BLOCKS = ("w_persona_style", "w_persona_answer")


@dataclass(frozen=True)
class RewardModel:
    """One version of a reward model. `version` 0 is the shipped prior; `trusted` is not stored in
    the file (the store row and config decide it) and is False after `from_bytes`."""

    version: int
    with_persona: bool
    weights: dict[str, np.ndarray]
    metrics: dict[str, Any] = field(default_factory=dict)
    trusted: bool = False

    # -- scoring -------------------------------------------------------------------------------

    def standardised(self, style: np.ndarray) -> np.ndarray:
        return (style - self.weights["style_mean"]) / self.weights["style_scale"]

    def line_gates(self, lines: np.ndarray) -> np.ndarray:
        """How much each persona line (m, 384) speaks about answer style, in [0, 1]."""
        w = self.weights
        return 1.0 / (1.0 + np.exp(-(lines @ w["persona_gate_w"] + w["persona_gate_b"][0])))

    def persona(self, f: Features) -> np.ndarray:
        """The persona vectors (n, 384): gated, centred lines summed per answer; 0 for no card."""
        out = np.zeros((len(f), DIM), dtype=np.float32)
        if len(f.line_item):
            contrib = self.line_gates(f.lines)[:, None] * (f.lines - self.weights["persona_center"])
            order = np.argsort(f.line_item, kind="stable")
            items, starts = np.unique(f.line_item[order], return_index=True)
            out[items] = np.add.reduceat(contrib[order], starts, axis=0)
        return out

    def score_features(self, f: Features) -> np.ndarray:
        """Scores (n,) in logits: P(a ≻ b) = sigmoid(score(a) − score(b))."""
        w = self.weights
        s = self.standardised(f.style)
        out = s @ w["w_style"] + f.answer @ w["w_answer"] + w["w_relevance"][0] * (f.prompt * f.answer).sum(1)
        if self.with_persona:
            p = self.persona(f)
            out = out + ((p @ w["w_persona_style"]) * s).sum(1) + (p * f.answer) @ w["w_persona_answer"]
        return out.astype(np.float64)

    def score_many(self, embedder: "Embedder", persona: str, prompt: Sequence[dict[str, str]],
                   answers: Sequence[str]) -> np.ndarray:
        """Scores of several answers to one prompt for one persona card (e.g. K samples to rank)."""
        items = [Judged(persona, tuple(prompt), a) for a in answers]
        return self.score_features(featurize(embedder, items))

    def score(self, embedder: "Embedder", persona: str, prompt: Sequence[dict[str, str]], answer: str) -> float:
        """The score of one answer (logits; only differences between answers mean anything)."""
        return float(self.score_many(embedder, persona, prompt, [answer])[0])

    def without_persona(self) -> "RewardModel":
        """The same head with the persona input removed (its persona blocks zeroed)."""
        weights = {k: (np.zeros_like(v) if k in PERSONA_BLOCKS else v) for k, v in self.weights.items()}
        return replace(self, with_persona=False, weights=weights)

    # -- files ---------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays: dict[str, Any] = {k: np.asarray(v, dtype=np.float32) for k, v in self.weights.items()}
        np.savez_compressed(
            buf, format=np.array(FORMAT), embedding=np.array(EMBEDDING_ID),
            style_features=np.array(STYLE_FEATURES), version=np.array(self.version, dtype=np.int64),
            with_persona=np.array(self.with_persona), metrics=np.array(json.dumps(self.metrics, sort_keys=True)),
            **arrays,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "RewardModel":
        def bad(why: str) -> RewardModelError:
            return RewardModelError(f"Reward model {source} cannot be used: {why}. It is ignored; the "
                                    f"previous version (or the prior) is used until a retrain replaces it.")

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            raise bad(f"not a readable .npz file ({type(exc).__name__}: {exc})") from exc
        try:
            fmt = str(arrays["format"])
            if fmt != FORMAT:
                raise bad(f"format {fmt!r}, expected {FORMAT!r}")
            if str(arrays["embedding"]) != EMBEDDING_ID:
                raise bad(f"made for encoder {str(arrays['embedding'])!r}, not {EMBEDDING_ID!r}")
            names = tuple(str(x) for x in arrays["style_features"])
            if names != STYLE_FEATURES:
                raise bad("made for other style features; retrain it")
            weights = {}
            for name, shape in WEIGHTS.items():
                value = arrays[name]
                if value.shape != shape:
                    raise bad(f"array {name} has shape {value.shape}, expected {shape}")
                if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
                    raise bad(f"array {name} holds non-finite or non-float values")
                weights[name] = value.astype(np.float32)
            if (weights["style_scale"] <= 0).any():
                raise bad("style_scale must be positive")
            metrics = json.loads(str(arrays["metrics"]))
            if not isinstance(metrics, dict):
                raise bad("metrics is not an object")
            return cls(int(arrays["version"]), bool(arrays["with_persona"]), weights, metrics)
        except KeyError as exc:
            raise bad(f"array {exc} is missing") from exc
        except (ValueError, TypeError) as exc:
            raise bad(f"{type(exc).__name__}: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> "RewardModel":
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise RewardModelError(f"Reward model {path} cannot be read: {exc}.") from exc
        return cls.from_bytes(data, str(path))
