"""End to end: a pipeline file (file transport, whisper + smollm + csm) -> CSMTTSService -> the CSM worker
process (tiny random CSM) -> audio back in the output track; barge-in cancels the worker's generation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from pipecat.frames.frames import (
    InputAudioRawFrame,
    LLMContextUserTurnFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test

from bargein_support import joined, phrases
from test_workers_csm import ws_url
from vivavoce.botfile import load_bot
from vivavoce.builder import load_models
from vivavoce.file_session import run_on_recording
from vivavoce.processors.csm import CSMTTSService, load_voice_prompt
from vivavoce.samples import conversation
from vivavoce.wav import InputAudio, write_wav
from worker_support import API_KEY, CSM_TEST_MAX_AUDIO_MS, REPO

pytestmark = pytest.mark.e2e
RATE = 16000


def csm_bot(directory: Path, url: str, max_audio_ms: int):
    """bots/local.yaml with CSM on the worker instead of Piper."""
    data = yaml.safe_load((REPO / "bots" / "local.yaml").read_text())
    data["name"] = "local-csm-test"
    data["pipeline"] = [
        stage for stage in data["pipeline"] if stage["kind"] != "piper"
    ] + [{"kind": "csm", "url": ws_url(url), "api_key": "${VIVAVOCE_WORKER_API_KEY}", "max_audio_ms": max_audio_ms}]
    path = directory / "csm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    bot = load_bot(path, environ={"VIVAVOCE_WORKER_API_KEY": API_KEY})
    load_models(bot)
    return bot


def health(url: str) -> dict:
    return httpx.get(f"{url}/health").json()


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


async def test_service_sends_the_users_audio_as_context(csm_worker):
    before = health(csm_worker)["context_clips_encoded"]
    tts = CSMTTSService(url=ws_url(csm_worker), api_key=API_KEY, max_audio_ms=400)
    speech = joined((0,))
    chunks = [speech[i : i + 320].tobytes() for i in range(0, len(speech), 320)]
    frames = [UserStartedSpeakingFrame()] + [InputAudioRawFrame(c, RATE, 1) for c in chunks]
    frames += [UserStoppedSpeakingFrame(), LLMContextUserTurnFrame(text="Ever tried.", timestamp="now"),
               TTSSpeakFrame("Yes, many times."), SleepFrame(2.0), TTSSpeakFrame("And again."), SleepFrame(2.0)]
    down, _ = await run_test(tts, frames_to_send=frames, pipeline_params=PipelineParams(audio_out_sample_rate=24000))
    audio = b"".join(f.audio for f in down if isinstance(f, TTSAudioRawFrame))
    assert len(audio) == 2 * 2 * 5 * 1920  # two sentences of 400 ms at 24 kHz: no resampling
    # The user's clip was encoded once by the worker; the bot's first sentence is a context turn by reference.
    assert health(csm_worker)["context_clips_encoded"] == before + 1
    turns = list(tts._turns)
    assert [t["speaker"] for t in turns] == [1, 0, 0]
    assert turns[0]["text"] == "Ever tried." and turns[0]["sample_rate"] == RATE
    assert turns[1]["text"] == "Yes, many times." and "request_id" in turns[1]


async def test_a_voice_prompt_leads_every_request_and_is_encoded_once(csm_worker, tmp_path):
    clip = tmp_path / "voice.wav"
    write_wav(clip, joined((1,)), RATE)
    prompt = load_voice_prompt(str(clip), "Ever failed.")
    assert prompt["speaker"] == 0 and prompt["sample_rate"] == RATE
    before = health(csm_worker)["context_clips_encoded"]
    tts = CSMTTSService(url=ws_url(csm_worker), api_key=API_KEY, max_audio_ms=240, voice_prompt=prompt)
    frames = [TTSSpeakFrame("One."), SleepFrame(1.5), TTSSpeakFrame("Two."), SleepFrame(1.5)]
    down, _ = await run_test(tts, frames_to_send=frames, pipeline_params=PipelineParams(audio_out_sample_rate=24000))
    assert sum(len(f.audio) for f in down if isinstance(f, TTSAudioRawFrame)) == 2 * 2 * 3 * 1920
    assert health(csm_worker)["context_clips_encoded"] == before + 1  # the second request reused the codes


async def test_a_conversation_is_answered_in_the_workers_voice(csm_worker, tmp_path):
    bot = csm_bot(tmp_path, csm_worker, max_audio_ms=1500)
    before = health(csm_worker)
    full = conversation(gap_secs=6.0)
    audio = InputAudio(full.path, full.pcm[: int(14.0 * full.sample_rate)], full.sample_rate, 1)
    result = await run_on_recording(bot, audio)
    turns = result.report()["turns"]
    assert len(turns) == 2 and all(t["bot_text"] for t in turns), turns
    for turn in turns:
        start = int(turn["bot_started_s"] * audio.sample_rate)
        assert rms(result.output_pcm[start : start + audio.sample_rate // 2]) > 300  # the tiny CSM's noise
    after = health(csm_worker)
    assert after["requests"]["finished"] >= before["requests"]["finished"] + 2
    assert after["context_clips_encoded"] >= before["context_clips_encoded"] + 2  # both users' turns as audio


async def test_barge_in_cancels_the_workers_generation(csm_worker, tmp_path):
    # A minute of speech per sentence (the fixture's worker allows it) takes the tiny model many times the 4 s
    # before the user cuts in, so the worker is still generating then (at 20 s, a fast CI machine had finished).
    bot = csm_bot(tmp_path, csm_worker, max_audio_ms=CSM_TEST_MAX_AUDIO_MS)
    before = health(csm_worker)["requests"]["cancelled"]
    parts = phrases()
    pcm = np.concatenate([
        np.zeros(RATE // 2, np.int16), parts[0], np.zeros(4 * RATE, np.int16),
        joined((2, 3, 4, 5)), np.zeros(5 * RATE, np.int16),
    ])  # fmt: skip
    result = await run_on_recording(bot, InputAudio(Path("barge.wav"), pcm, RATE, 1))
    turns = result.report()["turns"]
    assert turns and turns[0]["interrupted"], turns
    await asyncio.sleep(0.5)
    assert health(csm_worker)["requests"]["cancelled"] > before
