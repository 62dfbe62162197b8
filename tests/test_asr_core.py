"""The streaming core without a real model: contracts, hypothesis buffer, config, registry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc

import msgpack
import numpy as np
import pytest

from worker.asr.config import ASRConfig
from worker.asr.contracts import ASRBase, ASRProcessor, Committed, EconomicalProcessor, EconomyLevel, ModelLoader, Word
from worker.asr.hypothesis import HypothesisBuffer
from worker.asr.online import MAX_BUFFER_SEC, PROMPT_CHARS, OnlineASRProcessor
from worker.asr.utterance import CONTEXT_SPAN_SEC
from worker.backends import registry
from worker.backends.synthetic import SyntheticASR, encode_words, expected_words, random_words
from worker.errors import BackendUnavailableError, ConfigError, ModelIntegrityError, UnknownBackendError

pytestmark = pytest.mark.timeout(300)


def hyp(*words: tuple[float, float, str]) -> list[tuple[float, float, str]]:
    return list(words)


# -- HypothesisBuffer --------------------------------------------------------------------------


def test_text_is_committed_only_once_two_consecutive_hypotheses_agree():
    buf = HypothesisBuffer()
    buf.insert(hyp((0.0, 0.5, "hello"), (0.5, 1.0, "word")), offset=0.0)
    assert buf.flush() == []
    buf.insert(hyp((0.0, 0.5, "hello"), (0.5, 1.0, "world"), (1.0, 1.4, "again")), offset=0.0)
    committed = buf.flush()
    assert [w.text for w in committed] == ["hello"]
    assert buf.last_committed_time == 0.5
    assert [w.text for w in buf.complete()] == ["world", "again"]


def test_the_newest_hypothesis_commits_what_it_shares_with_the_one_before_the_last():
    buf = HypothesisBuffer()
    buf.insert(hyp((0.0, 0.5, "have"), (0.5, 1.0, "you")), offset=0.0)
    assert buf.flush() == []
    # the second decode hears it differently: nothing two consecutive decodes say agrees yet
    buf.insert(hyp((0.0, 0.5, "harm"), (0.5, 1.0, "you"), (1.0, 1.2, "I")), offset=0.0)
    assert buf.flush() == []
    # the third says what the first said: two of the last three decodes agree
    buf.insert(hyp((0.0, 0.5, "have"), (0.5, 1.0, "you"), (1.0, 1.2, "I"), (1.2, 1.6, "want")), offset=0.0)
    assert [w.text for w in buf.flush()] == ["have", "you"]
    assert [w.text for w in buf.complete()] == ["I", "want"]
    # the older hypothesis's copies of committed words never count again
    buf.insert(hyp((0.0, 0.5, "have"), (1.0, 1.2, "I"), (1.2, 1.6, "wanted")), offset=0.0)
    assert [w.text for w in buf.flush()] == ["I"]


def test_the_same_text_a_chunk_apart_is_not_agreement():
    buf = HypothesisBuffer()
    # a degenerate decode pins ",000" to the last 40 ms of a 25 s buffer ...
    buf.insert(hyp((23.0, 23.5, "nine"), (24.96, 25.0, ",000")), 0.0)
    assert buf.flush() == []
    # ... and the next one, a second later, to the last 40 ms of its 26 s buffer
    buf.insert(hyp((23.0, 23.5, "nine"), (25.96, 26.0, ",000")), 0.0)
    committed = buf.flush()
    assert [w.text for w in committed] == ["nine"]
    assert buf.last_committed_time == 23.5  # not 26.0, past the words still to come
    # the word agreed where both decodes place it (alignment jitter is a tenth or two)
    buf.insert(hyp((24.1, 24.6, "seven"), (24.7, 25.0, "seven")), 0.0)
    buf.flush()
    buf.insert(hyp((24.2, 24.6, "seven"), (24.7, 25.1, "seven"), (25.2, 25.6, "three")), 0.0)
    assert [w.text for w in buf.flush()] == ["seven", "seven"]


def test_words_that_differ_only_in_case_and_punctuation_agree_and_commit_as_the_newest_says():
    buf = HypothesisBuffer()
    buf.insert(hyp((0.0, 0.4, " Of"), (0.4, 0.9, " course,"), (1.0, 1.3, " what")), 0.0)
    assert buf.flush() == []
    buf.insert(hyp((0.0, 0.4, " of"), (0.4, 0.9, " course."), (1.0, 1.3, " What"), (1.3, 1.5, " would")), 0.0)
    assert [w.text for w in buf.flush()] == [" of", " course.", " What"]
    buf.insert(hyp((1.3, 1.5, " would"), (1.6, 1.9, " you")), 0.0)
    assert [w.text for w in buf.flush()] == [" would"]


def test_a_reread_ngram_at_the_commit_boundary_is_dropped():
    buf = HypothesisBuffer()
    buf.insert(hyp((0.0, 0.4, "a"), (0.4, 0.8, "b")), 0.0)
    assert buf.flush() == []
    buf.insert(hyp((0.0, 0.4, "a"), (0.4, 0.8, "b"), (0.8, 1.2, "c")), 0.0)
    assert [w.text for w in buf.flush()] == ["a", "b"]
    # the buffer was trimmed at 0.8 s; Whisper re-reads "b" with a time inside the committed span
    buf.insert(hyp((0.0, 0.05, "b"), (0.05, 0.4, "c"), (0.4, 0.7, "d")), offset=0.75)
    assert [w.text for w in buf.new] == ["c", "d"]


def test_a_word_repeated_after_the_commit_point_is_kept():
    buf = HypothesisBuffer()
    buf.insert(hyp((0.0, 0.4, "no")), 0.0)
    assert buf.flush() == []
    buf.insert(hyp((0.0, 0.4, "no"), (0.5, 0.9, "no")), 0.0)
    assert [w.text for w in buf.flush()] == ["no"]
    buf.insert(hyp((0.5, 0.9, "no"), (1.0, 1.3, "thanks")), 0.0)
    assert [w.text for w in buf.new] == ["no", "thanks"]


def test_words_that_end_before_the_last_commit_are_ignored_and_probabilities_survive():
    buf = HypothesisBuffer()
    buf.last_committed_time = 2.0
    buf.insert([(0.5, 1.0, "old"), (2.1, 2.4, "new", 0.75)], 0.0)
    assert buf.new == [Word(2.1, 2.4, "new", 0.75)]


def test_a_hypothesis_that_continues_the_committed_text_is_taken_whole_whatever_its_times():
    buf = HypothesisBuffer()
    buf.insert(hyp((0.0, 0.5, "hello"), (0.5, 1.0, "there")), 0.0)
    buf.flush()
    buf.insert(hyp((0.0, 0.5, "hello"), (0.5, 1.0, "there"), (1.0, 1.3, "again")), 0.0)
    assert [w.text for w in buf.flush()] == ["hello", "there"]
    # a continuation's first word may be aligned a little into the committed span: it is still new,
    # and a word that repeats the last committed one is not taken for a re-read
    buf.insert(hyp((0.95, 1.3, "there"), (1.3, 1.6, "friend")), 0.0, continues=True)
    assert [w.text for w in buf.new] == ["there", "friend"]


def test_a_word_with_enough_audio_after_it_commits_without_agreement_but_never_the_last():
    buf = HypothesisBuffer()
    buf.insert(hyp((0.0, 0.5, "one"), (0.6, 1.0, "two"), (1.1, 1.5, "three")), 0.0)
    buf.flush()
    buf.insert(hyp((0.0, 0.5, "won"), (0.6, 1.0, "two"), (1.1, 1.5, "tree")), 0.0)
    # nothing agrees; the words that end by the deadline commit from the newest hypothesis
    assert [w.text for w in buf.flush(due_before=1.0)] == ["won", "two"]
    buf.insert(hyp((1.1, 1.5, "free")), 0.0)
    assert buf.flush(due_before=9.0) == []  # the last word of a hypothesis always waits


def test_pop_committed_forgets_words_up_to_a_time_and_snapshots_round_trip():
    buf = HypothesisBuffer()
    buf.insert(hyp((0, 1, "x"), (1, 2, "y")), 0.0)
    buf.flush()
    buf.insert(hyp((0, 1, "x"), (1, 2, "y"), (2, 3, "z")), 0.0)
    buf.flush()
    assert [w.text for w in buf.pop_committed(1.0)] == ["x"]
    clone = HypothesisBuffer()
    clone.restore(msgpack.unpackb(msgpack.packb(buf.snapshot())))
    assert clone.snapshot() == buf.snapshot()


# -- OnlineASRProcessor with the synthetic oracle ---------------------------------------------


def test_committed_results_unpack_like_the_guides_triples():
    b, e, t = Committed(1.0, 2.0, "hi", (Word(1.0, 2.0, "hi"),))
    assert (b, e, t) == (1.0, 2.0, "hi")


def test_the_prompt_holds_the_last_committed_word_before_the_buffer():
    proc = OnlineASRProcessor(SyntheticASR(), buffer_trimming=("segment", 2.0), min_chunk_sec=1.0)
    words = random_words(40, seed=3)
    audio = encode_words(words)
    for i in range(0, audio.shape[0], 16000):
        proc.insert_audio_chunk(audio[i : i + 16000])
        proc.process_iter()
    before = [w for w in expected_words(words) if w[1] <= proc.buffer_time_offset]
    assert proc.prompt().split()[-1] == before[-1][2]  # the original's off-by-one skipped this word
    assert len(proc.prompt()) <= PROMPT_CHARS + 20


def test_a_two_hour_call_keeps_memory_buffers_and_snapshots_bounded():
    proc = OnlineASRProcessor(SyntheticASR(), buffer_trimming=("segment", 15.0), min_chunk_sec=2.0)
    rng = np.random.default_rng(7)
    total_sec, committed_words, sent_words, max_buffer, max_snapshot = 0.0, 0, 0, 0, 0
    early_peak, late_peak = 0, 0
    tracemalloc.start()
    block_words = 120
    while total_sec < 2 * 3600:
        words = random_words(block_words, seed=int(rng.integers(1 << 30)))
        gaps = [float(g) for g in rng.choice([0.1, 0.3, 1.5, 6.0], size=block_words, p=[0.6, 0.25, 0.1, 0.05])]
        audio = encode_words(words, gaps=gaps)
        sent_words += len(words)
        for i in range(0, audio.shape[0], 32000):
            proc.insert_audio_chunk(audio[i : i + 32000])
            committed_words += len(proc.process_iter().words)
            max_buffer = max(max_buffer, proc.audio_buffer.shape[0])
        total_sec += audio.shape[0] / 16000
        del audio
        max_snapshot = max(max_snapshot, len(msgpack.packb(proc.snapshot())))
        traced = tracemalloc.get_traced_memory()[0]
        if 600 < total_sec <= 3600:
            early_peak = max(early_peak, traced)
        elif total_sec > 3600:
            late_peak = max(late_peak, traced)
    tracemalloc.stop()
    committed_words += len(proc.process_iter().words) + len(proc.finish().words)
    assert committed_words == sent_words  # every word of two hours, once
    assert max_buffer <= (MAX_BUFFER_SEC + 2.0) * 16000
    assert max_snapshot < 8192
    # the second hour needs no more memory than the first (the audio buffer alone swings ~1.8 MB)
    assert late_peak - early_peak < 1_000_000, f"memory grew from {early_peak} to {late_peak} bytes"


def test_sixty_seconds_of_silence_skip_every_transcribe_call_with_vad():
    class CountingASR(SyntheticASR):
        calls = 0

        def transcribe(self, audio, init_prompt=""):
            CountingASR.calls += 1
            return super().transcribe(audio, init_prompt)

    proc = OnlineASRProcessor(CountingASR(), min_chunk_sec=1.0, vad=True)
    silence = np.zeros(60 * 16000, np.float32)
    for i in range(0, silence.shape[0], 16000):
        proc.insert_audio_chunk(silence[i : i + 16000])
        assert proc.process_iter().empty
    assert CountingASR.calls == 0
    assert proc.audio_buffer.shape[0] <= 2 * 16000


# -- configuration and registry ---------------------------------------------------------------


def test_a_bad_config_value_names_the_field():
    with pytest.raises(ConfigError, match="buffer_trimming"):
        ASRConfig.parse(buffer_trimming="paragraph")
    with pytest.raises(ConfigError, match="min_chunk_size"):
        ASRConfig.parse(min_chunk_size=-1)
    with pytest.raises(ConfigError, match="not_a_field"):
        ASRConfig.parse(not_a_field=1)


def test_an_unknown_backend_lists_the_available_ones():
    with pytest.raises(UnknownBackendError, match="faster-whisper"):
        registry.get_loader("no-such-backend")


def test_a_loader_added_to_the_dict_the_guides_way_is_used():
    class GuideStyleLoader:
        def load(self, config):
            return OnlineASRProcessor(SyntheticASR(), min_chunk_sec=config.min_chunk_size), {"separator": " "}

    registry.MODEL_LOADERS["guide-style"] = GuideStyleLoader()
    try:
        processor, meta = registry.load_processor(ASRConfig.parse(backend="guide-style"))
        assert isinstance(processor, ASRProcessor) and meta["separator"] == " "
    finally:
        del registry.MODEL_LOADERS["guide-style"]


def test_a_third_party_backend_plugs_in_through_an_entry_point(tmp_path):
    pkg = tmp_path / "tonebackend"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from worker.asr.contracts import ASRBase
            from worker.asr.online import OnlineASRProcessor
            from worker.backends.synthetic import SyntheticASR

            class ToneLoader:
                def load(self, config):
                    return OnlineASRProcessor(SyntheticASR(), min_chunk_sec=config.min_chunk_size), {"separator": " "}
            """
        )
    )
    dist = tmp_path / "tonebackend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tonebackend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[streamscribe.loaders]\ntones-ep = tonebackend:ToneLoader\n")
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from worker.asr.config import ASRConfig
        from worker.backends.registry import available_backends, load_processor
        assert "tones-ep" in available_backends()
        processor, meta = load_processor(ASRConfig.parse(backend="tones-ep"))
        print(type(processor).__name__, meta["separator"] == " ")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["OnlineASRProcessor", "True"]


