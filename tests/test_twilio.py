"""Phone calls: the Twilio webhook, Media Streams, the REST tools and `vivavoce call`, on a real server.

Everything runs against the app on a free local port (uvicorn), with Twilio's side played by
``MediaStreamsCaller`` (Twilio's documented stream messages) and a local HTTP server standing in for
Twilio's REST API. Only the tests marked ``e2e`` load the embedded models; the others serve a bot whose
brain echoes the caller's audio back (``twilio_support.EchoBrain``), which proves a call is alive.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
import re
import time
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import websockets
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    FunctionCallFromLLM,
    InputAudioRawFrame,
    InputDTMFFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
    OutputTransportMessageFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.services.llm_service import LLMService
from pipecat.tests.utils import run_test
from typer.testing import CliRunner

import vivavoce.session as session_module
import vivavoce.transports.twilio_server as twilio_server
from twilio_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    REPO,
    WEBHOOK_URL,
    FrameLog,
    Line,
    TwilioApiStandIn,
    answer_call,
    embedded_bot_file,
    hears_back,
    light_bot_file,
    observed_app,
    serving,
    sign,
    stream_token,
    twilio_environ,
    voice_params,
    wait_until,
)
from vivavoce.botfile import load_bot
from vivavoce.server import create_app
from vivavoce.testing.media_streams import FRAME_BYTES, MediaStreamsCaller, call_sid
from vivavoce.transports.call_tokens import CallTokens, InvalidCallToken
from vivavoce.transports.twilio_call_control import TwilioCallControl
from vivavoce.transports.twilio_stream import PlayoutMarks, TwilioStreamSerializer

TWILIO_YAML = REPO / "bots" / "twilio.yaml"


@pytest.fixture(autouse=True)
def twilio_env(monkeypatch):
    for name, value in twilio_environ().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def api():
    """The stand-in for api.twilio.com."""
    with TwilioApiStandIn() as standin:
        yield standin


@pytest.fixture
def light_bot(tmp_path, api):
    return load_bot(light_bot_file(tmp_path, api_base_url=api.url), environ=twilio_environ())


@pytest.fixture
def built(monkeypatch):
    """Every conversation the server builds (one per call that got past the handshake)."""
    conversations = []
    real = session_module.build_conversation

    def spy(*args, **kwargs):
        conversation = real(*args, **kwargs)
        conversations.append(conversation)
        return conversation

    monkeypatch.setattr(session_module, "build_conversation", spy)
    return conversations


async def health(running) -> dict:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{running.http}/health", timeout=10)
    assert response.status_code == 200
    return response.json()


def hang_ups(sid):
    return lambda r: (
        r.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid}.json" and r.form.get("Status") == "completed"
    )


# --- The voice webhook's signatures (no models: create_app builds no pipeline) -------------------------------------


@pytest.fixture
async def webhook():
    """bots/twilio.yaml itself, served; its models are never loaded (no stream is opened)."""
    bot = load_bot(TWILIO_YAML, environ=twilio_environ())
    async with serving(create_app(bot)) as running, httpx.AsyncClient(base_url=running.http) as client:
        yield running, client


async def test_a_signed_webhook_gets_twiml_connecting_the_call_to_the_stream(webhook):
    running, client = webhook
    sid = call_sid()
    params = voice_params(sid)
    response = await client.post("/twilio/voice", data=params, headers={"X-Twilio-Signature": sign(params)})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None, response.text
    assert stream.get("url") == "wss://example.test/twilio/ws"
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert set(parameters) == {"token"}
    assert parameters["token"] == stream_token(response.text)
    running.calls.tokens.verify(sid, parameters["token"])  # a token for this call, valid now
    with pytest.raises(InvalidCallToken):
        running.calls.tokens.verify(call_sid(), parameters["token"])
    assert running.calls.calls == {}  # nothing starts before the stream does


async def test_the_signature_covers_the_query_string_of_the_public_url(webhook):
    _, client = webhook
    params = voice_params(call_sid())
    signature = sign(params, url=WEBHOOK_URL + "?tenant=a")
    assert (
        await client.post("/twilio/voice?tenant=a", data=params, headers={"X-Twilio-Signature": signature})
    ).status_code == 200
    assert (
        await client.post("/twilio/voice?tenant=b", data=params, headers={"X-Twilio-Signature": signature})
    ).status_code == 403


def _tampered(params: dict) -> dict:
    return {**params, "From": "+15550009999"}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda p: {}, id="missing"),
        pytest.param(lambda p: {"X-Twilio-Signature": ""}, id="empty"),
        pytest.param(lambda p: {"X-Twilio-Signature": "bm9wZQ=="}, id="wrong"),
        pytest.param(lambda p: {"X-Twilio-Signature": sign(_tampered(p))}, id="over-other-params"),
        pytest.param(
            lambda p: {"X-Twilio-Signature": sign({k: v for k, v in p.items() if k != "To"})}, id="over-fewer-params"
        ),
        pytest.param(lambda p: {"X-Twilio-Signature": sign(p, token="another-auth-token")}, id="other-auth-token"),
        pytest.param(
            lambda p: {"X-Twilio-Signature": sign(p, url="http://127.0.0.1/twilio/voice")}, id="over-local-url"
        ),
        pytest.param(
            lambda p: {"X-Twilio-Signature": sign(p, url="https://evil.test/twilio/voice")}, id="over-other-host"
        ),
    ],
)
async def test_a_webhook_without_a_valid_signature_is_refused(webhook, headers):
    running, client = webhook
    params = voice_params(call_sid())
    response = await client.post("/twilio/voice", data=params, headers=headers(params))
    assert response.status_code == 403
    assert "token" not in response.text and "<Stream" not in response.text


async def test_a_signed_webhook_for_other_params_is_refused(webhook):
    _, client = webhook
    params = voice_params(call_sid())
    response = await client.post("/twilio/voice", data=_tampered(params), headers={"X-Twilio-Signature": sign(params)})
    assert response.status_code == 403


@pytest.mark.parametrize("call", [None, "", "XX123", "ca" + "0" * 32], ids=["absent", "empty", "not-CA", "lowercase"])
async def test_a_signed_webhook_without_a_call_sid_is_a_bad_request(webhook, call):
    _, client = webhook
    params = voice_params("CA" + "0" * 32)
    if call is None:
        del params["CallSid"]
    else:
        params["CallSid"] = call
    response = await client.post("/twilio/voice", data=params, headers={"X-Twilio-Signature": sign(params)})
    assert response.status_code == 400
    assert "<Stream" not in response.text


async def test_skip_signature_accepts_unsigned_webhooks():
    bot = load_bot(TWILIO_YAML, environ=twilio_environ())
    async with serving(create_app(bot, skip_signature=True)) as running, httpx.AsyncClient() as client:
        sid = call_sid()
        unsigned = await client.post(f"{running.http}/twilio/voice", data=voice_params(sid))
        wrong = await client.post(
            f"{running.http}/twilio/voice", data=voice_params(sid), headers={"X-Twilio-Signature": "bm9wZQ=="}
        )
        no_sid = await client.post(f"{running.http}/twilio/voice", data={"From": "+15551230000"})
    assert unsigned.status_code == 200 and wrong.status_code == 200
    running.calls.tokens.verify(sid, stream_token(unsigned.text))
    assert no_sid.status_code == 400


async def test_the_public_url_argument_sets_the_stream_url_and_the_signed_url():
    bot = load_bot(TWILIO_YAML, environ=twilio_environ())
    app = create_app(bot, public_url="https://calls.example.org/")
    async with serving(app) as running, httpx.AsyncClient() as client:
        params = voice_params(call_sid())
        ok = await client.post(
            f"{running.http}/twilio/voice",
            data=params,
            headers={"X-Twilio-Signature": sign(params, url="https://calls.example.org/twilio/voice")},
        )
        stale = await client.post(
            f"{running.http}/twilio/voice", data=params, headers={"X-Twilio-Signature": sign(params)}
        )
    assert ok.status_code == 200
    assert 'url="wss://calls.example.org/twilio/ws"' in ok.text
    assert stale.status_code == 403


def test_serving_without_an_auth_token_needs_the_explicit_insecure_flag(tmp_path):
    path = tmp_path / "no-token.yaml"
    path.write_text(TWILIO_YAML.read_text().replace("  auth_token: ${TWILIO_AUTH_TOKEN}\n", ""))
    bot = load_bot(path, environ=twilio_environ())
    with pytest.raises(ValueError, match="auth_token"):
        create_app(bot)
    create_app(bot, skip_signature=True)  # local development only


async def test_health_answers(webhook):
    running, _ = webhook
    status = await health(running)
    assert status["bot"] == "twilio" and status["transport"] == "twilio"
    assert status["active_sessions"] == 0 and status["uptime_s"] >= 0


# --- Stream tokens -------------------------------------------------------------------------------------------------


def test_a_token_is_valid_for_its_call_until_it_expires():
    tokens = CallTokens(secret=b"secret", ttl_secs=60)
    sid = call_sid()
    token = tokens.issue(sid, now=1_000_000)
    tokens.verify(sid, token, now=1_000_000)
    tokens.verify(sid, token, now=1_000_060)  # the last valid second
    with pytest.raises(InvalidCallToken, match="expired"):
        tokens.verify(sid, token, now=1_000_061)
    with pytest.raises(InvalidCallToken, match="does not match"):
        tokens.verify(call_sid(), token, now=1_000_000)


def test_a_token_is_bound_to_its_secret_and_its_expiry():
    sid = call_sid()
    token = CallTokens(secret=b"secret").issue(sid)
    CallTokens(secret=b"secret").verify(sid, token)  # the same secret: another process of the same server
    with pytest.raises(InvalidCallToken, match="does not match"):
        CallTokens(secret=b"other").verify(sid, token)
    with pytest.raises(InvalidCallToken, match="does not match"):
        CallTokens().verify(sid, CallTokens().issue(sid))  # no secret: a random one per instance
    expiry, _, signature = token.partition(".")
    with pytest.raises(InvalidCallToken, match="does not match"):
        CallTokens(secret=b"secret").verify(sid, f"{int(expiry) + 3600}.{signature}")  # a later expiry, same MAC


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (None, "missing"),
        ("", "missing"),
        ("abc", "malformed"),
        ("123.abc", "malformed"),
        ("." + "0" * 64, "malformed"),
        ("-5." + "0" * 64, "malformed"),
        ("123." + "0" * 63, "malformed"),
        ("123." + "0" * 64, "does not match"),
    ],
)
def test_malformed_tokens_are_refused_with_the_reason(token, error):
    with pytest.raises(InvalidCallToken, match=error):
        CallTokens(secret=b"secret").verify(call_sid(), token)


@pytest.mark.parametrize("token", [12345, ["x"], "²." + "0" * 64], ids=["int", "list", "superscript-digit"])
def test_tokens_of_the_wrong_type_are_refused_as_invalid(token):
    with pytest.raises(InvalidCallToken):
        CallTokens(secret=b"secret").verify(call_sid(), token)


@pytest.fixture
async def light_server(light_bot, built):
    async with serving(create_app(light_bot)) as running:
        yield running


async def test_a_stream_with_its_calls_token_starts_the_call(light_server, built):
    running = light_server
    sid = call_sid()
    token = await answer_call(running, sid)
    async with MediaStreamsCaller(running.ws, token=token, call=sid) as caller, Line(caller) as line:
        await wait_until(lambda: sid in running.calls.calls, 10, "the call to start")
        await hears_back(line, since=time.monotonic())
        record = running.calls.calls[sid]
        assert record.stream_sid == caller.stream_sid
        assert (await health(running))["active_sessions"] == 1
    await wait_until(lambda: not running.calls.calls, 10, "the call to end after the caller hung up")
    assert len(built) == 1
    assert (await health(running))["active_sessions"] == 0


def _expired(running, sid):
    return running.calls.tokens.issue(sid, now=time.time() - 3600)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(lambda running, sid, other: None, "missing", id="missing"),
        pytest.param(lambda running, sid, other: "wrong", "malformed", id="garbage"),
        pytest.param(lambda running, sid, other: f"{int(time.time()) + 60}.{'0' * 64}", "does not match", id="wrong"),
        pytest.param(lambda running, sid, other: other, "does not match", id="another-calls"),
        pytest.param(lambda running, sid, other: _expired(running, sid), "expired", id="expired"),
        pytest.param(
            lambda running, sid, other: CallTokens(secret=b"guess").issue(sid), "does not match", id="other-secret"
        ),
    ],
)
async def test_a_stream_without_a_valid_token_is_closed_before_any_pipeline(light_server, built, token, reason):
    running = light_server
    sid = call_sid()
    other = await answer_call(running, call_sid())  # a genuine token, for another call
    async with MediaStreamsCaller(running.ws, token=token(running, sid, other), call=sid) as caller:
        await caller.wait_closed(5)
    assert caller.close_code == 1008
    assert reason in caller.close_reason
    assert running.calls.calls == {} and built == []
    assert caller.received.frames == []


async def test_a_second_stream_with_the_same_token_does_not_hide_the_live_call(light_server, built):
    running = light_server
    sid = call_sid()
    token = await answer_call(running, sid)
    async with MediaStreamsCaller(running.ws, token=token, call=sid) as first, Line(first) as line:
        await hears_back(line, since=time.monotonic())
        async with MediaStreamsCaller(running.ws, token=token, call=sid) as replay, Line(replay):
            await wait_until(lambda: replay.close_code is not None or replay.received.frames, 10, "refused or answered")
        if len(built) == 2:  # the replay was let in: wait until its pipeline is over
            await wait_until(built[1].worker.has_finished, 10, "the second stream's pipeline to end")
            await asyncio.sleep(1.0)  # its clean-up (the `finally` of _run_call) runs right after
        await hears_back(line, since=time.monotonic())  # the first call is still on
        assert sid in running.calls.calls
        assert (await health(running))["active_sessions"] == 1


async def closed_by_server(ws, timeout: float = 5):
    """The close frame the server ends ``ws`` with, sending nothing before it."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), timeout)
    assert closed.value.rcvd is not None, "the connection ended without a close frame from the server"
    return closed.value.rcvd


