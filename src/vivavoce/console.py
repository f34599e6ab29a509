"""What the CLI shows a person: model-loading progress, the transcript and the per-turn latency table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from vivavoce.model_store import models
from vivavoce.turns import STAGES, Turn, summarize

console = Console(stderr=True)
"""Progress and messages go to stderr, so stdout stays clean for JSON (`schema`, reports)."""


class _ProgressListener:
    def __init__(self, progress: Progress):
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def load_started(self, label: str) -> None:
        self._tasks[label] = self._progress.add_task(f"loading {label}", total=1)

    def load_finished(self, label: str, seconds: float, error: BaseException | None) -> None:
        task = self._tasks.get(label)
        if task is None:
            return
        status = "[red]failed" if error else f"[green]loaded in {seconds:.1f}s"
        self._progress.update(task, completed=1, description=f"{label} {status}")


@contextmanager
def model_loading_progress() -> Iterator[None]:
    """Show a line per model while models load (from any thread)."""
    progress = Progress(
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    listener = _ProgressListener(progress)
    models.add_listener(listener)
    try:
        with progress:
            yield
    finally:
        models.remove_listener(listener)


STAGE_TITLES = {
    "vad_stop": "vad",
    "stt": "stt",
    "turn_decision": "turn",
    "llm_first_token": "llm",
    "tts_first_audio": "tts",
    "transport": "out",
}


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def turns_table(turns: list[Turn]) -> Table:
    """The transcript with voice-to-voice latency and its stages, one row per turn."""
    table = Table(title="Turns (ms)", show_lines=False, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("at (s)", justify="right")
    table.add_column("user said")
    table.add_column("bot said")
    table.add_column("voice→voice", justify="right", style="bold")
    for stage in STAGES:
        table.add_column(STAGE_TITLES[stage], justify="right")
    table.add_column("barge-in")
    for number, turn in enumerate(turns, start=1):
        stages = turn.stages_ms()
        table.add_row(
            str(number),
            "-" if turn.user_started_s is None else f"{turn.user_started_s:.1f}",
            turn.user_text.strip() or "[dim](no words)",
            turn.bot_text.strip() or "[dim](silent)",
            _fmt_ms(turn.voice_to_voice_ms),
            *(_fmt_ms(stages[s]) for s in STAGES),
            "[yellow]interrupted" if turn.interrupted else "",
        )
    summary = summarize(turns)
    p50 = summary["voice_to_voice_ms"]
    if p50:
        stage_p50 = [summary["stages_ms"][s]["p50"] if summary["stages_ms"][s] else None for s in STAGES]
        table.add_section()
        table.add_row("", "", "[bold]p50", "", _fmt_ms(p50["p50"]), *(_fmt_ms(v) for v in stage_p50), "")
    return table


def print_turns(turns: list[Turn]) -> None:
    """Print the turns table, or say that nobody spoke."""
    if not turns:
        console.print("[yellow]No speech detected: 0 turns.")
        return
    console.print(turns_table(turns))


def print_error(message: str) -> None:
    """Print a user-facing error in red (the text is never read as rich markup: it may hold [extras])."""
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)


def print_problems(header: str, problems: list[Any]) -> None:
    """Print a list of problems under a red header."""
    console.print(f"[bold red]{header}")
    for problem in problems:
        console.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
