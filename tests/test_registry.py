"""The processor registry, the JSON Schema built from it, and the `vivavoce` commands."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import soundfile
from loguru import logger
from pydantic import Field
from typer.testing import CliRunner

from vivavoce.botfile import BotFileError, bot_file_model, load_bot
from vivavoce.cli import app
from vivavoce.kinds import processors as registry, transports
from vivavoce.processors.catalog import BUILTIN_KINDS
from vivavoce.registry import (
    MissingDependencyError,
    ProcessorConfig,
    ProcessorKind,
    ProcessorRegistry,
    TransportConfig,
    TransportKind,
    TransportRegistry,
    UnknownKindError,
)
from vivavoce.transports.catalog import BUILTIN_TRANSPORTS

REPO = Path(__file__).resolve().parents[1]
BUILTINS = ["deepgram", "openai", "piper", "smollm", "whisper"]


class EchoConfig(ProcessorConfig):
    """Settings of a test-only kind."""

    kind: Literal["echo"]
    gain: float = Field(1.0, ge=0, le=4)


def _echo_factory(config, context):
    return ("built", config, context)


def echo_kind(**changes) -> ProcessorKind:
    fields = dict(
        name="echo",
        role="processor",
        config=EchoConfig,
        factory=f"{__name__}:_echo_factory",
        summary="repeats what it hears",
        install="vivavoce[echo]",
    )
    fields.update(changes)
    return ProcessorKind(**fields)


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI re-points loguru at the (captured, then closed) stderr of each invocation."""
    yield
    logger.remove()
    logger.add(lambda message: sys.stderr.write(message), level="WARNING")


# --- the registry -----------------------------------------------------------------------------


def test_default_registry_names():
    names = registry.names()
    assert names == sorted(names)
    assert set(BUILTINS) <= set(names)
    assert [k.name for k in registry.kinds()] == names


def test_builtin_roles():
    roles = {name: registry.get(name).role for name in BUILTINS}
    assert roles == {"deepgram": "stt", "whisper": "stt", "smollm": "llm", "openai": "llm", "piper": "tts"}
    for kind in BUILTIN_KINDS:
        assert kind.summary
        assert kind.install
        assert ":" in kind.factory


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(UnknownKindError) as info:
        registry.get("gpt5")
    message = str(info.value)
    assert "gpt5" in message
    for name in BUILTINS:
        assert name in message
    assert isinstance(info.value, LookupError)


def test_fresh_registry_without_plugins_is_empty():
    fresh = ProcessorRegistry(load_plugins=False)
    assert fresh.names() == []
    with pytest.raises(UnknownKindError):
        fresh.get("whisper")


def test_register_a_new_kind():
    fresh = ProcessorRegistry(load_plugins=False)
    kind = echo_kind()
    assert fresh.register(kind) is kind
    assert fresh.names() == ["echo"]
    assert fresh.get("echo") is kind
    # Registering the very same kind again is harmless.
    fresh.register(echo_kind())
    assert fresh.names() == ["echo"]


def test_conflicting_duplicate_raises():
    fresh = ProcessorRegistry([echo_kind()], load_plugins=False)
    with pytest.raises(ValueError, match="echo"):
        fresh.register(echo_kind(factory="other.module:create"))
    assert fresh.get("echo").factory == f"{__name__}:_echo_factory"


def test_new_kind_does_not_leak_into_the_default_registry():
    ProcessorRegistry([echo_kind()], load_plugins=False)
    assert "echo" not in registry.names()


def test_factory_is_imported_lazily():
    kind = echo_kind()
    config = EchoConfig(kind="echo", gain=2)
    assert kind.create(config, "ctx") == ("built", config, "ctx")


def test_missing_factory_module_says_what_to_install():
    kind = echo_kind(factory="vv_definitely_not_installed_xyz.services:create")
    with pytest.raises(MissingDependencyError) as info:
        kind.load_factory()
    message = str(info.value)
    assert "echo" in message
    assert "vivavoce[echo]" in message
    assert isinstance(info.value, ImportError)
    with pytest.raises(MissingDependencyError, match=r"vivavoce\[echo\]"):
        kind.create(EchoConfig(kind="echo"), None)


def test_missing_preload_module_says_what_to_install():
    kind = echo_kind(preload="vv_definitely_not_installed_xyz.models:preload")
    with pytest.raises(MissingDependencyError, match=r"vivavoce\[echo\]"):
        kind.load_models(EchoConfig(kind="echo"))


def test_missing_module_without_install_hint():
    kind = echo_kind(factory="vv_definitely_not_installed_xyz:create", install=None)
    with pytest.raises(MissingDependencyError, match="echo"):
        kind.load_factory()


