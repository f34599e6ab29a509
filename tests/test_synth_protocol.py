"""The synthesis protocol's loose ends (issue #15 item 7), on the tiny CSM worker: ``POST /synthesize``
within a native session, refused context references, the exact ``max_audio_ms`` cap, and the engine
facts of ``done``."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave

import httpx
import numpy as np
import websockets

from test_workers_csm import AUTH, FRAME, speak, ws_url


def post(http: str, **body) -> httpx.Response:
    return httpx.post(f"{http}/synthesize", json=body, headers=AUTH, timeout=120)


async def test_post_synthesize_speaks_within_and_extends_a_native_session(csm_worker):
    # The POST's utterance joins the session under its id (given, or made up and returned).
    named = post(csm_worker, text="Good evening.", session="http-call", id="h1", max_audio_ms=400)
    assert named.status_code == 200 and named.headers["X-Request-Id"] == "h1"
    unnamed = post(csm_worker, text="Welcome.", session="http-call", max_audio_ms=240)
    generated_id = unnamed.headers["X-Request-Id"]
    assert unnamed.status_code == 200 and generated_id.startswith("http-")
    # A WebSocket request of the same session references both; the reference resolves to their frames.
    url = ws_url(csm_worker, "/v1/native/ws/http-call")
    text_only = [{"speaker": 0, "text": "Good evening."}, {"speaker": 0, "text": "Welcome."}]
    by_ref = [
        {"speaker": 0, "text": "Good evening.", "request_id": "h1"},
        {"speaker": 0, "text": "Welcome.", "request_id": generated_id},
    ]
    async with websockets.connect(url, additional_headers=AUTH) as ws:
        _, _, plain = await speak(ws, "w1", "Again.", context=text_only, max_audio_ms=160)
        _, _, referenced = await speak(ws, "w2", "Again.", context=by_ref, max_audio_ms=160)
    assert referenced["type"] == "done" and referenced["context_turns"] == 2
    assert referenced["prompt_positions"] == plain["prompt_positions"] + (5 + 1) + (3 + 1)
    # POST takes the WebSocket's context: references to the session's requests (POST's or the socket's), audio.
    user = (np.sin(np.linspace(0, 400 * np.pi, 8000)) * 8000).astype("<i2").tobytes()
    context = [
        {"speaker": 1, "text": "Hi.", "audio": base64.b64encode(user).decode(), "sample_rate": 16000},
        {"speaker": 0, "text": "Again.", "request_id": "w2"},
        *by_ref,
    ]
    answer = post(csm_worker, text="Fine.", session="http-call", id="h2", context=context, max_audio_ms=160)
    assert answer.status_code == 200 and answer.headers["X-Request-Id"] == "h2"
    # Without a session, references have nothing to resolve to: refused, naming the id.
    alone = post(csm_worker, text="Fine.", id="h3", context=by_ref[:1], max_audio_ms=160)
    assert alone.status_code == 400 and "'h1'" in alone.json()["detail"] and alone.headers["X-Request-Id"] == "h3"
    bad = post(csm_worker, text="Fine.", session="http-call", context=[{"text": "x", "colour": "red"}])
    assert bad.status_code == 422 and "colour" in bad.text


async def test_unknown_or_stale_request_ids_are_refused_on_every_route(csm_worker):
    async with websockets.connect(ws_url(csm_worker), additional_headers=AUTH) as ws:
        await ws.send(json.dumps({"type": "synthesize", "id": "cut", "text": "A long one.", "max_audio_ms": 20_000}))
        while not isinstance(await asyncio.wait_for(ws.recv(), 60), bytes):
            pass
        await ws.send(json.dumps({"type": "cancel", "id": "cut"}))
        while (message := await asyncio.wait_for(ws.recv(), 60)) and isinstance(message, bytes):
            pass
        assert json.loads(message)["cancelled"]
        for stale in ("never-sent", "cut"):  # unknown, and cancelled (its audio was never finished)
            context = [{"speaker": 0, "text": "Earlier.", "request_id": stale}]
            start, frames, reply = await speak(ws, f"ref-{stale}", context=context, max_audio_ms=160)
            assert reply["type"] == "error" and reply["code"] == "bad_request", reply
            assert f"'{stale}'" in reply["message"] and not frames
        # A turn the window would trim is checked too; the socket goes on.
        long_turns = [{"speaker": 0, "text": "word " * 300}] * 12
        _, _, trimmed = await speak(ws, "trim", context=[{"text": "a", "request_id": "gone"}, *long_turns])
        assert trimmed["type"] == "error" and "'gone'" in trimmed["message"]
        _, frames, done = await speak(ws, "fine", max_audio_ms=160)
        assert done["type"] == "done" and len(frames) == 2
    async with websockets.connect(ws_url(csm_worker, "/v1/native/ws/stale"), additional_headers=AUTH) as ws:
        _, _, reply = await speak(ws, "n", context=[{"text": "x", "request_id": "nope"}], max_audio_ms=160)
        assert reply["type"] == "error" and reply["code"] == "bad_request" and "'nope'" in reply["message"]
    refused = post(csm_worker, text="Hi.", session="stale", context=[{"text": "x", "request_id": "nope"}])
    assert refused.status_code == 400 and "'nope'" in refused.json()["detail"]


async def test_max_audio_ms_is_an_exact_cap(csm_worker):
    async with websockets.connect(ws_url(csm_worker), additional_headers=AUTH) as ws:
        # 100 ms: one whole 80 ms frame and 20 ms of the next.
        _, frames, done = await speak(ws, "m1", max_audio_ms=100)
        assert [len(f) // 2 for f in frames] == [FRAME, 480] and done["audio_ms"] == 100.0
        # With fixed frames the cap still holds; only the last frame's padding is added.
        _, frames, done = await speak(ws, "m2", max_audio_ms=170, frame_ms=20, sample_rate=16000)
        assert [len(f) // 2 for f in frames] == [320] * 9 and done["audio_ms"] == 170.0
    wav = post(csm_worker, text="Hello.", max_audio_ms=170)
    with wave.open(io.BytesIO(wav.content)) as w:
        assert w.getnframes() == 170 * 24
    assert wav.headers["X-Audio-Ms"] == "170"


async def test_done_engine_facts_per_request_and_per_session(csm_worker):
    def clip(hz: int) -> dict:
        pcm = (np.sin(np.linspace(0, 2 * np.pi * hz, 16000)) * 8000).astype("<i2").tobytes()
        return {"speaker": 1, "text": f"{hz} hertz.", "audio": base64.b64encode(pcm).decode(), "sample_rate": 16000}

    a, b = clip(200), clip(300)
    async with websockets.connect(ws_url(csm_worker), additional_headers=AUTH) as ws:
        facts = []
        for i, context in enumerate(([a], [a], [a, b], [])):
            _, _, done = await speak(ws, f"f{i}", "Yes.", context=context, max_audio_ms=160)
            facts.append((done["context_turns"], done["context_encodes"], done["session_context_encodes"]))
        # context_encodes: clips this request encoded; session_context_encodes: the session's running total.
        assert facts == [(1, 1, 1), (1, 0, 1), (2, 1, 2), (0, 0, 2)]
    async with websockets.connect(ws_url(csm_worker), additional_headers=AUTH) as other:  # a new session
        _, _, done = await speak(other, "g", "Yes.", context=[a, b], max_audio_ms=160)
        assert (done["context_encodes"], done["session_context_encodes"]) == (2, 2)
