"""The MLX backend, trained for real on this machine's CPU (mlx[cpu]) and checked against torch.

MLX code runs in child processes started with `trainers.backend.child_env("mlx", ...)`, as the
daemon starts its trainer: OpenBLAS must be preloaded when a process starts, and without it
mlx[cpu] multiplies matrices with a reference BLAS ~15x slower. One spawned worker serves the
in-process checks; the end-to-end test runs `python -m trainers JOB` itself. Sizes are tiny (rank
4, sequences under 128 tokens, one or two steps) so the module takes about a minute.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests._base import base_gguf, shared_base_dir, shared_cache_dir
from trainers.backend import Machine, child_env, detect, select_backend
from trainers.job import Example, HParams, RegressionItem, TrainJob, regression_prompts, write_job

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "User persona: prefers very concise answers."}
LONG = ("Sure! Here is a detailed explanation. There are many aspects worth considering in depth, "
        "and several points to keep in mind before deciding anything at all.")
TINY = HParams(rank=4, alpha=8.0, epochs=1, batch_size=2, lr=5e-4, max_len=128)
ALL_TARGETS = TINY.targets
TIMEOUT = 300


def pairs(n: int, offset: int = 0) -> list[Example]:
    return [Example(f"p{i}", [SYSTEM, {"role": "user", "content": f"How do I learn topic {i}?"}],
                    "Practise a little every day.", LONG) for i in range(offset, offset + n)]


def regression(n: int) -> list[RegressionItem]:
    return [RegressionItem([SYSTEM, {"role": "user", "content": q}], a) for q, a in regression_prompts()[:n]]


def require_mlx(cache: Path) -> dict[str, str]:
    """The child environment for mlx; fails (never skips) when the mlx extra is missing."""
    missing = [name for name in ("mlx", "mlx_lm") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run `make install` (it installs the mlx extra)",
                    pytrace=False)
    env = child_env("mlx", cache)
    if sys.platform == "linux" and not env:
        pytest.fail("no OpenBLAS for mlx[cpu] (cmeel-openblas): run `make install`", pytrace=False)
    return env


@pytest.fixture(scope="module")
def base_dir() -> Path:
    return shared_base_dir()  # converted once per machine, before any child needs it


@pytest.fixture(scope="module")
def mlx_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return require_mlx(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def worker(mlx_env: dict[str, str], base_dir: Path) -> Iterator[Any]:
    """A spawned process with OpenBLAS preloaded: spawn starts a fresh interpreter, which reads
    the environment as it is when the pool is created."""
    saved = dict(os.environ)
    os.environ.update({**mlx_env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    try:
        pool = multiprocessing.get_context("spawn").Pool(1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield pool
    pool.terminate()
    pool.join()


def in_worker(pool: Any, fn: Any, *args: Any) -> Any:
    return pool.apply_async(fn, args).get(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def torch_trainer(base_dir: Path) -> Any:
    import torch

    from trainers.torch_dpo import DPOTrainer

    torch.set_num_threads(1)
    return DPOTrainer(base_dir, TINY)


# -- in the worker (module-level, so the spawned process can import them) -------------------------

def _mlx_trainer(base_dir: str, hp: HParams = TINY) -> Any:
    from trainers.mlx_dpo import DPOTrainer, set_threads

    assert set_threads(1) or sys.platform != "linux", "OpenBLAS is not loaded in the MLX worker"
    return DPOTrainer(Path(base_dir), hp)


def _randomise(trainer: Any, std: float, seed: int) -> None:
    """Every LoRA weight N(0, std): B starts at zero, which would make the adapter prove nothing."""
    import mlx.core as mx

    mx.random.seed(seed)
    for module in trainer.lora_modules().values():
        module.lora_a = mx.random.normal(module.lora_a.shape) * std
        module.lora_b = mx.random.normal(module.lora_b.shape) * std


def _train_steps(base_dir: str) -> dict[str, Any]:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from trainers.torch_dpo import Cancelled

    trainer = _mlx_trainer(base_dir)
    before = dict(tree_flatten(trainer.model.parameters()))  # mlx arrays are immutable: no copy needed
    trainable = sorted({name.rsplit(".", 1)[-1] for name, _ in tree_flatten(trainer.model.trainable_parameters())})
    events: list[dict[str, Any]] = []
    metrics = trainer.train(pairs(4), lambda kind, **f: events.append({"event": kind, **f}), lambda: False)
    after = dict(tree_flatten(trainer.model.parameters()))
    lora = [name for name in before if name.endswith((".lora_a", ".lora_b"))]
    changed_base = [name for name in before if name not in lora and not mx.array_equal(before[name], after[name])]
    changed_b = sum(not mx.array_equal(before[n], after[n]) for n in lora if n.endswith(".lora_b"))
    result = {"trainable": trainable, "base_params": len(before) - len(lora), "changed_base": changed_base,
              "lora_b": sum(n.endswith(".lora_b") for n in lora), "changed_lora_b": changed_b,
              "events": events, "metrics": metrics, "heldout": trainer.preference(pairs(1, offset=100)),
              "drift": trainer.drift(regression(2))}
    steps: list[int] = []
    trainer.hp = dataclasses.replace(trainer.hp, batch_size=1)  # two one-pair steps: the cheapest to cancel
    try:
        trainer.train(pairs(2), lambda kind, **f: steps.append(f["step"]), lambda: bool(steps))
    except Cancelled:
        result["cancelled_after"] = steps
    return result


def _roundtrip(base_dir: str, gguf: str, out: str) -> dict[str, Any]:
    from trainers import export

    trainer = _mlx_trainer(base_dir, HParams(rank=8, alpha=16.0))
    _randomise(trainer, std=0.05, seed=0)  # deltas well above llama.cpp's noise floor (test_export)
    tensors = trainer.lora_tensors()
    path = Path(out) / "mlx.gguf"
    export.write_gguf_adapter(path, tensors, alpha=trainer.lora_alpha(), n_head=trainer.config["num_attention_heads"],
                              n_head_kv=trainer.config["num_key_value_heads"], metadata={"rlhi.adapter_version": "1"})
    texts = [trainer.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                   add_generation_prompt=True) + a
             for q, a in [("What is the capital of France?", "The capital of France is Paris."),
                          ("Say hi.", "Hello! How can I help you today?")]]
    return {"correlation": trainer.roundtrip_check(Path(gguf), path, texts, n_threads=1),
            "alpha": export.read_gguf_adapter_metadata(path)["adapter.lora.alpha"],
            "modules": sorted({kind for _, kind in tensors}), "layers": len({layer for layer, _ in tensors}),
            "q_shapes": [tensors[(4, "q_proj")][0].shape, tensors[(4, "q_proj")][1].shape]}


def _reference(base_dir: str, peft_dir: str, other_dir: str, examples: list[Example]) -> dict[str, Any]:
    """Log-probs and the DPO loss of a random adapter on three modules (saved as peft, for torch),
    then switched for `other_dir` (all seven modules, B = 0) and back; and base logits."""
    import mlx.core as mx

    from trainers.mlx_dpo import dpo_loss
    from trainers.torch_dpo import encode

    trainer = _mlx_trainer(base_dir, dataclasses.replace(TINY, targets=("q_proj", "v_proj", "down_proj")))
    _randomise(trainer, std=0.03, seed=1)
    trainer.save(Path(peft_dir))
    chosen = [encode(trainer.tokenizer, e.messages, e.chosen, TINY.max_len) for e in examples]
    rejected = [encode(trainer.tokenizer, e.messages, e.rejected, TINY.max_len) for e in examples]
    logps = {"policy_chosen": trainer.logps(chosen), "policy_rejected": trainer.logps(rejected),
             "ref_chosen": trainer.logps(chosen, adapter=False), "ref_rejected": trainer.logps(rejected, adapter=False)}
    nll = []
    for e in chosen:
        value = trainer._logps(e)[1]
        mx.eval(value)
        nll.append(value.item())
    loss, metrics = dpo_loss(*(mx.array(logps[k]) for k in ("policy_chosen", "policy_rejected", "ref_chosen",
                                                            "ref_rejected")), mx.array(nll), TINY.beta, TINY.nll_weight)
    mx.eval(loss, metrics)
    with trainer.scaled(0.0):
        base_logits = trainer.logits(chosen[0].ids)
    wrapped_before = len(trainer.lora_modules())
    trainer.load_other(Path(other_dir))
    trainer.use("active")
    active = trainer.logps(chosen[:1])
    trainer.use("default")
    return {"ids": [e.ids for e in chosen + rejected], **logps, "nll": nll, "loss": loss.item(),
            "margins": metrics["rewards/margins"].item(), "base_logits": base_logits,
            "wrapped": [wrapped_before, len(trainer.lora_modules())], "active": active,
            "default_again": trainer.logps(chosen[:1])}


def _wrong_rope_logits(base_dir: str, ids: list[int]) -> np.ndarray:
    """Base logits as mlx-lm computes them when config.json lacks a top-level rope_theta."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(base_dir), model_config={"rope_theta": 10000.0})
    logits = model(mx.array([ids]))[0]
    mx.eval(logits)
    return np.array(logits)


