"""The embedded services through pipecat's own test harness, on the real bundled models."""

from __future__ import annotations

import asyncio
from concurrent.futures import CancelledError

import numpy as np
import pytest
from pipecat.frames.frames import (
    InterruptionFrame,
    LLMContextAssistantTurnFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from vivavoce.packaged_models import speech_sample
from vivavoce.processors.barge_in import content_words
from vivavoce.processors.first_phrase import FirstPhraseTextAggregator, Playout
from vivavoce.processors.piper import SharedPiperTTSService, load_voice
from vivavoce.processors.smollm import LoadedLM, PromptCache, SmolLMLLMService, _window_start, load_packaged
from vivavoce.processors.whisper import (
    SecondReading,
    SharedWhisperSTTService,
    SpeculativeTranscriber,
    Utterance,
    judged,
    load_whisper,
)
from vivavoce.samples import find_phrases
from vivavoce.testing.conversation_eval import split_after_words, stt_segment_after_pause
from vivavoce.testing.real_speech import utterances
from vivavoce.wav import read_wav

SYSTEM = "You are a friendly voice assistant. Answer in one or two short sentences."


async def _aggregate(aggregator, text: str) -> list[str]:
    out = []
    for token in text.split(" "):
        async for piece in aggregator.aggregate(token + " "):
            out.append(piece.text)
    rest = await aggregator.flush()
    return out + ([rest.text] if rest else [])


async def test_first_phrase_goes_to_tts_before_the_sentence_ends():
    aggregator = FirstPhraseTextAggregator(max_words=3, aggregation_type="sentence")
    assert await _aggregate(aggregator, "I think you should never give up. Trying again is how you learn.") == [
        "I think you",
        "should never give up.",
        "Trying again is how you learn.",
    ]
    # Every reply starts with an opening phrase again; a clause break after two words releases it early,
    # a single word before a comma does not.
    assert await _aggregate(aggregator, "Sure thing, my friend. Bye.") == ["Sure thing,", "my friend.", "Bye."]
    assert (await _aggregate(aggregator, "Well, that is fine. Next."))[0] == "Well, that is"
    # A long first sentence goes in growing pieces (3, 6, 12 words), so its rest is ready before the
    # opening phrase has been heard: the reply does not stall after its first words.
    long = "I'm sorry for any confusion you may have had earlier today about the hours and the prices of the shop."
    assert await _aggregate(aggregator, long) == [
        "I'm sorry for",
        "any confusion you may have had",
        "earlier today about the hours and the prices of the shop.",
    ]
    # A piece grows from the words said before it, not from the last limit: after a one-word piece there
    # is half a second of audio to cover the next, so it is short again (12 words here stalled a reply).
    short_then_long = "No worries at all. I'll just have to think of something else that might work better."
    assert await _aggregate(aggregator, short_then_long) == [
        "No worries at",
        "all.",
        "I'll just have to think of",
        "something else that might work better.",
    ]


async def test_the_words_written_so_far_go_to_tts_when_the_audio_ahead_runs_low():
    # A slow LLM: the 12-word piece after "It seems like it would be" took 1.7 s to write while 2.6 s of
    # audio played out, and the reply stalled for a second (bench/conversation.py, the phone pass).
    ahead: list[float | None] = [None]
    aggregator = FirstPhraseTextAggregator(max_words=3, aggregation_type="sentence", audio_ahead=lambda: ahead[0])
    reply = "That's not what you want. It seems like it would be impossible if there wasn't something more."
    pieces = []
    for i, token in enumerate(reply.split(" ")):
        if i == 13:  # "impossible if" written; the audio of the pieces before is nearly heard
            ahead[0] = 0.4
        async for piece in aggregator.aggregate(token + " "):
            pieces.append(piece.text)
            ahead[0] = 3.0  # the new piece's audio is queued
    rest = await aggregator.flush()
    assert pieces + [rest.text] == [
        "That's not what",
        "you want.",
        "It seems like it would be",
        "impossible if there",  # at the next word's end, not at twelve words or the sentence's end
        "wasn't something more.",
    ]
    # Before playback starts (an answer held for the verdict) nothing is known, and nothing changes.
    ahead[0] = None
    held = FirstPhraseTextAggregator(max_words=3, aggregation_type="sentence", audio_ahead=lambda: ahead[0])
    assert (await _aggregate(held, reply))[:3] == ["That's not what", "you want.", "It seems like it would be"]


def test_playout_follows_what_was_produced_and_what_has_been_heard():
    now = [100.0]
    playout = Playout(clock=lambda: now[0])
    playout.produced(1.5)  # synthesised while the answer is held
    assert playout.ahead() is None
    now[0] += 2.0
    playout.started()
    assert playout.ahead() == pytest.approx(1.5)
    now[0] += 1.0
    playout.produced(2.0)  # queued behind the 0.5 s still to play
    assert playout.ahead() == pytest.approx(2.5)
    now[0] += 4.0  # all heard, then a gap
    assert playout.ahead() == 0.0
    playout.produced(1.0)  # after a gap the next piece plays at once
    playout.started()  # the bot starts again after the gap: nothing changes
    assert playout.ahead() == pytest.approx(1.0)
    playout.reset()
    assert playout.ahead() is None


def test_history_window_moves_in_steps_so_the_prompt_prefix_stays_cached():
    starts = [_window_start(count, 8) for count in range(1, 18)]
    assert starts[:8] == [0] * 8
    assert all(count - start <= 8 for count, start in zip(range(1, 18), starts, strict=True))
    assert len(set(starts)) < len(starts) / 2  # moves rarely


@pytest.fixture(scope="module")
def smollm():
    return load_packaged("bfloat16", threads=1)


def test_prompt_cache_gives_the_same_answer_as_no_cache(smollm):
    import torch

    tokenizer, model = smollm.tokenizer, smollm.model
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello there."}]
    cache = PromptCache()
    cache.prefill(smollm, first[:1])
    ids = tokenizer.apply_chat_template(first, add_generation_prompt=True, return_dict=True)["input_ids"]
    kv = cache.prepare(model, ids)
    assert kv.get_seq_length() > 10  # the system prompt was reused
    with torch.inference_mode():
        cached = model.generate(torch.tensor([ids]), past_key_values=kv, max_new_tokens=8, do_sample=False)
        plain = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("said", ["Hello there.", "He was not an ill-disposed young man, was he?"])
def test_a_prompt_read_in_float32_is_answered_as_one_read_in_bfloat16(smollm, said):
    # What a CPU without native bfloat16 does (load_smollm adds the float32 copy there); built by hand here
    # so that every machine checks it.
    import torch

    float32 = load_packaged("float32", threads=1)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": said}]
    ids = smollm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    replies = []
    for lm in (
        LoadedLM(model=smollm.model, tokenizer=smollm.tokenizer),
        LoadedLM(model=smollm.model, tokenizer=smollm.tokenizer, prompt_model=float32.model),
    ):
        cache = PromptCache()
        cache.prefill(lm, messages[:1])
        kv = cache.prepare(lm.model, ids)
        lm.read(ids[kv.get_seq_length() : -1], kv)
        assert kv.get_seq_length() == len(ids) - 1
        assert {layer.keys.dtype for layer in kv.layers} == {torch.bfloat16}  # ready for the bfloat16 model
        with torch.inference_mode():
            replies.append(
                lm.model.generate(torch.tensor([ids]), past_key_values=kv, max_new_tokens=8, do_sample=False)
            )
    assert torch.equal(replies[0], replies[1])


async def test_smollm_streams_a_reply(smollm):
    llm = SmolLMLLMService(lm=smollm, settings=SmolLMLLMService.Settings(system_instruction=SYSTEM))
    context = LLMContext(messages=[{"role": "user", "content": "What is the capital of France?"}])
    down, _ = await run_test(llm, frames_to_send=[LLMContextFrame(context)])
    kinds = [type(f) for f in down]
    assert kinds.index(LLMFullResponseStartFrame) < kinds.index(LLMTextFrame) < kinds.index(LLMFullResponseEndFrame)
    text = "".join(f.text for f in down if isinstance(f, LLMTextFrame))
    assert len(text.split()) >= 3
    assert "*" not in text


# Seven messages fit the window of eight; with the reply and the next question the window moves by four,
# and that turn read the whole window again (the longest prompt read of a conversation).
MOVING_WINDOW = [
    "Hi there.",
    "Hello! How can I help?",
    "What is the weather like?",
    "It is sunny today.",
    "Should I take an umbrella?",
    "No, you will not need one.",
    "Where should I go for a walk?",
]


def _uncached_after(llm: SmolLMLLMService, lm, history: list[dict], reply: str) -> tuple[int, int]:
    """Tokens of the next turn's prompt (``reply``, then a question) the session's cache does not hold,
    and the question's own tokens."""
    llm._reading_ahead.join(timeout=60)
    following = [*history, {"role": "assistant", "content": reply}, {"role": "user", "content": "Thanks."}]
    window = [{"role": "system", "content": SYSTEM}, *following[_window_start(len(following), 8) :]]
    template = lm.tokenizer.apply_chat_template
    prompt = template(window, add_generation_prompt=True, return_dict=True)["input_ids"]
    before_question = template(window[:-1], return_dict=True)["input_ids"]
    uncached = len(prompt) - llm._prompt_cache.prepare(lm.model, prompt).get_seq_length()
    return uncached, len(prompt) - len(before_question)


async def test_the_next_prompt_is_read_ahead_while_the_reply_is_spoken(smollm):
    # Once the reply is generated, before the context has it (the assistant aggregator adds it when it has
    # been spoken, and the user may speak at once), its window is read, with the reply as generated.
    history = [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(MOVING_WINDOW)]
    llm = SmolLMLLMService(lm=smollm, settings=SmolLMLLMService.Settings(system_instruction=SYSTEM, max_tokens=8))
    down, _ = await run_test(llm, frames_to_send=[LLMContextFrame(LLMContext(messages=history))])
    reply = "".join(f.text for f in down if isinstance(f, LLMTextFrame)).strip()
    assert reply and llm._reading_ahead is not None
    uncached, question = _uncached_after(llm, smollm, history, reply)
    assert uncached <= question, (uncached, question)


async def test_the_next_prompt_is_read_again_as_the_context_keeps_the_reply(smollm):
    # The reply was cut short by the user: the context keeps what was heard, and the read ahead is mended
    # from where the two differ.
    history = [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(MOVING_WINDOW)]
    llm = SmolLMLLMService(lm=smollm, settings=SmolLMLLMService.Settings(system_instruction=SYSTEM, max_tokens=8))
    heard = "Try the park by the river."
    await run_test(
        llm,
        frames_to_send=[LLMContextFrame(LLMContext(messages=history)), LLMContextAssistantTurnFrame(heard, "")],
    )
    uncached, question = _uncached_after(llm, smollm, history, heard)
    assert uncached <= question, (uncached, question)


async def test_smollm_stops_generating_on_interruption(smollm):
    llm = SmolLMLLMService(
        lm=smollm,
        settings=SmolLMLLMService.Settings(system_instruction=SYSTEM, max_tokens=200, max_sentences=20),
    )
    context = LLMContext(messages=[{"role": "user", "content": "Tell me a very long story about a dragon."}])
    # 1.5 s: past the prompt and a few tokens on a CPU without native bfloat16 (0.4 s had produced none),
    # far short of 200 tokens on a fast one.
    down, _ = await run_test(
        llm, frames_to_send=[LLMContextFrame(context), SleepFrame(1.5), InterruptionFrame(), SleepFrame(0.5)]
    )
    interrupted = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    assert not any(isinstance(f, LLMTextFrame) for f in down[interrupted + 1 :])
    tokens = sum(isinstance(f, LLMTextFrame) for f in down)
    assert 0 < tokens < 100  # stopped long before max_tokens
    await asyncio.sleep(0)
    assert llm._generation is not None
    llm._generation.join(timeout=2)
    assert not llm._generation.is_alive()


async def test_piper_speaks_the_first_phrase_first():
    tts = SharedPiperTTSService(voice=load_voice("en_US-joe-medium"), voice_name="en_US-joe-medium")
    down, _ = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame("I really think that trying again is how we learn."), SleepFrame(1.0)],
        pipeline_params=PipelineParams(audio_out_sample_rate=16000),
    )
    kinds = [type(f) for f in down]
    assert TTSStartedFrame in kinds and TTSStoppedFrame in kinds
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.sample_rate == 16000 for f in audio)
    seconds = sum(len(f.audio) for f in audio) / 2 / 16000
    assert 1.5 < seconds < 6
    spoken = [f.text for f in down if isinstance(f, TTSTextFrame)]
    assert " ".join(spoken).split()[:3] == ["I", "really", "think"]


