"""Audio on the wire of ``/api/chat``: Ogg/Opus (Kyutai's clients) or raw PCM16 (``?codec=pcm16``)."""

from __future__ import annotations

import numpy as np
import sphn

from vivavoce_worker.audio import float_to_pcm16, pcm16_to_float

SAMPLE_RATE = 24000


class OpusCodec:
    """Kyutai's codec: an Ogg/Opus stream each way, through ``sphn`` as moshi's server does."""

    name = "opus"

    def __init__(self) -> None:
        """Fresh streams for one conversation."""
        self._reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self._writer = sphn.OpusStreamWriter(SAMPLE_RATE)

    def decode(self, payload: bytes) -> np.ndarray:
        """Samples in the next piece of the client's Ogg stream (maybe none yet); ValueError if it is not Ogg/Opus."""
        return np.asarray(self._reader.append_bytes(payload), dtype=np.float32)

    def encode(self, samples: np.ndarray) -> bytes:
        """The next piece of our Ogg stream (empty while the writer buffers)."""
        return self._writer.append_pcm(samples)


class Pcm16Codec:
    """Little-endian 16-bit mono PCM at 24 kHz both ways: for clients without Opus (the vivavoce agent)."""

    name = "pcm16"

    def decode(self, payload: bytes) -> np.ndarray:
        """Samples of one message; ValueError on an odd byte count."""
        if len(payload) % 2:
            raise ValueError("PCM16 audio must have an even number of bytes")
        return pcm16_to_float(payload)

    def encode(self, samples: np.ndarray) -> bytes:
        """One frame as PCM16."""
        return float_to_pcm16(samples)


CODECS = {"opus": OpusCodec, "pcm16": Pcm16Codec}
