"""The ASR service (workers/asr) under concurrent real-speech streams; prints JSON.

    python bench/asr_service.py                              # tiny.en on this machine's CPU
    python bench/asr_service.py --configs 16:10,1:10,16:30   # batched vs one at a time; 10 s vs 30 s windows
    python bench/asr_service.py --model DIR --device cuda --streams 1,30   # e.g. large-v3 on a GPU host

Every stream plays utterances of the real-speech corpus (vivavoce.testing.real_speech, each stream its own
rotation of it) in real time, 20 ms frames, separated by ``--gap`` seconds of silence, the streams starting
up to 1 s apart. Figures per stream count:

- ``final_after_speech_ms``: from the moment the stream's audio reached the end of the speech (the
  ``speech_end`` message's timestamp: where the VAD heard it stop) to the final's arrival, p50/p95: the
  pause the VAD needs (0.2 s), Smart Turn's verdict or the silence fallback, and the transcription.
  ``final_after_speech_end_ms``: from the ``speech_end`` message's arrival to the final's, i.e. what
  transcription still adds once the turn is over (finals are transcribed at the pause, while Smart Turn judges).
- ``wer_vs_in_process``: word error rate of the finals against faster-whisper run in this process on the same
  clips, two ways: ``agent`` (the agent's whisper kind: ``SpeculativeTranscriber``, 10 s window, greedy) and
  ``standard`` (faster-whisper's own ``transcribe``, 30 s window, greedy); ``wer_vs_reference``: against the
  corpus's own transcripts (the in-process paths' own figures are in the report's header).
- ``streams_per_core``: the most streams whose p95 stays within 2x the single stream's, over the cores.
The worker is started once per ``--configs`` entry: ``--max-batch`` (1 runs requests one at a time) and
``--window-secs`` (10: short turns encoded in a 10 s window, the agent's default; 30: Whisper's standard window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import websockets

from vivavoce.testing.conversation_eval import corpus_wer

REPO = Path(__file__).resolve().parents[1]
ASR_PYTHON = REPO / "workers" / "asr" / ".venv" / "bin" / "python"
RATE = 16000
FRAME = 320  # 20 ms


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,2,4,8,12,16", help="concurrent stream counts")
    parser.add_argument(
        "--configs",
        default="16:10",
        help="worker settings to compare, max_batch:window_secs, comma-separated (16:10,1:10,16:30)",
    )
    parser.add_argument("--utterances", type=int, default=8, help="utterances per stream (at least)")
    parser.add_argument("--min-utterances", type=int, default=32, help="utterances per stream count (at least)")
    parser.add_argument("--gap", type=float, default=1.5, help="silence between utterances (s)")
    parser.add_argument("--model", default="tiny.en", help="worker --model (tiny.en or a CTranslate2 dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--partial-interval", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def wer(pairs: list[tuple[str, str]]) -> float:
    """Corpus word error rate of (reference, hypothesis) pairs (conversation_eval's normaliser: one for every
    WER the project reports)."""
    return round(corpus_wer(pairs), 4)


def pct(values: list[float | None], q: float) -> float | None:
    """The ``q`` quantile in ms; ``None`` values (never answered) count as slower than any answer, and the
    quantile is None when it falls on one."""
    ordered = sorted(values, key=lambda v: math.inf if v is None else v)
    if not ordered:
        return None
    value = ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
    return None if value is None else round(value * 1000, 1)


def quantiles(values: list[float | None]) -> dict[str, float | None]:
    return {"p50": pct(values, 0.5), "p95": pct(values, 0.95)}


@dataclass
class Clip:
    uid: str
    text: str
    pcm: np.ndarray


@dataclass
class Result:
    """One utterance as the service answered it."""

    uid: str
    text: str = ""
    after_speech: float | None = None
    after_speech_end: float | None = None
    turns: int = 0
    reason: str = ""


@dataclass
class StreamLog:
    results: list[Result] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    partials: int = 0
    send_lag: float = 0.0  # how far behind real time the sender ended (the client's own CPU share)


async def one_stream(url: str, clips: list[Clip], gap: float, delay: float) -> StreamLog:
    """Play ``clips`` in real time; match each final to the utterance its span overlaps."""
    await asyncio.sleep(delay)
    parts, spans, at = [np.zeros(int(0.5 * RATE), np.int16)], [], 0.5
    for clip in clips:
        spans.append((at, at + len(clip.pcm) / RATE))
        parts += [clip.pcm, np.zeros(int(gap * RATE), np.int16)]
        at += len(clip.pcm) / RATE + gap
    pcm = np.concatenate(parts)
    log = StreamLog(results=[Result(c.uid) for c in clips])
    sent: list[float] = []  # wall time each 20 ms frame left
    speech_end: tuple[float, float] | None = None  # (timestamp on the stream, arrival)
    async with websockets.connect(url, max_size=None) as ws:
        started = time.perf_counter()

        def sent_at(timestamp: float) -> float:
            """When the stream's audio reached ``timestamp`` (the frame holding it was sent)."""
            index = int(timestamp * RATE) // FRAME
            return sent[index] if index < len(sent) else started + timestamp

        async def receive() -> None:
            nonlocal speech_end
            async for raw in ws:
                message, now = json.loads(raw), time.perf_counter()
                if message["type"] == "speech_end":
                    speech_end = (message["timestamp"], now)
                elif message["type"] == "partial":
                    log.partials += 1
                elif message["type"] == "error":
                    log.errors.append(message)
                elif message["type"] == "final" and speech_end is not None:
                    for i, (begin, end) in enumerate(spans):
                        if message["start"] < end and message["end"] > begin:
                            result = log.results[i]
                            result.text = f"{result.text} {message['text']}".strip()
                            result.turns += 1
                            result.reason = message["reason"]
                            result.after_speech = now - sent_at(speech_end[0])
                            result.after_speech_end = now - speech_end[1]

        receiver = asyncio.create_task(receive())
        for offset in range(0, len(pcm), FRAME):
            await ws.send(pcm[offset : offset + FRAME].tobytes())
            sent.append(time.perf_counter())
            await asyncio.sleep(max(0.0, started + (offset + FRAME) / RATE - time.perf_counter()))
        await asyncio.sleep(3.0)  # the last final
        receiver.cancel()
        log.send_lag = max(0.0, sent[-1] - (started + len(pcm) / RATE))
    return log


