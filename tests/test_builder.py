"""Where audio stops in a built pipeline: the caller's after the last step that uses it, the bot's after
the output transport. Everything past those points would only pay for hops nobody reads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.aggregators.llm_response_universal import LLMAssistantAggregator, LLMUserAggregator
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import run_test
from pipecat.transports.base_transport import BaseTransport

from vivavoce.botfile import load_bot
from vivavoce.builder import build_conversation
from vivavoce.processors.audio_end import AudioEnd

HEADER = """\
version: 1
name: test
transport:
  kind: file
pipeline:
"""
STT = """\
  - kind: deepgram
    api_key: ${DEEPGRAM_API_KEY}
"""
LLM = """\
  - kind: openai
    base_url: http://127.0.0.1:9/v1
    model: any
"""


class Passthrough(FrameProcessor):
    """Stands in for a transport's input or output processor."""


class StandInTransport(BaseTransport):
    """Just the two ends: the builder only places them."""

    def __init__(self) -> None:
        super().__init__()
        self._input, self._output = Passthrough(name="transport-in"), Passthrough(name="transport-out")

    def input(self) -> FrameProcessor:
        return self._input

    def output(self) -> FrameProcessor:
        return self._output


def steps_of(tmp_path: Path, pipeline: str) -> tuple[list[FrameProcessor], StandInTransport]:
    path = tmp_path / "bot.yaml"
    path.write_text(HEADER + textwrap.dedent(pipeline), encoding="utf-8")
    transport = StandInTransport()
    conversation = build_conversation(
        load_bot(path, environ={"DEEPGRAM_API_KEY": "not-used"}), transport, audio_out_sample_rate=16000
    )
    return conversation.pipeline.processors, transport


def ends(steps: list[FrameProcessor], frame_type: type) -> list[int]:
    return [i for i, s in enumerate(steps) if isinstance(s, AudioEnd) and s._frame_type is frame_type]


def test_caller_audio_ends_after_the_user_aggregator(tmp_path):
    tts = "  - kind: chatterbox\n    url: ws://127.0.0.1:9/v1/stream\n"
    steps, _ = steps_of(tmp_path, STT + LLM + tts)
    user = next(i for i, s in enumerate(steps) if isinstance(s, LLMUserAggregator))
    assert ends(steps, InputAudioRawFrame) == [user + 1]  # the LLM and Chatterbox never see it


def test_caller_audio_reaches_a_later_stage_that_hears_it(tmp_path):
    # CSM takes the user's spoken audio as context, so the caller's audio must reach it.
    tts = "  - kind: csm\n    url: ws://127.0.0.1:9/v1/stream\n"
    steps, _ = steps_of(tmp_path, STT + LLM + tts)
    csm = next(i for i, s in enumerate(steps) if type(s).__name__ == "CSMTTSService")
    assert ends(steps, InputAudioRawFrame) == [csm + 1]


def test_bot_audio_ends_after_the_output_transport(tmp_path):
    tts = "  - kind: chatterbox\n    url: ws://127.0.0.1:9/v1/stream\n"
    steps, transport = steps_of(tmp_path, STT + LLM + tts)
    output = steps.index(transport.output())
    assert ends(steps, OutputAudioRawFrame) == [output + 1]
    # The assistant aggregator still follows, so it records what was actually played.
    assert isinstance(steps[output + 2], LLMAssistantAggregator)


@pytest.mark.parametrize("direction", [FrameDirection.DOWNSTREAM, FrameDirection.UPSTREAM])
async def test_audio_end_consumes_only_its_type_downstream(direction):
    frames = [InputAudioRawFrame(b"\0\0" * 160, 8000, 1), OutputAudioRawFrame(b"\0\0" * 160, 8000, 1)]
    passed = (
        [OutputAudioRawFrame] if direction == FrameDirection.DOWNSTREAM else [InputAudioRawFrame, OutputAudioRawFrame]
    )
    down, up = await run_test(
        AudioEnd(InputAudioRawFrame),
        frames_to_send=frames,
        frames_to_send_direction=direction,
        expected_down_frames=passed if direction == FrameDirection.DOWNSTREAM else [],
        expected_up_frames=passed if direction == FrameDirection.UPSTREAM else [],
    )
    assert len(down if direction == FrameDirection.DOWNSTREAM else up) == len(passed)
