"""WebRTC bots: signalling (pipecat's SmallWebRTC handler behind our checks), the playground's files, the
bot-file sections (webrtc, daily), and a real aiortc peer talking to the embedded bot.

Everything runs against the app on a free local port (uvicorn). Only the test marked ``e2e`` loads the
embedded models; the others serve a bot whose brain echoes the peer's audio back
(``twilio_support.EchoBrain``), which proves a session is alive.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from pipecat.frames.frames import InterruptionFrame
from pydantic import SecretStr

from twilio_support import REPO, FrameLog, echo_bot_file, serving, wait_until
from vivavoce.botfile import BotFileError, load_bot
from vivavoce.frames import BotOutputPauseFrame
from vivavoce.server import create_app
from vivavoce.testing.webrtc_peer import RECORD_RATE, WebRTCPeer
from vivavoce.transports.catalog import DailyTransportConfig
from vivavoce.transports.webrtc_server import MAX_BODY_BYTES, WebRTCSessions

WEBRTC_YAML = REPO / "bots" / "webrtc.yaml"
DAILY_YAML = REPO / "bots" / "daily.yaml"


def light_bot_file(tmp_path, transport: str = "kind: webrtc", **extra: str):
    """A WebRTC bot without models: its 's2s' brain echoes the peer's audio back."""
    return echo_bot_file(tmp_path / "webrtc-light.yaml", transport)


@pytest.fixture
async def light_server(tmp_path):
    app = create_app(load_bot(light_bot_file(tmp_path), environ={}))
    async with serving(app) as running:
        yield running
        await app.state.webrtc.close()


@pytest.fixture(scope="module")
def phrases():
    """The bundled recording's phrases ("Ever tried.", "Ever failed.", "No matter."...), 16 kHz."""
    from vivavoce.packaged_models import speech_sample
    from vivavoce.samples import find_phrases
    from vivavoce.wav import read_wav

    source = read_wav(speech_sample())
    return [source.pcm[p.start : p.end] for p in find_phrases(source.pcm, source.sample_rate)]


def loud(pcm: np.ndarray, threshold: int = 500) -> bool:
    return pcm.size > 0 and int(np.abs(pcm).max()) > threshold


async def echoes(peer: WebRTCPeer, pcm: np.ndarray, what: str) -> None:
    """The peer says ``pcm`` and hears it back (the light bot is alive)."""
    since = time.monotonic()
    peer.say(pcm, RECORD_RATE)
    await wait_until(lambda: loud(peer.received.between(since)), 15, what)


async def request(running, method: str, body: bytes | str, content_type: str | None = "application/json"):
    headers = {"Content-Type": content_type} if content_type else {}
    async with httpx.AsyncClient() as client:
        return await client.request(method, f"{running.http}/api/offer", content=body, headers=headers, timeout=30)


# --- Signalling ----------------------------------------------------------------------------------------------------


async def test_a_peer_connects_and_hears_the_bot(light_server, phrases):
    async with WebRTCPeer(light_server.http) as peer:
        assert peer.pc_id in light_server.app.state.webrtc.sessions
        await wait_until(lambda: peer.rtvi("bot-ready"), 10, "RTVI bot-ready on the data channel")
        await echoes(peer, phrases[0], "the echo of the peer's speech")
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"{light_server.http}/health")).json()
        assert health["transport"] == "webrtc" and health["active_sessions"] == 1
    await wait_until(lambda: not light_server.app.state.webrtc.sessions, 15, "the session to end after hang-up")


