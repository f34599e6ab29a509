"""Silero VAD scoring at 8 kHz against 16 kHz on phone audio: cost per window and agreement. Prints JSON.

    .venv/bin/python bench/vad_rate.py

Phone bots score the caller's audio at 8 kHz (`turn_taking.vad.model_sample_rate: auto`). Cost: CPU per
window through the shared batcher, at batch sizes a busy server sees. Agreement: the bundled real speech,
clean and with white noise, sent through a phone line (8 kHz mu-law, back to 16 kHz), judged by pipecat's
VAD state machine at both rates: windows whose speaking state agrees, and how far the speech onsets move.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from vivavoce.batched_vad import WINDOW_SAMPLES, BatchedSileroVADAnalyzer, SileroBatcher, SileroSlot, _Request
from vivavoce.samples import conversation
from vivavoce.testing.media_streams import FRAME_SECS
from vivavoce.testing.phone_line import through_phone_line

PARAMS = VADParams(confidence=0.7, start_secs=0.2, stop_secs=0.2, min_volume=0.0)


def cost_us_per_window(batch: int, rate: int, repeats: int = 300) -> float:
    """CPU microseconds per window when ``batch`` sessions are scored together."""
    batcher, rng = SileroBatcher(), np.random.default_rng(0)
    windows = [rng.normal(0, 0.1, WINDOW_SAMPLES[rate]).astype(np.float32) for _ in range(batch)]
    requests = [_Request(SileroSlot(), w, rate, None) for w in windows]  # what score() queues
    batcher._infer(requests)  # warm-up
    started = time.process_time()
    for _ in range(repeats):
        batcher._infer(requests)
    return (time.process_time() - started) / repeats / batch * 1e6


async def speaking_states(pcm: np.ndarray, model_sample_rate: int) -> list[bool]:
    """Per 20 ms frame: is pipecat's VAD in the speaking state."""
    analyzer = BatchedSileroVADAnalyzer(
        params=PARAMS,
        model_sample_rate=model_sample_rate,
        narrowband_input=True,
        batcher=SileroBatcher(max_wait_secs=0),
    )
    analyzer.set_sample_rate(16000)
    step = int(16000 * FRAME_SECS)
    states = []
    for start in range(0, len(pcm) - step + 1, step):
        states.append(await analyzer.analyze_audio(pcm[start : start + step].tobytes()) == VADState.SPEAKING)
    return states


def onsets(states: list[bool]) -> list[float]:
    return [i * FRAME_SECS for i, s in enumerate(states) if s and (i == 0 or not states[i - 1])]


def with_noise(pcm: np.ndarray, snr_db: float) -> np.ndarray:
    speech_power = np.mean(pcm[np.abs(pcm) > 300].astype(np.float64) ** 2)
    noise = np.random.default_rng(1).normal(0, np.sqrt(speech_power / 10 ** (snr_db / 10)), len(pcm))
    return np.clip(pcm + noise, -32768, 32767).astype(np.int16)


async def agreement() -> dict:
    clean = conversation(gap_secs=1.5).pcm
    report = {}
    for name, pcm in (("clean", clean), ("snr_20db", with_noise(clean, 20)), ("snr_10db", with_noise(clean, 10))):
        line = await through_phone_line(pcm)
        wide, narrow = await speaking_states(line, 16000), await speaking_states(line, 8000)
        a, b = onsets(wide), onsets(narrow)
        moved = [abs(x - y) * 1000 for x, y in zip(a, b, strict=False)]
        report[name] = {
            "frames_agreeing": round(float(np.mean(np.equal(wide, narrow))), 3),
            "onsets_16k": len(a),
            "onsets_8k": len(b),
            "onset_shift_ms_max": round(max(moved), 1) if moved else None,
            "onset_shift_ms_mean": round(float(np.mean(moved)), 1) if moved else None,
        }
    return report


def main() -> None:
    costs = {
        f"batch_{batch}": {f"{rate}_hz": round(cost_us_per_window(batch, rate), 1) for rate in (16000, 8000)}
        for batch in (1, 8, 25)
    }
    print(
        json.dumps(
            {"benchmark": "vad_rate", "cpu_us_per_window": costs, "agreement": asyncio.run(agreement())}, indent=2
        )
    )


if __name__ == "__main__":
    main()
