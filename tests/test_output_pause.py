"""OutputPause: what an output transport may still play after a pause or an interruption."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import Frame, InterruptionFrame, OutputAudioRawFrame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameProcessor

from vivavoce.frames import BotOutputPauseFrame
from vivavoce.transports.output_pause import OutputPause

AUDIO = b"\x01\x00" * 160


class Output(FrameProcessor):
    """Stands in for an output transport: records what is queued back to it."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[Frame] = []

    async def queue_frame(self, frame, direction=None, callback=None) -> None:  # type: ignore[override]
        self.queued.append(frame)


def tts(context_id: str = "answer") -> TTSAudioRawFrame:
    return TTSAudioRawFrame(AUDIO, 8000, 1, context_id=context_id)


async def test_audio_made_before_an_interruption_is_consumed_and_later_audio_plays():
    pause = OutputPause(Output())
    late = tts()  # made before the interruption, arriving after it
    assert not pause.on_frame(InterruptionFrame())
    assert pause.on_frame(late)  # consumed: not forwarded to pipecat's output
    assert not pause.on_frame(tts("next answer"))
    assert pause.interruptions == 1


async def test_uninterruptible_audio_always_plays():
    pause = OutputPause(Output())
    kept = tts()
    kept.interruptible = False
    pause.on_frame(InterruptionFrame())
    assert not pause.on_frame(kept)
    assert not pause.overtaken(kept)


async def test_an_overtaken_frame_taken_for_writing_ends_the_speech_pipecat_started_for_it():
    output = Output()
    pause = OutputPause(output)
    taken, plain = tts(), OutputAudioRawFrame(AUDIO, 8000, 1)
    pause.on_frame(InterruptionFrame())
    assert pause.overtaken(taken) and pause.overtaken(plain)
    assert await pause.drop_overtaken(taken) is False
    assert await pause.drop_overtaken(plain) is False
    # Only TTS audio marks the bot speaking until a TTSStoppedFrame: one is queued for it alone.
    assert [type(f) for f in output.queued] == [TTSStoppedFrame]
    assert output.queued[0].context_id == "answer"


async def test_a_pause_holds_the_writer_until_resumed():
    pause = OutputPause(Output())
    assert await pause.may_play()
    assert pause.on_frame(BotOutputPauseFrame(paused=True)) and pause.paused
    held = asyncio.create_task(pause.may_play())
    await asyncio.sleep(0.01)
    assert not held.done()
    assert pause.on_frame(BotOutputPauseFrame(paused=False))
    assert await held  # resumed: the held frame plays


async def test_an_interruption_during_a_pause_drops_the_held_frame():
    pause = OutputPause(Output())
    pause.on_frame(BotOutputPauseFrame(paused=True))
    held = asyncio.create_task(pause.may_play())
    await asyncio.sleep(0.01)
    pause.on_frame(InterruptionFrame())
    assert not pause.paused
    assert await held is False
    assert await pause.may_play()  # what comes next plays
