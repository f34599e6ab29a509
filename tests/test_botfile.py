"""Bot-file validation: every error names the file, the line, the key and what is allowed."""

from __future__ import annotations

import re
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from vivavoce.botfile import Bot, BotFileError, load_bot
from vivavoce.kinds import processors as registry

REPO = Path(__file__).resolve().parents[1]
BUILTIN_KINDS = ("deepgram", "openai", "piper", "smollm", "whisper")
SECRET = "sekrit-VALUE-9f31"

HEADER = """\
version: 1
name: test
transport:
  kind: file
"""

GOOD_PIPELINE = """\
pipeline:
  - kind: whisper
  - kind: smollm
  - kind: piper
"""


def write(tmp_path: Path, text: str, name: str = "bot.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line containing ``needle``."""
    seen = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in {path}")


def load_error(path: Path, environ: dict[str, str] | None = None) -> BotFileError:
    with pytest.raises(BotFileError) as info:
        load_bot(path, environ={} if environ is None else environ)
    return info.value


def problem_at(error: BotFileError, path: Path, line: int) -> str:
    """The one problem line reported at ``path:line:``; fails listing all problems otherwise."""
    prefix = f"{path}:{line}:"
    matches = [str(p) for p in error.problems if str(p).startswith(prefix)]
    assert matches, f"no problem at {prefix}; got:\n{error}"
    assert prefix in str(error)
    return matches[0]


# --- valid files ------------------------------------------------------------------------------


def test_minimal_file_loads(tmp_path):
    path = write(tmp_path, HEADER + GOOD_PIPELINE)
    bot = load_bot(path, environ={})
    assert isinstance(bot, Bot)
    assert bot.name == "test"
    assert bot.path == path
    assert [s.config.kind for s in bot.stages] == ["whisper", "smollm", "piper"]
    assert [s.role for s in bot.stages] == ["stt", "llm", "tts"]
    assert [s.index for s in bot.stages] == [0, 1, 2]
    assert bot.stage("llm").kind is registry.get("smollm")
    assert bot.stage("s2s") is None
    # Defaults filled in.
    assert bot.spec.turn_taking.vad.confidence == 0.7
    assert bot.spec.turn_taking.end_of_turn.model == "adaptive"


def _dummy_environ(text: str) -> dict[str, str]:
    """Values for the variables a file requires (those without a ${NAME:-default})."""
    names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)
    wellformed = {"ACCOUNT_SID": "AC" + "0" * 32, "ROOM_URL": "https://example.daily.co/room"}
    return {name: next((v for k, v in wellformed.items() if name.endswith(k)), "dummy") for name in names}


@pytest.mark.parametrize("path", sorted((REPO / "bots").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_bot_files_load(path):
    bot = load_bot(path, environ=_dummy_environ(path.read_text()))
    assert bot.stages
    assert bot.stage("llm") is not None or bot.stage("s2s") is not None


def test_local_bot_file_is_shipped():
    bot = load_bot(REPO / "bots" / "local.yaml", environ={})
    assert bot.name == "local"
    assert bot.spec.transport.kind == "local"
    assert [s.config.kind for s in bot.stages] == ["whisper", "smollm", "piper"]


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, HEADER + "promt: hello\n" + GOOD_PIPELINE)
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "promt"))
    assert "promt" in message
    assert "unknown key" in message
    for allowed in ("name", "transport", "pipeline", "system_prompt", "turn_taking", "greeting"):
        assert allowed in message


def test_unknown_key_in_turn_taking_vad(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
turn_taking:
  vad:
    confidence: 0.5
    stop_sec: 0.3
"""
        + GOOD_PIPELINE,
    )
    error = load_error(path)
    assert len(error.problems) == 1
    message = problem_at(error, path, line_of(path, "stop_sec:"))
    assert "turn_taking.vad.stop_sec" in message
    for allowed in ("confidence", "start_secs", "stop_secs", "min_volume"):
        assert allowed in message


def test_unknown_key_in_pipeline_entry(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: smollm
    max_tokns: 40
  - kind: piper
""",
    )
    error = load_error(path)
    assert len(error.problems) == 1
    message = problem_at(error, path, line_of(path, "max_tokns"))
    assert "pipeline[1].max_tokns" in message
    assert "unknown key 'max_tokns'" in message
    allowed = message.split("allowed keys:", 1)[1]
    for key in ("max_tokens", "max_sentences", "temperature"):
        assert key in allowed


