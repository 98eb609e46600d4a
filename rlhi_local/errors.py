"""Every error rlhi-local raises on purpose, in one hierarchy.

Foreign errors (sqlite3, llama.cpp, OS) are translated where they enter our code, so callers only
ever catch these. Each message names the value, the limit and the fix.

    RlhiError
    ├── ConfigError            a setting has an impossible value
    ├── InvalidRequestError    a request is well-formed but cannot apply (e.g. a choice of one)
    ├── ModelError             the base model cannot be used
    │   ├── ModelNotFoundError     the GGUF file (or the embedded wheel) is missing
    │   └── ModelCorruptError      the file is not a loadable GGUF
    ├── EngineError            llama.cpp failed while generating
    │   ├── ContextLengthError     the prompt does not fit in the context window
    │   └── AdapterError           a LoRA adapter file cannot be loaded onto the model
    ├── BusyError              the request queue is full; try again later
    ├── StoreError             the SQLite store cannot be read or written
    │   ├── NotFoundError          a conversation or message id is unknown (for this user)
    │   └── StoreUnwritableError   the data dir takes no writes now (read-only, I/O error)
    │       └── DiskFullError          no space left on the disk of the data dir
    ├── DaemonError            the daemon cannot start or be reached
    │   └── DaemonRunningError     another daemon already serves the socket
    ├── RewardModelError       a reward-model file (or its sentence encoder) cannot be used
    └── APIError               the daemon answered a client with an error
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AdapterError",
    "BusyError",
    "ConfigError",
    "ContextLengthError",
    "DaemonError",
    "DaemonRunningError",
    "DiskFullError",
    "EngineError",
    "InvalidRequestError",
    "ModelCorruptError",
    "ModelError",
    "ModelNotFoundError",
    "NotFoundError",
    "RewardModelError",
    "RlhiError",
    "StoreError",
    "StoreUnwritableError",
]


class RlhiError(Exception):
    """Base of every error rlhi-local raises on purpose."""


class ConfigError(RlhiError):
    """A configuration value is invalid; the message names the key and the value."""


class InvalidRequestError(RlhiError):
    """A well-formed request that cannot apply to the stored state."""


class ModelError(RlhiError):
    """The base model cannot be used."""


class ModelNotFoundError(ModelError):
    """The model file, or the package that embeds the default model, is missing."""


class ModelCorruptError(ModelError):
    """The model file exists but is not a GGUF that llama.cpp can load."""


class EngineError(RlhiError):
    """llama.cpp failed while tokenizing or generating."""


class ContextLengthError(EngineError):
    """The prompt is longer than the context window allows."""

    def __init__(self, prompt_tokens: int, n_ctx: int, at_least: bool = False) -> None:
        """`at_least`: `prompt_tokens` is a lower bound (a prompt refused before tokenizing)."""
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        count = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
        super().__init__(
            f"The prompt has {count} tokens but the context window holds {n_ctx} "
            f"(and at least one token must be left for the answer). Shorten the conversation "
            f"or start a new one, or raise model.n_ctx if the model supports more."
        )


class AdapterError(EngineError):
    """llama.cpp refused a LoRA adapter (missing, truncated, or made for another model).

    The engine stays on the adapter it had, so it keeps answering; the message names the file.
    """


class BusyError(RlhiError):
    """The request queue is full."""


class StoreError(RlhiError):
    """The SQLite store failed; the message names the database file."""


class NotFoundError(StoreError):
    """No such conversation or message for this user."""


class StoreUnwritableError(StoreError):
    """A write to the database failed because of where it lives (a read-only or failing disk):
    nothing of it was stored, what was stored before is intact, and reads still work. The
    message names the data dir and the fix; the write succeeds again once that is done."""


class DiskFullError(StoreUnwritableError):
    """The disk that holds the data dir is full (ENOSPC / SQLITE_FULL)."""


class DaemonError(RlhiError):
    """The daemon cannot start, or cannot be reached."""


class DaemonRunningError(DaemonError):
    """Another daemon already listens on the socket."""


class RewardModelError(RlhiError):
    """A reward-model file is corrupt, truncated or made for other features, or the sentence
    encoder is missing; the message names the file. The previous version (or the prior) stays in use."""


class APIError(RlhiError):
    """An error response from the daemon, as seen by a client."""

    def __init__(self, status_code: int, message: str, type: str = "", code: str | None = None) -> None:
        self.status_code = status_code
        self.message = message
        self.type = type
        self.code = code
        super().__init__(f"{status_code}: {message}")