def test_load_models_without_preload_is_a_no_op():
    echo_kind().load_models(EchoConfig(kind="echo"))


def test_custom_registry_drives_validation(tmp_path):
    custom = ProcessorRegistry([*BUILTIN_KINDS, echo_kind()], load_plugins=False)
    path = tmp_path / "bot.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: test
            transport:
              kind: file
            pipeline:
              - kind: whisper
              - kind: echo
                gain: 2
              - kind: smollm
              - kind: piper
            """
        )
    )
    bot = load_bot(path, environ={}, registry=custom)
    assert bot.stages[1].kind is custom.get("echo")
    assert bot.stages[1].config.gain == 2

    # The default registry does not know 'echo'.
    with pytest.raises(BotFileError) as info:
        load_bot(path, environ={})
    assert f"{path}:6:" in str(info.value)

    path.write_text(path.read_text().replace("gain: 2", "gian: 2"))
    with pytest.raises(BotFileError) as info:
        load_bot(path, environ={}, registry=custom)
    message = str(info.value)
    assert f"{path}:7:" in message
    assert "gain" in message.split("allowed keys:", 1)[1]

    path.write_text(path.read_text().replace("kind: echo", "kind: ekho"))
    with pytest.raises(BotFileError) as info:
        load_bot(path, environ={}, registry=custom)
    assert "echo" in str(info.value).split("known kinds:", 1)[1]


# --- transport kinds --------------------------------------------------------------------------


class LineConfig(TransportConfig):
    """Settings of a test-only transport."""

    kind: Literal["line"]
    port: int = Field(9000, ge=1, le=65535)


def _line_routes(app, context):
    @app.get("/line")
    async def line() -> dict:
        return {"bot": context.bot.name, "port": context.bot.spec.transport.port}


LINE = TransportKind(name="line", config=LineConfig, summary="a test line", serve=f"{__name__}:_line_routes")

LINE_BOT = """\
name: test
transport:
  kind: line
  port: 9100
pipeline:
  - kind: whisper
  - kind: smollm
  - kind: piper
