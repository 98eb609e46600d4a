"""The torch backend: LoRA + DPO on CUDA or CPU, in one loop you can read top to bottom.

Why a hand-written loop rather than TRL's `DPOTrainer`: the reference model is the same network
with the adapter disabled, and its log-probabilities never change, so they are computed once
before training instead of once per step; each pair is one forward that reads its prompt once
for both answers (`_pair_logps`); the loss adds the NLL term DESIGN §7 needs; and the child
process stays free of TRL, datasets and accelerate (benchmarks/training.py measures it against TRL).

Loss per pair (Rafailov et al., plus an NLL anchor as in RPO):
    -log σ(β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]) + λ·NLL(y_w)/|y_w|
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .job import Example, HParams, RegressionItem

__all__ = ["Cancelled", "Encoded", "DPOTrainer", "dpo_loss", "encode"]

Emit = Callable[..., None]


class Cancelled(Exception):
    """Raised between steps when the job was asked to stop."""


@dataclass
class Encoded:
    """Token ids of one (prompt, answer) sequence and where the answer starts."""

    ids: list[int]
    start: int


def encode(tokenizer: Any, messages: Sequence[dict[str, str]], answer: str, max_len: int) -> Encoded:
    """The prompt exactly as the served model sees it (its chat template, generation prompt),
    then the answer and the end-of-turn token the model must learn to stop with. Long prompts
    lose their oldest tokens; the answer is kept (cut at the end only when it alone is too long)."""
    prompt = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if isinstance(prompt, dict) or hasattr(prompt, "input_ids"):
        prompt = prompt["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    answer_ids = answer_ids[: max_len // 2 if len(prompt) else max_len]
    room = max_len - len(answer_ids)
    prompt = list(prompt)[-room:] if room > 0 else []
    return Encoded(prompt + answer_ids, len(prompt))


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any,
             chosen_nll: Any, beta: float, nll_weight: float) -> tuple[Any, dict[str, float]]:
    """The batch loss and TRL-named metrics; inputs are per-pair summed log-probs (tensors)."""
    import torch.nn.functional as F

    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margins = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margins) + nll_weight * chosen_nll
    metrics = {
        "rewards/chosen": chosen_reward.mean().item(),
        "rewards/rejected": rejected_reward.mean().item(),
        "rewards/margins": margins.mean().item(),
        "rewards/accuracies": (margins > 0).float().mean().item(),
        "nll": chosen_nll.mean().item(),
    }
    return loss.mean(), metrics


class DPOTrainer:
    """Owns the model with its LoRA adapter for one training job."""

    def __init__(self, base_dir: Path, hparams: HParams, device: str = "cpu") -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        from .base import load_base

        torch.manual_seed(hparams.seed)
        self.hp = hparams
        self.device = device
        model, self.tokenizer = load_base(base_dir, device)
        config = LoraConfig(r=hparams.rank, lora_alpha=hparams.alpha, lora_dropout=0.0,
                            target_modules=list(hparams.targets), bias="none", task_type="CAUSAL_LM")
        self.model = get_peft_model(model, config)
        # bf16 autocast helps on CUDA; on CPUs without AMX it was 8x slower than float32 here.
        self.autocast = hparams.bf16 and device.startswith("cuda")

    # -- log-probabilities --------------------------------------------------------------------

    def _logps(self, batch: Sequence[Encoded]) -> tuple[Any, Any]:
        """Summed answer log-probs per sequence, and the per-sequence mean NLL of the answer."""
        import torch

        width = max(len(e.ids) for e in batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        answer = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, e in enumerate(batch):
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            attention[row, : len(e.ids)] = 1
            answer[row, e.start : len(e.ids)] = True
        ids, attention, answer = ids.to(self.device), attention.to(self.device), answer.to(self.device)
        # The LM head (576 x 49k on SmolLM2) is applied only where an answer token is predicted:
        # prompt positions never need logits, and full-vocabulary logits for every position were
        # most of the step's memory.
        inner = self.model.get_base_model()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.autocast):
            hidden = inner.model(input_ids=ids, attention_mask=attention).last_hidden_state
            mask = answer[:, 1:]
            logits = inner.lm_head(hidden[:, :-1][mask]).float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:][mask].unsqueeze(-1)).squeeze(-1)
        rows = torch.arange(len(batch), device=self.device).unsqueeze(1).expand_as(mask)[mask]
        summed = torch.zeros(len(batch), device=self.device).index_add(0, rows, token_logps)
        return summed, -summed / mask.sum(-1).clamp(min=1)

    def _pair_logps(self, chosen: Encoded, rejected: Encoded) -> tuple[Any, Any, Any]:
        """(chosen, rejected) summed answer log-probs and the chosen answer's mean NLL, in one
        forward over the prompt once and both answers: [prompt | chosen | rejected], the
        rejected answer placed at the chosen one's positions and masked from seeing it. The
        prompt is most of a real pair's tokens (persona card, conversation), so this reads it
        once instead of twice. Pairs whose prompts differ (cut to fit) go one at a time."""
        import torch

        p = chosen.start
        if p == 0 or rejected.start != p or chosen.ids[:p] != rejected.ids[:p]:
            (c, nll), (r, _) = self._logps([chosen]), self._logps([rejected])
            return c, r, nll
        a_c, a_r = chosen.ids[p:], rejected.ids[p:]
        c, r = len(a_c), len(a_r)
        n = p + c + r
        ids = torch.tensor([chosen.ids[:p] + a_c + a_r], device=self.device)
        positions = torch.tensor([list(range(p + c)) + list(range(p, p + r))], device=self.device)
        see = torch.tril(torch.ones(n, n, dtype=torch.bool, device=self.device))
        see[p + c:, p:p + c] = False  # the rejected answer does not see the chosen one
        inner = self.model.get_base_model()
        if inner.config._attn_implementation == "sdpa":
            mask = see[None, None]
        else:  # eager: an additive mask
            mask = torch.zeros(1, 1, n, n, device=self.device).masked_fill(~see, torch.finfo(torch.float32).min)
        # Hidden state i predicts token i+1: both answers' first tokens come from the prompt's last.
        rows = torch.tensor([*range(p - 1, p + c - 1), p - 1, *range(p + c, n - 1)], device=self.device)
        targets = torch.tensor(a_c + a_r, device=self.device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.autocast):
            hidden = inner.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
            logits = inner.lm_head(hidden[0, rows]).float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        chosen_sum, rejected_sum = token_logps[:c].sum(), token_logps[c:].sum()
        return chosen_sum.unsqueeze(0), rejected_sum.unsqueeze(0), (-chosen_sum / c).unsqueeze(0)

    def logps(self, encoded: Sequence[Encoded], adapter: bool = True, batch_size: int = 8) -> list[float]:
        """Answer log-probs without gradients: under the adapter, or the base (adapter disabled)."""
        import torch
        from contextlib import nullcontext

        out: list[float] = []
        context = nullcontext() if adapter else self.model.disable_adapter()
        with torch.no_grad(), context:
            for i in range(0, len(encoded), batch_size):
                out.extend(self._logps(encoded[i : i + batch_size])[0].tolist())
        return out

    # -- training -----------------------------------------------------------------------------

    def train(self, examples: Sequence[Example], emit: Emit, cancelled: Callable[[], bool]) -> dict[str, float]:
        """DPO over `examples` for `hp.epochs`; emits `progress` events; returns final metrics."""
        import torch

        hp = self.hp
        chosen = [encode(self.tokenizer, e.messages, e.chosen, hp.max_len) for e in examples]
        rejected = [encode(self.tokenizer, e.messages, e.rejected, hp.max_len) for e in examples]
        # The reference is the base: constant during training, so computed once, not per step.
        ref_chosen = torch.tensor(self.logps(chosen, adapter=False), device=self.device)
        ref_rejected = torch.tensor(self.logps(rejected, adapter=False), device=self.device)

        params = [p for p in self.model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=hp.lr, weight_decay=0.0)
        order = list(range(len(examples)))
        rng = random.Random(hp.seed)
        steps_per_epoch = math.ceil(len(order) / hp.batch_size)
        total = steps_per_epoch * hp.epochs
        warmup = max(1, total // 10)
        # Linear warm-up over the first tenth of the steps, then linear decay to zero.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s: (s + 1) / warmup if s < warmup else (total - s) / max(1, total - warmup))
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
                optimiser.zero_grad(set_to_none=True)
                # One pair at a time, gradients accumulated: no padding wasted on short answers,
                # and memory holds the activations of one packed pair, not of a whole batch.
                parts: list[tuple[float, dict[str, float]]] = []
                for j in idx:
                    policy_chosen, policy_rejected, chosen_nll = self._pair_logps(chosen[j], rejected[j])
                    loss, pair_metrics = dpo_loss(policy_chosen, policy_rejected, ref_chosen[j : j + 1],
                                                  ref_rejected[j : j + 1], chosen_nll, hp.beta, hp.nll_weight)
                    (loss / len(idx)).backward()
                    parts.append((loss.item(), pair_metrics))
                metrics = {key: sum(m[key] for _, m in parts) / len(parts) for key in parts[0][1]}
                metrics["loss"] = sum(v for v, _ in parts) / len(parts)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimiser.step()
                scheduler.step()
                step += 1
                elapsed = time.perf_counter() - started
                emit("progress", step=step, total=total, epoch=epoch + 1, elapsed_s=elapsed,
                     eta_s=elapsed / step * (total - step), **metrics)
        self.model.eval()
        return {**metrics, "steps": step, "train_seconds": time.perf_counter() - started}

    # -- evaluation for the gate --------------------------------------------------------------

    def preference(self, examples: Sequence[Example]) -> dict[str, float]:
        """Held-out preference under the candidate, measured against the base as reference:
        `rewards/accuracies` is the share of pairs whose implicit reward margin is positive."""
        hp = self.hp
        chosen = [encode(self.tokenizer, e.messages, e.chosen, hp.max_len) for e in examples]
        rejected = [encode(self.tokenizer, e.messages, e.rejected, hp.max_len) for e in examples]
        if not examples:
            return {"pairs": 0, "rewards/accuracies": 0.0, "rewards/margins": 0.0}
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
        their perplexity: what the gate bounds so a preference is not bought with degeneration."""
        import torch

        if not items:
            return {"kl": 0.0, "ppl_ratio": 1.0}
        kl_sum = tokens = 0.0
        nll_base = nll_cand = 0.0
        with torch.no_grad():
            for item in items:
                e = encode(self.tokenizer, item.messages, item.answer, self.hp.max_len)
                ids = torch.tensor([e.ids], device=self.device)
                cand = torch.log_softmax(self.model(input_ids=ids).logits[0, :-1].float(), -1)
                with self.model.disable_adapter():
                    base = torch.log_softmax(self.model(input_ids=ids).logits[0, :-1].float(), -1)
                sl = slice(e.start - 1, len(e.ids) - 1)
                target = ids[0, 1:][sl]
                kl_sum += (base[sl].exp() * (base[sl] - cand[sl])).sum().item()
                nll_base -= base[sl].gather(-1, target.unsqueeze(-1)).sum().item()
                nll_cand -= cand[sl].gather(-1, target.unsqueeze(-1)).sum().item()
                tokens += len(e.ids) - e.start
        return {"kl": kl_sum / tokens, "ppl_ratio": math.exp((nll_cand - nll_base) / tokens)}

    def load_other(self, peft_dir: Path) -> None:
        """Load another adapter (the one now served) under the name `active`, for comparison."""
        self.model.load_adapter(str(peft_dir), adapter_name="active")

    def use(self, name: str) -> None:
        self.model.set_adapter(name)

    def save(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir), selected_adapters=["default"])
