"""A tiny, randomly initialised Moshi checkpoint for CPU tests and benchmarks.

Built from moshi's real classes with the real sample rate, frame rate, codebook counts, cardinalities
and acoustic delays, only narrower and shallower; saved in the published layout (``config.json``,
``model.safetensors``, a Mimi safetensors with its own config, a SentencePiece tokenizer) so that the
worker loads it through ``--model DIR`` exactly as it loads kyutai/moshiko-pytorch-bf16.

Usage: ``python -m vivavoce_moshi.tiny OUT_DIR [--seed N]``
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import random
from pathlib import Path

TOKENIZER_NAME = "tokenizer.model"
MIMI_NAME = "mimi.safetensors"
MIMI_CONFIG_NAME = "mimi_config.json"
LM_NAME = "model.safetensors"
TEXT_VOCAB = 64
CODEBOOK_SCALE = 0.01
WORDS = (
    "hello there how are you today I am fine thanks what would you like to talk about the weather is "
    "nice we could go for a walk later or stay in and read a book tell me more about your day"
).split()


def _tokenizer() -> bytes:
    import sentencepiece

    rng = random.Random(0)
    sentences = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(2000))
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=sentences, model_writer=model, vocab_size=TEXT_VOCAB, model_type="unigram",
        pad_id=3, minloglevel=2,
    )
    return model.getvalue()


def mimi_config() -> dict:
    """Mimi at the real rates and codebook layout, with a narrow SEANet and a 1-layer transformer."""
    from moshi.models import loaders

    config = copy.deepcopy(loaders._mimi_config)
    config["seanet"].update(dimension=64, n_filters=4)
    config["quantizer"].update(dimension=32, input_dimension=64, output_dimension=64)
    config["transformer"].update(
        d_model=64, num_heads=2, num_layers=1, dim_feedforward=128, input_dimension=64, output_dimensions=[64]
    )
    return config


def lm_config() -> dict:
    """The Moshi LM's real codebook counts, card and delays, 2 layers of width 64."""
    from moshi.models import loaders

    config = dict(loaders._lm_kwargs)
    config.update(
        dim=64, text_card=TEXT_VOCAB, num_heads=4, num_layers=2, context=750,
        depformer_dim=64, depformer_dim_feedforward=int(4.125 * 64), depformer_num_heads=4, depformer_num_layers=2,
    )
    return config


def write_tiny_checkpoint(out: Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint to ``out`` (created) and return it."""
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, mimi_config())
    # Codebooks start at zero: every frame would encode to code 0. Random codebooks at the scale of
    # this encoder's latents make codes vary with the input (much larger ones all collapse to one code).
    for name, buffer in mimi.named_buffers():
        if name.endswith("embedding_sum"):
            buffer.copy_(torch.randn_like(buffer) * CODEBOOK_SCALE)
        elif name.endswith("_initialized"):
            buffer.fill_(1.0)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_config(), dtype=torch.float32)

    def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}

    save_file(tensors(mimi), str(out / MIMI_NAME))
    save_file(tensors(lm), str(out / LM_NAME))
    (out / TOKENIZER_NAME).write_bytes(_tokenizer())
    (out / MIMI_CONFIG_NAME).write_text(json.dumps(mimi_config(), indent=1))
    config = lm_config() | {
        "moshi_name": LM_NAME, "mimi_name": MIMI_NAME, "tokenizer_name": TOKENIZER_NAME,
        "mimi_config_name": MIMI_CONFIG_NAME, "model_type": "moshi",
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def main() -> None:
    """Command line: write a tiny checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_tiny_checkpoint(args.out, args.seed))


if __name__ == "__main__":
    main()