# -- backend choice and the child's environment ---------------------------------------------------

def test_mlx_is_built_in_and_chosen_only_where_it_belongs(mlx_env: dict[str, str]) -> None:
    here = detect()
    assert here.mlx, "the mlx extra is installed (mlx and mlx-lm importable)"
    assert select_backend("mlx", here) == "mlx"  # no longer "not built into this version"
    assert select_backend("auto", Machine(cuda=False, apple_silicon=True, mlx=True)) == "mlx"
    assert select_backend("auto", Machine(cuda=True, apple_silicon=True, mlx=True)) == "cuda"
    assert select_backend("auto", Machine(cuda=False, apple_silicon=False, mlx=True)) == "cpu"  # Linux
    with pytest.raises(ValueError, match="mlx is not installed"):
        select_backend("mlx", Machine(cuda=False, apple_silicon=True, mlx=False))


PROBE = "import ctypes; f = ctypes.CDLL(None).openblas_get_config; f.restype = ctypes.c_char_p; print(f().decode())"


def test_child_env_preloads_openblas_for_mlx_on_linux_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for backend in ("auto", "cpu", "cuda"):
        assert child_env(backend, tmp_path) == {}
    if sys.platform != "linux":
        assert child_env("mlx", tmp_path) == {}
        return
    env = require_mlx(tmp_path)
    assert env["LD_PRELOAD"].split(":")[0].endswith("libopenblas.so.0")
    # libgfortran.so.5, which that OpenBLAS needs, is mlx-cpu's own copy under its plain name.
    link = tmp_path / "blas" / "libgfortran.so.5"
    assert link.is_symlink() and Path(os.readlink(link)).parent.name == "mlx_cpu.libs"
    assert env["LD_LIBRARY_PATH"].split(":")[0] == str(link.parent)
    # A process started with it has OpenBLAS loaded (and starts at all: a preload whose
    # libgfortran could not be found would stop it before Python runs).
    probe = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode == 0 and probe.stdout.startswith("OpenBLAS"), probe.stderr
    monkeypatch.setenv("LD_PRELOAD", "/x/libother.so")
    assert child_env("mlx", tmp_path)["LD_PRELOAD"].endswith(":/x/libother.so")  # kept, after ours
    monkeypatch.setattr("platform.system", lambda: "Darwin")  # macOS uses Accelerate: nothing to add
    assert child_env("mlx", tmp_path) == {}


