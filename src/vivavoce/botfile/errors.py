"""Bot-file errors that name the file, the line, the key and what would have been allowed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vivavoce.botfile.positions import Path as KeyPath, Position


def format_key_path(path: KeyPath) -> str:
    """``("pipeline", 1, "model")`` -> ``pipeline[1].model``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a bot file."""

    file: Path
    position: Position
    key: KeyPath
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.position.line}:{self.position.column}: {format_key_path(self.key)}: {self.message}"


class BotFileError(ValueError):
    """A bot file that cannot be used; ``problems`` lists every error found, each with its line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