def in_process_transcripts(clips: list[Clip]) -> dict[str, dict[str, str]]:
    """Each clip transcribed in this process: the agent's short-window path and faster-whisper's standard one."""
    from faster_whisper import WhisperModel

    from vivavoce.packaged_models import whisper_tiny_en
    from vivavoce.processors.whisper import SpeculativeTranscriber

    model = WhisperModel(str(whisper_tiny_en()), device="cpu", compute_type="int8", cpu_threads=os.cpu_count() or 1)
    agent = SpeculativeTranscriber(model, window_secs=10.0)
    out: dict[str, dict[str, str]] = {"agent": {}, "standard": {}}
    for clip in clips:
        audio = clip.pcm.astype(np.float32) / 32768.0
        segments, _ = model.transcribe(audio, language="en", beam_size=1, condition_on_previous_text=False)
        out["standard"][clip.uid] = " ".join(s.text.strip() for s in segments)
        utterances, _ = agent.transcribe(audio, language="en")
        out["agent"][clip.uid] = " ".join(u.text.strip() for u in utterances)
    agent.close()
    return out


async def run_count(url: str, http: str, corpus: list[Clip], count: int, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed + count)
    plays = []
    for i in range(count):
        start = (i * 5) % len(corpus)
        # Few streams play more utterances each, so that every figure rests on at least --min-utterances.
        per_stream = max(args.utterances, math.ceil(args.min_utterances / count))
        plays.append([corpus[(start + k) % len(corpus)] for k in range(per_stream)])
    before = httpx.get(f"{http}/health").json()
    started = time.perf_counter()
    logs = await asyncio.gather(
        *(one_stream(url, clips, args.gap, rng.uniform(0, 1.0) if count > 1 else 0.0) for clips in plays)
    )
    wall = time.perf_counter() - started
    after = httpx.get(f"{http}/health").json()
    results = [r for log in logs for r in log.results]
    answered = [r for r in results if r.after_speech is not None]
    batches = {k: after["batches"][k] - before["batches"][k] for k in after["batches"]}
    jobs = {k: after["requests"][k] - before["requests"][k] for k in after["requests"]}
    return {
        "streams": count,
        "utterances": len(results),
        "answered": len(answered),
        "split_or_merged": sum(1 for r in results if r.turns != 1),
        "errors": sum(len(log.errors) for log in logs),
        "partials_per_utterance": round(sum(log.partials for log in logs) / max(1, len(results)), 2),
        "client_send_lag_ms": round(max(log.send_lag for log in logs) * 1000, 1),
        "final_after_speech_ms": quantiles([r.after_speech for r in results]),
        "final_after_speech_end_ms": quantiles([r.after_speech_end for r in results]),
        "ended_by_smart_turn": round(sum(r.reason == "smart_turn" for r in answered) / max(1, len(answered)), 2),
        "final_after_speech_ms_smart_turn": quantiles([r.after_speech for r in answered if r.reason == "smart_turn"]),
        "mean_batch": {k: round(jobs[k] / batches[k], 2) if batches[k] else 0 for k in jobs},
        "model_busy_share": round((after["model_busy_s"] - before["model_busy_s"]) / wall, 3),
        "_results": results,
    }


