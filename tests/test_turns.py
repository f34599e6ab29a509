"""Turn records built from the frames that cross a pipeline, and their summary."""

from __future__ import annotations

import statistics

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserBackchannelFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams

from vivavoce.frames import BotOutputPauseFrame
from vivavoce.turns import STAGES, Turn, TurnRecorder, summarize

POST_LLM_STAGES = ("llm_first_token", "tts_first_audio", "transport")
PRE_LLM_STAGES = tuple(s for s in STAGES if s not in POST_LLM_STAGES)


class FakeAssistantAggregator:
    """Stands in for pipecat's assistant aggregator: reports what the bot actually said."""

    def __init__(self):
        self.handlers = {}

    def event_handler(self, name):
        def register(handler):
            self.handlers[name] = handler
            return handler

        return register

    async def spoke(self, text: str, interrupted: bool = False) -> None:
        message = type("Message", (), {"content": text, "interrupted": interrupted})()
        await self.handlers["on_assistant_turn_stopped"](self, message)


class Conversation:
    """Feeds synthetic FramePushed events to a recorder; times are seconds on the timeline."""

    def __init__(self, roles: dict[str, str] | None = None):
        self.recorder = TurnRecorder(timeline=lambda ns: ns / 1e9, roles=roles)
        self.assistant = FakeAssistantAggregator()
        self.recorder.follow(self.assistant)
        self.vad = FrameProcessor(name="vad")
        self.stt = FrameProcessor(name="stt")
        self.llm = FrameProcessor(name="llm")
        self.tts = FrameProcessor(name="tts")
        self.output = BaseOutputTransport(TransportParams(), name="output")
        self.sink = FrameProcessor(name="sink")

    async def push(self, at: float, frame: Frame, source: FrameProcessor | None = None, *, first_push: bool = True):
        source = source or self.vad
        await self.recorder.on_push_frame(
            FramePushed(
                source=source,
                destination=self.sink,
                frame=frame,
                direction=FrameDirection.DOWNSTREAM,
                timestamp=round(at * 1e9),
                first_push=first_push,
            )
        )

    # One user turn: speech from `speech[0]` to `speech[1]`, VAD confirming 0.2 s late each time,
    # the transcript 0.1 s after the VAD stop, the turn ending at `turn_ends`.
    async def user_says(self, text: str, speech: tuple[float, float], turn_ends: float) -> None:
        start, stop = speech
        await self.push(start + 0.2, VADUserStartedSpeakingFrame(start_secs=0.2))
        await self.push(start + 0.2, UserStartedSpeakingFrame())
        await self.push(start + 0.2, InterruptionFrame())
        await self.push(stop + 0.2, VADUserStoppedSpeakingFrame(stop_secs=0.2))
        await self.push(stop + 0.3, TranscriptionFrame(text=f" {text} ", user_id="user", timestamp="t"), self.stt)
        await self.push(turn_ends, UserStoppedSpeakingFrame())

    # An answer written from 2.6 s (LLM) and synthesized as `audio` at each of `at` (none of it played yet).
    async def bot_writes(self, text: str, audio: TTSAudioRawFrame, at: tuple[float, ...]) -> None:
        await self.push(2.6, LLMFullResponseStartFrame(), self.llm)
        await self.push(2.7, LLMTextFrame(text=text), self.llm)
        await self.push(2.72, LLMFullResponseEndFrame(), self.llm)
        await self.push(2.73, TTSStartedFrame(), self.tts)
        for moment in at:
            await self.push(moment, audio, self.tts)
        await self.push(at[-1] + 0.05, TTSStoppedFrame(), self.tts)

    async def bot_answers(
        self, words: list[str], *, first_token: float, first_audio: float, speaks: tuple[float, float]
    ):
        await self.push(first_token - 0.05, LLMFullResponseStartFrame(), self.llm)
        await self.push(first_token, LLMTextFrame(text=words[0]), self.llm)
        for word in words[1:]:
            await self.push(first_token + 0.01, LLMTextFrame(text=word), self.llm)
        await self.push(first_token + 0.02, LLMFullResponseEndFrame(), self.llm)
        await self.push(first_token + 0.03, TTSStartedFrame(), self.tts)
        await self.push(first_audio, TTSAudioRawFrame(audio=bytes(640), sample_rate=16000, num_channels=1), self.tts)
        await self.push(
            first_audio + 0.02, TTSAudioRawFrame(audio=bytes(640), sample_rate=16000, num_channels=1), self.tts
        )
        await self.push(speaks[0], BotStartedSpeakingFrame(), self.output)
        await self.push(first_audio + 0.1, TTSStoppedFrame(), self.tts)
        await self.push(speaks[1], BotStoppedSpeakingFrame(), self.output)
        # The assistant aggregator reports what was spoken when the bot's turn ends.
        await self.assistant.spoke(" ".join(words))


