"""The models (faster-whisper, Smart Turn v3, Silero VAD) and the one thread that runs them for every stream.

Every stream's requests go to one :class:`ModelThread`, in four lanes by urgency: finals of turns that
have ended (a client is waiting), Smart Turn verdicts (they decide when a turn ends), finals prepared at a
pause (the turn may still go on), partials. Each round takes the waiting requests of the most urgent lane
(up to ``max_batch``; a round of finals is topped up with prepared ones) and runs them as one batch: one
Whisper encode of their stacked features, one greedy decode, one cross-attention alignment for the words.
A stream has at most one partial waiting: a newer one replaces its audio, so partials come less often under
load instead of queueing up. Under overload the turns still end (the silence fallback needs no model) and
their finals still come first.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from vivavoce_asr.features import smart_turn_features
from vivavoce_asr.protocol import MODEL_RATE
from vivavoce_asr.vad import SileroVad

# Whisper's windows: an utterance that fits one with 0.5 s to spare is encoded in it, not in 30 s (the
# agent's short-window path, window_secs=10; the encoder's cost grows with the window, and the accuracy
# falls a little: bench/README.md). Less than 0.5 s of padding makes tiny.en repeat itself.
WINDOWS_SECS = (10, 20, 30)
DEFAULT_MIN_WINDOW_SECS = 10
WINDOW_SPARE_SECS = 0.5
FRAMES_PER_SECOND = 100
# Whisper's own rule for "no speech here": both signs together.
NO_SPEECH_PROB = 0.6
NO_SPEECH_LOGPROB = -1.0
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"


@dataclass
class Word:
    """One word of a final, times in seconds from the start of the transcribed audio."""

    word: str
    start: float
    end: float
    confidence: float


@dataclass
class Transcript:
    """What Whisper heard in one stretch of audio."""

    text: str
    confidence: float
    words: list[Word] = field(default_factory=list)


LONGEST_WINDOW_SAMPLES = int((WINDOWS_SECS[-1] - WINDOW_SPARE_SECS) * MODEL_RATE)
"""Audio up to this long is transcribed in one window; longer goes through faster-whisper's long-form path."""


