"""Barge-in: the backchannel test, the BargeInController's decisions, and the local bot on real speech.

Unit tests drive the controller with the frames it sees in a pipeline (the bot's speaking state comes
upstream from the output transport; VAD and transcripts come downstream). End-to-end tests play beckett.wav
(real human speech) and Piper backchannels to bots/local.yaml through the file transport, in real time,
and read the bot's audio off the output track (aligned with the input).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMContextAssistantTurnFrame,
    StartFrame,
    TextFrame,
    TranscriptionFrame,
    UserBackchannelFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame
from pipecat.workers.runner import WorkerRunner

from bargein_support import (
    Script,
    backchannel,
    bot_variant,
    joined,
    loud_frames,
    loud_secs,
    phrases,
    run_with_pauses,
)
from vivavoce.frames import BotOutputPauseFrame
from vivavoce.processors.barge_in import COMMIT_WAIT_SECS, BargeInController, TranscriptLag, is_backchannel

REPO = Path(__file__).resolve().parents[1]
UP = FrameDirection.UPSTREAM
DOWN = FrameDirection.DOWNSTREAM


# --- is_backchannel --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["Mm-hm.", "mhm", "Yeah.", "Yeah, okay.", "Uh-huh!", "uh huh", "I see.", "Got it.", "Right, right.",
     "All right", "Oh, really?", "Sure", "M-M-H-M.", "Hmm, mm.", "", "  ...  "],
)  # fmt: skip
def test_acknowledgements_are_backchannels(text):
    assert is_backchannel(text)


@pytest.mark.parametrize(
    "text",
    ["Yeah but wait", "Try again.", "Okay so what about tomorrow?", "No matter.", "Stop.", "nothing",
     "I see a problem", "okay-ish", "yeahs"],
)  # fmt: skip
def test_anything_more_is_not_a_backchannel(text):
    assert not is_backchannel(text)


# --- BargeInController -----------------------------------------------------------------------------


class Capture(FrameProcessor):
    """Records (seconds since the run began, frame) for frames passing in one direction."""

    def __init__(self, direction: FrameDirection, started: list[float]):
        super().__init__(enable_direct_mode=True)
        self.direction = direction
        self.started = started
        self.frames: list[tuple[float, Frame]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self.direction and not isinstance(frame, (StartFrame, EndFrame)):
            self.frames.append((time.monotonic() - self.started[0], frame))
        await self.push_frame(frame, direction)


class Driven:
    """What the controller let through or produced: downstream, upstream, and its events."""

    def __init__(self, down, up, events):
        self.down: list[tuple[float, Frame]] = down
        self.up: list[tuple[float, Frame]] = up
        self.events: list[tuple[str, str | None]] = events

    def down_of(self, *types: type) -> list[Frame]:
        return [f for _, f in self.down if isinstance(f, types)]

    def at(self, frame: Frame) -> float:
        return next(t for t, f in self.down if f is frame)


async def drive(controller: BargeInController, steps: list) -> Driven:
    """Run ``controller`` between two captures; each step is a frame (downstream), ``(UP, frame)``
    (upstream, entering after the controller, as from the output transport) or a ``SleepFrame``."""
    started = [time.monotonic()]
    source, sink = Capture(UP, started), Capture(DOWN, started)
    worker = PipelineWorker(Pipeline([source, controller, sink]), cancel_on_idle_timeout=False)
    events: list[tuple[str, str | None]] = []
    for name in ("on_bot_paused", "on_bot_resumed", "on_bot_interrupted"):

        async def handler(_processor, reason=None, _name=name):
            events.append((_name, reason))

        controller.add_event_handler(name, handler)
    ready = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker, _frame):
        ready.set()

    async def feed() -> None:
        await asyncio.wait_for(ready.wait(), timeout=2.0)
        started[0] = time.monotonic()
        for step in steps:
            if isinstance(step, SleepFrame):
                await asyncio.sleep(step.sleep)
            elif isinstance(step, tuple):
                await worker.queue_frame(step[1], step[0])
            else:
                await worker.queue_frame(step, DOWN)
            await asyncio.sleep(0.01)  # keep the order between directions
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), feed()), timeout=10)
    return Driven(sink.frames, source.frames, events)


def transcript(text: str) -> TranscriptionFrame:
    return TranscriptionFrame(text=text, user_id="user", timestamp="now")


def bot_speaks() -> tuple[FrameDirection, Frame]:
    return (UP, BotStartedSpeakingFrame())


def controller(**kwargs) -> BargeInController:
    settings = {"min_speech_secs": 0.3, "resume_within_secs": 0.8, "vad_stop_secs": 0.1} | kwargs
    return BargeInController(**settings)


async def test_a_backchannel_pauses_the_bot_then_resumes_it_and_stays_out_of_the_context():
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.15),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.05), transcript("Mm-hm."), SleepFrame(0.1)],
    )  # fmt: skip

    decisions = run.down_of(BotOutputPauseFrame, UserBackchannelFrame, InterruptionFrame, TranscriptionFrame)
    assert [type(f) for f in decisions] == [BotOutputPauseFrame, BotOutputPauseFrame, UserBackchannelFrame]
    assert [decisions[0].paused, decisions[1].paused] == [True, False]
    assert decisions[2].text == "Mm-hm."
    assert not [f for _, f in run.up if isinstance(f, InterruptionFrame)]
    assert [name for name, _ in run.events] == ["on_bot_paused", "on_bot_resumed"]
    # The VAD frames still reach the user aggregator (it needs them for its own turn tracking).
    assert len(run.down_of(VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame)) == 2


async def test_words_taken_for_a_backchannel_go_on_as_one_once_the_resume_window_is_over():
    run = await drive(
        controller(resume_within_secs=0.5),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), transcript("Yeah."), SleepFrame(0.8)],
    )  # fmt: skip

    resumed = run.down_of(BotOutputPauseFrame)[1]
    backchannel = run.down_of(UserBackchannelFrame)
    assert [f.text for f in backchannel] == ["Yeah."]
    # Held for the window (a sleep never ends early). A session ending sooner sends it first (the tests
    # above end 0.1 s after the words).
    assert run.at(backchannel[0]) - run.at(resumed) >= 0.45
    assert not run.down_of(TranscriptionFrame)


async def test_words_taken_for_a_backchannel_join_the_turn_when_the_user_goes_on():
    # "Okay." over the bot resumes it; then "Sheila in Texas" 0.3 s later: the user is talking, and the
    # acknowledgement is the start of their turn.
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), transcript("Okay."), SleepFrame(0.3),
         VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1), VADUserStoppedSpeakingFrame(stop_secs=0.1),
         SleepFrame(0.02), transcript("Sheila in Texas."), SleepFrame(0.1)],
    )  # fmt: skip

    assert [p.paused for p in run.down_of(BotOutputPauseFrame)] == [True, False]
    assert len(run.down_of(InterruptionFrame)) == 1
    assert [f.text for f in run.down_of(TranscriptionFrame)] == ["Okay.", "Sheila in Texas."]
    assert not run.down_of(UserBackchannelFrame)
    assert run.events[-1] == ("on_bot_interrupted", "speaking again right after a backchannel")


@pytest.mark.parametrize("said", ["And I'm.", "And short,", "Ensure.", "So"])
async def test_short_words_that_are_no_acknowledgement_keep_the_bot_paused_while_the_user_goes_on(said):
    # bench/conversation.py: "And I'm | Sheila in Texas" (a phone call) and "in short, | the period was so
    # far" (a list, which tiny.en heard as "and short" or "ensure") over a late reply. The first words
    # resumed the bot at once, and it played into the user's pause until they went on.
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), transcript(said), SleepFrame(0.5),
         VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1), VADUserStoppedSpeakingFrame(stop_secs=0.1),
         SleepFrame(0.02), transcript("The period was so far."), SleepFrame(0.1)],
    )  # fmt: skip

    assert [p.paused for p in run.down_of(BotOutputPauseFrame)] == [True]  # never resumed
    assert len(run.down_of(InterruptionFrame)) == 1
    assert [f.text for f in run.down_of(TranscriptionFrame)] == [said, "The period was so far."]
    assert not run.down_of(UserBackchannelFrame)
    assert run.events[-1] == ("on_bot_interrupted", "going on after short words")


async def test_short_words_that_are_no_acknowledgement_resume_the_bot_once_the_user_stays_quiet():
    run = await drive(
        controller(resume_within_secs=0.6),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), transcript("And short,"), SleepFrame(1.0)],
    )  # fmt: skip

    pauses = run.down_of(BotOutputPauseFrame)
    assert [p.paused for p in pauses] == [True, False]
    stopped = run.down_of(VADUserStoppedSpeakingFrame)[0]
    assert run.at(pauses[1]) - run.at(stopped) >= 0.6 - 0.1 - 0.02  # quiet for the window after the words
    assert not run.down_of(InterruptionFrame)
    assert [f.text for f in run.down_of(UserBackchannelFrame)] == ["And short,"]
    assert not run.down_of(TranscriptionFrame)
    assert run.events[-1] == ("on_bot_resumed", "'And short,' did not go on")


async def test_speech_that_goes_on_interrupts_while_the_user_is_still_talking():
    control = controller(min_speech_secs=0.3, vad_stop_secs=0.1)
    run = await drive(
        control,
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.6),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), transcript("Try again, fail again, fail better.")],
    )  # fmt: skip

    pauses = run.down_of(BotOutputPauseFrame)
    assert [p.paused for p in pauses] == [True]  # never resumed
    interruption = run.down_of(InterruptionFrame)
    assert len(interruption) == 1
    assert len([f for _, f in run.up if isinstance(f, InterruptionFrame)]) == 1  # both ways
    # Decided by length: min_speech_secs + vad_stop_secs after the pause, before the VAD stopped.
    waited = run.at(interruption[0]) - run.at(pauses[0])
    assert 0.38 <= waited < 0.75, waited
    vad_stop = run.down_of(VADUserStoppedSpeakingFrame)[0]
    assert run.at(interruption[0]) < run.at(vad_stop)
    # What was said goes to the LLM as a normal transcript.
    assert [f.text for f in run.down_of(TranscriptionFrame)] == ["Try again, fail again, fail better."]
    assert not run.down_of(UserBackchannelFrame)
    assert run.events[-1][0] == "on_bot_interrupted" and "longer" in run.events[-1][1]


@pytest.mark.parametrize("said", ["Stop.", "Wait, wait.", "No.", "Hold on", "Mm-hm, but", "Sorry?"])
async def test_a_stop_word_in_a_short_utterance_vetoes_the_resume(said):
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), transcript(said), SleepFrame(0.1)],
    )  # fmt: skip

    assert [p.paused for p in run.down_of(BotOutputPauseFrame)] == [True]
    assert len(run.down_of(InterruptionFrame)) == 1
    assert [f.text for f in run.down_of(TranscriptionFrame)] == [said]  # the LLM hears it
    assert not run.down_of(UserBackchannelFrame)
    assert run.events[-1][0] == "on_bot_interrupted" and "words" in run.events[-1][1]


class Reading:
    """A ``TranscriptionFrame.result`` that offers a second reading, as the whisper kind's does."""

    def __init__(self, second: str):
        self.second = second
        self.asked = 0

    async def as_backchannel(self) -> str:
        self.asked += 1
        return self.second