async def test_one_turn():
    conversation = Conversation()
    recorder = conversation.recorder
    assert not recorder.busy

    await conversation.user_says("hello there", speech=(1.0, 2.0), turn_ends=2.5)
    await conversation.bot_answers(["Hi", "friend."], first_token=2.7, first_audio=2.9, speaks=(3.0, 4.0))

    assert len(recorder.turns) == 1
    (turn,) = recorder.completed_turns()
    assert turn.user_text.strip() == "hello there"
    assert turn.bot_text.strip() == "Hi friend."
    assert turn.user_started_s == pytest.approx(1.0)
    assert turn.user_stopped_s == pytest.approx(2.0)
    assert turn.turn_ended_s == pytest.approx(2.5)
    assert turn.first_token_s == pytest.approx(2.7)
    assert turn.first_audio_s == pytest.approx(2.9)
    assert turn.bot_started_s == pytest.approx(3.0)
    assert turn.bot_stopped_s == pytest.approx(4.0)
    assert not turn.interrupted

    assert turn.voice_to_voice_ms == pytest.approx(1000.0)
    stages = turn.stages_ms()
    assert list(stages) == list(STAGES)
    assert all(value is not None and value >= 0 for value in stages.values()), stages
    assert sum(stages.values()) == pytest.approx(turn.voice_to_voice_ms, abs=0.3)
    assert stages["llm_first_token"] == pytest.approx(200.0)
    assert stages["tts_first_audio"] == pytest.approx(200.0)
    assert stages["transport"] == pytest.approx(100.0)
    # Everything before the LLM: user stops (2.0) -> the turn ends (2.5).
    assert sum(stages[s] for s in PRE_LLM_STAGES) == pytest.approx(500.0, abs=0.2)
    if "vad_stop" in STAGES:  # the end of turn split: VAD confirms -> transcript -> turn decision
        assert stages["vad_stop"] == pytest.approx(200.0)
        assert stages["stt"] == pytest.approx(100.0)
        assert stages["turn_decision"] == pytest.approx(200.0)

    assert not recorder.busy
    assert recorder.last_activity_s == pytest.approx(4.0)

    report = turn.to_dict()
    assert report["user_text"] == "hello there"
    assert report["bot_text"] == "Hi friend."
    assert report["voice_to_voice_ms"] == pytest.approx(1000.0)
    assert report["interrupted"] is False
    assert report["ttfb_ms"] == {"stt": 0.0, "llm": 0.0, "tts": 0.0}
    assert report["stages_ms"] == pytest.approx(stages)
    assert report.get("end_of_turn_ms", 500.0) == pytest.approx(500.0)
    assert report["user_started_s"] == pytest.approx(1.0)