def test_whisper_timestamped_without_its_extra_names_the_extra_to_install():
    pytest.importorskip("worker.backends.whisper_timestamped")
    try:
        import whisper_timestamped  # noqa: F401

        pytest.skip("whisper_timestamped is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailableError, match=r"streamscribe\[whisper-timestamped\]"):
        registry.load_processor(ASRConfig.parse(backend="whisper_timestamped"))


def test_a_corrupted_offline_model_is_refused_not_used(tmp_path, monkeypatch):
    from worker.backends import offline_model

    real = {name: offline_model._package_data(name) for name in offline_model._PART_PACKAGES}
    fake1 = tmp_path / "p1"
    fake1.mkdir()
    data = bytearray((real[offline_model._PART_PACKAGES[0]] / "model.bin.part1").read_bytes())
    data[1000] ^= 0xFF
    (fake1 / "model.bin.part1").write_bytes(bytes(data))
    monkeypatch.setattr(
        offline_model,
        "_package_data",
        lambda name: fake1 if name == offline_model._PART_PACKAGES[0] else real[name],
    )
    with pytest.raises(ModelIntegrityError, match="sha256"):
        offline_model.offline_base_model_dir(tmp_path / "cache")
    assert not (tmp_path / "cache" / "whisper-base-offline" / "model.bin").exists()


def test_the_guides_asrbase_subclass_keeps_the_model_it_set_before_super_init():
    class MyCustomASR(ASRBase):
        def __init__(self, modelsize, lan, **kwargs):
            self.model = "my-weights"
            super().__init__(lan, modelsize, **kwargs)

    asr = MyCustomASR("tiny", "en")
    assert asr.model == "my-weights" and asr.original_language == "en"
    assert isinstance(registry.get_loader("faster-whisper"), ModelLoader)


def test_the_encoder_window_depends_only_on_the_requests_own_length():
    from worker.backends.whisper_decode import FULL_WINDOW, encoder_window

    assert encoder_window(100, 500) == 1000  # 1 s of audio + 5 s padding -> a 10 s window
    assert encoder_window(500, 500) == 1000
    assert encoder_window(501, 500) == 1500
    assert encoder_window(2800, 500) == FULL_WINDOW  # never past Whisper's 30 s
    assert encoder_window(100, None) == FULL_WINDOW  # None: faster-whisper's own padding
    assert encoder_window(1, 0) == 500


def test_a_decode_that_repeats_four_words_of_its_prompt_counts_as_a_copy_and_three_do_not():
    from worker.backends.decode_guards import Decoded, copies_prompt, plain_words

    class Tokenizer:  # token i is vocabulary word i; 99 ends the text
        eot = 99
        vocabulary = ("Can", "you", "confirm", "your", "number?", "Yes,", "I", "am.", "date", "of", "birth")

        def decode(self, tokens):
            return " ".join(self.vocabulary[t] for t in tokens)

    tokenizer = Tokenizer()
    prompt = plain_words("Thank you. Can you confirm your number, please?")

    def decode(*words: str) -> Decoded:
        return Decoded([tokenizer.vocabulary.index(w) for w in words] + [99], -0.2, 0.0, 1.0)

    assert copies_prompt(decode("Can", "you", "confirm", "your", "number?", "Yes,"), prompt, tokenizer)
    # punctuation and case do not hide a copy; three words in a row are not one
    assert copies_prompt(decode("Can", "you", "confirm", "your", "date", "of", "birth"), prompt, tokenizer)
    assert not copies_prompt(decode("you", "confirm", "your", "date", "of", "birth"), prompt, tokenizer)
    assert not copies_prompt(decode("Can", "you", "confirm", "your", "number?"), (), tokenizer)


def test_a_segment_whose_aligned_words_run_seconds_past_its_closing_timestamp_is_skewed():
    from worker.backends.decode_guards import Decoded, timing_skew

    class Tokenizer:  # tokens below 99 are text, 99 ends it, 100 + n is the timestamp n * 0.02 s
        eot, timestamp_begin = 99, 100

    def at(seconds: float) -> int:
        return 100 + round(seconds / 0.02)

    def aligned(*spans: tuple[float, float]) -> list[dict]:
        return [{"word": "w", "tokens": [0], "start": s, "end": e} for s, e in spans]

    tokenizer = Tokenizer()
    # the measured failure: eight words in a segment closed at 2.0 s, aligned out to 10.34 s
    skipped = Decoded([at(0.0), *range(8), at(2.0), 99], -0.55, 0.0, 1.0)
    spread = aligned(*[(k * 1.3, k * 1.3 + 1.0) for k in range(7)], (7.3, 10.34))
    assert abs(timing_skew(skipped, spread, tokenizer) - 8.34) < 1e-6
    # two segments that agree with their alignment within a fraction of a second
    agreed = Decoded([at(0.0), 0, 1, at(1.0), at(1.5), 2, 3, at(3.0), 99], -0.2, 0.0, 1.0)
    assert timing_skew(agreed, aligned((0.0, 0.4), (0.4, 1.2), (1.6, 2.0), (2.0, 3.3)), tokenizer) < 0.5
    # a merged word (two tokens) counts its tokens; an open last segment has no closing time
    merged = [{"word": "w.", "tokens": [0, 1], "start": 0.0, "end": 4.5}]
    assert timing_skew(Decoded([at(0.0), 0, 1, at(1.0), 99], -0.2, 0.0, 1.0), merged, tokenizer) == 3.5
    assert timing_skew(Decoded([at(0.0), 0, 1, 99], -0.2, 0.0, 1.0), merged, tokenizer) == 0.0


def test_a_phrase_said_four_times_in_a_row_is_a_loop_and_three_times_is_not():
    from worker.backends.decode_guards import loop_start

    thanks_you_too = [11, 12, 13, 14, 15]  # " Thanks", ",", " you", " too", "."
    assert loop_start([7, *thanks_you_too * 4, 11]) == 6  # the first copy is kept
    assert loop_start([7, *thanks_you_too * 3]) is None
    assert loop_start([9, 10] * 4) == 2  # "9, 9, 9, 9"
    assert loop_start(list(range(40))) is None


def test_a_continuation_that_says_its_prefix_again_is_an_echo_and_one_repeated_word_is_not():
    from worker.backends.decode_guards import Decoded, prefix_echo

    def aligned(*words: str) -> list[dict]:
        return [{"word": w, "tokens": [0]} for w in words]

    def decoded(prefix_words: int) -> Decoded:
        return Decoded([], -0.2, 0.0, 1.0, prefix=prefix_words)

    # "... for you as well." and then the whole prefix again
    said = aligned(" let", " me", " sort", " that", " out", " for", " you", " as", " well.")
    assert prefix_echo(said + said, decoded(len(said))) == len(said)
    assert prefix_echo(said + aligned(" As", " well!", " Thanks."), decoded(len(said))) == 2
    assert prefix_echo(aligned(" no", " no", " thanks"), decoded(1)) == 0  # "no, no" was said
    assert prefix_echo(said, decoded(0)) == 0


def test_the_commit_deadline_is_two_seconds_by_default_and_set_or_unset_from_flag_and_environment(
    monkeypatch,
):
    import argparse

    from worker.cli.worker import add_parser, settings_from_args
    from worker.settings import WorkerSettings

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())

    def deadline(*flags: str) -> float | None:
        return settings_from_args(parser.parse_args(["worker", *flags])).asr.commit_deadline_sec

    assert ASRConfig().commit_deadline_sec == 2.0 and deadline() == 2.0
    assert deadline("--commit-deadline-sec", "1.5") == 1.5
    assert deadline("--commit-deadline-sec", "none") is None
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--commit-deadline-sec", "soon"])
    monkeypatch.setenv("STREAMSCRIBE_ASR__COMMIT_DEADLINE_SEC", "null")
    assert WorkerSettings().asr.commit_deadline_sec is None and deadline() is None
    monkeypatch.setenv("STREAMSCRIBE_ASR__COMMIT_DEADLINE_SEC", "2.5")
    assert deadline() == 2.5 and deadline("--commit-deadline-sec", "none") is None


