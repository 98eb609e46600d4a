"""Settings and file locations: defaults < TOML file < RLHI_* environment < flags.

Every path comes from a function called at run time, never at import, so `RLHI_HOME` (used by the
tests) moves everything: config, data and the socket. Settings are frozen dataclasses; a bad value
fails at load with a message naming the key and the value. The precedence lives in `load_config`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, get_type_hints

from .errors import ConfigError

__all__ = [
    "Config",
    "DetectorConfig",
    "GenerationConfig",
    "LearningConfig",
    "ModelConfig",
    "RewardConfig",
    "ScheduleConfig",
    "ServerConfig",
    "TrainingConfig",
    "cache_dir",
    "config_path",
    "data_dir",
    "load_config",
    "runtime_dir",
    "socket_path",
]

APP_NAME = "rlhi"


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None
    """A local GGUF file to serve. Unset: the embedded SmolLM2-135M-Instruct (Q4_1)."""
    n_ctx: int = 4096
    """Context window in tokens; capped by what the model was trained for."""
    n_threads: int = 0
    """Threads for generation. 0: the number of physical cores."""
    n_batch: int = 512
    """Prompt tokens evaluated per batch."""
    flash_attn: bool = True
    """Flash attention in llama.cpp (measured +10% decode on the embedded model)."""


@dataclass(frozen=True)
class ServerConfig:
    socket: str | None = None
    """Unix socket path. Unset: `rlhi.sock` in the runtime dir."""
    tcp_port: int = 0
    """Also listen on loopback TCP at this port (0: off). Requires a bearer token."""
    tcp_host: str = "127.0.0.1"
    """TCP listen address; only loopback addresses are accepted."""
    token: str | None = None
    """Bearer token for TCP. Unset with TCP on: one is generated into the data dir."""
    max_queue: int = 16
    """Requests allowed to wait for the model; one more gets a 503."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted; a larger one gets a 413."""


@dataclass(frozen=True)
class GenerationConfig:
    max_tokens: int = 1024
    """Answer length when a request names none (always capped by the context left)."""
    temperature: float = 0.7
    top_p: float = 0.95
    system_prompt: str = ""
    """System prompt added when a request has none; later the persona fills this slot."""


@dataclass(frozen=True)
class LearningConfig:
    mining: bool = True
    """Label follow-ups, build pairs and refresh the persona in the background after answers.
    Off: learning is paused (nothing new is mined; chats are still stored)."""
    persona_in_prompt: bool = True
    """Put the active persona card into the system prompt (training uses the same card)."""
    rewrite_samples: int = 4
    """Rewrites sampled per guided_rewrite that needs one; the best that passes the filter wins."""
    rewrite_max_tokens: int = 256
    """Length cap of a generated rewrite (it runs only while the model is idle)."""
    mining_delay_s: float = 1.0
    """Wait this long after an answer before mining, so a burst of turns is mined once."""
    rewrite_idle_s: float = 30.0
    """Generate pending rewrites only after the user has sent nothing for this long: a rewrite
    uses the model, and one still running when a message arrives delays its first token."""


@dataclass(frozen=True)
class DetectorConfig:
    """Who labels follow-ups (DESIGN §4): the rules, or a capable model the user configured.

    The rules stay the default: on our labelled sets they beat the embedded 135M model by a wide
    margin (benchmarks/feedback_detector.py --model), in microseconds a line instead of seconds.
    A model's label is kept only at `min_confidence` or above; below it, or when its output is
    unusable, the rules' label stands, and every stored label says which detector produced it."""

    model: str = ""
    """"" (the rules only), "served" (the daemon's own model, as a background job that any chat
    preempts) or the path of a GGUF file (loaded on first use in the mining thread, one thread)."""
    min_confidence: float = 0.5
    """The model's label replaces the rules' only at this confidence (its own 0-1 estimate) or
    above. Above 1: the model runs but its labels are never used (for evaluation)."""
    max_tokens: int = 96
    """Length cap of the model's JSON verdict (about 40 tokens without an instruction)."""