@pytest.mark.parametrize(
    ("start", "reason"),
    [
        pytest.param({"event": "start"}, "without 'start'", id="no-start-body"),
        pytest.param({"event": "start", "start": "x"}, "without 'start'", id="start-not-an-object"),
        pytest.param({"event": "start", "start": {"streamSid": "MZ1"}}, "streamSid/callSid", id="no-call-sid"),
        pytest.param(
            {"event": "start", "start": {"streamSid": "MZ1", "callSid": "CA1", "customParameters": ["token"]}},
            "streamSid/callSid",
            id="parameters-not-an-object",
        ),
    ],
)
async def test_a_malformed_start_is_refused(light_server, built, start, reason):
    async with websockets.connect(light_server.ws) as ws:
        await ws.send(json.dumps(start))
        close = await closed_by_server(ws)
    assert close.code == 1008 and reason in close.reason
    assert built == []


async def test_a_stream_that_never_starts_is_closed(light_server, built, monkeypatch):
    monkeypatch.setattr(twilio_server, "HANDSHAKE_TIMEOUT_SECS", 1.0)
    async with websockets.connect(light_server.ws) as silent, websockets.connect(light_server.ws) as chatty:
        await chatty.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        for ws in (silent, chatty):
            close = await closed_by_server(ws, 10)
            assert close.code == 1008 and close.reason == "no start message"
    assert built == []


