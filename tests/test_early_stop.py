"""A closing decode that stops early: the rest of the voiced stretch is decoded, not cut away.

Whisper sometimes ends its text in the middle of speech, most often in a long window. Seen on a
generated call as μ-law: the decode that closed a turn stopped 4 s before the voice did, and the
buffer was then cut in the pause after the turn, so those 4 s were never heard again. The backend
here plays that failure on real speech (Silero finds the stretches): every decode of more than
3 s of audio returns words for its first 1.6 s only.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.corpus import speech_dir
from worker.asr import utterance
from worker.asr.audio import decode_file
from worker.asr.contracts import ASRBase
from worker.asr.online import OnlineASRProcessor

pytestmark = pytest.mark.timeout(120)

# two speakers: 0-5.0 s, then 5.6-8.6 s
TWO_SPEAKERS = "09_two_speakers_librispeech_61-70968-0000_then_260-123286-0001.wav"
STEP_SEC = 0.4
STOPS_AFTER_SEC = 1.6


class EarlyStoppingASR(ASRBase):
    """A word every 0.4 s of the request's audio; past 3 s of audio, only the first 1.6 s of them."""

    long_sec = 3.0
    stops_after_sec = STOPS_AFTER_SEC

    def transcribe(self, audio: np.ndarray, init_prompt: str = "") -> list[tuple[float, float, str]]:
        seconds = audio.shape[0] / 16000
        heard = self.stops_after_sec if seconds > self.long_sec else seconds - 0.3
        words = []
        for k in range(int(heard / STEP_SEC)):
            start = k * STEP_SEC
            # named by the audio under it, so decodes of the same buffer agree word for word
            words.append((start, start + 0.3, f" w{int(abs(audio[int(start * 16000)]) * 1e6)}"))
        return words

    def ts_words(self, result: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
        return result

    def segments_end_ts(self, result: list[tuple[float, float, str]]) -> list[float]:
        return [result[-1][1]] if result else []


def stream(audio: np.ndarray, asr: ASRBase | None = None) -> list:
    processor = OnlineASRProcessor(asr or EarlyStoppingASR("en"), vad=True, vac=True)
    processor.init()
    out = []
    for i in range(0, audio.shape[0], 1600):
        processor.insert_audio_chunk(audio[i : i + 1600])
        while processor.is_due():
            out.append(processor.process_iter())
    out.append(processor.finish())
    return [c for c in out if c.words]


def largest_gap(commits: list, start: float, end: float) -> float:
    """The longest stretch of [start, end] that no committed word starts in."""
    times = sorted(w.start for c in commits for w in c.words if start <= w.start <= end)
    edges = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def test_the_voiced_audio_after_a_closing_decode_that_stopped_early_is_decoded_again(monkeypatch):
    audio = decode_file(speech_dir() / TWO_SPEAKERS)
    commits = stream(audio)
    # words all through both turns, though no decode of more than 3 s hears past its first 1.6 s
    assert largest_gap(commits, 0.5, 4.6) < 1.0
    assert largest_gap(commits, 6.0, 8.2) < 1.0
    # the turn's end is marked once, on the commit that closes it, not where a decode stopped
    ends = [c.end for c in commits if c.utterance_end]
    assert len(ends) == 2 and ends[0] > 4.0, ends

    # without the resume the buffer is cut in the pause and the rest of each turn is lost
    monkeypatch.setattr(utterance, "EARLY_STOP_SEC", float("inf"))
    lost = stream(audio)
    assert largest_gap(lost, 0.5, 4.6) >= 2.0


class SentencedASR(EarlyStoppingASR):
    """Past 4 s of audio only the first 3.6 s of words, every third one ending a sentence."""

    long_sec = 4.0
    stops_after_sec = 3.6

    def transcribe(self, audio: np.ndarray, init_prompt: str = "") -> list[tuple[float, float, str]]:
        words = super().transcribe(audio, init_prompt)
        return [(s, e, text + ("." if k % 3 == 2 else "")) for k, (s, e, text) in enumerate(words)]


def test_the_decode_after_an_early_stop_starts_at_the_committed_sentence_before_it_and_commits_nothing_twice(
    monkeypatch,
):
    cuts: list[tuple[float, float, float]] = []
    resume_cut = utterance.UtteranceBuffering._resume_cut

    def spy(self: OnlineASRProcessor, heard: float) -> float:
        cut = resume_cut(self, heard)
        cuts.append((heard, cut, self.buffer_start / self.sample_rate))
        return cut

    monkeypatch.setattr(utterance.UtteranceBuffering, "_resume_cut", spy)
    commits = stream(decode_file(speech_dir() / TWO_SPEAKERS), SentencedASR("en"))
    words = [w for c in commits for w in c.words]

    resumed = [(heard, cut, start) for heard, cut, start in cuts if cut < heard]
    assert resumed, cuts
    starts = {round(w.start - utterance.CONTEXT_LEAD_SEC, 6) for w in words}
    for heard, cut, start in resumed:
        # a sentence start at least RESUME_CONTEXT_SEC before the last word heard, past the old start
        assert round(cut, 6) in starts
        assert start + utterance.RESUME_MIN_SEC <= cut <= heard - utterance.RESUME_CONTEXT_SEC
    # the re-read sentence is not committed again: the committed words run forward in time
    for before, after in itertools.pairwise(words):
        assert after.start >= before.end - 0.05, (before, after)
    assert largest_gap(commits, 0.5, 4.6) < 1.0
