"""The last resort of a worker-backed kind: its ``fallback`` (pipecat's ServiceSwitcher) takes over when no
worker of the fleet answers. Real Redis with no Piper worker registered, the real local pipeline on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from vivavoce.botfile import load_bot
from vivavoce.file_session import run_on_recording
from vivavoce.samples import conversation
from vivavoce.testing.redis_server import RedisServer
from vivavoce.wav import InputAudio

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


async def test_with_no_worker_in_the_fleet_the_fallback_speaks_the_replies(tmp_path):
    spec = yaml.safe_load((REPO / "bots" / "local.yaml").read_text())
    spec["transport"] = {"kind": "file"}
    spec.pop("greeting", None)
    tts = next(entry for entry in spec["pipeline"] if entry["kind"] == "piper")
    with RedisServer().running() as redis:
        tts.update(registry=redis.url, fallback={"kind": "piper", "voice": tts.get("voice", "en_US-joe-medium")})
        path = tmp_path / "fallback.yaml"
        path.write_text(yaml.safe_dump(spec))
        bot = load_bot(path, environ={})
        assert bot.stage("tts").fallback is not None
        full = conversation(gap_secs=6.0)  # "Ever tried." and "Ever failed." (beckett.wav)
        rate = full.sample_rate
        result = await run_on_recording(bot, InputAudio(full.path, full.pcm[: int(14.0 * rate)], rate, 1))

    turns = [t.to_dict() for t in result.turns]
    assert len(turns) == 2, turns
    out = result.output_pcm.astype(np.float64)
    for turn in turns:
        # Answered aloud although no worker exists: the in-process fallback spoke.
        assert turn["bot_text"] and turn["bot_started_s"] is not None, turn
        start = int(turn["bot_started_s"] * rate)
        assert np.sqrt(np.mean(out[start : start + rate // 2] ** 2)) > 300, turn
