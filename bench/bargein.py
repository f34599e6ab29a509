"""Barge-in on the embedded local bot: real interruptions and backchannels over its answers. Prints JSON.

    .venv/bin/python bench/bargein.py [--cycles 12] [--modes pause_resume,immediate] [--per-event]

One long recording per interruption mode (bots/local.yaml, turn_taking.interruptions.mode set in a
copy), played to the bot through the file transport in real time. It opens with "Ever tried."
(beckett.wav, real human speech), then repeats a two-part cycle, each part timed from when the bot is
expected to start answering the user's previous utterance (about 0.8 s after the user stops):

- A: a real interruption 1.0-2.5 s into the answer;
- C: a Piper-synthesised backchannel 1.0 s into the answer ("mm-hm", "yeah", "I see"... twelve
  distinct, said a little slowly), then a real interruption 3.0 s into it (after the bot resumed).

An interruption is three beckett phrases (six words, e.g. "No matter. Try again. Fail again."),
alternately ``fluent`` (run together: one stretch of speech) and ``paused`` (with ~0.6 s between the
sentences, as the speaker said them). Each interruption is the next utterance the bot answers, so the
chain goes on. Whether the bot was speaking when an event began is read from the report (the answer's
bot_started_s/bot_stopped_s): events outside the bot's speech, or whose answer ended on its own before the
VAD could fire, are invalid, not failures. Per event: did the answer stop (interrupted by a barge-in whose
VAD fired during this event), detect / pipeline_stop / audible_stop from the report, audible stop
cross-checked on the output WAV (aligned with the input: end of the bot's last loud 20 ms frame before
0.3 s of quiet, minus the VAD fire time), bot audio while the user was still talking, and the pauses the
barge-in controller asked for (BotOutputPauseFrame). A backchannel is a false interruption if it stopped
the answer; it resumed if the same answer played on after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vivavoce.realtime_env import apply_realtime_env

apply_realtime_env()

import numpy as np  # noqa: E402
import soxr  # noqa: E402
import yaml  # noqa: E402

from stats import percentile  # noqa: E402
from vivavoce.botfile import Bot, load_bot  # noqa: E402
from vivavoce.builder import load_models  # noqa: E402
from vivavoce.file_session import FileRunResult, run_on_recording  # noqa: E402
from vivavoce.packaged_models import speech_sample  # noqa: E402
from vivavoce.samples import find_phrases, voiced_span  # noqa: E402
from vivavoce.turns import Turn  # noqa: E402
from vivavoce.wav import InputAudio, read_wav  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
FRAME_SECS = 0.02
LOUD_RMS = 150.0  # bot speech is ~1000-4000 RMS; its output track is exact zeros between replies
ANSWER_LATENCY_SECS = 0.8  # user stops -> bot starts, about (bench/local_latency.py: p50 ~0.72 s)
A_OFFSETS = (1.0, 1.75, 2.5, 1.25, 2.0, 1.5, 2.25)  # interruption, seconds into the answer
C_BACKCHANNEL_AT = 1.0  # backchannel, seconds into the answer
C_INTERRUPT_AT = 3.0  # then the interruption
BACKCHANNEL_LENGTH_SCALE = 1.3  # a little drawn out, as acknowledgements are said: "mm-hm" 0.8 s, "yeah" 0.35 s
DETECT_SECS = 0.45  # speech onset -> VAD fires is ~0.3-0.4 s: an answer ending sooner could not be stopped
BACKCHANNELS = (
    "Mm-hm.", "Yeah.", "Okay.", "Uh-huh.", "Right.", "I see.", "Sure.", "Got it.", "Mhm.", "Yes.", "Oh.",
    "Alright.",
)  # fmt: skip
STYLES = ("fluent", "paused")
GROUPS = ((2, 3, 4), (3, 4, 5), (0, 1, 2), (1, 2, 3), (4, 5, 0), (5, 0, 1))  # beckett phrase indices
BECKETT = ("Ever tried.", "Ever failed.", "No matter.", "Try again.", "Fail again.", "Fail better.")
TARGETS = {"interruptions_stopped_share": 0.95, "audible_stop_p95_ms": 40, "backchannel_false_interruption_rate": 0.10}


@dataclass
class Event:
    """Something the user says over the bot, placed at onset_s..end_s on the input timeline."""

    kind: str  # "interruption" | "backchannel"
    style: str  # interruptions: "fluent" | "paused"; backchannels: "clip"
    text: str
    onset_s: float
    end_s: float
    planned_s: float  # seconds into the answer it was aimed at


def beckett() -> list[np.ndarray]:
    """The six phrases of the bundled real-speech recording (16 kHz), padded by find_phrases."""
    source = read_wav(speech_sample())
    assert source.sample_rate == RATE
    return [source.pcm[p.start : p.end] for p in find_phrases(source.pcm, RATE)]


def group_audio(phrases: list[np.ndarray], indices: tuple[int, ...], style: str) -> np.ndarray:
    """Phrases one after the other: ``paused``, with a pause between sentences like the speaker's own
    (~0.6 s); ``fluent``, run together (~0.16 s between them: the VAD hears one stretch of speech)."""
    gap = np.zeros(int((0.45 if style == "paused" else 0.0) * RATE), np.int16)  # + 2 x 0.08 s padding
    parts: list[np.ndarray] = []
    for index in indices:
        parts += [phrases[index], gap]
    return np.concatenate(parts[:-1])


def synthesise(texts: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Backchannel clips in Piper's voice, at 16 kHz, trimmed to 50 ms around the speech."""
    from piper import SynthesisConfig

    from vivavoce.processors.piper import load_voice

    voice = load_voice("en_US-joe-medium")
    slower = SynthesisConfig(length_scale=BACKCHANNEL_LENGTH_SCALE)
    clips = {}
    for text in texts:
        pcm = np.frombuffer(b"".join(c.audio_int16_bytes for c in voice.synthesize(text, syn_config=slower)), np.int16)
        pcm = soxr.resample(pcm, voice.config.sample_rate, RATE).astype(np.int16)
        start, end = voiced_span(pcm)
        clips[text] = pcm[max(0, int((start - 0.05) * RATE)) : int((end + 0.05) * RATE)]
    return clips


