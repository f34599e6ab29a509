"""Sesame CSM (transformers ``CsmForConditionalGeneration``) as a worker engine.

Per session it keeps the Mimi codes of context audio (keyed by content) and of the utterances it
generated (keyed by request id), so a conversation's audio is encoded once, not on every turn. The
prompt is assembled as CSM's chat template lays it out (``<bos>[speaker]text<eos>`` then the turn's
audio frames and an audio-eos frame), embedded directly from the cached codes, and trimmed from the
oldest turn to fit the model's position window. Frames stream out of ``generate(streamer=...)`` and
are decoded exactly, one 80 ms frame at a time (``StreamingMimiDecoder``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from transformers import AutoProcessor, CsmForConditionalGeneration
from transformers.generation.streamers import BaseStreamer
from transformers.utils import cached_file

from vivavoce_csm.mimi_stream import StreamingMimiDecoder
from vivavoce_worker.audio import decode_base64_pcm16, resample
from vivavoce_worker.engine import Emit, Engine, SynthesisRequest
from vivavoce_worker.protocol import ContextTurn

PUBLISHED_MODEL = "sesame/csm-1b"
SESSION_CACHE_TURNS = 64


@dataclass
class CsmSession:
    """One conversation's cached codes: context audio by content hash, own utterances by request id."""

    encoded: OrderedDict[str, torch.Tensor] = field(default_factory=OrderedDict)
    generated: OrderedDict[str, torch.Tensor] = field(default_factory=OrderedDict)
    encodes: int = 0  # how many context clips were run through the codec (tests check the cache)

    @staticmethod
    def remember(cache: OrderedDict[str, torch.Tensor], key: str, codes: torch.Tensor) -> None:
        cache[key] = codes
        cache.move_to_end(key)
        while len(cache) > SESSION_CACHE_TURNS:
            cache.popitem(last=False)


class _FrameStreamer(BaseStreamer):
    """Receives generate()'s frames; the first ``put`` is the prompt, which is skipped."""

    def __init__(self, on_frame):
        self._on_frame = on_frame
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._on_frame(value)  # may raise Cancelled: that stops generate() after this frame

    def end(self) -> None:
        pass


def _depth_decoder_settings(model_path: str) -> dict[str, Any]:
    """The checkpoint's ``depth_decoder_*`` generation settings.

    transformers saves them in generation_config.json but drops them when loading it; generate()
    takes them back as keyword arguments.
    """
    path = cached_file(model_path, "generation_config.json", _raise_exceptions_for_missing_entries=False)
    if path is None:
        return {}
    saved = json.loads(Path(path).read_text())
    return {k: v for k, v in saved.items() if k.startswith("depth_decoder_") and not k.startswith("depth_decoder__")}