async def test_busy_while_the_turn_is_open_or_the_bot_answers():
    conversation = Conversation()
    recorder = conversation.recorder
    await conversation.push(1.2, VADUserStartedSpeakingFrame(start_secs=0.2))
    assert recorder.busy  # the user is speaking
    await conversation.push(2.2, VADUserStoppedSpeakingFrame(stop_secs=0.2))
    assert recorder.busy  # the turn is undecided
    await conversation.push(2.5, UserStoppedSpeakingFrame())
    assert not recorder.busy
    await conversation.push(2.6, LLMFullResponseStartFrame(), conversation.llm)
    assert recorder.busy
    await conversation.push(2.7, LLMFullResponseEndFrame(), conversation.llm)
    await conversation.push(2.7, TTSStartedFrame(), conversation.tts)
    assert recorder.busy
    await conversation.push(2.8, BotStartedSpeakingFrame(), conversation.output)
    await conversation.push(2.9, TTSStoppedFrame(), conversation.tts)
    assert recorder.busy  # still speaking
    await conversation.push(3.5, BotStoppedSpeakingFrame(), conversation.output)
    assert not recorder.busy


async def test_repeated_pushes_are_counted_once():
    conversation = Conversation()
    frame = TranscriptionFrame(text="once", user_id="user", timestamp="t")
    await conversation.push(1.2, VADUserStartedSpeakingFrame(start_secs=0.2))
    await conversation.push(1.5, frame, conversation.stt)
    await conversation.push(1.5, frame, conversation.llm, first_push=False)
    (turn,) = conversation.recorder.turns
    assert turn.user_text.strip() == "once"


async def test_text_not_played_by_the_output_is_not_bot_text():
    conversation = Conversation()
    await conversation.user_says("hi", speech=(1.0, 1.5), turn_ends=2.0)
    await conversation.push(2.5, TTSTextFrame(text="unspoken", text_type="word"), conversation.tts)
    await conversation.assistant.spoke("spoken", interrupted=True)
    (turn,) = conversation.recorder.turns
    assert turn.bot_text.strip() == "spoken"


