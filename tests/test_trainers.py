"""The torch trainer in-process: backend choice, the DPO loss, encoding, and real steps.

The training steps run on the real converted SmolLM2 with tiny synthetic pairs (short chosen,
long rejected), so each test takes seconds; the full learning proof is tests/test_learning.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests._base import shared_base_dir
from trainers.backend import Machine, select_backend
from trainers.job import Example, HParams, RegressionItem, read_job, regression_prompts, write_job, TrainJob

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

SYSTEM = {"role": "system", "content": "User persona: prefers very concise answers."}
LONG = ("Sure! Here is a detailed explanation. There are many aspects worth considering in depth, "
        "and several points to keep in mind before deciding anything at all.")


def pairs(n: int, offset: int = 0) -> list[Example]:
    return [Example(f"p{i}", [SYSTEM, {"role": "user", "content": f"How do I learn topic {i}?"}],
                    "Practise a little every day.", LONG) for i in range(offset, offset + n)]


# -- backend choice ------------------------------------------------------------------------------

@pytest.mark.parametrize(("machine", "expected"), [
    (Machine(cuda=True, apple_silicon=False, mlx=False), "cuda"),
    (Machine(cuda=True, apple_silicon=True, mlx=True), "cuda"),
    (Machine(cuda=False, apple_silicon=True, mlx=True), "mlx"),
    (Machine(cuda=False, apple_silicon=True, mlx=False), "cpu"),
    (Machine(cuda=False, apple_silicon=False, mlx=True), "cpu"),
    (Machine(cuda=False, apple_silicon=False, mlx=False), "cpu"),
])
def test_auto_prefers_cuda_then_mlx_then_cpu(machine: Machine, expected: str) -> None:
    assert select_backend("auto", machine) == expected


def test_a_named_backend_the_machine_lacks_is_an_error_not_a_fallback() -> None:
    plain = Machine(cuda=False, apple_silicon=False, mlx=False)
    with pytest.raises(ValueError, match="no CUDA device"):
        select_backend("cuda", plain)
    with pytest.raises(ValueError, match="mlx is not installed"):
        select_backend("mlx", plain)
    with pytest.raises(ValueError, match="not built into"):
        select_backend("mlx", Machine(cuda=False, apple_silicon=True, mlx=True), available=("cuda", "cpu"))
    with pytest.raises(ValueError, match="use auto"):
        select_backend("tpu", plain)
    # Without MLX built in, a Mac trains on the CPU.
    assert select_backend("auto", Machine(False, True, True), available=("cuda", "cpu")) == "cpu"


# -- the loss ------------------------------------------------------------------------------------

def test_dpo_loss_is_the_formula() -> None:
    import torch

    from trainers.torch_dpo import dpo_loss

    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
    rc, rr = torch.tensor([-11.0, -19.0]), torch.tensor([-11.0, -16.0])
    nll = torch.tensor([2.0, 3.0])
    loss, m = dpo_loss(pc, pr, rc, rr, nll, beta=0.5, nll_weight=0.25)
    expected = []
    for a, b, c, d, n in zip([-10, -20], [-12, -15], [-11, -19], [-11, -16], [2, 3]):
        margin = 0.5 * ((a - c) - (b - d))
        expected.append(-math.log(1 / (1 + math.exp(-margin))) + 0.25 * n)
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert m["rewards/margins"] == pytest.approx((0.5 * (1 - -1) + 0.5 * (-1 - 1)) / 2)
    assert m["rewards/accuracies"] == 0.5


# -- encoding ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trainer() -> Any:
    from trainers.torch_dpo import DPOTrainer

    import torch

    torch.set_num_threads(2)
    return DPOTrainer(shared_base_dir(), HParams(rank=4, alpha=8, epochs=1, batch_size=2, lr=5e-4, max_len=128))


def test_encoding_is_the_served_chat_template_then_the_answer_and_end_of_turn(trainer: Any) -> None:
    from trainers.torch_dpo import encode

    tok = trainer.tokenizer
    messages = [SYSTEM, {"role": "user", "content": "Hi"}]
    e = encode(tok, messages, "Hello there.", 128)
    prompt_text = tok.decode(e.ids[: e.start])
    assert prompt_text == "<|im_start|>system\n" + SYSTEM["content"] + "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(e.ids[e.start :]) == "Hello there.<|im_end|>"
    # A long prompt loses its oldest tokens; the answer survives whole.
    long = encode(tok, [{"role": "user", "content": "word " * 400}], "Short answer.", 64)
    assert len(long.ids) == 64 and tok.decode(long.ids[long.start :]) == "Short answer.<|im_end|>"


def test_a_pair_read_in_one_packed_forward_scores_as_its_answers_read_apart(trainer: Any) -> None:
    """Training reads [prompt | chosen | rejected] at once, the rejected answer masked from the
    chosen one and at the same positions: log-probs, NLL and their gradients must be those of
    the two sequences read one at a time (a leak through the mask or a position off by one
    would change them). A pair whose prompts differ (cut to fit) is read apart."""
    import torch

    from trainers.torch_dpo import encode

    example = pairs(1, offset=7)[0]
    chosen = encode(trainer.tokenizer, example.messages, example.chosen, 128)
    rejected = encode(trainer.tokenizer, example.messages, example.rejected + " And more words.", 128)
    assert chosen.start == rejected.start and len(rejected.ids) != len(chosen.ids)
    params = [q for q in trainer.model.parameters() if q.requires_grad]
    with torch.no_grad():  # a non-zero adapter, so that gradients reach both LoRA factors
        for q in params:
            q.add_(torch.randn_like(q) * 0.01)

    def grads(packed: bool) -> tuple[list[float], list[Any]]:
        trainer.model.zero_grad(set_to_none=True)
        if packed:
            c, r, nll = trainer._pair_logps(chosen, rejected)
        else:
            (c, nll), (r, _) = trainer._logps([chosen]), trainer._logps([rejected])
        (c - 2 * r + nll).sum().backward()
        return [c.item(), r.item(), nll.item()], [q.grad.detach().clone() for q in params]

    try:
        values, g = grads(packed=True)
        values_apart, g_apart = grads(packed=False)
        assert values == pytest.approx(values_apart, rel=1e-4)
        worst = max(float((a - b).norm() / b.norm().clamp(min=1e-12)) for a, b in zip(g, g_apart))
        assert worst < 1e-4  # measured 7e-6: float summation order

        other = encode(trainer.tokenizer, [{"role": "user", "content": "word " * 200}], "Short.", 128)
        assert other.ids[: other.start] != chosen.ids[: chosen.start]  # cut to fit: another prompt
        c, r, _ = trainer._pair_logps(chosen, other)
        assert r.item() == pytest.approx(trainer._logps([other])[0].item(), rel=1e-4)
    finally:
        trainer.model.zero_grad(set_to_none=True)
        with torch.no_grad():  # back to a zero adapter (B = 0), as the other tests expect
            for name, q in trainer.model.named_parameters():
                if "lora_B" in name:
                    q.zero_()


def test_steps_move_the_lora_weights_only_and_learn_the_preference(trainer: Any) -> None:
    import torch

    named = dict(trainer.model.named_parameters())
    base_key = next(k for k in named if "q_proj.base_layer.weight" in k)
    lora_key = next(k for k in named if "q_proj.lora_B" in k)
    base_before, lora_before = named[base_key].detach().clone(), named[lora_key].detach().clone()
    heldout = pairs(4, offset=100)
    before = trainer.preference(heldout)
    assert before["rewards/margins"] == pytest.approx(0.0, abs=1e-3)  # B starts at zero: the base

    events: list[dict[str, Any]] = []
    metrics = trainer.train(pairs(6), lambda kind, **f: events.append({"event": kind, **f}), lambda: False)

    assert torch.equal(named[base_key], base_before), "the base weights must stay frozen"
    assert not torch.equal(named[lora_key], lora_before)
    assert [e["step"] for e in events] == [1, 2, 3] and all(e["total"] == 3 for e in events)
    assert {"loss", "rewards/accuracies", "rewards/margins", "eta_s"} <= set(events[-1])
    assert metrics["steps"] == 3
    after = trainer.preference(heldout)  # unseen prompts of the same kind
    assert after["rewards/margins"] > 0.05 and after["rewards/accuracies"] == 1.0
    drift = trainer.drift([RegressionItem([{"role": "user", "content": q}], a) for q, a in regression_prompts()[:3]])
    assert 0 < drift["kl"] < 1.0 and drift["ppl_ratio"] > 0


def test_cancel_stops_between_steps(trainer: Any) -> None:
    from trainers.torch_dpo import Cancelled

    steps: list[int] = []
    with pytest.raises(Cancelled):
        trainer.train(pairs(6), lambda kind, **f: steps.append(f["step"]), lambda: bool(steps))
    assert steps == [1]


def test_a_job_file_round_trips(tmp_path: Path) -> None:
    job = TrainJob("/m.gguf", "f" * 64, "/c", "/o", "3", pairs(2), pairs(1, 9),
                   [RegressionItem([{"role": "user", "content": "q"}], "a")], HParams(rank=8, targets=("q_proj",)))
    write_job(job, tmp_path / "job.json")
    assert read_job(tmp_path / "job.json") == job