def script(cycles: int, phrases: list[np.ndarray], clips: dict[str, np.ndarray]) -> tuple[np.ndarray, list[Event]]:
    """The recording (see the module docstring) and where each event lies in it."""
    parts: list[np.ndarray] = []
    events: list[Event] = []
    now = 0.0

    def add(pcm: np.ndarray) -> float:
        nonlocal now
        parts.append(pcm)
        at = now
        now += len(pcm) / RATE
        return at

    def silence(secs: float) -> None:
        add(np.zeros(max(0, int(round(secs * RATE))), np.int16))

    def say(kind: str, style: str, text: str, pcm: np.ndarray, planned: float) -> None:
        at = add(pcm)
        start, end = voiced_span(pcm)
        events.append(Event(kind, style, text, round(at + start, 3), round(at + end, 3), planned))

    silence(0.5)
    first = add(phrases[0])
    last_speech_end = first + voiced_span(phrases[0])[1]
    clip_texts = list(clips)
    for cycle in range(cycles):
        for part in ("A", "C"):
            group = GROUPS[(2 * cycle + (part == "C")) % len(GROUPS)]
            text = " ".join(BECKETT[i] for i in group)
            answer_at = last_speech_end + ANSWER_LATENCY_SECS
            if part == "A":
                offset = A_OFFSETS[cycle % len(A_OFFSETS)]
            else:
                clip_text = clip_texts[cycle % len(clip_texts)]
                silence(answer_at + C_BACKCHANNEL_AT - now - voiced_span(clips[clip_text])[0])
                say("backchannel", "clip", clip_text, clips[clip_text], C_BACKCHANNEL_AT)
                offset = C_INTERRUPT_AT
            style = STYLES[(cycle + (part == "C")) % 2]  # alternating, so both parts get both styles
            pcm = group_audio(phrases, group, style)
            silence(answer_at + offset - now - voiced_span(pcm)[0])
            say("interruption", style, text, pcm, offset)
            last_speech_end = events[-1].end_s
    silence(8.0)  # the last answer
    return np.concatenate(parts), events


