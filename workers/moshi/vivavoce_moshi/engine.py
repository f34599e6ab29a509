"""One batched Moshi: Mimi + LMGen streaming over ``slots`` conversations at once.

Each slot is one conversation. A step takes one 80 ms frame (1920 samples at 24 kHz) from every slot
that has one, encodes them with Mimi, steps the LM and decodes its audio, all as one batch;
``set_exec_mask`` leaves the streaming state of the other slots untouched, so a slot's output does
not depend on which other slots are active (the tests compare batched runs with solo ones).

Turn gating (per slot, per step): the text token sampled for a gated slot is replaced by the padding
token and its audio tokens by the codes of silence, before the depth transformer and the model's own
streams see them. The model thus stays silent *in its own history*: it has not said anything the user
did not hear, and it can start its answer when the gate opens. The gated frames it sends are zeros.

Everything here is synchronous and must run in one thread (the worker's frame thread).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from loguru import logger

from vivavoce_moshi.checkpoint import MoshiModels

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920
PADDING_TEXT_IDS = (0, 3)


@dataclass
class SlotOutput:
    """What one slot produced in one step: a frame of audio (float32, 24 kHz) and maybe a text piece."""

    pcm: np.ndarray
    text: str | None


class BatchedMoshi:
    """Mimi and the Moshi LM streaming over ``slots`` conversations."""

    name = "moshi"
    """The model family, as ``/health`` reports it (``weights`` says which weights)."""
    sample_rate = SAMPLE_RATE

    def __init__(self, models: MoshiModels, slots: int, *, greedy: bool = False, **sampling: float):
        """``sampling``: LMGen's temp, temp_text, top_k, top_k_text (defaults from the checkpoint)."""
        from moshi.models import LMGen

        self.slots = slots
        self.weights = models.weights
        self.mimi = models.mimi
        self.lm = models.lm
        self.tokenizer = models.tokenizer
        self.device = next(self.lm.parameters()).device
        self._vocab = self.tokenizer.vocab_size()
        self._pad_id = self.lm.existing_text_padding_id
        self._gated = torch.zeros(slots, dtype=torch.bool, device=self.device)
        self._was_gated = torch.zeros(slots, dtype=torch.bool)
        self._fresh = torch.zeros(slots, dtype=torch.bool)
        with torch.no_grad():
            # Silence as Mimi encodes it, after its left padding has passed.
            silence = self.mimi.encode(torch.zeros(1, 1, 4 * FRAME_SAMPLES, device=self.device))
        self._silence_codes = silence[0, : self.lm.dep_q, -1]
        options = models.lm_gen_config | {k: v for k, v in sampling.items() if v is not None}
        # support_out_of_sync: slots join at different times, so readiness is per slot, not global.
        self.lm_gen = LMGen(
            self.lm, use_sampling=not greedy, support_out_of_sync=True,
            on_text_hook=self._gate_text, on_audio_hook=self._gate_audio, **options,
        )
        self._streaming = ExitStack()
        self._streaming.enter_context(self.mimi.streaming(slots))
        self._streaming.enter_context(self.lm_gen.streaming(slots))

    def close(self) -> None:
        """Leave streaming mode, so that the models can serve another ``BatchedMoshi`` (the benchmark's batch sizes)."""
        self._streaming.close()

    def _gate_text(self, text_tokens: torch.Tensor) -> None:
        text_tokens.copy_(torch.where(self._gated, self._pad_id, text_tokens))

    def _gate_audio(self, audio_tokens: torch.Tensor) -> None:
        audio_tokens.copy_(torch.where(self._gated[:, None], self._silence_codes[None], audio_tokens))

    def reset(self, slot: int) -> None:
        """Start a new conversation in ``slot`` (on join; the previous one's state is dropped)."""
        mask = torch.zeros(self.slots, dtype=torch.bool, device=self.device)
        mask[slot] = True
        self.mimi.reset_streaming(mask)
        self.lm_gen.reset_streaming(mask)
        self._fresh[slot] = True
        self._was_gated[slot] = False

    @torch.no_grad()
    def step(self, frames: dict[int, np.ndarray], gated: set[int] = frozenset()) -> dict[int, SlotOutput]:
        """Step the slots in ``frames`` (slot -> 1920 float32 samples) together; the others stay as they are.

        Slots in ``gated`` are held silent (see the module's doc). Returns the frame each stepped slot
        produced; a slot's first step produces none (the model's one-frame acoustic delay).
        """
        if not frames:
            return {}
        active = torch.zeros(self.slots, dtype=torch.bool)
        pcm = torch.zeros(self.slots, 1, FRAME_SAMPLES)
        for slot, samples in frames.items():
            active[slot] = True
            pcm[slot, 0] = torch.from_numpy(np.asarray(samples, dtype=np.float32))
        gate = torch.zeros(self.slots, dtype=torch.bool)
        for slot in gated:
            gate[slot] = True
        active_dev = active.to(self.device)

        self.mimi.set_exec_mask(active_dev)
        codes = self.mimi.encode(pcm.to(self.device))
        fresh = self._fresh & active
        if fresh.any():
            # As moshi's server does: a conversation's first frame is in the model's past; encoding it
            # again after a reset re-applies Mimi's left padding to the next one.
            self.mimi.reset_streaming(fresh.to(self.device))
            self._fresh &= ~active
        self._gated.copy_(gate.to(self.device))
        self.lm_gen.set_exec_mask(active_dev)
        tokens = self.lm_gen.step(codes)
        ready = active_dev & (tokens[:, 0, 0] >= 0)
        out: dict[int, SlotOutput] = {}
        if not bool(ready.any()):
            self._was_gated = torch.where(active, gate, self._was_gated)
            return out
        self.mimi.set_exec_mask(ready)
        decoded = self.mimi.decode(tokens[:, 1:].clamp(min=0)).float().cpu().numpy()
        text_ids = tokens[:, 0, 0].cpu().tolist()
        ready_cpu = ready.cpu()
        for slot in frames:
            if not ready_cpu[slot]:
                continue
            # Output lags the input by the acoustic delay: hold the frame if it was gated then or now.
            if gate[slot] or self._was_gated[slot]:
                out[slot] = SlotOutput(np.zeros(FRAME_SAMPLES, np.float32), None)
                continue
            out[slot] = SlotOutput(decoded[slot, 0], self._piece(text_ids[slot]))
        self._was_gated = torch.where(active, gate, self._was_gated)
        return out

    def _piece(self, token: int) -> str | None:
        if token in PADDING_TEXT_IDS or not 0 <= token < self._vocab or self.tokenizer.is_control(token):
            return None
        return self.tokenizer.id_to_piece(token).replace("\u2581", " ")

    def warmup(self, frames: int = 4) -> None:
        """Step every slot on silence, then reset them (first-call allocations, CUDA graphs)."""
        for _ in range(frames):
            self.step({slot: np.zeros(FRAME_SAMPLES, np.float32) for slot in range(self.slots)})
        for slot in range(self.slots):
            self.reset(slot)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        logger.info(f"warmed up {self.slots} slots")
