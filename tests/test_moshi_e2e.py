"""End to end: a pipeline file with the ``moshi`` kind (file transport) -> the Moshi worker -> audio back.

The worker runs a tiny random Moshi (it babbles loudly whenever it may speak), which makes who speaks
when easy to read from the output track: the track is aligned with the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moshi_support import REPO, make_tiny_checkpoint, moshi_worker
from vivavoce.botfile import load_bot
from vivavoce.file_session import run_on_recording
from vivavoce.samples import conversation, find_phrases
from vivavoce.wav import InputAudio
from worker_support import free_port

pytestmark = pytest.mark.e2e

TAIL_SECS = 1.0
"""The random model babbles on in the silence after the recording: end the run this long after it."""

STOP_WITHIN_SECS = 0.7
"""Speech onset -> the bot's audio is silent in the output track (VAD 0.2 s, then the audio already in
flight: about 0.45 s measured on 2 cores)."""


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with moshi_worker(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-moshi")), "--greedy", "--slots", "2") as w:
        yield w


def _bot(tmp_path: Path, worker, monkeypatch, *, gate: bool):
    """bots/moshi_local.yaml as shipped, on the file transport."""
    text = (REPO / "bots" / "moshi_local.yaml").read_text().replace("kind: local", "kind: file")
    text = text.replace("gate: true", f"gate: {str(gate).lower()}")
    path = tmp_path / "moshi.yaml"
    path.write_text(text)
    monkeypatch.setenv("MOSHI_WORKER_URL", worker.chat_url)
    return load_bot(path)


def _speech(gap_secs: float, phrases: int) -> tuple[InputAudio, list]:
    full = conversation(gap_secs=gap_secs, lead_secs=1.0)
    spoken = find_phrases(full.pcm, full.sample_rate)[:phrases]
    end = spoken[-1].end + int(gap_secs * full.sample_rate)
    return InputAudio(full.path, full.pcm[:end], full.sample_rate, 1), spoken


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


async def test_moshi_answers_after_the_user_and_never_over_them(tmp_path, worker, monkeypatch):
    audio, phrases = _speech(gap_secs=3.0, phrases=2)
    result = await run_on_recording(_bot(tmp_path, worker, monkeypatch, gate=True), audio, max_tail_secs=TAIL_SECS)
    out, rate = result.output_pcm, audio.sample_rate
    assert result.output_sample_rate == rate and len(out) >= len(audio.pcm)
    for phrase in phrases:
        # The user is not talked over: silent from shortly after they start (the audio in flight) until they stop.
        assert _rms(out[phrase.start + int(STOP_WITHIN_SECS * rate) : phrase.end]) < 50
        # Moshi answers in the pause after them (the gate opens 480 ms after their last loud frame).
        assert _rms(out[phrase.end + int(1.0 * rate) : phrase.end + int(2.5 * rate)]) > 300
    report = result.report()
    assert len(report["turns"]) >= 2
    assert any(turn["bot_text"] for turn in report["turns"])  # Moshi's words reach the assistant context


async def test_an_interruption_mutes_moshi_until_the_user_stops(tmp_path, worker, monkeypatch):
    # No gating in the worker: Moshi talks from the start, and only the agent's barge-in handling can stop it.
    audio, phrases = _speech(gap_secs=2.5, phrases=2)
    result = await run_on_recording(_bot(tmp_path, worker, monkeypatch, gate=False), audio, max_tail_secs=TAIL_SECS)
    out, rate = result.output_pcm, audio.sample_rate
    first = phrases[0]
    assert _rms(out[int(0.2 * rate) : first.start]) > 300  # talking before the user says anything
    for phrase in phrases:
        # VAD start (0.2 s) + the audio in flight: then silence for the rest of the phrase.
        assert _rms(out[phrase.start + int(STOP_WITHIN_SECS * rate) : phrase.end]) < 50
        assert _rms(out[phrase.end + int(0.8 * rate) : phrase.end + int(2.0 * rate)]) > 300  # back after
    assert any(turn["interrupted"] for turn in result.report()["turns"])


async def _errors_from_service(url: str) -> list[str]:
    from pipecat.frames.frames import ErrorFrame
    from pipecat.tests.utils import SleepFrame, run_test

    from vivavoce.processors.moshi import MoshiS2SService

    _, up = await run_test(MoshiS2SService(url=url), frames_to_send=[SleepFrame(0.5)], send_end_frame=False)
    return [f.error for f in up if isinstance(f, ErrorFrame)]


async def test_the_service_says_why_it_cannot_start(worker):
    unreachable = await _errors_from_service(f"ws://127.0.0.1:{free_port()}/api/chat")
    assert len(unreachable) == 1 and "unreachable" in unreachable[0]
    # The Moshi worker answers a path it does not serve with a 404 that names its routes.
    wrong_path = await _errors_from_service(worker.chat_url.replace("/api/chat", "/chat"))
    assert len(wrong_path) == 1 and "unreachable" in wrong_path[0] and "404" in wrong_path[0]
    # Both slots taken: the worker refuses and the service passes its reason on.
    from websockets.asyncio.client import connect

    async with connect(worker.chat_url) as a, connect(worker.chat_url) as b:
        assert await a.recv() == await b.recv() == b"\x00"
        refused = await _errors_from_service(worker.chat_url)
    assert len(refused) == 1 and "refused the conversation: server full" in refused[0]