def test_three_words_the_alignment_gives_no_time_are_dropped_and_two_stay():
    from worker.asr.contracts import Word
    from worker.backends.decode_guards import drop_timeless

    said = [Word(0.0, 1.24, " No,", 0.9), Word(1.52, 1.82, " nothing", 0.9)]
    piled = [Word(1.82, 1.82, w, 0.4) for w in (" else", " to", " me", " No,")]
    rest = [Word(1.96, 2.32, " else", 0.9), Word(2.32, 2.5, " to", 0.9), Word(2.5, 2.74, " me", 0.9)]
    assert drop_timeless(said + piled + rest) == said + rest
    assert drop_timeless(said + piled) == said  # at the end of the hypothesis too
    fast = [Word(2.0, 2.02, " a", 0.9), Word(2.02, 2.04, " b", 0.9)]
    assert drop_timeless(said + fast + rest) == said + fast + rest
    assert drop_timeless([]) == []


def test_a_word_said_again_in_next_to_no_time_is_dropped_and_a_real_repeat_stays():
    from worker.asr.contracts import Word
    from worker.backends.decode_guards import drop_timeless

    # a back-channel decoded after a second of silence (long-12min, customer channel)
    right = Word(48.10, 49.08, " Right.", 0.6)
    assert drop_timeless([right, Word(49.08, 49.10, " right", 0.7)]) == [right]
    yes = Word(114.10, 115.28, " Yes.", 0.7)
    after = Word(115.5, 115.8, " How", 0.9)
    assert drop_timeless([yes, Word(115.28, 115.42, " Yes.", 0.9), after]) == [yes, after]
    # said twice, each taking its time; and a short word after another word
    digits = [Word(22.88, 23.32, " 5", 0.9), Word(23.32, 23.76, " 5", 0.9)]
    assert drop_timeless(digits) == digits
    no = [Word(1.0, 1.3, " No,", 0.9), Word(1.3, 1.4, " a", 0.9)]
    assert drop_timeless(no) == no


