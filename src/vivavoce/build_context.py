"""What a processor factory gets besides its own settings."""

from __future__ import annotations

from dataclasses import dataclass

from vivavoce.botfile import Bot


@dataclass(frozen=True)
class BuildContext:
    """The bot being built; factories read bot-wide settings (the system prompt) from it."""

    bot: Bot

    @property
    def system_prompt(self) -> str:
        """The LLM's system prompt from the bot file."""
        return self.bot.spec.system_prompt