async def test_a_stream_flooding_messages_before_start_is_closed(light_server, built):
    async with websockets.connect(light_server.ws) as ws:
        for _ in range(twilio_server.MAX_MESSAGES_BEFORE_START):
            await ws.send(json.dumps({"event": "connected"}))
        close = await closed_by_server(ws)
    assert close.code == 1008 and close.reason == "no start message"
    assert built == []


async def test_an_oversized_message_before_start_is_refused(light_server, built):
    async with websockets.connect(light_server.ws) as ws:
        await ws.send("x" * 100_000)
        close = await closed_by_server(ws)
    assert close.code == 1008 and "oversized" in close.reason
    assert built == []


def _start_with_token(token) -> str:
    return json.dumps(
        {"event": "start", "start": {"streamSid": "MZ1", "callSid": call_sid(), "customParameters": {"token": token}}}
    )


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(_start_with_token(12345), id="int-token"),
        pytest.param(_start_with_token("²." + "0" * 64), id="superscript-digit-token"),
    ],
)
async def test_a_crafted_message_before_start_is_refused_with_a_policy_close(light_server, built, message):
    async with websockets.connect(light_server.ws) as ws:
        await ws.send(message)
        close = await closed_by_server(ws)
    assert built == []
    assert close.code == 1008


# --- Malformed input: one call's garbage never reaches another call ------------------------------------------------