@pytest.mark.parametrize(
    ("heard", "second", "interrupts"),
    [("And then make them.", " Mm-hmm.", False),  # a misread hum: the bot goes on
     ("Try again.", " Try again. Try again.", True),  # words either way: a real interruption
     ("Try again.", None, True)],  # no second reading on offer: the words decide
)  # fmt: skip
async def test_words_in_short_speech_over_the_bot_must_survive_the_second_reading(heard, second, interrupts):
    said = transcript(heard)
    if second is not None:
        said.result = Reading(second)
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), said, SleepFrame(0.1)],
    )  # fmt: skip

    assert len(run.down_of(InterruptionFrame)) == int(interrupts)
    assert [p.paused for p in run.down_of(BotOutputPauseFrame)] == ([True] if interrupts else [True, False])
    assert [f.text for f in run.down_of(UserBackchannelFrame)] == ([] if interrupts else [heard])
    if second is not None:
        assert said.result.asked == 1


@pytest.mark.parametrize("said", ["Oh, hello.", "Hello?", "Wait."])
async def test_a_greeting_over_the_bot_takes_the_floor(said):
    # "Oh, hello." over a long reply, from a real phone call: one word of meaning, once taken for "oh".
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), transcript(said), SleepFrame(0.1)],
    )  # fmt: skip

    assert len(run.down_of(InterruptionFrame)) == 1
    assert not run.down_of(UserBackchannelFrame)


