"""What a processor factory gets besides its own settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuildContext:
    """Bot-wide settings a processor may need: the LLM's system prompt from the bot file."""

    system_prompt: str