@pytest.fixture(scope="module")
def phrases():
    recording = read_wav(speech_sample())
    pcm = recording.pcm.astype(np.float32) / 32768.0
    return [pcm[p.start : p.end] for p in find_phrases(recording.pcm)]


def test_short_window_transcribes_like_the_standard_window(phrases):
    model = load_whisper("tiny.en", "cpu", "int8")
    short, standard = SpeculativeTranscriber(model), SpeculativeTranscriber(model, window_secs=30)
    pad = np.zeros(8000, np.float32)
    for phrase in phrases:
        audio = np.concatenate([phrase, pad])
        fast = short.transcribe(audio, language="en")[0][0].text.strip().lower()
        slow = "".join(s.text for s in standard.transcribe(audio, language="en")[0]).strip().lower()
        assert fast.strip(".,!?") == slow.strip(".,!?"), (fast, slow)
    short.close()
    standard.close()


def test_speculation_is_reused_only_if_nothing_was_said_after_it(phrases):
    transcriber = SpeculativeTranscriber(load_whisper("tiny.en", "cpu", "int8"))
    pad = np.zeros(8000, np.float32)
    first, second = phrases[0], phrases[1]
    # The user paused, then the VAD confirmed the end: more quiet audio, the same speech.
    transcriber.speculate(np.concatenate([first, pad]), language="en")
    quiet = np.full(3200, 1e-4, np.float32)
    text = transcriber.transcribe(np.concatenate([first, quiet, pad]), language="en")[0][0].text
    assert transcriber.reused == 1 and "tried" in text.lower()
    # The user went on talking: the speculation is not used.
    transcriber.speculate(np.concatenate([first, pad]), language="en")
    text = transcriber.transcribe(np.concatenate([first, second, pad]), language="en")[0][0].text
    assert transcriber.reused == 1 and "failed" in text.lower()
    transcriber.close()


