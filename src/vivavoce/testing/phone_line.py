"""Audio as a phone call delivers it to a pipeline: 8 kHz mu-law, back to 16 kHz as the Twilio serializer does."""

from __future__ import annotations

import numpy as np
import soxr
from pipecat.audio.utils import ulaw_to_pcm

from vivavoce.testing.media_streams import pcm16_to_mulaw_frames
from vivavoce.transports.twilio_stream import caller_audio_resampler

LINE_RATE = 8000


async def through_phone_line(pcm_16k: np.ndarray) -> np.ndarray:
    """``pcm_16k`` (int16) sent over a phone line in 20 ms mu-law frames and resampled back to 16 kHz by the
    resampler of vivavoce's Twilio serializer.

    The same input always gives the same output, as a test needs. The caller's side is one float resampling
    pass: soxr's int16 stream resamplers (pipecat's) add dither seeded from the clock (one input gave a
    different line on every run), and drop their history after 0.2 s without a call (a busy machine's pause
    here; a live line's 20 ms frames never leave such a gap).
    """
    narrow = soxr.resample(pcm_16k.astype(np.float32), 16000, LINE_RATE, quality="VHQ")
    from_line = caller_audio_resampler(clear_after_secs=None)
    out = []
    for frame in pcm16_to_mulaw_frames(np.clip(np.round(narrow), -32768, 32767)):
        out.append(await ulaw_to_pcm(frame, LINE_RATE, 16000, from_line))
    return np.frombuffer(b"".join(out), dtype=np.int16)
