"""Compile a bot file into a pipecat pipeline: transport in, processors, context aggregators, transport out."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import Frame, InputAudioRawFrame, LLMRunFrame, OutputAudioRawFrame, TTSSpeakFrame
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.service_switcher import ServiceSwitcher, ServiceSwitcherStrategyFailover
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMAssistantAggregator,
    LLMContextAggregatorPair,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_start import (
    MinWordsUserTurnStartStrategy,
    TranscriptionUserTurnStartStrategy,
    VADUserTurnStartStrategy,
)
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy, TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from vivavoce.batched_vad import BatchedSileroVADAnalyzer
from vivavoce.botfile import Bot, Stage
from vivavoce.botfile.schema import TurnTakingConfig, VADConfig
from vivavoce.build_context import BuildContext
from vivavoce.conversation_worker import ConversationWorker
from vivavoce.end_of_turn import AdaptiveTurnStopStrategy, KeepingSmartTurn, sentence_end_model, smart_turn_session
from vivavoce.processors.answer_gate import AnswerGate
from vivavoce.processors.audio_end import AudioEnd
from vivavoce.processors.barge_in import BargeInController

PIPELINE_SAMPLE_RATE = 16000
"""Every input is resampled once, at the transport, to this rate for VAD, Smart Turn and STT."""


@dataclass
class Conversation:
    """One session of a bot: the pipecat pipeline and worker, and the parts callers hook into."""

    bot: Bot
    worker: PipelineWorker
    pipeline: Pipeline
    context: LLMContext
    user_aggregator: LLMUserAggregator
    assistant_aggregator: LLMAssistantAggregator
    processors: dict[int, FrameProcessor]
    barge_in: BargeInController | None = None

    def processor_roles(self) -> dict[str, str]:
        """Processor name -> role (stt, llm, tts...), to attribute pipecat's metrics."""
        return {self.processors[s.index].name: s.role for s in self.bot.stages}


def turn_strategies(
    turn_taking: TurnTakingConfig, *, has_stt: bool = True, context: LLMContext | None = None
) -> UserTurnStrategies:
    """pipecat user-turn strategies for the bot file's turn-taking section.

    Without an STT in the pipeline no transcript will come, so the end of a turn must not wait for one.
    ``context``: the conversation, which the adaptive end of turn reads the bot's last words from.
    """
    interruptions = turn_taking.interruptions
    if not interruptions.enabled or interruptions.mode == "pause_resume":
        # pause_resume: the BargeInController decides interruptions, not the turn start.
        start = [
            VADUserTurnStartStrategy(enable_interruptions=False),
            TranscriptionUserTurnStartStrategy(enable_interruptions=False),
        ]
    elif interruptions.min_words > 0:
        start = [MinWordsUserTurnStartStrategy(min_words=interruptions.min_words)]
    else:
        start = [VADUserTurnStartStrategy(), TranscriptionUserTurnStartStrategy()]
    end = turn_taking.end_of_turn
    if end.model == "adaptive":
        stop = [
            AdaptiveTurnStopStrategy(
                audio=KeepingSmartTurn() if end.audio_model == "smart_turn_v3" else None,
                sentence_end=sentence_end_model() if end.text_model == "smollm2" and has_stt else None,
                context=context,
                min_silence_secs=end.min_silence_secs,
                max_silence_secs=end.max_silence_secs,
                wait_for_transcript=has_stt,
                early_answer=end.early_answer,
                gate=has_stt,
            )
        ]
    elif end.model == "smart_turn_v3":
        stop = [TurnAnalyzerUserTurnStopStrategy(turn_analyzer=LocalSmartTurnAnalyzerV3(), wait_for_transcript=has_stt)]
    else:
        stop = [SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=end.silence_secs, wait_for_transcript=has_stt)]
    return UserTurnStrategies(start=start, stop=stop)


