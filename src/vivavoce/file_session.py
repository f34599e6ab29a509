"""Run a bot on a recording: the headless local bot and the test harness."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import EndFrame

from vivavoce.botfile import Bot
from vivavoce.session import Session
from vivavoce.transports.file import FileTransport
from vivavoce.turns import Turn, summarize
from vivavoce.wav import InputAudio, write_wav

SETTLE_SECS = 2.0
"""Quiet time after the recording ends, with nothing in flight, before the run ends."""

MAX_TAIL_SECS = 60.0
"""The run ends at the latest this long after the recording ends."""


@dataclass
class FileRunResult:
    """What a run on a recording produced."""

    bot: Bot
    audio: InputAudio
    turns: list[Turn]
    output_pcm: np.ndarray
    output_sample_rate: int
    duration_secs: float
    pauses: list[tuple[float, bool]] = field(default_factory=list)
    """When the bot's audio was paused (True) and resumed (False), in timeline seconds."""
    failovers: dict[str, Any] = field(default_factory=lambda: {"failovers": [], "degraded": False})
    """The session's worker failovers and whether any lost state (``TurnRecorder.report_fields``)."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The LLM context at the end: the conversation as the bot will remember it."""

    def report(self) -> dict[str, Any]:
        """The JSON report (``turns`` with per-turn timing, plus a summary)."""
        return {
            "bot": str(self.bot.path),
            "input": str(self.audio.path),
            "input_sample_rate": self.audio.sample_rate,
            "input_channels": self.audio.channels,
            "input_duration_s": round(self.audio.duration_secs, 3),
            "run_duration_s": round(self.duration_secs, 3),
            "turns": [turn.to_dict() for turn in self.turns],
            "summary": summarize(self.turns),
            **self.failovers,
            "context": [{"role": m.get("role"), "content": m.get("content")} for m in self.messages],
        }

    def write(self, output: Path | None = None, report: Path | None = None) -> None:
        """Write the output WAV and/or the JSON report."""
        if output is not None:
            write_wav(output, self.output_pcm, self.output_sample_rate)
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(self.report(), indent=2) + "\n")


async def run_on_recording(
    bot: Bot,
    audio: InputAudio,
    *,
    settle_secs: float = SETTLE_SECS,
    max_tail_secs: float = MAX_TAIL_SECS,
) -> FileRunResult:
    """Play ``audio`` to ``bot`` in real time; end once it is consumed and the bot has finished."""
    transport = FileTransport(audio)
    session = Session(
        bot,
        transport,
        audio_out_sample_rate=transport.output_sample_rate,
        timeline=transport.timeline_secs,
        speech_onset=transport.speech_onset,
        idle_timeout_secs=None,
        narrowband_input=audio.sample_rate <= 8000,
    )
    recorder, worker = session.recorder, session.worker

    async def end_when_settled() -> None:
        await transport.input_consumed.wait()
        finished_at = transport.timeline_now()
        while True:
            await asyncio.sleep(0.1)
            now = transport.timeline_now()
            if now - finished_at > max_tail_secs:
                logger.warning(f"Ending {max_tail_secs:.0f}s after the recording: the bot was still busy")
                break
            if not recorder.busy and now - max(recorder.last_activity_s, finished_at) >= settle_secs:
                break
        await worker.queue_frame(EndFrame())

    loop = asyncio.get_running_loop()
    started = loop.time()
    # Independent of the pipeline's event handlers, so the run always ends, even if one of them fails.
    ending = asyncio.create_task(end_when_settled())
    try:
        turns = await session.run()
    finally:
        ending.cancel()
    return FileRunResult(
        bot=bot,
        audio=audio,
        turns=turns,
        output_pcm=transport.output_pcm(),
        output_sample_rate=transport.output_sample_rate,
        duration_secs=loop.time() - started,
        pauses=recorder.pauses,
        failovers=recorder.report_fields(),
        messages=[m for m in session.conversation.context.get_messages() if isinstance(m, dict)],
    )
