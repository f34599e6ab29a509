"""What the CLI shows a person: model-loading progress, the transcript and the per-turn latency table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
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


def transcript_lines(turns: list[Turn]) -> list[str]:
    """The conversation as timed lines (rich markup), one per user and bot utterance."""
    lines = []
    for turn in turns:
        at = "" if turn.user_started_s is None else f"{turn.user_started_s:6.1f}s"
        lines.append(f"[dim]{at:>7}[/]  [cyan]you[/] {escape(turn.user_text.strip()) or '[dim](no words)'}")
        if turn.bot_started_s is not None or turn.bot_text.strip():
            bot_at = "" if turn.bot_started_s is None else f"{turn.bot_started_s:6.1f}s"
            cut = " [yellow](interrupted)" if turn.interrupted else ""
            lines.append(
                f"[dim]{bot_at:>7}[/]  [magenta]bot[/] {escape(turn.bot_text.strip()) or '[dim](silent)'}{cut}"
            )
    return lines


def latency_table(turns: list[Turn]) -> Table:
    """Voice-to-voice latency of each turn and the stages it adds up from, with the p50 row."""
    table = Table(title="Latency per turn (ms)", header_style="bold", title_justify="left")
    table.add_column("turn", justify="right")
    table.add_column("voice→voice", justify="right", style="bold")
    for stage in STAGES:
        table.add_column(STAGE_TITLES[stage], justify="right")
    for number, turn in enumerate(turns, start=1):
        stages = turn.stages_ms()
        table.add_row(str(number), _fmt_ms(turn.voice_to_voice_ms), *(_fmt_ms(stages[s]) for s in STAGES))
    summary = summarize(turns)
    if summary["voice_to_voice_ms"]:
        stage_p50 = [summary["stages_ms"][s]["p50"] if summary["stages_ms"][s] else None for s in STAGES]
        table.add_section()
        table.add_row("p50", _fmt_ms(summary["voice_to_voice_ms"]["p50"]), *(_fmt_ms(v) for v in stage_p50))
    table.caption = (
        "vad: silence the VAD waits for · stt: transcript · turn: end-of-turn decision · llm: first token"
        " · tts: first audio · out: leaves the transport"
    )
    return table


def print_turns(turns: list[Turn]) -> None:
    """Print the transcript and the latency table, or say that nobody spoke."""
    if not turns:
        console.print("[yellow]No speech detected: 0 turns.")
        return
    console.print("[bold]Transcript")
    for line in transcript_lines(turns):
        console.print(line, soft_wrap=True)
    console.print(latency_table(turns))


def print_error(message: str) -> None:
    """Print a user-facing error in red (the text is never read as rich markup: it may hold [extras])."""
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)


def print_problems(header: str, problems: list[Any]) -> None:
    """Print a list of problems under a red header."""
    console.print(f"[bold red]{escape(header)}")
    for problem in problems:
        console.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