def _media(payload: str) -> str:
    return json.dumps({"event": "media", "streamSid": "MZ", "media": {"track": "inbound", "payload": payload}})


MALFORMED = [
    # (id, message, the serializer's reason for dropping it)
    ("invalid-json", '{"event": "media", "media": {', "invalid JSON"),
    ("json-list", json.dumps([{"event": "media"}]), "not a JSON object"),
    ("json-string", json.dumps("media"), "not a JSON object"),
    ("binary-frame", b"\x00\xff\x10binary", "invalid JSON"),
    ("media-without-payload", json.dumps({"event": "media", "media": {"track": "inbound"}}), "media without a payload"),
    ("media-without-media", json.dumps({"event": "media"}), "media without a payload"),
    ("media-payload-not-a-string", json.dumps({"event": "media", "media": {"payload": 12}}), "media without a payload"),
    ("bad-base64", _media("%%% not base64 %%%"), "media payload is not base64"),
    ("oversized-media-payload", _media(base64.b64encode(b"\xff" * 16_000).decode()), "oversized media payload"),
    ("unknown-event", json.dumps({"event": "bogus", "bogus": {}}), "unknown event 'bogus'"),
    ("no-event", json.dumps({"streamSid": "MZ"}), "unknown event None"),
    ("oversized-frame", _media("A" * 100_000), "oversized message"),
    (
        "second-start",
        json.dumps({"event": "start", "start": {"streamSid": "MZ2", "callSid": "CA2"}}),
        "a second start on a started stream",
    ),
    ("dtmf-without-digit", json.dumps({"event": "dtmf", "dtmf": {}}), "dtmf without a digit"),
    ("mark-without-name", json.dumps({"event": "mark", "mark": {"name": 3}}), "mark without a name"),
]


async def _serializer() -> TwilioStreamSerializer:
    serializer = TwilioStreamSerializer(
        stream_sid="MZ1", call_sid="CA1", params=TwilioStreamSerializer.InputParams(auto_hang_up=False)
    )
    await serializer.setup(SimpleNamespace(audio_in_sample_rate=16000))
    return serializer


