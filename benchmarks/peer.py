"""whisper_streaming beside streamscribe on the same long calls, in the same run.

    python -m benchmarks.peer --whisper-streaming ~/src/whisper_streaming --subset full --calls 6 --sets mix

``--whisper-streaming`` is a checkout of https://github.com/ufal/whisper_streaming (the
directory holding ``whisper_online.py``); nothing of it is copied into this repository. Its
``OnlineASRProcessor`` runs as its own simulation script runs it with ``--comp_unaware``
(``--min-chunk-size`` seconds of audio per step, ``process_iter`` after each, ``finish`` at the
end), on its ``FasterWhisperASR`` (beam 5, word timestamps, ``condition_on_previous_text``),
with the same faster-whisper model object that streamscribe and the offline baseline use
(base, int8 on the CPU). Its defaults are kept: 1 s chunks, no VAD, no VAC, the buffer trimmed
at Whisper segments past 15 s. (``--vac``, which its README recommends, loads Silero from
``torch.hub`` over the internet, so it is not run here.)

For each set it prints offline WER (beam 5, cached as ``benchmarks.long_calls`` caches it), then
for streamscribe (this checkout's defaults, or ``--set``) and for whisper_streaming: pooled
WER, the difference from offline with its 95 % bootstrap interval over calls, commit lag p50 and
p95 in audio time (per word: audio fed when it was committed minus its end) and RTF on this
machine; and the difference between the two with its interval. Both see every call's audio as
float samples at 16 kHz, except that streamscribe gets the 8 kHz set at 8 kHz, as a telephony
producer would send it (``input_sample_rate=8000``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.call_scoring import Score, against_offline, bootstrap_difference, pooled, score
from benchmarks.calls import build_calls, default_cache_dir
from benchmarks.long_calls import SETS, Stream, StreamResult, evaluate, parse_value, source_version, streams_of
from benchmarks.simulate_rtf import machine
from worker.asr.config import ASRConfig
from worker.backends.faster_whisper import load_whisper_model
from worker.backends.registry import load_processor

PEER = "whisper_streaming"


def import_peer(checkout: Path) -> types.ModuleType:
    """``whisper_online`` from a checkout. Its file-loading helpers import librosa and soundfile,
    which this benchmark does not use (it hands over samples), so stand-ins fill in for them
    when they are not installed."""
    if not (checkout / "whisper_online.py").is_file():
        raise SystemExit(f"{checkout}: no whisper_online.py here (want a whisper_streaming checkout)")
    for name in ("librosa", "soundfile"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(checkout))
    return importlib.import_module("whisper_online")


def run_peer(
    peer: types.ModuleType, model: Any, config: ASRConfig, audio: np.ndarray, chunk_sec: float, trim_sec: float
) -> tuple[str, list[float], float]:
    """The peer's ``--comp_unaware`` loop over 16 kHz ``audio``: (text, per-word lags, busy seconds)."""

    class SharedModelASR(peer.FasterWhisperASR):  # type: ignore[name-defined,misc]
        def load_model(self, *_args: Any) -> Any:
            return model

    online = peer.OnlineASRProcessor(SharedModelASR(config.lan), None, buffer_trimming=("segment", trim_sec))
    rate = 16000
    step = round(chunk_sec * rate)
    words: list[str] = []
    lags: list[float] = []
    busy = 0.0
    for fed in range(0, audio.shape[0], step):
        online.insert_audio_chunk(audio[fed : fed + step])
        emit = min(audio.shape[0], fed + step) / rate
        before = len(online.commited)
        started = time.perf_counter()
        online.process_iter()
        busy += time.perf_counter() - started
        for _beg, end, word in online.commited[before:]:
            words.append(word)
            lags.append(emit - end)
    for _beg, end, word in online.transcript_buffer.complete():  # what ``finish`` flushes
        words.append(word)
        lags.append(audio.shape[0] / rate - end)
    return "".join(words).strip(), lags, busy


def summary(scores: list[Score], offline: list[Score], lags: list[float], busy: float, audio: float) -> dict[str, Any]:
    return {"wer": pooled(scores).wer, **against_offline(scores, offline, lags, busy, audio)}


