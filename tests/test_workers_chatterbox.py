"""The Chatterbox worker's server code (voices, both protocols, register_voice, cancel) and ``ChatterboxTTSService``.

chatterbox-streaming itself cannot be installed on CI's torch, so the worker runs a deterministic
tone engine from tests/chatterbox_test_worker.py behind the real server, voice registry and CLI.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave

import httpx
import numpy as np
import pytest
import websockets
from pipecat.frames.frames import InterruptionFrame, TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test

from test_workers_csm import AUTH, speak, ws_url
from vivavoce.processors.chatterbox import ChatterboxTTSService
from worker_support import API_KEY, REPO, recv_json, tone_wav, tts_synthesize, worker_process

RATE = 24000


def pitch(pcm: bytes, rate: int = RATE) -> float:
    samples = np.frombuffer(pcm, "<i2").astype(np.int32)
    return np.count_nonzero(np.diff(np.signbit(samples))) / 2 / (len(samples) / rate)


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("voices")


@pytest.fixture(scope="module")
def worker(voices_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("cbx") / "worker.log"
    args = ["tests/chatterbox_test_worker.py", "--voices-dir", str(voices_dir)]
    with worker_process(args, log=log, env={"PYTHONPATH": str(REPO / "workers" / "chatterbox")}) as url:
        yield url


def register(url: str, voice_id: str, wav: bytes, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/voices", json={"id": voice_id, "wav": base64.b64encode(wav).decode()}, **kwargs)


async def test_registered_voices_are_used_listed_and_deleted(worker):
    created = register(worker, "low", tone_wav(300, 2.0), headers=AUTH)
    assert created.status_code == 201 and created.json()["seconds"] == 2.0
    assert [v["id"] for v in httpx.get(f"{worker}/voices", headers=AUTH).json()["voices"]] == ["low"]
    async with websockets.connect(ws_url(worker), additional_headers=AUTH) as ws:
        _, frames, done = await speak(ws, "v1", "Twenty characters!!", voice="low", exaggeration=0.5)
        assert done["type"] == "done" and pitch(b"".join(frames)) == pytest.approx(300, rel=0.02)
        _, frames, _ = await speak(ws, "v2", "Twenty characters!!")
        assert pitch(b"".join(frames)) == pytest.approx(220, rel=0.02)  # the built-in voice
        _, loud, _ = await speak(ws, "v3", "Twenty characters!!", voice="low", exaggeration=1.5)
        quiet_peak = np.abs(np.frombuffer(b"".join(frames), "<i2")).max()
        assert np.abs(np.frombuffer(b"".join(loud), "<i2")).max() > 1.5 * quiet_peak
        _, _, error = await speak(ws, "v4", "Hello.", voice="nobody")
        assert error["type"] == "error" and error["code"] == "bad_request" and "POST /voices" in error["message"]
    assert httpx.delete(f"{worker}/voices/low", headers=AUTH).status_code == 200
    assert httpx.delete(f"{worker}/voices/low", headers=AUTH).status_code == 404
    assert httpx.get(f"{worker}/voices", headers=AUTH).json()["voices"] == []


def test_bad_voice_uploads_are_refused_with_a_reason(worker):
    assert register(worker, "x", tone_wav(300, 2.0)).status_code == 401
    short = register(worker, "short", tone_wav(300, 0.3), headers=AUTH)
    assert short.status_code == 400 and "give 1-30 s" in short.json()["detail"]
    junk = register(worker, "junk", b"RIFF....not a wav", headers=AUTH)
    assert junk.status_code == 400 and "WAV" in junk.json()["detail"]
    not_b64 = httpx.post(f"{worker}/voices", json={"id": "b", "wav": "%%%"}, headers=AUTH)
    assert not_b64.status_code == 400
    bad_id = register(worker, "../etc", tone_wav(300, 2.0), headers=AUTH)
    assert bad_id.status_code == 422
    assert httpx.get(f"{worker}/health").json()["status"] == "ok"


def test_voices_survive_a_restart(voices_dir, tmp_path):
    args = ["tests/chatterbox_test_worker.py", "--voices-dir", str(voices_dir)]
    env = {"PYTHONPATH": str(REPO / "workers" / "chatterbox")}
    with worker_process(args, log=tmp_path / "a.log", env=env) as url:
        assert register(url, "kept", tone_wav(350, 1.5), headers=AUTH).status_code == 201
    with worker_process(args, log=tmp_path / "b.log", env=env) as url:
        voices = httpx.get(f"{url}/voices", headers={"Authorization": f"Bearer {API_KEY}"}).json()["voices"]
        assert [v["id"] for v in voices] == ["kept"]
        wav = httpx.post(f"{url}/synthesize", json={"text": "Twenty characters!!", "voice": "kept"}, headers=AUTH)
        with wave.open(io.BytesIO(wav.content)) as w:
            assert pitch(w.readframes(w.getnframes())) == pytest.approx(350, rel=0.02)
        assert httpx.delete(f"{url}/voices/kept", headers=AUTH).status_code == 200


async def test_register_voice_on_a_worker_that_clones(tmp_path):
    """Chatterbox's server over its test engine: a voice is a pitch, taken from the registered clip."""
    args = ["tests/chatterbox_test_worker.py", "--voices-dir", str(tmp_path / "voices")]
    env = {"PYTHONPATH": str(REPO / "workers" / "chatterbox")}
    with worker_process(args, log=tmp_path / "worker.log", env=env) as url:
        async with websockets.connect(ws_url(url, "/v1/tts"), additional_headers=AUTH) as ws:
            not_audio = base64.b64encode(b"RIFF but not audio").decode()
            too_short = base64.b64encode(tone_wav(300, 0.2)).decode()
            for clip, code in ((not_audio, "bad_audio"), ("%%% not base64", "bad_audio"), (too_short, "bad_audio")):
                await ws.send(json.dumps({"type": "register_voice", "voice_id": "low", "reference_audio": clip}))
                reply = await recv_json(ws)
                assert reply["type"] == "error" and reply["code"] == code, reply
            _, _, refused = await tts_synthesize(ws, "Twenty characters!!", voice_id="low")
            assert refused["code"] == "unknown_voice"
            clip = base64.b64encode(tone_wav(300, 2.0)).decode()
            await ws.send(
                json.dumps({"type": "register_voice", "voice_id": "low", "reference_audio": clip, "request_id": "r"})
            )
            assert await recv_json(ws) == {
                "type": "voice_registered",
                "voice_id": "low",
                "seconds": 2.0,
                "request_id": "r",
            }
            _, _, refused = await tts_synthesize(ws, "Twenty characters!!", voice_id="low", emotion="angry")
            assert refused["code"] == "not_supported"  # the test engine has no emotion control
            _, chunks, done = await tts_synthesize(ws, "Twenty characters!!", voice_id="low", chunk_size=100)
            audio = np.concatenate(chunks)
            assert {len(c) for c in chunks[:-1]} == {2400} and len(audio) / 24000 == pytest.approx(1.14, abs=0.05)
            crossings = np.count_nonzero(np.diff(np.signbit(audio)))
            assert crossings / 2 / (len(audio) / 24000) == pytest.approx(300, rel=0.03)  # the registered voice
        assert [v["id"] for v in httpx.get(f"{url}/voices", headers=AUTH).json()["voices"]] == ["low"]


