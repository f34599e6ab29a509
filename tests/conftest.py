"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vivavoce.botfile import Bot, load_bot
from vivavoce.builder import load_models
from worker_support import CSM_TEST_MAX_AUDIO_MS, csm_python, worker_process

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def local_bot() -> Bot:
    """bots/local.yaml with its models loaded (once per test process)."""
    bot = load_bot(REPO / "bots" / "local.yaml")
    load_models(bot)
    return bot


@pytest.fixture(scope="session")
def tiny_csm(tmp_path_factory) -> Path:
    """A tiny random CSM checkpoint saved from the real classes (once per test session)."""
    out = tmp_path_factory.mktemp("tiny-csm")
    subprocess.run([str(csm_python()), "-m", "vivavoce_csm.tiny", str(out)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="session")
def csm_worker(tiny_csm, tmp_path_factory) -> Iterator[str]:
    """A CSM worker process (API key required) on the tiny checkpoint, capped at ``CSM_TEST_MAX_AUDIO_MS``."""
    log = tmp_path_factory.mktemp("csm-worker") / "worker.log"
    args = ["-m", "vivavoce_csm", "--model", str(tiny_csm), "--max-audio-ms", str(CSM_TEST_MAX_AUDIO_MS)]
    with worker_process(args, log=log) as url:
        yield url
