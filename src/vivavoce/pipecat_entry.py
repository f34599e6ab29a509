"""Bot files as pipecat's ``bot(runner_args)`` entry point, so pipecat's own runner can serve them.

In a ``bot.py``::

    from vivavoce import pipecat_bot
    bot = pipecat_bot("bots/local.yaml")

    if __name__ == "__main__":
        from pipecat.runner.run import main
        main()
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from vivavoce.botfile import load_bot

TELEPHONY_SAMPLE_RATE = 8000
BROWSER_SAMPLE_RATE = 24000


def _transport_params() -> dict[str, Callable[[], Any]]:
    from pipecat.transports.base_transport import TransportParams

    def daily() -> Any:
        from pipecat.transports.daily.transport import DailyParams

        return DailyParams(audio_in_enabled=True, audio_out_enabled=True)

    def websocket() -> Any:
        from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams

        return FastAPIWebsocketParams(audio_in_enabled=True, audio_out_enabled=True)

    return {
        "daily": daily,
        "webrtc": lambda: TransportParams(audio_in_enabled=True, audio_out_enabled=True),
        "twilio": websocket,
        "telnyx": websocket,
        "plivo": websocket,
        "exotel": websocket,
    }


def pipecat_bot(path: str | os.PathLike[str], *, load_models_now: bool = True) -> Callable[[Any], Awaitable[None]]:
    """pipecat's ``bot(runner_args)`` for the bot file at ``path`` (validated now, built per session).

    The models load here, before pipecat's runner starts serving (``load_models_now``), and each session
    waits for them in a worker thread: a model never loads on the event loop, where it would stall the
    WebRTC handshake of the first peer. Each session has vivavoce's turn recorder: every turn's latency
    is logged and, over WebRTC, sent to the client. A Twilio call is hung up through Twilio's REST API
    when the environment has its credentials (pipecat's ``TWILIO_*`` variables), and served without them.
    """
    bot_file = load_bot(path)
    if load_models_now:
        from vivavoce.builder import load_models

        load_models(bot_file)

    async def bot(runner_args: Any) -> None:
        from pipecat.runner.types import WebSocketRunnerArguments

        from vivavoce.session import Session

        await Session.prepare(bot_file)
        transport = await _create_transport(runner_args)
        telephony = isinstance(runner_args, WebSocketRunnerArguments)
        session = Session(
            bot_file,
            transport,
            audio_out_sample_rate=TELEPHONY_SAMPLE_RATE if telephony else BROWSER_SAMPLE_RATE,
            on_turn=_log_turn,
            enable_rtvi=not telephony,
            narrowband_input=telephony,
        )
        session.end_when("on_client_disconnected")
        await session.run(handle_sigint=getattr(runner_args, "handle_sigint", False))

    return bot


async def _create_transport(runner_args: Any) -> Any:
    """pipecat's transport for the session; a Twilio call without REST credentials in the environment is
    served without the serializer's hang-up through Twilio's REST API (pipecat would refuse the call)."""
    from pipecat.runner.types import WebSocketRunnerArguments
    from pipecat.runner.utils import create_transport, parse_telephony_websocket

    if isinstance(runner_args, WebSocketRunnerArguments) and runner_args.transport_type != "websocket":
        provider, call = await parse_telephony_websocket(runner_args.websocket)  # cached for create_transport
        if provider == "twilio" and not _twilio_credentials():
            from pipecat.serializers.twilio import TwilioFrameSerializer
            from pipecat.transports.websocket.fastapi import FastAPIWebsocketTransport

            logger.warning(
                "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set: calls are not hung up through Twilio's REST API"
            )
            params = _transport_params()["twilio"]()
            params.add_wav_header = False
            params.serializer = TwilioFrameSerializer(
                call.stream_id, call.call_id, params=TwilioFrameSerializer.InputParams(auto_hang_up=False)
            )
            return FastAPIWebsocketTransport(websocket=runner_args.websocket, params=params)
    return await create_transport(runner_args, _transport_params())


def _twilio_credentials() -> bool:
    """Whether the environment has what pipecat's Twilio serializer needs to hang up a call."""
    key = os.getenv("TWILIO_API_KEY") and os.getenv("TWILIO_API_SECRET")
    return bool(os.getenv("TWILIO_ACCOUNT_SID") and (os.getenv("TWILIO_AUTH_TOKEN") or key))


def _log_turn(turn: Any) -> None:
    if turn.voice_to_voice_ms is not None:
        logger.info(f"turn: voice-to-voice {turn.voice_to_voice_ms:.0f} ms, stages {turn.stages_ms()}")
