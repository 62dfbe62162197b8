"""The synthetic long-call set (benchmarks/calls.py): deterministic, well formed, big enough."""

from __future__ import annotations

import itertools
import shutil
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks import call_audio
from benchmarks.call_audio import EspeakNotFoundError
from benchmarks.calls import Call, build_calls, plan_calls
from worker.asr.audio import decode_file

pytestmark = pytest.mark.timeout(180)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def ci_calls(tmp_path_factory: pytest.TempPathFactory) -> list[Call]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return build_calls("ci", tmp_path_factory.mktemp("calls"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _is_subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(word in it for word in part)


@needs_espeak
def test_two_builds_of_the_smoke_subset_into_different_folders_are_byte_identical(tmp_path: Path) -> None:
    first, second = build_calls("smoke", tmp_path / "a"), build_calls("smoke", tmp_path / "b")
    assert [c.name for c in first] == [c.name for c in second] == ["smoke-40s"]
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 4
    assert a == b
    # a second build into the same folder reuses the files instead of writing them again
    mtime = first[0].mix16k.stat().st_mtime_ns
    assert build_calls("smoke", tmp_path / "a") == first
    assert first[0].mix16k.stat().st_mtime_ns == mtime


def test_the_ci_subset_is_four_calls_of_three_to_four_and_a_half_minutes_inside_the_full_set(
    ci_calls: list[Call],
) -> None:
    total = sum(c.seconds for c in ci_calls)
    assert len(ci_calls) == 4 and 180 <= total <= 270
    assert min(c.seconds for c in ci_calls) <= 40 and any(60 <= c.seconds <= 120 for c in ci_calls)
    full = {p.spec.name for p in plan_calls("full")}
    assert {c.name for c in ci_calls} | {"smoke-40s"} <= full


def test_each_call_is_a_16_khz_mix_a_16_khz_stereo_file_and_an_8_khz_mulaw_mix(ci_calls: list[Call]) -> None:
    for call in ci_calls:
        for path, channels in ((call.mix16k, 1), (call.stereo16k, 2)):
            with wave.open(str(path)) as f:
                assert (f.getnchannels(), f.getframerate(), f.getsampwidth()) == (channels, 16000, 2)
                assert f.getnframes() == round(call.seconds * 16000)
        header = call.ulaw8k.read_bytes()[:36]
        fmt_tag, channels, rate = (int.from_bytes(header[i : i + n], "little") for i, n in ((20, 2), (22, 2), (24, 4)))
        assert (header[:4], header[8:12], fmt_tag, channels, rate, header[34]) == (b"RIFF", b"WAVE", 7, 1, 8000, 8)
        ulaw = decode_file(call.ulaw8k, 8000)
        assert abs(ulaw.shape[0] - call.seconds * 8000) <= 2
        stereo = decode_file(call.stereo16k, split_channels=True)
        assert stereo.shape == (2, round(call.seconds * 16000))


def test_the_channel_references_hold_exactly_the_words_of_the_whole_reference_in_order(ci_calls: list[Call]) -> None:
    for call in ci_calls:
        whole = call.reference.split()
        agent, customer = (r.split() for r in call.channel_references)
        assert Counter(whole) == Counter(agent) + Counter(customer)
        assert _is_subsequence(agent, whole) and _is_subsequence(customer, whole)
        for speaker, ref in enumerate(call.channel_references):
            assert " ".join(t.text for t in call.turns if t.speaker == speaker) == ref
        assert " ".join(p.text for p in call.phrases) == call.reference
        assert list(call.turns) == sorted(call.turns, key=lambda t: (t.start, t.speaker))


def test_turns_have_the_planned_pauses_overlaps_and_back_channels(ci_calls: list[Call]) -> None:
    overlaps = 0
    for call in ci_calls:
        for turn in call.turns:
            inside = [p for p in call.phrases if p.speaker == turn.speaker and turn.start <= p.start < turn.end]
            assert " ".join(p.text for p in inside) == turn.text
            # the pauses inside a turn are short: they must not read as the end of a turn
            assert all(0.25 <= b.start - a.end <= 0.351 for a, b in itertools.pairwise(inside))
        for a, b in itertools.pairwise(call.turns):
            overlaps += b.start < a.end
        assert 0.3 <= call.turns[0].start <= 1.0 and call.seconds - call.turns[-1].end >= 0.5
    assert overlaps >= 2  # back-channels and barge-ins over the other party


def test_the_line_hiss_is_between_minus_fifty_and_minus_forty_five_dbfs(ci_calls: list[Call]) -> None:
    for call in ci_calls:
        audio = decode_file(call.mix16k)
        lead = audio[: int(call.turns[0].start * 16000) - 800]
        dbfs = 20 * np.log10(np.sqrt(np.mean(lead.astype(np.float64) ** 2)))
        assert -51.0 <= dbfs <= -44.5


def test_the_full_set_plans_at_least_ten_thousand_words_and_a_call_over_ten_minutes() -> None:
    plans = plan_calls("full")
    assert sum(p.words for p in plans) >= 10_000
    # the estimate is within 5 % of the audio (next test); keep a margin over 600 s
    assert max(p.estimated_seconds for p in plans) >= 660
    assert min(p.estimated_seconds for p in plans) >= 30
    assert len({p.spec.name for p in plans}) == len(plans)


def test_the_planned_length_is_within_ten_percent_of_the_synthesised_audio(ci_calls: list[Call]) -> None:
    plans = {p.spec.name: p for p in plan_calls("ci")}
    for call in ci_calls:
        assert abs(call.seconds / plans[call.name].estimated_seconds - 1) <= 0.10
        assert plans[call.name].words == len(call.reference.split())


def test_a_missing_espeak_ng_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(call_audio.shutil, "which", lambda name: None)
    with pytest.raises(EspeakNotFoundError, match="apt-get install espeak-ng"):
        build_calls("smoke", tmp_path)


def test_an_unknown_subset_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown subset"):
        plan_calls("huge")