async def test_the_serializer_turns_twilios_messages_into_frames():
    serializer = await _serializer()
    audio = await serializer.deserialize(_media(base64.b64encode(b"\xff" * FRAME_BYTES).decode()))
    assert isinstance(audio, InputAudioRawFrame) and audio.sample_rate == 16000
    dtmf = await serializer.deserialize(json.dumps({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}}))
    assert isinstance(dtmf, InputDTMFFrame) and dtmf.button == KeypadEntry.FIVE
    mark = await serializer.deserialize(json.dumps({"event": "mark", "mark": {"name": "utterance-1"}}))
    assert isinstance(mark, InputTransportMessageFrame) and mark.message["mark"] == "utterance-1"
    assert await serializer.deserialize(json.dumps({"event": "connected", "protocol": "Call"})) is None
    assert not serializer.stopped
    assert await serializer.deserialize(json.dumps({"event": "stop", "stop": {}})) is None
    assert serializer.stopped
    assert sum(serializer.rejected.values()) == 0
    assert json.loads(await serializer.serialize(InterruptionFrame())) == {"event": "clear", "streamSid": "MZ1"}


@pytest.mark.parametrize(("message", "reason"), [pytest.param(m, r, id=i) for i, m, r in MALFORMED])
async def test_the_serializer_drops_malformed_messages(message, reason):
    serializer = await _serializer()
    for _ in range(3):
        assert await serializer.deserialize(message) is None
    assert serializer.rejected == {reason: 3}


CRAFTED = [
    pytest.param(json.dumps({"event": ["media"]}), id="list-event"),
    pytest.param(json.dumps({"event": {"name": "media"}}), id="object-event"),
    pytest.param("[" * 20_000 + "]" * 20_000, id="nested-json"),
]


@pytest.mark.parametrize("message", CRAFTED)
async def test_the_serializer_drops_crafted_messages(message):
    serializer = await _serializer()
    assert await serializer.deserialize(message) is None
    assert sum(serializer.rejected.values()) == 1


async def test_playout_marks_follow_each_utterance():
    audio = TTSAudioRawFrame(audio=b"\x00" * 320, sample_rate=8000, num_channels=1)
    echo = InputTransportMessageFrame(message={"mark": "utterance-1", "at": 123.0})
    down, _ = await run_test(
        PlayoutMarks("MZ1"),
        frames_to_send=[TTSStartedFrame(), audio, TTSStoppedFrame(), TTSStartedFrame(), TTSStoppedFrame(), echo],
    )
    sent = [f.message for f in down if isinstance(f, OutputTransportMessageFrame)]
    assert sent == [{"event": "mark", "streamSid": "MZ1", "mark": {"name": f"utterance-{i}"}} for i in (1, 2)]
    kinds = [type(f) for f in down]
    assert kinds.index(TTSStoppedFrame) + 1 == kinds.index(OutputTransportMessageFrame)  # right after the audio
    assert down[-1] is echo  # an echo passes on to whatever follows it


async def _open_call(running, **kwargs):
    sid = call_sid()
    token = await answer_call(running, sid)
    return MediaStreamsCaller(running.ws, token=token, call=sid, **kwargs)


@pytest.mark.parametrize(("message", "reason"), [pytest.param(m, r, id=i) for i, m, r in MALFORMED])
async def test_a_malformed_message_is_dropped_and_no_call_is_affected(light_server, message, reason):
    running = light_server
    async with await _open_call(running) as good, Line(good) as good_line:
        async with await _open_call(running) as bad, Line(bad) as bad_line:
            await hears_back(good_line, since=time.monotonic())
            await hears_back(bad_line, since=time.monotonic())
            record = running.calls.calls[bad.call_sid]

            await bad.send_raw(message)
            sent = time.monotonic()
            await wait_until(lambda: record.serializer.rejected[reason], 5, f"the server to drop it ({reason})")
            await hears_back(bad_line, since=sent)  # the malformed call goes on
            await hears_back(good_line, since=sent)  # and the other one never noticed
            assert set(running.calls.calls) == {good.call_sid, bad.call_sid}
            assert (await health(running))["active_sessions"] == 2
            assert sum(running.calls.calls[good.call_sid].serializer.rejected.values()) == 0
    await wait_until(lambda: not running.calls.calls, 10, "both calls to end")


@pytest.mark.parametrize("message", CRAFTED)
async def test_a_crafted_message_does_not_end_the_call(light_server, api, message):
    running = light_server
    async with await _open_call(running) as good, Line(good) as good_line:
        async with await _open_call(running) as bad, Line(bad) as bad_line:
            await hears_back(bad_line, since=time.monotonic())
            await bad.send_raw(message)
            sent = time.monotonic()
            await hears_back(good_line, since=sent)  # passes: the calls are separate
            assert not api.matching(hang_ups(bad.call_sid))
            await hears_back(bad_line, since=sent)  # fails: the call was ended, and the phone hung up


