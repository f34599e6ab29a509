"""Audio as a phone call delivers it to a pipeline: 8 kHz mu-law, back to 16 kHz by pipecat's resampler."""

from __future__ import annotations

import numpy as np
from pipecat.audio.utils import create_stream_resampler, pcm_to_ulaw, ulaw_to_pcm

from vivavoce.testing.media_streams import FRAME_SECS


async def through_phone_line(pcm_16k: np.ndarray) -> np.ndarray:
    """``pcm_16k`` (int16) sent over a phone line in 20 ms frames and resampled back, as Twilio's serializer does."""
    to_line, from_line = create_stream_resampler(), create_stream_resampler()
    step = int(16000 * FRAME_SECS)
    out = []
    for start in range(0, len(pcm_16k) - step + 1, step):
        ulaw = await pcm_to_ulaw(pcm_16k[start : start + step].tobytes(), 16000, 8000, to_line)
        out.append(await ulaw_to_pcm(ulaw, 8000, 16000, from_line))
    return np.frombuffer(b"".join(out), dtype=np.int16)