@dataclass(frozen=True)
class TrainingConfig:
    """LoRA + DPO training and the promotion gate. Defaults are what DESIGN §7 measured to
    learn on the embedded 135M model without degenerating."""

    backend: str = "auto"
    """auto (CUDA > Apple MLX > CPU), cuda, mlx or cpu."""
    threads: int = 0
    """CPU threads for training. 0: the physical cores."""
    memory_mb: int = 4096
    """The training process is stopped if its memory passes this (serving keeps its own)."""
    nice: int = 10
    """Niceness of the trainer process (0-19): above 0 the chat keeps the cores it needs. On a
    machine busy with other work a high value can starve the trainer; 0 runs it at normal priority."""
    min_pairs: int = 8
    """Ready pairs needed before a run starts."""
    heldout_fraction: float = 0.2
    """Share of pairs kept out of training for the gate (at least 2 when there are enough)."""
    rank: int = 16
    alpha: float = 32.0
    targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    """Modules that get LoRA weights (Hugging Face names, comma-separated)."""
    beta: float = 0.1
    """DPO temperature."""
    nll_weight: float = 1.0
    """Weight of the NLL term on the chosen answer: plain DPO degenerates a small model."""
    lr: float = 1e-4
    epochs: int = 2
    batch_size: int = 4
    max_len: int = 512
    """Tokens per training sequence (the prompt loses its oldest tokens first)."""
    min_accuracy: float = 0.55
    """Gate: share of held-out pairs the candidate must prefer correctly (vs the base)."""
    max_kl: float = 0.3
    """Gate: mean per-token KL from the base on the neutral regression set (nats)."""
    max_ppl_ratio: float = 1.5
    """Gate: perplexity of the regression answers under the candidate / under the base."""
    min_export_correlation: float = 0.95
    """Gate: llama.cpp + exported adapter must move the logits as torch + adapter does."""
    max_reward_drop: float = 0.5
    """Gate (with a trusted reward model): the candidate's answers may score at most this much
    below the served adapter's answers, in units of the reward model's own held-out margin (its
    mean chosen - rejected gap on the user's held-out pairs): 0.5 = half the gap between what
    the user prefers and what they reject. A scale of the model's own, not raw logits, because
    two users' reward models score on different scales. A candidate is rejected only when it
    also loses on most prompts, so one outlier answer does not decide."""
    cache_dir: str | None = None
    """Where converted base weights are cached. Unset: `cache/` in the data dir."""


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning schedule (`rlhi_local.scheduler`): what runs by itself, and when. An
    interval of 0 turns that job off; `enabled = false` turns them all off."""

    enabled: bool = True
    """Run the learning jobs inside the daemon. Off: learning runs only when asked (`rlhi train`)."""
    detector_minutes: float = 10.0
    """Label the follow-up backlog (e.g. after an import) and build pairs."""
    persona_minutes: float = 60.0
    """Refresh each user's persona from the history."""
    reward_minutes: float = 60.0
    """Retrain each user's reward model when they have new pairs, and filter pairs with it."""
    sampling_minutes: float = 30.0
    """User-Based Rewards: sample answers for turns without feedback (only while the user is away)."""
    training_minutes: float = 15.0
    """How often to check whether a training run is worthwhile (the checks below)."""
    train_min_new_pairs: int = 8
    """Ready pairs added since the user's last run needed to start another."""
    train_idle_minutes: float = 20.0
    """The user must have sent nothing for this long before training starts."""
    training_window: str = "01:00-06:00"
    """Local hours when scheduled training may start, "HH:MM-HH:MM" (may wrap midnight); "" = any time."""
    skip_on_battery: bool = True
    """Do not start training while the OS says the machine runs on battery."""
    misfire_grace_minutes: float = 30.0
    """A run missed while the daemon was down still runs (once) if it is at most this late."""
    sampling_k: int = 4
    """Answers sampled per turn for User-Based Rewards (best vs worst becomes a pair)."""
    sampling_margin: float = 1.0
    """Reward gap (best - worst, in the reward model's logit units) needed to keep a sampled pair."""
    sampling_turns: int = 4
    """Turns sampled per user per run."""
    sampling_days: float = 7.0
    """Only turns from the last this many days are sampled."""
    sampling_max_tokens: int = 256
    """Length cap of a sampled answer."""


