"""The playground in headless Chromium with a fake microphone playing a WAV, and a bot served in a subprocess.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser``) and selenium (the ``dev`` extra).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(bot_file: Path, *, ready_timeout: float = 180.0, log: Path | None = None) -> Iterator[str]:
    """``vivavoce serve BOT`` on a free port in a subprocess (models load as in production); yields its URL."""
    port = _free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "vivavoce.cli", "serve", str(bot_file), "--port", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"`vivavoce serve {bot_file}` exited with {process.returncode} (log: {log})")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"`vivavoce serve {bot_file}` was not up after {ready_timeout}s (log: {log})")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            out.close()  # type: ignore[union-attr]


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


def page_state(driver: Any) -> dict[str, Any]:
    """The playground's ``window.vivavoce`` (state, transcript, turns, stats, error)."""
    return driver.execute_script("return JSON.parse(JSON.stringify(window.vivavoce || null));") or {}


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
