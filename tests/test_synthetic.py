"""The synthetic backend: its encoding is an exact oracle, in one call and streamed."""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass, field

import msgpack
import numpy as np
import pytest

from worker.asr.config import ASRConfig
from worker.asr.contracts import Committed, ModelLoader, Word
from worker.asr.online import MAX_BUFFER_SEC, OnlineASRProcessor
from worker.backends.synthetic import (
    AMPLITUDE,
    FREQS,
    MIN_SILENCE,
    WORDS,
    SyntheticASR,
    SyntheticLoader,
    SyntheticResult,
    encode_words,
    expected_words,
    random_words,
)

pytestmark = pytest.mark.timeout(120)

SR = 16000


# -- helpers -----------------------------------------------------------------------------------


def make_processor(*, rate: int = SR, min_chunk: float = 1.0, trimming: str = "segment") -> OnlineASRProcessor:
    config = ASRConfig(backend="synthetic", min_chunk_size=min_chunk, buffer_trimming=trimming, input_sample_rate=rate)
    proc, _ = SyntheticLoader().load(config)
    assert isinstance(proc, OnlineASRProcessor)
    return proc


def pauses(count: int, seed: int) -> list[float]:
    """Gaps after each word: mostly short, some over a second, a few long silences."""
    rng = random.Random(seed)
    gaps = []
    for _ in range(count):
        r = rng.random()
        if r < 0.004:
            gaps.append(rng.choice([6.0, 35.0]))  # 35 s: past the buffer's hard cap, nothing pending
        elif r < 0.05:
            gaps.append(rng.uniform(1.0, 2.5))
        else:
            gaps.append(rng.choice([0.05, 0.1, 0.1, 0.15, 0.3, 0.6]))
    return gaps


@dataclass
class Run:
    """Everything one streamed pass produced."""

    steps: list[Committed] = field(default_factory=list)  # one per chunk; then the tail, then finish
    snapshots: dict[int, dict] = field(default_factory=dict)  # chunk index -> snapshot after it
    max_buffer: int = 0

    @property
    def words(self) -> list[Word]:
        return [w for step in self.steps for w in step.words]


def chunk_bounds(total: int, chunk: int) -> list[tuple[int, int]]:
    return [(p, min(p + chunk, total)) for p in range(0, total, chunk)]


def stream(
    proc: OnlineASRProcessor,
    audio: np.ndarray,
    chunk: int,
    *,
    first: int = 0,
    snapshot_at: frozenset[int] = frozenset(),
) -> Run:
    """Feed chunks ``first..`` of ``audio``, iterating whenever due; the tail, then finish."""
    run = Run()
    for i, (lo, hi) in enumerate(chunk_bounds(audio.shape[0], chunk)):
        if i < first:
            continue
        proc.insert_audio_chunk(audio[lo:hi])
        run.max_buffer = max(run.max_buffer, proc.audio_buffer.shape[0])
        run.steps.append(proc.process_iter() if proc.is_due() else Committed(None, None, ""))
        if i in snapshot_at:
            run.snapshots[i] = proc.snapshot()
    run.steps.append(proc.process_iter() if proc.unprocessed_sec > 0 else Committed(None, None, ""))
    run.steps.append(proc.finish())
    return run


def assert_oracle(got: list[Word] | list[tuple[float, float, str]], expected, rate: int = SR) -> None:
    """Same words in the same order, each once, with the oracle's times to the sample."""
    got_texts = [w[2] for w in got]
    expected_texts = [w[2] for w in expected]
    assert got_texts == expected_texts
    for g, e in zip(got, expected, strict=True):
        assert round(g[0] * rate) == round(e[0] * rate), (g, e)
        assert round(g[1] * rate) == round(e[1] * rate), (g, e)
        assert math.isclose(g[0], e[0], abs_tol=1e-9) and math.isclose(g[1], e[1], abs_tol=1e-9), (g, e)


# -- encoding and one-shot decoding ------------------------------------------------------------