def window_secs(seconds: float, shortest: int = DEFAULT_MIN_WINDOW_SECS) -> int | None:
    """The shortest window (from ``shortest`` s) that holds ``seconds`` of audio with room to spare; None: longer
    than 30 s."""
    return next((w for w in WINDOWS_SECS if w >= shortest and seconds + WINDOW_SPARE_SECS <= w), None)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when CTranslate2 sees a GPU, else ``cpu`` (no torch here)."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class AsrModels:
    """faster-whisper, Smart Turn v3 and Silero VAD, loaded once per process."""

    def __init__(
        self,
        whisper: Path,
        smart_turn: Path,
        vad: Path,
        *,
        name: str,
        device: str = "cpu",
        compute_type: str | None = None,
        threads: int | None = None,
        beam_size: int = 1,
        min_window_secs: int = DEFAULT_MIN_WINDOW_SECS,
    ):
        """Load the models; ``name`` is what ``/health`` reports as the model; ``min_window_secs``: Whisper's
        shortest window (10, 20 or 30: Whisper's standard window for everything)."""
        import onnxruntime as ort
        from faster_whisper import WhisperModel

        self.name = name
        self.device = device
        self.compute_type = compute_type or ("int8" if device == "cpu" else "float16")
        self.threads = threads or os.cpu_count() or 1
        self.beam_size = beam_size
        if min_window_secs not in WINDOWS_SECS:
            raise ValueError(f"the shortest Whisper window is one of {WINDOWS_SECS} s, not {min_window_secs}")
        self.min_window_secs = min_window_secs
        device_kind, _, index = device.partition(":")
        self.whisper = WhisperModel(
            str(whisper),
            device=device_kind,
            device_index=int(index or 0),
            compute_type=self.compute_type,
            cpu_threads=self.threads,
        )
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.smart_turn = ort.InferenceSession(str(smart_turn), sess_options=options)
        self.vad = SileroVad(vad)
        self._tokenizers: dict[str, Any] = {}

    @property
    def languages(self) -> list[str]:
        """Languages the Whisper model transcribes (``["en"]`` for English-only models)."""
        return list(self.whisper.supported_languages)

    def tokenizer(self, language: str) -> Any:
        """faster-whisper's tokenizer for ``language`` (cached)."""
        if language not in self._tokenizers:
            from faster_whisper.tokenizer import Tokenizer

            model = self.whisper
            self._tokenizers[language] = Tokenizer(
                model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
            )
        return self._tokenizers[language]

    def verdicts(self, audios: list[np.ndarray]) -> list[float]:
        """Smart Turn's probability that each turn (16 kHz float32) is finished: one batched run."""
        features = np.stack([smart_turn_features(audio) for audio in audios])
        outputs = self.smart_turn.run(None, {"input_features": features})
        return [float(p) for p in np.asarray(outputs[0]).reshape(-1)]

    def transcribe(self, audios: list[np.ndarray], language: str, *, words: bool) -> list[Transcript]:
        """Transcribe each of ``audios`` (16 kHz float32); batched by window length."""
        results: list[Transcript | None] = [None] * len(audios)
        groups: dict[int | None, list[int]] = {}
        for i, audio in enumerate(audios):
            groups.setdefault(window_secs(len(audio) / MODEL_RATE, self.min_window_secs), []).append(i)
        for window, members in groups.items():
            if window is None:  # longer than one window: faster-whisper's own long-form path
                for i in members:
                    results[i] = self._transcribe_long(audios[i], language, words=words)
                continue
            done = self._transcribe_window([audios[i] for i in members], window, language, words)
            for i, result in zip(members, done, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def _transcribe_window(self, audios: list[np.ndarray], window: int, language: str, words: bool) -> list[Transcript]:
        import ctranslate2
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import merge_punctuations

        model = self.whisper
        tokenizer = self.tokenizer(language)
        frames = window * FRAMES_PER_SECOND
        features = np.stack([pad_or_trim(model.feature_extractor(audio), frames) for audio in audios])
        encoded = model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)))
        longest = max(len(audio) for audio in audios) / MODEL_RATE
        results = model.model.generate(
            encoded,
            [[*tokenizer.sot_sequence, tokenizer.no_timestamps]] * len(audios),
            beam_size=self.beam_size,
            # Speech runs at most ~5 tokens a second; a cap well above that stops runaway repetition.
            max_length=int(12 + 8 * longest),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        transcripts: list[Transcript] = []
        tokens: list[list[int]] = []
        for result in results:
            ids = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
            # CTranslate2's score is the mean log-probability per token; Whisper's average counts the end token.
            avg_logprob = result.scores[0] * len(ids) / (len(ids) + 1) if ids else -math.inf
            silent = not ids or (result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < NO_SPEECH_LOGPROB)
            tokens.append([] if silent else ids)
            text = "" if silent else tokenizer.decode(ids).strip()
            transcripts.append(Transcript(text=text, confidence=0.0 if silent else min(1.0, math.exp(avg_logprob))))
        if words and any(tokens):
            # One alignment for the batch; an item with no words aligns a placeholder token, ignored.
            placeholder = tokenizer.encode(" .")[:1]
            alignments = model.find_alignment(
                tokenizer,
                [ids or placeholder for ids in tokens],
                encoded,
                [min(frames, len(audio) // (MODEL_RATE // FRAMES_PER_SECOND)) for audio in audios],
            )
            for transcript, ids, alignment, audio in zip(transcripts, tokens, alignments, audios, strict=True):
                if not ids:
                    continue
                merge_punctuations(alignment, PREPEND_PUNCTUATION, APPEND_PUNCTUATION)
                transcript.words = _words(alignment, len(audio) / MODEL_RATE)
        return transcripts

    def _transcribe_long(self, audio: np.ndarray, language: str, *, words: bool) -> Transcript:
        segments, _ = self.whisper.transcribe(
            audio,
            language=language,
            beam_size=self.beam_size,
            word_timestamps=words,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        segments = list(segments)
        text = " ".join(s.text.strip() for s in segments).strip()
        logprobs = [s.avg_logprob for s in segments]
        confidence = min(1.0, math.exp(sum(logprobs) / len(logprobs))) if logprobs else 0.0
        found = [
            Word(w.word.strip(), round(w.start, 3), round(w.end, 3), round(w.probability, 3))
            for s in segments
            for w in s.words or ()
            if w.word.strip()
        ]
        return Transcript(text=text, confidence=confidence, words=found)

    def warmup(self) -> None:
        """Pay for lazy initialisation before serving: one verdict, one final with words, one partial."""
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(MODEL_RATE * 2) * 0.01).astype(np.float32)
        self.verdicts([noise])
        self.transcribe([noise], "en" if "en" in self.languages else self.languages[0], words=True)
        self.transcribe([noise], "en" if "en" in self.languages else self.languages[0], words=False)


def _words(alignment: list[dict[str, Any]], seconds: float) -> list[Word]:
    """Words of one alignment, clipped to the audio and kept in order."""
    out: list[Word] = []
    for timing in alignment:
        word = timing["word"].strip()
        if not word:
            continue
        start = min(max(float(timing["start"]), 0.0), seconds)
        end = min(max(float(timing["end"]), start), seconds)
        if out and start < out[-1].end:
            start = out[-1].end
            end = max(end, start)
        out.append(Word(word, round(start, 3), round(end, 3), round(float(timing["probability"]), 3)))
    return out


@dataclass
class Job:
    """One request to the model thread; ``future`` gets a float (verdict) or a :class:`Transcript`."""

    kind: str  # "verdict", "final" or "partial"
    audio: np.ndarray
    language: str = "en"
    end: int = 0  # where the audio ends on the stream's 16 kHz timeline
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class Counters:
    """What the model thread has done (``/health``)."""

    jobs: dict[str, int] = field(default_factory=lambda: {"verdict": 0, "final": 0, "partial": 0})
    batches: dict[str, int] = field(default_factory=lambda: {"verdict": 0, "final": 0, "partial": 0})
    busy_s: float = 0.0
    largest_batch: int = 0


class ModelThread:
    """The one thread that runs the models; jobs from every stream, batched per lane (see the module doc)."""

    LANES = ("final", "verdict", "prepared", "partial")  # most urgent first

    def __init__(self, models: AsrModels, *, max_batch: int = 16):
        """Start the thread over loaded ``models``."""
        self.models = models
        self.max_batch = max(1, max_batch)
        self.counters = Counters()
        self._lanes: dict[str, deque[Job]] = {lane: deque() for lane in self.LANES}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="asr-models", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting to start."""
        with self._cond:
            return sum(len(q) for q in self._lanes.values())

    def submit(self, job: Job, *, prepared: bool = False) -> Job:
        """Queue ``job``; ``prepared``: a final for a turn that may go on (less urgent until :meth:`promote`)."""
        with self._cond:
            self._lanes["prepared" if prepared else job.kind].append(job)
            self._cond.notify()
        return job

    def promote(self, job: Job) -> None:
        """A prepared final's turn has ended: it joins the most urgent lane (if it is still waiting)."""
        with self._cond:
            try:
                self._lanes["prepared"].remove(job)
            except ValueError:
                return  # started, done or cancelled
            self._lanes["final"].append(job)

    def replace_audio(self, job: Job, audio: np.ndarray, end: int) -> bool:
        """Give a job that has not started newer audio; False when it has started (or finished)."""
        with self._cond:
            if job.future.running() or job.future.done():
                return False
            job.audio, job.end = audio, end
            return True

    def stop(self) -> None:
        """Stop after the batch in progress."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _take(self) -> tuple[str, list[Job]] | None:
        with self._cond:
            while not self._stopped and not any(self._lanes.values()):
                self._cond.wait()
            if self._stopped:
                return None
            lane = next(name for name in self.LANES if self._lanes[name])
            # Prepared finals are the same work as finals: they fill a round of finals.
            sources = ("final", "prepared") if lane == "final" else (lane,)
            batch: list[Job] = []
            for source in sources:
                queue = self._lanes[source]
                while queue and len(batch) < self.max_batch:
                    job = queue.popleft()
                    if job.future.set_running_or_notify_cancel():  # False: cancelled while waiting
                        batch.append(job)
            kind = "final" if lane == "prepared" else lane
            return kind, batch

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            kind, batch = taken
            if batch:
                self._run(kind, batch)

    def _run(self, kind: str, batch: list[Job]) -> None:
        started = time.perf_counter()
        try:
            if kind == "verdict":
                results: list[Any] = self.models.verdicts([job.audio for job in batch])
            else:
                results = []
                for language, jobs in _by_language(batch).items():
                    done = self.models.transcribe([job.audio for job in jobs], language, words=kind == "final")
                    results.extend(zip(jobs, done, strict=True))
                order = {id(job): i for i, job in enumerate(batch)}
                results = [r for _, r in sorted(results, key=lambda pair: order[id(pair[0])])]
        except Exception as e:  # the streams get an engine_error; the thread goes on
            logger.exception("{} batch of {} failed", kind, len(batch))
            for job in batch:
                job.future.set_exception(e)
            return
        elapsed = time.perf_counter() - started
        counters = self.counters
        counters.jobs[kind] += len(batch)
        counters.batches[kind] += 1
        counters.busy_s += elapsed
        counters.largest_batch = max(counters.largest_batch, len(batch))
        logger.debug(
            "{} x{} in {:.0f} ms (waited up to {:.0f} ms)",
            kind,
            len(batch),
            elapsed * 1000,
            (started - min(job.submitted for job in batch)) * 1000,
        )
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)


def _by_language(batch: list[Job]) -> dict[str, list[Job]]:
    groups: dict[str, list[Job]] = {}
    for job in batch:
        groups.setdefault(job.language, []).append(job)
    return groups
