"""A sentence said in two parts: the words of the second part that reach the turn (prints JSON).

    python bench/stt_parts.py [--pauses 0.3,0.4,0.55,0.7,1.0] [--model tiny.en]

A user who pauses mid-sentence ("others call | me mother nature.") gives the STT one segment per part.
This cuts every utterance of ``vivavoce.testing.real_speech`` with at least four words in two, at the
word boundary nearest its middle that Whisper and the transcript agree on
(``conversation_eval.split_after_words``), and builds the second part's segment as pipecat's segmented
STT hands it over (``conversation_eval.stt_segment_after_pause``): the second of audio before the VAD
fired, so the pause and, after a short pause, the end of the first part; then the part and the STT's
trailing silence. The second part goes through ``SharedWhisperSTTService.run_stt``, pipecat's
no-speech filter included, wideband and through the phone line, twice: as the service reads it
(Whisper's own rule, ``vivavoce.processors.whisper.judged``) and with pipecat's filter alone. Reported
per pause and path: second parts whose words never reached a transcript, and the WER of the second parts
(numbers scored as said).
"""

from __future__ import annotations

import argparse
import asyncio
import json

import numpy as np
from pipecat.frames.frames import TranscriptionFrame

from vivavoce.processors import whisper
from vivavoce.processors.whisper import SharedWhisperSTTService
from vivavoce.testing import real_speech
from vivavoce.testing.conversation_eval import (
    corpus_wer,
    normalise_words,
    split_after_words,
    stt_segment_after_pause,
)
from vivavoce.testing.phone_line import through_phone_line


async def transcript(service: SharedWhisperSTTService, pcm: np.ndarray) -> str:
    """What ``run_stt`` makes of ``pcm`` (int16): the text that reaches the turn."""
    frames = [f async for f in service.run_stt(pcm.astype(np.int16).tobytes())]
    return " ".join(f.text.strip() for f in frames if isinstance(f, TranscriptionFrame))


async def measure(
    service: SharedWhisperSTTService, pairs: list[tuple[np.ndarray, np.ndarray, str]], pause_s: float
) -> dict:
    """Second parts lost and their WER, over ``pairs`` ((first pcm, second pcm, second's reference))."""
    scored, lost = [], []
    for first, second, reference in pairs:
        heard = await transcript(service, stt_segment_after_pause(first, second, pause_s))
        scored.append((reference, heard))
        if not normalise_words(heard):
            lost.append(reference)
    return {"second_parts_lost": len(lost), "lost": lost, "wer": round(corpus_wer(scored), 3)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pauses", default="0.3,0.4,0.55,0.7,1.0", help="pauses between the parts, seconds")
    parser.add_argument("--model", default="tiny.en")
    args = parser.parse_args()

    service = SharedWhisperSTTService(settings=SharedWhisperSTTService.Settings(model=args.model, language="en"))
    service._load()
    wide, phone = [], []
    for utterance in real_speech.utterances():
        if len(utterance.text.split()) < 4:
            continue
        first, second = split_after_words(utterance, [len(utterance.text.split()) // 2])
        wide.append((first.pcm, second.pcm, second.text))
        phone.append((await through_phone_line(first.pcm), await through_phone_line(second.pcm), second.text))
    result: dict = {"model": args.model, "sentences": len(wide), "pauses": {}}
    rules = {"whisper_rule": whisper.judged, "pipecat_filter_alone": lambda segment: segment}
    for pause_s in (float(p) for p in args.pauses.split(",")):
        entry = result["pauses"][f"{pause_s:g}"] = {}
        for path, pairs in (("wideband", wide), ("phone", phone)):
            entry[path] = {}
            for name, rule in rules.items():
                whisper.judged = rule  # the service's transcriber looks the rule up at each segment
                entry[path][name] = await measure(service, pairs, pause_s)
            whisper.judged = rules["whisper_rule"]
    await service.cleanup()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
