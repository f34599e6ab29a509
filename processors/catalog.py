"""The built-in processor kinds and the keys each accepts in a bot file.

Only settings models live here; the services are imported when a pipeline is built.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, model_validator

from vivavoce.registry import ProcessorConfig, ProcessorKind


class WhisperConfig(ProcessorConfig):
    """faster-whisper, in-process."""

    kind: Literal["whisper"]
    model: str = Field("tiny.en", description="'tiny.en' (bundled) or a local CTranslate2 model directory.")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where the model runs.")
    compute_type: str = Field("int8", description="CTranslate2 precision: int8, int8_float16, float16...")
    language: str = Field("en", description="Language code.")
    no_speech_prob: float = Field(
        0.4,
        ge=0,
        le=1,
        description="Segments above this no-speech probability are dropped, unless their words were decoded "
        "with confidence (average log-probability above -1, Whisper's own rule).",
    )
    speculate: bool = Field(
        True, description="Start transcribing at the user's first pause instead of when the VAD stops."
    )
    window_secs: float = Field(
        10.0,
        ge=5,
        le=30,
        description="Encode utterances shorter than this in a window this long instead of Whisper's 30 s "
        "(several times faster for tiny.en: bench/local_latency.py); 30: always faster-whisper's standard path.",
    )


class DeepgramConfig(ProcessorConfig):
    """Deepgram streaming STT (hosted)."""

    kind: Literal["deepgram"]
    api_key: SecretStr = Field(description="Write ${DEEPGRAM_API_KEY}: never the key itself.")
    model: str = Field("nova-3", description="Deepgram model.")
    language: str = Field("en", description="Language code.")


Fallback = Annotated[
    dict[str, Any] | None,
    Field(
        description="Last resort, a pipeline entry of the same role (e.g. {kind: piper} in-process, {kind: whisper}) "
        "that takes over for the rest of the call when no worker answers any more (pipecat's ServiceSwitcher)."
    ),
]


class WorkerEndpointConfig(ProcessorConfig):
    """Where a worker-backed kind finds its worker: one worker (``url``), or the fleet's workers of the
    kind's family found through a registry (``registry``); see workers/README.md."""

    url: str | None = Field(
        None, pattern=r"^wss?://", description="One worker's endpoint, e.g. ws://gpu-host:8710/v1/stream"
    )
    registry: str | None = Field(
        None,
        pattern=r"^rediss?://",
        description="The fleet's registry, e.g. ${VIVAVOCE_REGISTRY} (redis://host:6379/0): each conversation "
        "takes the least loaded of two ready workers of this family (and voice), and another if it fails.",
    )
    api_key: SecretStr | None = Field(
        None, description="Write ${VIVAVOCE_WORKER_API_KEY}; unset: read that variable (none for --no-auth workers)."
    )
    fallback: Fallback = None

    @model_validator(mode="after")
    def _one_place(self) -> WorkerEndpointConfig:
        if (self.url is None) == (self.registry is None):
            raise ValueError("give exactly one of 'url' (one worker) or 'registry' (the fleet's workers)")
        return self


class AsrServiceConfig(WorkerEndpointConfig):
    """A vivavoce ASR service (workers/asr: VAD, Smart Turn and faster-whisper behind WS /v1/asr), e.g.
    ``url: ws://asr-host:8001/v1/asr``."""

    kind: Literal["asr"]
    language: str = Field("en", description="Language code.")


class SmolLMConfig(ProcessorConfig):
    """SmolLM2-135M-Instruct, in-process on CPU (bundled, no keys)."""

    kind: Literal["smollm"]
    max_tokens: int = Field(48, ge=1, le=512, description="Most tokens in one reply.")
    max_sentences: int = Field(2, ge=1, le=20, description="A reply stops after this many sentences.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 is greedy decoding.")
    precision: Literal["bfloat16", "float32", "int8"] = Field(
        "bfloat16", description="Weights: bfloat16 (fast), float32, or int8 (fastest, weaker answers)."
    )
    threads: int | None = Field(
        1,
        ge=1,
        le=256,
        description="torch threads for generation. One decodes this small model as fast as two (it is "
        "overhead-bound) and leaves a core to Whisper and Piper; null: torch's default.",
    )


