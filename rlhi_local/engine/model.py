"""The loaded base model: llama.cpp, the GGUF's own chat template, streaming and sampling.

One `Engine` owns one `llama_cpp.Llama`. It is not thread-safe: `RequestQueue` calls `generate`
from a single worker thread, one request at a time. The KV cache keeps the last prompt, so a
conversation that grows turn by turn re-evaluates only its new tokens; memory stays at one
context's worth whatever the number of conversations.

A LoRA adapter can be swapped in between requests (`set_adapter`); the KV cache is dropped on a
swap because it was computed under the old weights. To spare the next answer re-reading its whole
prompt (~4 ms a token on two cores), a prompt can be *warmed* first: evaluated under the new
adapter (or with a new persona) in a second context, a chunk at a time between requests, then
moved into the serving context in one copy (`warm_start`, `warm_step`, `warm_install`).
"""

from __future__ import annotations

import codecs
import logging
from contextlib import contextmanager
import os
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..config import ModelConfig
from ..errors import AdapterError, ContextLengthError, EngineError, ModelCorruptError
from ..models import ModelSpec, check_gguf

__all__ = ["Engine", "Finish", "Piece", "SamplingParams", "physical_cores"]

log = logging.getLogger(__name__)

# Used only when a GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MAX_LOADED_ADAPTERS = 4
"""Adapters kept loaded for quick swaps back; a LoRA of a small model is a few MB each."""


def physical_cores() -> int:
    """Physical cores (not hyper-threads): llama.cpp decodes fastest with one thread per core."""
    try:
        pairs = set()
        physical = core = None
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and core is not None:
                    pairs.add((physical, core))
                    physical = core = None
        if core is not None:
            pairs.add((physical, core))
        if pairs:
            return min(len(pairs), os.cpu_count() or len(pairs))
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    """Keep generating past end-of-generation tokens (benchmarks want a fixed length)."""
    grammar: str = ""
    """A GBNF grammar the answer must match ('' = free text): llama.cpp masks every token that
    would break it, so a JSON-schema grammar always yields parseable JSON (the detector's labels)."""


@dataclass
class Piece:
    """A chunk of answer text as it streams."""

    text: str


