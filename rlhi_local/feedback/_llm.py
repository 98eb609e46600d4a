"""Ask a language model to label a follow-up: the prompt, the grammar that shapes its answer, the
parser, and the model file the detector may own.

The model sees the eight kinds of DESIGN §4, a few worked examples, and the follow-up with the
answer it replies to; it must answer with one JSON object {kind, actionable, instruction,
confidence}. llama.cpp's JSON-schema grammar masks every token that would leave that shape, so
the output always parses (unless cut off by `max_tokens`); what the schema cannot say (that
`actionable` follows from `kind`, that the confidence is a probability) is normalised here.
Nothing here decides whether the model's label is used: `feedback.classify_with_model` does.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Final, Mapping, Sequence

from ..config import ModelConfig
from ..engine import Engine, Finish, SamplingParams
from ..errors import ModelCorruptError, ModelError, ModelNotFoundError
from ..models import ModelSpec
from ._rules import ACTIONABLE, KINDS

__all__ = ["Generate", "LocalModel", "Verdict", "detector_messages", "parse_verdict", "verdict_grammar"]

log = logging.getLogger(__name__)

Generate = Callable[[list[dict[str, str]], str, int], "str | None"]
"""(chat messages, GBNF grammar, max_tokens) -> the model's text, or None when the model cannot
be used now (a chat wants it): the follow-up is then labelled later, not by the rules."""

MAX_INSTRUCTION: Final = 80
"""Characters; the grammar stops a longer instruction, so a rambling model still closes its JSON."""
LOCAL_N_CTX: Final = 2048
"""Context of a separately loaded detector model: the prompt below plus a truncated exchange."""
CHARS_PER_TOKEN: Final = 3.0
"""A low estimate (English runs ~4), so truncated text fits the context without tokenising it."""
PROMPT_TOKENS: Final = 450
"""The system prompt and the examples, with room to spare (measured ~310 on SmolLM2's tokenizer)."""

SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "kind": {"type": "string", "enum": list(KINDS)},
        "actionable": {"type": "boolean"},
        "instruction": {"type": "string", "maxLength": MAX_INSTRUCTION},
        "confidence": {"type": "number"},
    },
    "required": ["kind", "actionable", "instruction", "confidence"],
    "additionalProperties": False,
}

SYSTEM: Final = """Label the user's reply to the assistant's answer with one kind:
rewrite_request: change the answer in a stated way ("shorter", "as a list", "in French")
correction: it is wrong, and here is what is right (or a pasted error)
clarification: what the user meant ("I meant on Windows", "I'm a beginner")
complaint: it is wrong or bad, no fix given ("that's useless")
retry: the same request again or rephrased ("try again")
positive: approval or thanks
continuation: a new question that builds on the answer
new_request: a request about something else
Only the first three are actionable; their instruction says briefly how to change the answer.
Otherwise the instruction is "". Confidence is from 0 to 1."""

_EXAMPLES: Final[tuple[tuple[str, str, str, dict[str, Any]], ...]] = (
    # The grammar fixes the shape; the examples show the wording of an instruction, and that
    # most replies are not actionable. Short, because a served model reads them on every label.
    ("How do volcanoes form?", "Magma from the mantle rises through cracks in the crust until it erupts.",
     "too long, give me one sentence",
     {"kind": "rewrite_request", "actionable": True, "instruction": "shorter, one sentence", "confidence": 0.9}),
    ("What does a router do?", "A router forwards packets between networks.", "how is that different from a switch?",
     {"kind": "continuation", "actionable": False, "instruction": "", "confidence": 0.8}),
)


@dataclass(frozen=True)
class Verdict:
    """The model's label after normalisation."""

    kind: str
    actionable: bool
    instruction: str
    confidence: float