def test_unknown_key_in_transport(tmp_path):
    path = write(
        tmp_path,
        """\
name: test
transport:
  kind: local
  device: 1
"""
        + GOOD_PIPELINE,
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "device: 1"))
    assert "transport.device" in message
    assert "input_device" in message and "output_device" in message


def test_unknown_key_in_custom_entry_lists_custom_keys(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + GOOD_PIPELINE
        + """\
  - kind: "os.path:join"
    setings: {}
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "setings"))
    assert "pipeline[3].setings" in message
    for key in ("kind", "role", "settings"):
        assert key in message.split("allowed keys:", 1)[1]


# --- unknown kinds ----------------------------------------------------------------------------


def test_unknown_processor_kind(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: gpt5
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "gpt5"))
    assert "pipeline[1]" in message
    assert "gpt5" in message
    known = message.split("known kinds:", 1)[1]
    for kind in BUILTIN_KINDS:
        assert kind in known


def test_pipeline_entry_without_kind(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: smollm
  - voice: en_US-joe-medium
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "voice:"))
    assert "pipeline[2]" in message
    assert "kind" in message
    for kind in BUILTIN_KINDS:
        assert kind in message


def test_unknown_transport_kind(tmp_path):
    path = write(
        tmp_path,
        """\
name: test
transport:
  kind: pigeon
"""
        + GOOD_PIPELINE,
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "transport:"))
    assert "transport" in message
    assert "pigeon" in message
    known = message.split("known kinds:", 1)[1]
    assert "file" in known and "local" in known


def test_missing_transport(tmp_path):
    path = write(tmp_path, "name: test\n" + GOOD_PIPELINE)
    error = load_error(path)
    assert any(p.key == ("transport",) and "missing" in p.message for p in error.problems), str(error)


# --- wrong types and values -------------------------------------------------------------------


def test_wrong_type_for_piper_voice(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: smollm
  - kind: piper
    voice: 3
""",
    )
    error = load_error(path)
    assert len(error.problems) == 1
    message = problem_at(error, path, line_of(path, "voice: 3"))
    assert "pipeline[2].voice" in message
    assert "string" in message


def test_wrong_type_for_vad_confidence(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
turn_taking:
  vad:
    confidence: high
"""
        + GOOD_PIPELINE,
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "confidence: high"))
    assert "turn_taking.vad.confidence" in message
    assert "number" in message
    assert "'high'" in message


@pytest.mark.parametrize(
    ("snippet", "key", "bound"),
    [
        ("turn_taking:\n  vad:\n    confidence: 1.5\n", "turn_taking.vad.confidence", "less than or equal to 1"),
        (
            "turn_taking:\n  end_of_turn:\n    silence_secs: 0\n",
            "turn_taking.end_of_turn.silence_secs",
            "greater than 0",
        ),
        (
            "turn_taking:\n  vad:\n    model_sample_rate: 11025\n",
            "turn_taking.vad.model_sample_rate",
            "'auto', 8000 or 16000",
        ),
    ],
)
def test_out_of_range_turn_taking_value(tmp_path, snippet, key, bound):
    path = write(tmp_path, HEADER + snippet + GOOD_PIPELINE)
    error = load_error(path)
    assert len(error.problems) == 1
    message = problem_at(error, path, len(snippet.splitlines()) + len(HEADER.splitlines()))
    assert key in message
    assert bound in message


def test_phone_input_chunks_are_whole_twilio_frames(tmp_path):
    path = write(tmp_path, "version: 1\nname: test\ntransport:\n  kind: twilio\n  input_chunk_ms: 30\n" + GOOD_PIPELINE)
    message = problem_at(load_error(path), path, line_of(path, "input_chunk_ms"))
    assert "transport.input_chunk_ms" in message and "multiple of 20" in message


def test_out_of_range_processor_value(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: smollm
    max_tokens: 0
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "max_tokens: 0"))
    assert "pipeline[1].max_tokens" in message
    assert "greater than or equal to 1" in message


def test_bad_literal_lists_allowed_values(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
turn_taking:
  end_of_turn:
    model: foo
"""
        + GOOD_PIPELINE,
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "model: foo"))
    assert "turn_taking.end_of_turn.model" in message
    assert "smart_turn_v3" in message and "silence" in message
    assert "'foo'" in message