def test_turn_context_moves_the_cut_back_to_the_earliest_phrase_start_within_its_seconds():
    proc = OnlineASRProcessor(SyntheticASR(), vad=True, vac=True, turn_context_sec=4.0)
    proc.insert_audio_chunk(np.zeros(20 * 16000, dtype=np.float32))
    words = [
        Word(9.0, 9.4, " Hello,", 0.9),
        Word(13.5, 13.9, " my", 0.9),  # starts 4.5 s before the cut: too old
        Word(14.0, 14.3, " name", 0.9),  # inside 4 s of the cut but mid-phrase
        Word(14.4, 14.8, " is", 0.9),
        Word(14.9, 15.3, " Anna.", 0.9),
        Word(15.4, 15.8, " How", 0.9),  # follows a full stop: a phrase starts here
        Word(15.9, 16.2, " can", 0.9),
        Word(16.9, 17.4, " I", 0.9),  # after a 0.7 s gap: also a start, but later
        Word(17.5, 17.9, " help?", 0.9),
    ]
    proc.transcript_buffer.committed_in_buffer = list(words)
    assert proc._with_turn_context(18.0) == pytest.approx(15.3)  # 15.4 less the 0.1 s lead
    # the buffer's first committed word counts as a start
    proc.transcript_buffer.committed_in_buffer = words[2:5]
    assert proc._with_turn_context(18.0) == pytest.approx(13.9)
    # no phrase starts inside the window (4 s back from the last word's end): its earliest word
    unbroken = [Word(15.4, 15.8, " how", 0.9), Word(15.9, 16.2, " can", 0.9), Word(16.3, 17.9, " I", 0.9)]
    proc.transcript_buffer.committed_in_buffer = [*words[1:4], Word(14.9, 15.3, " Anna", 0.9), *unbroken]
    assert proc._with_turn_context(18.0) == pytest.approx(13.9)
    # nothing committed before the cut, or the option off: the cut stays
    proc.transcript_buffer.committed_in_buffer = [Word(18.5, 18.9, " Later", 0.9)]
    assert proc._with_turn_context(18.0) == 18.0
    proc.transcript_buffer.committed_in_buffer = list(words)
    proc.turn_context_sec = 0.0
    assert proc._with_turn_context(18.0) == 18.0
    # the configuration reaches the processor
    assert OnlineASRProcessor.from_config(SyntheticASR(), ASRConfig(turn_context_sec=2.5)).turn_context_sec == 2.5
    assert ASRConfig().turn_context_sec == 10.0 and ASRConfig().channel_turn_context_sec == 4.0