async def test_trickled_candidates_reach_a_live_session(light_server):
    async with WebRTCPeer(light_server.http) as peer:
        candidate = {
            "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
            "sdp_mid": "0",
            "sdp_mline_index": 0,
        }
        end_of_candidates = {"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0}  # Firefox sends these
        response = await peer.post(
            "/api/offer", {"pc_id": peer.pc_id, "candidates": [candidate, end_of_candidates]}, "PATCH"
        )
        assert response.status_code == 200, response.text


BAD_OFFERS = [
    pytest.param(b"not json", "application/json", 400, "not JSON", id="invalid-json"),
    pytest.param(b'{"sdp": "v=0", "type": "offer"}', "text/plain", 415, "application/json", id="wrong-content-type"),
    pytest.param(b'{"sdp": "v=0", "type": "offer"}', None, 415, "application/json", id="no-content-type"),
    pytest.param(b'{"type": "offer"}', "application/json", 400, "sdp", id="no-sdp"),
    pytest.param(b'{"sdp": "v=0", "type": "answer"}', "application/json", 400, "type", id="not-an-offer"),
    pytest.param(b'{"sdp": 5, "type": "offer"}', "application/json", 400, "sdp", id="sdp-not-a-string"),
    pytest.param(b'["sdp"]', "application/json", 400, "invalid request", id="not-an-object"),
    pytest.param(b'{"sdp": "hello", "type": "offer"}', "application/json", 400, "no audio", id="sdp-without-media"),
    pytest.param(
        b'{"sdp": "v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\ns=-\\r\\nt=0 0\\r\\n'
        b'm=audio x UDP/TLS/RTP/SAVPF 111\\r\\n", "type": "offer"}',
        "application/json",
        400,
        "malformed SDP",
        id="malformed-sdp",
    ),
    pytest.param(
        b'{"sdp": "v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\ns=-\\r\\nt=0 0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 111\\r\\n'
        b'c=IN IP4 0.0.0.0\\r\\na=rtpmap:111 opus/48000/2\\r\\na=sendrecv\\r\\n", "type": "offer"}',
        "application/json",
        400,
        "refused",
        id="sdp-without-ice-or-dtls",
    ),
]


@pytest.mark.parametrize("body, content_type, status, message", BAD_OFFERS)
async def test_a_bad_offer_gets_a_4xx_with_a_message_and_a_live_session_goes_on(
    light_server, phrases, body, content_type, status, message
):
    async with WebRTCPeer(light_server.http) as peer:
        response = await request(light_server, "POST", body, content_type)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
        await echoes(peer, phrases[0], "the live session's echo after the bad offer")
        assert list(light_server.app.state.webrtc.sessions) == [peer.pc_id]


async def test_an_oversized_body_is_refused_before_it_is_read(light_server, phrases):
    async with WebRTCPeer(light_server.http) as peer:
        body = b'{"sdp": "' + b"a" * (MAX_BODY_BYTES + 10) + b'", "type": "offer"}'
        response = await request(light_server, "POST", body)
        assert response.status_code == 413 and "over" in response.json()["error"]

        async def chunks():  # no Content-Length: the limit holds while streaming
            for _ in range(20):
                yield b"a" * 8192

        async with httpx.AsyncClient() as client:
            streamed = await client.post(
                f"{light_server.http}/api/offer", content=chunks(), headers={"Content-Type": "application/json"}
            )
        assert streamed.status_code == 413
        await echoes(peer, phrases[0], "the live session's echo after the oversized bodies")


BAD_PATCHES = [
    pytest.param({"pc_id": "SmallWebRTCConnection#0-nobody", "candidates": []}, 404, "no session", id="unknown-pc-id"),
    pytest.param({"candidates": []}, 400, "pc_id", id="no-pc-id"),
    pytest.param(
        {"pc_id": "LIVE", "candidates": [{"candidate": "candidate:x"}]}, 400, "sdp_mid", id="incomplete-candidate"
    ),
    pytest.param(
        {"pc_id": "LIVE", "candidates": [{"candidate": "candidate:garbage", "sdp_mid": "0", "sdp_mline_index": 0}]},
        400,
        "malformed ICE candidate",
        id="malformed-candidate",
    ),
]


@pytest.mark.parametrize("body, status, message", BAD_PATCHES)
async def test_a_bad_patch_gets_a_4xx_with_a_message_and_the_session_goes_on(
    light_server, phrases, body, status, message
):
    async with WebRTCPeer(light_server.http) as peer:
        if body.get("pc_id") == "LIVE":
            body = {**body, "pc_id": peer.pc_id}
        response = await peer.post("/api/offer", body, "PATCH")
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
        await echoes(peer, phrases[0], "the session's echo after the bad patch")


async def test_a_patch_with_the_wrong_content_type_is_refused(light_server):
    response = await request(light_server, "PATCH", b"pc_id=x", "application/x-www-form-urlencoded")
    assert response.status_code == 415


async def test_offers_beyond_max_sessions_are_refused_as_busy(tmp_path):
    app = create_app(load_bot(light_bot_file(tmp_path, "kind: webrtc\n  max_sessions: 1"), environ={}))
    async with serving(app) as running:
        async with WebRTCPeer(running.http):
            with pytest.raises(RuntimeError, match="503.*busy"):
                await WebRTCPeer(running.http).connect()
        await app.state.webrtc.close()


async def test_a_session_that_cannot_start_gets_a_500_and_the_server_goes_on(tmp_path, phrases):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        light_bot_file(tmp_path).read_text().replace("twilio_support:EchoBrain", "webrtc_support:Unbuildable")
    )
    app = create_app(load_bot(broken, environ={}))
    async with serving(app) as running:
        with pytest.raises(RuntimeError, match="500.*could not start"):
            await WebRTCPeer(running.http).connect()
        assert not app.state.webrtc.sessions
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{running.http}/health")).status_code == 200
        await app.state.webrtc.close()