async def test_a_stop_word_needs_no_second_reading():
    said = transcript("Wait.")
    said.result = Reading(" Mm-hmm.")
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), said, SleepFrame(0.1)],
    )  # fmt: skip

    assert len(run.down_of(InterruptionFrame)) == 1
    assert said.result.asked == 0


@pytest.mark.parametrize("said", ["Stopwatch.", "I know.", "nothing", "Hey-ho"])
async def test_stop_words_match_whole_words_only(said):
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), transcript(said), SleepFrame(1.0)],
    )  # fmt: skip

    assert [p.paused for p in run.down_of(BotOutputPauseFrame)] == [True, False]
    assert not run.down_of(InterruptionFrame)


async def test_a_short_sound_with_no_transcript_resumes_at_the_end_of_the_resume_window():
    """Noise: the STT found no words in it, so the bot resumes (it is not cut off and left silent)."""
    run = await drive(
        controller(resume_within_secs=0.5),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.7)],
    )  # fmt: skip

    pause = run.down_of(BotOutputPauseFrame)
    assert [p.paused for p in pause] == [True, False]
    assert not run.down_of(InterruptionFrame)
    assert 0.45 <= run.at(pause[1]) - run.at(pause[0]) < 0.85
    assert "no words" in run.events[-1][1]


