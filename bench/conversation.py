"""Real-speech conversations played to the local bot and to stock-configured rivals; what the user hears. Prints JSON.

    .venv/bin/python bench/conversation.py [--variants vivavoce,pipecat,livekit] [--phone] [--limit N]
        [--gap 7] [--seed 0] [--details out/conversation_details.json] [--keep-wavs DIR]

The evaluation set (vivavoce.testing.conversation_eval.build_cases, from vivavoce.testing.real_speech,
deterministic for a seed): 40 finished utterances, 12 split by a 0.4-1.2 s mid-sentence pause, 4 spoken
lists (three word groups, 0.5-0.9 s apart), 4 backchannels (a real one-word clip ~1.8 s after the
utterance, over the bot's answer) and 4 barge-ins (a second utterance ~2 s after the first). Cases are
played ~8 to a recording, each recording a fresh run_on_recording (real time, file transport); every
figure is read from the output WAV on the input's timeline, with the bot's report beside it.

Variants, each a copy of bots/local.yaml with its YAML patched (same models, loaded once):
- vivavoce: bots/local.yaml as it is; vivavoce_late: with `end_of_turn.early_answer: false`;
  vivavoce_vad06: with the VAD's confidence at 0.6 instead of 0.7 (more of a quiet word heard, speech held
  longer at its end: measured on the phone line, where bench/vad_words.py finds the difference);
- pipecat: pipecat's stock turn-taking (VAD 0.7/0.2/0.2, min_volume 0.6, Smart Turn v3, immediate
  interruptions on any speech), Whisper's standard 30 s path without speculation, Piper on whole sentences
  with its audio as it comes;
- livekit: LiveKit's endpointing rule (min_endpointing_delay 0.5 s when its turn detector says the user is
  done, max_endpointing_delay 3.0 s when not), its detector being a SmolLM2 reading the transcript: here the
  SmolLM2-135M instruct model's sentence-end probability stands in for LiveKit's fine-tuned one (no audio
  model); immediate interruptions on any speech; pipecat's stock VAD, as above (the comparison is of
  endpointing).
--phone adds `<variant>@phone`: every recording through 8 kHz mu-law and fed at 8 kHz (narrowband VAD).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vivavoce.realtime_env import apply_realtime_env

apply_realtime_env()

import yaml  # noqa: E402
from loguru import logger  # noqa: E402
from pipecat.audio.vad.vad_analyzer import VADParams  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from vivavoce.botfile import Bot, BotFileError, load_bot  # noqa: E402
from vivavoce.builder import load_models  # noqa: E402
from vivavoce.file_session import run_on_recording  # noqa: E402
from vivavoce.testing import conversation_eval as ce  # noqa: E402
from vivavoce.turns import Turn, summarize  # noqa: E402
from vivavoce.wav import InputAudio, write_wav  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PER_SESSION = 8
console = Console(stderr=True, width=None if sys.stderr.isatty() else 180)


PIPECAT_VAD = VADParams().model_dump()  # pipecat's own defaults: 0.7 / 0.2 s / 0.2 s, min_volume 0.6


def _pipecat(data: dict[str, Any]) -> None:
    data["turn_taking"] = {
        "vad": dict(PIPECAT_VAD),
        "end_of_turn": {"model": "smart_turn_v3"},
        "interruptions": {"enabled": True, "mode": "immediate", "min_words": 0},
    }
    for stage in data["pipeline"]:
        if stage.get("kind") == "whisper":
            stage.update(speculate=False, window_secs=30)  # pipecat's WhisperSTTService path
        elif stage.get("kind") == "piper":
            stage.update(first_phrase_words=0, trim_silence=False)  # pipecat's sentence aggregation, Piper's audio


def _livekit(data: dict[str, Any]) -> None:
    turn_taking = data.setdefault("turn_taking", {})
    turn_taking["vad"] = dict(PIPECAT_VAD)
    turn_taking["end_of_turn"] = {
        "model": "adaptive", "min_silence_secs": 0.5, "max_silence_secs": 3.0,
        "audio_model": "none", "text_model": "smollm2", "early_answer": False,
    }  # fmt: skip
    turn_taking.setdefault("interruptions", {}).update(mode="immediate", min_words=0)


def _vivavoce_late(data: dict[str, Any]) -> None:
    data.setdefault("turn_taking", {}).setdefault("end_of_turn", {})["early_answer"] = False


def _vivavoce_vad06(data: dict[str, Any]) -> None:
    data.setdefault("turn_taking", {}).setdefault("vad", {})["confidence"] = 0.6


VARIANTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "vivavoce": lambda data: None,  # bots/local.yaml as it is
    "vivavoce_late": _vivavoce_late,  # the answer starts only once the verdict ends the turn
    "vivavoce_vad06": _vivavoce_vad06,
    "pipecat": _pipecat,
    "livekit": _livekit,
}


def variant_bot(name: str, base: Path, directory: Path) -> Bot:
    """``base`` with the variant's patch, written to ``directory`` and loaded (BotFileError if it does not load)."""
    data = yaml.safe_load(base.read_text())
    VARIANTS[name](data)
    path = directory / f"{base.stem}-{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_bot(path)