class OpenAIConfig(ProcessorConfig):
    """Any OpenAI-compatible chat-completions server: vLLM, Ollama, llama.cpp server, OpenAI."""

    kind: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://", description="e.g. http://localhost:8000/v1")
    model: str = Field(min_length=1, description="Model name as the server knows it.")
    api_key: SecretStr | None = Field(None, description="Write ${OPENAI_API_KEY}; local servers need none.")
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(120, ge=1, le=8192)


class PiperConfig(ProcessorConfig):
    """Piper TTS: in-process on CPU (GPL-3 package piper-tts), or on a Piper worker (``url``)."""

    kind: Literal["piper"]
    voice: str = Field(
        "en_US-joe-medium",
        description="'en_US-joe-medium' (bundled) or the path to a voice's .onnx file (on the worker, with url).",
    )
    url: str | None = Field(
        None,
        pattern=r"^wss?://",
        description="A Piper worker's stream endpoint (make worker-piper), e.g. ws://tts-host:8002/v1/stream; "
        "unset: in-process.",
    )
    registry: str | None = Field(
        None,
        pattern=r"^rediss?://",
        description="Or the fleet's registry, e.g. ${VIVAVOCE_REGISTRY}: the least loaded of two ready Piper "
        "workers with this voice; unset (and no url): in-process.",
    )
    api_key: SecretStr | None = Field(
        None, description="With url or registry: write ${VIVAVOCE_WORKER_API_KEY}; unset: read that variable."
    )
    first_phrase_words: int = Field(
        3,
        ge=0,
        le=20,
        description="Speak each reply's opening phrase (up to this many words) before its first sentence "
        "is complete; 0: whole sentences only.",
    )
    trim_silence: bool = Field(
        True,
        description="Start each sentence at its first sound and keep after it a pause that fits its end "
        "(Piper's own silences at the joins of a reply's pieces were heard as stalls); false: Piper's audio "
        "as it comes (in-process; a worker always cuts).",
    )

    fallback: Fallback = None

    @model_validator(mode="after")
    def _one_place(self) -> PiperConfig:
        if self.url is not None and self.registry is not None:
            raise ValueError("give at most one of 'url' (one worker) or 'registry' (the fleet's workers)")
        if self.fallback is not None and self.url is None and self.registry is None:
            raise ValueError("a fallback is for a worker (url or registry): in-process Piper has none to lose")
        return self


class WorkerTTSConfig(WorkerEndpointConfig):
    """Settings every model-worker TTS shares (see workers/README.md)."""

    max_audio_ms: int = Field(20_000, ge=80, le=120_000, description="Longest audio one sentence may produce.")


class CSMConfig(WorkerTTSConfig):
    """Sesame CSM on a vivavoce CSM worker, with the conversation's audio as context."""

    kind: Literal["csm"]
    speaker: int = Field(0, ge=0, le=63, description="CSM speaker id of the bot.")
    context_turns: int = Field(4, ge=0, le=32, description="Previous turns (text + audio) sent with each sentence.")
    voice_prompt_audio: str | None = Field(None, description="Mono 16-bit WAV that sets the voice (sent as context).")
    voice_prompt_text: str = Field("", description="Transcript of voice_prompt_audio.")

    @model_validator(mode="after")
    def _prompt_has_text(self) -> CSMConfig:
        if self.voice_prompt_audio and not self.voice_prompt_text:
            raise ValueError("voice_prompt_audio needs voice_prompt_text (its transcript)")
        return self


class ChatterboxConfig(WorkerTTSConfig):
    """Resemble AI Chatterbox on a vivavoce Chatterbox worker."""

    kind: Literal["chatterbox"]
    voice: str | None = Field(None, description="A voice id registered on the worker (POST /voices); null: built-in.")
    exaggeration: float = Field(0.5, ge=0, le=2, description="Emotion exaggeration (0.5 neutral).")
    cfg_weight: float = Field(0.5, ge=0, le=2, description="Classifier-free guidance weight (lower: slower pace).")


class PlaybackConfig(ProcessorConfig):
    """Answers every user turn with one recorded reply (IVR prompts, transport load tests)."""

    kind: Literal["playback"]
    text: str | None = Field(None, min_length=1, description="Reply synthesised once with Piper.")
    audio: str | None = Field(None, description="Or: a WAV file to play.")
    voice: str = Field("en_US-joe-medium", description="Piper voice for `text`.")

    @model_validator(mode="after")
    def _one_source(self) -> PlaybackConfig:
        if (self.text is None) == (self.audio is None):
            raise ValueError("give exactly one of 'text' or 'audio'")
        return self


