"""The figures ``benchmarks.long_calls`` prints and writes: one row per set, pooled over its calls."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from benchmarks.call_scoring import REGIONS, Score, against_offline, pooled

if TYPE_CHECKING:
    from benchmarks.long_calls import StreamResult


def summarise(results: list[StreamResult]) -> dict[str, Any]:
    """Pooled figures of one row (set), with the bootstrap over its calls."""
    streaming, offline = [r.streaming_score for r in results], [r.offline_score for r in results]
    lags = [lag for r in results for lag in r.lags]
    audio = sum(r.seconds for r in results)
    regions = {
        kind: {name: asdict(pooled([r.regions[kind][name] for r in results])) for name in REGIONS}
        for kind in ("streaming", "offline")
    }
    return {
        "calls": len(results),
        "audio_sec": round(audio, 2),
        "reference_words": pooled(streaming).words,
        "offline_wer": pooled(offline).wer,
        "streaming_wer": pooled(streaming).wer,
        **against_offline(streaming, offline, lags, sum(r.busy for r in results), audio),
        "offline_rtf": sum(r.offline_busy for r in results) / audio,
        "regions": regions,
    }


def print_table(summaries: dict[str, dict[str, Any]]) -> None:
    def pct(x: float) -> str:
        return f"{x * 100:.2f}%"

    def sec(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}s"

    print(
        f"{'set':11s} {'calls':>5s} {'audio':>7s} {'words':>6s} {'offline':>8s} {'stream':>8s} "
        f"{'diff [95% CI]':>24s} {'lag p50':>8s} {'p95':>6s} {'RTF':>6s} {'off.RTF':>7s}"
    )
    for row, m in summaries.items():
        lo, hi = m["difference_ci95"]
        diff = f"{m['difference'] * 100:+.2f} [{lo * 100:+.2f}, {hi * 100:+.2f}]"
        print(
            f"{row:11s} {m['calls']:5d} {m['audio_sec'] / 60:6.1f}m {m['reference_words']:6d} "
            f"{pct(m['offline_wer']):>8s} {pct(m['streaming_wer']):>8s} {diff:>24s} "
            f"{sec(m['lag_p50']):>8s} {sec(m['lag_p95']):>6s} {m['rtf']:6.3f} {m['offline_rtf']:7.3f}"
        )
    print("errors by region, streaming WER (offline WER) and reference words, approximate:")
    for row, m in summaries.items():
        cells = []
        for name in REGIONS:
            s, o = Score(**m["regions"]["streaming"][name]), Score(**m["regions"]["offline"][name])
            cells.append(f"{name}: {pct(s.wer)} ({pct(o.wer)}) n={s.words}")
        print(f"  {row:11s} " + "; ".join(cells))
