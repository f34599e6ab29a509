"""pipecat's ``PipelineWorker``, with observers told only about what they observe.

pipecat's ``WorkerObserver`` hands every observer a ``FrameProcessed`` event for each frame that each
processor processes (a queue put, and a wake-up of the observer's task), whether or not the observer
implements ``on_process_frame``. Ours (the turn recorder) and pipecat's idle observer implement only
``on_push_frame``: every 20 ms audio frame of a call cost them a few hand-offs for nothing, ~8 % of a
phone call's CPU (two servers side by side, 25 calls each).
"""

from __future__ import annotations

from typing import Any

from pipecat.observers.base_observer import BaseObserver, FrameProcessed
from pipecat.pipeline.worker import PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver


def observes_processing(observer: BaseObserver) -> bool:
    """Whether ``observer`` implements ``on_process_frame`` (the base class's does nothing)."""
    return type(observer).on_process_frame is not BaseObserver.on_process_frame


class ProcessingAwareWorkerObserver(WorkerObserver):
    """pipecat's observer proxy, sending ``FrameProcessed`` only to observers that implement it."""

    async def on_process_frame(self, data: FrameProcessed) -> None:
        """Queue ``data`` for the observers that observe processing."""
        for proxy in (self._proxies or {}).values():
            if observes_processing(proxy.observer):
                await proxy.queue.put(data)


class ConversationWorker(PipelineWorker):
    """A ``PipelineWorker`` (same arguments) whose observers get only the events they implement."""

    def __init__(self, *args: Any, **kwargs: Any):
        """See :class:`PipelineWorker`."""
        super().__init__(*args, **kwargs)
        # pipecat builds its proxy here with no way to choose another: take over the observers it was
        # given (the idle observer among them) before anything is set up.
        self._observer = ProcessingAwareWorkerObserver(observers=self._observer._observers)