async def test_words_that_come_after_the_resume_window_stop_the_bot_without_resuming_it_first():
    # A loaded machine: the transcript came 0.35 s after the VAD stopped, past the end of the resume window.
    # The bot had resumed "for lack of words" and played into the user's sentence until the words came.
    run = await drive(
        controller(resume_within_secs=0.5),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.25),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.35), transcript("From Chicago also."),
         SleepFrame(0.1)],
    )  # fmt: skip

    assert [p.paused for p in run.down_of(BotOutputPauseFrame)] == [True]  # never resumed
    assert len(run.down_of(InterruptionFrame)) == 1
    assert [name for name, _ in run.events] == ["on_bot_paused", "on_bot_interrupted"]
    assert [f.text for f in run.down_of(TranscriptionFrame)] == ["From Chicago also."]


class SlowReading(Reading):
    """A second reading that takes a while, as Whisper's re-decode does on a loaded machine."""

    async def as_backchannel(self) -> str:
        await asyncio.sleep(0.2)
        return await super().as_backchannel()


async def test_words_being_read_when_the_wait_for_words_ends_decide_before_any_resume():
    # bench/conversation.py: "I need the design." came 25 ms before the wait for words ended; while its second
    # reading ran, the deadline resumed the bot "for lack of words", and the words stopped it again 80 ms later.
    said = transcript("I need the design.")
    said.result = SlowReading(" I need the design.")
    run = await drive(
        controller(resume_within_secs=0.5),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.4), said, SleepFrame(0.4)],
    )  # fmt: skip

    assert [p.paused for p in run.down_of(BotOutputPauseFrame)] == [True]  # never resumed
    assert len(run.down_of(InterruptionFrame)) == 1
    assert [name for name, _ in run.events] == ["on_bot_paused", "on_bot_interrupted"]


