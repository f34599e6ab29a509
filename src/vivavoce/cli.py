"""The ``vivavoce`` command: run, serve, call, check, list, schema, sample and prepare."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from vivavoce.log_setup import configure_logging as _configure_logging
from vivavoce.realtime_env import apply_realtime_env

# Before pipecat is first imported (below), so its INFO banner does not greet every command;
# and before torch and CTranslate2 load, which read the OpenMP settings once.
_configure_logging(verbose=False)
apply_realtime_env()

from vivavoce import kinds  # noqa: E402
from vivavoce.botfile import Bot, BotFileError, bot_file_model, load_bot  # noqa: E402
from vivavoce.console import console, model_loading_progress, print_error, print_problems, print_turns  # noqa: E402
from vivavoce.packaged_models import ModelNotFoundError  # noqa: E402
from vivavoce.registry import MissingDependencyError, TransportUnavailableError  # noqa: E402
from vivavoce.worker_directory import REGISTRY_ENV, RegistryUnavailableError  # noqa: E402

app = typer.Typer(
    help="vivavoce: self-hosted, real-time voice agents declared as pipeline files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USER_ERROR = 2
"""A bad bot file, a bad recording: the message says what to fix."""
EXIT_MISSING = 3
"""A model or package is missing: the message says what to install."""




def _load(path: Path) -> Bot:
    try:
        return load_bot(path)
    except BotFileError as e:
        print_problems(f"{path}: invalid bot file", e.problems)
        raise typer.Exit(EXIT_USER_ERROR) from None


def _load_models(bot: Bot, done: str = "is listening") -> None:
    from vivavoce.builder import load_models

    started = time.perf_counter()
    with model_loading_progress():
        load_models(bot)
    console.print(f"[green]Ready[/] in {time.perf_counter() - started:.1f}s: {escape(bot.name)} {done}.")


@app.command()
def run(
    bot_file: Annotated[Path, typer.Argument(help="The bot file (YAML).")],
    input: Annotated[
        Path | None, typer.Option("--input", "-i", help="A WAV to play to the bot instead of the microphone.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the bot's audio here, aligned with the input.")
    ] = None,
    report: Annotated[Path | None, typer.Option("--report", "-r", help="Write the per-turn JSON report here.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show pipecat's debug log.")] = False,
) -> None:
    """Run a bot: on a recording (--input), or over its transport when it runs here (the microphone and
    speakers, a Daily room); bots served over HTTP (twilio, webrtc) run through the microphone."""
    _configure_logging(verbose)
    process_started = time.perf_counter()
    bot = _load(bot_file)
    try:
        if input is None:
            if output or report:
                print_error("--output and --report need --input (a recording to play to the bot).")
                raise typer.Exit(EXIT_USER_ERROR)
            # Its own transport when it has a way to run here (local, daily), else the microphone.
            transport = bot.transport if bot.transport.run else kinds.transports.get("local")
            # The bot's transport settings, or the microphone's defaults when it stands in for them.
            settings = bot.spec.transport if transport is bot.transport else transport.config(kind=transport.name)
            try:
                if transport.check:
                    transport.load("check")(settings)
            except TransportUnavailableError as e:
                print_error(str(e))
                raise typer.Exit(EXIT_USER_ERROR) from None
            _load_models(bot, done=transport.ready)
            print_turns(asyncio.run(transport.load("run")(bot)))
            return

        from vivavoce.file_session import run_on_recording
        from vivavoce.wav import AudioFileError, read_wav

        try:
            audio = read_wav(input)
        except AudioFileError as e:
            print_error(str(e))
            raise typer.Exit(EXIT_USER_ERROR) from None
        _load_models(bot)
        console.print(
            f"[dim]cold start {time.perf_counter() - process_started:.1f}s; "
            f"playing {escape(str(input))} ({audio.duration_secs:.1f}s)"
        )
        try:
            result = asyncio.run(run_on_recording(bot, audio))
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(130) from None
        result.write(output, report)
        print_turns(result.turns)
        for path in (output, report):
            if path:
                console.print(f"wrote {escape(str(path))}")
    except (ModelNotFoundError, MissingDependencyError) as e:
        print_error(str(e))
        raise typer.Exit(EXIT_MISSING) from None


@app.command()
def serve(
    bot_file: Annotated[Path, typer.Argument(help="The bot file (YAML) to serve.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    public_url: Annotated[
        str | None,
        typer.Option(help="Public base URL Twilio reaches (tunnel/load balancer); or VIVAVOCE_PUBLIC_URL."),
    ] = None,
    insecure_skip_signature: Annotated[
        bool, typer.Option("--insecure-skip-signature", help="Accept unsigned webhooks. Local development only.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Processes serving sessions behind the one port (about one per core: each pipeline "
            "process is bound to one core by Python). Each loads the bot's models.",
        ),
    ] = 1,
    registry: Annotated[
        str | None,
        typer.Option(
            envvar=REGISTRY_ENV,
            help="redis://HOST:6379/0: agent hosts behind one load balancer share live calls, their "
            "conversations and the stream-token secret there; a call whose host dies goes on on another.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show pipecat's debug log.")] = False,
) -> None:
    """Serve a bot over its transport (twilio: webhook + Media Streams; webrtc: signalling + playground at /)."""
    import uvicorn

    from vivavoce.server import create_app

    _configure_logging(verbose, default="INFO")
    bot = _load(bot_file)
    try:
        # Built here even for --workers N (each process builds its own): what is misconfigured, or a registry
        # that does not answer, is said once, before any process starts.
        app = create_app(bot, public_url=public_url, skip_signature=insecure_skip_signature, registry=registry)
        if workers == 1:
            _load_models(bot, done=f"is listening on http://{host}:{port}")
    except (ValueError, RegistryUnavailableError) as e:
        print_error(str(e))
        raise typer.Exit(EXIT_USER_ERROR) from None
    except (ModelNotFoundError, MissingDependencyError) as e:
        print_error(str(e))
        raise typer.Exit(EXIT_MISSING) from None
    # Twilio's media is base64 audio: compressing it costs a quarter of a call's CPU and saves nothing.
    options = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "ws_max_size": 256 * 1024,
        "ws_per_message_deflate": False,
    }
    if workers == 1:
        from vivavoce.gc_tuning import settle_after_startup

        settle_after_startup()
        uvicorn.run(app, **options)
        return
    _serve_processes(bot_file, workers, public_url, insecure_skip_signature, registry, verbose, options)


def _serve_processes(
    bot_file: Path,
    workers: int,
    public_url: str | None,
    skip_signature: bool,
    registry: str | None,
    verbose: bool,
    options: dict,
) -> None:
    """``workers`` processes on the port (SO_REUSEPORT); each builds the app itself."""
    import secrets
    import shutil
    import tempfile

    from vivavoce.serve_processes import serve_processes
    from vivavoce.server import LIVE_SESSIONS_ENV, PUBLIC_URL_ENV, SERVE_BOT_ENV, SKIP_SIGNATURE_ENV
    from vivavoce.transports.call_tokens import SHARED_SECRET_ENV

    state = Path(tempfile.mkdtemp(prefix="vivavoce-serve-"))
    (state / "metrics").mkdir()
    os.environ.update(
        {
            SERVE_BOT_ENV: str(bot_file.resolve()),
            LIVE_SESSIONS_ENV: str(state / "sessions"),
            # Read by prometheus_client when each process imports it: all processes' samples, one scrape.
            "PROMETHEUS_MULTIPROC_DIR": str(state / "metrics"),
            "VIVAVOCE_LOG_LEVEL": "DEBUG" if verbose else os.environ.get("VIVAVOCE_LOG_LEVEL", "INFO"),
        }
    )
    if registry:
        os.environ[REGISTRY_ENV] = registry  # the processes share the secret with the other hosts, through it
    else:
        os.environ.setdefault(SHARED_SECRET_ENV, secrets.token_hex(32))
    if public_url:
        os.environ[PUBLIC_URL_ENV] = public_url
    if skip_signature:
        os.environ[SKIP_SIGNATURE_ENV] = "1"
    console.print(
        f"{workers} processes serve {escape(str(bot_file))} on http://{options['host']}:{options['port']} "
        "(each loads the models, then takes sessions)"
    )
    try:
        status = serve_processes(workers, options.pop("host"), options.pop("port"), options)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    if status:
        raise typer.Exit(status)


@app.command()
def call(
    bot_file: Annotated[Path, typer.Argument(help="The bot file (transport: twilio) whose server takes the call.")],
    to: Annotated[str, typer.Option("--to", help="Number to call, E.164 (+15551234567).")],
    from_number: Annotated[
        str | None, typer.Option("--from", help="Caller ID (default: transport.from_number).")
    ] = None,
    public_url: Annotated[str | None, typer.Option(help="Public base URL of the running `vivavoce serve`.")] = None,
) -> None:
    """Place an outbound call: Twilio dials --to and fetches TwiML from the server's /twilio/voice."""
    from vivavoce.server import PUBLIC_URL_ENV
    from vivavoce.transports.catalog import TwilioTransportConfig

    bot = _load(bot_file)
    transport = bot.spec.transport
    if not isinstance(transport, TwilioTransportConfig):
        print_error(f"{bot_file}: transport is '{transport.kind}', not twilio")
        raise typer.Exit(EXIT_USER_ERROR)
    url = public_url or os.environ.get(PUBLIC_URL_ENV) or transport.public_url
    caller = from_number or transport.from_number
    missing = [
        name
        for name, value in (
            ("--public-url", url),
            ("--from", caller),
            ("transport.account_sid", transport.account_sid),
            ("transport.auth_token", transport.auth_token),
        )
        if not value
    ]
    if missing:
        print_error(f"cannot place the call: missing {', '.join(missing)}")
        raise typer.Exit(EXIT_USER_ERROR)
    from twilio.rest import Client

    client = Client(transport.account_sid, transport.auth_token.get_secret_value())
    if transport.api_base_url:
        client.api.base_url = transport.api_base_url.rstrip("/")
    placed = client.calls.create(to=to, from_=caller, url=f"{url.rstrip('/')}/twilio/voice", method="POST")
    console.print(f"calling {escape(to)}: {placed.sid}")


