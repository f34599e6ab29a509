"""Checks that need the CSM worker's own environment; run by tests/test_workers_csm.py as

    workers/csm/.venv/bin/python tests/csm_worker_checks.py MODEL_DIR

and print one JSON object of measured facts (the test asserts on them).
"""

from __future__ import annotations

import audioop
import base64
import json
import sys

import numpy as np
import torch

from vivavoce_csm.engine import CsmEngine
from vivavoce_worker.audio import float_to_pcm16, pcm16_to_mulaw
from vivavoce_worker.engine import SynthesisRequest
from vivavoce_worker.protocol import ContextTurn


def streamed_vs_one_shot(engine: CsmEngine) -> dict:
    session = engine.new_session()
    chunks: list[np.ndarray] = []
    engine.generate(
        SynthesisRequest(id="s", text="Hello there, how are you?", max_audio_ms=2000), session, chunks.append
    )
    codes = session.generated["s"]  # [frames, codebooks]
    with torch.no_grad():
        one_shot = engine.model.codec_model.decode(codes.T[None]).audio_values.reshape(-1).float().numpy()
    streamed = np.concatenate(chunks)
    return {
        "frames": len(chunks),
        "chunk_samples": sorted({len(c) for c in chunks}),
        "streamed_samples": len(streamed),
        "one_shot_samples": len(one_shot),
        "max_abs_diff": float(np.abs(streamed - one_shot[: len(streamed)]).max()),
        "peak": float(np.abs(one_shot).max()),
        "naive_max_abs_diff": float(
            np.abs(
                np.concatenate(
                    [engine.model.codec_model.decode(codes[i : i + 1].T[None]).audio_values.reshape(-1).detach().numpy()
                     for i in range(len(codes))]
                )
                - one_shot
            ).max()
        ),
    }


def context_matches_chat_template(engine: CsmEngine) -> dict:
    """Greedy codes from our cached-codes prompt equal those of the processor's chat-template path."""
    rng = np.random.default_rng(0)
    clip = (0.3 * rng.standard_normal(24000)).astype(np.float32)  # 1 s at 24 kHz
    turn = ContextTurn(speaker=1, text="Can you hear me?", audio=base64.b64encode(float_to_pcm16(clip)).decode(),
                       sample_rate=24000)
    request = SynthesisRequest(id="c", text="Yes I can.", speaker=0, context=[turn])
    session = engine.new_session()
    greedy = {"do_sample": False, "depth_decoder_do_sample": False, "max_new_tokens": 6, "output_audio": False}
    embeds, used = engine.prompt_embeds(request, session, 6)
    ours = engine.model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                 **greedy)
    # The clip as PCM16 went over the wire: the reference gets exactly those samples.
    wire = np.frombuffer(base64.b64decode(turn.audio), "<i2").astype(np.float32) / 32768.0
    conversation = [
        {"role": "1", "content": [{"type": "text", "text": turn.text}, {"type": "audio", "audio": wire}]},
        {"role": "0", "content": [{"type": "text", "text": request.text}]},
    ]
    inputs = engine.processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
    reference = engine.model.generate(**inputs, **greedy)
    encodes_before = session.encodes
    engine.prompt_embeds(request, session, 6)  # the same context again: served from the cache
    return {
        "context_turns_used": used,
        "prompt_positions": embeds.shape[1],
        "reference_positions": int(inputs["input_ids"].shape[1]),
        "codes_equal": bool(torch.equal(ours, reference)),
        "encodes_first": encodes_before,
        "encodes_after_repeat": session.encodes,
    }


def trimming(engine: CsmEngine) -> dict:
    long_text = "word " * 300
    context = [ContextTurn(speaker=i % 2, text=long_text) for i in range(12)]
    embeds, used = engine.prompt_embeds(
        SynthesisRequest(id="t", text="Short.", context=context), engine.new_session(), 100
    )
    return {"turns_given": len(context), "turns_used": used, "positions": embeds.shape[1],
            "limit": engine.max_positions - 100}


def mulaw_matches_audioop() -> dict:
    pcm = (np.random.default_rng(1).standard_normal(8000) * 8000).clip(-32768, 32767).astype("<i2").tobytes()
    pcm += np.array([-32768, -32767, -1, 0, 1, 32767], "<i2").tobytes()
    return {"mulaw_equal": pcm16_to_mulaw(pcm) == audioop.lin2ulaw(pcm, 2)}


def main() -> None:
    torch.manual_seed(0)
    engine = CsmEngine(sys.argv[1], "cpu")
    engine.load()
    print(json.dumps({
        "stream": streamed_vs_one_shot(engine),
        "context": context_matches_chat_template(engine),
        "trim": trimming(engine),
        "mulaw": mulaw_matches_audioop(),
    }))


if __name__ == "__main__":
    main()