# -- training, export, and agreement with torch ---------------------------------------------------

def test_steps_move_the_lora_weights_only_and_learn_the_preference(worker: Any, base_dir: Path) -> None:
    r = in_worker(worker, _train_steps, str(base_dir))
    assert r["trainable"] == ["lora_a", "lora_b"], "only LoRA weights may train"
    assert r["base_params"] > 200 and r["changed_base"] == [], "the base weights must stay frozen"
    assert r["lora_b"] == 30 * len(ALL_TARGETS) and r["changed_lora_b"] == r["lora_b"]
    events = r["events"]
    assert [e["step"] for e in events] == [1, 2] and all(e["total"] == 2 for e in events)
    assert {"loss", "rewards/accuracies", "rewards/margins", "eta_s", "epoch", "elapsed_s"} <= set(events[-1])
    assert r["metrics"]["steps"] == 2 and r["metrics"]["loss"] == events[-1]["loss"]
    assert r["heldout"]["rewards/margins"] > 0 and r["heldout"]["rewards/accuracies"] == 1.0  # an unseen prompt
    assert 0 < r["drift"]["kl"] < 1.0 and r["drift"]["ppl_ratio"] > 0
    assert r["cancelled_after"] == [1], "cancel stops between steps"


def test_exported_adapter_matches_mlx_in_llama_cpp(worker: Any, base_dir: Path, tmp_path: Path) -> None:
    r = in_worker(worker, _roundtrip, str(base_dir), str(base_gguf()), str(tmp_path))
    print(f"MLX -> GGUF round-trip correlation {r['correlation']:.4f}")
    assert r["correlation"] >= 0.95, "llama.cpp must apply the adapter as MLX does"
    assert r["alpha"] == 16.0  # mlx-lm's scale (alpha / r = 2) times r
    assert r["modules"] == sorted(ALL_TARGETS) and r["layers"] == 30
    assert [list(s) for s in r["q_shapes"]] == [[8, 576], [576, 8]]  # peft layout: A [r, in], B [out, r]


