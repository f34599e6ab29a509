"""Kyutai's own command-line client (``moshi-client-py``, ``moshi.client.main``) against the worker, headless.

Run by the tests in the worker's venv: the real client code (argument parsing, URL building, aiohttp, Opus
both ways through sphn, its receive loop and playback queue) with a stand-in ``sounddevice`` module, since a
test machine has neither PortAudio nor a microphone. The stand-in calls the client's audio callbacks as
PortAudio would, one 1920-sample block every 80 ms: the input stream feeds quiet noise (below the worker's
turn-gating threshold, so Moshi may answer at once) and the output stream records what the client plays.
Once the input is over and the client has played enough (or after a timeout) it presses Ctrl-C (SIGINT),
as a user would.

Usage: moshi_kyutai_client.py SECONDS SUMMARY.json -- CLIENT ARGS (e.g. --url ws://moshi:KEY@host:port)
The client's own output (the model's text on stdout, its log on stderr) is left as it is; the summary of
what was sent and played goes to SUMMARY.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import types

import numpy as np

RATE, BLOCK = 24000, 1920
state = {"sent_blocks": 0, "played_blocks": 0, "audible_blocks": 0, "peak": 0.0, "interrupted": False}


class _Stream:
    """What ``sounddevice.InputStream`` / ``OutputStream`` do for moshi's client: call back every block."""

    def __init__(self, samplerate, channels, blocksize, callback, **_ignored):
        assert samplerate == RATE and blocksize == BLOCK and channels == 1, (samplerate, blocksize, channels)
        self.callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        next_block = time.monotonic()
        while not self._stop.is_set() and self.block():
            next_block += BLOCK / RATE
            self._stop.wait(max(0.0, next_block - time.monotonic()))


class InputStream(_Stream):
    """A microphone that hears quiet noise for ``SECONDS``, then nothing more."""

    def block(self) -> bool:
        if state["sent_blocks"] >= total_blocks:
            return False
        self.callback(noise[state["sent_blocks"]].reshape(BLOCK, 1), BLOCK, None, None)
        state["sent_blocks"] += 1
        return True


class OutputStream(_Stream):
    """A loudspeaker that records what the client plays."""

    def block(self) -> bool:
        out = np.full((BLOCK, 1), np.nan, dtype=np.float32)
        self.callback(out, BLOCK, None, None)
        assert not np.isnan(out).any(), "the client left part of a block unplayed"
        state["played_blocks"] += 1
        peak = float(np.abs(out).max())
        if peak > 0:
            state["audible_blocks"] += 1
            state["peak"] = max(state["peak"], peak)
        return True


def _ctrl_c_when_done(deadline_s: float) -> None:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if state["sent_blocks"] >= total_blocks and state["audible_blocks"] >= total_blocks // 2:
            break
        time.sleep(0.1)
    state["interrupted"] = True
    os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    seconds, summary_path = float(sys.argv[1]), sys.argv[2]
    client_args = sys.argv[sys.argv.index("--") + 1 :]
    total_blocks = int(seconds * RATE) // BLOCK
    noise = np.random.default_rng(0).normal(0, 0.002, (total_blocks, BLOCK)).astype(np.float32)
    sys.modules["sounddevice"] = types.SimpleNamespace(InputStream=InputStream, OutputStream=OutputStream)

    import moshi.client  # Kyutai's client, with the stand-in above as its sounddevice

    threading.Thread(target=_ctrl_c_when_done, args=(seconds + 15,), daemon=True).start()
    sys.argv = ["moshi-client-py", *client_args]
    started = time.monotonic()
    moshi.client.main()  # returns after Ctrl-C, or by itself once the server has closed the socket
    with open(summary_path, "w") as f:
        json.dump(state | {"elapsed_s": round(time.monotonic() - started, 2)}, f)
