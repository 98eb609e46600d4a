"""Request and response shapes of the HTTP API (pydantic): the OpenAPI document is built from them.

Requests follow OpenAI's chat-completions schema; unknown fields are ignored, as OpenAI does, so
stock clients work. Booleans are strict (`"stream": 0` or `"yes"` is a 400, as at OpenAI), so a
request means what the OpenAPI document says. Every string a client sends must be valid Unicode (no lone surrogates), since
it is stored and tokenized.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

__all__ = [
    "JobRunOut",
    "JobStatusOut",
    "ScheduleOut",
    "ChatCompletion",
    "ChatCompletionRequest",
    "ChatMessage",
    "ConversationList",
    "ConversationOut",
    "Deleted",
    "EditRequest",
    "FeedbackOut",
    "FeedbackRequest",
    "ErrorBody",
    "Health",
    "MessageOut",
    "MiningOut",
    "ModelList",
    "PairList",
    "PersonaHistory",
    "PersonaIn",
    "PersonaOut",
    "RenameRequest",
    "TrainRequest",
    "TrainRunList",
    "TrainRunOut",
    "AdapterList",
    "AdapterOut",
    "ForgetOut",
    "ForgetRequest",
]

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
MAX_TEXT = 1_000_000


def _check_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text must be valid Unicode (it contains a lone surrogate)") from exc
    return value


def _documented(**limits: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """Writes limits that a validator enforces (with a clearer message than pydantic's) into the
    field's OpenAPI schema, per JSON type (`string=`, `array=`, `object=`), so that clients, and
    the fuzz test that generates requests from the document, know them too."""

    def extra(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", [schema]):
            branch.update(limits.get(str(branch.get("type")), {}))

    return extra


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT)

    _valid = field_validator("text")(_check_text)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = Field(
        default=None, json_schema_extra=_documented(string={"maxLength": MAX_TEXT}))
    name: str | None = Field(default=None, max_length=128)

    @field_validator("content")
    @classmethod
    def _content(cls, value: str | list[TextPart] | None) -> str | list[TextPart] | None:
        if isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise ValueError(f"content has {len(value)} characters; the limit is {MAX_TEXT}")
            _check_text(value)
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions request. rlhi-local reads the conversation id from the
    `x-rlhi-conversation` header or `metadata.conversation_id`, and the user from `user`."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=100_000)
    min_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = Field(default=None, json_schema_extra=_documented(
        string={"maxLength": 256}, array={"maxItems": 4, "items": {"type": "string", "maxLength": 256}}))
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    n: int | None = Field(default=None, ge=1, le=1, description="Only one choice is supported.")
    ignore_eos: StrictBool = Field(default=False, description="rlhi extension: generate max_tokens tokens.")
    user: str | None = Field(default=None, pattern=ID_PATTERN)
    metadata: dict[str, str] | None = Field(default=None, max_length=16, json_schema_extra=_documented(
        object={"propertyNames": {"maxLength": 64}, "additionalProperties": {"type": "string", "maxLength": 512}}))

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > 4:
            raise ValueError(f"stop has {len(items)} sequences; at most 4 are allowed")
        for item in items:
            if len(item) > 256:
                raise ValueError("each stop sequence must be at most 256 characters")
            _check_text(item)
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for k, v in (value or {}).items():
            if len(k) > 64 or len(v) > 512:
                raise ValueError("metadata keys are at most 64 and values 512 characters")
            _check_text(k)
            _check_text(v)
        return value


class FeedbackRequest(BaseModel):
    """A judgement of an answer by its user: thumbs, or the preferred one of several answers."""

    message_id: str = Field(pattern=ID_PATTERN)
    kind: Literal["thumbs_up", "thumbs_down", "choice"]
    user: str | None = Field(default=None, pattern=ID_PATTERN)


class FeedbackOut(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    message_id: str
    kind: str


class EditRequest(BaseModel):
    """The user's own rewrite of an answer; stored as a `user_edit` sibling of it."""

    content: str = Field(min_length=1, max_length=MAX_TEXT)
    user: str | None = Field(default=None, pattern=ID_PATTERN)

    _valid = field_validator("content")(_check_text)


class RenameRequest(BaseModel):
    title: str = Field(min_length=1, max_length=200)

    _valid = field_validator("title")(_check_text)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class AnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AnswerMessage
    finish_reason: str
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class StoredIds(BaseModel):
    """Where the daemon stored the turn (absent fields: nothing stored, e.g. off the record)."""

    conversation_id: str | None
    message_id: str | None
    parent_id: str | None
    new_message_ids: list[str]
    origin: str | None
    stored: bool
    persona_version: int | None = None
    """The persona version whose card was in the system prompt (None: no persona)."""
    adapter_version: int | None = None
    """The user's LoRA adapter version that answered (None: the base model)."""


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage
    rlhi: StoredIds


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class MessageOut(BaseModel):
    feedback: list[str] = Field(default_factory=list, description="The user's thumbs/choice on it")
    id: str
    conversation_id: str
    parent_id: str | None
    role: str
    content: str
    origin: str
    status: str
    created_at: str
    model: str | None = None
    model_fingerprint: str | None = None
    adapter_version: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None


class ConversationOut(BaseModel):
    id: str
    user_id: str
    title: str
    created_at: str
    updated_at: str
    message_count: int
    messages: list[MessageOut] | None = None


class ConversationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ConversationOut]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool


class MiningOut(BaseModel):
    labelled: int
    added: dict[str, int]
    dropped: dict[str, int]
    pending: int


class PairOut(BaseModel):
    id: str
    user_id: str
    conversation_id: str
    prompt: list[dict[str, str]]
    persona_version: int | None
    chosen: str
    rejected: str
    chosen_message_id: str | None
    rejected_message_id: str
    feedback_id: str | None
    origin: str
    instruction: str
    quality: float | None
    status: str
    reason: str
    created_at: str


class PairList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PairOut]


class FactIn(BaseModel):
    key: str | None = Field(default=None, max_length=300)
    # The pattern documents what persona.fact_from_user_text refuses: no text but spaces and dots.
    text: str = Field(min_length=1, max_length=300, json_schema_extra=_documented(string={"pattern": r"[^\s.]"}))
    deleted: StrictBool = False

    _valid = field_validator("text")(_check_text)


class PersonaIn(BaseModel):
    """The user's view of their persona: the full list of facts they want (see PUT /v1/persona)."""

    facts: list[FactIn] = Field(max_length=500)


class PersonaOut(BaseModel):
    user_id: str
    version: int
    card: str
    facts: list[dict[str, Any]]
    source: str | None
    created_at: str | None


class PersonaHistory(BaseModel):
    object: Literal["list"] = "list"
    data: list[PersonaOut]


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    pid: int
    uptime_s: float
    model: dict[str, Any]
    queue: dict[str, Any]
    learning: dict[str, Any]
    problems: list[dict[str, Any]] = Field(default_factory=list)
    """What cannot be served as it should (an unreadable adapter, a disk refusing writes): each
    with `kind`, `path` and a `message` naming the fix."""


class TrainRequest(BaseModel):
    """Start a training run. `now`: at once; otherwise when the user has been idle a while."""

    user: str | None = Field(default=None, pattern=ID_PATTERN)
    now: StrictBool = True


class TrainRunOut(BaseModel):
    id: str
    object: Literal["train_run"] = "train_run"
    user_id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    backend: str
    pairs: int
    adapter_version: int | None
    progress: dict[str, Any]
    """The latest event: step, total, loss, rewards/accuracies, eta_s (or the phase)."""
    metrics: dict[str, Any]
    error: str
    created_at: str
    started_at: str | None
    finished_at: str | None


class TrainRunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TrainRunOut]


class AdapterOut(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    user_id: str
    version: int
    base_fingerprint: str
    path: str
    pair_ids: list[str]
    metrics: dict[str, Any]
    status: Literal["candidate", "active", "rejected", "retired"]
    reason: str
    """Why it was rejected, retired or rolled back."""
    run_id: str | None
    created_at: str
    activated_at: str | None


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    active: int | None
    """The version that answers by default (None: the base model)."""
    data: list[AdapterOut]


class JobRunOut(BaseModel):
    """One run of a scheduled job, with what it did or why it was skipped."""

    id: int
    job: str
    user_id: str | None
    status: Literal["running", "ok", "skipped", "failed", "missed", "interrupted"]
    detail: str
    started_at: str
    finished_at: str | None


class JobStatusOut(BaseModel):
    name: Literal["detector", "persona", "reward", "sampling", "training"]
    interval_s: float
    """0: the job is off."""
    next_run: str | None
    running: bool
    progress: dict[str, Any] | None
    """The running job's progress (training: the run's latest event)."""
    last: JobRunOut | None


class ScheduleOut(BaseModel):
    object: Literal["schedule"] = "schedule"
    enabled: bool
    paused: bool
    """Learning as a whole is paused (learning.mining = false, or `rlhi pause`): every job skips."""
    paused_reason: str = ""
    """Which switch pauses it ("" when learning runs); `GET /v1/learning` says the same."""
    jobs: list[JobStatusOut]


class ForgetRequest(BaseModel):
    """What to forget, exactly one of: `conversation_id`; a date range (`since` and/or `until`,
    ISO 8601, local time unless a zone is given; a bare `until` date includes that day); or
    `everything: true`. Unknown fields are refused: a typo must not forget something else."""

    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(default=None, pattern=ID_PATTERN)
    conversation_id: str | None = Field(default=None, pattern=ID_PATTERN)
    since: str | None = Field(default=None, max_length=40)
    until: str | None = Field(default=None, max_length=40)
    everything: bool = False


class ForgetOut(BaseModel):
    """What was deleted and retired, what answers now, and the retraining queued."""

    object: Literal["forget"] = "forget"
    user: str
    selector: dict[str, Any]
    """The request's selector, with `since`/`until` as the UTC times compared."""
    deleted: dict[str, int]
    """Rows deleted per table; `personas_rewritten`: persona versions scrubbed of forgotten evidence."""
    pair_ids: list[str]
    persona_versions_changed: list[int]
    adapters_retired: list[int]
    reward_models_retired: list[int]
    active_adapter: int | None
    """The adapter that answers from now on (None: the base model)."""
    active_reward_model: int | None
    retraining: dict[str, Any]
    """{"queued", "run_id", "reason"}: a run on the pairs left, when the served adapter was retired."""
    files_deleted: int
    database_bytes: int
    wal_bytes: int
    """0 once the WAL was truncated (it holds old pages until then)."""
    cancelled_run: str | None
