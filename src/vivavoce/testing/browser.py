"""The playground in headless browsers, and a bot served in a subprocess.

Chromium (selenium and chromium-driver) takes a WAV as its microphone. Firefox is driven over its own
WebDriver BiDi endpoint (no geckodriver: Debian does not package it); its fake microphone is a tone.
Needs Debian's ``chromium``, ``chromium-driver`` and ``firefox-esr`` (``make browser``) and selenium
(the ``dev`` extra).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from vivavoce.testing.processes import free_port, serving, stop

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # we run as root in CI containers
    "--disable-dev-shm-usage",
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1100,1000",
)


class BrowserMissingError(RuntimeError):
    """Chromium or its WebDriver is not installed."""


@contextlib.contextmanager
def served(bot_file: Path, *, ready_timeout: float = 180.0, log: Path | None = None) -> Iterator[str]:
    """``vivavoce serve BOT`` on a free port in a subprocess (models load as in production); yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving(
        [sys.executable, "-m", "vivavoce.cli", "serve", str(bot_file), "--port", str(port)],
        health=f"{url}/health",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        log=log,
        ready_secs=ready_timeout,
        poll_secs=0.2,
        health_timeout=1,
    ):
        yield url


@contextlib.contextmanager
def chromium(microphone_wav: Path, *, allow_microphone: bool = True) -> Iterator[Any]:
    """A headless Chromium WebDriver whose microphone plays ``microphone_wav`` (in a loop).

    ``allow_microphone=False``: the page is refused the microphone, as when a person says no.
    """
    chrome, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chrome or not driver_path:
        raise BrowserMissingError("the browser test needs Debian's chromium and chromium-driver: run `make browser`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in (*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={microphone_wav}"):
        options.add_argument(flag)
    if not allow_microphone:
        options.arguments.remove("--use-fake-ui-for-media-stream")
        options.add_experimental_option("prefs", {"profile.default_content_setting_values.media_stream_mic": 2})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


FIREFOX_PREFS = {
    "media.navigator.streams.fake": True,  # a fake microphone (a tone)
    "media.navigator.permission.disabled": True,  # granted without a prompt
    "media.autoplay.default": 0,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
}


class FirefoxDriver:
    """The few WebDriver calls the tests need (``get``, ``execute_script``, ``click``), over WebDriver BiDi."""

    def __init__(self, websocket: ClientConnection):
        """Drive the first tab of the browser behind ``websocket``."""
        self._ws = websocket
        self._ids = itertools.count(1)
        self._command("session.new", {"capabilities": {}})
        self._context = self._command("browsingContext.getTree", {})["contexts"][0]["context"]

    def _command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        command_id = next(self._ids)
        self._ws.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == command_id:
                if message.get("type") == "error":
                    raise RuntimeError(f"{method}: {message.get('error')}: {message.get('message')}")
                return message["result"]

    def get(self, url: str) -> None:
        """Open ``url`` and wait until it has loaded."""
        self._command("browsingContext.navigate", {"context": self._context, "url": url, "wait": "complete"})

    def execute_script(self, body: str) -> Any:
        """Run a function body (as selenium's ``execute_script``); primitive results only."""
        result = self._command(
            "script.evaluate",
            {"expression": f"(() => {{ {body} }})()", "target": {"context": self._context}, "awaitPromise": True},
        )
        if result.get("type") == "exception":
            raise RuntimeError(f"script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def click(self, element_id: str) -> None:
        """Click the element with this id."""
        self.execute_script(f"document.getElementById({json.dumps(element_id)}).click();")


@contextlib.contextmanager
def firefox() -> Iterator[FirefoxDriver]:
    """Headless Firefox with a fake microphone, driven over WebDriver BiDi."""
    binary = shutil.which("firefox-esr") or shutil.which("firefox")
    if not binary:
        raise BrowserMissingError("the Firefox test needs Debian's firefox-esr: run `make browser`")
    with tempfile.TemporaryDirectory(prefix="vivavoce-firefox-") as profile:
        Path(profile, "user.js").write_text(
            "".join(f'user_pref("{name}", {json.dumps(value)});\n' for name, value in FIREFOX_PREFS.items())
        )
        port = free_port()
        process = subprocess.Popen(
            [binary, "--headless", "--no-remote", "--profile", profile, f"--remote-debugging-port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    websocket = connect(f"ws://127.0.0.1:{port}/session", max_size=None)
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"Firefox did not open its WebDriver BiDi port ({binary})") from None
                    time.sleep(0.1)
            with websocket:
                yield FirefoxDriver(websocket)
        finally:
            stop(process)


def page_state(driver: Any) -> dict[str, Any]:
    """The playground's ``window.vivavoce`` (state, transcript, turns, stats, error)."""
    return json.loads(driver.execute_script("return JSON.stringify(window.vivavoce || null);") or "null") or {}


def wait_for_page(driver: Any, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    """Poll the page's state until ``predicate(state)``; fail with ``what`` and the state after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        state = page_state(driver)
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; page state: {state}")
        time.sleep(0.25)
