"""Where vivavoce's log goes: stderr, at VIVAVOCE_LOG_LEVEL (or the command's default)."""

from __future__ import annotations

import os
import sys

from loguru import logger


def configure_logging(verbose: bool = False, default: str = "WARNING") -> None:
    """Replace loguru's default handler; ``verbose`` shows everything, pipecat's debug log included."""
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else os.environ.get("VIVAVOCE_LOG_LEVEL", default))
