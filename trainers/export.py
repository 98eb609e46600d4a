"""Export a peft LoRA (trained on the Hugging Face form of the base) as a llama.cpp GGUF adapter.

Training happens in torch+peft on the dequantized base (`trainers.base`), serving happens in
llama.cpp on the GGUF, so the adapter has to cross between two weight layouts. The layout matches
llama.cpp's own `convert_lora_to_gguf.py`: per base matrix `blk.N.<name>.weight`, two tensors
`...weight.lora_a` with numpy shape [r, in] (GGUF ne = [in, r]) and `...weight.lora_b` with numpy
shape [out, r] (GGUF ne = [r, out]), i.e. exactly peft's A and B, stored as float32, with
`adapter.lora.alpha` so that llama.cpp's scale alpha / r equals peft's scaling. The one subtle
difference: llama.cpp stores q/k rows RoPE-permuted relative to HF, so B of q and k gets the same
row permutation (A is untouched, it acts on the input side). `roundtrip_check` proves the whole
chain numerically and is meant to run after every real training run as a guard.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np

log = logging.getLogger(__name__)

AUTO_SCALE_STD = 3.0
"""`scale=None`: amplify until torch's logit deltas have this std (llama.cpp's noise floor is ~0.3)."""
AUTO_SCALE_MAX = 50.0

__all__ = [
    "GGUF_NAMES", "LoraTensors", "lora_from_peft", "peft_alpha", "read_gguf_adapter_metadata",
    "roundtrip_check", "teacher_forced_logits", "write_gguf_adapter",
]

LoraTensors = dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]
"""(layer index, HF module name) -> (A [r, in], B [out, r]) in peft layout, float32."""

GGUF_NAMES: dict[str, str] = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}
"""HF Llama module name -> llama.cpp tensor name (convert_hf_to_gguf's tensor map)."""

_MODULE_RE = re.compile(r"\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$")


def _lora_modules(model: Any, adapter: str) -> list[tuple[int, str, Any]]:
    """(layer, module name, peft layer) for each LoRA of `adapter`; refuses any LoRA the GGUF
    export would otherwise drop silently (embeddings, lm_head, other module names)."""
    found = []
    for name, module in model.named_modules():
        if not any(adapter in getattr(module, attr, ()) for attr in ("lora_A", "lora_embedding_A")):
            continue
        match = _MODULE_RE.search(name)
        if not match or match.group(2) not in GGUF_NAMES or adapter not in module.lora_A:
            raise ValueError(f"LoRA on {name}: the export supports only {sorted(GGUF_NAMES)}")
        found.append((int(match.group(1)), match.group(2), module))
    if not found:
        raise ValueError(f"no LoRA modules for adapter {adapter!r} found in the model")
    return found


def lora_from_peft(model: Any, adapter: str = "default") -> LoraTensors:
    """The (A, B) pairs of `adapter` as float32 numpy arrays, keyed by (layer, module name)."""
    return {
        (layer, kind): (
            module.lora_A[adapter].weight.detach().float().cpu().numpy().copy(),
            module.lora_B[adapter].weight.detach().float().cpu().numpy().copy(),
        )
        for layer, kind, module in _lora_modules(model, adapter)
    }


def peft_alpha(model: Any, adapter: str = "default") -> float:
    """The alpha to write: llama.cpp scales by alpha / r, peft by `module.scaling` (lora_alpha / r,
    or lora_alpha / sqrt(r) with rslora), so alpha = scaling * r. Read from the modules rather than
    the config so rslora and per-module patterns are honoured; they must agree, since the GGUF
    adapter has a single alpha."""
    modules = _lora_modules(model, adapter)
    alphas = {round(float(m.scaling[adapter]) * m.r[adapter], 6) for _, _, m in modules}
    if len(alphas) != 1:
        raise ValueError(f"LoRA modules differ in effective alpha {sorted(alphas)}; GGUF has one")
    return alphas.pop()


def _permute_rows(b: np.ndarray, n_head: int, what: str) -> np.ndarray:
    """convert_hf_to_gguf's `LlamaModel.permute` applied to B's rows (the output dimension)."""
    rows = b.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        raise ValueError(f"{what}: lora_B has {rows} rows, not divisible by 2 * n_head ({n_head})")
    return b.reshape(n_head, 2, rows // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def _checked(key: tuple[int, str], a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    what = f"layer {key[0]} {key[1]}"
    if key[1] not in GGUF_NAMES:
        raise ValueError(f"{what}: unknown module, expected one of {sorted(GGUF_NAMES)}")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{what}: A and B must be 2-D, got {a.shape} and {b.shape}")
    if a.shape[0] != b.shape[1]:
        raise ValueError(f"{what}: rank mismatch, A {a.shape} is [r, in], B {b.shape} is [out, r]")
    return np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)


def write_gguf_adapter(
    path: Path,
    tensors: LoraTensors,
    *,
    alpha: float,
    n_head: int,
    n_head_kv: int,
    arch: str = "llama",
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `tensors` as a llama.cpp LoRA adapter at `path`, atomically.

    The file is built as a temporary sibling, fsynced, then renamed over `path`, so the daemon
    never loads a half-written adapter and a failure leaves `path` as it was (or absent).
    """
    _write_adapter(path, tensors, alpha=alpha, n_head=n_head, n_head_kv=n_head_kv, arch=arch,
                   metadata=metadata, permute=True)


def _write_adapter(
    path: Path, tensors: LoraTensors, *, alpha: float, n_head: int, n_head_kv: int, arch: str,
    metadata: dict[str, str] | None, permute: bool,
) -> None:
    """`write_gguf_adapter`, with the q/k permutation switchable so tests can show it matters."""
    path = Path(path)
    if not tensors:
        raise ValueError("no LoRA tensors to export")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    order = list(GGUF_NAMES)
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        for key, value in (metadata or {}).items():
            writer.add_string(key, str(value))
        for key in sorted(tensors, key=lambda k: (k[0], order.index(k[1]) if k[1] in order else 0)):
            a, b = _checked(key, *tensors[key])
            if permute and key[1] in ("q_proj", "k_proj"):
                heads = n_head if key[1] == "q_proj" else n_head_kv
                b = _permute_rows(b, heads, f"layer {key[0]} {key[1]}")
            base = f"blk.{key[0]}.{GGUF_NAMES[key[1]]}.weight"
            writer.add_tensor(f"{base}.lora_a", a)
            writer.add_tensor(f"{base}.lora_b", b)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        for handle in writer.fout or []:
            handle.flush()
            os.fsync(handle.fileno())
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def read_gguf_adapter_metadata(path: Path) -> dict[str, str | float]:
    """The general.*, adapter.* and rlhi.* keys of a GGUF LoRA adapter.

    Used before loading an adapter, to refuse one made for another base; anything that is not a
    readable LoRA adapter (truncated, a model instead of an adapter) raises ValueError naming it.
    """
    try:
        reader = gguf.GGUFReader(str(path), "r")
        values: dict[str, str | float] = {}
        for key, field in reader.fields.items():
            if key.split(".")[0] in ("general", "adapter", "rlhi"):
                value = field.contents()
                if isinstance(value, str):
                    values[key] = value
                elif isinstance(value, (int, float)):
                    values[key] = float(value)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable GGUF file ({exc})") from exc
    if values.get("general.type") != "adapter" or values.get("adapter.type") != "lora":
        kind = values.get("general.type")
        raise ValueError(f"{path}: not a GGUF LoRA adapter (general.type={kind!r})")
    if "adapter.lora.alpha" not in values:
        raise ValueError(f"{path}: GGUF LoRA adapter without adapter.lora.alpha")
    return values


def teacher_forced_logits(gguf_base: Path, ids: list[list[int]], lora: Path | None, scale: float,
                          n_threads: int) -> list[np.ndarray]:
    """llama.cpp's logits at every position of each token sequence, with the GGUF adapter `lora`
    at `scale` (None: the base alone). The round-trip checks of both backends use this."""
    from llama_cpp import Llama

    n_ctx = max(len(seq) for seq in ids) + 8
    llm = Llama(str(gguf_base), n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                lora_path=str(lora) if lora else None, lora_scale=scale, logits_all=True, verbose=False)
    try:
        out = []
        for seq in ids:
            llm.reset()
            llm.eval(seq)
            out.append(np.array(llm.scores[: len(seq)], dtype=np.float32))
        return out
    finally:
        llm.close()


def roundtrip_check(
    gguf_base: Path, adapter_path: Path, peft_model: Any, tokenizer: Any, texts: list[str],
    n_threads: int = 2, *, scale: float | None = 1.0, adapter: str = "default",
) -> float:
    """Pearson correlation between the adapter's logit deltas in llama.cpp and in torch.

    The export is only correct if llama.cpp applying the GGUF adapter changes the logits the way
    peft does. The bases differ slightly (llama.cpp computes on Q4_1 with quantized activations,
    torch on the dequantized floats), so the deltas (with adapter - without) are compared, not the
    raw logits, over all positions and the full vocabulary of each teacher-forced text. A wrong
    layout (e.g. a missing q/k permutation) gives a clearly lower correlation, so this also runs
    after every real training run as a guard before an adapter is installed.

    llama.cpp quantizes activations to 8 bits, and outlier features make that coarse: any nonzero
    adapter, however small, moves its logits by ~0.3 (std) of rounding noise that torch does not
    have. A correct adapter whose deltas are not well above that floor correlates poorly, so a weak
    one should be checked with `scale` > 1 (None picks it from the torch deltas), which multiplies the adapter in both engines alike
    (llama.cpp's lora_scale, peft's per-module scaling) and so cannot hide a layout error.
    `n_threads` applies to both engines (torch's setting is restored after). Use 1 on a busy
    machine: the OpenMP threads of both spin-wait and crawl (10-20x) when cores are contended.
    """
    import torch

    ids = [list(tokenizer(text)["input_ids"]) for text in texts]
    if not ids or min(len(seq) for seq in ids) < 1:
        raise ValueError("roundtrip_check needs non-empty texts")

    def llama_logits(lora: Path | None) -> list[np.ndarray]:
        # The same ids as torch, so no BOS handling differences.
        return teacher_forced_logits(gguf_base, ids, lora, scale, n_threads)

    def torch_logits(seq: list[int]) -> np.ndarray:
        logits = peft_model(input_ids=torch.tensor([seq], device=device)).logits[0]
        return logits.float().cpu().numpy()

    modules = [m for _, _, m in _lora_modules(peft_model, adapter)]
    device = next(peft_model.parameters()).device
    scalings = [m.scaling[adapter] for m in modules]
    was_training, torch_threads = peft_model.training, torch.get_num_threads()
    peft_model.eval()
    torch.set_num_threads(n_threads)

    def tuned_torch(factor: float) -> list[np.ndarray]:
        try:
            for module, scaling in zip(modules, scalings):
                module.scaling[adapter] = scaling * factor
            return [torch_logits(seq) for seq in ids]
        finally:
            for module, scaling in zip(modules, scalings):
                module.scaling[adapter] = scaling

    try:
        with torch.no_grad():
            with peft_model.disable_adapter():
                base_t = [torch_logits(seq) for seq in ids]
            tuned_t = tuned_torch(1.0)
            if scale is None:
                # A trained adapter's deltas can sit near llama.cpp's noise floor: amplify both
                # engines alike until torch's deltas have a std of ~3 logits (capped).
                spread = float(np.std(np.concatenate([(t - b).ravel() for t, b in zip(tuned_t, base_t)])))
                scale = float(min(AUTO_SCALE_MAX, max(1.0, AUTO_SCALE_STD / max(spread, 1e-9))))
            if scale != 1.0:
                tuned_t = tuned_torch(scale)
    finally:
        peft_model.train(was_training)
        torch.set_num_threads(torch_threads)
    log.info("roundtrip check at adapter scale %.2f", scale)
    # float32 and deltas only: full-vocabulary logits of a few hundred positions are ~200 MB a set.
    delta_t = np.concatenate([(t - b).ravel() for t, b in zip(tuned_t, base_t)])
    del tuned_t, base_t
    base_ll = llama_logits(None)
    tuned_ll = llama_logits(Path(adapter_path))
    delta_ll = np.concatenate([(t - b).ravel() for t, b in zip(tuned_ll, base_ll)])
    del tuned_ll, base_ll
    a = delta_ll - delta_ll.mean(dtype=np.float64)
    b = delta_t - delta_t.mean(dtype=np.float64)
    return float(np.dot(a, b) / np.sqrt(float(np.dot(a, a)) * float(np.dot(b, b))))