class _CountingWhisper:
    """The ctranslate2 model, counting decodes and calling ``on_encoded`` after each encode."""

    def __init__(self, model, on_encoded):
        self._model, self._on_encoded, self.decodes = model, on_encoded, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode(self, *args, **kwargs):
        encoded = self._model.encode(*args, **kwargs)
        self._on_encoded()
        return encoded

    def generate(self, *args, **kwargs):
        self.decodes += 1
        return self._model.generate(*args, **kwargs)


class _WhisperWith:
    """A faster-whisper model whose ctranslate2 model is ``inner``."""

    def __init__(self, model, inner):
        self._model, self.model = model, inner

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_a_speculation_discarded_while_it_is_encoded_is_not_decoded(phrases):
    model = load_whisper("tiny.en", "cpu", "int8")
    user_went_on = []
    counting = _CountingWhisper(model.model, lambda: user_went_on and transcriber.discard())
    transcriber = SpeculativeTranscriber(_WhisperWith(model, counting))
    audio = np.concatenate([phrases[0], np.zeros(8000, np.float32)])
    # The user speaks again while the encoder reads the pause: its decoder must not run.
    user_went_on.append(True)
    dropped = transcriber.speculate(audio, language="en")
    with pytest.raises(CancelledError):
        dropped.result(timeout=60)
    assert counting.decodes == 0
    # A speculation left alone is decoded, and its transcript reused.
    user_went_on.clear()
    transcriber.speculate(audio, language="en")
    text = transcriber.transcribe(audio, language="en")[0][0].text
    assert counting.decodes == 1 and transcriber.reused == 1 and "tried" in text.lower()
    transcriber.close()