def test_the_vocabulary_is_64_distinct_words_on_separated_frequencies_below_4_khz():
    assert len(WORDS) == 64 == len(set(WORDS))
    assert all(w.isalpha() and w.islower() for w in WORDS)
    assert FREQS[0] == 400 and np.all(np.diff(FREQS) == 50) and FREQS[-1] < 4000


def test_the_encoding_places_each_tone_on_the_sample_grid_with_strong_edges_and_silence_between():
    words = ["alpha", "zulu", "horse"]
    audio = encode_words(words, word_sec=0.3, gap_sec=0.1, lead_sec=0.05)
    oracle = expected_words(words, word_sec=0.3, gap_sec=0.1, lead_sec=0.05)
    assert audio.dtype == np.float32 and audio.shape == (800 + 3 * (4800 + 1600),)
    assert oracle == [(0.05, 0.35, "alpha"), (0.45, 0.75, "zulu"), (0.85, 1.15, "horse")]
    voiced = np.zeros(audio.shape[0], dtype=bool)
    for start, end, _ in oracle:
        s, e = round(start * SR), round(end * SR)
        voiced[s:e] = True
        assert abs(audio[s]) >= AMPLITUDE / math.sqrt(2) - 1e-6
        assert abs(audio[e - 1]) >= AMPLITUDE / math.sqrt(2) - 1e-6
        assert np.max(np.abs(audio[s:e])) <= AMPLITUDE + 1e-6
    assert not np.any(audio[~voiced])


def test_per_word_gaps_move_the_oracle_times():
    oracle = expected_words(["echo", "golf"], gaps=[2.0, 0.1])
    assert oracle == [(0.1, 0.4, "echo"), (2.4, 2.7, "golf")]
    assert encode_words(["echo", "golf"], gaps=[2.0, 0.1]).shape == (round(2.8 * SR),)


def test_bad_input_to_the_encoder_is_rejected_with_a_reason():
    with pytest.raises(ValueError, match="not in the synthetic vocabulary"):
        encode_words(["alpha", "omega"])
    with pytest.raises(ValueError, match="gap"):
        encode_words(["alpha"], gap_sec=0.0001)
    with pytest.raises(ValueError, match="lead_sec"):
        encode_words(["alpha"], lead_sec=0)
    with pytest.raises(ValueError, match="gaps has 1 entries for 2 words"):
        encode_words(["alpha", "bravo"], gaps=[0.1])


def test_a_whole_utterance_decodes_in_one_call_to_exactly_the_oracle_words_and_times():
    words = random_words(70, seed=1)
    gaps = pauses(70, seed=1)
    audio = encode_words(words, gaps=gaps)
    asr = SyntheticASR()
    result = asr.transcribe(audio, init_prompt="ignored")
    assert isinstance(result, SyntheticResult)
    assert asr.ts_words(result) == expected_words(words, gaps=gaps)  # exact floats: s / 16000
    assert asr.segments_end_ts(result) == [end for _, end, _ in expected_words(words, gaps=gaps)]
    asr.use_vad()  # a no-op
    assert asr.transcribe(audio) == result


def test_every_vocabulary_word_is_recognised_at_16_and_8_khz_and_after_pcm16_rounding():
    words = list(WORDS)
    audio = encode_words(words, gap_sec=0.05)
    pcm16 = (np.round(audio * 32767) / 32767).astype(np.float32)
    assert SyntheticASR().ts_words(SyntheticASR().transcribe(pcm16)) == expected_words(words, gap_sec=0.05)
    proc = make_processor(rate=8000)
    proc.insert_audio_chunk(encode_words(words, sample_rate=8000, gap_sec=0.05))
    proc.process_iter()
    assert_oracle(proc.finish().words, expected_words(words, sample_rate=8000, gap_sec=0.05), rate=8000)


