"""Exact frame-by-frame decoding with transformers' Mimi codec.

transformers' ``MimiModel.decode`` has no streaming state for its convolutions: decoding each 80 ms
frame alone is wrong at every frame boundary, and re-decoding the whole prefix costs O(n^2). This
decoder runs the same modules (same weights) one frame at a time and keeps what each layer needs
from the past, as moshi's streaming Mimi does: the last ``kernel - stride`` inputs of every causal
convolution, the overlap-add tail of every transposed convolution, and the decoder transformer's KV
cache. The output equals ``decode`` of the whole sequence.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.cache_utils import DynamicCache
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiModel,
    MimiResnetBlock,
)


class StreamingMimiDecoder:
    """Decodes one frame of codes at a time; ``reset()`` starts a new utterance."""

    def __init__(self, codec: MimiModel):
        """Wrap a loaded codec (its weights are used as they are, never copied)."""
        self.codec = codec
        decoder = codec.decoder
        self._upsample = decoder.upsample
        self._transformer = decoder.decoder_transformer
        self._seanet = decoder.decoder_seanet
        self.reset()

    def reset(self) -> None:
        """Forget the previous utterance."""
        self._conv_state: dict[int, torch.Tensor] = {}
        self._tail_state: dict[int, torch.Tensor] = {}
        self._kv = DynamicCache(config=self._transformer.config)

    @torch.no_grad()
    def decode_frame(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes``: ``[batch, num_codebooks, frames]`` -> audio ``[batch, 1, frames * frame_samples]``."""
        latents = self.codec.quantizer.decode(codes)
        hidden = self._conv_transpose(self._upsample, latents) if self._upsample is not None else latents
        out = self._transformer(hidden.transpose(1, 2), past_key_values=self._kv, use_cache=True)
        self._kv = out.past_key_values
        hidden = out.last_hidden_state.transpose(1, 2)
        for layer in self._seanet.layers:
            hidden = self._layer(layer, hidden)
        return hidden

    def _layer(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, MimiConv1d):
            return self._conv(layer, x)
        if isinstance(layer, MimiConvTranspose1d):
            return self._conv_transpose(layer, x)
        if isinstance(layer, MimiResnetBlock):
            residual = self._layer(layer.shortcut, x)
            for sub in layer.block:
                x = self._layer(sub, x)
            return residual + x
        return layer(x)  # activations and identity: no state

    def _conv(self, layer: MimiConv1d, x: torch.Tensor) -> torch.Tensor:
        if not layer.causal or layer.conv.stride[0] != 1:
            raise ValueError("streaming decode needs causal, stride-1 convolutions (Mimi's decoder)")
        keep = int(layer.padding_total)
        past = self._conv_state.get(id(layer))
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], keep)  # Mimi pads causally with zeros
        full = torch.cat([past, x], dim=-1)
        self._conv_state[id(layer)] = full[..., full.shape[-1] - keep :] if keep else full[..., :0]
        return layer.conv(full)

    def _conv_transpose(self, layer: MimiConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
        conv = layer.conv
        stride = conv.stride[0]
        if layer.padding_left != 0:
            raise ValueError("streaming decode needs fully right-trimmed transposed convolutions (Mimi's decoder)")
        # Without bias: the overlapping tail is summed across calls, the bias must be added once.
        y = F.conv_transpose1d(x, conv.weight, None, stride, 0, 0, conv.groups, conv.dilation[0])
        tail = self._tail_state.get(id(layer))
        if tail is not None:
            y[..., : tail.shape[-1]] += tail
        n = x.shape[-1] * stride
        self._tail_state[id(layer)] = y[..., n:].clone()
        y = y[..., :n]
        if conv.bias is not None:
            y = y + conv.bias[None, :, None]
        return y
