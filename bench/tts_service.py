"""The TTS service (``WS /v1/tts``): the Piper worker's first chunk under load, its real-time factor, and
the loudness of every engine's output against the target (prints JSON).

    python bench/tts_service.py                    # make worker-piper and make worker-csm first
    python bench/tts_service.py --rounds 3 --concurrency 1,4,8

- First chunk: the time from sending ``synthesize`` to the first audio byte, p50/p95 over
  ``--rounds`` rounds of N clients speaking at once (N in ``--concurrency``), each a different sentence.
- Real-time factor: generation time / audio time of single requests (``synthesis_complete``), and the
  wall time of each round over the audio it produced (the worker's throughput under load).
- Loudness: whole utterances measured with pyloudnorm (BS.1770) and their true peak (the ideal 4x
  band-limited interpolation, by FFT),
  per engine and voice: Piper (en_US-joe-medium) and the tiny random CSM (speakers 0 and 1) through
  their workers, and the Chatterbox test engine (a tone; tests/chatterbox_test_worker.py) through the
  same normaliser in this process, since its test worker takes no loudness option.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyloudnorm
import websockets

from vivavoce.testing.processes import free_port, serving

REPO = Path(__file__).resolve().parents[1]
PIPER_PYTHON = REPO / "workers" / "piper" / ".venv" / "bin" / "python"
CSM_PYTHON = REPO / "workers" / "csm" / ".venv" / "bin" / "python"
TARGET = -16.0
SENTENCES = [
    "Sure, I can help you with that right away.",
    "Your table for two is booked for seven tonight.",
    "The next train to the airport leaves in twelve minutes.",
    "I have sent the confirmation to your email address.",
    "It will be sunny this afternoon, with a light breeze.",
    "Please hold on while I check the opening hours.",
    "Your order has shipped and should arrive on Thursday.",
    "The meeting has been moved to half past three.",
]
LONG = [
    "Thanks for calling. I can see your booking here. It is for two people at seven tonight, by the window.",
    "The weather today is sunny and warm. Tomorrow it will rain in the morning, and clear up after lunch.",
    "Please remember to buy milk, bread and fresh oranges. The shop closes at eight, so there is still time.",
    "Your package left the warehouse this morning. It should arrive on Thursday, between nine and noon.",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per concurrency level")
    parser.add_argument("--concurrency", default="1,4,8", help="concurrent requests to try")
    parser.add_argument("--no-csm", action="store_true", help="leave out the tiny CSM's loudness")
    return parser.parse_args()


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1)


def loudness(samples: np.ndarray, rate: int) -> dict[str, float]:
    x = samples.astype(np.float64)
    lufs = pyloudnorm.Meter(rate).integrated_loudness(x)
    padded = np.concatenate([np.zeros(256), x, np.zeros(256)])  # the ideal 4x interpolation, no wrap-around
    peak = np.abs(np.fft.irfft(np.fft.rfft(padded), 4 * len(padded)) * 4).max()
    return {"lufs": round(lufs, 2), "true_peak_dbtp": round(20 * np.log10(peak), 2), "seconds": len(x) / rate}


def summarize(measured: list[dict[str, float]]) -> dict[str, float]:
    deviation = [m["lufs"] - TARGET for m in measured]
    return {
        "utterances": len(measured),
        "mean_deviation_lu": round(statistics.mean(deviation), 2),
        "max_abs_deviation_lu": round(max(abs(d) for d in deviation), 2),
        "max_true_peak_dbtp": max(m["true_peak_dbtp"] for m in measured),
        "seconds": round(sum(m["seconds"] for m in measured), 1),
    }


async def speak(url: str, text: str, **fields) -> tuple[float | None, np.ndarray, dict]:
    """One request on a fresh socket: seconds to the first audio byte, the audio, synthesis_complete."""
    async with websockets.connect(url, max_size=None) as ws:
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "synthesize", "text": text, **fields}))
        first, chunks = None, []
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                first = first if first is not None else time.perf_counter() - sent
                chunks.append(np.frombuffer(message, "<f4"))
                continue
            data = json.loads(message)
            if data["type"] in ("synthesis_complete", "error"):
                audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
                return first, audio, data


async def first_chunk_figures(url: str, levels: list[int], rounds: int) -> dict:
    out = {}
    for n in levels:
        firsts, throughput = [], []
        for r in range(rounds):
            texts = [SENTENCES[(r * n + i) % len(SENTENCES)] for i in range(n)]
            started = time.perf_counter()
            results = await asyncio.gather(*(speak(url, t) for t in texts))
            wall = time.perf_counter() - started
            firsts += [first for first, _, _ in results]
            throughput.append(wall / sum(len(audio) / 24000 for _, audio, _ in results))
        out[str(n)] = {
            "first_chunk_p50_ms": pct(firsts, 50),
            "first_chunk_p95_ms": pct(firsts, 95),
            "requests": len(firsts),
            "wall_over_audio": round(statistics.mean(throughput), 3),
        }
    return out


@contextlib.contextmanager
def worker(command: list[str], log: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving(
        [*command, "--port", str(port), "--no-auth"],
        health=f"{url}/health",
        cwd=REPO,
        log=log,
        ready_secs=300,
        env={**os.environ},
    ):
        yield url.replace("http://", "ws://") + "/v1/tts"


async def piper_figures(args: argparse.Namespace, tmp: Path) -> dict:
    with worker([str(PIPER_PYTHON), "-m", "vivavoce_piper"], tmp / "piper.log") as url:
        await speak(url, "Warm up.")
        single = [await speak(url, text) for text in SENTENCES]
        rtf = [d["generation_ms"] / d["total_duration_ms"] for _, _, d in single]
        figures = {
            "first_chunk": await first_chunk_figures(url, [int(c) for c in args.concurrency.split(",")], args.rounds),
            "rtf_single_request": {"median": round(statistics.median(rtf), 3), "max": round(max(rtf), 3)},
        }
        measured = [loudness(audio, 24000) for _, audio, _ in [await speak(url, t) for t in LONG * 2]]
        figures["loudness"] = {"en_US-joe-medium": summarize(measured)}
    with worker([str(PIPER_PYTHON), "-m", "vivavoce_piper", "--loudness-lufs", "off"], tmp / "off.log") as url:
        raw = [loudness(audio, 24000) for _, audio, _ in [await speak(url, t) for t in LONG]]
        figures["loudness_off"] = {"en_US-joe-medium": summarize(raw)}
    return figures


async def csm_figures(tmp: Path) -> dict:
    checkpoint = tmp / "tiny-csm"
    subprocess.run(
        [str(CSM_PYTHON), "-m", "vivavoce_csm.tiny", str(checkpoint)], check=True, cwd=REPO, stdout=subprocess.DEVNULL
    )
    command = [
        str(CSM_PYTHON),
        "-m",
        "vivavoce_csm",
        "--model",
        str(checkpoint),
        "--device",
        "cpu",
        "--max-audio-ms",
        "4000",
    ]
    out = {}
    with worker(command, tmp / "csm.log") as url:
        for speaker in ("0", "1"):
            measured = [loudness(audio, 24000) for _, audio, _ in [await speak(url, t, voice_id=speaker) for t in LONG]]
            out[f"speaker {speaker}"] = summarize(measured)
    return out


def test_engine_figures() -> dict:
    """The Chatterbox test engine (a tone) through the same normaliser, chunk by chunk, in this process."""
    for folder in ("tests", "workers/common", "workers/chatterbox"):
        sys.path.insert(0, str(REPO / folder))
    import chatterbox_test_worker
    from vivavoce_worker.engine import SynthesisRequest
    from vivavoce_worker.loudness import LoudnessControl

    chatterbox_test_worker.PACE = 1e9  # no model pace to imitate here
    engine = chatterbox_test_worker.ToneTestEngine()
    engine.voices = {"300hz": 300.0}
    control = LoudnessControl(TARGET)
    out = {}
    for voice in (None, "300hz"):
        measured = []
        for exaggeration in (0.1, 0.5, 1.5):
            for text in LONG[:2]:
                request = SynthesisRequest(id="b", text=text, voice=voice, options={"exaggeration": exaggeration})
                normalizer = control.normalizer(engine.sample_rate, voice)
                chunks: list[np.ndarray] = []
                engine.generate(request, None, lambda x, n=normalizer, out=chunks: out.append(n.process(x)))
                control.learn(voice, normalizer)
                measured.append(loudness(np.concatenate(chunks), engine.sample_rate))
        out[voice or "builtin 220hz"] = summarize(measured)
    return out


async def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        result = {"target_lufs": TARGET, "piper": await piper_figures(args, tmp)}
        loud = {"piper": result["piper"].pop("loudness")}
        if not args.no_csm:
            loud["csm (tiny random)"] = await csm_figures(tmp)
        loud["chatterbox test engine"] = test_engine_figures()
        result["loudness"] = loud
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
