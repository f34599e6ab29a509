"""The microphone transport's check: a missing or wrong sound device is a clear error before any model loads."""

from __future__ import annotations

import sys
import types

import pytest

from vivavoce.transports.catalog import LocalTransportConfig
from vivavoce.transports.local import NoSoundDeviceError, check_sound_devices

DEVICES = [
    {"name": "USB mic", "maxInputChannels": 1, "maxOutputChannels": 0},
    {"name": "HDMI", "maxInputChannels": 0, "maxOutputChannels": 2},
]


@pytest.fixture
def devices(monkeypatch):
    """pyaudio, as PortAudio would list ``found`` devices."""
    found: list[dict] = list(DEVICES)

    class PyAudio:
        def get_device_count(self) -> int:
            return len(found)

        def get_device_info_by_index(self, index: int) -> dict:
            return found[index]

        def terminate(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "pyaudio", types.SimpleNamespace(PyAudio=PyAudio))
    return found


def test_the_default_devices_pass(devices):
    check_sound_devices(LocalTransportConfig(kind="local"))
    check_sound_devices(LocalTransportConfig(kind="local", input_device=0, output_device=1))


def test_a_configured_device_that_is_not_there_is_named_with_the_ones_that_are(devices):
    with pytest.raises(NoSoundDeviceError, match=r"microphone device 1 does not exist here; microphones: 0 \(USB"):
        check_sound_devices(LocalTransportConfig(kind="local", input_device=1))
    with pytest.raises(NoSoundDeviceError, match=r"speaker device 5 does not exist here; speakers: 1 \(HDMI\)"):
        check_sound_devices(LocalTransportConfig(kind="local", output_device=5))


def test_a_machine_without_a_microphone_says_so(devices):
    devices.pop(0)
    with pytest.raises(NoSoundDeviceError, match="no microphone found on this machine"):
        check_sound_devices(LocalTransportConfig(kind="local"))
