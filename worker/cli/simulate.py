"""``streamscribe simulate AUDIO``: stream a recording through a processor, print JSON lines."""

from __future__ import annotations

import argparse
import json
import sys

from worker.asr.audio import decode_file
from worker.asr.config import ASRConfig
from worker.asr.simulation import simulate
from worker.backends.registry import load_processor


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="transcribe a recording as if it were a live stream")
    p.add_argument("audio", help="any format PyAV reads; resampled to 16 kHz mono")
    p.add_argument("--backend", default="faster-whisper")
    p.add_argument("--model", default="base")
    p.add_argument("--language", default="en", help="language code, or auto")
    p.add_argument(
        "--min-chunk-size", type=float, default=ASRConfig().min_chunk_size, help="seconds of audio per iteration"
    )
    p.add_argument("--buffer-trimming", choices=["segment", "sentence"], default="segment")
    p.add_argument("--buffer-trimming-sec", type=float, default=15.0)
    p.add_argument("--vad", action=argparse.BooleanOptionalAction, default=True, help="skip audio without speech")
    p.add_argument(
        "--vac",
        action=argparse.BooleanOptionalAction,
        default=ASRConfig().vac,
        help="utterance-bounded buffers: commit at pauses, cut at utterance ends",
    )
    p.add_argument("--beam-size", type=int, default=ASRConfig().beam_size)
    p.add_argument("--device", default="auto")
    p.add_argument("--compute-type", default="auto")
    p.add_argument("--mode", choices=["unaware", "aware", "offline"], default="unaware")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = ASRConfig.parse(
        backend=args.backend,
        model=args.model,
        lan=args.language,
        min_chunk_size=args.min_chunk_size,
        buffer_trimming=args.buffer_trimming,
        buffer_trimming_sec=args.buffer_trimming_sec,
        vad=args.vad,
        vac=args.vac,
        beam_size=args.beam_size,
        device=args.device,
        compute_type=args.compute_type,
    )
    audio = decode_file(args.audio)
    processor, _meta = load_processor(config)
    for segment in simulate(processor, audio, 16000, chunk_sec=0.1, mode=args.mode):
        print(json.dumps(segment.as_json_dict(), ensure_ascii=False), flush=True)
    sys.stdout.flush()
    return 0
