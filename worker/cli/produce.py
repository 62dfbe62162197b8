"""``streamscribe produce FILE...``: stream recordings into sessions, as live calls would.

Every file is decoded (any format PyAV reads) and resampled by PyAV to the session's rate, then
sent in ``--chunk-ms`` chunks, all files at once as concurrent sessions (one thread each). The
session ids go to stdout, one per line in the order of the files, as soon as the sessions are
open; a progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from producer.client import Producer, SessionWriter
from producer.common import add_connection_arguments, tls_from_args
from worker.errors import ConfigError
from worker.protocol.audiofile import decode_file
from worker.protocol.messages import ENCODINGS
from worker.protocol.pcm import BYTES_PER_SAMPLE

#: The workers' default ``max_chunk_bytes``: larger chunks are rejected (``chunk_too_large``).
WORKER_CHUNK_CAP = 262144


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("produce", help="stream audio files into sessions (one concurrent session per file)")
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="WAV; any format PyAV reads with the files extra; - reads raw audio (--encoding) from stdin",
    )
    p.add_argument("--realtime", action="store_true", help="send at the audio's own pace (wall-clock speed)")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per chunk, in milliseconds (default 100)")
    p.add_argument("--encoding", choices=ENCODINGS, default="pcm_s16le", help="mulaw and alaw imply 8000 Hz")
    p.add_argument("--sample-rate", type=int, help="default 16000, or 8000 for mulaw / alaw")
    p.add_argument("--split-channels", action="store_true", help="one multi-channel session (default: downmix)")
    p.add_argument("--channels", type=int, default=1, help="channels of the raw audio read from stdin (-)")
    p.add_argument("--session-id", help="the session's id (one file only; default: a random id)")
    p.add_argument("--language", help="the session's language code, or auto")
    p.add_argument("--model", help="ask the worker for this model (if it allows it)")
    p.add_argument("--backend", help="ask the worker for this backend (if it allows it)")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    p.add_argument("--tenant", help="whose calls these are, for the workers' per-tenant quotas")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress on stderr")
    add_connection_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rate = _sample_rate(args)
    if "-" in args.files:
        if len(args.files) > 1:
            raise ConfigError("- (stdin) is one session; give it alone")
        return _produce_stdin(args, rate)
    if args.session_id and len(args.files) > 1:
        raise ConfigError("--session-id names one session; it takes exactly one file")
    if args.chunk_ms <= 0:
        raise ConfigError("--chunk-ms must be positive")
    metadata = _metadata(args.metadata)
    # decode everything first, so that a bad file fails before any session is opened
    audios = [_load(path, rate, args.split_channels) for path in args.files]
    producer = Producer(
        args.redis_url, key_prefix=args.key_prefix, shards=args.shards, cluster=args.cluster, tls=tls_from_args(args)
    )
    writers: list[SessionWriter] = []
    for path, audio in zip(args.files, audios, strict=True):
        writer = producer.open(
            args.session_id,
            sample_rate=rate,
            encoding=args.encoding,
            channels=1 if audio.ndim == 1 else audio.shape[1],
            language=args.language,
            model=args.model,
            backend=args.backend,
            metadata={"source": Path(path).name, **metadata},
            tenant=args.tenant,
        )
        writers.append(writer)
        print(writer.session_id, flush=True)
    progress = Progress(sum(a.shape[0] for a in audios) / rate, len(writers), args.progress)
    stop = threading.Event()
    chunk = max(1, rate * args.chunk_ms // 1000)
    widest = chunk * BYTES_PER_SAMPLE[args.encoding] * max(1 if a.ndim == 1 else a.shape[1] for a in audios)
    if widest > WORKER_CHUNK_CAP:
        print(
            f"streamscribe produce: warning: chunks of {widest} bytes exceed the workers' default cap of "
            f"{WORKER_CHUNK_CAP} (max_chunk_bytes); they will be rejected unless it is raised",
            file=sys.stderr,
        )
    previous = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
    try:
        with ThreadPoolExecutor(max_workers=len(writers), thread_name_prefix="produce") as pool:
            futures = [
                pool.submit(_stream, w, a, rate, chunk, args.realtime, progress, stop)
                for w, a in zip(writers, audios, strict=True)
            ]
            try:
                return _wait(futures, args.files)
            except KeyboardInterrupt:
                stop.set()  # each thread ends its session ("error") and returns
                wait(futures)
                return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        progress.finish()
        producer.close()


def _produce_stdin(args: argparse.Namespace, rate: int) -> int:
    """One live session from raw audio on stdin (``--encoding``, ``--sample-rate``, ``--channels``).

    Chunks go out as they arrive, so a pipe from a telephony tool streams live; end of input
    ends the session as completed, Ctrl-C or SIGTERM as ``error``.
    """
    if not 1 <= args.channels <= 8:
        raise ConfigError("--channels must be 1..8")
    if args.chunk_ms <= 0:
        raise ConfigError("--chunk-ms must be positive")
    frame_bytes = BYTES_PER_SAMPLE[args.encoding] * args.channels
    chunk_bytes = max(1, rate * args.chunk_ms // 1000) * frame_bytes
    source = sys.stdin.buffer
    producer = Producer(
        args.redis_url, key_prefix=args.key_prefix, shards=args.shards, cluster=args.cluster, tls=tls_from_args(args)
    )
    writer = producer.open(
        args.session_id,
        sample_rate=rate,
        encoding=args.encoding,
        channels=args.channels,
        language=args.language,
        model=args.model,
        backend=args.backend,
        metadata={"source": "stdin", **_metadata(args.metadata)},
        tenant=args.tenant,
    )
    print(writer.session_id, flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
    reason = "error"
    try:
        while True:
            data = source.read(chunk_bytes)
            if not data:
                break
            whole = len(data) - len(data) % frame_bytes
            if whole < len(data):
                print(
                    f"streamscribe produce: warning: stdin ended inside a frame; dropped {len(data) - whole} byte(s)",
                    file=sys.stderr,
                )
            if whole:
                writer.send(data[:whole])
        reason = "completed"
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(Exception):
            writer.close(reason)
        producer.close()


def _sample_rate(args: argparse.Namespace) -> int:
    telephony = args.encoding in ("mulaw", "alaw")
    rate = args.sample_rate or (8000 if telephony else 16000)
    if telephony and rate != 8000:
        raise ConfigError(f"{args.encoding} audio is 8000 Hz; drop --sample-rate {rate}")
    if not 8000 <= rate <= 192000:
        raise ConfigError(f"--sample-rate {rate} is outside 8000..192000")
    return rate


def _metadata(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--metadata {pair!r}: use KEY=VALUE")
        out[key] = value
    return out


def _load(path: str, rate: int, split_channels: bool) -> np.ndarray:
    """``(frames,)`` mono, or ``(frames, channels)`` with ``split_channels`` and a multi-channel file."""
    audio = decode_file(path, rate, split_channels=split_channels)
    if audio.ndim == 1:
        return audio
    if audio.shape[0] > 8:
        raise ConfigError(f"{path} has {audio.shape[0]} channels; a session has at most 8")
    return audio[0] if audio.shape[0] == 1 else np.ascontiguousarray(audio.T)


def _stream(
    writer: SessionWriter,
    audio: np.ndarray,
    rate: int,
    chunk: int,
    realtime: bool,
    progress: Progress,
    stop: threading.Event,
) -> None:
    try:
        _send_all(writer, audio, rate, chunk, realtime, progress, stop)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close("error")  # tell the worker now, rather than after its stall timeout
        raise


def _send_all(
    writer: SessionWriter,
    audio: np.ndarray,
    rate: int,
    chunk: int,
    realtime: bool,
    progress: Progress,
    stop: threading.Event,
) -> None:
    started = time.monotonic()
    for start in range(0, audio.shape[0], chunk):
        piece = audio[start : start + chunk]
        if realtime:
            # a chunk exists only once its last sample has been spoken
            stop.wait(max(0.0, started + (start + piece.shape[0]) / rate - time.monotonic()))
        if stop.is_set():
            writer.close("error")
            return
        writer.send(piece)
        progress.advance(piece.shape[0] / rate)
    writer.close()
    progress.session_done()


def _wait(futures: list[Future[None]], files: list[str]) -> int:
    pending = set(futures)
    while pending:
        # a timeout keeps the main thread responsive to Ctrl-C and SIGTERM
        _done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
    failed = 0
    for future, path in zip(futures, files, strict=True):
        error = future.exception()
        if error is not None:
            failed += 1
            print(f"streamscribe produce: {path}: {error}", file=sys.stderr)
    return 1 if failed else 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal, a line per 10 % elsewhere."""

    WIDTH = 30

    def __init__(self, total_sec: float, sessions: int, enabled: bool) -> None:
        self.total = max(total_sec, 1e-9)
        self.sessions = sessions
        self.enabled = enabled
        self.tty = enabled and _stderr_is_tty()
        self.sent = 0.0
        self.done = 0
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._last_step = -1

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.sent += seconds
            self._maybe_draw()

    def session_done(self) -> None:
        with self._lock:
            self.done += 1
            self._maybe_draw(force=True)

    def finish(self) -> None:
        with self._lock:
            if self.enabled and self.tty:
                sys.stderr.write("\n")
                sys.stderr.flush()

    def _maybe_draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        fraction = min(1.0, self.sent / self.total)
        now = time.monotonic()
        if self.tty:
            if not force and now - self._last_draw < 0.2:
                return
            end = "\r"
        else:
            step = int(fraction * 10)
            if step == self._last_step and not force:
                return
            self._last_step = step
            end = "\n"
        self._last_draw = now
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = f"produce [{bar}] {fraction:4.0%}  {self.sent:.1f}/{self.total:.1f} s  {self.done}/{self.sessions} done"
        sys.stderr.write(line + end)
        sys.stderr.flush()


def _stderr_is_tty() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # a replaced stderr (pytest's capture) has no fd
        return False
