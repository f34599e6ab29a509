"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from vivavoce.botfile import Bot, load_bot
from vivavoce.builder import load_models

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def local_bot() -> Bot:
    """bots/local.yaml with its models loaded (once per test process)."""
    bot = load_bot(REPO / "bots" / "local.yaml")
    load_models(bot)
    return bot
