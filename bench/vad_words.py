"""Which VAD settings hear a word said alone, how soon they hear speech start, and what noise starts them. Prints JSON.

    .venv/bin/python bench/vad_words.py [--settings pipecat,phone_bots_before,vivavoce,...]

Pieces, from the real-speech corpus (vivavoce.testing.real_speech), each with 1 s of faint noise (sigma 3)
before and after:
- words: every word of every utterance as if said alone (conversation_eval.word_alone at faster-whisper
  tiny.en's word times), 0.15-0.6 s of voice: the short answers of a conversation ("No.", "Hello?", "Six.");
- short utterances: the corpus's whole utterances of <= 1 s of voice;
- utterances: every utterance; onset = from its first voice (conversation_eval.voiced_bounds) to "speaking";
- recordings: the nine whole recordings the utterances come from, pauses, breaths and margins included:
  how many times the VAD starts on each (a setting that starts in a pause starts more often).
Each wideband and through a phone line (8 kHz mu-law, back to 16 kHz), scored as the bot scores that band
(vivavoce.builder.vad_analyzer: 8 kHz for the phone). The ``asr_service*`` settings run the ASR service's own
turn detector instead (workers/asr: Silero v6's probability per 32 ms window against a threshold, at 16 kHz
in both bands, as the service resamples what it gets); its starts count a turn's start and every resumption
after a pause, as the agent's VAD does. Noise: 30 s each of white and pink noise, mains hum,
clicks, beeps and key clicks, with no speech in them; every "speaking" onset on them is a false start.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from vivavoce.botfile.schema import VADConfig
from vivavoce.builder import vad_analyzer
from vivavoce.testing import conversation_eval as ce
from vivavoce.testing.phone_line import through_phone_line
from vivavoce.testing.real_speech import RATE, RECORDINGS, recording_audio, utterances

# The ASR service's pure modules (numpy and onnxruntime only), from its source.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers" / "asr"))
from vivavoce_asr import (
    models as asr_models,  # noqa: E402
    turns as asr_turns,  # noqa: E402
    vad as asr_vad,  # noqa: E402
)

STEP = RATE // 50  # 20 ms frames, as the transports deliver them
PAD_SECS = 1.0
NOISE_SECS = 30.0

PIPECAT = VADParams().model_dump()  # pipecat's defaults, and bots/local.yaml's before 2026-12-01
VIVAVOCE = VADConfig().model_dump(exclude={"model_sample_rate"})  # the bot file's defaults now
SETTINGS: dict[str, dict] = {
    "pipecat": PIPECAT,
    "phone_bots_before": {**PIPECAT, "min_volume": 0.0},  # bots/twilio*.yaml before 2026-12-01
    "vivavoce": VIVAVOCE,
    "start_0.1": {**VIVAVOCE, "start_secs": 0.1},
    "confidence_0.6": {**VIVAVOCE, "confidence": 0.6},
    "asr_service_before": {"detector": "asr_service", "threshold": 0.5, "start_secs": 0.2, "stop_secs": 0.2},
}
SETTINGS["asr_service"] = {"detector": "asr_service", **asdict(asr_turns.TurnParams())}  # its defaults now


def _padded(pcm: np.ndarray, seed: int) -> np.ndarray:
    """``pcm`` between two stretches of faint noise (a real line is never digital zero)."""
    pad = np.zeros(int(PAD_SECS * RATE))
    audio = np.concatenate([pad, pcm.astype(np.float64), pad])
    audio += np.random.default_rng(seed).normal(0, 3, len(audio))
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16)


async def _onsets(pcm: np.ndarray, settings: dict, phone: bool) -> list[float]:
    """Seconds into ``pcm`` at which the VAD, fed 20 ms frames, turns to "speaking"."""
    if settings.get("detector") == "asr_service":
        return _asr_service_onsets(pcm, settings)
    vad = vad_analyzer(VADConfig(**settings), narrowband_input=phone)
    vad.set_sample_rate(RATE)
    onsets, speaking = [], False
    try:
        for start in range(0, len(pcm) - STEP + 1, STEP):
            now = (await vad.analyze_audio(pcm[start : start + STEP].tobytes())) == VADState.SPEAKING
            if now and not speaking:
                onsets.append((start + STEP) / RATE)
            speaking = now
    finally:
        await vad.cleanup()
    return onsets


@functools.cache
def _asr_silero() -> asr_vad.SileroVad:
    """The ASR service's Silero model, loaded once."""
    return asr_vad.SileroVad(asr_models.silero_vad())


def _asr_service_onsets(pcm: np.ndarray, settings: dict) -> list[float]:
    """Seconds into ``pcm`` at which the ASR service's turn detector, fed 20 ms frames, starts or resumes a turn."""
    params = {k: v for k, v in settings.items() if k != "detector"}
    detector, stream = asr_turns.TurnDetector(asr_turns.TurnParams(**params)), _asr_silero().stream()
    onsets, index = [], 0
    for start in range(0, len(pcm) - STEP + 1, STEP):
        for probability in stream.feed(pcm[start : start + STEP].astype(np.float32) / 32768.0):
            events = detector.window(index, float(probability))
            index += 1
            if any(isinstance(e, (asr_turns.SpeechStarted, asr_turns.Resumed)) for e in events):
                onsets.append(index * asr_vad.WINDOW / RATE)
    return onsets


