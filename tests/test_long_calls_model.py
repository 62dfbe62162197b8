"""The real base model on the generated two-party calls: quality, latency and utterance ends.

The bounds are regression guards at what the current processor measured on this subset (see
docs/benchmarks.md), not the targets of the quality issue: on 555 words a 1-point question is
noise, which is why the full set exists.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from whisper_normalizer.english import EnglishTextNormalizer

from benchmarks.call_scoring import percentile, pooled, score
from benchmarks.calls import build_calls
from benchmarks.long_calls import Stream, evaluate, run_offline, stream_commits, streams_of
from worker.asr.audio import decode_file
from worker.asr.config import ASRConfig
from worker.backends.registry import load_processor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

# The tests of one option (the commit policy, the deadline, the forced prefix) run it without the
# turn context, whose buffers cost a third more compute: the context has a test of its own, and
# the defaults' bounds are checked with it.


@pytest.fixture(scope="module")
def ci_calls(tmp_path_factory):
    return build_calls("ci", tmp_path_factory.mktemp("calls"))


@pytest.fixture(scope="module")
def offline_cache(tmp_path_factory):
    """One cache of the offline baselines for the module: several tests score the same call."""
    return tmp_path_factory.mktemp("offline")


def test_streaming_on_the_ci_calls_stays_near_offline_with_low_commit_lag(ci_calls, offline_cache):
    results = [evaluate(s, ASRConfig(), offline_cache) for c in ci_calls for s in streams_of(c, ["mix"])]
    streaming = pooled([r.streaming_score for r in results]).wer
    offline = pooled([r.offline_score for r in results]).wer
    lags = [lag for r in results for lag in r.lags]
    print(f"ci mix: offline {offline:.4f} streaming {streaming:.4f} lag p50 {percentile(lags, 50):.2f}")
    assert offline < 0.20
    assert streaming <= offline + 0.05
    assert percentile(lags, 50) <= 1.8 and percentile(lags, 95) <= 3.6
    # every call's last words arrive (the end of a call is decoded, not force-committed)
    norm = EnglishTextNormalizer()
    for r in results:
        assert set(norm(r.reference).split()[-3:]) & set(norm(r.streaming).split()[-5:]), r.call


def test_utterance_ends_mark_the_pauses_between_turns_and_nothing_inside_a_phrase(ci_calls):
    call = ci_calls[0]
    stream = Stream("stereo.ch0", call, call.stereo16k, 16000, 0, call.channel_references[0])
    audio = stream.audio(16000)
    processor, _ = load_processor(ASRConfig())
    marks: list[float] = []
    for committed, _emit, point in stream_commits(processor, audio, 16000):
        if committed.utterance_end:
            # only the processing points that close a stretch mark one
            assert point in ("utterance_end", "finish"), (point, committed.text)
            marks.append(committed.end)
    # the agent's turns on its own channel: each is followed by at least the other party's turn
    turns = [t for t in call.turns if t.speaker == 0]
    ends = np.array([t.end for t in turns])
    for mark in marks:
        # a marker sits at the end of a turn (word times are loose by a few hundred ms) ...
        assert np.min(np.abs(ends - mark)) < 0.8, (mark, ends)
    # ... and every turn that a clear pause follows gets one (Silero's speech probability trails
    # the audible end by up to ~0.2 s, so a 0.5 s gap in the audio may measure less)
    followed = [t.end for t in turns if t.end - t.start > 1.0 and not any(0 < o.start - t.end < 0.8 for o in turns)]
    for end in followed:
        assert any(abs(end - m) < 0.8 for m in marks), (end, marks)


def test_the_mu_law_call_streams_at_8_khz_without_loops(ci_calls, offline_cache):
    call = ci_calls[2]
    stream = Stream("ulaw", call, call.ulaw8k, 8000, None, call.reference)
    result = evaluate(stream, ASRConfig(), offline_cache)
    words = result.streaming.split()
    # no word repeats four times running (the decoder cuts repetition loops)
    assert not any(len(set(words[i : i + 4])) == 1 for i in range(len(words) - 3))
    assert result.streaming_score.wer <= result.offline_score.wer + 0.15
    assert decode_file(call.ulaw8k, 8000).shape[0] == round(call.seconds * 8000)


def test_utterance_commits_come_only_at_utterance_ends_with_partials_between(ci_calls, offline_cache):
    call = ci_calls[3]
    config = ASRConfig(commit_policy="utterance", beam_size=1, turn_context_sec=0.0)
    audio = decode_file(call.mix16k, 16000)
    processor, _ = load_processor(config)
    segments, partial_seen = [], 0
    for fed in range(0, audio.shape[0], 1600):
        processor.insert_audio_chunk(audio[fed : fed + 1600])
        while processor.is_due():
            committed = processor.process_iter()
            if committed.text:
                segments.append(committed)
            partial_seen += bool(processor.partial().text)
    final = processor.finish()
    if final.text:
        segments.append(final)
    # nothing commits inside a stretch: each commit closes one (no turn here is near the 28 s cap)
    assert segments and all(s.utterance_end for s in segments)
    assert partial_seen >= len(segments) // 2  # chunk decodes show the stretch while it is spoken
    # scored as the benchmark scores it (the same feed as its run_streaming), against offline on the same audio
    streaming = score(call.reference, " ".join(s.text.strip() for s in segments if s.text.strip()))
    offline = score(
        call.reference,
        run_offline(config, Stream("mix", call, call.mix16k, 16000, None, call.reference), offline_cache)[0],
    )
    print(f"{call.name}: offline {offline.wer:.4f} utterance commits {streaming.wer:.4f}")
    # 213 words: 0.04 held on an AMD EPYC (5 errors more than offline); an Intel Xeon's int8
    # kernels gave 9 more (16 against 7), a call's noise, so the bound tests garbling, not noise
    assert streaming.wer <= offline.wer + 0.06


def test_a_commit_deadline_bounds_how_long_words_wait_for_agreement(ci_calls, offline_cache):
    call = ci_calls[1]
    stream = Stream("mix", call, call.mix16k, 16000, None, call.reference)
    waiting = evaluate(stream, ASRConfig(commit_deadline_sec=None, turn_context_sec=0.0), offline_cache)
    bounded = evaluate(stream, ASRConfig(commit_deadline_sec=1.5, turn_context_sec=0.0), offline_cache)
    p95 = percentile(waiting.lags, 95), percentile(bounded.lags, 95)
    print(f"{call.name}: lag p95 {p95[0]:.2f} s, with a 1.5 s deadline {p95[1]:.2f} s")
    # a word waits at most the deadline plus one chunk, unless it stays a hypothesis's last word
    assert percentile(bounded.lags, 95) <= 1.5 + 1.0 + 0.1
    assert percentile(bounded.lags, 95) < percentile(waiting.lags, 95)
    assert bounded.streaming_score.wer <= bounded.offline_score.wer + 0.08


def test_commit_kinds_names_the_rule_that_committed_every_word(tmp_path, capsys):
    from benchmarks import commit_kinds

    out = tmp_path / "words.json"
    commit_kinds.main(["--subset", "smoke", "--json", str(out)])
    words = json.loads(out.read_text())
    points, rules = {w["kind"].split("/")[0] for w in words}, {w["kind"].split("/")[1] for w in words}
    assert len(words) > 80 and "?" not in rules
    assert {"chunk", "utterance_end"} <= points and {"agreed", "rest"} <= rules
    assert "wrong by probability" in capsys.readouterr().out


def test_with_committed_prefix_each_decode_continues_the_words_committed_in_its_buffer(
    ci_calls, offline_cache, monkeypatch
):
    from worker.backends.faster_whisper import FasterWhisperASR

    prefixes: list[str] = []
    transcribe = FasterWhisperASR.transcribe_requests

    def spy(self, requests):
        prefixes.extend(r.prefix for r in requests)
        return transcribe(self, requests)

    monkeypatch.setattr(FasterWhisperASR, "transcribe_requests", spy)
    call = ci_calls[2]
    stream = Stream("mix", call, call.mix16k, 16000, None, call.reference)
    prefixed = evaluate(stream, ASRConfig(committed_prefix=True, turn_context_sec=0.0), offline_cache)
    assert sum(bool(p) for p in prefixes) >= len(prefixes) // 3  # decodes inside a turn continue it
    plain_prefixes = len(prefixes)
    # off by default: the first 20 s of the same call, streamed with the defaults, continue nothing
    spliced, _ = load_processor(ASRConfig(turn_context_sec=0.0))
    for _committed in stream_commits(spliced, stream.audio(16000)[: 20 * 16000], 16000):
        pass
    assert len(prefixes) > plain_prefixes and not any(prefixes[plain_prefixes:])
    print(f"{call.name}: prefix {prefixed.streaming_score.wer:.4f}, offline {prefixed.offline_score.wer:.4f}")
    # one 139-word call, so a word is 0.7 points: 18.71 % (offline 12.95 %) while agreement compared
    # raw text, 20.14 % since it ignores case and punctuation (26 and 28 errors); the bound is that
    # with 2 words to spare, and a prefix mode that went astray would lose far more
    assert prefixed.streaming_score.wer <= prefixed.offline_score.wer + 0.085
    # no word of the committed text is said twice at a seam: no 3-word run repeats back to back
    words = prefixed.streaming.lower().split()
    assert not any(words[i : i + 3] == words[i + 3 : i + 6] for i in range(len(words) - 5))


def test_turn_context_keeps_the_turns_before_in_the_buffer_and_a_restore_stays_exact(ci_calls, offline_cache):
    call = ci_calls[0]
    stream = streams_of(call, ["mix"])[0]
    audio = stream.audio(16000)
    config = ASRConfig(turn_context_sec=4.0)
    step = 1600

    def run(processor, start: int, snapshot_after: int | None = None):
        """Outputs; seconds of committed speech kept after each utterance end; and a snapshot taken
        after the first utterance end past ``snapshot_after`` samples that kept some."""
        out, kept, snapshot = [], [], None
        for i in range(start, audio.shape[0], step):
            processor.insert_audio_chunk(audio[i : i + step])
            ended = False
            while processor.is_due():
                c = processor.process_iter()
                out.append((c.start, c.end, c.text, c.utterance_end))
                if c.utterance_end:
                    kept.append(processor.transcript_buffer.last_committed_time - processor.buffer_time_offset)
                    ended = kept[-1] > 1.0
            if snapshot is None and snapshot_after is not None and i >= snapshot_after and ended:
                snapshot = (i + step, len(out), json.loads(json.dumps(processor.snapshot())))
        c = processor.finish()
        return [*out, (c.start, c.end, c.text, c.utterance_end)], kept, snapshot

    reference, _ = load_processor(config)
    outputs, kept, snapshot = run(reference, 0, snapshot_after=10 * 16000)
    # after an utterance end the buffer still holds committed speech, never more than 4 s of it
    # (plus the 0.1 s lead before its first word)
    assert max(kept) > 1.0 and max(kept) <= 4.1 + 1e-6, kept
    text = " ".join(o[2] for o in outputs if o[2])
    offline, _busy = run_offline(config, stream, offline_cache)
    streamed_wer, offline_wer = score(stream.reference, text).wer, score(stream.reference, offline).wer
    print(f"{call.name}: offline {offline_wer:.4f} with turn context {streamed_wer:.4f}")
    assert streamed_wer <= offline_wer + 0.08
    # a processor restored from a snapshot with context in its buffer goes on exactly the same
    assert snapshot is not None, kept
    resume_at, done, state = snapshot
    resumed, _ = load_processor(config)
    resumed.restore(state)
    resumed.insert_audio_chunk(audio[state["buffer_start"] : state["buffer_end"]])
    assert run(resumed, resume_at)[0] == outputs[done:]