@pytest.mark.parametrize("pause_s", [0.7, 1.0])
async def test_the_second_part_of_a_sentence_said_in_two_reaches_the_turn(pause_s):
    # "others call | me mother nature.": read alone, tiny.en writes "Me, Mother Nature." with a no-speech
    # probability of ~0.5, above pipecat's filter (0.4), and the words were lost from the turn
    # (bench/conversation.py). Whisper's own rule keeps words decoded with confidence.
    utterance = next(u for u in utterances() if u.id == "f5-nature-2")
    first, second = split_after_words(utterance, [2])
    service = SharedWhisperSTTService(settings=SharedWhisperSTTService.Settings(model="tiny.en", language="en"))
    service._load()
    segment = stt_segment_after_pause(first.pcm, second.pcm, pause_s)
    frames = [f async for f in service.run_stt(segment.tobytes())]
    said = " ".join(f.text for f in frames if isinstance(f, TranscriptionFrame)).lower()
    assert "mother" in said and "nature" in said, said
    # What Whisper decodes with little confidence, or without a word, is still dropped.
    rng = np.random.default_rng(0)
    for quiet in (np.zeros(16000, np.int16), rng.normal(0, 300, 24000).astype(np.int16)):
        assert not [f async for f in service.run_stt(quiet.tobytes()) if isinstance(f, TranscriptionFrame)]
    await service.cleanup()


