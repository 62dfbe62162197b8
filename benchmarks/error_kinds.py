"""What kind of errors streaming makes beyond offline's, from a ``benchmarks.long_calls`` report.

    python -m benchmarks.long_calls --subset full --sets mix --json full-mix.json
    python -m benchmarks.error_kinds full-mix.json

For each set of the report, streaming's and offline's pooled errors split into substitutions,
deletions and insertions; the WER with adjacent digit groups joined in every text ("8211 0684"
and "82110684" then read the same, so what is left is not number formatting); and the WER by
where a reference word lies in its speaker's turn (its first 1.5 s, its last 1.5 s, between).
A turn is the speaker's phrases merged across pauses under 1 s; a word's time is interpolated
in its phrase, as ``call_scoring.region_scores`` does. Reads the transcripts only: no model runs.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.call_scoring import Score, normalise, scores_by
from benchmarks.calls import Call, build_calls

SYSTEMS = ("streaming", "offline")
#: Phrases of one speaker less than this apart are one turn.
TURN_GAP_SEC = 1.0
#: The head and tail of a turn.
TURN_EDGE_SEC = 1.5
_DIGITS = re.compile(r"\d+")


def join_digit_groups(text: str) -> str:
    """Join adjacent all-digit words: ``"6 0 2 0"`` → ``"6020"``."""
    out: list[str] = []
    for word in text.split():
        if out and _DIGITS.fullmatch(word) and _DIGITS.fullmatch(out[-1]):
            out[-1] += word
        else:
            out.append(word)
    return " ".join(out)


def turn_position(t: float, turns: Sequence[tuple[float, float]]) -> str:
    for start, end in turns:
        if start - 0.05 <= t <= end + 0.05:
            if t - start < TURN_EDGE_SEC:
                return "turn's first 1.5 s"
            if end - t < TURN_EDGE_SEC:
                return "turn's last 1.5 s"
            return "turn's middle"
    return "outside turns"


def _turns(call: Call, channel: int | None) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    last_speaker = None
    for p in sorted(call.phrases, key=lambda p: p.start):
        if channel is not None and p.speaker != channel:
            continue
        if merged and last_speaker == p.speaker and p.start - merged[-1][1] < TURN_GAP_SEC:
            merged[-1][1] = max(merged[-1][1], p.end)
        else:
            merged.append([p.start, p.end])
        last_speaker = p.speaker
    return [(s, e) for s, e in merged]


def _channel(row: str) -> int | None:
    """The speaker a report row scores: ``stereo.ch0`` is the agent, ``stereo.ch1`` the customer."""
    return {"ch0": 0, "ch1": 1}.get(row.rsplit(".", 1)[-1])


def _errors(reference: str, hypothesis: str, text: Callable[[str], str] = lambda t: t) -> tuple[int, int, int, int]:
    import jiwer

    ref = text(normalise(reference))
    out = jiwer.process_words(ref, text(normalise(hypothesis)))
    return out.substitutions, out.deletions, out.insertions, len(ref.split())


def _by_position(call: Call, row: str, hypothesis: str) -> dict[str, Score]:
    """Errors and reference words per turn position (insertions charged to the word before)."""
    channel = _channel(row)
    turns = _turns(call, channel)
    phrases = [p for p in call.phrases if channel is None or p.speaker == channel]
    return scores_by(phrases, hypothesis, lambda t: turn_position(t, turns))


def breakdown(report: dict[str, Any], calls: dict[str, Call]) -> dict[str, dict[str, Any]]:
    """Per set: S/D/I and words per system, WER with digit groups joined, errors by turn position."""
    sets: dict[str, dict[str, Any]] = {}
    for stream in report["streams"]:
        row = stream["row"]
        figures = sets.setdefault(
            row,
            {
                "sdi": {s: [0, 0, 0, 0] for s in SYSTEMS},
                "digits_joined": {s: [0, 0] for s in SYSTEMS},
                "position": {s: defaultdict(lambda: [0, 0]) for s in SYSTEMS},
            },
        )
        reference = stream["reference"]
        for system in SYSTEMS:
            sub, dele, ins, n = _errors(reference, stream[system])
            figures["sdi"][system] = [a + b for a, b in zip(figures["sdi"][system], (sub, dele, ins, n), strict=True)]
            sub, dele, ins, n = _errors(reference, stream[system], join_digit_groups)
            figures["digits_joined"][system][0] += sub + dele + ins
            figures["digits_joined"][system][1] += n
            for where, found in _by_position(calls[stream["call"]], row, stream[system]).items():
                figures["position"][system][where][0] += found.errors
                figures["position"][system][where][1] += found.words
    return sets


def _pct(errors: int, words: int) -> str:
    return f"{100 * errors / max(words, 1):6.2f}%"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, help="a JSON report of benchmarks.long_calls (--json)")
    args = p.parse_args()
    report = json.loads(args.report.read_text())
    calls = {c.name: c for c in build_calls(report["subset"])}
    for row, figures in breakdown(report, calls).items():
        print(f"{row}:")
        for system in SYSTEMS:
            sub, dele, ins, n = figures["sdi"][system]
            joined = figures["digits_joined"][system]
            print(
                f"  {system:9s} {_pct(sub + dele + ins, n)}  S {sub:4d}  D {dele:4d}  I {ins:4d}"
                f"  of {n} words; digit groups joined {_pct(*joined)}"
            )
        for where in sorted(figures["position"]["streaming"]):
            s_err, words = figures["position"]["streaming"][where]
            o_err, _ = figures["position"]["offline"][where]
            print(f"  {where:20s} streaming {_pct(s_err, words)} offline {_pct(o_err, words)}  ({words} words)")


if __name__ == "__main__":
    main()
