"""The built-in transports: the keys each accepts in a bot file's ``transport`` section, and how it runs.

Only settings models live here; a transport's implementation is imported when a session runs or a server
starts. A new transport is one module (its implementation) plus one :class:`TransportKind` below, or, from
another package, an entry point in the ``vivavoce.transports`` group.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from vivavoce.registry import TransportConfig, TransportKind


class LocalTransportConfig(TransportConfig):
    """Microphone and speakers through pipecat's LocalAudioTransport (the `local` extra)."""

    kind: Literal["local"]
    input_device: int | None = Field(None, ge=0, description="PyAudio input device index (default device).")
    output_device: int | None = Field(None, ge=0, description="PyAudio output device index (default device).")


class FileTransportConfig(TransportConfig):
    """A WAV file in, a WAV file out, paced in real time (the test harness)."""

    kind: Literal["file"]


class TwilioTransportConfig(TransportConfig):
    """Phone calls through Twilio Media Streams (`vivavoce serve`): 8 kHz mu-law, webhook + WebSocket."""

    kind: Literal["twilio"]
    account_sid: str | None = Field(
        None,
        pattern=r"^AC[0-9a-fA-F]{32}$",
        description="Write ${TWILIO_ACCOUNT_SID}; needed to hang up, transfer and call.",
    )
    auth_token: SecretStr | None = Field(
        None, description="Write ${TWILIO_AUTH_TOKEN}: validates webhook signatures and signs REST calls."
    )
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^/]+",
        description="Where Twilio reaches this server (tunnel or load balancer); --public-url overrides it.",
    )
    from_number: str | None = Field(None, pattern=r"^\+[1-9]\d{6,14}$", description="Caller ID for `vivavoce call`.")
    transfer_to: str | None = Field(
        None, pattern=r"^\+[1-9]\d{6,14}$", description="E.164 number the transfer_call tool dials."
    )
    api_base_url: str | None = Field(
        None, pattern=r"^https?://", description="Twilio REST API base URL (default https://api.twilio.com)."
    )
    stream_token_ttl_secs: int = Field(60, ge=5, le=3600, description="How long a call's stream token is valid.")
    input_chunk_ms: int = Field(
        40,
        ge=20,
        le=200,
        multiple_of=20,
        description="The caller's audio reaches the pipeline in chunks this long (Twilio sends 20 ms frames): "
        "40 costs a call less CPU than 20, for a little more VAD latency (bench/twilio_load.py).",
    )

    @field_validator("from_number", "transfer_to", mode="before")
    @classmethod
    def _unquoted_number(cls, value: object) -> object:
        # YAML reads an unquoted +15550102030 as the integer 15550102030.
        return f"+{value}" if isinstance(value, int) and not isinstance(value, bool) else value


class IceServerConfig(BaseModel):
    """A STUN or TURN server for WebRTC (the browser and the server both use it)."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(
        min_length=1,
        description="stun:HOST:PORT or turn:HOST:PORT?transport=udp|tcp (turns: for TLS); one server, several URLs.",
    )
    username: str | None = Field(None, description="TURN user name.")
    credential: SecretStr | None = Field(None, description="TURN password: write ${TURN_CREDENTIAL}.")

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("urls")
    @classmethod
    def _ice_scheme(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"'{url}' is not an ICE server URL: it starts with stun:, stuns:, turn: or turns:")
        return urls


class WebRTCTransportConfig(TransportConfig):
    """A browser (or any WebRTC peer) through pipecat's SmallWebRTC (`vivavoce serve`): the playground at /."""

    kind: Literal["webrtc"]
    ice_servers: list[IceServerConfig] = Field(
        default_factory=list,
        description="STUN/TURN servers; none is needed on one machine or a LAN. TURN credentials reach the browser.",
    )
    playground: bool = Field(True, description="Serve the web playground at /.")
    max_sessions: int = Field(8, ge=1, le=1000, description="Concurrent sessions; more offers get 503.")


class DailyTransportConfig(TransportConfig):
    """A Daily room through pipecat's DailyTransport (`vivavoce run`; the `daily` extra): the bot joins the room."""

    kind: Literal["daily"]
    room_url: str = Field(
        pattern=r"^https://[A-Za-z0-9.-]+/[A-Za-z0-9_-]+/?$",
        description="The room, https://DOMAIN.daily.co/ROOM: write ${DAILY_ROOM_URL}.",
    )
    token: SecretStr | None = Field(None, description="A meeting token for private rooms: write ${DAILY_TOKEN}.")
    bot_name: str = Field("vivavoce", min_length=1, description="The bot's name in the room.")


BUILTIN_TRANSPORTS = (
    TransportKind(
        name="local",
        config=LocalTransportConfig,
        summary="Microphone and speakers (pipecat's LocalAudioTransport)",
        run="vivavoce.transports.local:run_with_microphone",
        check="vivavoce.transports.local:check_sound_devices",
        install="vivavoce[local]",
    ),
    TransportKind(
        name="file",
        config=FileTransportConfig,
        summary="A WAV in, a WAV out, in real time (`vivavoce run --input`; the test harness)",
    ),
    TransportKind(
        name="twilio",
        config=TwilioTransportConfig,
        summary="Phone calls: Twilio's voice webhook and Media Streams (`vivavoce serve`)",
        serve="vivavoce.transports.twilio_server:serve",
    ),
    TransportKind(
        name="webrtc",
        config=WebRTCTransportConfig,
        summary="Browsers and WebRTC peers through SmallWebRTC, with the playground (`vivavoce serve`)",
        serve="vivavoce.transports.webrtc_server:serve",
    ),
    TransportKind(
        name="daily",
        config=DailyTransportConfig,
        summary="A Daily room: the bot joins it (`vivavoce run`)",
        run="vivavoce.transports.daily:run_in_daily_room",
        install="vivavoce[daily]",
        ready="is joining the Daily room",
    ),
)
"""The transports every installation has."""