def test_the_wait_for_words_follows_the_stt_as_seen():
    lag = TranscriptLag()
    assert lag.wait() == TranscriptLag.UNSEEN_SECS
    lag.seen(0.05)  # a fast STT: the shortest wait
    assert lag.wait() == TranscriptLag.BOUNDS[0]
    lag.seen(0.44)  # one slow transcript: a margin over it
    assert lag.wait() == pytest.approx(TranscriptLag.MARGIN * 0.44)
    lag.seen(30.0)  # a transcript of other speech (a streaming STT): not a lag
    assert lag.wait() == pytest.approx(TranscriptLag.MARGIN * 0.44)
    lag.seen(0.9)
    assert lag.wait() == TranscriptLag.BOUNDS[1]
    for _ in range(8):  # the slow ones age out
        lag.seen(0.1)
    assert lag.wait() == TranscriptLag.BOUNDS[0]


async def test_without_an_stt_a_short_sound_resumes_when_the_vad_stops():
    run = await drive(
        controller(has_stt=False),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.9)],
    )  # fmt: skip

    assert [p.paused for p in run.down_of(BotOutputPauseFrame)] == [True, False]
    assert not run.down_of(InterruptionFrame)


def reply_ends() -> tuple[FrameDirection, Frame]:
    """The assistant aggregator's broadcast once the reply's last audio has been written."""
    return (UP, LLMContextAssistantTurnFrame(text="That is all.", timestamp="now"))


async def test_speech_after_the_reply_ended_interrupts_at_once_without_pausing():
    run = await drive(
        controller(),
        [bot_speaks(), reply_ends(), (UP, BotStoppedSpeakingFrame()), VADUserStartedSpeakingFrame(start_secs=0.2),
         SleepFrame(0.1), VADUserStoppedSpeakingFrame(stop_secs=0.1), transcript("Yeah."), SleepFrame(0.1)],
    )  # fmt: skip

    assert not run.down_of(BotOutputPauseFrame)
    assert len(run.down_of(InterruptionFrame)) == 1
    assert [f.text for f in run.down_of(TranscriptionFrame)] == ["Yeah."]  # a normal turn: it may answer a question


async def test_a_backchannel_in_a_gap_inside_the_reply_pauses_it_and_the_reply_goes_on():
    # The first phrase has played and the next is still being synthesized: pipecat says the bot stopped.
    run = await drive(
        controller(),
        [bot_speaks(), (UP, BotStoppedSpeakingFrame()), VADUserStartedSpeakingFrame(start_secs=0.2),
         SleepFrame(0.1), VADUserStoppedSpeakingFrame(stop_secs=0.1), transcript("Mm-hm."), SleepFrame(0.1)],
    )  # fmt: skip

    assert [p.paused for p in run.down_of(BotOutputPauseFrame)] == [True, False]  # the next phrase waited
    assert not run.down_of(InterruptionFrame)
    assert [f.text for f in run.down_of(UserBackchannelFrame)] == ["Mm-hm."]
    assert not run.down_of(TranscriptionFrame)