def load_models(bot: Bot) -> None:
    """Load every model the bot needs into the process-wide store, in parallel.

    Sessions built afterwards start instantly; calling this is optional (building loads lazily).
    """
    stages = [*bot.stages, *(s.fallback for s in bot.stages if s.fallback is not None)]
    loaders = [partial(s.kind.load_models, s.config) for s in stages if s.kind is not None and s.kind.preload]
    end = bot.spec.turn_taking.end_of_turn
    if end.model == "adaptive" and end.audio_model == "smart_turn_v3":
        loaders.append(smart_turn_session)
    if end.model == "adaptive" and end.text_model == "smollm2" and bot.stage("stt") is not None:
        loaders.append(sentence_end_model)
    if not loaders:
        return
    with ThreadPoolExecutor(max_workers=len(loaders), thread_name_prefix="vivavoce-load") as pool:
        for future in [pool.submit(load) for load in loaders]:
            future.result()


def _create(stage: Stage, context: BuildContext) -> FrameProcessor:
    if stage.kind is not None:
        processor = stage.kind.create(stage.config, context)
    else:
        assert stage.processor_class is not None
        processor = stage.processor_class(**stage.config.settings)  # type: ignore[attr-defined]
    if stage.fallback is None:
        return processor
    # pipecat's switcher moves to the fallback once the worker service reports itself unusable (no worker
    # of its fleet answered, or its one worker failed every reconnect); the call stays on it.
    return ServiceSwitcher([processor, _create(stage.fallback, context)], ServiceSwitcherStrategyFailover)


def vad_model_sample_rate(setting: str | int, *, narrowband_input: bool) -> int:
    """The rate Silero scores at for the bot file's ``model_sample_rate`` ("auto": the source's own band)."""
    if setting == "auto":
        return 8000 if narrowband_input else PIPELINE_SAMPLE_RATE
    return int(setting)


def build_conversation(
    bot: Bot,
    transport: BaseTransport,
    *,
    audio_out_sample_rate: int,
    observers: Sequence[BaseObserver] = (),
    enable_rtvi: bool = False,
    idle_timeout_secs: float | None = 300,
    after_input: Sequence[FrameProcessor] = (),
    before_output: Sequence[FrameProcessor] = (),
    narrowband_input: bool = False,
    history: Sequence[dict[str, Any]] = (),
) -> Conversation:
    """Build one conversation of ``bot`` over ``transport``.

    Order: ``transport.input()``, ``after_input`` (transport extras, e.g. DTMF), stages before the LLM,
    user aggregator, LLM, stages after it, ``before_output``, ``transport.output()``, assistant
    aggregator (which then records what was actually spoken). The caller's audio ends after the last
    step that uses it (the user aggregator, or a later stage that hears it, e.g. CSM), the bot's audio
    after the output transport. ``narrowband_input``: the caller's audio comes from an 8 kHz source
    (a phone line), so the VAD can score it at 8 kHz as it is. ``history``: the LLM context messages of a
    conversation that goes on (a call taken over from another host): the LLM starts with them, the bot does
    not greet again, and it answers at once if the caller's last words were not answered.
    """
    processors = {
        stage.index: _create(stage, BuildContext(system_prompt=bot.spec.system_prompt)) for stage in bot.stages
    }
    context = LLMContext()
    context.set_messages(list(history))
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=vad_analyzer(bot.spec.turn_taking.vad, narrowband_input=narrowband_input),
            user_turn_strategies=turn_strategies(
                bot.spec.turn_taking, has_stt=bot.stage("stt") is not None, context=context
            ),
        ),
    )
    barge_in = _barge_in_controller(bot)
    steps = [
        transport.input(),
        *after_input,
        *_conversation_steps(bot, processors, [barge_in, aggregators.user()] if barge_in else [aggregators.user()]),
        *([AnswerGate()] if _gates_answers(bot) else []),  # holds an answer not heard yet: see vivavoce.end_of_turn
        *before_output,
        transport.output(),
        AudioEnd(OutputAudioRawFrame),
        aggregators.assistant(),
    ]
    pipeline = Pipeline(steps)
    worker = ConversationWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=PIPELINE_SAMPLE_RATE,
            audio_out_sample_rate=audio_out_sample_rate,
            enable_metrics=True,
        ),
        observers=list(observers),
        enable_rtvi=enable_rtvi,
        # pipecat's turn tracking feeds its tracing and audio-buffer turns, which we do not use; as an
        # observer it would see every frame of every call (TurnRecorder measures our turns).
        enable_turn_tracking=False,
        idle_timeout_secs=idle_timeout_secs,
        name=f"vivavoce:{bot.name}",
    )
    if history:
        if history[-1].get("role") == "user":  # the answer was lost with the host that was to give it
            _on_start(worker, LLMRunFrame())
    elif bot.spec.greeting:
        _on_start(worker, TTSSpeakFrame(bot.spec.greeting))
    return Conversation(
        bot=bot,
        worker=worker,
        pipeline=pipeline,
        context=context,
        user_aggregator=aggregators.user(),
        assistant_aggregator=aggregators.assistant(),
        processors=processors,
        barge_in=barge_in,
    )