@dataclass(frozen=True)
class RewardConfig:
    """The persona-conditioned reward model (`rlhi_local.reward`): when a user gets their own,
    when it is trusted, and how it filters pairs."""

    min_pairs: int = 8
    """Ready pairs (all origins) a user needs before their own reward model is trained; below
    this the shipped prior is what they have."""
    min_accuracy: float = 0.6
    """A version is trusted (for sampling and for filtering pairs) only if it ranks at least this
    share of the user's held-out pairs correctly."""
    min_heldout: int = 4
    """...and only if it was measured on at least this many held-out pairs (the split is the
    gate's, `training.heldout_fraction`, so the reward model never trains on the gate's pairs)."""
    trust_prior: bool = False
    """Trust the shipped prior for a user who has no trusted version of their own. Off: the prior
    was fitted to synthetic users only, and DESIGN §4 uses sources 1-2 until one is validated."""
    filter_margin: float = 1.0
    """A guided_rewrite or thumbs pair is dropped (`reward_disagrees`) when the model scores its
    rejected side above its chosen side by more than this (logits: 1.0 is 73% against)."""
    l2: float = 0.05
    """Pull of a user's weights toward the version they start from (the active one, else the
    prior): higher trusts the start more, lower follows the user's own pairs more."""
    max_iter: int = 100
    """L-BFGS iterations per fit at most (the loss is convex; it usually stops earlier)."""
    threads: int = 1
    """CPU threads for the sentence encoder and the fit (the chat keeps the other cores)."""
    cache_size: int = 4096
    """Texts whose embeddings are kept in memory (persona lines and prompts repeat)."""
    gate_prompts: int = 6
    """Prompts the gate's reward check answers with both the candidate and the served adapter:
    the held-out pairs' prompts first, then the user's recent prompts that no pair trains on."""
    gate_max_tokens: int = 384
    """Answer length limit in the gate's reward check. Whole answers: a cut-off answer is scored
    as a different, worse kind of answer, and cuts hit long answers only."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


def _home() -> Path | None:
    value = os.environ.get("RLHI_HOME")
    return Path(value).expanduser() if value else None


def config_path() -> Path:
    """The TOML settings file (it need not exist)."""
    home = _home()
    if home is not None:
        return home / "config.toml"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def data_dir() -> Path:
    """Where the database, logs and caches live (mode 0700 once the daemon has started)."""
    home = _home()
    if home is not None:
        return home / "data"
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


def cache_dir(config: Config) -> Path:
    """Converted base weights and other rebuildable files."""
    if config.training.cache_dir:
        return Path(config.training.cache_dir).expanduser()
    return data_dir() / "cache"


def runtime_dir() -> Path:
    """Where the socket and pid file live: the user's runtime dir, else the data dir."""
    home = _home()
    if home is not None:
        return home / "run"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / APP_NAME
    return data_dir() / "run"


def socket_path(config: Config) -> Path:
    """The daemon's Unix socket."""
    if config.server.socket:
        return Path(config.server.socket).expanduser()
    return runtime_dir() / "rlhi.sock"


_SECTIONS = [f.name for f in dataclasses.fields(Config)]


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Turn a TOML or environment value into the field's type, or fail naming key and value."""
    optional = annotation.endswith("| None")
    base = annotation.replace("| None", "").strip()
    if value is None or (optional and isinstance(value, str) and value == ""):
        if optional:
            return None
        raise ConfigError(f"Config '{key}' must be set; it has no value.")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"Config '{key}' has an unsupported type {annotation}.")
    raise ConfigError(f"Config '{key}' has value {value!r}. Not a valid {base}.")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """`RLHI_SECTION__KEY=value` → {section: {key: value}} (`__` nests, like posting)."""
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith("RLHI_") or "__" not in name:
            continue
        section, _, key = name[len("RLHI_") :].lower().partition("__")
        out.setdefault(section, {})[key] = value
    return out