def test_turn_context_stays_through_the_silence_after_it_until_it_lies_a_span_before_the_cut():
    # one channel of a call: the speaker's turn ends at 15.8 s, the other party talks till 24 s
    proc = OnlineASRProcessor(SyntheticASR(), vad=True, vac=True, turn_context_sec=4.0)
    proc.insert_audio_chunk(np.zeros(30 * 16000, dtype=np.float32))
    turn = [
        Word(9.0, 9.4, " Hello,", 0.9),  # more than 4 s of speech before the turn's last word
        Word(12.4, 12.8, " Thank", 0.9),
        Word(12.9, 13.3, " you.", 0.9),
        Word(13.4, 13.9, " Could", 0.9),
        Word(14.0, 14.6, " I", 0.9),
        Word(15.4, 15.8, " help?", 0.9),
    ]
    proc.transcript_buffer.committed_in_buffer = list(turn)
    # the context is measured back from the last word, not from the cut, however far the cut moved
    for cut in (16.3, 20.0, 24.0):
        assert proc._with_turn_context(cut) == pytest.approx(12.3), cut
    # ... until it would start more than the span before the cut: then its later phrases, then none
    assert CONTEXT_SPAN_SEC == 12.0
    assert proc._with_turn_context(24.5) == pytest.approx(13.3)
    assert proc._with_turn_context(26.5) == pytest.approx(15.3)
    assert proc._with_turn_context(27.5) == 27.5
    # a restored processor holds the same committed words, so it keeps the same context
    proc._trim_to(proc._with_turn_context(24.0))
    restored = OnlineASRProcessor(SyntheticASR(), vad=True, vac=True, turn_context_sec=4.0)
    restored.restore(proc.snapshot())
    assert restored.buffer_start == proc.buffer_start == round(12.3 * 16000)
    assert restored._with_turn_context(24.0) == proc._with_turn_context(24.0)