def test_torch_and_mlx_agree_on_log_probs_loss_and_base_logits(worker: Any, torch_trainer: Any, base_dir: Path,
                                                               tmp_path: Path) -> None:
    import torch

    from trainers.torch_dpo import dpo_loss, encode

    examples = pairs(3)
    torch_trainer.save(tmp_path / "zero")  # all seven modules, B = 0
    m = in_worker(worker, _reference, str(base_dir), str(tmp_path / "peft"), str(tmp_path / "zero"), examples)
    tok = torch_trainer.tokenizer
    chosen = [encode(tok, e.messages, e.chosen, TINY.max_len) for e in examples]
    rejected = [encode(tok, e.messages, e.rejected, TINY.max_len) for e in examples]
    assert m["ids"] == [e.ids for e in chosen + rejected], "both backends train on the same tokens"

    # The adapter MLX saved, loaded by torch as the active one (as a later torch run would).
    torch_trainer.load_other(tmp_path / "peft")
    torch_trainer.use("active")
    try:
        t = {"policy_chosen": torch_trainer.logps(chosen), "policy_rejected": torch_trainer.logps(rejected),
             "ref_chosen": torch_trainer.logps(chosen, adapter=False),
             "ref_rejected": torch_trainer.logps(rejected, adapter=False)}
        with torch.no_grad():
            nll = torch.cat([torch_trainer._logps([e])[1] for e in chosen])
    finally:
        torch_trainer.use("default")
        torch_trainer.model.delete_adapter("active")
    for key, values in t.items():
        print(f"{key}: max relative difference {np.max(np.abs(np.subtract(m[key], values) / values)):.1e}")
        np.testing.assert_allclose(m[key], values, rtol=1e-4, err_msg=key)
    assert not np.allclose(m["policy_chosen"], m["ref_chosen"], rtol=1e-3), "the adapter is not a no-op"
    # Another adapter with more modules: wrapped on load, served, and switched back exactly.
    assert m["wrapped"] == [30 * 3, 30 * 7]
    assert m["active"] == m["ref_chosen"][:1] and m["default_again"] == m["policy_chosen"][:1]
    loss, metrics = dpo_loss(*(torch.tensor(t[k]) for k in ("policy_chosen", "policy_rejected", "ref_chosen",
                                                            "ref_rejected")), nll, TINY.beta, TINY.nll_weight)
    print(f"DPO loss: torch {loss.item():.6f}, MLX {m['loss']:.6f}; margins {metrics['rewards/margins']:.6f} "
          f"vs {m['margins']:.6f}")
    # float32 in both, summed in different orders through 30 layers: log-probs differ by ~3e-5
    # relative (measured), which the NLL term carries into the loss.
    assert m["loss"] == pytest.approx(loss.item(), rel=1e-4)
    assert m["margins"] == pytest.approx(metrics["rewards/margins"], abs=1e-4)

    # Base logits: the cached conversion read by mlx-lm is the network torch runs.
    with torch.no_grad(), torch_trainer.model.disable_adapter():
        base = torch_trainer.model(input_ids=torch.tensor([chosen[0].ids])).logits[0].numpy()
    gap = float(np.abs(m["base_logits"] - base).max())
    wrong = float(np.abs(in_worker(worker, _wrong_rope_logits, str(base_dir), chosen[0].ids) - base).max())
    print(f"base logits, max |MLX - torch|: {gap:.2e}; with mlx-lm's default rope_theta: {wrong:.2f}")
    assert gap < 1e-2, "MLX must run the same base as torch"
    assert wrong > 1.0, "a wrong RoPE base must show up in this comparison"


