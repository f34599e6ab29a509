"""The single frame loop: every 80 ms, one batched step for all conversations that have a frame.

Conversations take the engine's slots; joining and leaving reset the slot. All model work (steps and
resets) runs in one frame thread, so the event loop stays free for the sockets. A conversation with
more than one frame queued (a burst, or a client sending faster than real time) is stepped again at
once instead of waiting for the next tick.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from loguru import logger

from vivavoce_moshi.engine import FRAME_SAMPLES, BatchedMoshi, SlotOutput
from vivavoce_moshi.gate import GateSettings, TurnGate

MAX_QUEUED_FRAMES = 250
"""20 s of the user's audio waiting for the model; more is refused (an error message, the audio dropped)."""


class Conversation:
    """One client's conversation in one slot: its queued input frames and its outgoing frames."""

    def __init__(self, slot: int, gate: GateSettings):
        """A conversation in ``slot`` gated by ``gate``."""
        self.slot = slot
        self.gate = TurnGate(gate)
        self.outbox: asyncio.Queue[SlotOutput | None] = asyncio.Queue()
        self._frames: deque[np.ndarray] = deque()
        self._partial = np.zeros(0, np.float32)

    @property
    def queued_frames(self) -> int:
        """Full input frames waiting for the model."""
        return len(self._frames)

    def feed(self, samples: np.ndarray) -> bool:
        """Queue the user's audio (24 kHz float32); False (and nothing queued) when too much is waiting."""
        if len(self._frames) >= MAX_QUEUED_FRAMES:
            return False
        pcm = np.concatenate([self._partial, samples]) if len(self._partial) else samples
        whole = len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES
        self._frames.extend(pcm[:whole].reshape(-1, FRAME_SAMPLES))
        self._partial = pcm[whole:]
        return True

    def take_frame(self) -> tuple[np.ndarray, bool] | None:
        """The next input frame and whether the model must stay silent for it."""
        if not self._frames:
            return None
        frame = self._frames.popleft()
        return frame, self.gate.update(frame)


class FrameLoop:
    """Owns the engine: slots, the 80 ms clock, the frame thread, step-time statistics."""

    def __init__(self, engine: BatchedMoshi, *, tick_ms: float = 80.0):
        """Serve ``engine``'s slots, stepping every ``tick_ms``."""
        self.engine = engine
        self.tick_s = tick_ms / 1000
        self._free = list(range(engine.slots))
        self._active: dict[int, Conversation] = {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moshi-frames")
        self._wake = asyncio.Event()
        self.step_ms: deque[float] = deque(maxlen=500)
        self.steps = 0
        self.late_ticks = 0

    @property
    def capacity(self) -> int:
        """How many conversations fit."""
        return self.engine.slots

    @property
    def active(self) -> int:
        """Conversations now in progress."""
        return len(self._active)

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run model work in the frame thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def join(self, gate: GateSettings) -> Conversation | None:
        """A new conversation in a freshly reset slot, or None when every slot is taken."""
        if not self._free:
            return None
        slot = self._free.pop(0)
        await self.in_thread(self.engine.reset, slot)
        conversation = Conversation(slot, gate)
        self._active[slot] = conversation
        self._wake.set()
        logger.info(f"conversation joined slot {slot} ({self.active}/{self.capacity})")
        return conversation

    async def leave(self, conversation: Conversation) -> None:
        """End ``conversation`` and free its slot."""
        if self._active.get(conversation.slot) is not conversation:
            return
        del self._active[conversation.slot]
        await self.in_thread(self.engine.reset, conversation.slot)
        self._free.append(conversation.slot)
        logger.info(f"conversation left slot {conversation.slot} ({self.active}/{self.capacity})")

    async def run(self) -> None:
        """Step forever (cancel to stop)."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            if not self._active:
                self._wake.clear()
                await self._wake.wait()
                next_tick = loop.time()
            frames: dict[int, np.ndarray] = {}
            gated: set[int] = set()
            for slot, conversation in list(self._active.items()):
                taken = conversation.take_frame()
                if taken is not None:
                    frames[slot] = taken[0]
                    if taken[1]:
                        gated.add(slot)
            if frames:
                started = time.perf_counter()
                try:
                    outputs = await self.in_thread(self.engine.step, frames, gated)
                except Exception:  # a failed step must not end every conversation's loop
                    logger.exception("frame step failed")
                    outputs = {}
                self.step_ms.append((time.perf_counter() - started) * 1000)
                self.steps += 1
                for slot, output in outputs.items():
                    conversation = self._active.get(slot)
                    if conversation is not None:
                        conversation.outbox.put_nowait(output)
            if any(c.queued_frames for c in self._active.values()):
                await asyncio.sleep(0)  # a backlog: step again now, letting the sockets run first
                continue
            next_tick += self.tick_s
            now = loop.time()
            if next_tick < now:
                self.late_ticks += 1
                next_tick = now
            await asyncio.sleep(next_tick - now)

    def stats(self) -> dict[str, Any]:
        """Figures for ``/health``."""
        recent = sorted(self.step_ms)
        return {
            "active_sessions": self.active,
            "max_sessions": self.capacity,
            "queued_frames": sum(c.queued_frames for c in self._active.values()),
            "steps": self.steps,
            "late_ticks": self.late_ticks,
            "step_ms_p50": round(recent[len(recent) // 2], 2) if recent else None,
            "step_ms_max": round(recent[-1], 2) if recent else None,
        }
