"""Model workers: first audio chunk through the CSM worker vs in-process, cancel -> last chunk, and
how many concurrent sessions one worker process serves before the first chunk slows 2x (prints JSON).

    python bench/workers.py                          # tiny random CSM on CPU (make worker-csm first)
    python bench/workers.py --real --device cuda     # published sesame/csm-1b on a GPU host
    python bench/workers.py --real --model DIR       # a local copy of the weights

``--real`` adds CSM's real-time factor (generation time / audio time) on longer utterances. The Moshi
worker's figures (bench/moshi_worker.py) are included under "moshi" when its environment exists.
The in-process figures run in the CSM worker's environment (this script re-runs itself there).
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

REPO = Path(__file__).resolve().parents[1]
CSM_PYTHON = REPO / "workers" / "csm" / ".venv" / "bin" / "python"
KEY = "bench-key"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help="published or --model weights, with the RTF figure")
    parser.add_argument("--model", default=None, help="CSM weights dir (default: tiny random; with --real: the hub)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=8, help="requests per latency figure")
    parser.add_argument("--sessions", default="1,2,4,8", help="concurrent session counts to try")
    parser.add_argument("--no-moshi", action="store_true", help="leave out the Moshi worker's figures")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # the worker-env half
    return parser.parse_args(argv)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median_ms": _ms(statistics.median(values)), "min_ms": _ms(values[0]), "max_ms": _ms(values[-1])}


# --- in-process (runs in workers/csm/.venv) ---------------------------------------------------------


def in_process(args: argparse.Namespace) -> dict:
    """First chunk of the engine called directly, same requests as through the worker."""
    from vivavoce_csm.engine import CsmEngine
    from vivavoce_worker.engine import SynthesisRequest

    engine = CsmEngine(args.model, args.device)
    engine.load()
    engine.warmup()
    firsts = []
    for i in range(args.runs):
        started, first = time.perf_counter(), []

        def emit(_samples, first=first, started=started):
            if not first:
                first.append(time.perf_counter() - started)

        engine.generate(SynthesisRequest(id=f"p{i}", text="Hello there, how can I help?", max_audio_ms=800),
                        engine.new_session(), emit)
        firsts.append(first[0])
    return {"first_chunk": _summary(firsts)}


# --- through the worker (runs in the agent's environment) --------------------------------------------


async def _request(url: str, text: str, max_audio_ms: int, cancel_after: int | None = None) -> dict:
    import websockets

    async with websockets.connect(url, additional_headers={"X-API-Key": KEY}, max_size=None) as ws:
        started = time.perf_counter()
        await ws.send(json.dumps({"type": "synthesize", "id": "r", "text": text, "max_audio_ms": max_audio_ms}))
        first = cancel_sent = last_chunk = None
        frames = after_cancel = 0
        while True:
            message = await ws.recv()
            now = time.perf_counter()
            if isinstance(message, bytes):
                frames += 1
                first = first or now
                last_chunk = now
                if cancel_sent:
                    after_cancel += 1
                if cancel_after is not None and frames == cancel_after and not cancel_sent:
                    await ws.send(json.dumps({"type": "cancel", "id": "r"}))
                    cancel_sent = time.perf_counter()
                continue
            done = json.loads(message)
            if done["type"] in ("done", "error"):
                return {"first": first - started, "done": now - started, "frames": frames, "message": done,
                        "cancel_to_last_chunk": (last_chunk - cancel_sent) if cancel_sent and after_cancel else 0.0,
                        "cancel_to_done": (now - cancel_sent) if cancel_sent else None,
                        "frames_after_cancel": after_cancel}


async def through_worker(url: str, args: argparse.Namespace) -> dict:
    runs = [await _request(url, "Hello there, how can I help?", 800) for _ in range(args.runs)]
    cancels = [await _request(url, "Let me tell you a long story.", 20_000, cancel_after=3) for _ in range(args.runs)]
    result = {
        "first_chunk": _summary([r["first"] for r in runs]),
        "cancel": {
            "to_last_chunk": _summary([r["cancel_to_last_chunk"] for r in cancels]),
            "to_done": _summary([r["cancel_to_done"] for r in cancels]),
            "frames_after_cancel_max": max(r["frames_after_cancel"] for r in cancels),
        },
    }
    concurrency = {}
    for n in [int(s) for s in args.sessions.split(",")]:
        batch = await asyncio.gather(*(_request(url, f"Caller {i} says hello.", 800) for i in range(n)))
        concurrency[str(n)] = _summary([r["first"] for r in batch])
    base = concurrency[str(min(int(s) for s in args.sessions.split(",")))]["median_ms"]
    within = [int(n) for n, s in concurrency.items() if s["median_ms"] <= 2 * base]
    result["concurrent_first_chunk"] = concurrency
    result["sessions_before_first_chunk_doubles"] = max(within)
    if args.real:
        long = [await _request(url, "This is a longer answer, spoken at a natural pace, to measure the real-time "
                                    "factor of the model on this machine.", 10_000) for _ in range(3)]
        result["rtf"] = round(statistics.median(r["message"]["total_ms"] / r["message"]["audio_ms"] for r in long), 3)
    return result


def start_worker(model: str, device: str, port: int, log: Path) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """The CSM worker on ``port`` until the block ends (up to 15 minutes to come up); its output in ``log``."""
    # Imported here: this script also runs in the worker's environment (--in-process), without vivavoce.
    from vivavoce.testing.processes import serving

    env = {**os.environ, "VIVAVOCE_WORKER_API_KEY": KEY}
    command = [str(CSM_PYTHON), "-m", "vivavoce_csm", "--port", str(port), "--device", device]
    command += ["--model", model] if model else []
    return serving(command, health=f"http://127.0.0.1:{port}/health", env=env, cwd=REPO, log=log, ready_secs=900,
                   poll_secs=0.5, stop_secs=30)


def main() -> None:
    args = parse_args()
    if args.in_process:
        print(json.dumps(in_process(args)))
        return
    if not CSM_PYTHON.exists():
        raise SystemExit("the CSM worker's environment is missing: run `make worker-csm`")
    with tempfile.TemporaryDirectory() as tmp:
        tiny = args.model is None and not args.real
        if tiny:
            args.model = str(Path(tmp) / "tiny-csm")
            subprocess.run([str(CSM_PYTHON), "-m", "vivavoce_csm.tiny", args.model], check=True,
                           stdout=subprocess.DEVNULL, cwd=REPO)
        forwarded = ["--in-process", "--device", args.device, "--runs", str(args.runs)]
        forwarded += ["--model", args.model] if args.model else []
        direct = subprocess.run([str(CSM_PYTHON), __file__, *forwarded], check=True, capture_output=True, text=True)
        report = {
            "measured": "shared 2-core CPU, under load from other work" if args.device == "cpu" else args.device,
            "model": "tiny random CSM" if tiny else (args.model or "sesame/csm-1b"),
            "in_process": json.loads(direct.stdout.strip().splitlines()[-1]),
        }
        from vivavoce.testing.processes import free_port

        port = free_port()
        with start_worker(args.model, args.device, port, Path(tmp) / "worker.log"):
            report["worker"] = asyncio.run(through_worker(f"ws://127.0.0.1:{port}/v1/stream", args))
    if not args.no_moshi:
        report["moshi"] = moshi(args)
    print(json.dumps(report, indent=2))


def moshi(args: argparse.Namespace) -> dict:
    """bench/moshi_worker.py's figures, if that worker's environment is built."""
    sys.path.insert(0, str(Path(__file__).parent))
    from moshi_worker import WORKER_PYTHON, parse_args as moshi_args, run as moshi_run

    if not WORKER_PYTHON.exists():
        return {"skipped": "the Moshi worker's environment is missing (make worker-moshi)"}
    return moshi_run(moshi_args(["--real"] if args.real else []))


if __name__ == "__main__":
    main()
