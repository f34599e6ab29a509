"""Talk to a bot through the microphone and speakers."""

from __future__ import annotations

from vivavoce.botfile import Bot
from vivavoce.botfile.schema import LocalTransportConfig
from vivavoce.session import Session
from vivavoce.transports.local import create_local_transport
from vivavoce.turns import Turn

SPEAKER_SAMPLE_RATE = 24000


async def run_with_microphone(bot: Bot) -> list[Turn]:
    """Run until Ctrl-C; returns the turns, timed from the start of the session."""
    config = (
        bot.spec.transport
        if isinstance(bot.spec.transport, LocalTransportConfig)
        else LocalTransportConfig(kind="local")
    )
    transport = create_local_transport(config, sample_rate=SPEAKER_SAMPLE_RATE)
    session = Session(bot, transport, audio_out_sample_rate=SPEAKER_SAMPLE_RATE, idle_timeout_secs=None)
    return await session.run(handle_sigint=True)