def test_economy_drops_the_kept_context_at_once_and_cuts_later_turns_in_the_pause():
    proc = OnlineASRProcessor(SyntheticASR(), vad=True, vac=True, turn_context_sec=4.0)
    assert isinstance(proc, EconomicalProcessor)
    proc.insert_audio_chunk(np.zeros(20 * 16000, dtype=np.float32))
    words = [Word(14.4, 14.8, " Hi", 0.9), Word(14.9, 15.3, " Anna.", 0.9), Word(15.4, 15.8, " How", 0.9)]
    proc.transcript_buffer.committed_in_buffer = list(words)
    proc._trim_to(proc._with_turn_context(16.5))  # an utterance end: the cut keeps the context
    assert proc.buffer_start == round(14.3 * 16000)
    proc.set_economy(EconomyLevel.NO_CONTEXT)  # the worker is loaded: the context goes before the next decode
    assert proc.buffer_start == round(16.5 * 16000)
    assert proc.transcript_buffer.committed_in_buffer == []
    assert proc.prompt().split()[-3:] == ["Hi", "Anna.", "How"]  # still the prompt
    proc.transcript_buffer.committed_in_buffer = [Word(17.0, 17.4, " Fine.", 0.9)]
    assert proc._with_turn_context(18.0) == 18.0  # in economy a cut keeps no context
    proc.set_economy(EconomyLevel.OFF)
    assert proc._with_turn_context(18.0) == pytest.approx(16.9)
    proc.set_economy(EconomyLevel.OFF)  # no change: nothing moves
    assert proc.buffer_start == round(16.5 * 16000)