async def test_each_peer_hears_only_itself(light_server, phrases):
    async with WebRTCPeer(light_server.http) as talker, WebRTCPeer(light_server.http) as listener:
        since = time.monotonic()
        await echoes(talker, phrases[0], "the talker's echo")
        await asyncio.sleep(0.5)
        assert not loud(listener.received.between(since)), "the other session heard the talker"


# --- The playground and the ICE servers ---------------------------------------------------------------------------


async def test_the_playground_is_served_with_its_script_and_style(light_server):
    async with httpx.AsyncClient(base_url=light_server.http) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for path in re.findall(r'(?:src|href)="(/playground/[^"]+)"', page.text):
            asset = await client.get(path)
            assert asset.status_code == 200 and asset.content, path
        assert (await client.get("/playground/../server.py")).status_code == 404
        assert (await client.get("/playground/secret.txt")).status_code == 404


async def test_ice_servers_from_the_bot_file_reach_the_browser(tmp_path):
    transport = """kind: webrtc
  ice_servers:
    - urls: stun:stun.example.com:3478
    - urls: ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]
      username: ${TURN_USERNAME}
      credential: ${TURN_CREDENTIAL}"""
    bot = load_bot(light_bot_file(tmp_path, transport), environ={"TURN_USERNAME": "viva", "TURN_CREDENTIAL": "s3cret"})
    app = create_app(bot)
    async with serving(app) as running, httpx.AsyncClient(base_url=running.http) as client:
        servers = (await client.get("/api/ice-servers")).json()["iceServers"]
    assert servers == [
        {"urls": ["stun:stun.example.com:3478"]},
        {
            "urls": ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"],
            "username": "viva",
            "credential": "s3cret",
        },
    ]
    assert [s.urls for s in app.state.webrtc.handler._ice_servers] == [s["urls"] for s in servers]


def test_ice_server_urls_and_inline_credentials_are_checked(tmp_path):
    bad_url = light_bot_file(tmp_path, "kind: webrtc\n  ice_servers: [{urls: 'http://stun.example.com'}]")
    with pytest.raises(BotFileError, match="stun:, stuns:, turn: or turns:"):
        load_bot(bad_url, environ={})
    inline = light_bot_file(
        tmp_path, "kind: webrtc\n  ice_servers: [{urls: 'turn:t.example.com', username: u, credential: hunter2}]"
    )
    with pytest.raises(BotFileError, match="secrets are never written in a bot file") as error:
        load_bot(inline, environ={})
    assert "hunter2" not in str(error.value)


def test_the_shipped_webrtc_bot_is_the_embedded_agent():
    webrtc, local = load_bot(WEBRTC_YAML, environ={}), load_bot(REPO / "bots" / "local.yaml", environ={})
    assert webrtc.spec.transport.kind == "webrtc"
    assert [s.config for s in webrtc.stages] == [s.config for s in local.stages]


# --- Daily: validation and construction only (a hosted service that cannot be reached from here) -------------------


def test_the_daily_bot_file_takes_its_room_and_token_from_the_environment():
    bot = load_bot(DAILY_YAML, environ={"DAILY_ROOM_URL": "https://viva.daily.co/demo", "DAILY_TOKEN": "tok"})
    transport = bot.spec.transport
    assert isinstance(transport, DailyTransportConfig)
    assert transport.room_url == "https://viva.daily.co/demo"
    assert transport.token == SecretStr("tok")


@pytest.mark.parametrize(
    "environ, error",
    [
        ({}, "'DAILY_ROOM_URL' is not set"),
        ({"DAILY_ROOM_URL": "viva.daily.co/demo"}, "room_url"),
        ({"DAILY_ROOM_URL": "https://viva.daily.co/demo/extra"}, "room_url"),
    ],
)
def test_a_daily_room_url_is_checked(environ, error):
    with pytest.raises(BotFileError, match=error):
        load_bot(DAILY_YAML, environ=environ)


def test_an_inline_daily_token_is_refused(tmp_path):
    path = light_bot_file(tmp_path, "kind: daily\n  room_url: https://viva.daily.co/demo\n  token: abc")
    with pytest.raises(BotFileError, match="secrets are never written"):
        load_bot(path, environ={})


def test_the_daily_transport_is_pipecats_built_from_the_bot_file():
    from pipecat.transports.daily.transport import DailyTransport

    from vivavoce.transports.daily import create_daily_transport

    bot = load_bot(DAILY_YAML, environ={"DAILY_ROOM_URL": "https://viva.daily.co/demo", "DAILY_TOKEN": "tok"})
    transport = create_daily_transport(bot.spec.transport)
    assert isinstance(transport, DailyTransport)
    client = transport._client
    assert (client._room_url, client._token, client._bot_name) == ("https://viva.daily.co/demo", "tok", "Viva")
    public = load_bot(DAILY_YAML, environ={"DAILY_ROOM_URL": "https://viva.daily.co/demo"})
    assert create_daily_transport(public.spec.transport)._client._token is None