async def run_variant(bot: Bot, label: str, recordings: list[tuple[InputAudio, list[ce.Part]]],
                      keep_wavs: Path | None) -> dict[str, Any]:
    """Play every recording to ``bot`` (a fresh pipeline each); per-case records and run figures."""
    records: list[dict[str, Any]] = []
    turns: list[Turn] = []
    errors = []
    started = time.perf_counter()
    for number, (audio, parts) in enumerate(recordings):
        console.log(f"{label}: recording {number + 1}/{len(recordings)}, {audio.duration_secs:.0f} s")
        try:
            result = await run_on_recording(bot, audio)
        except Exception as e:  # one recording's trouble must not end the whole run
            logger.exception(f"{label}: recording {number} failed")
            errors.append({"recording": number, "error": f"{type(e).__name__}: {e}"})
            continue
        if keep_wavs is not None:
            folder = keep_wavs / label.replace("@", "-")
            write_wav(folder / f"session-{number:02d}-in.wav", audio.pcm, audio.sample_rate)
            write_wav(folder / f"session-{number:02d}-out.wav", result.output_pcm, result.output_sample_rate)
        turns += result.turns
        for record in ce.score_session(parts, result.turns, result.output_pcm, result.output_sample_rate):
            record["recording"] = number
            records.append(record)
    stages = summarize(turns)["stages_ms"]
    return {
        "records": records,
        "stages_p50_ms": {stage: (value or {}).get("p50") for stage, value in stages.items()},
        "recording_errors": errors,
        "wall_s": round(time.perf_counter() - started, 1),
        "audio_s": round(sum(a.duration_secs for a, _ in recordings), 1),
    }


def table(result: dict[str, Any]) -> Table:
    """The per-variant figures, one row each."""
    view = Table(title=f"conversation: {result['run']['cases_total']} cases", title_justify="left")
    for column in ("variant", "EoT p50/p90/max ms", "finished: EoT p50/p90", "dead air", "unanswered",
                   "cut-ins (<=1s)", "stalls", "lost (misheard)", "WER", "v2v report p50", "backch. ok",
                   "barge stop p50", "mismatch"):  # fmt: skip
        view.add_column(column, justify="left" if column == "variant" else "right")
    for name, entry in result["variants"].items():
        if "error" in entry:
            view.add_row(name, f"[red]{entry['error'].splitlines()[0][:90]}")
            continue
        f = entry["figures"]
        eot = f["end_of_turn_ms"]
        cut = f["cut_ins"]
        view.add_row(
            name,
            f"{eot['p50']}/{eot['p90']}/{eot['max']}",
            f"{f['finished_end_of_turn_ms']['p50']}/{f['finished_end_of_turn_ms']['p90']}",
            f"{f['dead_air']}/{f['answer_points']} ({f['finished_dead_air']} finished)",
            str(f["unanswered"]),
            f"{cut['count']}/{cut['pauses']} ({cut['rate_le_1s']})",
            f"{f['stalls']['count']} ({f['stalls']['longest_ms']} ms)",
            f"{f['lost_speech']['parts']}+{f['lost_speech']['unanswered_cases']} ({f['lost_speech']['misheard']})",
            str(f["wer"]["wer"]),
            str(f["voice_to_voice_reported_ms"]["p50"]),
            f"{f['backchannel']['ok']}/{f['backchannel']['valid']}",
            str(f["barge_in"]["audible_stop_ms"]["p50"]),
            str(f["report_agreement"]["report_mismatches"]),
        )
    return view


