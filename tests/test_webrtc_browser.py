"""The playground in real browsers, against `vivavoce serve` in a subprocess.

Headless Chromium, its microphone a WAV of real speech, talks to ``bots/webrtc.yaml`` (the embedded
models). Headless Firefox, whose fake microphone is a tone, connects to ``bots/webrtc_load.yaml`` and
receives the bot's audio stream. Chromium, chromium-driver and firefox-esr are Debian packages installed
by ``make browser`` (``make test`` runs it).
"""

from __future__ import annotations

import pytest

from twilio_support import REPO
from vivavoce.samples import conversation
from vivavoce.testing.browser import chromium, firefox, served, wait_for_page
from vivavoce.wav import write_wav

pytestmark = pytest.mark.e2e
WEBRTC_YAML = REPO / "bots" / "webrtc.yaml"
LOAD_YAML = REPO / "bots" / "webrtc_load.yaml"


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory):
    """Real speech with pauses for the bot to answer ("Ever tried." ... "Ever failed." ...), looped by Chromium."""
    audio = conversation(gap_secs=6.0, lead_secs=2.0)
    path = tmp_path_factory.mktemp("mic") / "conversation.wav"
    write_wav(path, audio.pcm, audio.sample_rate)
    return path


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory):
    """`vivavoce serve bots/webrtc.yaml`, shared by the tests that leave it running."""
    with served(WEBRTC_YAML, log=tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


def loaded(driver, url: str, bot: str = "webrtc") -> None:
    driver.get(url + "/")
    wait_for_page(driver, lambda s: s.get("bot") == bot and s["state"] == "idle", 15, "the page to load")


def test_the_playground_talks_to_the_bot_in_chromium(embedded_server, microphone_wav, tmp_path):
    with chromium(microphone_wav) as driver:
        loaded(driver, embedded_server)
        driver.find_element("id", "talk").click()
        wait_for_page(driver, lambda s: s["state"] == "connected" and s["botReady"], 20, "the session to connect")
        wait_for_page(
            driver,
            lambda s: {"user", "bot"} <= {line["role"] for line in s["transcript"]} and s["turns"],
            90,
            "the user's words, the bot's answer and its latency on the page",
        )
        state = wait_for_page(driver, lambda s: s["stats"]["packetsReceived"] > 100, 20, "the bot's audio")
        driver.save_screenshot(str(tmp_path / "playground.png"))

        # What the person sees: their words and the bot's, the latency table, the audio received.
        user_lines = [e.text for e in driver.find_elements("css selector", "#transcript li.user .text")]
        bot_lines = [e.text for e in driver.find_elements("css selector", "#transcript li.bot .text")]
        assert any(t.strip() for t in user_lines) and any(t.strip() for t in bot_lines), (user_lines, bot_lines)
        first_row = driver.find_elements("css selector", "#latency tbody tr td")
        assert first_row[0].text == "1" and first_row[1].text.isdigit()
        assert state["turns"][0]["voice_to_voice_ms"] > 0
        assert state["stats"]["bytesReceived"] > 0
        assert not state["error"]

        driver.find_element("id", "talk").click()  # hang up
        wait_for_page(driver, lambda s: s["state"] == "idle", 10, "the hang-up")
    assert (tmp_path / "playground.png").stat().st_size > 10_000


def test_the_playground_says_when_the_server_is_down(microphone_wav):
    with chromium(microphone_wav) as driver:
        with served(WEBRTC_YAML) as url:
            loaded(driver, url)
        driver.find_element("id", "talk").click()  # the server has stopped meanwhile
        state = wait_for_page(driver, lambda s: s["state"] == "failed", 15, "the failure to show")
        assert "server is down or unreachable" in state["error"]
        assert driver.find_element("id", "error").text == state["error"]


def test_the_playground_says_when_the_microphone_is_refused(embedded_server, microphone_wav):
    with chromium(microphone_wav, allow_microphone=False) as driver:
        loaded(driver, embedded_server)
        driver.find_element("id", "talk").click()
        state = wait_for_page(driver, lambda s: s["state"] == "failed", 15, "the failure to show")
        assert "Microphone permission was denied" in state["error"]
        assert driver.find_element("id", "error").is_displayed()


def test_the_playground_connects_and_plays_the_bot_in_firefox():
    with served(LOAD_YAML) as url, firefox() as driver:
        loaded(driver, url, "webrtc-load")
        driver.click("talk")
        wait_for_page(driver, lambda s: s["state"] == "connected" and s["botReady"], 20, "the session to connect")
        state = wait_for_page(driver, lambda s: s["stats"]["packetsReceived"] > 100, 20, "the bot's audio stream")
        assert state["stats"]["bytesReceived"] > 0 and not state["error"]
        driver.click("talk")
        wait_for_page(driver, lambda s: s["state"] == "idle", 10, "the hang-up")


def test_firefox_says_when_the_server_stops_and_when_it_is_down():
    with firefox() as driver:
        with served(LOAD_YAML) as url:
            loaded(driver, url, "webrtc-load")
            driver.click("talk")
            wait_for_page(driver, lambda s: s["state"] == "connected" and s["botReady"], 20, "the session to connect")
        # The server shut down with the session live: it said so on the data channel.
        state = wait_for_page(driver, lambda s: s["state"] == "idle" and s["error"], 15, "the end of the session")
        assert "The bot ended the session" in state["error"]
        driver.click("talk")
        state = wait_for_page(driver, lambda s: s["state"] == "failed", 15, "the failure to show")
        assert "server is down or unreachable" in state["error"]
