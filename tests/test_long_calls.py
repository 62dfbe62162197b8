"""The long-call benchmark's scoring and options (benchmarks/call_scoring.py, benchmarks/long_calls.py)."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.call_scoring import (
    REGIONS,
    Score,
    TimedText,
    bootstrap_difference,
    pooled,
    region_scores,
    score,
    turn_changes,
)
from benchmarks.corpus import corpus_wer
from benchmarks.long_calls import config_from, main, parse_value

pytestmark = pytest.mark.timeout(60)


def test_pooled_scores_give_the_same_wer_as_corpus_wer() -> None:
    refs = ["Your reference number is four seven two.", "Thank you for calling Harbor Bank.", "Yes."]
    hyps = ["Your reference number is 472.", "Thank you for calling Harbour bank today.", ""]
    assert pooled([score(r, h) for r, h in zip(refs, hyps, strict=True)]).wer == pytest.approx(corpus_wer(refs, hyps))


def test_the_bootstrap_interval_holds_the_pooled_difference_and_is_a_point_when_every_call_agrees() -> None:
    streaming = [Score(3, 100), Score(10, 50), Score(0, 30), Score(7, 120)]
    offline = [Score(2, 100), Score(4, 50), Score(1, 30), Score(5, 120)]
    lo, hi = bootstrap_difference(streaming, offline)
    diff = pooled(streaming).wer - pooled(offline).wer
    assert lo <= diff <= hi and lo < hi
    assert bootstrap_difference(streaming, offline) == (lo, hi)  # fixed seed
    same = [Score(5, 100)] * 4
    assert bootstrap_difference(same, [Score(3, 100)] * 4) == pytest.approx((0.02, 0.02))


def test_errors_are_charged_to_the_region_of_the_call_they_fall_in() -> None:
    phrases = [TimedText(0.5, 2.0, "hello there"), TimedText(5.0, 7.0, "one more thing"), TimedText(20, 21, "bye")]
    changes = turn_changes([(0, 0.5, 2.0), (1, 5.0, 7.0), (0, 20.0, 21.0)])
    out = region_scores(phrases, "hello there one thing", 22.0, changes)
    assert set(out) == set(REGIONS)
    assert out["first 3 s"] == Score(0, 2)
    assert out["last 3 s"] == Score(1, 1)  # "bye" lost at the end
    assert sum(s.words for s in out.values()) == 6 and sum(s.errors for s in out.values()) == 2


def test_set_options_reach_the_asr_config() -> None:
    assert parse_value("none") is None and parse_value("false") is False and parse_value("3") == 3
    assert parse_value("2.5") == 2.5 and parse_value("sentence") == "sentence"

    args = argparse.Namespace(
        model="base",
        beam_size=5,
        min_chunk_size=None,
        vad=False,
        buffer_trimming_sec=None,
        window_padding_sec="none",
        set=["buffer_trimming=sentence", "no_speech_threshold=0.5"],
    )
    config = config_from(args)
    assert (config.beam_size, config.vad, config.window_padding_sec) == (5, False, None)
    assert (config.buffer_trimming, config.no_speech_threshold) == ("sentence", 0.5)


def test_an_unknown_set_is_refused_with_the_choices() -> None:
    with pytest.raises(SystemExit, match="choose from mix, ulaw, stereo"):
        main(["--sets", "mix,opus"])


def test_error_kinds_splits_the_errors_by_kind_by_digit_groups_and_by_place_in_the_turn() -> None:
    from pathlib import Path

    from benchmarks.calls import Call, Turn
    from benchmarks.error_kinds import breakdown, join_digit_groups

    assert join_digit_groups("it is 8211 2684 thank you 6 0 2") == "it is 82112684 thank you 602"
    phrases = (
        Turn(0, 0.0, 3.0, "Your account number is 82112684."),  # agent, one 3 s turn
        Turn(1, 4.0, 4.6, "Thank you."),  # customer, a short turn
    )
    nowhere = Path("/nonexistent")
    call = Call("c", 5.0, nowhere, nowhere, nowhere, "", ("", ""), phrases, phrases)
    reference = "Your account number is 82112684. Thank you."
    report = {
        "streams": [
            {
                "call": "c",
                "row": "mix",
                "reference": reference,
                # "your" misheard at the turn's start, the number split, "you" dropped
                "streaming": "Our account number is 8211 2684. Thank.",
                "offline": reference,
            }
        ]
    }
    figures = breakdown(report, {"c": call})["mix"]
    assert figures["sdi"]["streaming"] == [2, 1, 1, 7]  # our / your, 8211 / 82112684, you; 2684
    assert figures["sdi"]["offline"] == [0, 0, 0, 7]
    assert figures["digits_joined"]["streaming"] == [2, 7]  # the split number reads right joined
    position = figures["position"]["streaming"]
    assert position["turn's first 1.5 s"][0] >= 1 and sum(w for _e, w in position.values()) == 7
