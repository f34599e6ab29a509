"""ConversationWorker: observers get the events they act on, and only those."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import (
    BotSpeakingFrame,
    EndFrame,
    Frame,
    StartFrame,
    TextFrame,
    TTSSpeakFrame,
    UserSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import IdleFrameObserver
from pipecat.pipeline.worker_observer import Proxy
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from vivavoce.conversation_worker import (
    ConversationWorker,
    SelectiveWorkerObserver,
    observed_frame_types,
    observes_processing,
)

DOWN = FrameDirection.DOWNSTREAM


class Forward(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class PushesOnly(BaseObserver):
    def __init__(self) -> None:
        super().__init__(observe_every_push=False)
        self.pushed: list[Frame] = []

    async def on_push_frame(self, data: FramePushed) -> None:
        self.pushed.append(data.frame)


class Everything(PushesOnly):
    def __init__(self) -> None:
        super().__init__()
        self.processed: list[Frame] = []

    async def on_process_frame(self, data: FrameProcessed) -> None:
        self.processed.append(data.frame)


def test_only_observers_that_implement_on_process_frame_observe_processing():
    assert observes_processing(Everything())
    assert not observes_processing(PushesOnly())
    assert not observes_processing(BaseObserver())


async def test_each_observer_gets_what_it_implements():
    pushes, everything = PushesOnly(), Everything()
    worker = ConversationWorker(
        Pipeline([Forward(), Forward()]), observers=[pushes, everything], enable_rtvi=False, idle_timeout_secs=None
    )
    await worker.queue_frames([TextFrame("hello"), EndFrame()])
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()

    said = [f for f in pushes.pushed if isinstance(f, TextFrame)]
    assert [f.text for f in said] == ["hello"]  # first pushes only, as pipecat's proxy does
    assert [f.text for f in everything.pushed if isinstance(f, TextFrame)] == ["hello"]
    # Processed by both Forwards (and the pipeline's own source and sink): the observer that asked sees it.
    assert len([f for f in everything.processed if isinstance(f, TextFrame)]) >= 2


async def test_processing_events_are_queued_only_for_observers_that_implement_them():
    pushes, everything = PushesOnly(), Everything()
    proxy = SelectiveWorkerObserver(observers=[pushes, everything])
    queues = {o: Proxy(queue=asyncio.Queue(), task=None, observer=o) for o in (pushes, everything)}  # type: ignore
    proxy._proxies = queues
    processed = FrameProcessed(processor=Forward(), frame=TextFrame("hi"), direction=DOWN, timestamp=0)
    await proxy.on_process_frame(processed)
    assert proxy._proxies[pushes].queue.qsize() == 0
    assert proxy._proxies[everything].queue.qsize() == 1


def test_the_worker_keeps_the_observers_pipecat_adds():
    worker = ConversationWorker(
        Pipeline([Forward()]),
        observers=[PushesOnly()],
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=30,
    )
    assert isinstance(worker._observer, SelectiveWorkerObserver)
    assert {type(o) for o in worker._observer._observers} == {PushesOnly, IdleFrameObserver}


class TextOnly(PushesOnly):
    observed_frame_types = (TextFrame,)


async def test_an_observer_that_names_its_frame_types_gets_only_their_pushes():
    text_only, everything = TextOnly(), PushesOnly()
    worker = ConversationWorker(
        Pipeline([Forward(), Forward()]), observers=[text_only, everything], enable_rtvi=False, idle_timeout_secs=None
    )
    await worker.queue_frames([TextFrame("hello"), TTSSpeakFrame("more"), TextFrame("again"), EndFrame()])
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()

    assert [f.text for f in text_only.pushed] == ["hello", "again"]
    assert {type(f) for f in everything.pushed} >= {TextFrame, TTSSpeakFrame, EndFrame}


def test_the_idle_observer_acts_on_its_idle_frames_and_the_start():
    worker = ConversationWorker(
        Pipeline([Forward()]), enable_rtvi=False, enable_turn_tracking=False, idle_timeout_secs=30
    )
    (idle,) = worker._observer._observers
    types = observed_frame_types(idle)
    assert types is not None and StartFrame in types and BotSpeakingFrame in types and UserSpeakingFrame in types
    assert observed_frame_types(PushesOnly()) is None
