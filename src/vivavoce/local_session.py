"""Talk to a bot through the microphone and speakers."""

from __future__ import annotations

from pipecat.workers.runner import WorkerRunner

from vivavoce.botfile import Bot
from vivavoce.botfile.schema import LocalTransportConfig
from vivavoce.builder import build_conversation
from vivavoce.transports.local import create_local_transport
from vivavoce.turns import Turn, TurnRecorder

SPEAKER_SAMPLE_RATE = 24000


async def run_with_microphone(bot: Bot) -> list[Turn]:
    """Run until Ctrl-C; returns the turns, timed from the start of the session."""
    config = (
        bot.spec.transport
        if isinstance(bot.spec.transport, LocalTransportConfig)
        else LocalTransportConfig(kind="local")
    )
    transport = create_local_transport(config, sample_rate=SPEAKER_SAMPLE_RATE)
    recorder = TurnRecorder(timeline=lambda clock_ns: clock_ns / 1e9)
    conversation = build_conversation(
        bot, transport, audio_out_sample_rate=SPEAKER_SAMPLE_RATE, observers=[recorder], idle_timeout_secs=None
    )
    recorder.roles = conversation.processor_roles()
    recorder.follow(conversation.assistant_aggregator)
    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(conversation.worker)
    await runner.run()
    return recorder.completed_turns()