def test_missing_required_key_points_at_its_entry(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: openai
    model: llama
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "kind: openai"))
    assert "pipeline[1].base_url" in message
    assert "required" in message


def test_empty_pipeline(tmp_path):
    path = write(tmp_path, HEADER + "pipeline: []\n")
    error = load_error(path)
    problem_at(error, path, line_of(path, "pipeline"))
    assert error.problems[0].key == ("pipeline",)


# --- environment variables and secrets --------------------------------------------------------

DEEPGRAM_PIPELINE = """\
pipeline:
  - kind: deepgram
    api_key: ${DEEPGRAM_API_KEY}
  - kind: smollm
  - kind: piper
"""


def test_missing_environment_variable(tmp_path):
    path = write(tmp_path, HEADER + DEEPGRAM_PIPELINE)
    error = load_error(path, environ={})
    assert len(error.problems) == 1
    message = problem_at(error, path, line_of(path, "api_key"))
    assert "DEEPGRAM_API_KEY" in message
    assert "pipeline[0].api_key" in message
    assert "not set" in message


def test_environment_variable_is_interpolated(tmp_path):
    path = write(tmp_path, HEADER + DEEPGRAM_PIPELINE)
    bot = load_bot(path, environ={"DEEPGRAM_API_KEY": SECRET})
    stt = bot.stage("stt")
    assert stt.config.kind == "deepgram"
    assert stt.config.api_key.get_secret_value() == SECRET
    assert SECRET not in repr(bot.spec)
    assert SECRET not in str(bot.spec)
    assert SECRET not in repr(bot.stages)
    assert SECRET not in repr(bot)


def test_secret_never_in_errors_about_other_keys(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: deepgram
    api_key: ${DEEPGRAM_API_KEY}
    model: 5
    colour: blue
  - kind: smollm
    max_tokens: 0
  - kind: piper
""",
    )
    error = load_error(path, environ={"DEEPGRAM_API_KEY": SECRET})
    assert len(error.problems) == 3
    assert SECRET not in str(error)
    assert SECRET not in repr(error)
    assert all(SECRET not in str(p) and SECRET not in repr(p) for p in error.problems)


def test_secret_of_wrong_type_is_not_echoed(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: deepgram
    api_key: 918273645
  - kind: smollm
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "api_key"))
    assert "pipeline[0].api_key" in message
    assert "918273645" not in str(error)


def test_secret_not_echoed_when_pipeline_is_a_mapping(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  kind: deepgram
  api_key: ${DEEPGRAM_API_KEY}
""",
    )
    error = load_error(path, environ={"DEEPGRAM_API_KEY": SECRET})
    problem_at(error, path, line_of(path, "pipeline"))
    assert SECRET not in str(error)


def test_inline_secret_is_an_error(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: deepgram
    api_key: sk-123
  - kind: smollm
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "api_key"))
    assert "pipeline[0].api_key" in message
    assert "${" in message
    assert "sk-123" not in str(error)
    assert "sk-123" not in repr(error)


def test_inline_secret_for_optional_secret_is_an_error(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: openai
    base_url: http://localhost:8000/v1
    model: llama
    api_key: sk-abc
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "api_key"))
    assert "${" in message
    assert "sk-abc" not in str(error)