# --- End to end with the embedded models ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_models():
    from vivavoce.builder import load_models

    load_models(load_bot(WEBRTC_YAML, environ={}))


def transcribe(pcm_16k: np.ndarray) -> str:
    """What faster-whisper (tiny.en, the bot's own STT model) hears in the received audio."""
    from vivavoce.processors.whisper import load_whisper

    model = load_whisper("tiny.en", "cpu", "int8")
    segments, _info = model.transcribe(pcm_16k.astype(np.float32) / 32768, language="en")
    return " ".join(s.text for s in segments).strip()


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) >= 3}


@pytest.mark.e2e
async def test_a_webrtc_peer_talks_to_the_embedded_bot(embedded_models, phrases):
    """Real speech in as the peer's microphone; the transcript, the bot's text, its latency and its voice back."""
    app = create_app(load_bot(WEBRTC_YAML, environ={}))
    async with serving(app) as running, WebRTCPeer(running.http) as peer:
        await wait_until(lambda: peer.rtvi("bot-ready"), 10, "RTVI bot-ready")
        spoken = peer.say(phrases[0], RECORD_RATE)  # "Ever tried."

        heard = await wait_until(lambda: [d for d in peer.rtvi("user-input") if d.get("final")], 30, "the transcript")
        assert words(heard[0]["text"]) & {"ever", "tried", "try"}, heard
        await wait_until(lambda: peer.rtvi("bot-started-speaking", spoken), 30, "the bot's answer")
        latency = await wait_until(lambda: peer.server_messages("turn-latency"), 10, "the turn's latency")
        stopped = await wait_until(lambda: peer.rtvi("bot-stopped-speaking", spoken), 30, "the end of the answer")
        await asyncio.sleep(0.3)  # the last frames in flight
        answer = peer.received.between(spoken)
        said = " ".join(d["text"] for d in peer.rtvi("bot-output") if d.get("spoken_status") == "completed")
        await app.state.webrtc.close()

    assert stopped
    turn = latency[0]
    assert turn["turn"] == 1 and turn["voice_to_voice_ms"] > 0
    assert sum(v for v in turn["stages_ms"].values() if v) == pytest.approx(turn["voice_to_voice_ms"], abs=1.0)
    assert words(said), "no bot text on the data channel"
    transcript = transcribe(answer)
    assert words(transcript), f"no words in the bot's audio: {transcript!r}"
    assert words(transcript) & words(said), (transcript, said)


@pytest.mark.e2e
async def test_talking_over_the_bot_pauses_then_interrupts_its_audio(embedded_models, phrases, tmp_path):
    """Pause-then-resume barge-in on the WebRTC output: the bot's audio stops while the peer talks over it."""
    path = tmp_path / "webrtc-playback.yaml"
    path.write_text(
        (REPO / "bots" / "webrtc_load.yaml").read_text().replace("name: webrtc-load", "name: webrtc-playback")
    )
    bot = load_bot(path, environ={})
    log = FrameLog(BotOutputPauseFrame, InterruptionFrame)
    sessions = WebRTCSessions(bot, bot.spec.transport, observers=log)
    app = FastAPI()
    app.include_router(sessions.router())
    async with serving(app) as running, WebRTCPeer(running.http) as peer:
        asked = peer.say(phrases[0], RECORD_RATE)
        await wait_until(lambda: peer.rtvi("bot-started-speaking", asked), 20, "the reply")
        await asyncio.sleep(0.5)
        long_speech = np.concatenate([phrases[1], phrases[2], phrases[3]])  # well over min_speech_secs
        onset = time.monotonic()
        spoken = peer.say(long_speech, RECORD_RATE)
        paused = await wait_until(
            lambda: [t for t, f in log.of(BotOutputPauseFrame) if t > onset and f.paused], 10, "the pause"
        )
        await wait_until(lambda: [t for t, _ in log.of(InterruptionFrame) if t > paused[0]], 10, "the interruption")
        await wait_until(lambda: peer.rtvi("bot-interrupted", onset), 10, "RTVI bot-interrupted")
        await asyncio.sleep(max(0.0, spoken - time.monotonic()))
        await sessions.close()

    before = peer.received.between(onset - 0.5, onset)
    while_talking = peer.received.between(paused[0] + 0.3, spoken)  # the peer still speaks: no new reply yet
    assert loud(before), "the reply was playing when the peer talked over it"
    assert while_talking.size > RECORD_RATE // 2 and not loud(while_talking), "the bot's audio went on"
