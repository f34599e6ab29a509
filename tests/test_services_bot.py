"""End to end: bots/services.yaml, the agent with its speech on the speech services (a real ASR service and a
real Piper worker, each a process of its own), on real human speech."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vivavoce.botfile import load_bot
from vivavoce.file_session import run_on_recording
from vivavoce.samples import conversation
from vivavoce.wav import InputAudio
from worker_support import start_asr, start_piper

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


async def test_the_services_bot_hears_and_answers_real_speech_through_both_services(tmp_path):
    # As `make services` runs them: no API keys, local use.
    asr_http, asr = start_asr(tmp_path / "asr.log", auth=False)
    piper_http, piper = start_piper(tmp_path / "piper.log", auth=False)
    with asr, piper:
        environ = {
            **os.environ,
            "VIVAVOCE_ASR_URL": asr_http.replace("http://", "ws://") + "/v1/asr",
            "VIVAVOCE_TTS_URL": piper_http.replace("http://", "ws://") + "/v1/stream",
        }
        bot = load_bot(REPO / "bots" / "services.yaml", environ=environ)
        full = conversation(gap_secs=6.0)  # "Ever tried." and "Ever failed." (beckett.wav)
        rate = full.sample_rate
        result = await run_on_recording(bot, InputAudio(full.path, full.pcm[: int(14.0 * rate)], rate, 1))

    turns = [t.to_dict() for t in result.turns]
    assert len(turns) == 2, turns
    heard = " ".join(t["user_text"].lower() for t in turns)
    assert "tried" in heard and "failed" in heard, turns
    out = result.output_pcm
    for turn in turns:
        assert turn["bot_text"] and turn["bot_started_s"] > turn["user_stopped_s"], turn
        assert not turn["interrupted"], turn
        start = int(turn["bot_started_s"] * rate)
        assert rms(out[start : start + rate // 2]) > 300  # the Piper worker's voice is in the output track
        assert rms(out[int(turn["user_started_s"] * rate) : int(turn["user_stopped_s"] * rate)]) < 50
