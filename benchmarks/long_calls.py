"""Long-call evaluation: streaming against offline faster-whisper on synthetic two-party calls.

    python -m benchmarks.long_calls                          # ci subset, all sets, the defaults
    python -m benchmarks.long_calls --subset full --sets mix --json full-mix.json
    python -m benchmarks.long_calls --beam-size 5 --min-chunk-size 1.0 --set buffer_trimming_sec=10

For each set (``mix``: the 16 kHz mix; ``ulaw``: the 8 kHz μ-law mix, streamed at 8 kHz with
``input_sample_rate=8000``; ``stereo``: both channels streamed together as a worker's session
streams them, each channel's commits shared with the other (``conversation_prompt``), and each
scored against its channel's reference) it prints:

* offline WER: plain faster-whisper on the whole file, beam 5, VAD off, same model, the sampling
  of its temperature fallback seeded (``benchmarks.offline``). Cached per (file, channel, model,
  settings, seed, faster-whisper version): it does not change with the streaming code;
* streaming WER with the given ASRConfig (the defaults unless overridden), 100 ms chunks fed
  back to back and processed whenever the processor is due, as the worker drives it
  (``unaware``: the audio time does not depend on speed);
* the difference and its 95 % bootstrap interval over calls (2000 resamples, seed 0);
* commit lag per committed word: the audio time at which it was committed minus its end;
* RTF: processing seconds over audio seconds on this CPU, model loading excluded.

WER is pooled over the calls after Whisper's English normaliser (``benchmarks.corpus``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.call_scoring import (
    Score,
    TimedText,
    region_scores,
    score,
    turn_changes,
)
from benchmarks.calls import Call, build_calls, default_cache_dir
from benchmarks.conversation import ChannelRun, due_point, run_channels
from benchmarks.long_calls_report import print_table, summarise
from benchmarks.offline import OFFLINE_BEAM, OFFLINE_SEED, offline_transcribe
from benchmarks.simulate_rtf import machine
from worker.asr.audio import decode_file
from worker.asr.config import ASRConfig
from worker.asr.contracts import ASRProcessor, Committed, DeferrableProcessor
from worker.backends.registry import load_processor

SETS = ("mix", "ulaw", "stereo")


@dataclass(frozen=True)
class Stream:
    """One audio stream to score: a call's file, at the rate the processor gets it."""

    row: str  # mix, ulaw, stereo.ch0, stereo.ch1
    call: Call
    path: Path
    rate: int
    channel: int | None
    reference: str

    def audio(self, rate: int) -> np.ndarray:
        if self.channel is None:
            return decode_file(self.path, rate)
        return decode_file(self.path, rate, split_channels=True)[self.channel]

    def phrases(self) -> list[TimedText]:
        return [TimedText(p.start, p.end, p.text) for p in self.call.phrases if self.channel in (None, p.speaker)]


@dataclass
class StreamResult:
    row: str
    call: str
    seconds: float
    reference: str
    streaming: str
    offline: str
    streaming_score: Score
    offline_score: Score
    busy: float
    offline_busy: float
    lags: list[float] = field(repr=False)
    regions: dict[str, dict[str, Score]] = field(default_factory=dict)


def streams_of(call: Call, sets: list[str]) -> list[Stream]:
    out = []
    if "mix" in sets:
        out.append(Stream("mix", call, call.mix16k, 16000, None, call.reference))
    if "ulaw" in sets:
        out.append(Stream("ulaw", call, call.ulaw8k, 8000, None, call.reference))
    if "stereo" in sets:
        for ch in (0, 1):
            out.append(Stream(f"stereo.ch{ch}", call, call.stereo16k, 16000, ch, call.channel_references[ch]))
    return out