def vad_analyzer(vad: VADConfig, *, narrowband_input: bool = False) -> BatchedSileroVADAnalyzer:
    """Silero, as the bot file's ``turn_taking.vad`` sets it."""
    return BatchedSileroVADAnalyzer(
        sample_rate=PIPELINE_SAMPLE_RATE,
        params=VADParams(
            confidence=vad.confidence, start_secs=vad.start_secs, stop_secs=vad.stop_secs, min_volume=vad.min_volume
        ),
        model_sample_rate=vad_model_sample_rate(vad.model_sample_rate, narrowband_input=narrowband_input),
        narrowband_input=narrowband_input,
    )


def _barge_in_controller(bot: Bot) -> BargeInController | None:
    """The pause-then-resume barge-in, when the bot file asks for it (else pipecat's turn start interrupts)."""
    interruptions = bot.spec.turn_taking.interruptions
    if not (interruptions.enabled and interruptions.mode == "pause_resume"):
        return None
    return BargeInController(
        min_speech_secs=interruptions.min_speech_secs,
        resume_within_secs=interruptions.resume_within_secs,
        vad_stop_secs=bot.spec.turn_taking.vad.stop_secs,
        has_stt=bot.stage("stt") is not None,
    )


def _conversation_steps(
    bot: Bot, processors: dict[int, FrameProcessor], before_brain: list[FrameProcessor]
) -> list[FrameProcessor]:
    """The bot file's stages with ``before_brain`` (barge-in, user aggregator) just before the LLM (or
    speech-to-speech model), and the caller's audio ended after the last step that uses it."""
    brain = next(s for s in bot.stages if s.role in ("llm", "s2s"))
    steps: list[FrameProcessor] = []
    listening = 0  # steps up to here use the caller's audio
    for stage in bot.stages:
        if stage.index == brain.index:
            steps += before_brain
            listening = len(steps)
        steps.append(processors[stage.index])
        if stage.hears_input_audio:
            listening = len(steps)
    steps.insert(listening, AudioEnd(InputAudioRawFrame))
    return steps


def _gates_answers(bot: Bot) -> bool:
    """Whether the adaptive end of turn writes answers early (it needs words: an STT) and gates them."""
    return bot.spec.turn_taking.end_of_turn.model == "adaptive" and bot.stage("stt") is not None


def _on_start(worker: PipelineWorker, frame: Frame) -> None:
    """Queue ``frame`` (the greeting, or a run of the LLM) once the pipeline has started."""

    @worker.event_handler("on_pipeline_started")
    async def _first(_worker: PipelineWorker, *_args: Any) -> None:
        await worker.queue_frame(frame)
