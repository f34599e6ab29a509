"""The Moshi worker on a tiny random checkpoint (real moshi classes, loaded through --model), over /api/chat."""

from __future__ import annotations

import asyncio
import json
import subprocess

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from moshi_support import (
    AUDIO,
    ERROR,
    FRAME,
    HANDSHAKE,
    REPO,
    WORKER_DIR,
    WORKER_PYTHON,
    chat_pcm,
    make_tiny_checkpoint,
    moshi_worker,
    noise_audio,
    worker_env,
)

SECONDS = 2.4  # 30 frames


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-moshi"))


@pytest.fixture(scope="module")
def worker(tiny):
    with moshi_worker(tiny, "--greedy", "--slots", "3") as w:
        yield w


@pytest.fixture(scope="module")
def solo(worker):
    """Each test input run alone, as references."""
    return {seed: asyncio.run(chat_pcm(worker.chat_url, noise_audio(SECONDS, seed))) for seed in (1, 2, 3)}


def test_health_reports_the_model_and_slots(worker, tiny):
    health = worker.health()
    assert health["status"] == "ok" and health["model"] == "moshi" and health["weights"] == str(tiny)
    assert health["device"] == "cpu" and health["max_sessions"] == 3 and health["active_sessions"] == 0
    assert health["queued_frames"] == 0 and health["memory"]["rss_bytes"] > 0


def test_pcm_conversation_gets_a_frame_per_frame_and_text(solo):
    result = solo[1]
    frames = int(SECONDS * 24000) // FRAME
    assert len(result.frames) == frames - 1  # the first input frame is in the model's past
    assert all(len(f) == FRAME * 2 for f in result.frames)
    assert np.abs(result.pcm()).max() > 100  # the random model says something
    assert result.texts and all(isinstance(t, str) and t for _, t in result.texts)
    assert not result.errors
    # Different input, different conversation (the codes and thus the replies depend on the user).
    assert not np.array_equal(result.pcm(), solo[2].pcm())


async def test_batched_conversations_equal_solo_runs(worker, solo):
    # Three at once, joining at different times and sending in bursts of different sizes.
    async def late(seed, delay, chunk):
        await asyncio.sleep(delay)
        return await chat_pcm(worker.chat_url, noise_audio(SECONDS, seed), chunk_frames=chunk, realtime=True)

    results = await asyncio.gather(late(1, 0, 1), late(2, 0.3, 3), late(3, 0.7, 2))
    for seed, batched in zip((1, 2, 3), results, strict=True):
        reference = solo[seed]
        assert len(batched.frames) == len(reference.frames)
        assert np.abs(batched.pcm().astype(int) - reference.pcm().astype(int)).max() <= 2  # float rounding
        assert batched.texts == reference.texts
    assert worker.health()["steps"] > 0


async def test_a_freed_slot_is_reset_for_the_next_conversation(worker, solo):
    # One long conversation keeps a slot busy while others come and go through the remaining slots.
    long_one = asyncio.create_task(chat_pcm(worker.chat_url, noise_audio(4.0, 9), realtime=True))
    await asyncio.sleep(0.2)
    first = await chat_pcm(worker.chat_url, noise_audio(SECONDS, 2))
    again = await chat_pcm(worker.chat_url, noise_audio(SECONDS, 1))
    await long_one
    assert np.abs(first.pcm().astype(int) - solo[2].pcm().astype(int)).max() <= 2
    assert np.abs(again.pcm().astype(int) - solo[1].pcm().astype(int)).max() <= 2
    assert again.texts == solo[1].texts
    for _ in range(100):  # a slot is released once the server has seen the socket close
        if worker.health()["active_sessions"] == 0:
            break
        await asyncio.sleep(0.1)
    assert worker.health()["active_sessions"] == 0


async def test_a_full_server_refuses_politely(worker):
    async with connect(f"{worker.chat_url}?codec=pcm16") as a, connect(f"{worker.chat_url}?codec=pcm16") as b, \
            connect(f"{worker.chat_url}?codec=pcm16") as c:
        for ws in (a, b, c):
            assert await ws.recv() == bytes([HANDSHAKE])
        async with connect(f"{worker.chat_url}?codec=pcm16") as d:
            message = await d.recv()
            assert message[0] == ERROR and b"server full" in message
            with pytest.raises(ConnectionClosed) as closed:
                await d.recv()
            assert closed.value.rcvd.code == 1013 and "server full" in closed.value.rcvd.reason
        assert worker.health()["active_sessions"] == 3


