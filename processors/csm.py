"""``CSMTTSService``: Sesame CSM through the vivavoce CSM worker, with the conversation as context.

CSM speaks better when it hears the conversation: every request carries the last turns, the user's
as text plus the audio the user spoke (captured from the pipeline's input audio between the user's
turn start and stop; the text is the user aggregator's ``LLMContextUserTurnFrame``), the bot's as text
plus a reference to the worker's own earlier utterance (the worker keeps its codes, so nothing is
re-encoded). A voice prompt (a reference clip and its transcript) can lead the context.
"""

from __future__ import annotations

import base64
import wave
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    LLMContextUserTurnFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection

from vivavoce.processors.worker_client import WorkerTTSService, connection_settings

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import CSMConfig

BOT_SPEAKER = 0
USER_SPEAKER = 1


def context_turn(text: str, pcm: bytes, sample_rate: int, *, speaker: int) -> dict[str, Any]:
    """A context turn with its audio inline (PCM16 mono, base64), as the worker protocol takes it."""
    return {"speaker": speaker, "text": text, "audio": base64.b64encode(pcm).decode(), "sample_rate": sample_rate}


def load_voice_prompt(path: str, text: str) -> dict[str, Any]:
    """A context turn from a mono PCM16 WAV clip and its transcript."""
    with wave.open(str(Path(path).expanduser())) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: the voice prompt must be a mono 16-bit WAV")
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
    return context_turn(text, pcm, rate, speaker=BOT_SPEAKER)


class CSMTTSService(WorkerTTSService):
    """CSM over the worker protocol; sends the conversation's text and audio as context."""

    def __init__(
        self,
        *,
        speaker: int = BOT_SPEAKER,
        context_turns: int = 4,
        max_user_audio_secs: float = 15.0,
        voice_prompt: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """``context_turns``: how many previous turns each request carries (the worker trims further
        to CSM's window); ``voice_prompt``: a context turn (see ``load_voice_prompt``) sent first."""
        settings = kwargs.pop("settings", None) or self.Settings(model="csm", voice=str(speaker), language=None)
        super().__init__(settings=settings, **kwargs)
        self._speaker = speaker
        self._voice_prompt = voice_prompt
        self._max_user_audio_secs = max_user_audio_secs
        self._turns: deque[dict[str, Any]] = deque(maxlen=context_turns)
        self._bot_audio: dict[str, tuple[bytearray, int]] = {}  # request -> (its audio, rate), for a failover
        self._user_audio = bytearray()
        self._user_rate = 16000
        self._user_text: list[str] = []
        self._capturing = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Capture the user's speech and transcript for the next request's context."""
        await super().process_frame(frame, direction)
        if isinstance(frame, UserStartedSpeakingFrame):
            self._capturing = True
            self._user_audio.clear()
            self._user_text.clear()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._capturing = False
        elif isinstance(frame, InputAudioRawFrame) and self._capturing:
            self._user_rate = frame.sample_rate
            if len(self._user_audio) < self._max_user_audio_secs * frame.sample_rate * 2:
                self._user_audio.extend(frame.audio)
        elif isinstance(frame, LLMContextUserTurnFrame) and frame.text.strip():
            # What the user aggregator wrote to the LLM context: the text that goes with the audio.
            self._user_text.append(frame.text.strip())

    def _close_user_turn(self) -> None:
        if self._user_text and self._user_audio and not self._capturing:
            self._turns.append(
                context_turn(" ".join(self._user_text), bytes(self._user_audio), self._user_rate, speaker=USER_SPEAKER)
            )
            self._user_audio.clear()
            self._user_text.clear()

    def request_fields(self, text: str, request_id: str) -> dict[str, Any]:
        """Speaker and the conversation so far."""
        self._close_user_turn()
        context = ([self._voice_prompt] if self._voice_prompt else []) + list(self._turns)
        return {"speaker": self._speaker, "context": context}

    def on_request_audio(self, request_id: str, pcm: bytes, sample_rate: int) -> None:
        """Keep the bot's audio of the turns in the context: a new worker must get it inline."""
        audio, _rate = self._bot_audio.setdefault(request_id, (bytearray(), sample_rate))
        audio.extend(pcm)

    async def on_request_done(self, request_id: str, text: str, message: dict[str, Any]) -> None:
        """The bot's sentence joins the context, by reference to the worker's own codes."""
        self._turns.append({"speaker": self._speaker, "text": text, "request_id": request_id})
        referenced = {turn.get("request_id") for turn in self._turns}
        self._bot_audio = {rid: audio for rid, audio in self._bot_audio.items() if rid in referenced}

    async def on_worker_changed(self) -> None:
        """The new worker never made the bot's earlier sentences: send their audio inline instead."""
        inline = []
        for turn in self._turns:
            request_id = turn.get("request_id")
            if request_id is None:
                inline.append(turn)
            elif request_id in self._bot_audio:
                audio, rate = self._bot_audio.pop(request_id)
                inline.append(context_turn(turn["text"], bytes(audio), rate, speaker=turn["speaker"]))
        self._turns = deque(inline, maxlen=self._turns.maxlen)


def create(config: CSMConfig, context: BuildContext) -> CSMTTSService:
    """Factory for the ``csm`` kind."""
    prompt = (
        load_voice_prompt(config.voice_prompt_audio, config.voice_prompt_text) if config.voice_prompt_audio else None
    )
    return CSMTTSService(
        **connection_settings(config),
        speaker=config.speaker,
        context_turns=config.context_turns,
        voice_prompt=prompt,
    )