"""


def test_a_new_transport_kind_is_validated_and_served_through_the_registry(tmp_path):
    from fastapi.testclient import TestClient

    from vivavoce.server import create_app

    custom = TransportRegistry([*BUILTIN_TRANSPORTS, LINE], load_plugins=False)
    path = tmp_path / "bot.yaml"
    path.write_text(LINE_BOT)
    bot = load_bot(path, environ={}, transports=custom)
    assert bot.transport is LINE and bot.spec.transport.port == 9100

    with TestClient(create_app(bot)) as client:
        assert client.get("/line").json() == {"bot": "test", "port": 9100}
        assert client.get("/health").json()["transport"] == "line"

    path.write_text(LINE_BOT.replace("port: 9100", "prot: 9100"))
    with pytest.raises(BotFileError) as info:
        load_bot(path, environ={}, transports=custom)
    assert f"{path}:4:" in str(info.value) and "port" in str(info.value).split("allowed keys:", 1)[1]

    path.write_text(LINE_BOT)  # the default registry does not know it: the known kinds are listed
    with pytest.raises(BotFileError, match=r"unknown transport kind 'line'; known kinds: daily, file, local"):
        load_bot(path, environ={})


def test_a_transport_without_routes_is_not_served(tmp_path):
    from vivavoce.server import create_app

    quiet = TransportKind(name="line", config=LineConfig, summary="no routes")
    path = tmp_path / "bot.yaml"
    path.write_text(LINE_BOT)
    bot = load_bot(path, environ={}, transports=TransportRegistry([quiet], load_plugins=False))
    with pytest.raises(ValueError, match="'line' is not served over HTTP"):
        create_app(bot)


def test_a_transport_whose_module_is_missing_says_what_to_install():
    broken = TransportKind(
        name="line", config=LineConfig, summary="", run="vv_not_installed_xyz:run", install="vivavoce[line]"
    )
    with pytest.raises(MissingDependencyError, match=r"transport kind 'line'.*vivavoce\[line\]"):
        broken.load("run")


# --- the JSON Schema --------------------------------------------------------------------------


def _schema_kinds(schema: dict) -> set[str]:
    kinds = set()
    for definition in schema.get("$defs", {}).values():
        kind = definition.get("properties", {}).get("kind", {})
        if "const" in kind:
            kinds.add(kind["const"])
        kinds.update(kind.get("enum", []))
    return kinds


def test_schema_contains_every_kind():
    schema = bot_file_model(registry, transports).model_json_schema()
    assert set(registry.names()) <= _schema_kinds(schema)
    assert {"file", "local"} <= _schema_kinds(schema)
    assert "CustomProcessorConfig" in schema["$defs"]
    for key in ("name", "transport", "pipeline", "turn_taking"):
        assert key in schema["properties"]


def test_schema_of_a_custom_registry():
    custom = ProcessorRegistry([*BUILTIN_KINDS, echo_kind()], load_plugins=False)
    schema = bot_file_model(custom, transports).model_json_schema()
    assert set(BUILTINS) | {"echo"} <= _schema_kinds(schema)
    assert "echo" not in _schema_kinds(bot_file_model(registry, transports).model_json_schema())


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli():
    return CliRunner()


def test_cli_schema_prints_json(cli):
    result = cli.invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["title"] == "vivavoce bot file"
    assert document["$schema"].startswith("https://json-schema.org/")
    assert set(BUILTINS) <= _schema_kinds(document)


def test_cli_list_prints_one_line_per_kind_processors_then_transports(cli):
    result = cli.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    every = [*registry.kinds(), *transports.kinds()]
    assert [line.split()[0] for line in lines] == [kind.name for kind in every]
    for line, kind in zip(lines, every, strict=True):
        assert line.split()[1] == kind.role
        assert kind.summary in line
    assert {"local", "file", "twilio", "webrtc", "daily"} <= {k.name for k in transports.kinds()}
    assert all(line.split()[1] == "transport" for line in lines[len(registry.names()) :])


def test_cli_check_accepts_the_shipped_bot(cli):
    result = cli.invoke(app, ["check", str(REPO / "bots" / "local.yaml")])
    assert result.exit_code == 0, result.output
    assert "local" in result.output
    assert "whisper" in result.output and "smollm" in result.output and "piper" in result.output


def test_cli_check_rejects_a_bad_file(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: test\ntransport:\n  kind: file\n"
        "pipeline:\n  - kind: whisper\n  - kind: smollm\n    max_tokns: 3\n  - kind: piper\n"
    )
    result = cli.invoke(app, ["check", str(REPO / "bots" / "local.yaml"), str(bad)])
    assert result.exit_code != 0
    assert f"{bad}:7:" in result.output
    assert "max_tokns" in result.output
    assert "max_tokens" in result.output
    assert "Traceback" not in result.output


def test_cli_check_missing_file(cli, tmp_path):
    result = cli.invoke(app, ["check", str(tmp_path / "nope.yaml")])
    assert result.exit_code != 0
    assert "no such bot file" in result.output


def test_cli_run_rejects_a_bad_bot_file(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: test\ntransport:\n  kind: pigeon\n")
    result = cli.invoke(app, ["run", str(bad), "--input", str(tmp_path / "in.wav")])
    assert result.exit_code == 2
    assert f"{bad}:" in result.output
    assert "Traceback" not in result.output


def test_cli_run_with_a_non_audio_input(cli, tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is not a recording\n")
    result = cli.invoke(app, ["run", str(REPO / "bots" / "local.yaml"), "--input", str(text)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert str(text) in result.output
    assert "not a readable audio file" in result.output


def test_cli_run_with_an_empty_wav(cli, tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    assert empty.stat().st_size > 0  # a valid header, no frames
    result = cli.invoke(app, ["run", str(REPO / "bots" / "local.yaml"), "--input", str(empty)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "empty" in result.output


def test_cli_run_with_a_missing_input(cli, tmp_path):
    missing = tmp_path / "missing.wav"
    result = cli.invoke(app, ["run", str(REPO / "bots" / "local.yaml"), "--input", str(missing)])
    assert result.exit_code == 2, result.output
    assert "no such file" in result.output
    assert "Traceback" not in result.output


def test_cli_run_output_needs_input(cli, tmp_path):
    result = cli.invoke(app, ["run", str(REPO / "bots" / "local.yaml"), "--output", str(tmp_path / "o.wav")])
    assert result.exit_code == 2, result.output
    assert "--input" in result.output


@pytest.mark.parametrize("where", ["path", "name"])
def test_cli_check_prints_brackets_literally(cli, tmp_path, where):
    """Paths and names are printed as text, never read as rich markup."""
    folder = tmp_path / ("odd[bold]" if where == "path" else "plain")
    folder.mkdir()
    bot = folder / "bot.yaml"
    name = "a[/]b" if where == "name" else "plain"
    bot.write_text(
        f'name: "{name}"\ntransport:\n  kind: file\npipeline:\n  - kind: whisper\n  - kind: smollm\n  - kind: piper\n'
    )
    result = cli.invoke(app, ["check", str(bot)])
    assert result.exit_code == 0, result.output
    assert name in result.output
    assert folder.name in result.output.replace("\n", "")