def test_silence_and_an_empty_buffer_hold_no_words():
    asr = SyntheticASR()
    assert asr.ts_words(asr.transcribe(np.zeros(0, dtype=np.float32))) == []
    assert asr.ts_words(asr.transcribe(np.zeros(SR, dtype=np.float32))) == []
    assert asr.segments_end_ts(asr.transcribe(np.zeros(SR, dtype=np.float32))) == []


def test_a_word_cut_by_the_buffer_end_is_left_out_until_it_is_whole():
    audio = encode_words(["delta", "tiger"])  # tiger: samples 8000..12800, then 1600 zeros
    asr = SyntheticASR()
    for end in (8001, 10000, 12799, 12800, 12800 + MIN_SILENCE - 1):
        assert [w[2] for w in asr.ts_words(asr.transcribe(audio[:end]))] == ["delta"], end
    assert asr.ts_words(asr.transcribe(audio[: 12800 + MIN_SILENCE])) == expected_words(["delta", "tiger"])


def test_a_word_whose_start_was_trimmed_away_is_ignored_and_the_rest_is_relative_to_the_buffer():
    audio = encode_words(["delta", "tiger"])  # delta: samples 1600..6400
    asr = SyntheticASR()
    for cut in (1601, 4000, 6399):
        assert [w[2] for w in asr.ts_words(asr.transcribe(audio[cut:]))] == ["tiger"], cut
    assert asr.ts_words(asr.transcribe(audio[1600 - MIN_SILENCE :])) == [
        (MIN_SILENCE / SR, (4800 + MIN_SILENCE) / SR, "delta"),
        ((8000 - 1600 + MIN_SILENCE) / SR, (12800 - 1600 + MIN_SILENCE) / SR, "tiger"),
    ]


def test_random_words_never_repeat_a_sequence_of_up_to_five_words_back_to_back():
    words = random_words(5000, seed=7)
    assert len(words) == 5000 and set(words) <= set(WORDS)
    for n in range(1, 6):
        for i in range(len(words) - 2 * n + 1):
            assert words[i : i + n] != words[i + n : i + 2 * n]
    assert random_words(50, seed=7) == words[:50]


def test_a_30_second_buffer_decodes_in_a_few_milliseconds():
    words = random_words(75, seed=2)
    audio = encode_words(words)
    assert audio.shape[0] >= 30 * SR
    asr = SyntheticASR()
    timings = []
    for _ in range(7):
        t0 = time.perf_counter()
        asr.transcribe(audio)
        timings.append(time.perf_counter() - t0)
    assert statistics.median(timings) < 0.05  # typically ~5 ms; lenient for loaded CI machines


# -- the loader --------------------------------------------------------------------------------


def test_the_loader_wraps_the_backend_in_a_processor_configured_from_the_asr_config():
    loader = SyntheticLoader()
    assert isinstance(loader, ModelLoader)
    config = ASRConfig(
        backend="synthetic", min_chunk_size=0.5, buffer_trimming="sentence", buffer_trimming_sec=10, vac=False
    )
    proc, metadata = loader.load(config)
    assert metadata == {"separator": " ", "sample_rate": SR, "backend": "synthetic"}
    assert isinstance(proc, OnlineASRProcessor) and isinstance(proc.asr, SyntheticASR)
    assert proc.min_chunk_sec == 0.5 and proc.buffer_trimming_way == "sentence"
    assert proc.buffer_trimming_sec == 10 and proc.vad is False and proc.sample_rate == SR
    proc8, metadata8 = loader.load(config, sample_rate=8000)
    assert proc8.sample_rate == 8000 and metadata8["sample_rate"] == 8000 and proc8.asr.grid_rate == 8000
    proc8b, _ = loader.load(config.replace(input_sample_rate=8000))
    assert proc8b.sample_rate == 8000


# -- streaming through LocalAgreement ----------------------------------------------------------