def _merge(layers: list[Mapping[str, Any]]) -> Config:
    sections: dict[str, Any] = {}
    for section_name in _SECTIONS:
        cls = get_type_hints(Config)[section_name]
        hints = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for layer in layers:
            for key, value in (layer.get(section_name) or {}).items():
                if key not in hints:
                    raise ConfigError(
                        f"Config '{section_name}.{key}' is not a known setting. "
                        f"Known: {', '.join(sorted(hints))}."
                    )
                values[key] = _coerce(f"{section_name}.{key}", value, hints[key])
        sections[section_name] = cls(**values)
    for layer in layers:
        for section_name in layer:
            if section_name not in _SECTIONS:
                raise ConfigError(
                    f"Config section '{section_name}' is unknown. Known: {', '.join(_SECTIONS)}."
                )
    config = Config(**sections)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    m, s, g, lc, t = config.model, config.server, config.generation, config.learning, config.training
    checks = [
        (t.backend in {"auto", "cuda", "mlx", "cpu"}, "training.backend", t.backend, "auto, cuda, mlx or cpu"),
        (t.threads >= 0, "training.threads", t.threads, "0 (auto) or more"),
        (t.memory_mb >= 256, "training.memory_mb", t.memory_mb, "at least 256"),
        (0 <= t.nice <= 19, "training.nice", t.nice, "from 0 to 19"),
        (t.min_pairs >= 2, "training.min_pairs", t.min_pairs, "at least 2"),
        (0 <= t.heldout_fraction < 1, "training.heldout_fraction", t.heldout_fraction, "from 0 to below 1"),
        (t.rank >= 1, "training.rank", t.rank, "at least 1"),
        (t.alpha > 0, "training.alpha", t.alpha, "above 0"),
        (bool(t.targets.strip()), "training.targets", t.targets, "a comma-separated list of module names"),
        (t.beta > 0, "training.beta", t.beta, "above 0"),
        (t.nll_weight >= 0, "training.nll_weight", t.nll_weight, "0 or more"),
        (0 < t.lr < 1, "training.lr", t.lr, "between 0 and 1"),
        (t.epochs >= 1, "training.epochs", t.epochs, "at least 1"),
        (t.batch_size >= 1, "training.batch_size", t.batch_size, "at least 1"),
        (t.max_len >= 32, "training.max_len", t.max_len, "at least 32"),
        (0 <= t.min_accuracy <= 1, "training.min_accuracy", t.min_accuracy, "between 0 and 1"),
        (t.max_kl > 0, "training.max_kl", t.max_kl, "above 0"),
        (t.max_ppl_ratio >= 1, "training.max_ppl_ratio", t.max_ppl_ratio, "at least 1"),
        (0 <= t.min_export_correlation <= 1, "training.min_export_correlation", t.min_export_correlation,
         "between 0 and 1"),
        (t.max_reward_drop >= 0, "training.max_reward_drop", t.max_reward_drop, "0 or more"),
        (lc.rewrite_samples >= 1, "learning.rewrite_samples", lc.rewrite_samples, "at least 1"),
        (lc.rewrite_max_tokens >= 8, "learning.rewrite_max_tokens", lc.rewrite_max_tokens, "at least 8"),
        (lc.mining_delay_s >= 0, "learning.mining_delay_s", lc.mining_delay_s, "0 or more"),
        (lc.rewrite_idle_s >= 0, "learning.rewrite_idle_s", lc.rewrite_idle_s, "0 or more"),
        (m.n_ctx >= 256, "model.n_ctx", m.n_ctx, "at least 256"),
        (m.n_threads >= 0, "model.n_threads", m.n_threads, "0 (auto) or more"),
        (m.n_batch >= 1, "model.n_batch", m.n_batch, "at least 1"),
        (0 <= s.tcp_port <= 65535, "server.tcp_port", s.tcp_port, "0 (off) to 65535"),
        (s.max_queue >= 1, "server.max_queue", s.max_queue, "at least 1"),
        (s.max_body_bytes >= 1024, "server.max_body_bytes", s.max_body_bytes, "at least 1024"),
        (g.max_tokens >= 1, "generation.max_tokens", g.max_tokens, "at least 1"),
        (0 <= g.temperature <= 2, "generation.temperature", g.temperature, "between 0 and 2"),
        (0 < g.top_p <= 1, "generation.top_p", g.top_p, "above 0 and at most 1"),
    ]
    sc = config.schedule
    for name in ("detector", "persona", "reward", "sampling", "training"):
        minutes = getattr(sc, f"{name}_minutes")
        checks.append((minutes >= 0, f"schedule.{name}_minutes", minutes, "0 (off) or more"))
    checks += [
        (sc.train_min_new_pairs >= 1, "schedule.train_min_new_pairs", sc.train_min_new_pairs, "at least 1"),
        (sc.train_idle_minutes >= 0, "schedule.train_idle_minutes", sc.train_idle_minutes, "0 or more"),
        (_valid_window(sc.training_window), "schedule.training_window", sc.training_window,
         'empty (any time) or "HH:MM-HH:MM", e.g. "01:00-06:00"'),
        (sc.misfire_grace_minutes > 0, "schedule.misfire_grace_minutes", sc.misfire_grace_minutes, "above 0"),
        (sc.sampling_k >= 2, "schedule.sampling_k", sc.sampling_k, "at least 2 (best and worst of K)"),
        (sc.sampling_margin >= 0, "schedule.sampling_margin", sc.sampling_margin, "0 or more"),
        (sc.sampling_turns >= 1, "schedule.sampling_turns", sc.sampling_turns, "at least 1"),
        (sc.sampling_days > 0, "schedule.sampling_days", sc.sampling_days, "above 0"),
        (sc.sampling_max_tokens >= 8, "schedule.sampling_max_tokens", sc.sampling_max_tokens, "at least 8"),
    ]
    for ok, key, value, rule in checks + _reward_checks(config.reward) + _detector_checks(config.detector):
        if not ok:
            raise ConfigError(f"Config '{key}' has value {value!r}. It must be {rule}.")
    try:
        loopback = ipaddress.ip_address(s.tcp_host).is_loopback
    except ValueError:
        loopback = s.tcp_host == "localhost"
    if not loopback:
        raise ConfigError(
            f"Config 'server.tcp_host' has value {s.tcp_host!r}. Only loopback addresses "
            f"(127.0.0.1, ::1) are allowed: the daemon never listens on the network."
        )


