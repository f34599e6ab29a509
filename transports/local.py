"""Microphone and speakers through pipecat's ``LocalAudioTransport`` (the optional ``local`` extra).

``vivavoce run`` talks to any bot this way when its own transport has no ``run`` (a phone or browser bot,
tried at the desk); a ``local`` transport section chooses the devices.
"""

from __future__ import annotations

from typing import Any

from pipecat.transports.base_transport import BaseTransport

from vivavoce.botfile import Bot
from vivavoce.registry import MissingDependencyError, TransportUnavailableError
from vivavoce.session import Session
from vivavoce.transports.catalog import LocalTransportConfig
from vivavoce.turns import Turn

SPEAKER_SAMPLE_RATE = 24000


class NoSoundDeviceError(TransportUnavailableError):
    """The machine has no usable microphone or speaker."""


def check_sound_devices(_config: Any = None) -> None:
    """Raise if pyaudio is missing or the machine has no microphone or no speaker."""
    try:
        import pyaudio
    except ModuleNotFoundError as e:
        raise MissingDependencyError(
            f"the microphone needs pyaudio ({e}): pip install 'vivavoce[local]' "
            "(and the PortAudio library), or run on a recording with --input WAV"
        ) from e
    audio = pyaudio.PyAudio()
    try:
        devices = [audio.get_device_info_by_index(i) for i in range(audio.get_device_count())]
    finally:
        audio.terminate()
    has_input = any(d.get("maxInputChannels", 0) > 0 for d in devices)
    has_output = any(d.get("maxOutputChannels", 0) > 0 for d in devices)
    if not (has_input and has_output):
        missing = "microphone" if not has_input else "speaker"
        raise NoSoundDeviceError(f"no {missing} found on this machine: run on a recording with --input WAV")


def create_local_transport(config: LocalTransportConfig, *, sample_rate: int) -> BaseTransport:
    """pipecat's ``LocalAudioTransport`` on the default (or configured) devices."""
    check_sound_devices()
    from pipecat.transports.local.audio import LocalAudioTransport, LocalAudioTransportParams

    return LocalAudioTransport(
        LocalAudioTransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=16000,
            audio_out_sample_rate=sample_rate,
            input_device_index=config.input_device,
            output_device_index=config.output_device,
        )
    )


async def run_with_microphone(bot: Bot) -> list[Turn]:
    """Run until Ctrl-C; returns the turns, timed from the start of the session."""
    config = bot.spec.transport if isinstance(bot.spec.transport, LocalTransportConfig) else None
    transport = create_local_transport(config or LocalTransportConfig(kind="local"), sample_rate=SPEAKER_SAMPLE_RATE)
    session = Session(bot, transport, audio_out_sample_rate=SPEAKER_SAMPLE_RATE, idle_timeout_secs=None)
    return await session.run(handle_sigint=True)
