"""Whisper's encoder window: word error rate and time per utterance, on real speech (prints JSON).

    python bench/stt_window.py [--windows 10,15,20,30] [--model tiny.en] [--repeats 1]

The ``whisper`` kind encodes an utterance shorter than ``window_secs`` (10 s by default) in a window that
long instead of Whisper's fixed 30 s (``vivavoce.processors.whisper.SpeculativeTranscriber``); 30 takes
faster-whisper's own path. This transcribes every utterance of ``vivavoce.testing.real_speech`` (43
utterances, 10 speakers) whole, as a turn's final transcript does, once per window, wideband and
through the phone line (8 kHz mu-law, back to 16 kHz as the agent hands it to Whisper), and reports the
corpus WER (numbers scored as said) and the mean and p90 time per utterance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
import soxr

from vivavoce.processors.whisper import SpeculativeTranscriber, load_whisper
from vivavoce.testing import real_speech
from vivavoce.testing.conversation_eval import corpus_wer, percentiles, phone_audio


def measure(transcriber: SpeculativeTranscriber, clips: list[tuple[str, np.ndarray]], repeats: int) -> dict:
    """WER over ``clips`` ((reference, float32 16 kHz audio)) and the time of each transcription."""
    pairs, times = [], []
    for reference, audio in clips:
        for _ in range(repeats):
            started = time.perf_counter()
            segments, _info = transcriber.transcribe(audio, language="en")
            times.append((time.perf_counter() - started) * 1000)
        pairs.append((reference, " ".join(s.text for s in segments)))
    return {
        "wer": round(corpus_wer(pairs), 3),
        "ms_mean": round(float(np.mean(times)), 1),
        "ms_p90": percentiles(times, "p90")["p90"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", default="10,15,20,30", help="window lengths in seconds (30: Whisper's own)")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--repeats", type=int, default=1, help="transcriptions of each utterance (for the times)")
    args = parser.parse_args()

    model = load_whisper(args.model, "cpu", "int8")
    utterances = real_speech.utterances()
    wide = [(u.text, u.pcm.astype(np.float32) / 32768) for u in utterances]
    phone = []
    for u in utterances:
        narrow = await phone_audio(u.pcm)
        phone.append((u.text, soxr.resample(narrow.astype(np.float32) / 32768, 8000, 16000)))
    result = {
        "model": args.model,
        "utterances": len(utterances),
        "speakers": len(real_speech.speakers()),
        "audio_s": round(sum(u.seconds for u in utterances), 1),
        "windows": {},
    }
    for window in (float(w) for w in args.windows.split(",")):
        transcriber = SpeculativeTranscriber(model, window_secs=window)
        result["windows"][f"{window:g}"] = {
            "wideband": measure(transcriber, wide, args.repeats),
            "phone": measure(transcriber, phone, args.repeats),
        }
        transcriber.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