# -- the child process, end to end ----------------------------------------------------------------

def start_trainer(job: TrainJob, work: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    work.mkdir(parents=True)
    write_job(job, work / "job.json")
    return subprocess.Popen([sys.executable, "-m", "trainers", str(work / "job.json")], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                                 "PYTHONPATH": str(ROOT), **env})


def finish(proc: subprocess.Popen[str]) -> tuple[int, list[dict[str, Any]], str]:
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    return proc.returncode, [json.loads(line) for line in stdout.splitlines() if line.startswith("{")], stderr


def key_tree(value: Any) -> Any:
    return {k: key_tree(v) for k, v in value.items()} if isinstance(value, dict) else type(value).__name__


def test_python_m_trainers_with_mlx_writes_what_the_torch_backend_writes(mlx_env: dict[str, str], base_dir: Path,
                                                                         torch_trainer: Any, tmp_path: Path) -> None:
    fingerprint = json.loads((base_dir / "rlhi-base.json").read_text())["fingerprint"]
    torch_trainer.save(tmp_path / "active")  # an adapter served now, saved by torch, for the MLX run to compare

    def job(backend: str, active: str | None = None) -> TrainJob:
        return TrainJob(str(base_gguf()), fingerprint, str(shared_cache_dir()), str(tmp_path / backend / "out"), "2",
                        pairs(4), pairs(2, offset=100), regression(2), TINY, active_adapter=active,
                        backend=backend, threads=1)

    # Both at once, one thread each: the module stays within its time on two cores.
    torch_run = start_trainer(job("cpu"), tmp_path / "cpu", {})
    mlx_run = start_trainer(job("mlx", str(tmp_path / "active")), tmp_path / "mlx", mlx_env)
    code, events, log = finish(mlx_run)
    assert code == 0, log[-3000:]
    assert "without OpenBLAS" not in log
    torch_code, _, torch_log = finish(torch_run)
    assert torch_code == 0, torch_log[-3000:]

    assert [e["event"] for e in events if e["event"] != "progress"] == ["phase", "started", "phase", "phase", "done"]
    assert [e["phase"] for e in events if e["event"] == "phase"] == ["base", "export", "evaluate"]
    assert next(e for e in events if e["event"] == "started")["backend"] == "mlx"
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2]
    out = tmp_path / "mlx" / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    torch_metrics = json.loads((tmp_path / "cpu" / "out" / "metrics.json").read_text())
    torch_metrics["active"] = torch_metrics["candidate"]  # the torch run had no active adapter to compare
    assert key_tree(metrics) == key_tree(torch_metrics)
    assert metrics == events[-1]["metrics"] and metrics["backend"] == "mlx"
    print(f"export correlation: MLX {metrics['export_correlation']:.4f}, torch {torch_metrics['export_correlation']:.4f}"
          f"; seconds: MLX {metrics['seconds']:.1f}, torch {torch_metrics['seconds']:.1f}")
    assert metrics["export_correlation"] >= 0.95
    assert metrics["active"] == {"pairs": 2, "rewards/accuracies": 0.0, "rewards/margins": 0.0}  # B = 0: the base
    from trainers.export import read_gguf_adapter_metadata

    meta = read_gguf_adapter_metadata(out / "adapter.gguf")
    assert meta["adapter.lora.alpha"] == TINY.alpha and meta["rlhi.base_fingerprint"] == fingerprint
    assert sorted(p.name for p in (out / "peft").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