class CsmEngine(Engine):
    """CSM-1B (or any checkpoint of the same classes) with streaming exact decode."""

    name = "csm"
    interleave_frames = True  # per-request state (KV caches, decoder) lives in generate()
    chunk_unit_ms = 80.0  # /v1/tts's chunk_size counts Mimi frames

    def __init__(self, model: Path | None, device: str, dtype: str = "auto", max_audio_ms: int = 20_000):
        """``model``: local weights dir (None: the published weights); ``dtype``: auto, float32, bfloat16."""
        self.model_path = str(model) if model else PUBLISHED_MODEL
        self.device = device
        self._dtype = {
            "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[dtype]
        self.max_audio_ms = max_audio_ms
        self.clips_encoded = 0

    def load(self) -> None:
        """Load processor, model and codec once."""
        if self.model_path != PUBLISHED_MODEL and not Path(self.model_path).is_dir():
            raise SystemExit(f"--model {self.model_path}: no such directory (a CSM checkpoint saved by transformers)")
        logger.info("loading CSM from {} on {} ({})", self.model_path, self.device, self._dtype)
        self.processor = AutoProcessor.from_pretrained(self.model_path)
        self.tokenizer = self.processor.tokenizer
        self.model = CsmForConditionalGeneration.from_pretrained(self.model_path, dtype=self._dtype)
        self.model.to(self.device).eval()
        config = self.model.config
        self.num_codebooks = config.num_codebooks
        self.eos_code = config.codebook_eos_token_id
        self.max_positions = config.max_position_embeddings
        codec = self.model.codec_model
        self.sample_rate = codec.config.sampling_rate
        self.frame_samples = int(self.sample_rate / codec.config.frame_rate)
        self._gen_kwargs = _depth_decoder_settings(self.model_path)

    def new_session(self) -> CsmSession:
        """A conversation with no cached codes yet."""
        return CsmSession()

    def health(self) -> dict[str, Any]:
        """Model facts for /health."""
        return {
            "weights": self.model_path,
            "frame_ms": 1000 * self.frame_samples / self.sample_rate,
            "max_positions": self.max_positions,
            "context_clips_encoded": self.clips_encoded,
        }

    def known_voice(self, voice: str) -> bool:
        """CSM's voices are speaker ids."""
        return voice.isdigit() and int(voice) < 64

    # --- prompt -------------------------------------------------------------------------------

    def _speaker(self, request: SynthesisRequest) -> int:
        if request.speaker is not None:
            return request.speaker
        if request.voice is None:
            return 0
        if request.voice.isdigit():
            return int(request.voice)
        raise ValueError(f"CSM voices are speaker ids ('0', '1', ...), not {request.voice!r}")

    def _text_ids(self, speaker: int, text: str) -> list[int]:
        ids = self.tokenizer(f"[{speaker}]{text}", add_special_tokens=False).input_ids
        return [self.tokenizer.bos_token_id, *ids, self.tokenizer.eos_token_id]

    @torch.no_grad()
    def encode_audio(self, samples: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Mimi codes ``[frames, num_codebooks]`` of float samples."""
        audio = resample(samples, sample_rate, self.sample_rate)
        values = torch.from_numpy(audio).to(self.device, self.model.codec_model.dtype)[None, None]
        codes = self.model.codec_model.encode(values, num_quantizers=self.num_codebooks).audio_codes
        return codes[0].transpose(0, 1)

    def _check_references(self, request: SynthesisRequest, session: CsmSession) -> None:
        """ValueError (``bad_request``) for a context ``request_id`` that is not a finished request of
        ``session`` (unknown, cancelled, failed, or older than its ``SESSION_CACHE_TURNS`` latest)."""
        for turn in request.context:
            if turn.request_id is not None and turn.request_id not in session.generated:
                raise ValueError(
                    f"context request_id {turn.request_id!r} is not a finished request of this session "
                    f"(unknown, cancelled, or older than its {SESSION_CACHE_TURNS} latest)"
                )

    def _turn_codes(self, turn: ContextTurn, session: CsmSession) -> torch.Tensor | None:
        if turn.request_id is not None:
            codes = session.generated[turn.request_id]  # checked by _check_references
            session.generated.move_to_end(turn.request_id)  # in use: kept longest
            return codes if len(codes) else None  # a request that ended at once: text only
        if turn.audio is None:
            return None
        key = hashlib.sha1(f"{turn.sample_rate}:{turn.audio}".encode()).hexdigest()
        codes = session.encoded.get(key)
        if codes is None:
            codes = self.encode_audio(decode_base64_pcm16(turn.audio), turn.sample_rate)
            session.encodes += 1
            self.clips_encoded += 1
        session.remember(session.encoded, key, codes)
        return codes

    @torch.no_grad()
    def prompt_embeds(
        self, request: SynthesisRequest, session: CsmSession, max_frames: int
    ) -> tuple[torch.Tensor, int]:
        """The prompt's embeddings ``[1, positions, hidden]`` and how many context turns fit."""
        self._check_references(request, session)
        model = self.model
        audio_embed = model.backbone_model.embed_tokens
        eos_frame = torch.full((1, 1, self.num_codebooks), self.eos_code, dtype=torch.long, device=self.device)

        def text(ids: list[int]) -> torch.Tensor:
            return model.embed_text_tokens(torch.tensor([ids], device=self.device))

        target = text(self._text_ids(self._speaker(request), request.text))
        budget = self.max_positions - target.shape[1] - max_frames
        if budget < 0:
            raise ValueError(f"text too long for CSM's {self.max_positions}-position window")
        turns: list[torch.Tensor] = []
        for turn in reversed(request.context):  # newest first: the oldest turns are the ones dropped
            parts = [text(self._text_ids(turn.speaker, turn.text))]
            codes = self._turn_codes(turn, session)
            if codes is not None:
                parts += [audio_embed(codes[None].to(self.device)), audio_embed(eos_frame)]
            embeds = torch.cat(parts, dim=1)
            if embeds.shape[1] > budget:
                break
            budget -= embeds.shape[1]
            turns.insert(0, embeds)
        return torch.cat([*turns, target], dim=1), len(turns)

    # --- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, request: SynthesisRequest, session: CsmSession, emit: Emit) -> None:
        """Stream ``request``'s audio frame by frame; its codes join the session on completion.

        At most ``max_audio_ms`` of audio (the request's, within the worker's own cap), exactly: the
        frames are 80 ms, so the last one is cut to the cap (its codes join the session whole).
        """
        max_ms = min(request.max_audio_ms or self.max_audio_ms, self.max_audio_ms)
        max_samples = max_ms * self.sample_rate // 1000  # the cap is exact: the last frame is cut to it
        max_frames = max(1, math.ceil(max_samples / self.frame_samples))
        encodes_before = session.encodes
        embeds, used = self.prompt_embeds(request, session, max_frames)
        request.report.update(
            prompt_positions=embeds.shape[1],
            context_turns=used,
            context_encodes=session.encodes - encodes_before,
            session_context_encodes=session.encodes,
        )
        frames: list[torch.Tensor] = []
        decoder = StreamingMimiDecoder(self.model.codec_model)
        produced = 0

        def on_frame(codes: torch.Tensor) -> None:
            nonlocal produced
            codes = codes[0]
            if bool((codes == self.eos_code).all()) or produced >= max_samples:
                return  # CSM's end-of-speech frame (not audio), or past the cap
            frames.append(codes)
            audio = decoder.decode_frame(codes.to(self.device)[None, :, None])
            samples = audio.float().cpu().numpy().reshape(-1)[: max_samples - produced]
            produced += len(samples)
            emit(samples)

        options = {}
        if "temperature" in request.options:
            options = {"do_sample": True, "temperature": request.options["temperature"]}
        self.model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
            max_new_tokens=max_frames,
            streamer=_FrameStreamer(on_frame),
            output_audio=False,
            **self._gen_kwargs,
            **options,
        )
        codes = torch.stack(frames) if frames else torch.zeros((0, self.num_codebooks), dtype=torch.long)
        session.remember(session.generated, request.id, codes)
