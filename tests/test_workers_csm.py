"""The CSM worker as a real process on a tiny random CSM: auth, protocol, streaming, cancel, HTTP."""

from __future__ import annotations

import asyncio
import audioop
import base64
import io
import json
import subprocess
import wave

import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from worker_support import API_KEY, REPO, csm_python, worker_process

FRAME = 1920  # 80 ms at 24 kHz
AUTH = {"X-API-Key": API_KEY}


def ws_url(http: str, path: str = "/v1/stream") -> str:
    return http.replace("http://", "ws://") + path


async def speak(ws, request_id: str, text: str = "Hello there.", **fields) -> tuple[dict, list[bytes], dict]:
    """One request on an open socket: its start, binary frames and done."""
    await ws.send(json.dumps({"type": "synthesize", "id": request_id, "text": text, **fields}))
    start, frames = None, []
    while True:
        message = await asyncio.wait_for(ws.recv(), 120)
        if isinstance(message, bytes):
            assert start is not None, "audio before start"
            frames.append(message)
            continue
        data = json.loads(message)
        if data["type"] == "start":
            start = data
        elif data["type"] in ("done", "error"):
            assert data["id"] == request_id, data
            return start, frames, data


async def next_json(ws) -> dict:
    while True:
        message = await asyncio.wait_for(ws.recv(), 60)
        if not isinstance(message, bytes):
            return json.loads(message)