def _valid_window(window: str) -> bool:
    if not window.strip():
        return True
    parts = window.split("-")
    if len(parts) != 2:
        return False
    for part in parts:
        hours, _, minutes = part.strip().partition(":")
        if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
            return False
    return True


def _detector_checks(d: DetectorConfig) -> list[tuple[bool, str, Any, str]]:
    # A path is checked for existence when the detector is built (daemon start, `rlhi signals
    # classify`), not here: every command loads the config, and most never use the detector.
    model = d.model.strip()
    return [
        (model in {"", "served"} or model.lower().endswith(".gguf"), "detector.model", d.model,
         '"" (the rules only), "served" (the daemon\'s own model) or the path of a .gguf file'),
        (d.min_confidence >= 0, "detector.min_confidence", d.min_confidence,
         "0 or more (above 1: the model's labels are never used)"),
        (16 <= d.max_tokens <= 1024, "detector.max_tokens", d.max_tokens, "from 16 to 1024"),
    ]


def _reward_checks(r: RewardConfig) -> list[tuple[bool, str, Any, str]]:
    return [
        (r.min_pairs >= 2, "reward.min_pairs", r.min_pairs, "at least 2"),
        (0 <= r.min_accuracy <= 1, "reward.min_accuracy", r.min_accuracy, "between 0 and 1"),
        (r.min_heldout >= 1, "reward.min_heldout", r.min_heldout, "at least 1"),
        (r.filter_margin >= 0, "reward.filter_margin", r.filter_margin, "0 or more"),
        (r.l2 >= 0, "reward.l2", r.l2, "0 or more"),
        (r.max_iter >= 1, "reward.max_iter", r.max_iter, "at least 1"),
        (r.threads >= 1, "reward.threads", r.threads, "at least 1"),
        (r.cache_size >= 0, "reward.cache_size", r.cache_size, "0 or more"),
        (r.gate_prompts >= 1, "reward.gate_prompts", r.gate_prompts, "at least 1"),
        (r.gate_max_tokens >= 16, "reward.gate_max_tokens", r.gate_max_tokens, "at least 16"),
    ]


def load_config(
    flags: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Config:
    """Build the settings: defaults < TOML file < `RLHI_SECTION__KEY` env vars < flags.

    Example: `load_config({"model": {"path": "/models/qwen.gguf"}})`.
    """
    path = path or config_path()
    file_layer: dict[str, Any] = {}
    if path.exists():
        try:
            file_layer = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"Config file {path} cannot be read: {exc}. Fix or remove it.") from exc
    env_layer = _env_overrides(os.environ if environ is None else environ)
    flag_layer = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in (flags or {}).items()}
    return _merge([file_layer, env_layer, flag_layer])
