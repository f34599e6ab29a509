"""The Moshi worker as workers/PROTOCOL.md describes it to a client written from the docs alone.

Its routes (``WS /api/chat`` and ``GET /health``, every other path a 404 that names them), its ``/health``
fields (the other workers' shared ones), the API key as HTTP Basic credentials, and Kyutai's own
command-line client (``moshi-client-py``) run from the worker's venv against it, key in its URL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from moshi_support import (
    ERROR,
    REPO,
    WORKER_DIR,
    WORKER_PYTHON,
    chat_pcm,
    make_tiny_checkpoint,
    moshi_worker,
    noise_audio,
    worker_env,
)

KEY = "k3y-for-tests"
KYUTAI_CLIENT = REPO / "tests" / "moshi_kyutai_client.py"
# What every worker's /health has (workers/common's health_router and the synthesis workers' live fields).
SHARED_HEALTH_FIELDS = {
    "status",
    "model",
    "device",
    "memory",
    "uptime_s",
    "engine",
    "protocol",
    "sample_rate",
    "active_sessions",
    "queue_depth",
    "requests",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-moshi"))


@pytest.fixture(scope="module")
def worker(tiny):
    """A worker as deployed: an API key, turn gating on (the default), two conversations."""
    with moshi_worker(tiny, "--greedy", "--slots", "2", api_key=KEY) as w:
        yield w


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_health_has_the_shared_fields_and_counts_conversations(worker, tiny):
    health = worker.health()
    assert SHARED_HEALTH_FIELDS <= health.keys()
    assert health["model"] == "moshi" and health["engine"] == "moshi"  # the family, as CSM says "csm"
    assert health["weights"] == str(tiny)  # the path where it was the model
    assert health["protocol"] == "kyutai-moshi" and health["sample_rate"] == 24000
    assert health["queue_depth"] == health["queued_frames"] == 0
    before = health["requests"]
    assert set(before) == {"finished", "refused"}

    await chat_pcm(worker.chat_url, noise_audio(0.8, 1), headers={"X-API-Key": KEY})
    async with connect(f"{worker.chat_url}?codec=mp3&api_key={KEY}") as ws:  # refused: a bad parameter
        assert (await ws.recv())[0] == ERROR
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    for _ in range(50):  # the server counts a conversation once it has seen the socket close
        after = worker.health()["requests"]
        if after["finished"] > before["finished"]:
            break
        await asyncio.sleep(0.1)
    assert after == {"finished": before["finished"] + 1, "refused": before["refused"] + 1}


@pytest.mark.parametrize(("method", "path"), [("POST", "/synthesize"), ("GET", "/voices"), ("GET", "/")])
def test_http_routes_of_other_families_answer_404_naming_moshis(worker, method, path):
    answer = httpx.request(method, f"http://127.0.0.1:{worker.port}{path}", json={"text": "Hello."}, timeout=5)
    assert answer.status_code == 404
    detail = answer.json()["detail"]
    assert f"{method} {path} is not served by the Moshi worker" in detail
    assert "WS /api/chat" in detail and "GET /health" in detail


@pytest.mark.parametrize("path", ["/v1/stream", "/v1/tts", "/v1/native/ws/call-42", "/api/chat/extra"])
async def test_websocket_routes_of_other_families_answer_404_naming_moshis(worker, path):
    # A 404 at the handshake, with a reason: not the bare 403 that reads like a refused key.
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{worker.port}{path}", additional_headers={"X-API-Key": KEY}):
            pass
    response = refused.value.response
    assert response.status_code == 404
    detail = json.loads(response.body)["detail"]
    assert f"WS {path} is not served by the Moshi worker" in detail and "WS /api/chat" in detail


async def test_the_key_as_http_basic_credentials(worker):
    audio = noise_audio(0.8, 2)
    as_password = await chat_pcm(worker.chat_url, audio, query="codec=pcm16&gate=off", headers=basic("moshi", KEY))
    as_user = await chat_pcm(worker.chat_url, audio, query="codec=pcm16&gate=off", headers=basic(KEY, ""))
    assert len(as_password.frames) == len(as_user.frames) == 9 and as_password.frames == as_user.frames
    for headers in (
        basic("moshi", "wrong"),
        basic("wrong", ""),
        basic(KEY, "wrong"),
        {"Authorization": "Basic !!not-base64"},
        {"Authorization": "Basic"},
    ):
        async with connect(worker.chat_url, additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1008 and "API key" in closed.value.rcvd.reason, headers


def run_kyutai_client(seconds: float, *client_args: str, tmp_path) -> tuple[dict, str, str]:
    """Kyutai's ``moshi-client-py`` (moshi.client.main) in the worker's venv; its summary, stdout and stderr."""
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [str(WORKER_PYTHON), str(KYUTAI_CLIENT), str(seconds), str(summary), "--", *client_args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=WORKER_DIR,
        env=worker_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(summary.read_text()), done.stdout, done.stderr


def test_kyutais_own_client_sends_the_key_in_its_url(worker, tmp_path):
    host = f"127.0.0.1:{worker.port}"
    summary, text, log = run_kyutai_client(3.0, "--url", f"ws://moshi:{KEY}@{host}", tmp_path=tmp_path)
    assert f"Connecting to ws://moshi:{KEY}@{host}/api/chat" in log and "connected!" in log
    assert summary["sent_blocks"] == 37  # its microphone's 80 ms blocks, Opus-encoded by the client
    assert summary["audible_blocks"] >= 18 and summary["peak"] > 0.01  # Moshi's Opus decoded and played
    assert summary["interrupted"]  # it kept the conversation until Ctrl-C
    assert text.strip()  # the model's text, as the client prints it

    # The other ways its URL can carry the key: as the user name, or smuggled into the query.
    for url in (f"ws://{KEY}@{host}", f"ws://{host}/api/chat?api_key={KEY}&_="):
        summary, _, _ = run_kyutai_client(1.6, "--url", url, tmp_path=tmp_path)
        assert summary["audible_blocks"] >= 10 and summary["interrupted"], url

    # A wrong key: the worker closes the socket (1008) and the client ends by itself, having played nothing.
    summary, _, log = run_kyutai_client(1.6, "--url", f"ws://moshi:wrong@{host}", tmp_path=tmp_path)
    assert summary["audible_blocks"] == 0 and not summary["interrupted"] and "All done!" in log


def test_the_worker_venv_has_what_kyutais_client_needs():
    """aiohttp and sounddevice come with requirements.txt; sounddevice loads PortAudio (libportaudio2) at import."""
    probe = (
        "import ctypes.util, importlib.metadata as m, json\n"
        "report = {p: m.version(p) for p in ('aiohttp', 'sounddevice')}\n"
        "report['portaudio'] = ctypes.util.find_library('portaudio')\n"
        "try:\n"
        "    import moshi.client\n"
        "    report['client'] = 'imported'\n"
        "except OSError as e:\n"
        "    report['client'] = str(e)\n"
        "print(json.dumps(report))\n"
    )
    done = subprocess.run(
        [str(WORKER_PYTHON), "-c", probe], capture_output=True, text=True, timeout=60, cwd=WORKER_DIR, env=worker_env()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert tuple(map(int, report["aiohttp"].split(".")[:2])) in {(3, 10), (3, 11)}  # moshi's pin
    assert report["sounddevice"] == "0.5.0"
    # Without the system's PortAudio the client cannot start, with the message the README explains.
    expected = "imported" if report["portaudio"] else "PortAudio library not found"
    assert report["client"] == expected
