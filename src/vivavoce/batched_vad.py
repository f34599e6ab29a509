"""Silero VAD for many sessions at once: one ONNX session scores every session's windows in batches.

pipecat's ``SileroVADAnalyzer`` gives each session its own ONNX session and its own thread, and hands
every 32 ms window to that thread. With dozens of phone calls in one process that hand-off, not the
model, is most of the VAD's cost. Here each session keeps only its recurrent state; windows that arrive
within a few milliseconds of each other are scored in one batch on one shared thread (a window scored in a
batch costs less than one scored alone), and pipecat's own VAD state machine and model-reset policy decide
as before.

Silero also scores 8 kHz audio, half the samples per window and less work per window in a batch. A phone
line carries nothing above 4 kHz, so for a call the analyzer can score every second sample of the
pipeline's 16 kHz audio with nothing lost; other audio is low-passed first.

bench/vad_rate.py measures the cost per window by batch size and rate, and how often the two rates agree;
figures in bench/README.md.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState

WINDOW_SAMPLES = {16000: 512, 8000: 256}
CONTEXT_SAMPLES = {16000: 64, 8000: 32}
STATE_SHAPE = (2, 1, 128)


def half_band_taps(count: int = 31) -> np.ndarray:
    """A windowed-sinc low-pass at a quarter of the rate: what must go before keeping every second sample."""
    n = np.arange(count) - (count - 1) / 2
    taps = 0.5 * np.sinc(n / 2) * np.blackman(count)
    return (taps / taps.sum()).astype(np.float32)


class Decimator:
    """Halves the rate of a stream of windows, low-passing first unless the audio is already narrowband."""

    def __init__(self, *, narrowband: bool):
        """``narrowband``: the audio has nothing above a quarter of its rate (e.g. 8 kHz phone audio at 16 kHz)."""
        self._taps = None if narrowband else half_band_taps()
        self._history = None if narrowband else np.zeros(len(self._taps) - 1, dtype=np.float32)

    def __call__(self, window: np.ndarray) -> np.ndarray:
        """Every second sample of ``window`` (float32), filtered with the previous window's tail."""
        if self._taps is None:
            return window[::2]
        padded = np.concatenate((self._history, window))
        self._history = padded[-len(self._history) :]
        return np.convolve(padded, self._taps, mode="valid")[::2]


@dataclass(eq=False)
class SileroSlot:
    """One session's Silero state, standing in for ``SileroOnnxModel`` inside pipecat's analyzer.

    The batcher scores a window before pipecat's analyzer asks for it and leaves the score in ``scored``.
    """

    state: np.ndarray = field(default_factory=lambda: np.zeros(STATE_SHAPE, dtype=np.float32))
    context: np.ndarray | None = None
    scored: float = 0.0

    def reset_states(self, batch_size: int = 1) -> None:
        """Forget the recurrent state and audio context (pipecat's periodic reset in quiet)."""
        self.state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.context = None


@dataclass(eq=False)
class _Request:
    slot: SileroSlot
    window: np.ndarray
    sample_rate: int
    future: asyncio.Future


