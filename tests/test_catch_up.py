"""Catch-up: a session that is behind is decoded in merged steps, and loses no word for it.

A decode costs about the same whatever share of its buffer is new, so a worker that decodes every
chunk point of a backlog falls further behind; one that merges the chunk points of a backlog into
longer steps catches up. Points that close something (an utterance end) are never merged.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.corpus import speech_dir
from producer.client import Producer
from tests.worker_helpers import client_for, session_events, synthetic_settings
from worker.asr.audio import decode_file
from worker.asr.contracts import ASRBase
from worker.asr.online import OnlineASRProcessor
from worker.backends.synthetic import encode_words, expected_words, random_words
from worker.metrics import WorkerObserver
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)

# two speakers: 0-5.0 s, then 5.6-8.6 s
TWO_SPEAKERS = "09_two_speakers_librispeech_61-70968-0000_then_260-123286-0001.wav"


class CountingObserver(WorkerObserver):
    def __init__(self) -> None:
        self.calls = 0

    def batch_done(self, size: int, inference_sec: float, audio_sec: float) -> None:
        self.calls += size


def burst(url: str, sid: str, words: list[str], catch_up_step_sec: float) -> tuple[list, int]:
    """Write the whole session at once (a worker that comes to it is far behind); run a burst worker."""
    audio = encode_words(words)
    writer = Producer(url).open(sid, sample_rate=16000, encoding="pcm_s16le")
    for i in range(0, audio.shape[0], 1600):
        writer.send(audio[i : i + 1600])
    writer.close()
    observer = CountingObserver()
    settings = synthetic_settings(url, catch_up_step_sec=catch_up_step_sec)
    Worker(settings, observer=observer).run(burst=True)
    return session_events(client_for(url), sid), observer.calls


def test_a_session_that_is_behind_is_decoded_in_merged_steps_and_commits_every_word_once(redis_url):
    words = random_words(80, seed=7)  # 32 s of audio
    merged, merged_calls = burst(redis_url, "behind-merged", words, 3.0)
    each, each_calls = burst(redis_url, "behind-each", words, 0.0)

    oracle = [(round(s, 3), round(e, 3), t) for s, e, t in expected_words(words)]
    for events in (merged, each):
        got = [(w[0], w[1], w[2]) for e in events if e.TYPE == "segment" for w in e.words]
        assert got == oracle
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # a chunk point per second of audio without merging; steps of up to 3 s with it
    assert each_calls >= 30
    assert merged_calls <= each_calls // 2


class WordPerStepASR(ASRBase):
    """A word every 0.4 s of voiced-looking audio, named by the audio under it (decodes agree)."""

    def __init__(self, lan: str) -> None:
        super().__init__(lan)
        self.calls = 0

    def transcribe(self, audio: np.ndarray, init_prompt: str = "") -> list[tuple[float, float, str]]:
        self.calls += 1
        count = int((audio.shape[0] / 16000 - 0.3) / 0.4)
        return [(k * 0.4, k * 0.4 + 0.3, f" w{int(abs(audio[int(k * 0.4 * 16000)]) * 1e6)}") for k in range(count)]

    def ts_words(self, result: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
        return result

    def segments_end_ts(self, result: list[tuple[float, float, str]]) -> list[float]:
        return [result[-1][1]] if result else []


def stream(audio: np.ndarray, step_sec: float) -> tuple[list, list, int]:
    """Feed 100 ms chunks as a worker with all the audio queued would: merge while it may.

    Returns the commits with words, the audio fed (samples) when each utterance end was
    committed, and the decodes made.
    """
    asr = WordPerStepASR("en")
    processor = OnlineASRProcessor(asr, vad=True, vac=True)
    processor.init()
    commits, closed_at = [], []
    for i in range(0, audio.shape[0], 1600):
        processor.insert_audio_chunk(audio[i : i + 1600])
        if processor.is_due() and not (step_sec and processor.can_defer(step_sec)):
            commits.append(processor.process_iter())
            if commits[-1].utterance_end:
                closed_at.append(i + 1600)
    commits.append(processor.finish())
    return [c for c in commits if c.words], closed_at, asr.calls


def test_merged_chunk_steps_never_move_an_utterance_end_and_take_fewer_decodes():
    audio = decode_file(speech_dir() / TWO_SPEAKERS)
    each, each_closed_at, each_calls = stream(audio, 0.0)
    merged, merged_closed_at, merged_calls = stream(audio, 3.0)
    # the turn change closes the first utterance at the same place, and as soon, merged or not
    ends = [round(c.end, 2) for c in each if c.utterance_end]
    assert [round(c.end, 2) for c in merged if c.utterance_end] == ends
    assert len(ends) == 2 and ends[0] < 5.6
    assert merged_closed_at == each_closed_at and len(each_closed_at) == 1  # the second closes at finish
    assert merged_calls < each_calls
    # words all through both turns either way
    for commits in (each, merged):
        starts = sorted(w.start for c in commits for w in c.words)
        assert starts[0] < 1.0 and starts[-1] > 7.5
        assert max(b - a for a, b in itertools.pairwise(starts)) < 1.5


def test_a_session_that_keeps_up_is_decoded_at_every_chunk_point(redis_url):
    words = random_words(30, seed=3)  # 12 s of audio
    audio = encode_words(words)
    calls = {}
    for step in (3.0, 0.0):
        sid = f"keeps-up-{step:g}"
        writer = Producer(redis_url).open(sid, sample_rate=16000, encoding="pcm_s16le")
        observer = CountingObserver()
        worker = Worker(synthetic_settings(redis_url, catch_up_step_sec=step), observer=observer)
        worker.start()
        try:
            # a worker that keeps up: each 100 ms chunk is read and planned before the next is sent
            for i in range(0, audio.shape[0], 1600):
                writer.send(audio[i : i + 1600])
                worker.run_iteration()
            writer.close()
            for _ in range(100):
                if not worker.run_iteration() and not worker.sessions:
                    break
        finally:
            worker.shutdown()
        events = session_events(client_for(redis_url), sid)
        assert events[-1].TYPE == "session_ended"
        got = [(w[0], w[1], w[2]) for e in events if e.TYPE == "segment" for w in e.words]
        assert got == [(round(s, 3), round(e, 3), t) for s, e, t in expected_words(words)]
        calls[step] = observer.calls
    assert calls[3.0] == calls[0.0] >= 11