async def test_a_frame_over_the_servers_limit_closes_only_that_call(light_server):
    running = light_server
    async with await _open_call(running) as good, Line(good) as good_line:
        async with await _open_call(running) as bad, Line(bad):
            await hears_back(good_line, since=time.monotonic())
            await bad.send_raw(_media("A" * 300_000))  # over `vivavoce serve`'s ws_max_size (256 KiB)
            sent = time.monotonic()
            await bad.wait_closed(10)
            assert bad.close_code == 1009  # message too big: closed cleanly by uvicorn
            await hears_back(good_line, since=sent)
            await wait_until(lambda: set(running.calls.calls) == {good.call_sid}, 10, "only the bad call to end")
            assert (await health(running))["active_sessions"] == 1


@pytest.mark.parametrize(
    "before_start",
    [
        pytest.param([_media(base64.b64encode(b"\xff" * FRAME_BYTES).decode())] * 3, id="media-before-start"),
        pytest.param(
            ["{not json", "[]", json.dumps({"event": "bogus"}), json.dumps({"event": "mark"})],
            id="garbage-before-start",
        ),
        pytest.param([b"\x00\x01binary", "[" * 20_000], id="binary-and-nested-json-before-start"),
    ],
)
async def test_messages_before_start_are_ignored_and_the_handshake_succeeds(light_server, built, before_start):
    running = light_server
    async with await _open_call(running) as good, Line(good) as good_line:
        await hears_back(good_line, since=time.monotonic())
        async with await _open_call(running, before_start=before_start) as early, Line(early) as line:
            await hears_back(line, since=time.monotonic())
            assert set(running.calls.calls) == {good.call_sid, early.call_sid}
            await hears_back(good_line, since=time.monotonic())
    assert len(built) == 2


async def test_each_call_hears_only_itself(light_server):
    """Two calls at once, one speaking a loud tone, one silent: the silent one gets silence back."""
    running = light_server
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(8000 * 2) / 8000)).astype(np.int16)
    async with await _open_call(running) as loud, Line(loud) as loud_line:
        async with await _open_call(running) as quiet, Line(quiet) as quiet_line:
            await hears_back(quiet_line, since=time.monotonic())
            _, said = await loud_line.say(tone)
            await hears_back(loud_line, since=said)
            await hears_back(quiet_line, since=said)
    loud_rms = np.sqrt(np.mean(loud.received.pcm().astype(np.float64) ** 2))
    quiet_peak = np.max(np.abs(quiet.received.pcm().astype(np.int32)))
    assert loud_rms > 1000  # its own tone came back
    assert quiet_peak < 100  # nothing of the other call


# --- REST tools against a stand-in for Twilio's API ----------------------------------------------------------------


async def test_transfer_redirects_the_call_with_dial_twiml(api):
    sid = call_sid()
    control = TwilioCallControl(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        call_sid=sid,
        api_base_url=api.url + "/",
        transfer_to="+15557654321",
    )
    await control.transfer()
    await control.transfer("+15550001111")

    first, second = api.requests
    for request in (first, second):
        assert request.method == "POST"
        assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid}.json"
        assert request.auth == (ACCOUNT_SID, AUTH_TOKEN)
        assert "Status" not in request.form
    assert re.search(r"<Response><Dial>\+15557654321</Dial></Response>", first.form["Twiml"]), first.form
    assert "<Dial>+15550001111</Dial>" in second.form["Twiml"]


async def test_transfer_without_a_number_fails_before_any_request(api):
    control = TwilioCallControl(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, call_sid=call_sid(), api_base_url=api.url
    )
    with pytest.raises(ValueError, match="transfer_to"):
        await control.transfer()
    assert api.requests == []


async def test_when_the_bots_pipeline_ends_the_phone_call_is_completed(light_server, built, api):
    running = light_server
    async with await _open_call(running) as caller, Line(caller) as line:
        await hears_back(line, since=time.monotonic())
        assert api.requests == []
        (conversation,) = built
        await conversation.worker.queue_frame(EndFrame())
        request = await api.wait_for(hang_ups(caller.call_sid), 10)
        assert request.auth == (ACCOUNT_SID, AUTH_TOKEN)
        await caller.wait_closed(10)
        assert caller.close_code == 1000
    await wait_until(lambda: not running.calls.calls, 10, "the call to end")
    assert len(api.matching(hang_ups(caller.call_sid))) == 1


def test_cli_call_places_an_outbound_call_fetching_twiml_from_the_server(tmp_path, api):
    from vivavoce.cli import app

    bot_file = embedded_bot_file(tmp_path, api_base_url=api.url)
    result = CliRunner().invoke(app, ["call", str(bot_file), "--to", "+15551234567", "--from", "+15557654321"])

    assert result.exit_code == 0, result.output
    (request,) = api.requests
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    assert request.auth == (ACCOUNT_SID, AUTH_TOKEN)
    assert request.form["To"] == "+15551234567"
    assert request.form["From"] == "+15557654321"
    assert request.form["Url"] == "https://example.test/twilio/voice"
    assert request.form.get("Method") == "POST"
    assert "calling +15551234567: CA" in result.output


