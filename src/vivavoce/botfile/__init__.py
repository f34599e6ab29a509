"""Bot files (pipeline files): YAML declaring a voice agent, validated with line-accurate errors."""

from vivavoce.botfile.errors import BotFileError, Problem
from vivavoce.botfile.loader import Bot, Stage, load_bot
from vivavoce.botfile.schema import bot_file_model

__all__ = ["Bot", "BotFileError", "Problem", "Stage", "bot_file_model", "load_bot"]
