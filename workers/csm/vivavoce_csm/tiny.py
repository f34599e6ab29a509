"""Build a tiny, randomly initialised CSM checkpoint from the real classes (tests and CPU benchmarks).

It is saved with ``save_pretrained`` and loads through the same code as the published weights, so the
worker's whole path (processor, generate, codec) runs on a CPU in milliseconds. It speaks noise.

    python -m vivavoce_csm.tiny OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CsmConfig,
    CsmForConditionalGeneration,
    CsmProcessor,
    EncodecFeatureExtractor,
    MimiConfig,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>", "<|pad|>"]
CODEBOOK_SIZE = 64
NUM_CODEBOOKS = 8

# CSM's own chat template (as published with sesame/csm-1b): each context turn is
# <bos>[speaker]text<eos> followed by its audio frames and an audio-eos frame; the last turn is text only.
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- bos_token }}{{- '[' + message['role'] + ']' }}"
    "{{- message['content'][0]['text'] }}{{- eos_token }}"
    "{%- if message['content']|length > 1 %}{{- '<|AUDIO|><|audio_eos|>' }}{%- endif %}{%- endfor %}"
)


def _tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text tokenizes) with CSM's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Hello there. How can I help you today? The weather is nice, thank you for calling."] * 4
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|pad|>"
    )


def build(out_dir: Path, seed: int = 0) -> Path:
    """Save a tiny CSM (model + processor) to ``out_dir`` and return it."""
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # The real codec's frame rate, rates and kernel layout (the processor relies on them); tiny widths.
    codec = MimiConfig(
        hidden_size=32,
        upsample_groups=32,
        num_filters=4,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        codebook_size=CODEBOOK_SIZE,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        num_quantizers=NUM_CODEBOOKS,
        num_semantic_quantizers=1,
    )
    vocab = CODEBOOK_SIZE + 3  # codes, then CSM's pad (and unused) ids, as 2048 -> 2051 in the real model
    config = CsmConfig(
        num_codebooks=NUM_CODEBOOKS,
        vocab_size=vocab,
        text_vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        pad_token_id=ids["<|pad|>"],
        bos_token_id=ids["<|begin_of_text|>"],
        audio_token_id=ids["<|AUDIO|>"],
        audio_eos_token_id=ids["<|audio_eos|>"],
        codebook_pad_token_id=vocab - 1,
        codebook_eos_token_id=0,
        depth_decoder_config={
            "num_codebooks": NUM_CODEBOOKS,
            "backbone_hidden_size": 64,
            "vocab_size": vocab,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": NUM_CODEBOOKS + 1,
        },
        codec_config=codec.to_dict(),
    )
    model = CsmForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Codebooks start at zero: every frame would encode to code 0 and decode to silence.
        for name, buf in model.codec_model.named_buffers():
            if name.endswith("embed_sum"):
                buf.copy_(torch.randn_like(buf))
            elif name.endswith("cluster_usage"):
                buf.fill_(1.0)
    # Ids the codec cannot decode (CSM's pad and spare ids, and 0, the all-codebooks end marker) are
    # suppressed so that random weights produce decodable, fixed-length audio.
    special = list(range(CODEBOOK_SIZE, vocab)) + [0]
    model.generation_config.suppress_tokens = special
    model.generation_config.depth_decoder_suppress_tokens = special
    model.generation_config.do_sample = True
    model.depth_decoder.generation_config.suppress_tokens = special
    model.depth_decoder.generation_config.do_sample = True
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor = CsmProcessor(
        EncodecFeatureExtractor(feature_size=1, sampling_rate=24000), tokenizer, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(out_dir)
    return out_dir


def main() -> None:
    """CLI: ``python -m vivavoce_csm.tiny OUT_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.out_dir, args.seed))


if __name__ == "__main__":
    main()