def test_cli_call_says_what_is_missing(tmp_path, api):
    from vivavoce.cli import app

    bot_file = embedded_bot_file(tmp_path, api_base_url=api.url)
    result = CliRunner().invoke(app, ["call", str(bot_file), "--to", "+15551234567"])
    assert result.exit_code == 2
    assert "--from" in result.output
    result = CliRunner().invoke(app, ["call", str(REPO / "bots" / "local.yaml"), "--to", "+15551234567"])
    assert result.exit_code == 2
    assert "not twilio" in result.output
    assert api.requests == []


# --- DTMF ----------------------------------------------------------------------------------------------------------


async def test_dtmf_digits_reach_the_llm_context(light_bot, built):
    log = FrameLog(TranscriptionFrame)
    async with serving(observed_app(light_bot, log)) as running:
        async with await _open_call(running) as caller, Line(caller) as line:
            await hears_back(line, since=time.monotonic())
            (conversation,) = built
            for digit in "12#":
                await caller.send_dtmf(digit)
            await caller.send_raw(json.dumps({"event": "dtmf", "dtmf": {"digit": "x"}}))  # no such key: ignored

            def texts() -> list:
                return [m.get("content") for m in conversation.context.get_messages() if m.get("role") == "user"]

            await wait_until(lambda: any("DTMF: 12" in str(t) for t in texts()), 10, "the digits in the context")
            assert texts() == ["DTMF: 12#"]
            assert [f.text for _, f in log.of(TranscriptionFrame)] == ["DTMF: 12#"]
            assert log.records[0].call_sid == caller.call_sid  # the observers hook got this call's record
            await hears_back(line, since=time.monotonic())  # the call goes on


async def test_dtmf_digits_without_pound_are_flushed_after_a_pause(light_server, built):
    async with await _open_call(light_server) as caller, Line(caller) as line:
        await hears_back(line, since=time.monotonic())
        (conversation,) = built
        for digit in "34":
            await caller.send_dtmf(digit)

        def users() -> list:
            return [m.get("content") for m in conversation.context.get_messages() if m.get("role") == "user"]

        await wait_until(lambda: users(), 10, "the digits in the context")
        assert users() == ["DTMF: 34"]


# --- End to end with the embedded models ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_models():
    from vivavoce.builder import load_models

    load_models(load_bot(TWILIO_YAML, environ=twilio_environ()))


@pytest.fixture(scope="module")
def phrases():
    """The bundled recording's phrases ("Ever tried.", "Ever failed.", "No matter."...) at 8 kHz, as on a phone."""
    from pipecat.audio.utils import create_file_resampler

    from vivavoce.packaged_models import speech_sample
    from vivavoce.samples import find_phrases
    from vivavoce.wav import read_wav

    source = read_wav(speech_sample())
    resampler = create_file_resampler()

    async def to_8k(pcm):
        return np.frombuffer(await resampler.resample(pcm.tobytes(), 16000, 8000), dtype=np.int16)

    return [asyncio.run(to_8k(source.pcm[p.start : p.end])) for p in find_phrases(source.pcm, source.sample_rate)]


async def _transcribe(mulaw: bytes) -> str:
    """What faster-whisper (tiny.en, the bot's own STT model) hears in the caller's received audio."""
    from pipecat.audio.utils import create_file_resampler

    from vivavoce.processors.whisper import load_whisper

    pcm_8k = np.frombuffer(audioop.ulaw2lin(mulaw, 2), dtype=np.int16)
    pcm_16k = np.frombuffer(await create_file_resampler().resample(pcm_8k.tobytes(), 8000, 16000), dtype=np.int16)
    model = load_whisper("tiny.en", "cpu", "int8")
    segments, _info = model.transcribe(pcm_16k.astype(np.float32) / 32768, language="en")
    return " ".join(s.text for s in segments).strip()


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) >= 3}


def _speaking_at(log: FrameLog, t: float) -> bool:
    """Whether the bot was speaking at ``t``, from the Bot{Started,Stopped}SpeakingFrames before it."""
    last = [f for at, f in log.frames if at <= t and isinstance(f, (BotStartedSpeakingFrame, BotStoppedSpeakingFrame))]
    return bool(last) and isinstance(last[-1], BotStartedSpeakingFrame)