def rms_frames(pcm: np.ndarray) -> np.ndarray:
    step = int(FRAME_SECS * RATE)
    frames = pcm[: len(pcm) // step * step].reshape(-1, step).astype(np.float64)
    return np.sqrt((frames**2).mean(axis=1))


def wav_audible_stop(loud: np.ndarray, fired_s: float, quiet_secs: float = 0.3) -> float | None:
    """The end of the bot's last loud frame before it went quiet for ``quiet_secs``, on/after the VAD fired."""
    need = int(quiet_secs / FRAME_SECS)
    index = max(0, int((fired_s - 0.1) / FRAME_SECS))
    while index < len(loud):
        if not loud[index : index + need].any():
            last = np.flatnonzero(loud[:index])
            return (last[-1] + 1) * FRAME_SECS if len(last) else None
        index += 1
    return None


def loud_secs(loud: np.ndarray, start_s: float, end_s: float) -> float:
    return float(loud[max(0, int(start_s / FRAME_SECS)) : max(0, int(end_s / FRAME_SECS))].sum()) * FRAME_SECS


def longest_quiet_secs(loud: np.ndarray, start_s: float, end_s: float) -> float:
    """The longest run of quiet frames that begins in start_s..end_s (it may run on past end_s)."""
    best, index, stop = 0, max(0, int(start_s / FRAME_SECS)), min(len(loud), int(end_s / FRAME_SECS))
    while index < stop:
        if loud[index]:
            index += 1
            continue
        run = index
        while run < len(loud) and not loud[run]:
            run += 1
        best, index = max(best, run - index), run
    return best * FRAME_SECS


def speaking_turn(turns: list[Turn], at: float) -> Turn | None:
    """The turn whose answer was playing at ``at`` (per the report)."""
    for turn in reversed(turns):
        if turn.bot_started_s is not None and turn.bot_started_s <= at:
            if turn.bot_stopped_s is None or turn.bot_stopped_s > at:
                return turn
            return None
    return None


async def run_recording(bot: Bot, audio: InputAudio) -> tuple[FileRunResult, list[tuple[float, bool]]]:
    """run_on_recording, with the pauses the barge-in controller asked for."""
    result = await run_on_recording(bot, audio)
    return result, result.pauses


def analyse(turns: list[Turn], output: np.ndarray, pauses: list[tuple[float, bool]], events: list[Event]) -> list[dict]:
    loud = rms_frames(output) > LOUD_RMS
    rows = []
    for number, event in enumerate(events):
        following = events[number + 1].onset_s if number + 1 < len(events) else event.end_s + 5.0
        turn = speaking_turn(turns, event.onset_s)
        row: dict = {"kind": event.kind, "style": event.style, "text": event.text, "onset_s": event.onset_s}
        row["planned_s"] = event.planned_s
        row["valid"] = turn is not None
        if turn is None:
            rows.append(row)
            continue
        if not turn.interrupted and turn.bot_stopped_s is not None and turn.bot_stopped_s < event.onset_s + DETECT_SECS:
            row["valid"] = False  # the answer ended on its own before the VAD could fire
            row["answer_ended_s"] = round(turn.bot_stopped_s, 2)
            rows.append(row)
            continue
        row["into_answer_s"] = round(event.onset_s - turn.bot_started_s, 2)
        during = [paused for at, paused in pauses if event.onset_s <= at <= event.end_s + 0.5]
        row["pauses"], row["resumes"] = during.count(True), during.count(False)
        barge = turn.barge_in
        # Stopped by this event: the answer was interrupted by a barge-in the VAD fired during it.
        row["stopped"] = bool(
            turn.interrupted and barge is not None and event.onset_s <= barge.vad_fired_s <= event.end_s + 0.5
        )
        if not row["stopped"]:
            row["answer_interrupted"] = turn.interrupted
            row["barge_fired_s"] = None if barge is None else round(barge.vad_fired_s, 2)
        if row["stopped"]:
            row["barge_in_ms"] = barge.to_dict()
            stop = wav_audible_stop(loud, barge.vad_fired_s)
            row["wav_audible_stop_ms"] = None if stop is None else round(max(0.0, stop - barge.vad_fired_s) * 1000, 1)
            row["fired_after_onset_s"] = round(barge.vad_fired_s - event.onset_s, 2)
        # Bot audio while the user was still talking, from 0.5 s after they began (the VAD fires ~0.2-0.4 s
        # in, the pause takes 20-40 ms): what resuming over the user, or answering mid-sentence, costs.
        row["bot_audio_during_user_ms"] = round(loud_secs(loud, event.onset_s + 0.5, event.end_s) * 1000)
        if event.kind == "backchannel":
            # Resumed: the same answer plays on after the clip (before the next event).
            until = min(following, turn.bot_stopped_s if turn.bot_stopped_s is not None else following)
            row["resumed"] = not row["stopped"] and loud_secs(loud, event.end_s, until) >= 0.1
            # The silence the pause left in the answer (a word gap where the VAD never fired).
            row["gap_in_answer_ms"] = round(longest_quiet_secs(loud, event.onset_s, event.end_s + 0.3) * 1000)
        rows.append(row)
    return rows


def spread(values: list[float]) -> dict:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values, default=None)}


def interruption_summary(rows: list[dict]) -> dict:
    valid = [r for r in rows if r["valid"]]
    stopped = [r for r in valid if r["stopped"]]
    into = [r["into_answer_s"] for r in valid]
    wav = [r["wav_audible_stop_ms"] for r in stopped if r["wav_audible_stop_ms"] is not None]
    return {
        "runs": len(rows),
        "valid": len(valid),
        "stopped": len(stopped),
        "stopped_share": round(len(stopped) / len(valid), 3) if valid else None,
        "into_answer_s": {"min": min(into, default=None), "max": max(into, default=None)},
        "barge_in_ms": {
            key: {"p50": percentile(ms, 50), "p95": percentile(ms, 95)}
            for key in ("detect", "pipeline_stop", "audible_stop")
            for ms in [[r["barge_in_ms"][key] for r in stopped]]
        },
        "wav_audible_stop_ms": spread(wav),
        "stopped_after_onset_s": spread([r["fired_after_onset_s"] for r in stopped]),
        "resumed_over_user": sum(r["resumes"] > 0 for r in valid),
        "bot_audio_during_user_ms": spread([r["bot_audio_during_user_ms"] for r in valid]),
        "not_stopped": [r["text"] for r in valid if not r["stopped"]],
    }