@pytest.mark.parametrize("chunk_sec", [0.02, 0.1, 0.37, 1.0])
def test_streaming_in_chunks_commits_every_oracle_word_exactly_once_with_its_times(chunk_sec):
    words = random_words(150, seed=3)
    gaps = pauses(150, seed=3)
    audio = encode_words(words, gaps=gaps)
    run = stream(make_processor(min_chunk=1.0), audio, round(chunk_sec * SR))
    assert_oracle(run.words, expected_words(words, gaps=gaps))
    assert run.max_buffer <= (MAX_BUFFER_SEC + max(chunk_sec, 1.0)) * SR


@pytest.mark.parametrize(("rate", "trimming"), [(SR, "sentence"), (8000, "segment"), (8000, "sentence")])
def test_streaming_commits_the_oracle_with_sentence_trimming_and_with_8_khz_telephony_audio(rate, trimming):
    words = random_words(150, seed=4)
    gaps = pauses(150, seed=4)
    audio = encode_words(words, sample_rate=rate, gaps=gaps)
    run = stream(make_processor(rate=rate, trimming=trimming), audio, round(0.1 * rate))
    assert_oracle(run.words, expected_words(words, sample_rate=rate, gaps=gaps), rate=rate)


def test_a_ten_minute_stream_commits_thousands_of_words_exactly_and_the_buffer_stays_under_30_s():
    words = random_words(2000, seed=5)
    gaps = [g if g > 30 else g / 2 for g in pauses(2000, seed=5)]  # short words and gaps, 35 s silences
    audio = encode_words(words, word_sec=0.15, gaps=gaps)
    oracle = expected_words(words, word_sec=0.15, gaps=gaps)
    assert 10 * 60 < audio.shape[0] / SR < 15 * 60 and sum(g > 30 for g in gaps) >= 3
    run = stream(make_processor(min_chunk=1.0), audio, round(0.25 * SR))
    assert_oracle(run.words, oracle)
    assert MAX_BUFFER_SEC * SR < run.max_buffer <= 30 * SR  # the silences did reach the hard cap


def test_a_word_said_twice_in_a_row_is_committed_twice():
    # with 1 s iterations "bravo" #1 (0.5-0.8 s) is committed at 2 s and "bravo" #2 (0.9-1.2 s)
    # then heads the next hypothesis, which the dedupe takes for a re-read of the committed one
    words = ["alpha", "bravo", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"]
    audio = encode_words(words)
    assert [w[2] for w in SyntheticASR().ts_words(SyntheticASR().transcribe(audio))] == words  # the backend hears both
    run = stream(make_processor(), audio, round(0.1 * SR))
    assert [w.text for w in run.words] == words


# -- checkpointing -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_sec", [0.1, 0.37])
def test_a_snapshot_restored_into_a_fresh_processor_and_refed_its_audio_continues_identically(chunk_sec):
    words = random_words(300, seed=6)
    gaps = pauses(300, seed=6)
    gaps[150] = 35.0  # a force cut with nothing pending, mid-stream
    audio = encode_words(words, gaps=gaps)
    chunk = round(chunk_sec * SR)
    n_chunks = len(chunk_bounds(audio.shape[0], chunk))
    every = frozenset(range(n_chunks))
    reference = stream(make_processor(), audio, chunk, snapshot_at=every)
    assert_oracle(reference.words, expected_words(words, gaps=gaps))

    sizes = [len(msgpack.packb(s)) for s in reference.snapshots.values()]
    assert max(sizes) < 8 * 1024
    assert reference.max_buffer > MAX_BUFFER_SEC * SR  # the 35 s silence forced a cut

    cuts = sorted({*range(3, n_chunks, n_chunks // 7), n_chunks - 1})
    for cut in cuts:
        snap = msgpack.unpackb(msgpack.packb(reference.snapshots[cut]))
        assert snap["buffer_end"] == chunk_bounds(audio.shape[0], chunk)[cut][1]
        proc = make_processor()
        proc.restore(snap)
        proc.insert_audio_chunk(audio[snap["buffer_start"] : snap["buffer_end"]])
        resumed = stream(proc, audio, chunk, first=cut + 1)
        assert resumed.steps == reference.steps[cut + 1 :], cut
