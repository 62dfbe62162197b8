"""Which processing point committed each word, and how often such words are wrong.

    python -m benchmarks.commit_kinds --subset full --calls 6
    python -m benchmarks.commit_kinds --subset ci --set commit_deadline_sec=2 --json words.json

Streams each call's 16 kHz mix as ``benchmarks.long_calls`` does and tags every committed word
with the point that committed it (``chunk``, ``pause`` for a 0.3 s pause, ``utterance_end``,
``finish``) and the rule (``agreed``: two hypotheses agreed; ``confident``: one
hypothesis, high probability, well inside the audio; ``due``: the commit deadline; ``rest``: the
rest of the hypothesis, as pauses and utterance ends commit it). Each word is scored against the
reference after Whisper's normaliser (a substitution or insertion makes it wrong) and bucketed by
its probability. Diagnostic only: it wraps ``HypothesisBuffer`` to see the rule, so it measures
the processor as it is, not a copy of it.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from benchmarks.call_scoring import normalise
from benchmarks.calls import build_calls, default_cache_dir
from benchmarks.long_calls import config_from, stream_commits
from worker.asr import hypothesis
from worker.asr.audio import decode_file
from worker.backends.registry import load_processor

PROBABILITY_EDGES = (0.0, 0.5, 0.7, 0.85, 0.95, 1.01)


def _tagging() -> dict[int, str]:
    """Wrap the rules of ``flush`` and ``force_commit`` so every committed Word's id maps to its rule."""
    rules: dict[int, str] = {}
    buffer = hypothesis.HypothesisBuffer

    def tag(rule: str, pop: Any) -> Any:
        def tagged(*args: Any, **kwargs: Any) -> list[Any]:
            out = pop(*args, **kwargs)
            for w in out:
                rules[id(w)] = rule
            return out

        return tagged

    buffer._agreed = tag("agreed", buffer._agreed)  # type: ignore[method-assign]
    buffer._confident = tag("confident", buffer._confident)  # type: ignore[method-assign]
    buffer._due = tag("due", buffer._due)  # type: ignore[method-assign]
    buffer.force_commit = tag("rest", buffer.force_commit)  # type: ignore[method-assign]
    return rules


def stream_call(processor: Any, rules: dict[int, str], call: Any) -> list[dict[str, Any]]:
    """Stream one call's mix; every committed word with its kind, probability and lag."""
    words: list[dict[str, Any]] = []
    for committed, emit, point in stream_commits(processor, decode_file(call.mix16k, 16000), 16000):
        for w in committed.words or ():
            kind = f"{point}/{rules.get(id(w), '?')}"
            words.append({"text": w.text, "end": w.end, "p": w.probability, "lag": emit - w.end, "kind": kind})
    return words


def mark_wrong(words: list[dict[str, Any]], reference: str) -> None:
    """Align the normalised words to the reference; substituted and inserted words are wrong."""
    tokens, owner = [], []
    for i, w in enumerate(words):
        for token in normalise(w["text"]).split():
            tokens.append(token)
            owner.append(i)
    out = jiwer.process_words(normalise(reference), " ".join(tokens))
    wrong = set()
    for chunk in out.alignments[0]:
        if chunk.type in ("substitute", "insert"):
            wrong.update(owner[j] for j in range(chunk.hyp_start_idx, chunk.hyp_end_idx))
    for i, w in enumerate(words):
        w["wrong"] = i in wrong


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", choices=["smoke", "ci", "full"], default="ci")
    p.add_argument("--calls", type=int, default=None, help="only the first N calls of the subset")
    p.add_argument("--json", type=Path, default=None, help="write every committed word here")
    p.add_argument("--model", default="base")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any ASRConfig field")
    for name in ("beam_size", "min_chunk_size", "vad", "buffer_trimming_sec", "window_padding_sec"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    rules = _tagging()
    processor, _ = load_processor(config_from(args))
    rows: list[dict[str, Any]] = []
    for call in build_calls(args.subset, default_cache_dir())[: args.calls]:
        words = stream_call(processor, rules, call)
        mark_wrong(words, call.reference)
        for w in words:
            w["call"] = call.name
        rows.extend(words)
        wrong = sum(w["wrong"] for w in words)
        print(f"{call.name:12s} {len(words):5d} words, {100 * wrong / max(1, len(words)):5.1f} % wrong", flush=True)
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows))


def report(rows: list[dict[str, Any]]) -> None:
    kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for w in rows:
        kinds[w["kind"]].append(w)
    print(f"{'committed by':18s} {'words':>6s} {'wrong':>7s} {'lag p50':>8s} {'p95':>6s}   wrong by probability")
    for kind, ws in sorted(kinds.items()):
        lags = [w["lag"] for w in ws]
        cells = []
        for lo, hi in itertools.pairwise(PROBABILITY_EDGES):
            band = [w for w in ws if lo <= w["p"] < hi]
            if band:
                share = 100 * sum(w["wrong"] for w in band) / len(band)
                cells.append(f"[{lo:.2f},{min(hi, 1):.2f}) {share:.0f} % of {len(band)}")
        print(
            f"{kind:18s} {len(ws):6d} {100 * sum(w['wrong'] for w in ws) / len(ws):6.1f}% "
            f"{np.percentile(lags, 50):7.2f}s {np.percentile(lags, 95):5.2f}s   " + "; ".join(cells)
        )


if __name__ == "__main__":
    main()
