"""Real-time factor and WER of streaming simulation on the real speech corpus (benchmarks/speech).

    python -m benchmarks.simulate_rtf                       # the defaults
    python -m benchmarks.simulate_rtf --min-chunk-size 1.0 --beam-size 5
    python -m benchmarks.simulate_rtf --mode offline --beam-size 5 --no-vad --window-padding-sec none
                                                   # the quality reference: plain faster-whisper

RTF = processing seconds / audio seconds, model loading excluded, in ``unaware`` mode (audio
fed back to back as fast as the processor takes it). WER is corpus WER after Whisper's English
normaliser. Prints the machine it ran on; the numbers are only comparable on the same machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from benchmarks.corpus import corpus_wer, load_manifest
from worker.asr.audio import decode_file
from worker.asr.config import ASRConfig
from worker.asr.simulation import simulate
from worker.backends.registry import load_processor


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["unaware", "offline"], default="unaware")
    p.add_argument("--model", default="base")
    p.add_argument("--min-chunk-size", type=float, default=ASRConfig().min_chunk_size)
    p.add_argument("--beam-size", type=int, default=ASRConfig().beam_size)
    p.add_argument("--vad", action=argparse.BooleanOptionalAction, default=ASRConfig().vad)
    p.add_argument("--buffer-trimming-sec", type=float, default=ASRConfig().buffer_trimming_sec)
    p.add_argument(
        "--window-padding-sec",
        type=lambda v: None if v == "none" else float(v),
        default=ASRConfig().window_padding_sec,
        help="silence after the buffer in the encoder window; 'none' for Whisper's full 30 s",
    )
    args = p.parse_args()
    config = ASRConfig.parse(
        model=args.model,
        min_chunk_size=args.min_chunk_size,
        beam_size=args.beam_size,
        vad=args.vad,
        buffer_trimming_sec=args.buffer_trimming_sec,
        window_padding_sec=args.window_padding_sec,
    )
    recordings = load_manifest()
    load_processor(config)  # load the model once, outside the timing
    refs, hyps, audio_sec, busy, lags = [], [], 0.0, 0.0, []
    for rec in recordings:
        audio = decode_file(rec.path)
        processor, _meta = load_processor(config)
        started = time.perf_counter()
        segments = list(simulate(processor, audio, 16000, chunk_sec=0.1, mode=args.mode))
        busy += time.perf_counter() - started
        text = " ".join(s.text for s in segments)
        # audio time at which each segment was committed, after its last word ended
        lags += [s.emit - s.end for s in segments]
        audio_sec += audio.shape[0] / 16000
        refs.append(rec.reference)
        hyps.append(text)
    wer = corpus_wer(refs, hyps)
    print(f"machine: {machine()}")
    print(
        f"mode={args.mode} model={args.model} min_chunk={args.min_chunk_size} beam={args.beam_size} vad={args.vad} "
        f"trim={args.buffer_trimming_sec} window_padding={args.window_padding_sec}"
    )
    print(
        f"files={len(recordings)} audio={audio_sec:.1f}s processing={busy:.1f}s "
        f"RTF={busy / audio_sec:.3f} WER={wer * 100:.2f}%"
    )
    if args.mode == "unaware" and lags:
        lag = np.array(lags)
        print(
            f"commit lag (audio time from a segment's end to its commit, compute excluded): "
            f"mean={lag.mean():.2f}s p50={np.percentile(lag, 50):.2f}s p90={np.percentile(lag, 90):.2f}s"
        )


if __name__ == "__main__":
    main()
