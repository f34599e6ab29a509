"""Process-wide model store: each model loads once and every session shares it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol, TypeVar

from loguru import logger

T = TypeVar("T")


class LoadListener(Protocol):
    """Told when a model starts and finishes loading (the CLI shows progress with it)."""

    def load_started(self, label: str) -> None: ...

    def load_finished(self, label: str, seconds: float, error: BaseException | None) -> None: ...


class ModelStore:
    """Models keyed by what identifies them (path, device, precision). Thread-safe.

    Loading two different models at once is allowed (start-up loads them in parallel); two sessions
    asking for the same model wait for one load.
    """

    def __init__(self) -> None:
        self._models: dict[Hashable, Any] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self._listeners: list[LoadListener] = []

    def add_listener(self, listener: LoadListener) -> None:
        """Subscribe to load events."""
        self._listeners.append(listener)

    def remove_listener(self, listener: LoadListener) -> None:
        """Unsubscribe from load events."""
        self._listeners.remove(listener)

    def get(self, key: Hashable, loader: Callable[[], T], *, label: str) -> T:
        """The model under ``key``, loading it with ``loader()`` the first time."""
        if key in self._models:
            return self._models[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._models:
                return self._models[key]
            for listener in list(self._listeners):
                listener.load_started(label)
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                model = loader()
            except BaseException as e:
                error = e
                raise
            finally:
                seconds = time.perf_counter() - started
                for listener in list(self._listeners):
                    listener.load_finished(label, seconds, error)
            logger.debug(f"Loaded {label} in {seconds:.1f}s")
            self._models[key] = model
            return model


models = ModelStore()
"""The store every vivavoce service uses."""