class SileroBatcher:
    """Scores windows from many sessions with one Silero ONNX session, batched, on one thread."""

    def __init__(self, *, max_wait_secs: float = 0.004, max_batch: int = 64):
        """Windows wait at most ``max_wait_secs`` for company; a batch never exceeds ``max_batch``."""
        self._max_wait_secs = max_wait_secs
        self._max_batch = max_batch
        self._model: SileroOnnxModel | None = None
        self._model_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="silero-batch")
        self._pending: list[_Request] = []
        self._flush_handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._slots: weakref.WeakSet[SileroSlot] = weakref.WeakSet()

    @property
    def model(self) -> SileroOnnxModel:
        """The shared ONNX session (loaded on first use)."""
        with self._model_lock:
            if self._model is None:
                path = resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx")
                self._model = SileroOnnxModel(str(path), force_onnx_cpu=True)
            return self._model

    def attach(self) -> SileroSlot:
        """A new session's slot."""
        slot = SileroSlot()
        self._slots.add(slot)
        return slot

    def detach(self, slot: SileroSlot) -> None:
        """The session is gone: it no longer holds a batch back."""
        self._slots.discard(slot)

    async def score(self, slot: SileroSlot, window: np.ndarray, sample_rate: int) -> float:
        """Speech probability of one window (float32 in [-1, 1]), advancing the slot's state."""
        loop = asyncio.get_running_loop()
        request = _Request(slot, window, sample_rate, loop.create_future())
        self._pending.append(request)
        if len(self._pending) >= min(self._max_batch, max(len(self._slots), 1)):
            # Everyone who could join this batch has: no reason to wait.
            self._schedule(loop, now=True)
        elif self._flush_handle is None:
            self._schedule(loop, now=False)
        return await request.future

    def _schedule(self, loop: asyncio.AbstractEventLoop, *, now: bool) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush_handle = loop.call_soon(self._flush) if now else loop.call_later(self._max_wait_secs, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        if self._pending:
            self._schedule(asyncio.get_running_loop(), now=True)
        if batch:
            asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        try:
            scores = await loop.run_in_executor(self._executor, self._infer, batch)
        except Exception as e:  # a broken batch must not leave its sessions waiting forever
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(e)
            return
        for request, score in zip(batch, scores, strict=True):
            if not request.future.done():
                request.future.set_result(score)

    def _infer(self, batch: list[_Request]) -> list[float]:
        """Runs on the batcher's thread; groups by sample rate (Silero takes one rate per run)."""
        scores: dict[int, float] = {}
        for rate in {r.sample_rate for r in batch}:
            group = [(i, r) for i, r in enumerate(batch) if r.sample_rate == rate]
            context = CONTEXT_SAMPLES[rate]
            inputs = np.stack(
                [
                    np.concatenate(
                        (r.slot.context if r.slot.context is not None else np.zeros(context, np.float32), r.window)
                    )
                    for _, r in group
                ]
            )
            state = np.concatenate([r.slot.state for _, r in group], axis=1)
            out, new_state = self.model.session.run(
                None, {"input": inputs, "state": state, "sr": np.array(rate, dtype=np.int64)}
            )
            for row, (i, r) in enumerate(group):
                r.slot.state = np.ascontiguousarray(new_state[:, row : row + 1, :])
                r.slot.context = inputs[row, -context:].copy()
                scores[i] = float(out[row, 0])
        return [scores[i] for i in range(len(batch))]


shared_batcher = SileroBatcher()


class BatchedSileroVADAnalyzer(SileroVADAnalyzer):
    """pipecat's Silero VAD analyzer, scoring through a shared :class:`SileroBatcher`.

    Decisions are pipecat's (its state machine, volume gate and model resets); only where the model
    runs changes, and, with ``model_sample_rate`` 8000, the rate it scores at: the window stays 32 ms,
    so pipecat's timings hold. With ``min_volume`` 0 the loudness measure, which then decides nothing,
    is skipped.
    """

    def __init__(
        self,
        *,
        sample_rate: int | None = None,
        params: VADParams | None = None,
        model_sample_rate: int | None = None,
        narrowband_input: bool = False,
        batcher: SileroBatcher | None = None,
    ):
        """Like ``SileroVADAnalyzer``; ``batcher`` defaults to the process-wide one.

        ``model_sample_rate``: 8000 scores 16 kHz input at 8 kHz; None (or 16000) scores at the input
        rate. ``narrowband_input``: the input carries nothing above 4 kHz, so no low-pass is needed.
        """
        if model_sample_rate not in (None, 8000, 16000):
            raise ValueError(f"Silero scores at 8000 or 16000 Hz, not {model_sample_rate}")
        # Not SileroVADAnalyzer.__init__: that loads a private ONNX session per analyzer.
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model_sample_rate = model_sample_rate
        self._decimator = Decimator(narrowband=narrowband_input)
        self._batcher = batcher or shared_batcher
        self._slot = self._batcher.attach()
        self._windows_since_reset = 0
        self._low_confidence_windows = 0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        """Feed ``buffer``; each complete window is scored through the batcher, then judged by pipecat."""
        state = self._vad_state
        window_bytes = self._vad_frames_num_bytes
        while buffer:
            # One window per step, so a model reset after one window applies to the next, as in pipecat.
            missing = window_bytes - len(self._vad_buffer)
            piece, buffer = buffer[:missing], buffer[missing:]
            if len(piece) == missing:
                window = np.frombuffer(self._vad_buffer + piece, dtype=np.int16).astype(np.float32) / 32768.0
                rate = self.scoring_sample_rate
                if rate != self.sample_rate:
                    window = self._decimator(window)
                self._slot.scored = await self._batcher.score(self._slot, window, rate)
            state = self._run_analyzer(piece)
        return state

    @property
    def _model(self) -> SileroSlot:
        """What pipecat's inherited ``_maybe_reset_model`` resets: this session's slot, not a model."""
        return self._slot

    @property
    def scoring_sample_rate(self) -> int:
        """The rate the model scores at (known once the input rate is)."""
        if self.sample_rate == 16000 and self._model_sample_rate == 8000:
            return 8000
        return self.sample_rate

    def voice_confidence(self, buffer: bytes) -> float:
        """The score the batcher already computed for this window (pipecat's would convert it again)."""
        confidence = self._slot.scored
        self._maybe_reset_model(confidence)
        return confidence

    def _get_smoothed_volume(self, audio: bytes) -> float:
        if self._params.min_volume <= 0:
            return 1.0
        return super()._get_smoothed_volume(audio)

    async def cleanup(self) -> None:
        """Give the slot back (the shared model stays loaded)."""
        self._batcher.detach(self._slot)
        await super().cleanup()
