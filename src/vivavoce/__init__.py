"""vivavoce: self-hosted, real-time voice agents declared as pipeline files, built on pipecat."""

from vivavoce.botfile import Bot, BotFileError, load_bot
from vivavoce.pipecat_entry import pipecat_bot

__version__ = "0.1.0"

__all__ = ["Bot", "BotFileError", "__version__", "load_bot", "pipecat_bot"]
