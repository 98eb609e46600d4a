"""Data flows one way (UI/API → store → signals → trainer → adapter → engine): imports prove it.

Each module of `rlhi_local` may import only the modules listed for it; heavy native libraries are
imported inside the functions that use them, so `rlhi --help` and the client stay light.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "rlhi_local"
BASE = {"errors", "config", "records"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "records": set(),
    "config": {"errors"},
    "models": {"config", "errors"},
    "store": BASE,
    "engine": BASE | {"models"},
    "api": BASE | {"models", "engine", "store", "mining", "persona", "privacy", "training", "scheduler",
                   "__init__"},
    "mining": BASE | {"engine", "store", "feedback", "persona"},
    "client": {"config", "errors"},
    "daemon": BASE | {"api", "engine", "mining", "models", "scheduler", "store", "training"},
    "training": BASE | {"models", "persona", "store"},
    "cli": BASE | {"client", "daemon", "importer", "learning_cli", "models", "privacy_cli", "signals_cli", "store",
                   "train_cli", "__init__"},
    "learning_cli": BASE | {"client", "daemon", "store"},
    "train_cli": {"client", "config", "errors"},
    "privacy": BASE | {"persona", "rewarding", "store", "training"},
    "privacy_cli": {"client", "config", "errors"},
    "importer": BASE | {"mining", "store"},
    "feedback": BASE | {"engine", "models"},
    "persona": BASE | {"feedback", "engine"},
    "reward": BASE | {"engine"},
    "rewarding": BASE | {"reward", "store", "training"},
    "signals_cli": {"feedback", "errors", "config"},
    "sampling": BASE | {"feedback", "store", "training"},
    "scheduler": BASE | {"engine", "feedback", "mining", "models", "reward", "rewarding", "sampling", "store",
                         "training"},
    "__main__": {"cli"},
    "__init__": set(),
}
HEAVY = {"llama_cpp", "torch", "peft", "mlx", "transformers", "uvicorn"}


def top_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def our_imports(path: Path) -> tuple[set[str], set[str]]:
    """(our top-level modules imported anywhere in the file, heavy libraries at module level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    depth = len(path.relative_to(PKG).parts) - 1  # how many dirs below rlhi_local
    ours: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            if node.level - 1 < depth:
                continue  # a sibling inside the same sub-package
            if node.module:
                ours.add(node.module.split(".")[0])
            else:  # `from . import x`: x is a module of ours, or a name from __init__
                ours.update(a.name if (PKG / f"{a.name}.py").exists() or (PKG / a.name).is_dir()
                            else "__init__" for a in node.names)
        elif (node.module or "").startswith("rlhi_local"):
            parts = (node.module or "").split(".")
            ours.add(parts[1] if len(parts) > 1 else "__init__")
    heavy: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            heavy.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            heavy.add((node.module or "").split(".")[0])
    return ours, heavy & HEAVY


MODULES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PKG)) for p in MODULES])
def test_imports_follow_the_layers(path: Path) -> None:
    top = top_of(path)
    assert top in ALLOWED, f"{top} is a new module: give it a place in ALLOWED"
    ours, heavy = our_imports(path)
    ours.discard(top)
    assert ours <= ALLOWED[top], f"{path.relative_to(PKG)} imports {sorted(ours - ALLOWED[top])}"
    assert not heavy, f"{path.relative_to(PKG)} imports {sorted(heavy)} at module level"


