"""A client speaking /api/chat as Kyutai's do (Ogg/Opus via sphn); run by the tests in the worker's venv.

Usage: moshi_opus_client.py URL SECONDS -> prints a JSON summary.
"""

import asyncio
import json
import sys

import numpy as np
import sphn
from websockets.asyncio.client import connect

RATE, FRAME = 24000, 1920


async def main(url: str, seconds: float) -> dict:
    writer, reader = sphn.OpusStreamWriter(RATE), sphn.OpusStreamReader(RATE)
    audio = (np.random.default_rng(0).normal(0, 0.1, int(seconds * RATE))).astype(np.float32)
    received: list[np.ndarray] = []
    texts = 0
    async with connect(url) as ws:
        handshake = await asyncio.wait_for(ws.recv(), 30) == b"\x00"
        for start in range(0, len(audio), FRAME):
            pages = writer.append_pcm(audio[start : start + FRAME])
            if pages:
                await ws.send(b"\x01" + pages)
        try:
            async with asyncio.timeout(20):
                while sum(len(r) for r in received) < (seconds - 0.6) * RATE:
                    message = await ws.recv()
                    if message[0] == 1:
                        received.append(reader.append_bytes(message[1:]))
                    elif message[0] == 2:
                        texts += 1
        except TimeoutError:
            pass
    pcm = np.concatenate(received) if received else np.zeros(0)
    return {"handshake": handshake, "received_seconds": len(pcm) / RATE,
            "peak": float(np.abs(pcm).max()) if len(pcm) else 0.0, "texts": texts}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], float(sys.argv[2])))))