@pytest.mark.e2e
async def test_a_phone_call_with_the_embedded_bot(embedded_models, phrases, tmp_path, api, built):
    """Greeting, a spoken question, a spoken answer (transcribed back), marks, barge-in, and DTMF."""
    bot = load_bot(embedded_bot_file(tmp_path, api_base_url=api.url), environ=twilio_environ())
    log = FrameLog(BotStartedSpeakingFrame, BotStoppedSpeakingFrame, InterruptionFrame, InputTransportMessageFrame)

    def echoed() -> set[str]:
        """The marks whose echo reached the pipeline."""
        return {f.message["mark"] for _, f in log.of(InputTransportMessageFrame)}

    async with serving(observed_app(bot, log)) as running:
        async with await _open_call(running) as caller, Line(caller) as line:
            await wait_until(lambda: running.calls.calls.get(caller.call_sid), 10, "the call to start")
            (conversation,) = built

            # The greeting plays while the caller is silent, followed by its mark, echoed once it was played.
            await wait_until(lambda: caller.first_event("mark"), 20, "the greeting's mark")
            assert caller.received.frames, "the greeting's audio"
            await wait_until(echoed, 10, "the greeting's mark to be echoed")

            # A question; the answer comes back as media, then its mark.
            _, asked = await line.say(phrases[0])  # "Ever tried."
            await wait_until(lambda: line.media_after(asked), 30, "the bot's answer")
            answered = await wait_until(lambda: caller.first_event("mark", after=asked), 30, "the answer's mark")
            answer_audio = b"".join(f for t, f in caller.received.frames if asked < t <= answered)

            # Barge-in: the caller talks over the next answer as soon as it starts.
            _, asked = await line.say(phrases[1])  # "Ever failed."
            await wait_until(lambda: line.media_after(asked), 30, "the second answer")
            onset, _ = await line.say(phrases[2])  # "No matter."
            # pause_resume (the default): the bot pauses at once (Twilio gets 'clear'), then "No matter"
            # (a stop word) makes it an interruption.
            cleared = await wait_until(
                lambda: caller.first_event("clear", after=onset), 10, "a clear after the barge-in"
            )
            assert _speaking_at(log, cleared), "the bot was speaking when the caller talked over it"
            await wait_until(lambda: [t for t, _ in log.of(InterruptionFrame) if t >= onset], 10, "the interruption")

            # Keypresses become a user turn.
            for digit in "12#":
                await caller.send_dtmf(digit)
            await wait_until(
                lambda: any("DTMF: 12" in str(m.get("content")) for m in conversation.context.get_messages()),
                15,
                "the digits in the context",
            )
            await wait_until(lambda: len(echoed()) >= 2, 10, "the answer's mark to be echoed")

    # Marks: one after each utterance, in order (a mark queued behind interrupted audio is dropped with it),
    # each echoed by the caller once the audio before it played, and the echo reaches the pipeline.
    sent_marks = [m["mark"]["name"] for _, m in caller.events if m.get("event") == "mark"]
    assert sent_marks[:2] == ["utterance-1", "utterance-2"]
    numbers = [int(name.removeprefix("utterance-")) for name in sent_marks]
    assert numbers == sorted(set(numbers)), sent_marks
    assert {"utterance-1", "utterance-2"} <= echoed() <= set(sent_marks)
    received = {m["mark"]["name"]: t for t, m in caller.events if m.get("event") == "mark"}
    assert all(f.message["at"] >= received[f.message["mark"]] for _, f in log.of(InputTransportMessageFrame))

    # What the caller heard is what the bot said.
    said = [m["content"] for m in conversation.context.get_messages() if m.get("role") == "assistant"]
    assert said[0] == bot.spec.greeting
    heard = await _transcribe(answer_audio)
    assert _words(heard), f"no words in the bot's answer: {heard!r}"
    assert _words(heard) & _words(said[1]), (heard, said)


@pytest.mark.e2e
async def test_the_llm_can_transfer_and_end_the_call(embedded_models, tmp_path, api, built):
    """The tools offered to the LLM, called as the LLM calls them (run_function_calls), one per call."""
    bot = load_bot(
        embedded_bot_file(tmp_path, api_base_url=api.url, transfer_to="+15550102030"), environ=twilio_environ()
    )
    async with serving(create_app(bot)) as running:
        for tool in ("transfer_call", "end_call"):
            async with await _open_call(running) as caller, Line(caller):
                await wait_until(lambda: caller.received.frames, 20, "the greeting (the pipeline has started)")
                conversation = built[-1]
                assert [t.name for t in conversation.context.tools.standard_tools] == ["end_call", "transfer_call"]
                llm = next(p for p in conversation.processors.values() if isinstance(p, LLMService))
                await llm.run_function_calls([FunctionCallFromLLM(tool, "tool-1", {}, conversation.context)])
                call_url = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{caller.call_sid}.json"
                if tool == "transfer_call":
                    request = await api.wait_for(
                        lambda r, call_url=call_url: r.path == call_url and "Twiml" in r.form, 10
                    )
                    assert re.search(r"<Response><Dial>\+15550102030</Dial></Response>", request.form["Twiml"])
                else:
                    # The bot first says its reply to the tool's result, then the pipeline ends and hangs up.
                    request = await api.wait_for(hang_ups(caller.call_sid), 60)
                    await caller.wait_closed(10)
                    assert caller.close_code == 1000
                assert request.auth == (ACCOUNT_SID, AUTH_TOKEN)
            await wait_until(lambda: not running.calls.calls, 10, "the call to end")
    assert len(built) == 2
