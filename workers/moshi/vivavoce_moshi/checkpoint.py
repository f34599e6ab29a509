"""Find and load Moshi's weights the way Kyutai's own ``moshi.models.loaders`` does.

A local ``--model`` directory holds what a published repository holds (kyutai/moshiko-pytorch-bf16):
the LM safetensors, the Mimi safetensors, the SentencePiece text tokenizer and, optionally, the
``config.json`` that names them and configures the LM (without it, the Moshi 7B defaults apply, as in
``loaders``). Without a directory the published weights come from the hub, on a host that reaches it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

CONFIG_NAME = "config.json"


@dataclass
class MoshiModels:
    """Mimi, the Moshi LM and its text tokenizer, loaded once per process."""

    mimi: object
    lm: object
    tokenizer: object
    lm_gen_config: dict
    weights: str
    """Where the weights came from: the ``--model`` directory or the hub repository."""


def checkpoint_info(model_dir: Path | None, hf_repo: str, config: Path | None = None):
    """moshi's ``CheckpointInfo`` for a local directory (nothing downloaded) or a hub repository.

    ``config``: a config JSON to use instead of the directory's (or the repository's) ``config.json``.
    """
    from moshi.models import loaders

    if model_dir is None:
        logger.info(f"loading the published weights of {hf_repo} (hub)")
        return loaders.CheckpointInfo.from_hf_repo(hf_repo, config_path=config)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SystemExit(f"--model {model_dir}: not a directory (expected Moshi's safetensors and tokenizer)")
    config_path = Path(config) if config is not None else model_dir / CONFIG_NAME
    if config is not None and not config_path.exists():
        raise SystemExit(f"--config {config_path}: no such file")
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    names = {
        "LM weights": config.get("moshi_name", loaders.MOSHI_NAME),
        "Mimi weights": config.get("mimi_name", loaders.MIMI_NAME),
        "text tokenizer": config.get("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
    }
    for what, name in names.items():
        if not (model_dir / name).exists():
            raise SystemExit(f"--model {model_dir}: the {what} file {name} is missing")
    paths = [model_dir / name for name in names.values()]
    if not config:  # a legacy repository's layout: the Moshi 7B configuration
        return loaders.CheckpointInfo(*paths)
    mimi_config = config.get("mimi_config_name")
    # Paths (not strings) make loaders.hf_get use them as they are: nothing is fetched.
    return loaders.CheckpointInfo.from_hf_repo(
        hf_repo,
        moshi_weights=paths[0],
        mimi_weights=paths[1],
        tokenizer=paths[2],
        config_path=config_path,
        mimi_config_path=model_dir / mimi_config if mimi_config else None,
    )


def load_models(
    model_dir: Path | None, hf_repo: str, device: str, dtype: str, *, config: Path | None = None
) -> MoshiModels:
    """Load Mimi, the LM and the tokenizer on ``device`` (LM weights in ``dtype``)."""
    import torch

    info = checkpoint_info(model_dir, hf_repo, config)
    if info.model_type != "moshi":
        raise SystemExit(f"this worker serves Moshi models, not {info.model_type!r}")
    mimi = info.get_mimi(device=device)
    lm = info.get_moshi(device=device, dtype=getattr(torch, dtype))
    return MoshiModels(
        mimi=mimi,
        lm=lm,
        tokenizer=info.get_text_tokenizer(),
        lm_gen_config=dict(info.lm_gen_config),
        weights=str(model_dir) if model_dir is not None else hf_repo,
    )