async def test_speech_right_after_a_barge_in_by_words_is_the_users_turn_not_a_backchannel():
    # bench/conversation.py, a sentence split by a pause said over a late reply: "It was the age of" stopped
    # the bot by its words; "wisdom", 0.8 s later, was taken for a backchannel over a reply that had ended:
    # the word never reached the turn, and the answer held for it waited 5 s for a verdict.
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), transcript("It was the age of."),
         SleepFrame(0.05), (UP, BotStoppedSpeakingFrame()), SleepFrame(0.3),
         VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1), VADUserStoppedSpeakingFrame(stop_secs=0.1),
         SleepFrame(0.02), transcript("wisdom."), SleepFrame(0.1)],
    )  # fmt: skip

    assert [p.paused for p in run.down_of(BotOutputPauseFrame)] == [True]  # only the first speech paused it
    assert [f.text for f in run.down_of(TranscriptionFrame)] == ["It was the age of.", "wisdom."]
    assert not run.down_of(UserBackchannelFrame)
    assert len(run.down_of(InterruptionFrame)) == 2  # the barge-in, then the new turn's, as pipecat does


async def test_words_that_stop_the_bot_reach_the_turn_after_the_context_keeps_what_it_said():
    # bench/conversation.py: "Try again." stopped a reply by its words, and the turn answered at once; its prompt
    # was read before the assistant aggregator, at the end of the pipeline, had added the reply as heard. The
    # LLM answered as if it had said nothing, with the user's two utterances run together as one message.
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), transcript("Try again."),
         SleepFrame(0.1), reply_ends(), SleepFrame(0.1)],
    )  # fmt: skip

    (words,) = run.down_of(TranscriptionFrame)
    committed = next(t for t, f in run.up if isinstance(f, LLMContextAssistantTurnFrame))
    assert len(run.down_of(InterruptionFrame)) == 1
    assert run.at(words) >= committed


async def test_words_that_stop_the_bot_wait_for_the_context_only_so_long():
    # Nothing of the reply was heard yet: the assistant aggregator adds nothing and says nothing. The words
    # still reach the turn, after the interruption, once the wait is over (long before the next frame).
    later = TextFrame("later")
    run = await drive(
        controller(),
        [bot_speaks(), VADUserStartedSpeakingFrame(start_secs=0.2), SleepFrame(0.1),
         VADUserStoppedSpeakingFrame(stop_secs=0.1), SleepFrame(0.02), transcript("Try again."),
         SleepFrame(COMMIT_WAIT_SECS + 1.0), later, SleepFrame(0.1)],
    )  # fmt: skip

    order = [f for _, f in run.down if isinstance(f, (InterruptionFrame, TranscriptionFrame, TextFrame))]
    assert [type(f).__name__ for f in order] == ["InterruptionFrame", "TranscriptionFrame", "TextFrame"]
    assert order[-1] is later


async def test_a_long_silence_after_the_bot_ends_a_reply_whose_end_never_came(monkeypatch):
    monkeypatch.setattr("vivavoce.processors.barge_in.MID_REPLY_GAP_SECS", 0.2)
    run = await drive(
        controller(),
        [bot_speaks(), (UP, BotStoppedSpeakingFrame()), SleepFrame(0.3), VADUserStartedSpeakingFrame(start_secs=0.2),
         SleepFrame(0.1), VADUserStoppedSpeakingFrame(stop_secs=0.1), transcript("Mm-hm."), SleepFrame(0.1)],
    )  # fmt: skip

    assert not run.down_of(BotOutputPauseFrame)
    assert len(run.down_of(InterruptionFrame)) == 1


async def test_a_backchannel_transcript_without_a_vad_pause_still_stays_out_of_the_context():
    # e.g. said in a gap between the bot's sentences, too short for the VAD to fire while it spoke
    run = await drive(
        controller(), [bot_speaks(), transcript("Yeah."), transcript("What time is it?"), SleepFrame(0.05)]
    )

    assert [f.text for f in run.down_of(UserBackchannelFrame)] == ["Yeah."]
    assert [f.text for f in run.down_of(TranscriptionFrame)] == ["What time is it?"]
    assert not run.down_of(BotOutputPauseFrame, InterruptionFrame)