EXPORTS = {
    "rlhi_local.client": [
        "AsyncClient", "ChatChunk", "ChatResult", "Client", "default_socket", "ensure_daemon",
    ],
    "rlhi_local.errors": [
        "APIError", "AdapterError", "BusyError", "ConfigError", "ContextLengthError", "DaemonError",
        "DaemonRunningError", "DiskFullError", "EngineError", "InvalidRequestError", "ModelCorruptError",
        "ModelError", "ModelNotFoundError", "NotFoundError", "RewardModelError", "RlhiError", "StoreError",
        "StoreUnwritableError",
    ],
    "rlhi_local.config": [
        "Config", "DetectorConfig", "GenerationConfig", "LearningConfig", "ModelConfig", "RewardConfig", "ScheduleConfig",
        "ServerConfig", "TrainingConfig",
        "cache_dir", "config_path", "data_dir", "load_config", "runtime_dir", "socket_path",
    ],
    "rlhi_local.store": ["DetectorLabel", "FORGOTTEN", "Forgotten", "PersonaScrub", "PlacedTurn", "Store", "new_id", "path_hash"],
    "rlhi_local.privacy": ["EXPORT_VERSION", "ForgetReport", "export_lines", "forget", "parse_time", "scrub_persona"],
    "rlhi_local.engine": ["Engine", "Finish", "Job", "Piece", "RequestQueue", "SamplingParams", "physical_cores"],
    "rlhi_local.api": ["AppState", "create_app"],
    "rlhi_local.persona": [
        "Fact", "FactCategory", "FactSource", "delete_fact", "edit_fact", "estimate_tokens",
        "fact_from_user_text", "facts_from_json", "facts_to_json", "merge_facts", "mine_facts", "render_card",
        "user_edit_facts", "with_persona",
    ],
    "rlhi_local.records": [
        "Adapter", "AdapterStatus", "Conversation", "Feedback", "FeedbackKind", "JobRun", "Message", "NewMessage",
        "Origin",
        "Pair", "PairOrigin", "PairStatus", "Persona", "RewardModelRow", "RewardModelStatus", "Role", "Status",
        "TrainRun", "TrainRunStatus", "User", "UserFeedbackKind",
    ],
    "rlhi_local.scheduler": ["JOBS", "JobStatus", "RewardJobs", "Scheduler", "available_memory_mb", "in_window",
                             "on_battery"],
    "rlhi_local.sampling": ["SamplingReport", "sample_user_rewards"],
    "rlhi_local.training": [
        "Trainings", "activate", "adapter_file", "build_job", "gate", "rollback", "served_adapter", "split_pairs",
    ],
    "rlhi_local.reward": [
        "EMBEDDING_ID", "PRIOR_FILES", "STYLE_FEATURES", "Comparison", "Embedder", "Features", "Judged",
        "PairFeatures", "RewardModel", "blank", "evaluate", "featurize", "load_prior", "pair_features",
        "persona_lines", "style_features", "train",
    ],
    "rlhi_local.rewarding": [
        "FILTERED_ORIGINS", "filter_pairs", "refresh_reward_model", "reward_dir", "reward_model", "score_pairs",
    ],
    "trainers.job": [
        "Example", "HParams", "RegressionItem", "TrainJob", "event_line", "read_job", "regression_prompts",
        "write_job",
    ],
    "trainers.backend": ["BACKENDS", "Machine", "child_env", "detect", "select_backend"],
    "trainers.mlx_dpo": ["DPOTrainer", "dpo_loss", "set_threads"],
}


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_public_surface_is_pinned(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(EXPORTS[module])
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_errors_share_one_root() -> None:
    from rlhi_local import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.RlhiError)


TUI = PKG.parent / "tui"
TUI_MAY_IMPORT = {"rlhi_local.client", "rlhi_local.errors"}
TUI_MODULES = sorted(TUI.rglob("*.py"))


@pytest.mark.parametrize("path", TUI_MODULES, ids=[str(p.relative_to(TUI)) for p in TUI_MODULES])
def test_tui_talks_to_the_daemon_only_through_the_client(path: Path) -> None:
    """tui/ may use `rlhi_local.client` and `rlhi_local.errors`, and nothing else of ours."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            imported.add(node.module)
            if node.module == "rlhi_local":  # `from rlhi_local import x` names modules
                imported.update(f"rlhi_local.{a.name}" for a in node.names)
    ours = {m for m in imported if m.split(".")[0] in {"rlhi_local", "trainers", "tests"}}
    assert ours <= TUI_MAY_IMPORT, f"tui/{path.relative_to(TUI)} imports {sorted(ours - TUI_MAY_IMPORT)}"
