"""The peft -> GGUF LoRA export, proven on the real model by comparing logit deltas.

A random LoRA (peft initialises B to zero, which would prove nothing) is exported and applied by
llama.cpp; its effect on the logits must match peft's. The LoRA weights are large enough that
the deltas (std ~3.5 logits, against a logit std of 8) stand well above llama.cpp's ~0.3
rounding-noise floor from its 8-bit activation quantization (see `roundtrip_check`): at std ~1 the
correlation of a correct export is only ~0.95. They are small enough to stay out of the chaotic
regime (twice as large) where the two engines diverge anyway. Measured over seeds 0-3: q/k
0.987-0.995, all seven targets 0.984-0.993, q/k without the RoPE permutation -0.09-0.30.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from tests._base import base_gguf, shared_base_dir
from trainers import export

N_HEAD, N_HEAD_KV = 9, 3  # SmolLM2-135M
ALL_TARGETS = list(export.GGUF_NAMES)
Lora = tuple[Any, Any]  # (peft model, tokenizer)
METADATA = {"rlhi.base_fingerprint": "f" * 64, "rlhi.adapter_version": "7"}
pytestmark = pytest.mark.filterwarnings(  # peft 0.21 calls a transformers 5 deprecated API
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
CHATS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a colour.", "Blue is a colour."),
    ("Say hi.", "Hello! How can I help you today?"),
]


@pytest.fixture(scope="module")
def base_dir() -> Path:
    return shared_base_dir()


@pytest.fixture(scope="module")
def texts(base_dir: Path) -> list[str]:
    from trainers.base import load_base

    _, tokenizer = load_base(base_dir)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                      add_generation_prompt=True) + a
        for q, a in CHATS
    ]


def random_lora(base_dir: Path, targets: list[str], std: float, seed: int = 0) -> Lora:
    """A peft model (r=8, alpha=16) on `targets` with every LoRA weight drawn N(0, std)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainers.base import load_base

    model, tokenizer = load_base(base_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    peft_model.eval()
    return peft_model, tokenizer


@pytest.fixture(scope="module")
def qk_lora(base_dir: Path) -> Lora:
    return random_lora(base_dir, ["q_proj", "k_proj"], std=0.1)


@pytest.fixture(scope="module")
def all_lora(base_dir: Path) -> Lora:
    return random_lora(base_dir, ALL_TARGETS, std=0.05)


def export_peft(model: Any, path: Path, permute: bool = True) -> Path:
    export._write_adapter(path, export.lora_from_peft(model), alpha=export.peft_alpha(model),
                          n_head=N_HEAD, n_head_kv=N_HEAD_KV, arch="llama", metadata=METADATA,
                          permute=permute)
    return path


def check(lora: Lora, adapter: Path, texts: list[str]) -> float:
    # One thread: OpenMP spin-waits (llama.cpp and torch) crawl when the two cores are shared.
    return export.roundtrip_check(base_gguf(), adapter, lora[0], lora[1], texts, n_threads=1)


def test_qk_adapter_matches_peft(qk_lora: Lora, texts: list[str], tmp_path: Path) -> None:
    corr = check(qk_lora, export_peft(qk_lora[0], tmp_path / "qk.gguf"), texts)
    print(f"q/k correlation {corr:.4f}")
    assert corr >= 0.95


def test_all_targets_adapter_matches_peft(all_lora: Lora, texts: list[str],
                                          tmp_path: Path) -> None:
    assert {key[1] for key in export.lora_from_peft(all_lora[0])} == set(ALL_TARGETS)
    corr = check(all_lora, export_peft(all_lora[0], tmp_path / "all.gguf"), texts)
    print(f"all-targets correlation {corr:.4f}")
    assert corr >= 0.95


def test_without_rope_permutation_the_adapter_is_wrong(qk_lora: Lora, texts: list[str],
                                                       tmp_path: Path) -> None:
    corr = check(qk_lora, export_peft(qk_lora[0], tmp_path / "raw.gguf", permute=False), texts)
    print(f"q/k correlation without permutation {corr:.4f}")
    assert corr < 0.6  # measured -0.09 to 0.30 over seeds; with the permutation >= 0.98


def test_layout_matches_convert_lora_to_gguf(qk_lora: Lora, tmp_path: Path) -> None:
    tensors = export.lora_from_peft(qk_lora[0])
    assert len(tensors) == 60 and export.peft_alpha(qk_lora[0]) == 16.0  # lora_alpha, not alpha/r
    reader = gguf.GGUFReader(export_peft(qk_lora[0], tmp_path / "qk.gguf"))
    by_name = {t.name: t for t in reader.tensors}
    assert len(by_name) == 120
    a, b = tensors[(4, "q_proj")]
    assert a.shape == (8, 576) and b.shape == (576, 8)
    lora_a, lora_b = by_name["blk.4.attn_q.weight.lora_a"], by_name["blk.4.attn_q.weight.lora_b"]
    # GGUF ne order is numpy's reversed: a = [in, r], b = [r, out], float32 like the converter.
    assert list(lora_a.shape) == [576, 8] and list(lora_b.shape) == [8, 576]
    assert lora_a.tensor_type == lora_b.tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(lora_a.data, a)  # A untouched
    expected_b = b.reshape(N_HEAD, 2, 32, 8).swapaxes(1, 2).reshape(576, 8)
    np.testing.assert_array_equal(lora_b.data, expected_b)
    assert not np.array_equal(lora_b.data, b)
    k_b = by_name["blk.4.attn_k.weight.lora_b"]
    assert list(k_b.shape) == [8, 192]
    _, kb = tensors[(4, "k_proj")]
    expected_kb = kb.reshape(N_HEAD_KV, 2, 32, 8).swapaxes(1, 2).reshape(192, 8)
    np.testing.assert_array_equal(k_b.data, expected_kb)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
def test_lora_the_gguf_cannot_hold_is_refused(base_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from trainers.base import load_base

    model, _ = load_base(base_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["v_proj", "embed_tokens"])
    with pytest.raises(ValueError, match="embed_tokens"):
        export.lora_from_peft(get_peft_model(model, config))


def test_rslora_alpha_is_the_effective_one(base_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from trainers.base import load_base

    model, _ = load_base(base_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["v_proj"], use_rslora=True)
    # rslora scales by alpha / sqrt(r); llama.cpp by alpha / r, so alpha becomes 16 * sqrt(8).
    assert export.peft_alpha(get_peft_model(model, config)) == pytest.approx(16 * 8**0.5, rel=1e-6)


def test_metadata_round_trips(qk_lora: Lora, tmp_path: Path) -> None:
    meta = export.read_gguf_adapter_metadata(export_peft(qk_lora[0], tmp_path / "qk.gguf"))
    assert meta["general.type"] == "adapter"
    assert meta["general.architecture"] == "llama"
    assert meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 16.0
    assert meta["rlhi.base_fingerprint"] == "f" * 64
    assert meta["rlhi.adapter_version"] == "7"


def small_tensors(out: int = 576, rows_b: int | None = None) -> export.LoraTensors:
    rng = np.random.default_rng(0)
    return {
        (0, "v_proj"): (rng.normal(size=(4, 576)).astype(np.float32),
                        rng.normal(size=(192, 4)).astype(np.float32)),
        (1, "q_proj"): (rng.normal(size=(4, 576)).astype(np.float32),
                        rng.normal(size=(rows_b or out, 4)).astype(np.float32)),
    }


def write(path: Path, tensors: export.LoraTensors) -> None:
    export.write_gguf_adapter(path, tensors, alpha=8.0, n_head=N_HEAD, n_head_kv=N_HEAD_KV,
                              metadata=METADATA)


def test_truncated_or_foreign_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "adapter.gguf"
    write(path, small_tensors())
    assert export.read_gguf_adapter_metadata(path)["adapter.lora.alpha"] == 8.0
    data = path.read_bytes()
    for size in (len(data) // 2, 100, 0):
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match=str(path)):
            export.read_gguf_adapter_metadata(path)
    model = tmp_path / "model.gguf"  # a valid GGUF, but a model rather than an adapter
    writer = gguf.GGUFWriter(model, "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="not a GGUF LoRA adapter"):
        export.read_gguf_adapter_metadata(model)


def test_mismatched_shapes_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bad_rank = {(3, "k_proj"): (rng.normal(size=(8, 576)), rng.normal(size=(192, 4)))}
    with pytest.raises(ValueError, match="layer 3 k_proj: rank mismatch"):
        write(tmp_path / "a.gguf", bad_rank)
    with pytest.raises(ValueError, match="layer 1 q_proj: .*not divisible"):
        write(tmp_path / "a.gguf", small_tensors(rows_b=575))
    with pytest.raises(ValueError, match="lm_head"):
        write(tmp_path / "a.gguf", {(0, "lm_head"): (np.zeros((4, 8)), np.zeros((8, 4)))})
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def failing_tensor_write(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tensor data that fails half-way through being written, as on a full disk."""

    def write_some_then_fail(self: gguf.GGUFWriter, **_: Any) -> None:
        self.fout[0].write(b"\0" * 4096)
        raise OSError("No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", write_some_then_fail)
    yield


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write(tmp_path / "a.gguf", small_tensors(rows_b=575))  # fails on the second tensor
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("failing_tensor_write")
def test_failed_write_keeps_the_previous_adapter(tmp_path: Path) -> None:
    path = tmp_path / "a.gguf"
    path.write_bytes(b"previous adapter")
    with pytest.raises(OSError, match="No space"):
        write(path, small_tensors())
    assert path.read_bytes() == b"previous adapter"
    assert sorted(os.listdir(tmp_path)) == ["a.gguf"]


def test_weak_adapter_is_checked_amplified(base_dir: Path, texts: list[str],
                                           tmp_path: Path) -> None:
    """A correct but weak adapter correlates only ~0.78 under llama.cpp's rounding noise; scaling
    it in both engines lifts it clear (6.25x here = the std-0.05 adapter's effect: ~0.99)."""
    import torch

    weak = random_lora(base_dir, ALL_TARGETS, std=0.02)
    threads = torch.get_num_threads()
    adapter = export_peft(weak[0], tmp_path / "weak.gguf")
    corr = export.roundtrip_check(base_gguf(), adapter, weak[0], weak[1], texts, n_threads=1,
                                  scale=6.25)
    print(f"weak adapter, amplified 6.25x: correlation {corr:.4f}")
    assert corr >= 0.95
    assert torch.get_num_threads() == threads  # restored
    assert weak[0].base_model.model.model.layers[0].mlp.up_proj.scaling["default"] == 2.0