def test_whisper_rule_keeps_only_confident_words():
    kept = judged(Utterance(text=" Me, Mother Nature.", no_speech_prob=0.51, avg_logprob=-0.25))
    assert kept.no_speech_prob == 0.0 and kept.text == " Me, Mother Nature."
    for unsure in (Utterance(" You", 0.95, avg_logprob=-1.86), Utterance(" .", 0.94, avg_logprob=-0.98)):
        assert judged(unsure) == unsure


async def test_a_short_utterance_carries_a_second_reading_that_hears_a_hum_as_a_hum():
    from bargein_support import backchannel

    service = SharedWhisperSTTService(settings=SharedWhisperSTTService.Settings(model="tiny.en", language="en"))
    service._load()
    hum, words = backchannel("Mm-hm."), backchannel("Try again.")
    for lead_secs in (0.1, 0.25, 0.4):
        lead, tail = np.zeros(int(lead_secs * 16000), np.int16), np.zeros(3200, np.int16)
        readings = {}
        for name, pcm in (("hum", hum), ("words", words)):
            frames = [f async for f in service.run_stt(np.concatenate([lead, pcm, tail]).tobytes())]
            (said,) = [f for f in frames if isinstance(f, TranscriptionFrame)]
            assert isinstance(said.result, SecondReading)
            readings[name] = await said.result.as_backchannel()
        # Primed to expect an acknowledgement, tiny.en writes the hum as one (read plainly, it often
        # writes words: "and then make them"); real words stay words.
        assert len(content_words(readings["hum"])) < 2, readings
        assert "again" in readings["words"].lower() and len(content_words(readings["words"])) >= 2, readings
    await service.cleanup()
