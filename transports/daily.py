"""A Daily room through pipecat's ``DailyTransport`` (the optional ``daily`` extra): the bot joins the room.

Daily is a hosted service; the bot's models run in this process and the room's media goes through Daily.
"""

from __future__ import annotations

from pipecat.transports.base_transport import BaseTransport

from vivavoce.botfile import Bot
from vivavoce.registry import MissingDependencyError
from vivavoce.session import Session
from vivavoce.transports.catalog import DailyTransportConfig
from vivavoce.turns import Turn

OUTPUT_SAMPLE_RATE = 24000


def create_daily_transport(config: DailyTransportConfig) -> BaseTransport:
    """pipecat's ``DailyTransport`` for the bot file's room (an empty token means none: a public room)."""
    try:
        from pipecat.transports.daily.transport import DailyParams, DailyTransport
    except ModuleNotFoundError as e:
        raise MissingDependencyError(
            f"the daily transport needs daily-python ({e}): pip install 'vivavoce[daily]'"
        ) from e
    token = config.token.get_secret_value() if config.token else ""
    return DailyTransport(
        config.room_url,
        token or None,
        config.bot_name,
        DailyParams(audio_in_enabled=True, audio_out_enabled=True),
    )


async def run_in_daily_room(bot: Bot) -> list[Turn]:
    """Join the room and talk until a participant leaves (one person per room, as pipecat's examples) or Ctrl-C."""
    assert isinstance(bot.spec.transport, DailyTransportConfig)
    transport = create_daily_transport(bot.spec.transport)
    session = Session(bot, transport, audio_out_sample_rate=OUTPUT_SAMPLE_RATE, enable_rtvi=True)
    session.end_when("on_participant_left")
    return await session.run(handle_sigint=True)