async def bench(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    from vivavoce.testing.real_speech import utterances

    corpus = utterances()
    started = time.perf_counter()
    cases = ce.build_cases(corpus, seed=args.seed)
    built_s = time.perf_counter() - started
    if args.kinds:
        kinds = {k.strip() for k in args.kinds.split(",")}
        cases = [case for case in cases if case.kind in kinds]
    if args.limit is not None:
        cases = cases[: args.limit]
    groups = ce.sessions(cases, PER_SESSION)
    wide: list[tuple[InputAudio, list[ce.Part]]] = []
    for number, group in enumerate(groups):
        pcm, parts = ce.session_audio(group, args.gap)
        wide.append((InputAudio(Path(f"conversation-{number:02d}.wav"), pcm, ce.RATE, 1), parts))
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    runs = [(n.removesuffix("@phone"), n.endswith("@phone")) for n in names]
    if args.phone:
        runs += [(n, True) for n in names if not n.endswith("@phone")]
    narrow: list[tuple[InputAudio, list[ce.Part]]] = []
    if any(phone for _, phone in runs):
        for audio, parts in wide:
            pcm = await ce.phone_audio(audio.pcm)
            narrow.append((InputAudio(audio.path.with_stem(audio.path.stem + "-phone"), pcm, 8000, 1), parts))

    audio_s = sum(a.duration_secs for a, _ in wide)
    console.log(f"{len(cases)} cases in {len(groups)} recordings, {audio_s:.0f} s each pass; "
                f"{len(runs)} passes: ~{len(runs) * (audio_s + 3 * len(groups)) / 60:.0f} min")  # fmt: skip

    used = {p.source.split("[")[0].split(":")[0] for case in cases for p in case.pieces}
    result: dict[str, Any] = {
        "benchmark": "conversation",
        "transport": "file",
        "run": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seed": args.seed,
            "gap_s": args.gap,
            "limit": args.limit,
            "cases_total": len(cases),
            "cases": ce.case_counts(cases),
            "speakers": len({s for case in cases for s in case.speakers}),
            "corpus_speakers": len({u.speaker for u in corpus}),
            "utterances": len(used),
            "corpus_utterances": len(corpus),
            "recordings": len(groups),
            "audio_s_per_pass": round(audio_s, 1),
            "build_s": round(built_s, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()},
        },
        "variants": {},
    }
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bots: dict[str, Bot | str] = {}
        for name in dict.fromkeys(name for name, _ in runs):
            if name not in VARIANTS:
                bots[name] = f"unknown variant (known: {', '.join(VARIANTS)})"
                continue
            try:
                bots[name] = variant_bot(name, args.bot, Path(tmp))
            except BotFileError as e:
                bots[name] = f"BotFileError: {e}"
        for name, phone in runs:
            label = f"{name}@phone" if phone else name
            bot = bots[name]
            if isinstance(bot, str):
                result["variants"][label] = {"error": bot}
                continue
            load_models(bot)
            run = await run_variant(bot, label, narrow if phone else wide, args.keep_wavs)
            details[label] = run.pop("records")
            result["variants"][label] = {"figures": ce.summarise(details[label]), **run}
    for label, entry in result["variants"].items():
        base = result["variants"].get("vivavoce@phone" if label.endswith("@phone") else "vivavoce", {})
        if "figures" in entry and "figures" in base:
            entry["ratio_vs_vivavoce"] = ce.ratios(entry["figures"], base["figures"])
    return result, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bot", type=Path, default=REPO / "bots" / "local.yaml", help="the base bot file")
    parser.add_argument(
        "--variants",
        default="vivavoce,pipecat,livekit",
        help="comma-separated; NAME@phone: that variant on the phone path",
    )
    parser.add_argument("--phone", action="store_true", help="also run every variant on the phone path (8 kHz mu-law)")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N cases (stratified: every kind early)")
    parser.add_argument("--kinds", default=None, help="keep only these kinds of case (e.g. split,list)")
    parser.add_argument("--gap", type=float, default=7.0, help="silence after each case, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--details", type=Path, default=None, help="write per-case records here (JSON)")
    parser.add_argument("--keep-wavs", type=Path, default=None, help="write each recording's input and output WAV here")
    parser.add_argument("--log", type=Path, default=None, help="write vivavoce's debug log here")
    args = parser.parse_args()

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    if args.log is not None:
        logger.add(args.log, level="DEBUG", filter="vivavoce")
    started = time.perf_counter()
    result, details = asyncio.run(bench(args))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if args.details is not None:
        args.details.parent.mkdir(parents=True, exist_ok=True)
        args.details.write_text(json.dumps(details, indent=2) + "\n")
    console.print(table(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