def test_engine_checks_in_the_worker_environment(tiny_csm):
    """Streamed decode == one-shot decode; cached-context prompt == CSM's chat template; trimming; mu-law."""
    out = subprocess.run([str(csm_python()), "tests/csm_worker_checks.py", str(tiny_csm)], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    facts = json.loads(out.strip().splitlines()[-1])
    stream = facts["stream"]
    assert stream["chunk_samples"] == [FRAME] and stream["streamed_samples"] == stream["one_shot_samples"]
    assert stream["max_abs_diff"] < 1e-4 * stream["peak"]
    assert stream["naive_max_abs_diff"] > 100 * stream["max_abs_diff"]  # per-frame decode is not exact
    context = facts["context"]
    assert context["codes_equal"] and context["prompt_positions"] == context["reference_positions"]
    assert context["encodes_first"] == 1 and context["encodes_after_repeat"] == 1
    trim = facts["trim"]
    assert 0 < trim["turns_used"] < trim["turns_given"] and trim["positions"] <= trim["limit"]
    assert facts["mulaw"]["mulaw_equal"]


def test_health_reports_model_device_memory_and_load(csm_worker):
    body = httpx.get(f"{csm_worker}/health").json()
    assert body["model"] == "csm" and body["device"] == "cpu" and body["sample_rate"] == 24000
    assert body["memory"]["rss_bytes"] > 10_000_000
    assert body["active_sessions"] == 0 and body["queue_depth"] == 0 and body["uptime_s"] > 0
    assert body["frame_ms"] == 80.0


async def test_websocket_refuses_missing_or_wrong_keys(csm_worker):
    for kwargs in ({}, {"additional_headers": {"X-API-Key": "wrong"}}):
        async with websockets.connect(ws_url(csm_worker), **kwargs) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd.code == 1008 and "API key" in closed.value.rcvd.reason
    # Header, bearer token and (for browsers) the query parameter are all accepted.
    for url, headers in (
        (ws_url(csm_worker), AUTH),
        (ws_url(csm_worker), {"Authorization": f"Bearer {API_KEY}"}),
        (ws_url(csm_worker) + f"?api_key={API_KEY}", {}),
    ):
        async with websockets.connect(url, additional_headers=headers) as ws:
            start, frames, done = await speak(ws, "k", max_audio_ms=160)
            assert done["type"] == "done" and len(frames) == 2


def test_http_needs_the_key(csm_worker):
    body = {"text": "Hi.", "max_audio_ms": 160}
    refused = httpx.post(f"{csm_worker}/synthesize", json=body)
    assert refused.status_code == 401 and "API key" in refused.json()["detail"]
    assert httpx.post(f"{csm_worker}/synthesize", json=body, headers={"Authorization": f"Bearer {API_KEY}"}).is_success


async def test_malformed_messages_get_errors_and_nothing_else_breaks(csm_worker):
    async with websockets.connect(ws_url(csm_worker), additional_headers=AUTH) as ws, \
            websockets.connect(ws_url(csm_worker), additional_headers=AUTH) as other:
        bad = [
            ("{not json", "bad_json"),
            (json.dumps([1, 2]), "bad_message"),
            (json.dumps({"type": "dance", "id": "x"}), "unknown_type"),
            (json.dumps({"type": "synthesize", "id": "x"}), "bad_message"),  # no text
            (json.dumps({"type": "synthesize", "id": "x", "text": "a", "colour": "red"}), "bad_message"),
            (json.dumps({"type": "synthesize", "id": "x", "text": "a" * 5000}), "bad_message"),
            (json.dumps({"type": "synthesize", "id": "", "text": "a"}), "bad_message"),
            (json.dumps({"type": "synthesize", "id": "x", "text": "a",
                         "context": [{"text": "b", "audio": "AAAA"}]}), "bad_message"),  # audio without rate
            (json.dumps({"type": "cancel", "id": "never-sent"}), "unknown_id"),
            ("x" * (17 * 1024 * 1024), "too_large"),
        ]
        for raw, code in bad:
            await ws.send(raw)
            reply = await next_json(ws)
            assert reply["type"] == "error" and reply["code"] == code, (raw[:60], reply)
            assert reply["message"]
        await ws.send(b"\x00\x01")
        assert (await next_json(ws))["code"] == "binary_not_expected"
        # Bad context audio is refused by the engine for that request only.
        start, frames, reply = await speak(
            ws, "badaudio", context=[{"text": "b", "audio": "%%%", "sample_rate": 16000}]
        )
        assert reply["type"] == "error" and reply["code"] == "bad_request" and "base64" in reply["message"]
        # The same socket and another session still work.
        for sock in (ws, other):
            start, frames, done = await speak(sock, "ok", max_audio_ms=240)
            assert done["type"] == "done" and start["sample_rate"] == 24000 and len(frames) == 3
            assert all(len(f) == FRAME * 2 for f in frames)


async def test_duplicate_ids_and_queued_cancel(csm_worker):
    async with websockets.connect(ws_url(csm_worker), additional_headers=AUTH) as ws:
        long = {"type": "synthesize", "text": "A long answer.", "max_audio_ms": 20_000}
        await ws.send(json.dumps({**long, "id": "a"}))
        await ws.send(json.dumps({**long, "id": "a"}))
        await ws.send(json.dumps({"type": "synthesize", "id": "b", "text": "Queued.", "max_audio_ms": 400}))
        await ws.send(json.dumps({"type": "cancel", "id": "b"}))
        await ws.send(json.dumps({"type": "cancel", "id": "a"}))
        seen = []
        while not any(m.get("type") == "done" and m["id"] == "a" for m in seen):
            message = await asyncio.wait_for(ws.recv(), 60)
            if not isinstance(message, bytes):
                seen.append(json.loads(message))
        assert any(m["type"] == "error" and m["code"] == "duplicate_id" for m in seen)
        done_b = next(m for m in seen if m["type"] == "done" and m["id"] == "b")
        assert done_b["cancelled"] and done_b["audio_ms"] == 0
        assert not any(m["type"] == "start" and m["id"] == "b" for m in seen)  # never generated


async def test_cancel_stops_generation_within_a_frame(csm_worker):
    async with websockets.connect(ws_url(csm_worker), additional_headers=AUTH) as ws:
        await ws.send(
            json.dumps({"type": "synthesize", "id": "c", "text": "Talk for a while.", "max_audio_ms": 20_000})
        )
        received = 0
        while received < 3:
            if isinstance(await asyncio.wait_for(ws.recv(), 60), bytes):
                received += 1
        await ws.send(json.dumps({"type": "cancel", "id": "c"}))
        while True:
            message = await asyncio.wait_for(ws.recv(), 60)
            if isinstance(message, bytes):
                received += 1
                continue
            done = json.loads(message)
            break
        assert done["type"] == "done" and done["cancelled"]
        generated = round(done["audio_ms"] / 80)
        assert generated < 250 / 2  # 20 s were asked for
        assert received <= generated  # nothing is sent that was generated after the cancel
        # The next request on the socket starts clean.
        start, frames, done = await speak(ws, "after", max_audio_ms=160)
        assert done["type"] == "done" and not done["cancelled"] and len(frames) == 2
    health = httpx.get(f"{csm_worker}/health").json()
    assert health["requests"]["cancelled"] >= 1


def test_post_synthesize_returns_wav_and_mulaw(csm_worker):
    wav = httpx.post(f"{csm_worker}/synthesize", json={"text": "Hello.", "max_audio_ms": 800}, headers=AUTH)
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(wav.content)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        assert w.getnframes() == 10 * FRAME
        pcm = w.readframes(w.getnframes())
    assert np.abs(np.frombuffer(pcm, "<i2")).max() > 1000
    mulaw = httpx.post(f"{csm_worker}/synthesize", json={"text": "Hello.", "max_audio_ms": 800, "format": "mulaw8k"},
                       headers=AUTH)
    assert mulaw.status_code == 200 and mulaw.headers["content-type"] == "audio/basic"
    assert len(mulaw.content) == 10 * FRAME // 3  # 8 kHz, one byte a sample
    decoded = np.frombuffer(audioop.ulaw2lin(mulaw.content, 2), "<i2")
    assert np.abs(decoded).max() > 1000
    bad = httpx.post(f"{csm_worker}/synthesize", json={"text": "", "format": "ogg"}, headers=AUTH)
    assert bad.status_code == 422 and "format" in bad.text
    voice = httpx.post(f"{csm_worker}/synthesize", json={"text": "Hi.", "voice": "alice"}, headers=AUTH)
    assert voice.status_code == 400 and "speaker ids" in voice.json()["detail"]


async def test_context_audio_and_own_utterances(csm_worker):
    user = (np.sin(np.linspace(0, 400 * np.pi, 16000)) * 8000).astype("<i2").tobytes()  # 1 s at 16 kHz
    user_turn = {"speaker": 1, "text": "What time is it?", "audio": base64.b64encode(user).decode(),
                 "sample_rate": 16000}
    async with websockets.connect(ws_url(csm_worker), additional_headers=AUTH) as ws:
        _, _, first = await speak(ws, "t1", "It is noon.", context=[user_turn], max_audio_ms=400)
        assert first["context_turns"] == 1 and first["context_encodes"] == 1
        assert first["session_context_encodes"] == 1
        bot_turn = {"speaker": 0, "text": "It is noon.", "request_id": "t1"}
        _, _, second = await speak(ws, "t2", "Anything else?", context=[user_turn, bot_turn], max_audio_ms=400)
        # The user's audio was encoded once; the bot's turn reused the worker's own 5 frames.
        assert second["context_turns"] == 2 and second["context_encodes"] == 0
        assert second["session_context_encodes"] == 1
        assert second["prompt_positions"] > first["prompt_positions"] + 5


async def test_native_sessions_keep_context_across_reconnects(csm_worker):
    url = ws_url(csm_worker, "/v1/native/ws/call-42")
    async with websockets.connect(url, additional_headers=AUTH) as ws:
        _, frames, done = await speak(ws, "n1", "Good morning.", max_audio_ms=400)
        assert done["type"] == "done" and len(frames) == 5
    ref = [{"speaker": 0, "text": "Good morning.", "request_id": "n1"}]
    async with websockets.connect(url, additional_headers=AUTH) as ws:
        _, _, kept = await speak(ws, "n2", "Again.", context=ref, max_audio_ms=160)
    text_only = [{"speaker": 0, "text": "Good morning."}]
    async with websockets.connect(ws_url(csm_worker, "/v1/native/ws/other-call"), additional_headers=AUTH) as ws:
        _, _, fresh = await speak(ws, "n2", "Again.", context=text_only, max_audio_ms=160)
        # Another session never made n1: the reference is refused, not read as text only.
        _, frames, refused = await speak(ws, "n3", "Again.", context=ref, max_audio_ms=160)
        assert refused["type"] == "error" and refused["code"] == "bad_request" and "'n1'" in refused["message"]
        assert not frames
    # Same session: the reference resolves to 5 frames (+ audio eos).
    assert kept["type"] == "done" and kept["prompt_positions"] == fresh["prompt_positions"] + 6
    with_session = httpx.post(f"{csm_worker}/synthesize", headers=AUTH,
                              json={"text": "Hi.", "session": "call-42", "max_audio_ms": 160})
    assert with_session.status_code == 200


async def test_concurrent_sessions_share_the_model(csm_worker):
    async def one(i: int) -> tuple[int, dict]:
        async with websockets.connect(ws_url(csm_worker), additional_headers=AUTH) as ws:
            _, frames, done = await speak(ws, f"c{i}", f"Caller {i}.", max_audio_ms=2000)
            return len(frames), done

    results = await asyncio.gather(*(one(i) for i in range(4)))
    assert all(n == 25 and done["type"] == "done" and not done["cancelled"] for n, done in results)
    # The sessions take turns frame by frame: every one had audio before any of them had finished.
    assert max(done["first_chunk_ms"] for _, done in results) < min(done["total_ms"] for _, done in results)


async def test_no_auth_worker_accepts_requests_without_a_key(tiny_csm, tmp_path):
    with worker_process(["-m", "vivavoce_csm", "--model", str(tiny_csm)], log=tmp_path / "w.log", auth=False) as url:
        async with websockets.connect(ws_url(url)) as ws:
            _, frames, done = await speak(ws, "free", max_audio_ms=160)
        assert done["type"] == "done" and len(frames) == 2
        assert httpx.post(f"{url}/synthesize", json={"text": "Hi.", "max_audio_ms": 160}).status_code == 200


def test_a_worker_without_a_key_refuses_to_start(tiny_csm):
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(csm_python()), "-m", "vivavoce_csm", "--model", str(tiny_csm), "--api-key-env",
                             "NO_SUCH_KEY_VAR"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "NO_SUCH_KEY_VAR" in result.stderr
