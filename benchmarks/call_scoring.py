"""Scoring for the long-call benchmark: pooled WER, a bootstrap over calls, lag percentiles,
and where in a call the errors fall.

Everything is scored as ``benchmarks.corpus.corpus_wer`` scores: Whisper's English normaliser,
then jiwer. Pooled WER is total errors over total reference words, so a long call weighs by
its words, not as one file.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

#: Regions of a call for the error breakdown, in the order a word is assigned to them.
REGIONS = ("first 3 s", "last 3 s", "turn change ±1.5 s", "rest")


@dataclass(frozen=True)
class Score:
    """Word errors (substitutions + deletions + insertions) against ``words`` reference words."""

    errors: int = 0
    words: int = 0

    def __add__(self, other: Score) -> Score:
        return Score(self.errors + other.errors, self.words + other.words)

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else 0.0


@dataclass(frozen=True)
class TimedText:
    """A piece of reference with its times (a ``benchmarks.calls.Turn`` fits)."""

    start: float
    end: float
    text: str


@cache
def _normaliser():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    return " ".join(_normaliser()(text).split())


def score(reference: str, hypothesis: str) -> Score:
    """One stream's errors, as ``corpus_wer`` counts them (pooled over streams it equals it)."""
    import jiwer

    ref = normalise(reference)
    out = jiwer.process_words(ref, normalise(hypothesis))
    return Score(out.substitutions + out.deletions + out.insertions, len(ref.split()))


def pooled(scores: Sequence[Score]) -> Score:
    return sum(scores, Score())


def bootstrap_difference(
    streaming: Sequence[Score], offline: Sequence[Score], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % interval of pooled WER(streaming) − WER(offline), resampling calls with replacement.

    Each resample draws as many calls as there are, pools their errors and reference words,
    and takes the difference; the interval is the 2.5th and 97.5th percentile of those.
    """
    n = len(streaming)
    if n == 0:
        return (0.0, 0.0)
    s_err = np.array([s.errors for s in streaming], float)
    o_err = np.array([s.errors for s in offline], float)
    words = np.array([s.words for s in streaming], float)
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    diff = (s_err[picks].sum(axis=1) - o_err[picks].sum(axis=1)) / np.maximum(words[picks].sum(axis=1), 1)
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return float(lo), float(hi)


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else None


def against_offline(
    streaming: Sequence[Score], offline: Sequence[Score], lags: Sequence[float], busy: float, audio_sec: float
) -> dict[str, Any]:
    """A streaming system's figures on a set of calls: the difference of its pooled WER from
    offline's with the bootstrap interval, commit lag p50/p95, committed words and RTF."""
    lo, hi = bootstrap_difference(streaming, offline)
    return {
        "difference": pooled(streaming).wer - pooled(offline).wer,
        "difference_ci95": [lo, hi],
        "lag_p50": percentile(lags, 50),
        "lag_p95": percentile(lags, 95),
        "committed_words": len(lags),
        "rtf": busy / audio_sec,
    }


def turn_changes(turns: Sequence[tuple[int, float, float]]) -> list[float]:
    """Times where the talker changes: midway between one party's end and the other's start.

    ``turns`` are ``(speaker, start, end)`` in start order.
    """
    changes = []
    for (s0, _, e0), (s1, b1, _) in itertools.pairwise(turns):
        if s0 != s1:
            changes.append((e0 + b1) / 2)
    return changes


def region_of(t: float, seconds: float, changes: Sequence[float]) -> str:
    if t < 3.0:
        return REGIONS[0]
    if t > seconds - 3.0:
        return REGIONS[1]
    if any(abs(t - c) <= 1.5 for c in changes):
        return REGIONS[2]
    return REGIONS[3]


def region_scores(
    phrases: Sequence[TimedText], hypothesis: str, seconds: float, changes: Sequence[float]
) -> dict[str, Score]:
    """Errors per region of the call (approximate: a word's time is interpolated in its phrase).

    Reference words are the normalised words of each phrase, timed evenly across the phrase; an
    inserted word is charged to the reference word it follows. Totals can differ from
    :func:`score` by a word or two where the normaliser joins words across phrases.
    """
    out = {r: Score() for r in REGIONS}
    out.update(scores_by(phrases, hypothesis, lambda t: region_of(t, seconds, changes)))
    return out


def scores_by(phrases: Sequence[TimedText], hypothesis: str, place: Callable[[float], str]) -> dict[str, Score]:
    """Errors and reference words per ``place`` of each reference word's time (see :func:`region_scores`)."""
    import jiwer

    words, times = [], []
    for p in phrases:
        toks = normalise(p.text).split()
        words += toks
        times += [p.start + (i + 0.5) / len(toks) * (p.end - p.start) for i in range(len(toks))]
    out: dict[str, Score] = {}
    if not words:
        return out
    places = [place(t) for t in times]
    for r in places:
        out[r] = out.get(r, Score()) + Score(0, 1)
    alignment = jiwer.process_words(" ".join(words), normalise(hypothesis)).alignments[0]
    for chunk in alignment:
        if chunk.type in ("substitute", "delete"):
            for i in range(chunk.ref_start_idx, chunk.ref_end_idx):
                out[places[i]] += Score(1, 0)
        elif chunk.type == "insert":
            i = min(max(chunk.ref_start_idx - 1, 0), len(words) - 1)
            out[places[i]] += Score(chunk.hyp_end_idx - chunk.hyp_start_idx, 0)
    return out