def test_only_the_second_economy_level_marks_requests_for_a_cheaper_decode_and_it_drops_the_context_too():
    proc = OnlineASRProcessor(SyntheticASR(), vad=True, vac=True, turn_context_sec=4.0)
    audio = np.zeros(16000, dtype=np.float32)
    assert not proc._request(audio).economy
    proc.set_economy(EconomyLevel.NO_CONTEXT)
    assert not proc._request(audio).economy and not proc._request(audio, final=True).economy
    proc.set_economy(EconomyLevel.CHEAP_DECODES)
    assert proc._request(audio).economy and proc._request(audio, final=True).economy
    assert proc._with_turn_context(18.0) == 18.0
    proc.set_economy(EconomyLevel.OFF)
    assert not proc._request(audio).economy


def test_greedy_economy_decodes_commit_by_deadline_no_sooner_than_two_and_a_half_seconds():
    proc = OnlineASRProcessor(SyntheticASR(), vad=True, vac=True, commit_deadline_sec=2.0)
    assert proc._deadline(10.0) == pytest.approx(8.0)
    proc.set_economy(EconomyLevel.NO_CONTEXT)  # beam decodes still: the deadline as set
    assert proc._deadline(10.0) == pytest.approx(8.0)
    proc.set_economy(EconomyLevel.CHEAP_DECODES)
    assert proc._deadline(10.0) == pytest.approx(7.5)
    proc.commit_deadline_sec = 3.0  # a longer deadline stays as it is
    assert proc._deadline(10.0) == pytest.approx(7.0)
    proc.commit_deadline_sec = None
    assert proc._deadline(10.0) is None
    proc.set_economy(EconomyLevel.OFF)
    proc.commit_deadline_sec = 2.0
    assert proc._deadline(10.0) == pytest.approx(8.0)