def print_set(row: str, results: list[StreamResult], peers: list[tuple[str, list[float], float]]) -> dict[str, Any]:
    offline = [r.offline_score for r in results]
    ours = [r.streaming_score for r in results]
    theirs = [score(r.reference, text) for r, (text, _lags, _busy) in zip(results, peers, strict=True)]
    audio = sum(r.seconds for r in results)
    systems = {
        "streamscribe": summary(
            ours, offline, [x for r in results for x in r.lags], sum(r.busy for r in results), audio
        ),
        PEER: summary(theirs, offline, [x for p in peers for x in p[1]], sum(p[2] for p in peers), audio),
    }
    lo, hi = bootstrap_difference(ours, theirs)
    between = {"difference": pooled(ours).wer - pooled(theirs).wer, "difference_ci95": [lo, hi]}
    words = pooled(offline).words
    print(f"{row}: {len(results)} calls, {audio / 60:.1f} min, {words} reference words")
    print(f"  {'offline (beam 5)':19s} {pooled(offline).wer * 100:6.2f}%")
    for name, m in systems.items():
        a, b = m["difference_ci95"]
        print(
            f"  {name:19s} {m['wer'] * 100:6.2f}%  {m['difference'] * 100:+.2f} [{a * 100:+.2f}, {b * 100:+.2f}]"
            f"  lag p50 {m['lag_p50']:.2f}s p95 {m['lag_p95']:.2f}s  RTF {m['rtf']:.3f}"
        )
    print(
        f"  streamscribe − {PEER}: {between['difference'] * 100:+.2f} points [{lo * 100:+.2f}, {hi * 100:+.2f}]",
        flush=True,
    )
    return {
        "calls": len(results),
        "audio_sec": audio,
        "reference_words": words,
        "offline_wer": pooled(offline).wer,
        "systems": systems,
        "streamscribe_minus_peer": between,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--whisper-streaming", type=Path, required=True, help="a whisper_streaming checkout")
    p.add_argument("--subset", choices=["smoke", "ci", "full"], default="ci")
    p.add_argument("--sets", default="mix", help="comma-separated: mix, ulaw, stereo")
    p.add_argument("--calls", type=int, default=None, help="only the first N calls of the subset")
    p.add_argument("--peer-min-chunk-size", type=float, default=1.0, help="the peer's --min-chunk-size")
    p.add_argument("--peer-buffer-trimming-sec", type=float, default=15.0, help="the peer's --buffer_trimming_sec")
    p.add_argument("--json", type=Path, default=None, help="write every figure and hypothesis here")
    p.add_argument("--cache-dir", type=Path, default=None, help="generated calls and offline results")
    p.add_argument("--model", default="base")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="streamscribe's ASRConfig")
    args = p.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if unknown := set(sets) - set(SETS):
        raise SystemExit(f"unknown set(s) {', '.join(sorted(unknown))}: choose from {', '.join(SETS)}")
    peer = import_peer(args.whisper_streaming.expanduser().resolve())
    values: dict[str, Any] = {"model": args.model}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants key=value, got {item!r}")
        values[key.strip()] = parse_value(value.strip())
    config = ASRConfig.parse(**values)
    calls = build_calls(args.subset, args.cache_dir)[: args.calls]
    cache = (args.cache_dir or default_cache_dir()) / "offline"
    print(f"machine: {machine()}")
    print("config: " + " ".join(f"{k}={v}" for k, v in config.model_dump().items()))
    print(
        f"source: {source_version()}; peer: {args.whisper_streaming} "
        f"(min chunk {args.peer_min_chunk_size} s, trimming at segments past {args.peer_buffer_trimming_sec} s)"
    )
    load_processor(config)
    model = load_whisper_model(config.model, config.device, config.compute_type, config.model_dir, config.cache_dir)

    report: dict[str, Any] = {
        "machine": machine(),
        "source": source_version(),
        "config": config.model_dump(),
        "subset": args.subset,
        "sets": {},
        "streams": [],
    }
    for row in [s.row for s in streams_of(calls[0], sets)] if calls else []:
        results: list[StreamResult] = []
        peers: list[tuple[str, list[float], float]] = []
        for call in calls:
            stream: Stream = next(s for s in streams_of(call, sets) if s.row == row)
            results.append(evaluate(stream, config, cache))
            peers.append(
                run_peer(
                    peer, model, config, stream.audio(16000), args.peer_min_chunk_size, args.peer_buffer_trimming_sec
                )
            )
            r = results[-1]
            print(
                f"    {call.name:12s} offline {r.offline_score.wer * 100:6.2f}% streamscribe "
                f"{r.streaming_score.wer * 100:6.2f}% {PEER} {score(r.reference, peers[-1][0]).wer * 100:6.2f}%",
                file=sys.stderr,
                flush=True,
            )
            report["streams"].append(
                {
                    "row": row,
                    "call": call.name,
                    "reference": r.reference,
                    "offline": r.offline,
                    "streamscribe": r.streaming,
                    PEER: peers[-1][0],
                }
            )
        report["sets"][row] = print_set(row, results, peers)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