async def test_service_streams_resampled_audio_and_cancels_on_interruption(worker):
    before = httpx.get(f"{worker}/health").json()["requests"]["cancelled"]
    tts = ChatterboxTTSService(url=ws_url(worker), api_key=API_KEY, exaggeration=0.5)
    down, _ = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame("A short reply."), SleepFrame(1.5)],
        pipeline_params=PipelineParams(audio_out_sample_rate=16000),
    )
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.sample_rate == 16000 for f in audio)
    pcm = b"".join(f.audio for f in audio)
    assert len(pcm) / 2 == pytest.approx(len("A short reply.") * 0.06 * 16000, rel=0.05)  # resampled once, whole
    assert pitch(pcm, 16000) == pytest.approx(220, rel=0.03)
    assert any(isinstance(f, TTSStoppedFrame) for f in down)

    tts = ChatterboxTTSService(url=ws_url(worker), api_key=API_KEY)
    long_text = "This answer goes on and on for a long time. " * 20
    down, _ = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame(long_text), SleepFrame(0.5), InterruptionFrame(), SleepFrame(0.5)],
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    assert not any(isinstance(f, TTSAudioRawFrame) for f in down[cut + 1 :])
    await asyncio.sleep(0.2)
    assert httpx.get(f"{worker}/health").json()["requests"]["cancelled"] == before + 1