def summarise(rows: list[dict]) -> dict:
    interruptions = [r for r in rows if r["kind"] == "interruption"]
    backchannels = [r for r in rows if r["kind"] == "backchannel"]
    valid_bc = [r for r in backchannels if r["valid"]]
    false_stops = [r for r in valid_bc if r["stopped"]]
    summary = interruption_summary(interruptions)
    summary["by_style"] = {
        style: {k: v for k, v in interruption_summary([r for r in interruptions if r["style"] == style]).items()
                if k in ("runs", "valid", "stopped", "stopped_share", "resumed_over_user", "not_stopped")}
        for style in STYLES
    }  # fmt: skip
    return {
        "interruptions": summary,
        "backchannels": {
            "runs": len(backchannels),
            "valid": len(valid_bc),
            "distinct_clips": len({r["text"] for r in backchannels}),
            "vad_fired": sum(r["pauses"] > 0 or r["stopped"] for r in valid_bc),
            "false_interruptions": len(false_stops),
            "false_interruption_rate": round(len(false_stops) / len(valid_bc), 3) if valid_bc else None,
            "resumed": sum(bool(r["resumed"]) for r in valid_bc),
            "gap_in_answer_ms": spread([r["gap_in_answer_ms"] for r in valid_bc if r["resumed"]]),
            "false_interruptions_on": [r["text"] for r in false_stops],
            "vad_missed": [r["text"] for r in valid_bc if not (r["pauses"] or r["stopped"])],
        },
    }


def meets_targets(summary: dict) -> dict[str, bool | None]:
    share = summary["interruptions"]["stopped_share"]
    audible = summary["interruptions"]["barge_in_ms"]["audible_stop"]["p95"]
    false_rate = summary["backchannels"]["false_interruption_rate"]
    return {
        "interruptions_stopped_share": None if share is None else share >= TARGETS["interruptions_stopped_share"],
        "audible_stop_p95_ms": None if audible is None else audible <= TARGETS["audible_stop_p95_ms"],
        "backchannel_false_interruption_rate": None
        if false_rate is None
        else false_rate <= TARGETS["backchannel_false_interruption_rate"],
    }


def bot_variant(base: Path, directory: Path, **interruptions) -> Path:
    """``base`` with turn_taking.interruptions updated, written to ``directory``."""
    data = yaml.safe_load(base.read_text())
    data.setdefault("turn_taking", {}).setdefault("interruptions", {}).update(interruptions)
    path = directory / f"{base.stem}-{'-'.join(f'{k}-{v}' for k, v in interruptions.items())}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def run_mode(bot: Bot, audio: InputAudio, events: list[Event]) -> tuple[dict, list[dict]]:
    result, pauses = await run_recording(bot, audio)
    rows = analyse(result.turns, result.output_pcm, pauses, events)
    summary = summarise(rows)
    summary["run_duration_s"] = round(result.duration_secs, 1)
    return summary, rows


async def bench(bot_path: Path, modes: list[str], cycles: int, per_event: bool) -> dict:
    phrases = beckett()
    clips = synthesise(BACKCHANNELS)
    pcm, events = script(cycles, phrases, clips)
    audio = InputAudio(Path("bargein-bench.wav"), pcm, RATE, 1)
    out: dict = {
        "recording_s": round(audio.duration_secs, 1),
        "events": {kind + "s": sum(e.kind == kind for e in events) for kind in ("interruption", "backchannel")},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            bot = load_bot(bot_variant(bot_path, Path(tmp), mode=mode))
            load_models(bot)
            summary, rows = await run_mode(bot, audio, events)
            if per_event:
                summary["per_event"] = rows
            out[mode] = summary
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bot", type=Path, default=REPO / "bots" / "local.yaml")
    parser.add_argument("--cycles", type=int, default=12, help="A+C cycles: 2 interruptions and 1 backchannel each")
    parser.add_argument("--modes", default="pause_resume,immediate")
    parser.add_argument("--per-event", action="store_true", help="include every event's figures")
    args = parser.parse_args()

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    started = time.perf_counter()
    result = {
        "benchmark": "bargein",
        "transport": "file",
        "bot": str(args.bot.relative_to(REPO) if args.bot.is_relative_to(REPO) else args.bot),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()},
    }
    result.update(asyncio.run(bench(args.bot, args.modes.split(","), args.cycles, args.per_event)))
    result["targets"] = TARGETS
    result["meets_targets"] = {mode: meets_targets(result[mode]) for mode in args.modes.split(",")}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