@app.command()
def prepare(bot_files: Annotated[list[Path], typer.Argument(help="Bot files whose models to prepare.")]) -> None:
    """Load (and cache) every model the bots need, then exit: later starts take seconds."""
    for path in bot_files:
        bot = _load(path)
        try:
            _load_models(bot, done="has its models loaded and cached")
        except (ModelNotFoundError, MissingDependencyError) as e:
            print_error(str(e))
            raise typer.Exit(EXIT_MISSING) from None


@app.command()
def check(bot_files: Annotated[list[Path], typer.Argument(help="Bot files to validate.")]) -> None:
    """Validate bot files: every problem with its file, line, key and the allowed values."""
    failed = 0
    for path in bot_files:
        try:
            bot = load_bot(path)
        except BotFileError as e:
            failed += 1
            print_problems(f"✗ {path}", e.problems)
            continue
        kinds = " → ".join(s.config.kind for s in bot.stages)
        console.print(f"[green]✓[/] {escape(f'{path}: {bot.name} ({bot.spec.transport.kind}: {kinds})')}")
    if failed:
        raise typer.Exit(1)


@app.command()
def sample(
    output: Annotated[Path, typer.Argument(help="Where to write the WAV.")],
    gap: Annotated[float, typer.Option(help="Seconds of silence after each turn (time for the bot to answer).")] = 6.0,
    phrases_per_turn: Annotated[int, typer.Option(min=1, help="Phrases the speaker says per turn.")] = 1,
) -> None:
    """Write a conversation of real human speech (the bundled beckett.wav, re-spaced) to play to a bot."""
    from vivavoce.samples import conversation
    from vivavoce.wav import write_wav

    try:
        audio = conversation(gap, phrases_per_turn=phrases_per_turn)
    except ModelNotFoundError as e:
        print_error(str(e))
        raise typer.Exit(EXIT_MISSING) from None
    write_wav(output, audio.pcm, audio.sample_rate)
    console.print(f"wrote {escape(str(output))} ({audio.duration_secs:.1f}s of {audio.sample_rate} Hz speech)")


@app.command("list")
def list_kinds() -> None:
    """List processor kinds, then transport kinds, one line each: name, role, summary."""
    for kind in [*kinds.processors.kinds(), *kinds.transports.kinds()]:
        typer.echo(f"{kind.name:<12} {kind.role:<9} {kind.summary}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of bot files (point your editor's YAML support at it)."""
    model = bot_file_model(kinds.processors, kinds.transports)
    document = model.model_json_schema()
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "vivavoce bot file"
    typer.echo(json.dumps(document, indent=2))


if __name__ == "__main__":
    app()