def test_turn_context_is_ten_seconds_and_four_per_channel_by_default_and_set_from_flag_or_environment(monkeypatch):
    import argparse

    from worker.cli.worker import add_parser, settings_from_args
    from worker.settings import WorkerSettings

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    asr = settings_from_args(parser.parse_args(["worker"])).asr
    assert (asr.turn_context_sec, asr.channel_turn_context_sec) == (10.0, 4.0)
    flagged = settings_from_args(
        parser.parse_args(["worker", "--turn-context-sec", "0", "--channel-turn-context-sec", "2.5"])
    ).asr
    assert (flagged.turn_context_sec, flagged.channel_turn_context_sec) == (0.0, 2.5)
    monkeypatch.setenv("STREAMSCRIBE_ASR__TURN_CONTEXT_SEC", "3")
    monkeypatch.setenv("STREAMSCRIBE_ASR__CHANNEL_TURN_CONTEXT_SEC", "1")
    assert (WorkerSettings().asr.turn_context_sec, WorkerSettings().asr.channel_turn_context_sec) == (3.0, 1.0)
    with pytest.raises(ConfigError, match="turn_context_sec"):
        ASRConfig.parse(turn_context_sec=-1)
    with pytest.raises(ConfigError, match="channel_turn_context_sec"):
        ASRConfig.parse(channel_turn_context_sec=11)
