"""pipecat's ``PipelineWorker``, whose observers are told only about what they act on.

pipecat's ``WorkerObserver`` queues, for every observer, a ``FrameProcessed`` event for each frame
that each processor processes, and a ``FramePushed`` event for each frame pushed (a queue put and a
wake-up of the observer's task each), whatever the observer does with them. Ours (the turn recorder)
and pipecat's idle observer implement only ``on_push_frame``, for a few frame types, while every call
pushes 50 audio frames a second each way. Sending them only what they act on saves a share of a phone
call's CPU for the processing events, and about as much again for the pushes: measured with
bench/twilio_load.py, two servers side by side; figures in bench/README.md.

An observer names the frame types it acts on in ``observed_frame_types``; without it, it gets every
push, as in pipecat.
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame, StartFrame
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.pipeline.worker import IdleFrameObserver, PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver


def observes_processing(observer: BaseObserver) -> bool:
    """Whether ``observer`` implements ``on_process_frame`` (the base class's does nothing)."""
    return type(observer).on_process_frame is not BaseObserver.on_process_frame


def observed_frame_types(observer: BaseObserver) -> tuple[type[Frame], ...] | None:
    """The frame types whose pushes ``observer`` acts on; None for all."""
    if isinstance(observer, IdleFrameObserver):  # pipecat's, created by the worker itself
        return (StartFrame, *observer._idle_timeout_frames)
    return getattr(observer, "observed_frame_types", None)


class SelectiveWorkerObserver(WorkerObserver):
    """pipecat's observer proxy, queueing for each observer only the events it acts on."""

    def __init__(self, **kwargs: Any):
        """See :class:`WorkerObserver`."""
        super().__init__(**kwargs)
        self._types: dict[BaseObserver, tuple[type[Frame], ...] | None] = {}

    def _acts_on(self, observer: BaseObserver, frame: Frame) -> bool:
        if observer not in self._types:
            self._types[observer] = observed_frame_types(observer)
        types = self._types[observer]
        return types is None or isinstance(frame, types)

    async def on_process_frame(self, data: FrameProcessed) -> None:
        """Queue ``data`` for the observers that observe processing."""
        for proxy in (self._proxies or {}).values():
            if observes_processing(proxy.observer):
                await proxy.queue.put(data)

    async def on_push_frame(self, data: FramePushed) -> None:
        """Queue ``data`` for the observers that act on its frame (a repeated push: if they observe every push)."""
        frame = data.frame
        proxies = [p for p in (self._proxies or {}).values() if self._acts_on(p.observer, frame)]
        if not proxies:
            return
        data.first_push = frame.id not in self._frames_pushed
        if data.first_push:
            self._frames_pushed[frame.id] = frame
        for proxy in proxies:
            if data.first_push or proxy.observer.observe_every_push:
                await proxy.queue.put(data)


class ConversationWorker(PipelineWorker):
    """A ``PipelineWorker`` (same arguments) whose observers get only the events they act on."""

    def __init__(self, *args: Any, **kwargs: Any):
        """See :class:`PipelineWorker`."""
        super().__init__(*args, **kwargs)
        # pipecat builds its proxy here with no way to choose another: take over the observers it was
        # given (the idle observer among them) before anything is set up.
        self._observer = SelectiveWorkerObserver(observers=self._observer._observers)
