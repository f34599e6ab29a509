"""Failover mid-call, the agent's half: what a new worker is asked after the old one died; and the whole of it
with real tiny-CSM workers in a real registry, one killed mid-reply."""

from __future__ import annotations

import base64
import signal
import time
from dataclasses import dataclass

import pytest
from pipecat.frames.frames import ControlFrame, ErrorFrame, TTSSpeakFrame, TTSStoppedFrame
from pipecat.tests.utils import SleepFrame, run_test

import test_fleet_registry
from vivavoce.processors.csm import CSMTTSService
from vivavoce.processors.worker_client import CHARS_PER_SEC, unspoken_rest
from vivavoce.testing.tts_probe import Conversation
from vivavoce.worker_directory import Selector, WorkerDirectory
from worker_support import eventually, start_worker

redis_server = test_fleet_registry.redis_server  # a real redis-server for the module

CSM = Selector(family="csm")
FIRST_REPLY = ["Good morning.", "Thanks for calling."]
SECOND_REPLY = ["Your books are due on Monday.", "You can renew them twice.", "Anything else?"]

SENTENCE = "The quick brown fox jumps over the lazy dog."


def test_nothing_heard_means_the_whole_sentence_again():
    assert unspoken_rest(SENTENCE, 0.0) == SENTENCE


def heard(prefix: str) -> float:
    """Milliseconds of audio that carry ``prefix`` at the estimated speaking rate."""
    return (len(prefix) + 0.5) / CHARS_PER_SEC * 1000


def test_the_rest_starts_at_the_word_being_said():
    assert unspoken_rest(SENTENCE, heard("The quick br")) == "brown fox jumps over the lazy dog."
    assert unspoken_rest(SENTENCE, heard("The qu")) == "quick brown fox jumps over the lazy dog."
    assert unspoken_rest(SENTENCE, heard("The quick ")) == "brown fox jumps over the lazy dog."


def test_a_sentence_heard_to_the_end_is_not_said_again():
    assert unspoken_rest(SENTENCE, 60_000) == ""


async def test_csm_sends_its_earlier_sentences_inline_to_a_new_worker():
    csm = CSMTTSService(url="ws://127.0.0.1:1/v1/stream", context_turns=4)
    pcm = b"\x01\x00" * 2400
    csm.on_request_audio("c1/1", pcm[:2400], 24000)
    csm.on_request_audio("c1/1", pcm[2400:], 24000)
    await csm.on_request_done("c1/1", "It is noon.", {"type": "done"})
    await csm.on_request_done("c1/2", "No audio kept for this one.", {"type": "done"})
    assert [t.get("request_id") for t in csm._turns] == ["c1/1", "c1/2"]

    await csm.on_worker_changed()

    [turn] = list(csm._turns)  # a sentence whose audio is gone cannot be sent: it is left out
    assert "request_id" not in turn and turn["text"] == "It is noon." and turn["sample_rate"] == 24000
    assert base64.b64decode(turn["audio"]) == pcm


@dataclass
class Marker(ControlFrame):
    """Passes through the TTS in order, to see what came before it."""


async def test_a_sentence_with_no_worker_to_speak_it_ends_its_reply_at_once():
    # Nothing listens on port 1: the connect fails, no reconnect is under way to send the sentence later.
    tts = CSMTTSService(url="ws://127.0.0.1:1/v1/stream")
    down, up = await run_test(tts, frames_to_send=[TTSSpeakFrame("Hello there."), SleepFrame(1.0), Marker()])
    kinds = [type(f) for f in down]
    # The reply ends before the marker: it does not wait out QUIET_SECS (10 s) of silence.
    assert TTSStoppedFrame in kinds and kinds.index(TTSStoppedFrame) < kinds.index(Marker), kinds
    assert any(isinstance(f, ErrorFrame) and "cannot reach the worker" in f.error for f in up)


@pytest.mark.e2e
async def test_a_csm_worker_killed_mid_reply_another_goes_on_with_the_context_inline(redis_server, tiny_csm, tmp_path):
    # Two tiny-CSM workers in a real registry. The first reply's sentences are cached on the worker that made
    # them, and the second reply's requests refer to them by request_id. That worker is killed (kill -9) as the
    # second reply starts: the other worker never made those sentences and refuses references to them
    # (bad_request), so the rest of the reply must carry them inline, text and audio, to be spoken at all.
    args = ["-m", "vivavoce_csm", "--model", str(tiny_csm), "--registry", redis_server.url, "--max-audio-ms", "1200"]
    workers = [start_worker(args, log=tmp_path / f"{n}.log", auth=False) for n in "ab"]
    directory = WorkerDirectory(redis_server.url)
    try:
        with workers[0][1] as a, workers[1][1] as b:
            processes = {workers[0][0].replace("http://", "ws://"): a, workers[1][0].replace("http://", "ws://"): b}
            await eventually(lambda: directory.workers(CSM), lambda e: len(e) == 2, secs=10)
            async with Conversation(CSMTTSService, redis_server.url, CSM, reply_secs=60) as call:
                first = await call.say(FIRST_REPLY)
                assert first.finished and first.sentences_lost == 0 and not call.heard.errors, call.heard.errors
                [speaker] = first.workers
                killed: list[float] = []

                def kill() -> None:
                    processes[speaker.removesuffix("/v1/stream")].send_signal(signal.SIGKILL)
                    killed.append(time.monotonic())

                second = await call.say(SECOND_REPLY, on_first_audio=kill)
                assert processes[speaker.removesuffix("/v1/stream")].wait(5) == -signal.SIGKILL
                assert second.finished and second.sentences_lost == 0, second
                assert not call.heard.errors, call.heard.errors  # no reference the new worker refused
                # (audio the killed worker had sent before it died may still arrive after the kill)
                after = {worker for at, _, worker in second.chunks if at > killed[0]}
                assert after - {speaker}, (speaker, after)
    finally:
        await directory.close()