def _noises() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    n = int(NOISE_SECS * RATE)
    t = np.arange(n) / RATE

    def at_db(x: np.ndarray, db: float) -> np.ndarray:
        return x / np.sqrt((x**2).mean()) * 32768 * 10 ** (db / 20)

    spectrum = np.fft.rfft(rng.normal(size=n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    spectrum[0] = 0
    pink = np.fft.irfft(spectrum, n)
    key = np.exp(-np.arange(400) / 60) * rng.normal(size=400)
    noises = {
        "white -40 dBFS": at_db(rng.normal(size=n), -40),
        "white -25 dBFS": at_db(rng.normal(size=n), -25),
        "pink -35 dBFS": at_db(pink, -35),
        "pink -20 dBFS": at_db(pink, -20),
        "hum 50 Hz -20 dBFS": at_db(np.sin(2 * np.pi * 50 * t) + 0.3 * np.sin(2 * np.pi * 150 * t), -20),
        "clicks": np.where(rng.random(n) < 2 / RATE, 8000.0, 0.0),
        "beeps 1 kHz": at_db(np.sin(2 * np.pi * 1000 * t) * ((t % 2) < 0.3), -25),
        "key clicks": np.convolve(np.where(rng.random(n) < 6 / RATE, 1.0, 0.0), key, "same") * 6000,
    }
    return {name: np.clip(np.round(x), -32768, 32767).astype(np.int16) for name, x in noises.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    args = parser.parse_args()
    chosen = args.settings.split(",")
    if unknown := [name for name in chosen if name not in SETTINGS]:
        parser.error(f"unknown settings {unknown} (known: {', '.join(SETTINGS)})")

    corpus = utterances()
    words: list[tuple[str, np.ndarray]] = []
    for utterance in corpus:
        timed = ce.whisper_words(utterance.id, utterance.pcm)
        for i, word in enumerate(timed):
            pcm = ce.word_alone(utterance, timed, i)
            first, last = ce.voiced_bounds(pcm)
            if 0.15 <= last - first <= 0.6:
                words.append((f"{utterance.id}:{word.text}", pcm))
    short = [(u.id, u.pcm) for u in corpus if np.subtract(*ce.voiced_bounds(u.pcm)[::-1]) <= 1.0]
    whole = [(u.id, u.pcm) for u in corpus]
    recordings = [(r.source, recording_audio(r)) for r in RECORDINGS]
    print(f"{len(words)} words alone, {len(short)} short utterances, {len(whole)} utterances", file=sys.stderr)

    bands: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = {"wideband": {}, "phone": {}}
    for kind, pieces in (("words", words), ("short", short), ("utterances", whole), ("recordings", recordings)):
        padded = [(name, _padded(pcm, seed)) for seed, (name, pcm) in enumerate(pieces)]
        bands["wideband"][kind] = padded
        bands["phone"][kind] = [(name, await through_phone_line(pcm)) for name, pcm in padded]
    noises = _noises()
    first_voice = [PAD_SECS + ce.voiced_bounds(pcm)[0] for _, pcm in whole]

    result: dict[str, dict] = {}
    for name in chosen:
        settings = SETTINGS[name]
        figures: dict[str, dict] = {"settings": settings}
        for band, sets in bands.items():
            phone = band == "phone"
            # All pieces at once: the shared batcher scores their windows together, as for many calls.
            runs = {
                kind: await asyncio.gather(*(_onsets(pcm, settings, phone) for _, pcm in pieces))
                for kind, pieces in sets.items()
            }
            missed = {kind: [n for (n, _), on in zip(sets[kind], runs[kind], strict=True) if not on] for kind in sets}
            delays = [on[0] - voice for on, voice in zip(runs["utterances"], first_voice, strict=True) if on]
            figures[band] = {
                "words_missed": len(missed["words"]),
                "words": len(words),
                "short_utterances_missed": missed["short"],
                "utterances_missed": missed["utterances"],
                "onset_ms_p50": round(float(np.percentile(delays, 50)) * 1000),
                "onset_ms_p90": round(float(np.percentile(delays, 90)) * 1000),
                "recording_starts": {
                    n: len(on) for (n, _), on in zip(sets["recordings"], runs["recordings"], strict=True)
                },
            }
        false = await asyncio.gather(*(_onsets(pcm, settings, False) for pcm in noises.values()))
        figures["noise_false_starts"] = {noise: len(on) for noise, on in zip(noises, false, strict=True)}
        result[name] = figures
        print(name, {b: figures[b]["words_missed"] for b in bands}, file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
