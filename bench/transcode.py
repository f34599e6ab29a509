"""Outbound phone audio: 24 kHz PCM (a TTS's rate) -> 8 kHz mu-law, as the Twilio serializer does it. Prints JSON.

    .venv/bin/python bench/transcode.py [--seconds 60]

Runs pipecat's `pcm_to_ulaw` with a soxr stream resampler (what `TwilioFrameSerializer` uses) on 20 ms
chunks of real speech, on one core, and reports how many times faster than real time it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import numpy as np
import soxr
from pipecat.audio.utils import create_stream_resampler, pcm_to_ulaw

from vivavoce.packaged_models import speech_sample
from vivavoce.wav import read_wav


async def transcode(pcm_24k: bytes, quality: str) -> float:
    """Seconds of CPU to transcode ``pcm_24k`` chunk by chunk."""
    resampler = create_stream_resampler(quality=quality) if quality else create_stream_resampler()
    chunk = 24000 * 2 // 50  # 20 ms
    started = time.process_time()
    for start in range(0, len(pcm_24k), chunk):
        await pcm_to_ulaw(pcm_24k[start : start + chunk], 24000, 8000, resampler)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of audio to transcode")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    speech = read_wav(speech_sample())
    pcm = soxr.resample(speech.pcm, speech.sample_rate, 24000).astype(np.int16)
    repeats = int(np.ceil(args.seconds * 24000 / len(pcm)))
    audio = np.tile(pcm, repeats)[: int(args.seconds * 24000)].tobytes()
    results = {}
    for quality in ("VHQ", "QQ"):
        cpu = asyncio.run(transcode(audio, quality))
        results[quality] = {"cpu_s": round(cpu, 3), "x_realtime_per_core": round(args.seconds / cpu, 1)}
    print(json.dumps({
        "benchmark": "transcode",
        "what": "24 kHz PCM -> 8 kHz mu-law in 20 ms chunks (pipecat pcm_to_ulaw + soxr stream resampler)",
        "audio_s": args.seconds,
        "target_x_realtime_per_core": 500,
        "by_resampler_quality": results,
    }, indent=2))


if __name__ == "__main__":
    main()