def stream_commits(
    processor: ASRProcessor, audio: np.ndarray, rate: int, chunk_sec: float = 0.1, catch_up_step_sec: float = 0.0
) -> Iterator[tuple[Committed, float, str]]:
    """Feed ``audio`` as the worker gets it; yield (committed, audio seconds fed, point).

    Chunks of ``chunk_sec`` (a producer's frames: 100 ms by default) go in back to back, and
    after each the processor runs while it is due, exactly as the worker's loop drives it
    (``min_chunk_size`` of new audio, or a pause the voice tracker heard). ``point`` is the
    processor's :meth:`~worker.asr.online.OnlineASRProcessor.due_point` (``"chunk"`` for a
    processor without one), and ``"finish"`` for the end of the stream. Unaware of compute time,
    so what is committed does not depend on the machine's speed.

    ``catch_up_step_sec``: as a worker that is behind all through the call would (the whole call
    queued, ``catch_up_step_sec`` of the worker settings): a chunk point that may wait
    (:meth:`~worker.asr.online.OnlineASRProcessor.can_defer`) waits for more audio while any
    remains (the worker stops merging in the last ``min_chunk_size`` of a call; a near-end nuance).
    """
    processor.init()
    step = max(1, round(chunk_sec * rate))

    for fed in range(0, audio.shape[0], step):
        processor.insert_audio_chunk(audio[fed : fed + step])
        emit = min(audio.shape[0], fed + step) / rate
        behind = catch_up_step_sec > 0 and fed + 2 * step <= audio.shape[0]
        if behind and isinstance(processor, DeferrableProcessor) and processor.can_defer(catch_up_step_sec):
            continue
        while (kind := due_point(processor)) is not None:
            yield processor.process_iter(), emit, kind
    yield processor.finish(), audio.shape[0] / rate, "finish"


def run_streaming(
    config: ASRConfig, audio: np.ndarray, rate: int, chunk_sec: float = 0.1, catch_up_step_sec: float = 0.0
) -> tuple[str, list[float], float]:
    """Stream ``audio`` (:func:`stream_commits`); return (text, per-word lags, busy seconds).

    A word's lag is its own: the audio fed when it was committed minus its end.
    """
    processor, _meta = load_processor(config)
    run = ChannelRun()
    started = time.perf_counter()
    for committed, emit, _point in stream_commits(processor, audio, rate, chunk_sec, catch_up_step_sec):
        run.take(committed, emit)
    return run.text, run.lags, time.perf_counter() - started


def run_offline(config: ASRConfig, stream: Stream, cache: Path) -> tuple[str, float]:
    """Plain faster-whisper on the whole file (beam 5, no VAD, seeded: ``benchmarks.offline``), cached."""
    import faster_whisper

    settings = {
        "model": config.model,
        "model_dir": config.model_dir,
        "device": config.device,
        "compute_type": config.compute_type,
        "language": None if config.lan == "auto" else config.lan,
        "task": config.task,
        "beam_size": OFFLINE_BEAM,
        "seed": OFFLINE_SEED,
        "faster_whisper": faster_whisper.__version__,
        "file": hashlib.sha256(stream.path.read_bytes()).hexdigest(),
        "channel": stream.channel,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{key}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        return cached["text"], cached["busy"]
    # faster-whisper decodes a file to 16 kHz with PyAV's resampler; decode_file does the same
    result = offline_transcribe(
        stream.audio(16000),
        model=config.model,
        device=config.device,
        compute_type=config.compute_type,
        model_dir=config.model_dir,
        cache_dir=config.cache_dir,
        language=settings["language"],
        task=config.task,
    )
    cache.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings, "text": result.text, "busy": result.busy, "temperatures": result.temperatures}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return result.text, result.busy


def evaluate(stream: Stream, config: ASRConfig, offline_cache: Path, catch_up_step_sec: float = 0.0) -> StreamResult:
    stream_config = config.replace(input_sample_rate=stream.rate) if stream.rate != 16000 else config
    audio = stream.audio(stream.rate)
    text, lags, busy = run_streaming(stream_config, audio, stream.rate, catch_up_step_sec=catch_up_step_sec)
    return _scored(stream, config, offline_cache, text, lags, busy)


def evaluate_channels(streams: list[Stream], config: ASRConfig, offline_cache: Path) -> list[StreamResult]:
    """The channels of one call (its ``stereo`` streams) streamed together, as the worker's
    session streams them (:mod:`benchmarks.conversation`), each scored against its reference."""
    if len({(s.call.name, s.path, s.rate) for s in streams}) > 1:
        raise ValueError("evaluate_channels takes the channels of one file")
    if not streams:
        return []
    rate = streams[0].rate
    stream_config = config.replace(input_sample_rate=rate) if rate != 16000 else config
    audios = [s.audio(rate) for s in streams]
    runs = run_channels(stream_config, audios, rate)
    return [_scored(s, config, offline_cache, r.text, r.lags, r.busy) for s, r in zip(streams, runs, strict=True)]


def _scored(
    stream: Stream, config: ASRConfig, offline_cache: Path, text: str, lags: list[float], busy: float
) -> StreamResult:
    offline, offline_busy = run_offline(config, stream, offline_cache)
    phrases = stream.phrases()
    changes = turn_changes([(t.speaker, t.start, t.end) for t in stream.call.turns])
    seconds = stream.call.seconds
    return StreamResult(
        row=stream.row,
        call=stream.call.name,
        seconds=seconds,
        reference=stream.reference,
        streaming=text,
        offline=offline,
        streaming_score=score(stream.reference, text),
        offline_score=score(stream.reference, offline),
        busy=busy,
        offline_busy=offline_busy,
        lags=lags,
        regions={
            "streaming": region_scores(phrases, text, seconds, changes),
            "offline": region_scores(phrases, offline, seconds, changes),
        },
    )