def test_optional_secret_may_be_left_out(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: openai
    base_url: http://localhost:8000/v1
    model: llama
  - kind: piper
""",
    )
    bot = load_bot(path, environ={})
    assert bot.stage("llm").config.api_key is None


def test_default_interpolation(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
system_prompt: "Hello ${WHO:-world}, from ${PLACE:-nowhere}."
pipeline:
  - kind: deepgram
    api_key: ${DEEPGRAM_API_KEY:-fallback-key}
  - kind: smollm
  - kind: piper
    voice: ${VOICE:-en_US-joe-medium}
""",
    )
    bot = load_bot(path, environ={"PLACE": "Paris"})
    assert bot.spec.system_prompt == "Hello world, from Paris."
    assert bot.stage("stt").config.api_key.get_secret_value() == "fallback-key"
    assert bot.stage("tts").config.voice == "en_US-joe-medium"

    bot = load_bot(path, environ={"VOICE": "/voices/x.onnx", "DEEPGRAM_API_KEY": SECRET})
    assert bot.stage("tts").config.voice == "/voices/x.onnx"
    assert bot.stage("stt").config.api_key.get_secret_value() == SECRET


def test_interpolation_uses_os_environ_by_default(tmp_path, monkeypatch):
    path = write(tmp_path, HEADER + DEEPGRAM_PIPELINE)
    monkeypatch.setenv("DEEPGRAM_API_KEY", SECRET)
    bot = load_bot(path)
    assert bot.stage("stt").config.api_key.get_secret_value() == SECRET
    monkeypatch.delenv("DEEPGRAM_API_KEY")
    with pytest.raises(BotFileError, match="DEEPGRAM_API_KEY"):
        load_bot(path)


def test_every_missing_variable_is_reported(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
greeting: ${GREETING}
pipeline:
  - kind: deepgram
    api_key: ${DEEPGRAM_API_KEY}
  - kind: smollm
  - kind: piper
""",
    )
    error = load_error(path)
    assert "GREETING" in problem_at(error, path, line_of(path, "greeting"))
    assert "DEEPGRAM_API_KEY" in problem_at(error, path, line_of(path, "api_key"))


# --- YAML-level errors ------------------------------------------------------------------------


def test_invalid_yaml_reports_the_line(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
    model: tiny.en: extra
  - kind: smollm
  - kind: piper
""",
    )
    error = load_error(path)
    assert len(error.problems) == 1
    problem_at(error, path, line_of(path, "tiny.en: extra"))
    assert "invalid YAML" in str(error)


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, HEADER + "name: again\n" + GOOD_PIPELINE)
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "name:", occurrence=2))
    assert "duplicate key 'name'" in message


def test_duplicate_nested_key_is_an_error(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: smollm
    max_tokens: 10
    max_tokens: 20
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "max_tokens", occurrence=2))
    assert "duplicate" in message and "max_tokens" in message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- kind: whisper\n- kind: smollm\n", "just a string\n"])
def test_document_that_is_not_a_mapping(tmp_path, text):
    path = write(tmp_path, text)
    error = load_error(path)
    assert len(error.problems) == 1
    assert str(error).startswith(f"{path}:1:")
    assert "mapping" in str(error)


def test_nonexistent_file(tmp_path):
    path = tmp_path / "missing.yaml"
    error = load_error(path)
    assert str(path) in str(error)
    assert "no such bot file" in str(error)


def test_undecodable_file(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: \xff\xfe\x00bad\n")
    error = load_error(path)
    assert str(path) in str(error)


# --- pipeline order ---------------------------------------------------------------------------


def test_tts_before_llm(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: piper
  - kind: smollm
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "kind: piper"))
    assert "pipeline[1].kind" in message
    assert "after the llm" in message


def test_stt_after_llm(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: smollm
  - kind: whisper
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "kind: whisper"))
    assert "pipeline[1].kind" in message
    assert "before the llm" in message


def test_two_llms(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: smollm
  - kind: openai
    base_url: http://localhost:8000/v1
    model: llama
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "kind: openai"))
    assert "pipeline[2].kind" in message
    assert "one llm" in message


