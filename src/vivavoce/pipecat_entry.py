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


def pipecat_bot(path: str | os.PathLike[str]) -> Callable[[Any], Awaitable[None]]:
    """pipecat's ``bot(runner_args)`` for the bot file at ``path`` (validated now, built per session)."""
    bot_file = load_bot(path)

    async def bot(runner_args: Any) -> None:
        from pipecat.runner.types import WebSocketRunnerArguments
        from pipecat.runner.utils import create_transport
        from pipecat.workers.runner import WorkerRunner

        from vivavoce.builder import build_conversation

        transport = await create_transport(runner_args, _transport_params())
        telephony = isinstance(runner_args, WebSocketRunnerArguments)
        conversation = build_conversation(
            bot_file,
            transport,
            audio_out_sample_rate=TELEPHONY_SAMPLE_RATE if telephony else BROWSER_SAMPLE_RATE,
            enable_rtvi=not telephony,
            narrowband_input=telephony,
        )
        runner = WorkerRunner(handle_sigint=getattr(runner_args, "handle_sigint", False))
        await runner.add_workers(conversation.worker)
        await runner.run()

    return bot