@functools.lru_cache(maxsize=1)
def verdict_grammar() -> str:
    """The GBNF grammar of `SCHEMA` (llama.cpp's JSON-schema converter; built once)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return str(json_schema_to_gbnf(json.dumps(SCHEMA)))


def _clip(text: str, limit: int, keep_end: bool = False) -> str:
    """`text` in at most `limit` characters: its start and end, which carry the request and the
    conclusion (or the error line of a paste), joined by an ellipsis."""
    text = (text or "").strip()
    if len(text) <= limit:
        return text
    if limit < 8:
        return text[:limit]
    head = limit // 3 if keep_end else (2 * limit) // 3
    return text[:head].rstrip() + " … " + text[-(limit - head - 3):].lstrip()


def _exchange(question: str, answer: str, reply: str) -> str:
    return f"Question: {question}\nAnswer: {answer}\nReply: {reply}"


def detector_messages(previous: str, followup: str, context: Sequence[Mapping[str, str]] = (), *,
                      n_ctx: int = LOCAL_N_CTX, max_tokens: int = 96) -> list[dict[str, str]]:
    """The chat messages that ask for one follow-up's label, sized to fit `n_ctx` tokens.

    The examples are chat turns of their own (small models copy a worked turn better than they
    follow a description). Long texts are cut to their start and end; raises nothing, but a
    context too small for the examples leaves the final check to the engine (`render`).
    """
    budget = max(60, int((n_ctx - max_tokens - PROMPT_TOKENS) * CHARS_PER_TOKEN))
    question = next((str(m.get("content") or "") for m in reversed(context) if m.get("role") == "user"), "")
    messages = [{"role": "system", "content": SYSTEM}]
    for q, a, r, label in _EXAMPLES:
        messages.append({"role": "user", "content": _exchange(q, a, r)})
        messages.append({"role": "assistant", "content": json.dumps(label)})
    messages.append({"role": "user", "content": _exchange(
        _clip(question, budget // 6), _clip(previous, budget // 2), _clip(followup, budget // 3, keep_end=True))})
    return messages


_SPACE = re.compile(r"\s+")


def parse_verdict(text: str) -> tuple[Verdict | None, str]:
    """(the normalised verdict, '') or (None, why the output is unusable).

    Normalises what the grammar cannot enforce: `actionable` follows the kind (the taxonomy
    defines it), the instruction is '' unless actionable, and the confidence is clamped to [0, 1].
    """
    try:
        obj = json.loads(text)
    except (TypeError, ValueError):
        return None, f"not JSON (cut off by max_tokens?): {text[:60]!r}"
    if not isinstance(obj, dict):
        return None, f"not a JSON object: {text[:60]!r}"
    kind = obj.get("kind")
    if kind not in KINDS:
        return None, f"unknown kind {kind!r}"
    confidence = obj.get("confidence")
    try:
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
            raise ValueError
        value = float(confidence)
        if math.isnan(value):
            raise ValueError
    except (ValueError, OverflowError):
        return None, f"confidence {str(confidence)[:20]!r} is not a number"
    actionable = kind in ACTIONABLE
    instruction = _SPACE.sub(" ", str(obj.get("instruction") or "")).strip()[:MAX_INSTRUCTION] if actionable else ""
    return Verdict(kind, actionable, instruction, round(min(1.0, max(0.0, value)), 3)), ""


class LocalModel:
    """A GGUF model the detector loads for itself (`detector.model = "/path/model.gguf"`).

    The file is checked when this is built (daemon start, the CLI) and loaded only on the first
    `generate`, with a small context and one thread, from whichever worker thread labels first:
    never on a request's path. Calls are serialised by a lock (mining and the scheduler may both
    label); greedy decoding, so the same input gives the same label.
    """

    def __init__(self, path: str | Path, n_ctx: int = LOCAL_N_CTX, n_threads: int = 1) -> None:
        """`n_threads` 0: one per physical core (a batch run); the daemon keeps the default 1."""
        self.path = Path(path).expanduser()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self._engine: Engine | None = None
        self._failed: ModelError | None = None
        """Why loading failed: kept, so a bad file costs one attempt, not one per follow-up."""
        self._lock = threading.Lock()
        fix = ('Point detector.model (or --model) at a GGUF file, set it to "served" for the daemon\'s own '
               'model, or to "" for the rules.')
        if not self.path.is_file():
            raise ModelNotFoundError(f"Detector model file {self.path} does not exist. {fix}")
        try:
            with self.path.open("rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise ModelNotFoundError(f"Detector model file {self.path} cannot be read: {exc}. {fix}") from exc
        if magic != b"GGUF":
            raise ModelCorruptError(
                f"Detector model file {self.path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'). {fix}")

    def load(self) -> Engine:
        """The loaded model, loading it now if needed (`generate` does this by itself; a batch
        caller may call it first to fail early). Raises `ModelCorruptError` naming the file."""
        with self._lock:
            return self._loaded()

    def _loaded(self) -> Engine:
        if self._engine is not None:
            return self._engine
        if self._failed is not None:
            raise self._failed
        name = self.path.name.removesuffix(".gguf")
        spec = ModelSpec(path=self.path, id=name, fingerprint="", embedded=False)
        try:
            self._engine = Engine(spec, ModelConfig(n_ctx=self.n_ctx, n_threads=self.n_threads))
        except ModelError as exc:
            self._failed = ModelCorruptError(
                f"The detector model {self.path} could not be loaded: {exc} Set detector.model to another "
                f'GGUF file, or to "" for the rules.')
            raise self._failed from exc
        self.n_ctx = self._engine.n_ctx
        return self._engine

    def generate(self, messages: list[dict[str, str]], grammar: str, max_tokens: int) -> str:
        """The model's greedy answer to `messages`, constrained by `grammar` (a `Generate`)."""
        with self._lock:
            engine = self._loaded()
            prompt = engine.render(messages)
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, grammar=grammar)
            text = ""
            for item in engine.generate(prompt, params):
                if isinstance(item, Finish):
                    text = item.text
            return text

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
