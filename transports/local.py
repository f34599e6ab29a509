"""Microphone and speakers through pipecat's ``LocalAudioTransport`` (the optional ``local`` extra).

``vivavoce run`` talks to any bot this way when its own transport has no ``run`` (a phone or browser bot,
tried at the desk); a ``local`` transport section chooses the devices.
"""

from __future__ import annotations

from pipecat.transports.base_transport import BaseTransport

from vivavoce.botfile import Bot
from vivavoce.registry import MissingDependencyError, TransportUnavailableError
from vivavoce.session import Session
from vivavoce.transports.catalog import LocalTransportConfig
from vivavoce.turns import Turn

SPEAKER_SAMPLE_RATE = 24000


class NoSoundDeviceError(TransportUnavailableError):
    """The machine has no usable microphone or speaker."""


def check_sound_devices(config: LocalTransportConfig) -> None:
    """Raise if pyaudio is missing or the machine lacks the microphone or speaker ``config`` names (its
    ``input_device``/``output_device`` index, or any device at all when unset)."""
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
    for what, index, channels in (
        ("microphone", config.input_device, "maxInputChannels"),
        ("speaker", config.output_device, "maxOutputChannels"),
    ):
        usable = [i for i, d in enumerate(devices) if d.get(channels, 0) > 0]
        if not usable:
            raise NoSoundDeviceError(f"no {what} found on this machine: run on a recording with --input WAV")
        if index is not None and index not in usable:
            listed = ", ".join(f"{i} ({devices[i].get('name', '?')})" for i in usable)
            raise NoSoundDeviceError(f"{what} device {index} does not exist here; {what}s: {listed}")


def create_local_transport(config: LocalTransportConfig, *, sample_rate: int) -> BaseTransport:
    """pipecat's ``LocalAudioTransport`` on the default (or configured) devices."""
    check_sound_devices(config)
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
