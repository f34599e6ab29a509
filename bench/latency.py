"""Voice-to-voice latency per transport, split into stages where the transport allows. Prints JSON.

    .venv/bin/python bench/latency.py [--runs 1] [--phone-turns 6]

file: bots/local.yaml through the file transport (stages from the turn report: VAD stop, STT, end-of-turn
decision, LLM first token, TTS first audio, transport); phone: bots/twilio.yaml served by `vivavoce
serve`, measured by a simulated Twilio caller (speech end -> first reply media frame, end to end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_latency import REPO, latency
from twilio_load import phone_voice_to_voice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="passes over the six-turn conversation (file)")
    parser.add_argument("--phone-turns", type=int, default=6, help="turns over the phone path (0: skip)")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    result = {"benchmark": "latency", "file": asyncio.run(latency(REPO / "bots" / "local.yaml", args.runs))}
    result["file"].pop("per_turn", None)
    if args.phone_turns:
        result["phone"] = asyncio.run(phone_voice_to_voice(args.phone_turns))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
