"""End to end: bots/local.yaml on real human speech, with the real embedded models (no fakes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vivavoce.botfile import load_bot
from vivavoce.file_session import run_on_recording
from vivavoce.samples import conversation
from vivavoce.wav import InputAudio, read_wav, write_wav

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


async def test_two_turns_of_real_speech_get_spoken_answers(local_bot):
    # "Ever tried." and "Ever failed." (beckett.wav), each followed by time for the bot to answer.
    full = conversation(gap_secs=6.0)
    rate = full.sample_rate
    audio = InputAudio(full.path, full.pcm[: int(14.0 * rate)], rate, 1)

    result = await run_on_recording(local_bot, audio)
    report = result.report()

    turns = report["turns"]
    assert len(turns) == 2, turns
    heard = " ".join(t["user_text"].lower() for t in turns)
    assert "tried" in heard and "failed" in heard
    for turn in turns:
        assert turn["bot_text"], turn
        assert not turn["interrupted"]
        assert turn["voice_to_voice_ms"] > 0
        assert turn["bot_started_s"] > turn["user_stopped_s"]
        stages = turn["stages_ms"]
        assert sum(stages.values()) == pytest.approx(turn["voice_to_voice_ms"], abs=1.0)

    # The bot's voice is in the output track where the report says it is: audible while it speaks,
    # silent while the user speaks (the output track is aligned with the input).
    out = result.output_pcm
    assert len(out) >= len(audio.pcm)
    for turn in turns:
        start = int(turn["bot_started_s"] * rate)
        assert _rms(out[start : start + rate // 2]) > 300
        user = out[int(turn["user_started_s"] * rate) : int(turn["user_stopped_s"] * rate)]
        assert _rms(user) < 50


async def test_a_recording_without_speech_gives_zero_turns(local_bot):
    rate = 16000
    noise = (np.random.default_rng(0).normal(0, 30, 4 * rate)).astype(np.int16)  # quiet room noise
    result = await run_on_recording(local_bot, InputAudio(Path("room.wav"), noise, rate, 1))
    assert result.report()["turns"] == []
    assert _rms(result.output_pcm) == 0.0


def test_cli_run_writes_an_aligned_wav_and_the_report(tmp_path):
    """`vivavoce run` as a user runs it: 8 kHz stereo input, output at the input's rate and length."""
    source = read_wav(conversation(gap_secs=5.0).path)
    phrase = source.pcm[int(0.2 * 16000) : int(1.4 * 16000)]
    pcm = np.concatenate([np.zeros(8000, np.int16), phrase, np.zeros(5 * 16000, np.int16)])
    stereo = np.stack([pcm, pcm], axis=1)[::2]  # 8 kHz (decimated), two channels
    wav = tmp_path / "phone.wav"
    import soundfile

    soundfile.write(wav, stereo, 8000, subtype="PCM_16")
    out, report = tmp_path / "out.wav", tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "vivavoce.cli", "run", str(REPO / "bots" / "local.yaml"),
         "--input", str(wav), "--output", str(out), "--report", str(report)],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    data = json.loads(report.read_text())
    assert set(data) >= {"bot", "input", "turns"}
    assert data["turns"] and "tried" in data["turns"][0]["user_text"].lower()
    assert {"user_text", "bot_text", "user_started_s", "user_stopped_s", "bot_started_s",
            "voice_to_voice_ms", "interrupted", "ttfb_ms"} <= set(data["turns"][0])
    assert set(data["turns"][0]["ttfb_ms"]) == {"stt", "llm", "tts"}
    written = read_wav(out)
    assert written.sample_rate == 8000 and written.channels == 1
    assert len(written.pcm) >= len(pcm) // 2
    assert "Latency per turn" in done.stderr and "Transcript" in done.stderr


def test_cli_run_on_silence_exits_zero_with_zero_turns(tmp_path):
    wav = tmp_path / "silence.wav"
    write_wav(wav, np.zeros(2 * 16000, np.int16), 16000)
    report = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "vivavoce.cli", "run", str(REPO / "bots" / "local.yaml"),
         "--input", str(wav), "--report", str(report)],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["turns"] == []
    assert "0 turns" in done.stderr


@pytest.mark.parametrize("name", ["local_openai.yaml", "local_deepgram.yaml"])
def test_real_world_variants_build_their_pipelines(name, local_bot):
    """The hosted-service variants compile to pipecat pipelines (no network is touched until they run)."""
    from pipecat.services.deepgram.stt import DeepgramSTTService
    from pipecat.services.openai.llm import OpenAILLMService

    from vivavoce.builder import build_conversation
    from vivavoce.transports.file import FileTransport

    bot = load_bot(REPO / "bots" / name, environ={"DEEPGRAM_API_KEY": "dg-test-key"})
    transport = FileTransport(InputAudio(Path("x.wav"), np.zeros(1600, np.int16), 16000, 1))
    conversation = build_conversation(bot, transport, audio_out_sample_rate=16000)
    services = list(conversation.processors.values())
    expected = OpenAILLMService if name == "local_openai.yaml" else DeepgramSTTService
    assert any(isinstance(s, expected) for s in services)
    assert "dg-test-key" not in repr(bot.spec)