async def test_interruption_while_the_bot_speaks():
    conversation = Conversation()
    recorder = conversation.recorder
    await conversation.user_says("tell me a story", speech=(1.0, 2.0), turn_ends=2.5)
    await conversation.push(2.6, LLMFullResponseStartFrame(), conversation.llm)
    await conversation.push(2.7, LLMTextFrame(text="Once"), conversation.llm)
    await conversation.push(
        2.9, TTSAudioRawFrame(audio=bytes(640), sample_rate=16000, num_channels=1), conversation.tts
    )
    await conversation.push(3.0, BotStartedSpeakingFrame(), conversation.output)

    # The user talks over the bot: a new turn starts and interrupts the answer.
    await conversation.push(3.7, VADUserStartedSpeakingFrame(start_secs=0.2))
    await conversation.push(3.7, UserStartedSpeakingFrame())
    await conversation.push(3.7, InterruptionFrame())
    await conversation.push(3.75, BotStoppedSpeakingFrame(), conversation.output)
    await conversation.push(3.75, LLMFullResponseEndFrame(), conversation.llm)
    await conversation.push(4.1, TranscriptionFrame(text="stop", user_id="user", timestamp="t"), conversation.stt)
    await conversation.push(4.2, VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await conversation.push(4.5, UserStoppedSpeakingFrame())
    await conversation.bot_answers(["OK."], first_token=4.7, first_audio=4.8, speaks=(4.9, 5.3))

    first, second = recorder.completed_turns()
    assert first.user_text.strip() == "tell me a story"
    assert first.interrupted
    assert first.bot_started_s == pytest.approx(3.0)
    assert first.bot_stopped_s == pytest.approx(3.75)
    assert first.voice_to_voice_ms == pytest.approx(1000.0)

    assert second.user_text.strip() == "stop"
    assert not second.interrupted
    assert second.user_started_s == pytest.approx(3.5)
    assert second.user_stopped_s == pytest.approx(4.0)
    assert second.voice_to_voice_ms == pytest.approx(900.0)
    assert second.bot_text.strip() == "OK."


async def test_words_taken_for_a_backchannel_leave_the_turn_and_are_listed_apart():
    # The barge-in controller pushes a UserBackchannelFrame in place of the transcript: the words never
    # reach the LLM, so the report must not say the user's turn held them.
    conversation = Conversation()
    await conversation.user_says("tell me a story", speech=(1.0, 2.0), turn_ends=2.5)
    await conversation.bot_answers(["Once", "upon", "a", "time."], first_token=2.7, first_audio=2.9, speaks=(3.0, 6.0))
    await conversation.push(4.0, VADUserStartedSpeakingFrame(start_secs=0.2))
    await conversation.push(4.3, VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await conversation.push(4.4, TranscriptionFrame(text=" Mm-hm. ", user_id="user", timestamp="t"), conversation.stt)
    await conversation.push(4.5, UserBackchannelFrame(text=" Mm-hm. ", user_id="user", timestamp="t"))

    (turn,) = conversation.recorder.completed_turns()
    assert turn.user_text.strip() == "tell me a story"
    assert turn.backchannels == ["Mm-hm."]
    assert turn.to_dict()["backchannels"] == ["Mm-hm."]


async def test_a_turn_left_without_words_by_a_backchannel_does_not_take_the_answer_over():
    # "Okay" said over the answer: the VAD opens a user turn, the controller pauses the bot, takes the words
    # for an acknowledgement and resumes. No transcript reaches the user aggregator, which ends that empty
    # turn only at its stop timeout (5 s), while the answer still plays. The rest of the answer is still
    # the first turn's, and nothing answered the empty turn (bench/conversation.py had reported it as
    # answering the acknowledgement, 5.2 s after it).
    conversation = Conversation()
    await conversation.user_says("I heard a beep", speech=(1.0, 2.0), turn_ends=2.5)
    piece = TTSAudioRawFrame(audio=b"\x00\x10" * 16000, sample_rate=16000, num_channels=1)  # 1 s, not silence
    await conversation.bot_writes("A beat is a rhythm.", piece, at=(2.9, 3.0, 3.1, 3.2, 3.3))
    await conversation.push(3.0, BotStartedSpeakingFrame(), conversation.output)
    await conversation.push(3.0, piece, conversation.output)
    await conversation.push(4.064, VADUserStartedSpeakingFrame(start_secs=0.064))
    await conversation.push(4.064, BotOutputPauseFrame(paused=True))
    await conversation.push(4.064, UserStartedSpeakingFrame())
    await conversation.push(4.45, VADUserStoppedSpeakingFrame(stop_secs=0.2))
    misheard = TranscriptionFrame(text=" I hit it. ", user_id="user", timestamp="t")  # tiny.en's "Okay"
    await conversation.push(4.9, misheard, conversation.stt)
    await conversation.push(5.0, BotOutputPauseFrame(paused=False))
    for at in (5.0, 6.0, 7.0):  # 1 s of the answer is still to play when the empty turn ends
        await conversation.push(at, piece, conversation.output)
    await conversation.push(6.2, UserBackchannelFrame(text=" I hit it. ", user_id="user", timestamp="t"))
    await conversation.push(9.1, UserStoppedSpeakingFrame())  # the aggregator's stop timeout
    await conversation.push(9.2, piece, conversation.output)
    await conversation.push(10.5, BotStoppedSpeakingFrame(), conversation.output)

    first, empty = conversation.recorder.turns
    assert first.backchannels == ["I hit it."]
    assert first.bot_started_s == pytest.approx(3.0)
    assert first.bot_stopped_s == pytest.approx(10.2)
    assert first.spoken.played_secs == pytest.approx(5.0)
    assert not first.interrupted
    assert empty.user_text.strip() == "" and empty.bot_started_s is None
    assert conversation.recorder.completed_turns() == [first]


async def test_a_turn_without_words_in_a_pipeline_without_an_stt_takes_the_answer_that_follows():
    # Moshi (speech to speech): no turn has words. The second turn ends while the first answer's audio, made
    # ahead, still plays; the audio after that answers the second turn (tests/test_moshi_e2e.py).
    conversation = Conversation()
    piece = TTSAudioRawFrame(audio=b"\x00\x10" * 16000, sample_rate=16000, num_channels=1)  # 1 s, not silence
    await conversation.push(1.2, VADUserStartedSpeakingFrame(start_secs=0.2))
    await conversation.push(1.2, UserStartedSpeakingFrame())
    await conversation.push(2.2, VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await conversation.push(2.5, UserStoppedSpeakingFrame())
    await conversation.bot_writes("", piece, at=(2.9, 3.0))
    await conversation.push(3.0, BotStartedSpeakingFrame(), conversation.output)
    await conversation.push(3.0, piece, conversation.output)
    await conversation.push(3.5, VADUserStartedSpeakingFrame(start_secs=0.2))
    await conversation.push(3.5, UserStartedSpeakingFrame())
    await conversation.push(3.8, VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await conversation.push(3.9, UserStoppedSpeakingFrame())
    await conversation.push(4.0, piece, conversation.output)

    first, second = conversation.recorder.turns
    assert first.bot_started_s == pytest.approx(3.0) and second.bot_started_s == pytest.approx(4.0)
    assert conversation.recorder.completed_turns() == [first, second]


async def test_speech_before_any_answer_is_heard_continues_the_turn():
    # The user goes on while the LLM is still thinking: one turn, all of its words, answered once.
    conversation = Conversation()
    await conversation.user_says("what time is it", speech=(1.0, 2.0), turn_ends=2.5)
    await conversation.push(2.6, LLMFullResponseStartFrame(), conversation.llm)
    await conversation.push(2.65, LLMTextFrame(text="It is"), conversation.llm)
    await conversation.user_says("in Paris", speech=(2.7, 3.2), turn_ends=3.6)
    await conversation.push(3.61, LLMFullResponseEndFrame(), conversation.llm)
    (turn,) = conversation.recorder.turns
    assert turn.user_text.split() == ["what", "time", "is", "it", "in", "Paris"]
    assert not turn.interrupted
    assert turn.user_started_s == pytest.approx(1.0)
    assert turn.user_stopped_s == pytest.approx(3.2)
    assert turn.turn_ended_s == pytest.approx(3.6)
    assert turn.first_token_s is None  # the cancelled answer's token is not this turn's answer
    await conversation.bot_answers(["Noon."], first_token=3.8, first_audio=4.0, speaks=(4.1, 4.6))
    assert turn.first_token_s == pytest.approx(3.8)
    assert turn.voice_to_voice_ms == pytest.approx(900.0)


async def test_speech_after_the_answer_was_heard_is_a_new_turn():
    conversation = Conversation()
    await conversation.user_says("what time is it", speech=(1.0, 2.0), turn_ends=2.5)
    await conversation.bot_answers(["It", "is", "noon."], first_token=2.7, first_audio=2.9, speaks=(3.0, 6.0))
    await conversation.user_says("never mind", speech=(3.5, 4.0), turn_ends=4.4)
    first, second = conversation.recorder.turns
    assert second.user_text.strip() == "never mind"
    assert first.bot_started_s == pytest.approx(3.0)


async def test_interruption_after_the_answer_is_not_a_barge_in():
    conversation = Conversation()
    await conversation.user_says("hello", speech=(1.0, 2.0), turn_ends=2.5)
    await conversation.bot_answers(["Hi."], first_token=2.7, first_audio=2.9, speaks=(3.0, 3.5))
    await conversation.user_says("bye", speech=(5.0, 5.5), turn_ends=6.0)
    first, second = conversation.recorder.turns
    assert not first.interrupted
    assert not second.interrupted
    assert second.user_started_s == pytest.approx(5.0)


async def test_speech_just_after_the_answer_ended_does_not_interrupt_it():
    # The answer's audio has all played by 3.4 s; pipecat says the bot stopped only ~0.35 s later. Speech
    # the VAD hears in between (64 ms of it is enough) pauses the output and interrupts, but nothing was
    # left to cut: the report must not say it was (the WAV says the answer ended by itself).
    conversation = Conversation()
    await conversation.user_says("hello", speech=(1.0, 2.0), turn_ends=2.5)
    audio = TTSAudioRawFrame(audio=b"\x00\x10" * 6400, sample_rate=16000, num_channels=1)  # 0.4 s, not silence
    await conversation.bot_writes("Hi.", audio, at=(2.9,))
    await conversation.push(3.0, BotStartedSpeakingFrame(), conversation.output)
    await conversation.push(3.0, audio, conversation.output)
    await conversation.push(3.5, VADUserStartedSpeakingFrame(start_secs=0.064))
    await conversation.push(3.5, BotOutputPauseFrame(paused=True))
    await conversation.push(3.5, UserStartedSpeakingFrame())
    await conversation.push(3.5, InterruptionFrame())
    await conversation.push(3.75, BotStoppedSpeakingFrame(), conversation.output)
    first = conversation.recorder.turns[0]
    assert not first.interrupted
    assert first.bot_stopped_s == pytest.approx(3.4)


async def test_vad_blip_without_words_is_not_a_turn():
    conversation = Conversation()
    await conversation.user_says("hello", speech=(1.0, 2.0), turn_ends=2.5)
    await conversation.bot_answers(["Hi."], first_token=2.7, first_audio=2.9, speaks=(3.0, 3.5))
    await conversation.push(6.2, VADUserStartedSpeakingFrame(start_secs=0.2))
    await conversation.push(6.5, VADUserStoppedSpeakingFrame(stop_secs=0.2))
    assert len(conversation.recorder.turns) == 2
    (turn,) = conversation.recorder.completed_turns()
    assert turn.user_text.strip() == "hello"


async def test_transcript_without_vad_starts_a_turn():
    conversation = Conversation()
    await conversation.push(1.0, UserStartedSpeakingFrame())
    await conversation.push(1.1, TranscriptionFrame(text="typed", user_id="user", timestamp="t"), conversation.stt)
    await conversation.push(1.2, UserStoppedSpeakingFrame())
    (turn,) = conversation.recorder.completed_turns()
    assert turn.user_started_s == pytest.approx(1.0)
    assert turn.user_text.strip() == "typed"
    assert turn.user_stopped_s is None
    assert turn.voice_to_voice_ms is None


async def test_ttfb_metrics_by_role():
    conversation = Conversation(roles={"Whisper#0": "stt", "SmolLM#0": "llm", "Piper#0": "tts"})
    await conversation.user_says("hello", speech=(1.0, 2.0), turn_ends=2.5)

    def metrics(*items: tuple[str, float]) -> MetricsFrame:
        return MetricsFrame(data=[TTFBMetricsData(processor=p, value=v) for p, v in items])

    await conversation.push(2.6, metrics(("Whisper#0", 0.0), ("SmolLM#0", 0.1234), ("Other#0", 0.5)))
    await conversation.push(2.8, metrics(("SmolLM#0", 0.9), ("Piper#0", 0.05)))
    (turn,) = conversation.recorder.turns
    assert turn.ttfb_ms == {"llm": 123.4, "tts": 50.0}
    assert turn.to_dict()["ttfb_ms"] == {"stt": 0.0, "llm": 123.4, "tts": 50.0}


async def test_metrics_before_any_turn_are_ignored():
    conversation = Conversation(roles={"SmolLM#0": "llm"})
    await conversation.push(0.5, MetricsFrame(data=[TTFBMetricsData(processor="SmolLM#0", value=0.2)]))
    assert conversation.recorder.turns == []


async def test_times_are_never_negative():
    conversation = Conversation()
    await conversation.push(0.1, VADUserStartedSpeakingFrame(start_secs=0.2))
    await conversation.push(0.15, VADUserStoppedSpeakingFrame(stop_secs=0.2))
    (turn,) = conversation.recorder.turns
    assert turn.user_started_s == 0.0
    assert turn.user_stopped_s == 0.0


# --- summarize --------------------------------------------------------------------------------


def _answered(voice_to_voice_s: float) -> Turn:
    return Turn(user_text="x", user_stopped_s=10.0, bot_started_s=10.0 + voice_to_voice_s)


def test_summarize_known_values():
    turns = [_answered(v) for v in (0.5, 3.0, 1.0, 2.0, 1.5)]
    turns.append(Turn(user_text="no answer", user_stopped_s=20.0))
    summary = summarize(turns)
    assert summary["turns"] == 6
    assert summary["answered"] == 5
    assert summary["voice_to_voice_ms"] == {"p50": 1500.0, "p90": 3000.0, "mean": 1600.0, "max": 3000.0}
    # No stage moments were recorded: no stage has statistics.
    assert summary["stages_ms"] == {stage: None for stage in STAGES}


def test_summarize_even_count_median():
    summary = summarize([_answered(v) for v in (0.1, 0.2, 0.3, 0.4)])
    assert summary["voice_to_voice_ms"]["p50"] == pytest.approx(250.0)
    assert summary["voice_to_voice_ms"]["mean"] == pytest.approx(250.0)
    assert summary["voice_to_voice_ms"]["max"] == pytest.approx(400.0)


async def test_summarize_stages():
    conversation = Conversation()
    # (turn ends, first token, first audio, bot starts) after the user stops, in seconds.
    timings = [(0.5, 0.8, 1.0, 1.1), (0.9, 1.4, 1.7, 1.9), (0.6, 1.1, 1.4, 1.5)]
    for n, (ends, token, audio, speaks) in enumerate(timings):
        t0 = 10.0 * (n + 1)  # the user stops speaking at t0
        await conversation.user_says(f"turn {n}", speech=(t0 - 1, t0), turn_ends=t0 + ends)
        await conversation.bot_answers(
            ["Yes."], first_token=t0 + token, first_audio=t0 + audio, speaks=(t0 + speaks, t0 + speaks + 0.5)
        )
    turns = conversation.recorder.completed_turns()
    assert [t.voice_to_voice_ms for t in turns] == pytest.approx([1100.0, 1900.0, 1500.0])

    summary = summarize(turns)
    assert summary["turns"] == summary["answered"] == 3
    assert summary["voice_to_voice_ms"] == pytest.approx({"p50": 1500.0, "p90": 1900.0, "mean": 1500.0, "max": 1900.0})
    stages = summary["stages_ms"]
    assert list(stages) == list(STAGES)
    assert stages["llm_first_token"] == pytest.approx({"p50": 500.0, "p90": 500.0, "mean": 433.3, "max": 500.0})
    assert stages["tts_first_audio"] == pytest.approx({"p50": 300.0, "p90": 300.0, "mean": 266.7, "max": 300.0})
    assert stages["transport"] == pytest.approx({"p50": 100.0, "p90": 200.0, "mean": 133.3, "max": 200.0})
    for stage in PRE_LLM_STAGES:
        values = sorted(t.stages_ms()[stage] for t in turns)
        assert stages[stage]["p50"] == pytest.approx(statistics.median(values))
        assert stages[stage]["max"] == pytest.approx(values[-1])
    for turn in turns:
        assert sum(turn.stages_ms().values()) == pytest.approx(turn.voice_to_voice_ms, abs=0.3)


def test_summarize_skips_unknown_stages():
    complete = Turn(user_text="x", user_stopped_s=1.0, bot_started_s=2.0)
    for name in ("vad_stopped_s", "transcribed_s", "turn_ended_s", "first_token_s", "first_audio_s"):
        if hasattr(complete, name):
            setattr(complete, name, 1.5)
    partial = Turn(user_text="y", user_stopped_s=1.0, bot_started_s=3.0)
    summary = summarize([complete, partial])
    assert summary["voice_to_voice_ms"]["p50"] == pytest.approx(1500.0)
    # Only the complete turn has a first token: the stage's statistics come from it alone.
    assert summary["stages_ms"]["llm_first_token"] == {"p50": 0.0, "p90": 0.0, "mean": 0.0, "max": 0.0}
    assert summary["stages_ms"]["transport"]["max"] == pytest.approx(500.0)


def test_summarize_nothing():
    summary = summarize([])
    assert summary == {
        "turns": 0,
        "answered": 0,
        "voice_to_voice_ms": None,
        "stages_ms": {stage: None for stage in STAGES},
    }