@dataclass
class Finish:
    """How an answer ended. `finish_reason`: stop | length | cancelled."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    text: str
    ttft_ms: float | None = None
    latency_ms: float = 0.0


def _want(adapter: Path | str | None, scale: float) -> tuple[Path, float] | None:
    """How an adapter choice is keyed: (resolved path, scale), None for the base model."""
    return None if adapter is None else (Path(adapter).resolve(), float(scale))


@dataclass(eq=False)
class _Warm:
    """A prompt being evaluated in a side context of the same model."""

    tokens: list[int]
    want: tuple[Path, float] | None
    ctx: Any
    batch: Any
    done: int = 0

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()


class Engine:
    """Owns the llama.cpp model and its context."""

    def __init__(self, spec: ModelSpec, config: ModelConfig) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        check_gguf(spec.path)
        self.spec = spec
        self.n_threads = config.n_threads or physical_cores()
        started = time.perf_counter()
        try:
            self._llm = self._load(llama_cpp, spec, config, config.n_ctx)
            n_ctx_train = int(self._llm._model.n_ctx_train())
            if 0 < n_ctx_train < config.n_ctx:
                # The model was trained on a shorter window: longer prompts would degrade.
                self._llm.close()
                self._llm = self._load(llama_cpp, spec, config, n_ctx_train)
            self.n_ctx = int(self._llm.n_ctx())
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelCorruptError(
                f"llama.cpp cannot load {spec.path}: {exc}. The file may be truncated or of an "
                f"unsupported architecture: download it again, or choose another model.path."
            ) from exc
        self._vocab = self._llm._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        metadata = self._llm.metadata
        eos_id = self._llm.token_eos()
        bos_id = self._llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE,
            eos_token=self._llm._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=self._llm._model.token_get_text(bos_id) if bos_id != -1 else "",
        )
        self._adapters: OrderedDict[Path, Any] = OrderedDict()
        """Loaded adapters by resolved path, least recently used first."""
        self._active: tuple[Path, float] | None = None
        """The adapter (path, scale) on the context, None for the base model."""
        self._longest_token: int | None = None
        """The vocabulary's longest token in bytes, once a long prompt needed it."""
        self._warm: _Warm | None = None
        """The prompt being warmed in a side context, if any."""
        self.load_seconds = time.perf_counter() - started
        log.info(
            "model loaded id=%s n_ctx=%d threads=%d flash_attn=%s in %.2fs",
            spec.id, self.n_ctx, self.n_threads, config.flash_attn, self.load_seconds,
        )

    def _load(self, llama_cpp: Any, spec: ModelSpec, config: ModelConfig, n_ctx: int) -> Any:
        return llama_cpp.Llama(
            str(spec.path),
            n_ctx=n_ctx,
            n_batch=min(config.n_batch, n_ctx),
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            flash_attn=config.flash_attn,
            verbose=False,
        )

    def close(self) -> None:
        import llama_cpp

        self.warm_cancel()
        if self._adapters:
            # Take them off the context before freeing them: it holds their pointers.
            llama_cpp.llama_set_adapters_lora(self._llm._ctx.ctx, None, 0, None)
            self._active = None
        while self._adapters:
            llama_cpp.llama_adapter_lora_free(self._adapters.popitem()[1])
        self._llm.close()

    # -- adapters ----------------------------------------------------------------------------

    @property
    def adapter(self) -> Path | None:
        """The active LoRA adapter (resolved path), or None for the base model."""
        return self._active[0] if self._active else None

    def set_adapter(self, path: Path | None, scale: float = 1.0) -> bool:
        """Answer with the LoRA adapter at `path` from now on (None: the base model).

        Returns whether the active adapter changed. A change drops the KV cache: llama.cpp would
        otherwise reuse the KV of a matching prompt prefix, computed under the old weights, and
        answer with a mix of both. Setting the same adapter again keeps the cache. Call it between
        requests, never during `generate`. An unloadable file raises `AdapterError` and leaves
        the engine as it was (same adapter, same cache).
        """
        want = _want(path, scale)
        if want == self._active:
            return False
        self._apply(want)
        self._llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        self._llm.reset()  # n_tokens = 0: the next prompt is evaluated from scratch
        return True

    def load_adapter(self, path: Path) -> None:
        """Check that llama.cpp can use the LoRA adapter at `path`, keeping it loaded for a quick
        swap; `AdapterError` (naming the file) if not. The context and its cache are untouched.
        Call it only where `set_adapter` may be called (between requests)."""
        self._load_adapter(Path(path).resolve())

    def _apply(self, want: tuple[Path, float] | None) -> None:
        """Put `want` on the context; the caller decides what happens to the KV cache."""
        self._put_lora(self._llm._ctx.ctx, want)
        self._active = want

    def _put_lora(self, ctx: Any, want: tuple[Path, float] | None) -> None:
        """Set the adapter `want` (None: none) on the llama.cpp context `ctx`."""
        import ctypes

        import llama_cpp

        if want is None:
            rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._load_adapter(want[0]))
            rc = llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(want[1]))
        if rc != 0:
            raise AdapterError(f"llama.cpp could not activate the adapter {want[0] if want else None}.")

    def _load_adapter(self, path: Path) -> Any:
        """The loaded adapter for `path`, loading it (and evicting an idle one) if needed."""
        import llama_cpp

        if path in self._adapters:
            self._adapters.move_to_end(path)
            return self._adapters[path]
        # llama.cpp returns NULL (a false pointer, not None) for any file it cannot use.
        adapter = llama_cpp.llama_adapter_lora_init(self._llm._model.model, str(path).encode())
        if not adapter:
            current = self._active[0] if self._active else "the base model"
            raise AdapterError(
                f"llama.cpp cannot load the LoRA adapter {path}: the file is missing, truncated, "
                f"or was trained for another model than {self.spec.id}. Still answering with "
                f"{current}. Roll back with `rlhi adapters rollback`, or train the adapter again."
            )
        warming = self._warm.want[0] if self._warm and self._warm.want else None
        # Oldest first; never the active one, nor one a side context is warming a prompt with.
        idle = [p for p in self._adapters if p not in (self.adapter, warming)]
        while idle and len(self._adapters) >= MAX_LOADED_ADAPTERS:
            llama_cpp.llama_adapter_lora_free(self._adapters.pop(idle.pop(0)))
        self._adapters[path] = adapter
        return adapter

    def forget(self, adapters: Sequence[Path]) -> int:
        """Drop what the engine holds of data its user asked to forget: the loaded LoRA adapters
        at `adapters` (the base answers if one of them was active) and the prompt's KV cache,
        which may hold a forgotten conversation. Returns how many adapters were freed. Call
        between requests (`RequestQueue.run_exclusive`)."""
        import llama_cpp

        gone = {Path(p).resolve() for p in adapters}
        self.warm_cancel()  # its KV may hold the forgotten conversation too
        if self._active is not None and self._active[0] in gone:
            self._apply(None)
        freed = [p for p in self._adapters if p in gone]
        for path in freed:
            llama_cpp.llama_adapter_lora_free(self._adapters.pop(path))
        self._llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        self._llm.reset()
        return len(freed)

    # -- warming a prompt in a side context --------------------------------------------------------

    @property
    def warming(self) -> tuple[Path | None, int] | None:
        """(adapter, tokens) of the prompt being warmed, or None."""
        w = self._warm
        return None if w is None else (w.want[0] if w.want else None, len(w.tokens))

    def warm_start(self, tokens: Sequence[int], adapter: Path | None, scale: float = 1.0) -> None:
        """Begin evaluating `tokens` under `adapter` in a side context (a previous warm-up is
        dropped). Nothing is evaluated yet and the serving context is untouched; `AdapterError`
        if the adapter cannot be loaded. Call between requests."""
        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext

        self.warm_cancel()
        tokens = list(tokens)[: self.n_ctx - 1]
        if not tokens:
            return
        want = _want(adapter, scale)
        if want is not None:
            self._load_adapter(want[0])  # AdapterError before any context is made
        params = llama_cpp.llama_context_params.from_buffer_copy(self._llm.context_params)
        # Same cell layout as the serving context (KV types, flash attention), so the sequence's
        # state can be copied across; only as many cells as the prompt needs.
        params.n_ctx = min(self.n_ctx, -(-(len(tokens) + 1) // 256) * 256)
        params.n_batch = params.n_ubatch = min(int(params.n_batch), params.n_ctx)
        ctx = LlamaContext(model=self._llm._model, params=params, verbose=False)
        if want is not None:
            try:
                self._put_lora(ctx.ctx, want)
            except AdapterError:
                ctx.close()
                raise
        batch = LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._warm = _Warm(tokens, want, ctx, batch)

    def warm_step(self, max_tokens: int = 32) -> bool:
        """Evaluate up to `max_tokens` more of the warming prompt; True once all of it is done
        (or nothing is warming). Short steps keep a request waiting behind one step short."""
        w = self._warm
        if w is None:
            return True
        end = min(len(w.tokens), w.done + max_tokens, w.done + w.batch._n_tokens)
        if w.done < end:
            w.batch.set_batch(w.tokens[w.done:end], n_past=w.done, logits_all=False)
            try:
                w.ctx.decode(w.batch)
            except RuntimeError as exc:
                self.warm_cancel()
                raise EngineError(f"llama.cpp failed while warming a prompt: {exc}") from exc
            w.done = end
        return w.done >= len(w.tokens)

    def warm_ready(self, adapter: Path | None, scale: float = 1.0) -> bool:
        """Is a prompt fully warmed under `adapter` (None: the base), ready to install?"""
        w = self._warm
        return w is not None and w.done >= len(w.tokens) and w.want == _want(adapter, scale)

    def warm_install(self) -> bool:
        """Serve from the warmed prompt: its adapter goes on the serving context and its KV
        replaces the cache, so the next request that starts with those tokens reads only the
        rest. False if the warm-up is not finished (nothing changes) or its state could not be
        copied (then the warmed adapter is on, with an empty cache, as after `set_adapter`)."""
        import ctypes

        import llama_cpp

        w = self._warm
        if w is None or w.done < len(w.tokens):
            return False
        self._warm = None
        try:
            size = llama_cpp.llama_state_seq_get_size(w.ctx.ctx, 0)
            buf = (ctypes.c_uint8 * size)()
            if llama_cpp.llama_state_seq_get_data(w.ctx.ctx, buf, size, 0) != size:
                return False
            if w.want != self._active:
                self._apply(w.want)
            llm = self._llm
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            if llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, buf, size, 0) != size:
                log.warning("could not move a warmed prompt into the serving context")
                llm._ctx.kv_cache_seq_rm(-1, 0, -1)
                llm.reset()  # as after `set_adapter`: the warmed adapter, an empty cache
                return False
            n = len(w.tokens)
            llm.input_ids[:n] = w.tokens
            llm.n_tokens = n
            llm._requires_eval = True  # no logits for the last token: replay it if asked for exactly this
            return True
        finally:
            w.close()

    def warm_cancel(self) -> None:
        """Drop the warm-up in progress, if any."""
        w, self._warm = self._warm, None
        if w is not None:
            w.close()

    @contextmanager
    def keep_cache(self) -> Iterator[None]:
        """Run a side job (a background rewrite) without losing the conversation's KV cache.

        llama.cpp keeps one prompt's cache; a side job would evict it and the next chat turn
        would re-read its whole prompt. The sequence's KV cells are copied out and put back.
        The side job may switch adapter: the chat's adapter comes back with its KV (which was
        computed under it), without the reset a `set_adapter` would do.
        """
        import ctypes

        import llama_cpp

        llm = self._llm
        ctx = llm._ctx.ctx
        n = llm.n_tokens
        ids = llm.input_ids[:n].copy()
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        saved = n > 0 and llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0) == size
        adapter = self._active
        try:
            yield
        finally:
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            if self._active != adapter:
                try:
                    self._apply(adapter)
                except AdapterError:  # evicted and its file gone since: re-read the prompt
                    log.exception("could not restore the chat's adapter")
                    saved = False
            if saved and llama_cpp.llama_state_seq_set_data(ctx, buf, size, 0) == size:
                llm.n_tokens = n
                llm.input_ids[:n] = ids
                llm._requires_eval = True  # the logits are not restored: replay the last token
            else:
                llm.reset()

    # -- prompt ------------------------------------------------------------------------------

    def render(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The chat-templated prompt as tokens; fails if it leaves no room for an answer."""
        try:
            result = self._formatter(messages=list(messages))
            prompt = result.prompt.encode("utf-8")
            # Tokenizing runs on the API's event loop (a 3 MB body took ~20 s on 2 busy cores,
            # stalling every other request): a prompt too long to fit even if each token were
            # the vocabulary's longest is refused unread.
            if len(prompt) > self.n_ctx * 16 and len(prompt) > self.n_ctx * self._max_token_bytes():
                raise ContextLengthError(len(prompt) // self._max_token_bytes(), self.n_ctx, at_least=True)
            tokens = self._llm.tokenize(prompt, add_bos=not result.added_special, special=True)
        except (ValueError, RuntimeError, UnicodeError) as exc:
            raise EngineError(f"The chat template could not be applied to these messages: {exc}") from exc
        if len(tokens) >= self.n_ctx:
            raise ContextLengthError(len(tokens), self.n_ctx)
        return tokens

    def _max_token_bytes(self) -> int:
        """The longest token's length in bytes (81 for SmolLM2), counted once (~0.1 s), when a
        prompt first runs past 16 bytes per token of context."""
        if self._longest_token is None:
            import ctypes

            import llama_cpp

            buf = ctypes.create_string_buffer(1024)
            # llama_token_to_piece returns the length, or minus the size it needs.
            self._longest_token = max(
                abs(llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True))
                for token in range(self._llm.n_vocab())
            )
        return self._longest_token

    # -- generation --------------------------------------------------------------------------

    def generate(
        self,
        prompt: list[int],
        params: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> Iterator[Piece | Finish]:
        """Stream `Piece`s of the answer, then one `Finish`. Call from one thread at a time.

        Stops at an end-of-generation token, a stop string (never emitted), `max_tokens`, a full
        context, or when `cancel` is set (checked between tokens).
        """
        from llama_cpp import LlamaGrammar

        started = time.perf_counter()
        budget = min(params.max_tokens, self.n_ctx - len(prompt))
        seed = params.seed if params.seed is not None else random.getrandbits(31)
        self._llm.set_seed((seed % (2**31 - 1)) or 1)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stops = [s for s in params.stop if s]
        hold = max((len(s) for s in stops), default=1) - 1
        emitted: list[str] = []
        pending = ""
        completion_tokens = 0
        ttft_ms: float | None = None
        finish_reason = "length"
        try:
            tokens = self._llm.generate(
                prompt,
                top_k=params.top_k,
                top_p=params.top_p,
                min_p=params.min_p,
                temp=params.temperature,
                repeat_penalty=1.0,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                grammar=LlamaGrammar.from_string(params.grammar) if params.grammar else None,
            )
            for token in tokens:
                if cancel is not None and cancel.is_set():
                    finish_reason = "cancelled"
                    break
                if not params.ignore_eos and self._is_eog(self._vocab, token):
                    finish_reason = "stop"
                    break
                completion_tokens += 1
                pending += decoder.decode(self._llm.detokenize([token]))
                if stops:
                    cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
                    if cut >= 0:
                        pending = pending[:cut]
                        finish_reason = "stop"
                        break
                    ready, pending = (pending[:-hold], pending[-hold:]) if hold else (pending, "")
                else:
                    ready, pending = pending, ""
                if ready:
                    if ttft_ms is None:
                        ttft_ms = (time.perf_counter() - started) * 1000
                    emitted.append(ready)
                    yield Piece(ready)
                if completion_tokens >= budget:
                    finish_reason = "length"
                    break
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"llama.cpp failed while generating: {exc}") from exc
        pending += decoder.decode(b"", final=True)
        if pending and finish_reason != "cancelled":
            if ttft_ms is None:
                ttft_ms = (time.perf_counter() - started) * 1000
            emitted.append(pending)
            yield Piece(pending)
        yield Finish(
            finish_reason=finish_reason,
            prompt_tokens=len(prompt),
            completion_tokens=completion_tokens,
            text="".join(emitted),
            ttft_ms=ttft_ms,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
