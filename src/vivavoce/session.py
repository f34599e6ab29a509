"""One conversation of a bot over one transport: the only place a session is wired and run.

Every way of running a bot (a recording, the microphone, a Daily room, a phone call, a browser, pipecat's
own runner) makes a :class:`Session`: it builds the pipeline from the bot file, owns the per-turn
:class:`~vivavoce.turns.TurnRecorder` (the report, the metrics and the page's latency feed all come from
it), and runs the pipeline until the session ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from pipecat.observers.base_observer import BaseObserver
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_transport import BaseTransport
from pipecat.workers.runner import WorkerRunner

from vivavoce.botfile import Bot
from vivavoce.builder import Conversation, build_conversation, load_models
from vivavoce.gc_tuning import return_freed_memory
from vivavoce.turn_feed import TurnFeed
from vivavoce.turns import Turn, TurnRecorder


def clock_secs(clock_ns: int) -> float:
    """The pipeline clock in seconds: the timeline of a live session."""
    return clock_ns / 1e9


class Session:
    """A bot's conversation over ``transport``, with its turn recorder; :meth:`run` runs it to the end.

    ``observers``: more pipecat observers for this session. ``on_turn``: called with each finished turn
    (metrics). ``timeline``/``speech_onset``: how the recorder times frames (a file transport's input
    timeline; the pipeline clock by default). ``enable_rtvi``: pipecat's RTVI, and each answered turn's
    latency sent to the client over it. ``history``: earlier LLM context messages of a conversation that
    goes on (no greeting then). The rest is :func:`vivavoce.builder.build_conversation`'s.
    """

    def __init__(
        self,
        bot: Bot,
        transport: BaseTransport,
        *,
        audio_out_sample_rate: int,
        observers: Sequence[BaseObserver] = (),
        on_turn: Callable[[Turn], None] | None = None,
        timeline: Callable[[int], float] = clock_secs,
        speech_onset: Callable[[float, float], float] | None = None,
        enable_rtvi: bool = False,
        idle_timeout_secs: float | None = 300,
        after_input: Sequence[FrameProcessor] = (),
        before_output: Sequence[FrameProcessor] = (),
        narrowband_input: bool = False,
        history: Sequence[dict[str, Any]] = (),
    ):
        """Build the session's pipeline (models load on first use: see :meth:`prepare`)."""
        self.bot = bot
        self.transport = transport
        self.recorder = TurnRecorder(timeline=timeline, speech_onset=speech_onset, on_turn=on_turn)
        # The feed runs the recorder itself: a second observer could look before the recorder has seen a frame.
        feed = TurnFeed(self.recorder) if enable_rtvi else None
        self.conversation: Conversation = build_conversation(
            bot,
            transport,
            audio_out_sample_rate=audio_out_sample_rate,
            observers=[feed or self.recorder, *observers],
            enable_rtvi=enable_rtvi,
            idle_timeout_secs=idle_timeout_secs,
            after_input=after_input,
            before_output=before_output,
            narrowband_input=narrowband_input,
            history=history,
        )
        self.recorder.roles = self.conversation.processor_roles()
        self.recorder.follow(self.conversation.assistant_aggregator)
        if feed is not None:
            feed.attach(self.conversation.worker.rtvi)

    @staticmethod
    async def prepare(bot: Bot) -> None:
        """Load the bot's models in worker threads, so the event loop (and every other session's audio
        and handshakes on it) never waits for a model; returns at once when they are loaded."""
        await asyncio.to_thread(load_models, bot)

    @property
    def worker(self) -> Any:
        """The pipecat pipeline worker (queue frames to it, cancel it)."""
        return self.conversation.worker

    def end_when(self, event: str) -> None:
        """End the session when the transport fires ``event`` (the client left, the call hung up)."""

        async def _end(*_args: Any) -> None:
            await self.worker.cancel()

        self.transport.add_event_handler(event, _end)

    async def run(self, *, handle_sigint: bool = False) -> list[Turn]:
        """Run until the pipeline ends; returns the turns (every turn is reported to ``on_turn`` by then)."""
        runner = WorkerRunner(handle_sigint=handle_sigint)
        try:
            await runner.add_workers(self.worker)
            await runner.run()
        finally:
            self.recorder.finish()
        await return_freed_memory()
        return self.recorder.completed_turns()