def test_two_tts(tmp_path):
    path = write(tmp_path, HEADER + GOOD_PIPELINE + "  - kind: piper\n")
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "kind: piper", occurrence=2))
    assert "pipeline[3].kind" in message
    assert "at most one tts" in message


def test_no_stt(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: smollm
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "pipeline:"))
    assert f"{path}:{line_of(path, 'pipeline:')}:1: pipeline: " in message
    assert "stt" in message
    assert [p.key for p in error.problems] == [("pipeline",)]


def test_no_tts(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: smollm
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "pipeline:"))
    assert "tts" in message


def test_no_llm(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + """\
pipeline:
  - kind: whisper
  - kind: piper
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "pipeline:"))
    assert "llm" in message


# --- several problems at once -----------------------------------------------------------------


def test_every_problem_is_reported(tmp_path):
    path = write(
        tmp_path,
        """\
version: 1
name: test
colour: blue
transport:
  kind: file
turn_taking:
  vad:
    confidence: high
  end_of_turn:
    model: foo
pipeline:
  - kind: whisper
  - kind: smollm
    max_tokns: 3
  - kind: piper
    voice: 3
  - kind: nope
""",
    )
    error = load_error(path)
    assert len(error.problems) >= 6
    for needle in ("colour", "confidence: high", "model: foo", "max_tokns", "voice: 3", "kind: nope"):
        problem_at(error, path, line_of(path, needle))
    # One problem per line of the message.
    assert len(str(error).splitlines()) == len(error.problems)
    lines = {p.position.line for p in error.problems}
    assert len(lines) == len(error.problems)


def test_problem_fields(tmp_path):
    path = write(tmp_path, HEADER + "promt: x\n" + GOOD_PIPELINE)
    (problem,) = load_error(path).problems
    assert problem.file == path
    assert problem.key == ("promt",)
    assert problem.position.line == 5
    assert problem.position.column == 1
    assert str(problem).startswith(f"{path}:5:1: promt: ")


def test_bot_problem_points_at_a_key(tmp_path):
    path = write(tmp_path, HEADER + GOOD_PIPELINE)
    bot = load_bot(path, environ={})
    error = bot.problem(("pipeline", 2, "voice"), "no such voice")
    # 'voice' is not written: it points at the closest written ancestor, the entry.
    assert str(error) == f"{path}:{line_of(path, 'kind: piper')}:5: pipeline[2].voice: no such voice"


# --- dotted-path processors -------------------------------------------------------------------

CUSTOM_MODULE = '''\
from pipecat.processors.frame_processor import FrameProcessor


class Shouter(FrameProcessor):
    def __init__(self, *, volume: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.volume = volume


class NotAProcessor:
    pass
'''


@pytest.fixture
def custom_module(tmp_path, monkeypatch):
    """A fresh importable module holding a FrameProcessor subclass; yields its name."""
    name = f"vv_custom_{uuid.uuid4().hex[:10]}"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / f"{name}.py").write_text(CUSTOM_MODULE)
    monkeypatch.syspath_prepend(str(modules))
    yield name
    sys.modules.pop(name, None)


def test_dotted_path_processor(tmp_path, custom_module):
    path = write(
        tmp_path,
        HEADER
        + f"""\
pipeline:
  - kind: whisper
  - kind: "{custom_module}:Shouter"
    settings:
      volume: 11
  - kind: smollm
  - kind: piper
""",
    )
    bot = load_bot(path, environ={})
    stage = bot.stages[1]
    assert stage.role == "processor"
    assert stage.kind is None
    assert stage.processor_class.__name__ == "Shouter"
    assert stage.processor_class.__module__ == custom_module
    assert stage.config.settings == {"volume": 11}
    assert [s.role for s in bot.stages] == ["stt", "processor", "llm", "tts"]


def test_dotted_path_processor_as_the_llm(tmp_path, custom_module):
    path = write(
        tmp_path,
        HEADER
        + f"""\
pipeline:
  - kind: whisper
  - kind: "{custom_module}:Shouter"
    role: llm
  - kind: piper
""",
    )
    bot = load_bot(path, environ={})
    llm = bot.stage("llm")
    assert llm.index == 1
    assert llm.processor_class.__name__ == "Shouter"
    assert llm.config.settings == {}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("vv_no_such_module_xyz.sub:Thing", "cannot import"),
        ("{module}:Missing", "no attribute"),
        ("{module}:NotAProcessor", "not a pipecat FrameProcessor"),
    ],
)
def test_dotted_path_that_does_not_resolve(tmp_path, custom_module, target, expected):
    target = target.format(module=custom_module)
    path = write(
        tmp_path,
        HEADER
        + f"""\
pipeline:
  - kind: whisper
  - kind: smollm
  - kind: piper
  - kind: "{target}"
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, target))
    assert "pipeline[3].kind" in message
    assert expected in message


