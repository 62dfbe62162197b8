"""``synthetic``: a deterministic test backend whose transcript is a pure function of the audio.

Fault tests encode a word list as tones, stream it through the worker, and compare what was
committed against an exact oracle (:func:`expected_words`). This docstring is that contract.

Encoding (:func:`encode_words`)
-------------------------------
* :data:`WORDS` is a fixed vocabulary of 64 words; word ``i`` is a tone at
  ``FREQS[i] = 400 + 50 * i`` Hz (400 ... 3550 Hz, all below the 4 kHz Nyquist of 8 kHz audio).
* At rate ``sr`` the audio is, in whole samples: ``round(lead_sec * sr)`` zeros, then for each
  word ``n = round(word_sec * sr)`` samples of ``AMPLITUDE * cos(2 pi f n' / sr + phi)``
  (``n' = 0 .. n-1``, ``AMPLITUDE = 0.5``) followed by ``round(gap * sr)`` zeros, where ``gap`` is
  ``gap_sec`` or the word's entry of ``gaps`` (the gap follows every word, the last one too).
  ``phi`` depends only on the word and ``n``: it makes the first and last samples of a tone at
  least ``AMPLITUDE / sqrt(2)`` in magnitude, so every tone's edges are exact to the sample.
* :func:`expected_words` gives the oracle ``(start, end, text)`` of each word: ``start`` is the
  index of the tone's first sample over ``sr``, ``end`` is one past its last sample over ``sr``.

Decoding (:meth:`SyntheticASR.transcribe`, always 16 kHz)
---------------------------------------------------------
* A sample is voiced when ``|x| > THRESHOLD`` (0.02; ``RESAMPLED_THRESHOLD`` = 0.2 when the
  processor resamples, above the resampling filter's ringing). Voiced samples separated by
  fewer than ``MIN_SILENCE`` (8) unvoiced samples form one run ``[s, e)``: a tone's zero
  crossings do not split it, a gap of 8 or more silent samples (0.5 ms) does.
* A run is a word only when it is whole in the buffer: at least ``MIN_SILENCE`` unvoiced samples
  lie before it *and* after it inside the buffer, and it is at least ``MIN_RUN`` (160 samples,
  10 ms) long. A word cut by the buffer's end is not reported yet (a later, longer buffer
  reports it whole). A word whose start was trimmed away is never reported; the processor trims
  only at committed word ends, or at least 1 s before the buffer's end when no whole word is
  pending, so with tones shorter than 1 s this never drops a word.
* The word is the vocabulary entry whose frequency is nearest the run's spectral peak (its first
  ``NFFT`` samples, zero padded). Its times are ``s / 16000`` and ``e / 16000`` relative to the
  buffer; when the processor's input rate ``grid_rate`` is not 16 kHz they are snapped to that
  rate's sample grid (``floor(s * grid_rate / 16000 + 0.5) / grid_rate``), which recovers the
  oracle exactly at 8 kHz and to within one 16 kHz sample at other rates.
* Every word is its own segment, so buffer trimming can cut behind any committed word.
* The prompt is ignored; ``use_vad`` does nothing.

The oracle holds when every word has at least 8 silent samples before it (``lead_sec`` > 0.5 ms)
and after it (every gap), which :func:`encode_words` checks. Streaming through
``OnlineASRProcessor`` (calling ``process_iter`` whenever ``is_due()``, once more for any
unprocessed tail, then ``finish``) commits exactly the oracle, words and times, each word once,
as long as no 1-5 word sequence is immediately repeated (``a a`` or ``a b a b``): the n-gram
dedupe of ``worker.asr.hypothesis`` drops such a repeat. :func:`random_words` avoids them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.asr.audio import WHISPER_SAMPLE_RATE
from worker.asr.config import ASRConfig
from worker.asr.contracts import ASRBase, ASRProcessor
from worker.asr.online import OnlineASRProcessor

# fmt: off
WORDS: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "red", "orange", "yellow", "green", "blue", "purple", "black", "white", "gray", "brown",
    "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum",
    "cat", "dog", "fox", "owl", "bear", "wolf", "lion", "tiger", "horse",
)
# fmt: on
BASE_HZ = 400.0
STEP_HZ = 50.0
FREQS: tuple[float, ...] = tuple(BASE_HZ + STEP_HZ * i for i in range(len(WORDS)))
AMPLITUDE = 0.5
THRESHOLD = 0.02
#: The threshold for resampled input, above the resampling filter's ringing around each tone.
RESAMPLED_THRESHOLD = 0.2
MIN_SILENCE = 8
MIN_RUN = 160
#: Samples of a run that go into its spectrum (zero padded): 7.8 Hz bins against 50 Hz steps.
NFFT = 2048
SAMPLE_RATE = WHISPER_SAMPLE_RATE

WORD_SEC = 0.3
GAP_SEC = 0.1
LEAD_SEC = 0.1

_INDEX = {w: i for i, w in enumerate(WORDS)}


# -- encoding: the oracle ----------------------------------------------------------------------


def _layout(
    words: Sequence[str],
    sample_rate: int,
    word_sec: float,
    gap_sec: float,
    lead_sec: float,
    gaps: Sequence[float] | None,
) -> tuple[list[tuple[int, int, int]], int]:
    """``(first sample, length, vocabulary index)`` of each tone, and the total length."""
    if gaps is not None and len(gaps) != len(words):
        raise ValueError(f"gaps has {len(gaps)} entries for {len(words)} words")
    n = round(word_sec * sample_rate)
    lead = round(lead_sec * sample_rate)
    if n < MIN_RUN * sample_rate / SAMPLE_RATE:
        raise ValueError(f"word_sec={word_sec} is shorter than {MIN_RUN / SAMPLE_RATE} s")
    if lead < MIN_SILENCE:
        raise ValueError(f"lead_sec={lead_sec} leaves fewer than {MIN_SILENCE} silent samples")
    layout: list[tuple[int, int, int]] = []
    pos = lead
    for k, word in enumerate(words):
        if word not in _INDEX:
            raise ValueError(f"{word!r} is not in the synthetic vocabulary")
        gap = round((gap_sec if gaps is None else gaps[k]) * sample_rate)
        if gap < MIN_SILENCE:
            raise ValueError(f"a gap of {gap} samples is shorter than {MIN_SILENCE}")
        layout.append((pos, n, _INDEX[word]))
        pos += n + gap
    return layout, pos


def _tone(index: int, n: int, sample_rate: int) -> np.ndarray:
    f = FREQS[index]
    theta = 2 * math.pi * f * (n - 1) / sample_rate
    # edges are cos(theta/2) with phi = -theta/2, or +-sin(theta/2) with a quarter turn more
    phi = -theta / 2 if abs(math.cos(theta / 2)) >= abs(math.sin(theta / 2)) else math.pi / 2 - theta / 2
    t = np.arange(n, dtype=np.float64)
    return (AMPLITUDE * np.cos(2 * math.pi * f * t / sample_rate + phi)).astype(np.float32)


def encode_words(
    words: Sequence[str],
    sample_rate: int = SAMPLE_RATE,
    word_sec: float = WORD_SEC,
    gap_sec: float = GAP_SEC,
    lead_sec: float = LEAD_SEC,
    *,
    gaps: Sequence[float] | None = None,
) -> np.ndarray:
    """The audio of ``words`` (float32, mono, ``sample_rate``); see the module docstring."""
    layout, total = _layout(words, sample_rate, word_sec, gap_sec, lead_sec, gaps)
    audio = np.zeros(total, dtype=np.float32)
    tones: dict[int, np.ndarray] = {}
    for start, n, index in layout:
        if index not in tones:
            tones[index] = _tone(index, n, sample_rate)
        audio[start : start + n] = tones[index]
    return audio


def expected_words(
    words: Sequence[str],
    sample_rate: int = SAMPLE_RATE,
    word_sec: float = WORD_SEC,
    gap_sec: float = GAP_SEC,
    lead_sec: float = LEAD_SEC,
    *,
    gaps: Sequence[float] | None = None,
) -> list[tuple[float, float, str]]:
    """The oracle: ``(start, end, text)`` in seconds of each word of :func:`encode_words`."""
    layout, _ = _layout(words, sample_rate, word_sec, gap_sec, lead_sec, gaps)
    return [(start / sample_rate, (start + n) / sample_rate, WORDS[index]) for start, n, index in layout]


def random_words(count: int, seed: int = 0) -> list[str]:
    """``count`` random vocabulary words with no 1-5 word sequence immediately repeated.

    LocalAgreement drops such repeats (its dedupe of Whisper re-reading committed words), so
    these sequences are the ones the oracle holds for exactly.
    """
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        out.append(rng.choice(WORDS))
        if any(out[-2 * n : -n] == out[-n:] for n in range(1, 6) if len(out) >= 2 * n):
            out.pop()
    return out


# -- decoding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticResult:
    """A transcription: words ``(start, end, text)`` and segment ends, seconds in the buffer."""

    words: tuple[tuple[float, float, str], ...] = ()
    segment_ends: tuple[float, ...] = ()


def find_runs(audio: np.ndarray, threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the whole voiced runs of a 16 kHz buffer."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    voiced = np.zeros(x.shape[0] + 2, dtype=np.int8)
    voiced[1:-1] = np.abs(x) > threshold
    edges = np.flatnonzero(np.diff(voiced))  # alternately where a voiced stretch starts and ends
    rises, falls = edges[0::2], edges[1::2]
    if rises.size == 0:
        return rises, falls
    apart = rises[1:] - falls[:-1] >= MIN_SILENCE
    starts = rises[np.concatenate(([True], apart))]
    ends = falls[np.concatenate((apart, [True]))]
    keep = (starts >= MIN_SILENCE) & (x.shape[0] - ends >= MIN_SILENCE) & (ends - starts >= MIN_RUN)
    return starts[keep], ends[keep]


def identify(audio: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[str]:
    """The vocabulary word of each run: nearest frequency to its spectral peak."""
    if starts.size == 0:
        return []
    frames = np.zeros((starts.size, NFFT), dtype=np.float64)
    for row, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        piece = audio[s : min(e, s + NFFT)]
        frames[row, : piece.shape[0]] = piece - piece.mean()
    peaks = np.argmax(np.abs(np.fft.rfft(frames, axis=1)), axis=1)
    hz = peaks * (SAMPLE_RATE / NFFT)
    indices = np.clip(np.rint((hz - BASE_HZ) / STEP_HZ), 0, len(WORDS) - 1).astype(int)
    return [WORDS[i] for i in indices.tolist()]


class SyntheticASR(ASRBase):
    """Decodes :func:`encode_words` tones exactly; ``grid_rate`` is the processor's input rate."""

    sep = " "

    def __init__(self, lan: str = "en", *, grid_rate: int = SAMPLE_RATE, **kwargs: Any) -> None:
        self.grid_rate = int(grid_rate)
        super().__init__(lan, **kwargs)

    def _time(self, sample: int) -> float:
        if self.grid_rate == SAMPLE_RATE:
            return sample / SAMPLE_RATE
        return math.floor(sample * self.grid_rate / SAMPLE_RATE + 0.5) / self.grid_rate

    def transcribe(self, audio: np.ndarray, init_prompt: str = "") -> SyntheticResult:
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        starts, ends = find_runs(x, THRESHOLD if self.grid_rate == SAMPLE_RATE else RESAMPLED_THRESHOLD)
        texts = identify(x, starts, ends)
        words = tuple(
            (self._time(s), self._time(e), text)
            for s, e, text in zip(starts.tolist(), ends.tolist(), texts, strict=True)
        )
        return SyntheticResult(words, tuple(w[1] for w in words))

    def batch_key(self) -> Hashable:
        # stateless: instances on the same sample grid answer alike
        return (SyntheticASR, self.grid_rate)

    def ts_words(self, result: SyntheticResult) -> list[tuple[float, float, str]]:
        return list(result.words)

    def segments_end_ts(self, result: SyntheticResult) -> list[float]:
        return list(result.segment_ends)

    def use_vad(self) -> None:
        """No-op: silence is already silent."""


class SyntheticLoader:
    """``synthetic`` in ``MODEL_LOADERS``; ``vad`` is ignored (the tones need no filter)."""

    def load(self, config: ASRConfig, *, sample_rate: int | None = None) -> tuple[ASRProcessor, dict[str, Any]]:
        rate = int(sample_rate or config.input_sample_rate)
        asr = SyntheticASR(config.lan, grid_rate=rate)
        processor = OnlineASRProcessor.from_config(asr, config.replace(input_sample_rate=rate), vad=False)
        return processor, {"separator": asr.sep, "sample_rate": rate, "backend": "synthetic"}