# --- end to end: bots/local.yaml on real speech ----------------------------------------------------

FIRST_ANSWER_SECS = 0.8  # "Ever tried." ends -> the bot starts answering, about (bench/local_latency.py)
INTO_ANSWER_SECS = 1.2  # where the user talks over the answer


def over_the_answer(speech) -> tuple[Script, tuple[float, float], tuple[float, float]]:
    """Beckett's "Ever tried.", then ``speech`` INTO_ANSWER_SECS into the bot's answer, then quiet."""
    script = Script()
    script.silence(0.5)
    first = script.say(phrases()[0])
    script.silence(first[1] + FIRST_ANSWER_SECS + INTO_ANSWER_SECS - script.secs - 0.05)
    over = script.say(speech)
    script.silence(1.5)
    return script, first, over


def answer_playing_at(turns, at: float):
    playing = [t for t in turns if t.bot_started_s is not None and t.bot_started_s <= at]
    assert playing, f"the bot had not started answering by {at:.2f}s: {[t.to_dict() for t in turns]}"
    answer = playing[-1]
    assert answer.bot_stopped_s is None or answer.bot_stopped_s > at, "the answer ended before the test spoke"
    return answer


@pytest.mark.e2e
async def test_real_speech_over_the_answer_stops_the_bot_within_its_pause(local_bot):
    # "Try again. Fail again. Fail better." said without pausing: no stop word, so length decides.
    script, _, (onset, end) = over_the_answer(joined((3, 4, 5)))
    result, pauses = await run_with_pauses(local_bot, script.audio())

    answer = answer_playing_at(result.turns, onset)
    assert answer.interrupted
    barge = answer.barge_in
    assert onset < barge.vad_fired_s < onset + 0.6
    ms = barge.to_dict()
    assert ms["audible_stop"] <= 100, ms
    # Paused once, at the VAD, and never resumed over the user.
    assert [p for at, p in pauses if onset <= at <= end + 0.3] == [True]
    # The output track: the bot went quiet right after the VAD fired, and stayed quiet while the user spoke.
    loud = loud_frames(result.output_pcm)
    assert loud_secs(loud, barge.vad_fired_s + 0.1, end) == 0.0
    assert loud_secs(loud, onset - 0.5, onset) > 0.1  # it was audible just before
    # The interruption is the user's next turn: heard, and answered.
    later = [t for t in result.turns if t.user_started_s is not None and t.user_started_s >= onset - 0.1]
    assert later and "again" in " ".join(t.user_text.lower() for t in later)
    assert any(t.bot_started_s is not None and t.bot_started_s > end for t in later)


@pytest.mark.e2e
async def test_a_backchannel_over_the_answer_pauses_it_and_the_answer_goes_on(local_bot):
    script, _, (onset, end) = over_the_answer(backchannel("Mm-hm."))
    script.silence(4.0)
    result, pauses = await run_with_pauses(local_bot, script.audio())

    answer = answer_playing_at(result.turns, onset)
    turns = [t.to_dict() for t in result.turns]
    assert not answer.interrupted, turns
    assert [p for at, p in pauses if onset <= at <= end + 1.5] == [True, False], turns  # paused, then resumed
    loud = loud_frames(result.output_pcm)
    assert answer.bot_stopped_s is not None and answer.bot_stopped_s > end + 0.5
    assert loud_secs(loud, end, answer.bot_stopped_s) > 0.5  # the rest of the answer played
    # The "mm-hm" did not become a turn of the conversation: the bot answered once.
    assert sum(t.bot_started_s is not None for t in result.turns) == 1, turns


