"""Row dataclasses: what the store returns, and what every other layer passes around.

They mirror DESIGN.md §3 word for word (`origin`, `parent_id`, ...). They import nothing of ours,
so any layer may use them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "Adapter",
    "AdapterStatus",
    "Conversation",
    "Feedback",
    "FeedbackKind",
    "JobRun",
    "Message",
    "NewMessage",
    "Pair",
    "PairOrigin",
    "PairStatus",
    "Persona",
    "Origin",
    "RewardModelRow",
    "RewardModelStatus",
    "Role",
    "Status",
    "TrainRun",
    "TrainRunStatus",
    "User",
    "UserFeedbackKind",
]

Role = Literal["system", "user", "assistant"]
Origin = Literal["user", "model", "user_edit", "regenerate", "imported"]
"""How a message came to be. `imported`: an assistant turn a client sent that no model here wrote
and that is not an edit of a stored answer (for example history carried over from elsewhere)."""
Status = Literal["streaming", "complete", "incomplete"]
"""`streaming` while an answer is generated; `incomplete` when it was stopped (client gone,
daemon killed) before it finished."""


UserFeedbackKind = Literal["thumbs_up", "thumbs_down", "choice"]
FeedbackKind = str
"""A user action (`thumbs_up`, `thumbs_down`, `choice`) or a detector label (DESIGN §4 taxonomy)."""


@dataclass(frozen=True)
class User:
    id: str
    created_at: str


@dataclass(frozen=True)
class Message:
    id: str
    conversation_id: str
    parent_id: str | None
    role: Role
    content: str
    origin: Origin
    status: Status
    created_at: str
    model: str | None = None
    model_fingerprint: str | None = None
    adapter_version: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None
    feedback: tuple[str, ...] = ()
    """Kinds of the user's own feedback on this message (thumbs, choice)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["feedback"] = list(self.feedback)
        return out


@dataclass(frozen=True)
class Feedback:
    id: str
    user_id: str
    message_id: str
    followup_id: str | None
    kind: FeedbackKind
    source: Literal["user", "detector"]
    actionable: bool
    instruction: str
    confidence: float
    detector_version: str | None
    created_at: str


@dataclass(frozen=True)
class Conversation:
    id: str
    user_id: str
    title: str
    created_at: str
    updated_at: str
    message_count: int = 0
    messages: tuple[Message, ...] = field(default=())

    def to_dict(self, with_messages: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "messages"}
        if with_messages:
            out["messages"] = [m.to_dict() for m in self.messages]
        return out


@dataclass(frozen=True)
class NewMessage:
    """A turn as a client sent it, before the store has placed it in a conversation tree."""

    role: Role
    content: str


PairOrigin = Literal["user_edit", "choice", "guided_rewrite", "user_reward", "thumbs"]
PairStatus = Literal["ready", "pending", "dropped"]


@dataclass(frozen=True)
class Pair:
    """A preference pair: in the context `prompt`, `chosen` is preferred to `rejected`."""

    id: str
    user_id: str
    conversation_id: str
    prompt: tuple[dict[str, str], ...]
    persona_version: int | None
    chosen: str
    rejected: str
    chosen_message_id: str | None
    rejected_message_id: str
    feedback_id: str | None
    origin: PairOrigin
    instruction: str
    quality: float | None
    status: PairStatus
    reason: str
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["prompt"] = list(self.prompt)
        return out


@dataclass(frozen=True)
class Persona:
    """One version of a user's persona: the card that goes into the system prompt, and the
    structured facts it was rendered from (JSON, owned by `rlhi_local.persona`)."""

    id: str
    user_id: str
    version: int
    card: str
    facts: str
    source: Literal["mined", "user"]
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


AdapterStatus = Literal["candidate", "active", "rejected", "retired"]
TrainRunStatus = Literal["queued", "running", "done", "failed", "cancelled"]


@dataclass(frozen=True)
class Adapter:
    """One trained LoRA version of a user. `path` is its directory (adapter.gguf for llama.cpp,
    peft/ for the next gate); `metrics` and `pair_ids` are JSON; `reason` says why it was
    rejected or retired."""

    id: str
    user_id: str
    version: int
    base_fingerprint: str
    path: str
    pair_ids: str
    metrics: str
    status: AdapterStatus
    reason: str
    run_id: str | None
    created_at: str
    activated_at: str | None

    def to_dict(self) -> dict[str, Any]:
        import json

        out = asdict(self)
        out["pair_ids"] = json.loads(self.pair_ids)
        out["metrics"] = json.loads(self.metrics)
        return out


@dataclass(frozen=True)
class TrainRun:
    """One training job: its backend, progress (the latest event, JSON), metrics and outcome."""

    id: str
    user_id: str
    status: TrainRunStatus
    backend: str
    pairs: int
    adapter_version: int | None
    progress: str
    metrics: str
    error: str
    created_at: str
    started_at: str | None
    finished_at: str | None

    def to_dict(self) -> dict[str, Any]:
        import json

        out = asdict(self)
        out["progress"] = json.loads(self.progress or "{}")
        out["metrics"] = json.loads(self.metrics or "{}")
        return out


@dataclass(frozen=True)
class JobRun:
    """One run of a scheduled job: ok, skipped (with the reason), failed, missed or interrupted."""

    id: int
    job: str
    user_id: str | None
    status: str
    detail: str
    started_at: str
    finished_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RewardModelStatus = Literal["candidate", "active", "rejected", "retired"]


@dataclass(frozen=True)
class RewardModelRow:
    """One reward-model version of a user (DESIGN §3 `reward_models`). `path` is its .npz file;
    the accuracies are on the user's held-out pairs with and without the persona input (None
    when there were none); `trusted` says whether sampling and pair filtering may rely on it;
    `metrics` is JSON; `reason` says why it was rejected or retired."""

    id: str
    user_id: str
    version: int
    path: str
    accuracy: float | None
    accuracy_without_persona: float | None
    n_train: int
    n_heldout: int
    trusted: bool
    status: RewardModelStatus
    reason: str
    metrics: str
    created_at: str
    activated_at: str | None

    def to_dict(self) -> dict[str, Any]:
        import json

        out = asdict(self)
        out["metrics"] = json.loads(self.metrics or "{}")
        return out