def serve_worker(batch: int, window: int, args: argparse.Namespace):
    from vivavoce.testing.processes import free_port, serving

    port = free_port()
    command = [str(ASR_PYTHON), "-m", "vivavoce_asr", "--port", str(port), "--no-auth", "--device", args.device]
    command += ["--model", args.model, "--max-batch", str(batch), "--max-connections", "64"]
    command += ["--partial-interval", str(args.partial_interval), "--window-secs", str(window)]
    http = f"http://127.0.0.1:{port}"
    return http, serving(command, health=f"{http}/health", cwd=REPO, ready_secs=300)


def main() -> None:
    args = parse_args()
    from loguru import logger

    from vivavoce.testing.real_speech import utterances

    logger.remove()
    logger.add(sys.stderr, level="INFO")
    if not ASR_PYTHON.exists():
        raise SystemExit("the ASR worker environment is missing: run `make worker-asr`")
    corpus = [Clip(u.id, u.text, u.pcm) for u in utterances() if 0.8 <= u.seconds <= 8.0]
    counts = [int(c) for c in args.streams.split(",")]
    reference = in_process_transcripts(corpus)
    report: dict = {
        "model": args.model,
        "device": args.device,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "corpus_utterances": len(corpus),
        "wer_in_process_vs_reference": {
            path: wer([(c.text, texts[c.uid]) for c in corpus]) for path, texts in reference.items()
        },
        "runs": {},
    }
    truth = {c.uid: c.text for c in corpus}
    for config in args.configs.split(","):
        batch, window = (int(x) for x in config.split(":"))
        http, context = serve_worker(batch, window, args)
        runs, played = [], []
        with context:
            url = http.replace("http://", "ws://") + "/v1/asr"
            for count in counts:
                logger.info("max_batch {}, window {} s: {} streams", batch, window, count)
                run = asyncio.run(run_count(url, http, corpus, count, args))
                results = run.pop("_results")
                played += results
                run["wer_vs_in_process"] = {
                    path: wer([(texts[r.uid], r.text) for r in results]) for path, texts in reference.items()
                }
                run["wer_vs_reference"] = wer([(truth[r.uid], r.text) for r in results])
                runs.append(run)
                logger.info("{}", json.dumps(run))
        # Streams per core: the most streams before the p95 first exceeds twice the single stream's.
        solo = runs[0]["final_after_speech_ms"]["p95"] if runs and runs[0]["streams"] == 1 else None
        within = None
        for run in runs:
            p95 = run["final_after_speech_ms"]["p95"]
            if solo is None or p95 is None or p95 > 2 * solo:
                break
            within = run["streams"]
        report["runs"][f"max_batch={batch},window_secs={window}"] = {
            # Every utterance of every stream count together: each count plays a different share of the corpus.
            "wer_vs_in_process": {
                path: wer([(texts[r.uid], r.text) for r in played]) for path, texts in reference.items()
            },
            "wer_vs_reference": wer([(truth[r.uid], r.text) for r in played]),
            "wer_in_process_vs_reference_same_utterances": {
                path: wer([(truth[r.uid], texts[r.uid]) for r in played]) for path, texts in reference.items()
            },
            "by_streams": runs,
            "streams_within_2x_solo_p95": within,
            "streams_per_core": round(within / (os.cpu_count() or 1), 1) if within else None,
        }
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