@pytest.mark.e2e
async def test_with_interruptions_disabled_the_bot_talks_over_the_user(local_bot, tmp_path):
    bot = bot_variant(REPO / "bots" / "local.yaml", tmp_path, enabled=False)
    script, _, (onset, end) = over_the_answer(joined((3, 4, 5)))
    result, pauses = await run_with_pauses(bot, script.audio())

    answer = answer_playing_at(result.turns, onset)
    assert not answer.interrupted and answer.barge_in is None
    assert not pauses
    loud = loud_frames(result.output_pcm)
    until = min(end, answer.bot_stopped_s or end)
    assert until > onset + 1.0, "the answer was too short to test"
    assert loud_secs(loud, onset + 0.5, until) >= 0.5 * (until - onset - 0.5)  # it kept talking


QUIET_WITHIN_SECS = 1.0
"""Speech onset -> the bot is silent in the output track: the VAD fires ~0.35 s after the onset and the
pause takes a frame or two (bench/bargein.py); the rest is slack for a slow machine."""


@pytest.mark.e2e
async def test_an_interruption_in_short_sentences_with_pauses_stops_the_bot(local_bot):
    # "Try again. Fail again. Fail better." with ~0.6 s between the sentences, as the speaker said them.
    script, _, (onset, end) = over_the_answer(joined((3, 4, 5), gap_secs=0.45))
    script.silence(3.0)
    result, pauses = await run_with_pauses(local_bot, script.audio())

    answer = answer_playing_at(result.turns, onset)
    turns = [t.to_dict() for t in result.turns]
    loud = loud_frames(result.output_pcm)
    assert loud_secs(loud, onset - 0.5, onset) > 0.1, turns  # it was audible as the user began
    # The bot went quiet soon after the user began, and stayed quiet through the three sentences and the
    # pauses between them (no resuming in a pause), until the user had finished.
    talked_over = loud_secs(loud, onset + QUIET_WITHIN_SECS, end)
    assert talked_over <= 0.1, (talked_over, pauses, turns)
    assert answer.interrupted, turns


@pytest.mark.e2e
async def test_a_slow_backchannel_over_the_answer_does_not_silence_the_bot(local_bot):
    # This "I see." (Piper, a little slow) is where tiny.en is least sure: pipecat's no-speech filter dropped
    # its words, Whisper's own rule (processors/whisper.py) mostly keeps them. It comes 2.5 s after the
    # question, so a slow first answer (the first session of a process) is already playing.
    script = Script()
    script.silence(0.5)
    script.say(phrases()[0])
    script.silence(2.5)
    onset, end = script.say(backchannel("I see.", length_scale=1.3))
    script.silence(4.0)
    result, pauses = await run_with_pauses(local_bot, script.audio())

    answer = answer_playing_at(result.turns, onset)
    turns = [t.to_dict() for t in result.turns]
    # The bot heard the sound over its answer (it paused), then resumed...
    over = [(at, p) for at, p in pauses if onset <= at]
    assert [p for _, p in over] == [True, False], (pauses, turns)
    # ...at the end of the resume window when the STT found no words in it, or sooner when it heard "I see"
    # (now the usual case), a backchannel: either way the sound did not silence the bot.
    # (The no-words path alone is pinned by test_a_short_sound_with_no_transcript_resumes_at_the_end_...)
    window = local_bot.spec.turn_taking.interruptions.resume_within_secs
    heard_words = any(t.backchannels or (t.user_started_s is not None and t.user_started_s >= onset - 0.3
                                         and t.user_text.strip()) for t in result.turns)  # fmt: skip
    if heard_words:
        assert over[1][0] - over[0][0] < window, (pauses, turns)
    else:
        assert over[1][0] - over[0][0] >= window - 0.2, (pauses, turns)
    assert not answer.interrupted, turns
    # The rest of the answer played after the sound...
    loud = loud_frames(result.output_pcm)
    assert answer.bot_stopped_s is not None and answer.bot_stopped_s > end + 0.5, turns
    assert loud_secs(loud, end, answer.bot_stopped_s) > 0.3, turns
    # ...and the sound was no turn of the conversation: the bot answered once.
    assert sum(t.bot_started_s is not None for t in result.turns) == 1, turns
