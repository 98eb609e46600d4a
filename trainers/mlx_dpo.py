"""The MLX backend: LoRA + DPO with mlx-lm's LoRA layers, the torch loop step for step.

Same job, loss, events and metrics as `trainers.torch_dpo`, so the daemon and the gate cannot
tell the backends apart: sequences come from `torch_dpo.encode` (the served chat template, loss
on answer tokens only); the reference is this network with every LoRA scale at zero, its
log-probs computed once before training; pairs go one at a time with gradients accumulated,
the global norm is clipped at 1.0, and AdamW runs with bias correction (mlx's default has none,
torch's has) under the same warm-up-then-decay schedule.

mlx-lm's `LoRALinear` computes y = W x + scale * (x A) B with A [in, r] and B [r, out]: peft's A
and B transposed, and `scale` is peft's alpha / r. Export and `save` convert to peft's layout, so
`trainers.export` writes the GGUF (with its q/k RoPE permutation) and either backend can load the
saved adapter as the active one to compare against.

Float32 throughout, like torch on a CPU. On Linux (mlx[cpu], where the tests train it) a step
takes ~1.5x torch's even with OpenBLAS: MLX's CPU exp and sigmoid are scalar (~23 ns an element
against ~0.4 ns for an add), and softmax and SiLU are a third of a layer's time.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .export import AUTO_SCALE_MAX, AUTO_SCALE_STD, GGUF_NAMES, LoraTensors, teacher_forced_logits
from .job import Example, HParams, RegressionItem
from .torch_dpo import Cancelled, Encoded, encode

__all__ = ["DPOTrainer", "dpo_loss", "set_threads"]

log = logging.getLogger(__name__)

Emit = Callable[..., None]
Adapter = dict[str, tuple[Any, Any, float]]
"""Module path ("model.layers.3.self_attn.q_proj") -> (lora_a [in, r], lora_b [r, out], scale)."""

_MODULE_RE = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)$")
_PEFT_PREFIX = "base_model.model."


def _block(name: str) -> str:
    """Where an HF module name lives inside an mlx-lm llama layer."""
    return f"{'self_attn' if name.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{name}"


def set_threads(n: int) -> bool:
    """Use `n` BLAS threads; False when the process has no OpenBLAS (the reference BLAS that
    mlx[cpu] links on Linux is single-threaded and ~15x slower: see backend.child_env)."""
    try:
        ctypes.CDLL(None).openblas_set_num_threads(ctypes.c_int(n))
    except AttributeError:
        return False
    return True


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any,
             chosen_nll: Any, beta: float, nll_weight: float) -> tuple[Any, dict[str, Any]]:
    """`torch_dpo.dpo_loss` in MLX: the batch loss and TRL-named metrics (as 0-d arrays, since
    nothing may be evaluated inside a gradient transform); inputs are per-pair summed log-probs."""
    import mlx.nn as nn

    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margins = chosen_reward - rejected_reward
    loss = -nn.log_sigmoid(margins) + nll_weight * chosen_nll
    metrics = {
        "rewards/chosen": chosen_reward.mean(),
        "rewards/rejected": rejected_reward.mean(),
        "rewards/margins": margins.mean(),
        "rewards/accuracies": (margins > 0).astype(margins.dtype).mean(),
        "nll": chosen_nll.mean(),
    }
    return loss.mean(), metrics


class DPOTrainer:
    """Owns the MLX model with its LoRA layers for one training job."""

    def __init__(self, base_dir: Path, hparams: HParams) -> None:
        import mlx.core as mx
        from mlx_lm.tuner.utils import linear_to_lora_layers
        from mlx_lm.utils import load_model
        from transformers import AutoTokenizer

        unknown = [t for t in hparams.targets if t not in GGUF_NAMES]
        if unknown:
            raise ValueError(f"LoRA targets {unknown}: the MLX backend supports {sorted(GGUF_NAMES)}")
        os.environ["HF_HUB_OFFLINE"] = "1"
        mx.random.seed(hparams.seed)
        self.hp = hparams
        # The cached conversion of the served GGUF (trainers.base), float32. mlx-lm's llama reads
        # only a top-level rope_theta, which transformers 5 nests in rope_parameters; without it
        # mlx-lm silently uses 10000 (SmolLM2's is 100000) and every logit is off.
        config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
        nested = (config.get("rope_parameters") or {}).get("rope_theta")
        override = {"rope_theta": nested} if "rope_theta" not in config and nested else None
        self.model, self.config = load_model(Path(base_dir), model_config=override)
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        self.model.freeze()
        linear_to_lora_layers(self.model, len(self.model.layers), {
            "rank": hparams.rank, "scale": hparams.alpha / hparams.rank, "dropout": 0.0,
            "keys": [_block(t) for t in hparams.targets]})
        self.adapters: dict[str, Adapter] = {}
        self.current = "default"

    # -- the LoRA layers ----------------------------------------------------------------------

    def lora_modules(self) -> dict[str, Any]:
        from mlx_lm.tuner.lora import LoRALinear

        return {name: m for name, m in self.model.named_modules() if isinstance(m, LoRALinear)}

    @contextlib.contextmanager
    def scaled(self, factor: float) -> Iterator[None]:
        """Every LoRA scale times `factor` inside the block: 0 is the reference (the base)."""
        modules = list(self.lora_modules().values())
        scales = [m.scale for m in modules]
        try:
            for m, s in zip(modules, scales):
                m.scale = s * factor
            yield
        finally:
            for m, s in zip(modules, scales):
                m.scale = s

    # -- log-probabilities --------------------------------------------------------------------

    def _answer_logprobs(self, e: Encoded) -> tuple[Any, Any]:
        """Log-softmax over the vocabulary where an answer token is predicted, and those tokens.
        The LM head runs on answer positions only, as in torch_dpo (most of a step's memory)."""
        import mlx.core as mx

        first = max(e.start, 1)
        ids = mx.array([e.ids])
        hidden = self.model.model(ids)[0, first - 1 : len(e.ids) - 1]
        if self.model.args.tie_word_embeddings:
            logits = self.model.model.embed_tokens.as_linear(hidden)
        else:
            logits = self.model.lm_head(hidden)
        logits = logits.astype(mx.float32)
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True), ids[0, first:]

    def _logps(self, e: Encoded) -> tuple[Any, Any]:
        """Summed answer log-prob of one sequence, and the mean NLL of its answer tokens."""
        import mlx.core as mx

        logprobs, targets = self._answer_logprobs(e)
        summed = mx.take_along_axis(logprobs, targets[:, None], axis=-1).sum()
        return summed, -summed / max(1, targets.size)

    def logps(self, encoded: Sequence[Encoded], adapter: bool = True) -> list[float]:
        """Answer log-probs: under the adapter, or the base (every LoRA scale at zero)."""
        import mlx.core as mx

        out: list[float] = []
        with contextlib.nullcontext() if adapter else self.scaled(0.0):
            for e in encoded:
                value = self._logps(e)[0]
                mx.eval(value)
                out.append(value.item())
        return out

    # -- training -----------------------------------------------------------------------------

    def train(self, examples: Sequence[Example], emit: Emit, cancelled: Callable[[], bool]) -> dict[str, float]:
        """DPO over `examples` for `hp.epochs`; emits `progress` events; returns final metrics."""
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim
        from mlx.utils import tree_map

        hp = self.hp
        chosen = [encode(self.tokenizer, e.messages, e.chosen, hp.max_len) for e in examples]
        rejected = [encode(self.tokenizer, e.messages, e.rejected, hp.max_len) for e in examples]
        # The reference is the base: constant during training, so computed once, not per step.
        ref_chosen = mx.array(self.logps(chosen, adapter=False))
        ref_rejected = mx.array(self.logps(rejected, adapter=False))

        def pair_loss(j: int) -> tuple[Any, dict[str, Any]]:
            policy_chosen, chosen_nll = self._logps(chosen[j])
            policy_rejected, _ = self._logps(rejected[j])
            return dpo_loss(policy_chosen, policy_rejected, ref_chosen[j], ref_rejected[j], chosen_nll,
                            hp.beta, hp.nll_weight)

        loss_and_grad = nn.value_and_grad(self.model, pair_loss)
        optimiser = optim.AdamW(learning_rate=hp.lr, weight_decay=0.0, bias_correction=True)
        order = list(range(len(examples)))
        rng = random.Random(hp.seed)
        steps_per_epoch = math.ceil(len(order) / hp.batch_size)
        total = steps_per_epoch * hp.epochs
        warmup = max(1, total // 10)
        self.model.train()
        started = time.perf_counter()
        step = 0
        metrics: dict[str, float] = {}
        for epoch in range(hp.epochs):
            rng.shuffle(order)
            for i in range(0, len(order), hp.batch_size):
                if cancelled():
                    raise Cancelled()
                idx = order[i : i + hp.batch_size]
                # One pair at a time, gradients accumulated (evaluated per pair, so memory holds
                # the graph of two sequences, not of the whole batch).
                grads: Any = None
                parts: list[tuple[float, dict[str, float]]] = []
                for j in idx:
                    (loss, pair_metrics), g = loss_and_grad(j)
                    g = tree_map(lambda x: x / len(idx), g)
                    grads = g if grads is None else tree_map(mx.add, grads, g)
                    mx.eval(loss, pair_metrics, grads)
                    parts.append((loss.item(), {k: v.item() for k, v in pair_metrics.items()}))
                metrics = {key: sum(m[key] for _, m in parts) / len(parts) for key in parts[0][1]}
                metrics["loss"] = sum(v for v, _ in parts) / len(parts)
                grads, _ = optim.clip_grad_norm(grads, 1.0)
                # torch_dpo's LambdaLR: warm-up over the first tenth, then linear decay to zero.
                factor = (step + 1) / warmup if step < warmup else (total - step) / max(1, total - warmup)
                optimiser.learning_rate = mx.array(hp.lr * factor)
                optimiser.update(self.model, grads)
                mx.eval(self.model.trainable_parameters(), optimiser.state)
                step += 1
                elapsed = time.perf_counter() - started
                emit("progress", step=step, total=total, epoch=epoch + 1, elapsed_s=elapsed,
                     eta_s=elapsed / step * (total - step), **metrics)
        self.model.eval()
        return {**metrics, "steps": step, "train_seconds": time.perf_counter() - started}

    # -- evaluation for the gate --------------------------------------------------------------

    def preference(self, examples: Sequence[Example]) -> dict[str, float]:
        """Held-out preference under the current adapter against the base (torch_dpo's keys)."""
        hp = self.hp
        if not examples:
            return {"pairs": 0, "rewards/accuracies": 0.0, "rewards/margins": 0.0}
        chosen = [encode(self.tokenizer, e.messages, e.chosen, hp.max_len) for e in examples]
        rejected = [encode(self.tokenizer, e.messages, e.rejected, hp.max_len) for e in examples]
        pc, pr = self.logps(chosen), self.logps(rejected)
        bc, br = self.logps(chosen, adapter=False), self.logps(rejected, adapter=False)
        margins = [hp.beta * ((a - b) - (c - d)) for a, b, c, d in zip(pc, bc, pr, br)]
        return {
            "pairs": len(examples),
            "rewards/accuracies": sum(m > 0 for m in margins) / len(margins),
            "rewards/margins": sum(margins) / len(margins),
        }

    def drift(self, items: Sequence[RegressionItem]) -> dict[str, float]:
        """Mean per-token KL(base ‖ candidate) on neutral reference answers, and the change in
        their perplexity (torch_dpo's definition and keys)."""
        import mlx.core as mx

        if not items:
            return {"kl": 0.0, "ppl_ratio": 1.0}
        kl_sum = tokens = nll_base = nll_cand = 0.0
        for item in items:
            e = encode(self.tokenizer, item.messages, item.answer, self.hp.max_len)
            cand, targets = self._answer_logprobs(e)
            with self.scaled(0.0):
                base, _ = self._answer_logprobs(e)
            kl = (mx.exp(base) * (base - cand)).sum()
            picked = [mx.take_along_axis(x, targets[:, None], axis=-1).sum() for x in (base, cand)]
            mx.eval(kl, *picked)
            kl_sum += kl.item()
            nll_base -= picked[0].item()
            nll_cand -= picked[1].item()
            tokens += targets.size
        return {"kl": kl_sum / tokens, "ppl_ratio": math.exp((nll_cand - nll_base) / tokens)}

    # -- adapters: the trained one, and others to compare with --------------------------------

    def _snapshot(self) -> Adapter:
        return {name: (m.lora_a, m.lora_b, m.scale) for name, m in self.lora_modules().items()}

    def load_other(self, peft_dir: Path) -> None:
        """Load a peft adapter directory (what `save` writes, and what torch_dpo saves) under the
        name `active`, for comparison. Modules it adapts that this model does not are wrapped."""
        import mlx.core as mx
        from mlx.utils import tree_unflatten
        from mlx_lm.tuner.lora import LoRALinear

        config = json.loads((Path(peft_dir) / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_dora"):
            raise ValueError(f"{peft_dir}: per-module ranks, alphas or DoRA are not supported")
        r = int(config["r"])
        scale = float(config["lora_alpha"]) / (math.sqrt(r) if config.get("use_rslora") else r)
        weights = mx.load(str(Path(peft_dir) / "adapter_model.safetensors"))
        other: Adapter = {}
        for key, a in weights.items():
            if not key.endswith(".lora_A.weight"):
                continue
            name = key.removeprefix(_PEFT_PREFIX).removesuffix(".lora_A.weight")
            if not _MODULE_RE.match(name):
                raise ValueError(f"{peft_dir}: LoRA on {name} is not supported")
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            other[name] = (a.T, b.T, scale)
        if not other:
            raise ValueError(f"{peft_dir}: no LoRA weights found")
        modules = dict(self.model.named_modules())
        missing = sorted(other.keys() - self.lora_modules().keys())
        if missing:
            self.model.update_modules(tree_unflatten(
                [(name, LoRALinear.from_base(modules[name], r=r, scale=0.0)) for name in missing]))
        self.adapters["active"] = other

    def use(self, name: str) -> None:
        """Serve the LoRA weights of `name` ("default": the one trained here); modules that
        adapter does not cover get scale 0."""
        import mlx.core as mx

        if name == self.current:
            return
        self.adapters[self.current] = self._snapshot()
        chosen = self.adapters[name]
        for path, m in self.lora_modules().items():
            if path in chosen:
                m.lora_a, m.lora_b, m.scale = chosen[path]
            else:
                m.lora_a, m.lora_b, m.scale = mx.zeros_like(m.lora_a), mx.zeros_like(m.lora_b), 0.0
        self.current = name

    def lora_tensors(self) -> LoraTensors:
        """The trained adapter in peft layout (A [r, in], B [out, r]), keyed for trainers.export."""
        tensors: LoraTensors = {}
        for name, m in self.lora_modules().items():
            match = _MODULE_RE.match(name)
            if not match or match.group(3) not in GGUF_NAMES:
                raise ValueError(f"LoRA on {name}: the export supports only {sorted(GGUF_NAMES)}")
            tensors[(int(match.group(1)), match.group(3))] = (
                np.array(m.lora_a, dtype=np.float32).T.copy(), np.array(m.lora_b, dtype=np.float32).T.copy())
        return tensors

    def lora_alpha(self) -> float:
        """llama.cpp scales by alpha / r, mlx-lm by `scale`, so the alpha to write is scale * r."""
        alphas = {round(m.scale * m.lora_a.shape[1], 6) for m in self.lora_modules().values()}
        if len(alphas) != 1:
            raise ValueError(f"LoRA modules differ in effective alpha {sorted(alphas)}; GGUF has one")
        return alphas.pop()

    def save(self, out_dir: Path) -> None:
        """The trained adapter as a peft directory (adapter_config.json, adapter_model.safetensors)."""
        import mlx.core as mx

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        weights: dict[str, Any] = {}
        for (layer, kind), (a, b) in self.lora_tensors().items():
            prefix = f"{_PEFT_PREFIX}model.layers.{layer}.{_block(kind)}"
            weights[f"{prefix}.lora_A.weight"] = mx.array(a)
            weights[f"{prefix}.lora_B.weight"] = mx.array(b)
        mx.save_safetensors(str(out_dir / "adapter_model.safetensors"), weights, metadata={"format": "pt"})
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.hp.rank, "lora_alpha": self.lora_alpha(),
                  "lora_dropout": 0.0, "bias": "none", "target_modules": sorted(self.hp.targets),
                  "use_rslora": False, "fan_in_fan_out": False, "base_model_name_or_path": None}
        (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    # -- the export check ---------------------------------------------------------------------

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Full-vocabulary logits of one sequence under the current LoRA scales, float32."""
        import mlx.core as mx

        out = self.model(mx.array([list(ids)]))[0].astype(mx.float32)
        mx.eval(out)
        return np.array(out)

    def roundtrip_check(self, gguf_base: Path, adapter_path: Path, texts: list[str], n_threads: int = 2,
                        *, scale: float | None = 1.0) -> float:
        """`trainers.export.roundtrip_check` against MLX: the Pearson correlation of the adapter's
        logit deltas (with - without) in llama.cpp and in MLX, over every position and the full
        vocabulary; `scale` multiplies the adapter in both engines (None: as export picks it)."""
        ids = [list(self.tokenizer(text)["input_ids"]) for text in texts]
        if not ids or min(len(seq) for seq in ids) < 1:
            raise ValueError("roundtrip_check needs non-empty texts")
        with self.scaled(0.0):
            base = [self.logits(seq) for seq in ids]
        tuned = [self.logits(seq) for seq in ids]
        if scale is None:
            spread = float(np.std(np.concatenate([(t - b).ravel() for t, b in zip(tuned, base)])))
            scale = float(min(AUTO_SCALE_MAX, max(1.0, AUTO_SCALE_STD / max(spread, 1e-9))))
        if scale != 1.0:
            with self.scaled(scale):
                tuned = [self.logits(seq) for seq in ids]
        log.info("roundtrip check at adapter scale %.2f", scale)
        delta_m = np.concatenate([(t - b).ravel() for t, b in zip(tuned, base)])
        del tuned, base
        delta_ll = _llama_deltas(Path(gguf_base), Path(adapter_path), ids, scale, n_threads)
        a = delta_ll - delta_ll.mean(dtype=np.float64)
        b = delta_m - delta_m.mean(dtype=np.float64)
        return float(np.dot(a, b) / np.sqrt(float(np.dot(a, a)) * float(np.dot(b, b))))


def _llama_deltas(gguf_base: Path, adapter: Path, ids: list[list[int]], scale: float, n_threads: int) -> np.ndarray:
    """llama.cpp's logits with the adapter at `scale` minus without, teacher-forced on `ids`."""
    base = teacher_forced_logits(gguf_base, ids, None, scale, n_threads)
    tuned = teacher_forced_logits(gguf_base, ids, adapter, scale, n_threads)
    return np.concatenate([(t - b).ravel() for t, b in zip(tuned, base)])