class MoshiConfig(WorkerEndpointConfig):
    """Kyutai Moshi speech-to-speech through a Moshi worker (workers/moshi), e.g.
    ``url: ws://localhost:8998/api/chat``; replaces STT, LLM and TTS."""

    kind: Literal["moshi"]
    gate: bool = Field(True, description="Turn gating in the worker: Moshi stays silent while the user speaks.")
    gate_silence_ms: int = Field(480, ge=0, le=10_000, description="User silence after which Moshi may speak.")
    gate_threshold_db: float = Field(-40.0, ge=-120, le=0, description="User level (dBFS) counted as speech.")
    speech_threshold_db: float = Field(-50.0, ge=-120, le=0, description="Bot level (dBFS) counted as speech.")
    utterance_end_ms: int = Field(400, ge=80, le=5_000, description="Bot silence that ends one of its utterances.")


BUILTIN_KINDS = [
    ProcessorKind(
        name="whisper",
        role="stt",
        config=WhisperConfig,
        factory="vivavoce.processors.whisper:create",
        preload="vivavoce.processors.whisper:preload",
        summary="faster-whisper STT in-process (tiny.en bundled)",
        install="vivavoce[embedded]",
        hears_input_audio=True,
    ),
    ProcessorKind(
        name="deepgram",
        role="stt",
        config=DeepgramConfig,
        factory="vivavoce.processors.deepgram:create",
        summary="Deepgram streaming STT (hosted, DEEPGRAM_API_KEY)",
        install="vivavoce[deepgram]",
        hears_input_audio=True,
    ),
    ProcessorKind(
        name="asr",
        role="stt",
        config=AsrServiceConfig,
        factory="vivavoce.processors.asr_service:create",
        summary="A vivavoce ASR service (make worker-asr): streaming partial and final transcripts",
        install="vivavoce",
        hears_input_audio=True,
    ),
    ProcessorKind(
        name="smollm",
        role="llm",
        config=SmolLMConfig,
        factory="vivavoce.processors.smollm:create",
        preload="vivavoce.processors.smollm:preload",
        summary="SmolLM2-135M-Instruct LLM in-process on CPU (bundled)",
        install="vivavoce[embedded]",
    ),
    ProcessorKind(
        name="openai",
        role="llm",
        config=OpenAIConfig,
        factory="vivavoce.processors.openai_compatible:create",
        summary="OpenAI-compatible LLM server: vLLM, Ollama, llama.cpp (base_url)",
        install="vivavoce[openai]",
    ),
    ProcessorKind(
        name="playback",
        role="s2s",
        config=PlaybackConfig,
        factory="vivavoce.processors.playback:create",
        preload="vivavoce.processors.playback:preload",
        summary="Answers each user turn with one recorded reply (IVR prompts, load tests)",
        install="vivavoce[embedded]",
    ),
    ProcessorKind(
        name="moshi",
        role="s2s",
        config=MoshiConfig,
        factory="vivavoce.processors.moshi:create",
        summary="Kyutai Moshi speech-to-speech via a Moshi worker (replaces STT, LLM and TTS)",
        install="vivavoce",
        hears_input_audio=True,
    ),
    ProcessorKind(
        name="piper",
        role="tts",
        config=PiperConfig,
        factory="vivavoce.processors.piper:create",
        preload="vivavoce.processors.piper:preload",
        summary="Piper TTS in-process on CPU (en_US-joe-medium bundled; GPL-3), or on a Piper worker (url)",
        install="vivavoce[embedded]",
    ),
    ProcessorKind(
        name="csm",
        role="tts",
        config=CSMConfig,
        factory="vivavoce.processors.csm:create",
        summary="Sesame CSM on a model worker (make worker-csm), conversation audio as context",
        install="vivavoce",
        hears_input_audio=True,
    ),
    ProcessorKind(
        name="chatterbox",
        role="tts",
        config=ChatterboxConfig,
        factory="vivavoce.processors.chatterbox:create",
        summary="Resemble AI Chatterbox on a model worker (make worker-chatterbox), registered voices",
        install="vivavoce",
    ),
]