async def test_bad_query_parameters_are_refused_with_a_reason(worker):
    for query, words in (("codec=mp3", "unknown codec"), ("gate=maybe", "gate must be"),
                         ("gate_silence_ms=soon", "integer")):
        async with connect(f"{worker.chat_url}?{query}") as ws:
            message = await ws.recv()
            assert message[0] == ERROR and words in message.decode(errors="replace")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1008


async def test_malformed_messages_beside_a_live_conversation(worker, solo):
    live = asyncio.create_task(chat_pcm(worker.chat_url, noise_audio(SECONDS, 3), realtime=True))
    await asyncio.sleep(0.3)
    # PCM: every bad message gets an error reply, and the conversation goes on.
    bad = [b"", b"\x07hello", bytes([AUDIO]) + b"\x01\x02\x03", bytes([AUDIO]) + bytes(2 * (1 << 20))]
    result = await chat_pcm(worker.chat_url, noise_audio(SECONDS, 1), extra=bad)
    assert len(result.errors) == 4
    assert "empty" in result.errors[0] and "unknown message kind 0x07" in result.errors[1]
    assert "even number of bytes" in result.errors[2] and "refused" in result.errors[3]
    assert np.abs(result.pcm().astype(int) - solo[1].pcm().astype(int)).max() <= 2
    async with connect(f"{worker.chat_url}?codec=pcm16") as ws:
        assert await ws.recv() == bytes([HANDSHAKE])
        await ws.send("a text message")
        assert b"text messages are not part" in await ws.recv()
    # Opus: a broken Ogg stream ends that conversation with a reason.
    async with connect(worker.chat_url) as ws:
        assert await ws.recv() == bytes([HANDSHAKE])
        await ws.send(bytes([AUDIO]) + b"not an ogg page" * 10)
        message = await ws.recv()
        assert message[0] == ERROR and b"Ogg" in message
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1007
    # The live conversation was not disturbed: exactly what it gets alone.
    live_result = await live
    assert np.abs(live_result.pcm().astype(int) - solo[3].pcm().astype(int)).max() <= 2
    assert live_result.texts == solo[3].texts and not live_result.errors


def test_opus_conversation_with_kyutais_wire_format(worker, tiny):
    """A client as Kyutai's: Ogg/Opus both ways through sphn (run in the worker's venv, which has sphn)."""
    done = subprocess.run(
        [str(WORKER_PYTHON), str(REPO / "tests" / "moshi_opus_client.py"), f"{worker.chat_url}?gate=off", "3.0"],
        capture_output=True, text=True, timeout=120, cwd=WORKER_DIR, env=worker_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["handshake"] is True
    assert report["received_seconds"] > 1.5  # Opus pages carry the model's audio back
    assert report["peak"] > 0.01
    assert report["texts"] > 0


async def test_turn_gating_holds_moshi_while_the_user_speaks(worker):
    # 1.2 s of loud "speech", then 2.4 s of near silence.
    loud = noise_audio(1.2, 5, level=0.2)
    quiet = noise_audio(2.4, 6, level=0.0005)
    audio = np.concatenate([loud, quiet])
    gated = await chat_pcm(
        worker.chat_url, audio, query="codec=pcm16&gate=on&gate_silence_ms=480&gate_threshold_db=-40"
    )
    free = await chat_pcm(worker.chat_url, audio, query="codec=pcm16&gate=off")
    out = gated.pcm().reshape(-1, FRAME)
    # Output frame i answers input frame i + 1. Speech: input frames 0-14; the gate opens 6 quiet frames later.
    held = 15 + 6 - 1
    assert not out[:held].any()  # silent while the user spoke and paused
    assert not [t for i, t in gated.texts if i < held]  # and no words
    assert np.abs(out[held + 2 :]).max() > 100  # then Moshi speaks
    assert np.abs(free.pcm().reshape(-1, FRAME)[:held]).max() > 100  # which it does at once without gating


async def test_auth_by_header_or_query_parameter(tiny):
    with moshi_worker(tiny, "--slots", "2", api_key="s3cret") as secured:
        for url, headers in ((secured.chat_url, {}), (f"{secured.chat_url}?api_key=wrong", {})):
            async with connect(url, additional_headers=headers) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd.code == 1008 and "API key" in closed.value.rcvd.reason
        audio = noise_audio(0.8, 1)
        by_query = await chat_pcm(secured.chat_url, audio, query="codec=pcm16&api_key=s3cret")
        by_header = await chat_pcm(secured.chat_url, audio, headers={"X-API-Key": "s3cret"})
        assert len(by_query.frames) == len(by_header.frames) == 9
        assert secured.health()["status"] == "ok"