def test_dotted_path_with_bad_role(tmp_path, custom_module):
    path = write(
        tmp_path,
        HEADER
        + GOOD_PIPELINE
        + f"""\
  - kind: "{custom_module}:Shouter"
    role: mixer
""",
    )
    error = load_error(path)
    message = problem_at(error, path, line_of(path, "role: mixer"))
    assert "pipeline[3].role" in message
    for role in ("stt", "llm", "tts", "s2s", "processor"):
        assert role in message


def test_unquoted_phone_numbers_are_read_as_numbers(tmp_path):
    """YAML reads +15550102030 as an integer; the bot file means the E.164 number."""
    path = tmp_path / "phone.yaml"
    path.write_text(
        "name: phone\ntransport:\n  kind: twilio\n  transfer_to: +15550102030\n  from_number: '+15557654321'\n"
        "pipeline:\n  - kind: whisper\n  - kind: smollm\n  - kind: piper\n"
    )
    bot = load_bot(path, environ={})
    assert bot.spec.transport.transfer_to == "+15550102030"
    assert bot.spec.transport.from_number == "+15557654321"


# --- fallback ---------------------------------------------------------------------------------

FLEET_TTS = """\
pipeline:
  - kind: whisper
  - kind: smollm
  - kind: piper
    registry: redis://127.0.0.1:6379/0
    fallback:
{fallback}
"""


def test_a_fallback_is_a_pipeline_entry_of_the_same_role(tmp_path):
    path = write(tmp_path, HEADER + FLEET_TTS.format(fallback="      kind: piper\n      first_phrase_words: 2"))
    bot = load_bot(path, environ={})
    tts = bot.stage("tts")
    assert tts.fallback is not None and tts.fallback.kind.name == "piper"
    assert tts.fallback.config.first_phrase_words == 2 and tts.fallback.config.registry is None


@pytest.mark.parametrize(
    "fallback, needle, expected",
    [
        ("      kind: pipr", "fallback:", "unknown processor kind 'pipr'; known kinds:"),
        ("      kind: piper\n      voise: x", "voise", "unknown key 'voise'; allowed keys: kind, voice"),
        ("      kind: whisper # here", "# here", "a fallback does the same job: a tts, not a stt"),
        (
            "      kind: piper\n      url: ws://h:8002/v1/stream\n      fallback: {kind: piper}",
            "fallback: {kind",
            "a fallback has no fallback of its own",
        ),
    ],
)
def test_a_bad_fallback_is_reported_at_its_line(tmp_path, fallback, needle, expected):
    path = write(tmp_path, HEADER + FLEET_TTS.format(fallback=fallback))
    error = load_error(path)
    message = problem_at(error, path, line_of(path, needle))
    assert "pipeline[2].fallback" in message and expected in message, message


def test_in_process_piper_has_no_fallback(tmp_path):
    path = write(
        tmp_path,
        HEADER + "pipeline:\n  - kind: whisper\n  - kind: smollm\n  - kind: piper\n    fallback: {kind: piper}\n",
    )
    error = load_error(path)
    assert "a fallback is for a worker" in str(error), error
