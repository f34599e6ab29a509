"""`pipecat_bot("bots/local.yaml")` served by pipecat's own development runner, as a user runs it.

A ``bot.py`` as the README writes it runs as a real process (``python bot.py -t webrtc`` / ``-t twilio``);
real peers talk to it from the first session after start: an aiortc peer over the runner's ``/api/offer``,
and a Twilio Media Streams caller on its ``/ws`` after its TwiML webhook. The embedded models answer.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr

from bargein_support import phrases
from twilio_support import REPO, Line, hears_back, voice_params, wait_until
from vivavoce.testing.media_streams import MediaStreamsCaller, ReceivedAudio, call_sid
from vivavoce.testing.processes import free_port, serving
from vivavoce.testing.webrtc_peer import RECORD_RATE, WebRTCPeer

pytestmark = pytest.mark.e2e

PROXY = "example.test"  # the public host a tunnel would give; the runner writes it into its TwiML
BOT_PY = """from vivavoce import pipecat_bot
bot = pipecat_bot({path!r})

if __name__ == "__main__":
    from pipecat.runner.run import main
    main()
"""
LOUD = 500  # int16 peak: the bot's speech is thousands, silence is zeros


@contextlib.contextmanager
def runner(tmp_path: Path, *flags: str) -> Iterator[tuple[str, Path]]:
    """``python bot.py *flags`` (a bot.py on bots/local.yaml) on a free port; yields its URL and its log.

    Its environment has no Twilio credentials and no pipecat settings, and no ``.env`` is read (pipecat's
    runner loads one with override), so nothing it does can reach Twilio's REST API.
    """
    bot_py = tmp_path / "bot.py"
    bot_py.write_text(BOT_PY.format(path=str(REPO / "bots" / "local.yaml")))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "PIPECAT_"))}
    env.update(PYTHON_DOTENV_DISABLED="1", NO_COLOR="1")
    base, log = f"http://127.0.0.1:{port}", tmp_path / "runner.log"
    command = [sys.executable, str(bot_py), *flags, "--host", "127.0.0.1", "--port", str(port)]
    with serving(command, health=f"{base}/status", env=env, cwd=tmp_path, log=log, ready_secs=180):
        yield base, log


def loud(pcm: np.ndarray) -> bool:
    return pcm.size > 0 and int(np.abs(pcm).max()) > LOUD


async def logged_turn(log: Path, sessions: int) -> None:
    """pipecat_bot logs each session's answered turn (when the session ends)."""
    await wait_until(
        lambda: log.read_text(errors="replace").count("turn: voice-to-voice") >= sessions,
        30,
        f"{sessions} logged turn(s) in the runner's output",
    )


def models_loaded_before_serving(log: Path) -> None:
    """pipecat_bot() loaded the models before the runner served: no session loads one (on the event loop,
    a load stalled the first peer's handshake). Read from the order of the runner's log lines."""
    text = log.read_text(errors="replace")
    loads = [m.start() for m in re.finditer(r"vivavoce\.model_store\S* - Loaded ", text)]
    assert loads, "no model loads in the runner's log (did vivavoce.model_store's message change?)"
    assert max(loads) < text.index("Uvicorn running on"), "a model was loaded after the runner started serving"


async def webrtc_session(base: str) -> None:
    """A peer connects, says "Ever tried.", hears the bot answer and gets the turn's latency, then hangs up."""
    async with WebRTCPeer(base) as peer:
        await wait_until(lambda: peer.rtvi("bot-ready"), 20, "RTVI bot-ready")
        spoken = peer.say(phrases()[0], RECORD_RATE)
        latency = await wait_until(lambda: peer.server_messages("turn-latency"), 60, "the turn-latency message")
        await wait_until(lambda: loud(peer.received.between(spoken)), 30, "the bot's voice")
    turn = latency[0]
    assert turn["turn"] == 1, "each session counts its own turns"
    assert turn["voice_to_voice_ms"] > 0 and turn["stages_ms"], turn


async def test_the_webrtc_runner_answers_its_first_peer_and_the_next(tmp_path):
    with runner(tmp_path, "-t", "webrtc") as (base, log):
        await webrtc_session(base)  # the first session after start: the one that never connected
        await logged_turn(log, 1)
        await webrtc_session(base)
        await logged_turn(log, 2)
        models_loaded_before_serving(log)


async def test_the_twilio_runner_answers_its_first_call(tmp_path):
    with runner(tmp_path, "-t", "twilio", "--proxy", PROXY) as (base, log):
        async with httpx.AsyncClient() as client:  # Twilio's voice webhook
            twiml = await client.post(f"{base}/", data=voice_params(call_sid()), timeout=10)
        assert twiml.status_code == 200, twiml.text
        stream = ET.fromstring(twiml.text).find("./Connect/Stream")
        assert stream is not None and stream.get("url") == f"wss://{PROXY}/ws", twiml.text

        # The tunnel's far end: the stream reaches the runner's /ws.
        speech = soxr.resample(phrases()[0], RECORD_RATE, 8000).astype(np.int16)
        async with MediaStreamsCaller(base.replace("http", "ws") + "/ws", token=None) as caller, Line(caller) as line:
            _, said = await line.say(speech)

            def answer() -> np.ndarray:
                return ReceivedAudio([(at, frame) for at, frame in caller.received.frames if at > said]).pcm()

            await hears_back(line, since=said, timeout=60)  # fails at once if the call was closed
            await wait_until(lambda: loud(answer()), 10, "the bot's voice on the call")
        await logged_turn(log, 1)
        assert "Failed to hang up" not in log.read_text(errors="replace")