def source_version() -> str:
    """The checkout's commit, with "+dirty" when the working tree has changes."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return (head.stdout.strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")


def parse_value(text: str) -> Any:
    """``--set`` values: none/null, true/false, numbers, otherwise the string."""
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def config_from(args: argparse.Namespace) -> ASRConfig:
    values: dict[str, Any] = {"model": args.model}
    for name in ("beam_size", "min_chunk_size", "vad", "buffer_trimming_sec"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.window_padding_sec is not None:
        values["window_padding_sec"] = parse_value(args.window_padding_sec)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants key=value, got {item!r}")
        values[key.strip()] = parse_value(value.strip())
    return ASRConfig.parse(**values)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", choices=["smoke", "ci", "full"], default="ci")
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated: mix, ulaw, stereo")
    p.add_argument("--calls", type=int, default=None, help="only the first N calls of the subset")
    p.add_argument("--json", type=Path, default=None, help="write every figure and hypothesis here")
    p.add_argument("--cache-dir", type=Path, default=None, help="generated calls and offline results")
    p.add_argument("--model", default="base")
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--min-chunk-size", type=float, default=None)
    p.add_argument("--vad", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--buffer-trimming-sec", type=float, default=None)
    p.add_argument("--window-padding-sec", default=None, help="seconds, or 'none' for Whisper's 30 s window")
    p.add_argument(
        "--catch-up-step-sec",
        type=float,
        default=0.0,
        help="stream as a worker that is behind all through the call, merging chunk points into steps"
        " of up to this much audio (the worker's catch_up_step_sec); default 0: a live worker that keeps up",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any ASRConfig field")
    args = p.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if unknown := set(sets) - set(SETS):
        raise SystemExit(f"unknown set(s) {', '.join(sorted(unknown))}: choose from {', '.join(SETS)}")
    config = config_from(args)

    started = time.perf_counter()
    calls = build_calls(args.subset, args.cache_dir)[: args.calls]
    root = args.cache_dir or default_cache_dir()
    built = time.perf_counter() - started
    words = sum(len(c.reference.split()) for c in calls)
    print(f"machine: {machine()}")
    # every field, not just the overrides: the defaults move as the processor is tuned
    print("config: " + " ".join(f"{k}={v}" for k, v in config.model_dump().items()))
    print(f"source: {source_version()}")
    if args.catch_up_step_sec:
        print(f"fed as a worker behind all through each call: chunk steps merged up to {args.catch_up_step_sec} s")
    print(
        f"subset {args.subset}: {len(calls)} calls, {sum(c.seconds for c in calls) / 60:.1f} min, "
        f"{words} reference words (built or loaded in {built:.1f} s)",
        flush=True,
    )
    load_processor(config)  # load the model once, outside the timing

    results: list[StreamResult] = []
    for call in calls:
        streams = streams_of(call, sets)
        # the stereo channels go together, as a session streams them, unless fed as a worker behind
        together = [s for s in streams if s.channel is not None and not args.catch_up_step_sec]
        alone = [s for s in streams if s not in together]
        call_results = [evaluate(s, config, root / "offline", args.catch_up_step_sec) for s in alone]
        for r in call_results + evaluate_channels(together, config, root / "offline"):
            results.append(r)
            print(
                f"  {r.call:12s} {r.row:11s} offline {r.offline_score.wer * 100:6.2f}% "
                f"streaming {r.streaming_score.wer * 100:6.2f}% RTF {r.busy / r.seconds:.3f}",
                file=sys.stderr,
                flush=True,
            )
    rows = list(dict.fromkeys(r.row for r in results))
    summaries = {row: summarise([r for r in results if r.row == row]) for row in rows}
    print_table(summaries)
    if args.json:
        report = {
            "machine": machine(),
            "source": source_version(),
            "config": config.model_dump(),
            "subset": args.subset,
            "offline": {"beam_size": OFFLINE_BEAM, "vad_filter": False, "word_timestamps": False, "seed": OFFLINE_SEED},
            "sets": summaries,
            "streams": [
                {**{k: v for k, v in asdict(r).items() if k not in ("lags", "regions")}, "lags": r.lags}
                for r in results
            ],
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
