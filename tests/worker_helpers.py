"""Helpers of the worker tests: worker processes, a real-time producer, and reading the results.

* :class:`WorkerFleet` starts ``streamscribe worker`` subprocesses with the synthetic backend,
  waits for each one's "ready" line (which names its metrics port), and kills every one it
  started when the test ends, stopped (SIGSTOP) ones included.
* :class:`RealtimeProducer` streams synthetic words from a thread, chunk by chunk, sped up.
* :func:`session_events`, :func:`shard_events`, :func:`words_of` and :func:`segments_of`
  read what the workers committed, in the forms the assertions compare.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from producer.client import Producer
from worker.backends.synthetic import encode_words, expected_words
from worker.protocol.connection import connect
from worker.protocol.events import Event, decode_event
from worker.protocol.keys import Keyspace
from worker.runtime.loop import Worker
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
KEYS = Keyspace()
T = TypeVar("T")

#: The environment of a worker process that serves the synthetic backend only.
SYNTHETIC_ENV = {
    "STREAMSCRIBE_ASR__BACKEND": "synthetic",
    "STREAMSCRIBE_ASR__MODEL": "tones",
    "STREAMSCRIBE_ASR__VAD": "false",
    "STREAMSCRIBE_ALLOWED_BACKENDS": "synthetic",
    "STREAMSCRIBE_ALLOWED_MODELS": "tones",
    "STREAMSCRIBE_JANITOR_INTERVAL_SEC": "0.2",
    "STREAMSCRIBE_POLL_INTERVAL_SEC": "0.01",
    # chunk points are not merged when a session is behind, so every run of an input, however it
    # is interrupted, makes the same calls: tests compare segments with an uninterrupted run
    # (tests/test_catch_up.py and the catch-up kill test turn merging on)
    "STREAMSCRIBE_CATCH_UP_STEP_SEC": "0",
}
_READY = re.compile(r"streamscribe worker (\S+) ready; metrics on :(\d+)")


def synthetic_settings(url: str, **overrides: Any) -> WorkerSettings:
    """Settings of an in-process worker with the synthetic backend and short timings."""
    base: dict[str, Any] = dict(
        redis_url=url,
        asr={"backend": "synthetic", "model": "tones", "vad": False},
        allowed_backends=["synthetic"],
        allowed_models=["tones"],
        lease_ttl_sec=2.0,
        janitor_interval_sec=0.2,
        poll_interval_sec=0.01,
        metrics_port=0,
        catch_up_step_sec=0.0,  # see SYNTHETIC_ENV
    )
    base.update(overrides)
    return WorkerSettings.build(**base)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


# -- worker processes ------------------------------------------------------------------------


@dataclass(eq=False)
class WorkerProcess:
    """One ``streamscribe worker`` subprocess; its log (stderr) goes to ``log_path``."""

    worker_id: str
    proc: subprocess.Popen
    log_path: Path
    metrics_port: int = 0
    lines: queue.Queue = field(default_factory=queue.Queue)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> float:
        """Send ``sig``; returns the wall-clock time it was sent (to compare with Redis-side stamps)."""
        sent = time.time()
        self.proc.send_signal(sig)
        return sent

    def kill(self) -> float:
        sent = self.send(signal.SIGKILL)
        self.proc.wait(timeout=10)
        return sent

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the worker's /metrics (0.0 when absent)."""
        _status, body = self.http_get("/metrics")
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in body.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


class WorkerFleet:
    """Starts worker processes and kills every one of them on exit (use it as a context manager)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []

    def spawn(
        self,
        url: str,
        worker_id: str,
        *,
        lease_ttl_sec: float = 1.5,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
        prelude: str = "",
        ready_timeout: float = 30.0,
        cli_args: Sequence[str] = (),
    ) -> WorkerProcess:
        """Start a worker and wait for its "ready" line; ``prelude`` is Python run before the CLI."""
        log_path = self.log_dir / f"{worker_id}.log"
        entry = ["-m", "worker.cli.main"]
        if prelude:
            entry = ["-c", f"{prelude}\nimport sys\nfrom worker.cli.main import main\nsys.exit(main(sys.argv[1:]))"]
        command = [
            sys.executable, *entry, "--log-level", "INFO", *cli_args, "worker",
            "--redis-url", url,
            "--worker-id", worker_id,
            "--lease-ttl-sec", str(lease_ttl_sec),
            "--metrics-port", "0",
            "--metrics-host", "127.0.0.1",
            *args,
        ]  # fmt: skip
        full_env = {**os.environ, **SYNTHETIC_ENV, **(env or {})}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                command, cwd=REPO, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
            )
        worker = WorkerProcess(worker_id, proc, log_path)
        self.workers.append(worker)
        threading.Thread(target=_drain, args=(proc, worker.lines), daemon=True).start()
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                line = worker.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"worker {worker_id} not ready in {ready_timeout} s:\n{worker.log()}") from None
            if line is None:
                raise AssertionError(f"worker {worker_id} exited with {proc.wait()} before ready:\n{worker.log()}")
            ready = _READY.search(line)
            if ready:
                worker.metrics_port = int(ready.group(2))
                return worker

    def by_id(self, worker_id: str) -> WorkerProcess:
        return next(w for w in self.workers if w.worker_id == worker_id)

    def close(self) -> None:
        for w in self.workers:
            if w.alive():
                with contextlib.suppress(OSError):
                    w.proc.kill()
                with contextlib.suppress(OSError):
                    w.proc.send_signal(signal.SIGCONT)
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=10)
            if w.proc.stdout:
                w.proc.stdout.close()

    def __enter__(self) -> WorkerFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def slow_backend(seconds: float) -> str:
    """A prelude that makes every transcribe call print "transcribe call" and then take ``seconds``."""
    return (
        "import time\n"
        "from worker.backends.synthetic import SyntheticASR\n"
        "_original = SyntheticASR.transcribe_batch\n"
        "def _slow(self, items):\n"
        "    print('transcribe call', flush=True)\n"
        f"    time.sleep({seconds})\n"
        "    return _original(self, items)\n"
        "SyntheticASR.transcribe_batch = _slow\n"
    )


def next_line(worker: WorkerProcess, text: str, timeout: float) -> str:
    """The next stdout line of ``worker`` that holds ``text`` (earlier lines are discarded)."""
    while True:
        try:
            worker.lines.get_nowait()
        except queue.Empty:
            break
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = worker.lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"worker {worker.worker_id} printed no {text!r} in {timeout} s") from None
        if line is None:
            raise AssertionError(f"worker {worker.worker_id} exited:\n{worker.log()}")
        if text in line:
            return line


def rss_kib(pid: int) -> int | None:
    """Resident memory of a live process in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def _drain(proc: subprocess.Popen, lines: queue.Queue) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.put(raw.decode(errors="replace"))
    lines.put(None)


# -- producing -----------------------------------------------------------------------------


class RealtimeProducer(threading.Thread):
    """Streams ``audio`` as one session from a thread: ``chunk_frames`` per chunk, one chunk every
    ``interval_sec`` (real time is ``chunk_frames / sample_rate``; less is faster), then the end.

    ``finish(hurry=True)`` sends what is left at once: a test that has seen what it waited for
    need not wait out the rest of the call in real time.
    """

    def __init__(
        self,
        url: str,
        session_id: str,
        audio: np.ndarray,
        *,
        sample_rate: int = 16000,
        chunk_frames: int = 1600,
        interval_sec: float = 0.025,
    ) -> None:
        super().__init__(name=f"producer-{session_id}", daemon=True)
        self.producer = Producer(url)
        self.writer = self.producer.open(session_id, sample_rate=sample_rate, encoding="pcm_s16le")
        self.audio = audio
        self.chunk_frames = chunk_frames
        self.interval_sec = interval_sec
        self.chunks_total = -(-audio.shape[0] // chunk_frames)
        self.sent = 0
        self.error: BaseException | None = None
        self.hurried = threading.Event()

    def run(self) -> None:
        try:
            started = time.monotonic()
            for k in range(self.chunks_total):
                self.writer.send(self.audio[k * self.chunk_frames : (k + 1) * self.chunk_frames])
                self.sent = k + 1
                self.hurried.wait(max(0.0, started + (k + 1) * self.interval_sec - time.monotonic()))
            self.writer.close()
        except BaseException as e:  # reported by finish()
            self.error = e

    def finish(self, timeout: float = 60.0, *, hurry: bool = False) -> None:
        if hurry:
            self.hurried.set()
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error


def write_session(
    url: str,
    session_id: str,
    audio: np.ndarray,
    *,
    sample_rate: int = 16000,
    chunk_frames: int = 1600,
    key_prefix: str = KEYS.prefix,
) -> None:
    """Open a session and write all its audio and its end at once (for burst runs)."""
    writer = Producer(url, key_prefix=key_prefix).open(session_id, sample_rate=sample_rate, encoding="pcm_s16le")
    for k in range(0, audio.shape[0], chunk_frames):
        writer.send(audio[k : k + chunk_frames])
    writer.close()


# -- reading the results ---------------------------------------------------------------------


def client_for(url: str) -> Any:
    """A client of ``url`` (a cluster client on a cluster)."""
    return connect(url)


def session_events(client: Any, sid: str) -> list[Event]:
    return [decode_event(fields[b"m"]) for _id, fields in client.xrange(KEYS.session_output(sid))]


def session_event_records(client: Any, sid: str) -> list[tuple[int, str, bytes]]:
    """(seq, type, payload) of every entry of the session's output stream."""
    return [(int(f[b"seq"]), f[b"type"].decode(), f[b"m"]) for _id, f in client.xrange(KEYS.session_output(sid))]


def shard_event_records(client: Any, sid: str) -> list[tuple[int, str, bytes]]:
    """(seq, type, payload) of the session's entries in its shard's events stream."""
    entries = client.xrange(KEYS.events(KEYS.shard_of(sid)))
    return [(int(f[b"seq"]), f[b"type"].decode(), f[b"m"]) for _id, f in entries if f[b"session"] == sid.encode()]


def wait_for_shard_copy(client: Any, sid: str, timeout: float = 10.0) -> None:
    """Wait until the shard's events stream holds the session's records, the very same, once each.

    The copy (``forward.lua``) runs after the commit, in another slot, so it may trail the
    session's own stream by an iteration, or longer while a copy is refused and retried.
    """
    wait_for(
        lambda: shard_event_records(client, sid) == session_event_records(client, sid),
        timeout,
        f"{sid}'s records copied once each to its shard stream",
    )


def record_seqs(client: Any, sid: str) -> list[int]:
    """The record numbers of the session's events and dead letters together, in number order.

    Events and dead letters share one numbering (see docs/protocol.md), so this is 1..N when
    nothing was lost or repeated; a session without dead letters has contiguous event seqs.
    """
    entries = client.xrange(KEYS.session_output(sid)) + client.xrange(KEYS.session_dead_letters(sid))
    return sorted(int(fields[b"seq"]) for _id, fields in entries)


def dead_letter_reasons(client: Any, sid: str) -> tuple[list[str], list[str]]:
    """Reasons of the session's dead letters: in its own stream, and in its shard's stream."""
    from worker.protocol.messages import DeadLetter

    own = [DeadLetter.decode(f[b"m"]).reason for _id, f in client.xrange(KEYS.session_dead_letters(sid))]
    shard = [
        DeadLetter.decode(f[b"m"]).reason
        for _id, f in client.xrange(KEYS.dead_letters(KEYS.shard_of(sid)))
        if f[b"session"] == sid.encode()
    ]
    return own, shard


def words_of(events: Sequence[Event]) -> list[tuple[float, float, str]]:
    return [(w[0], w[1], w[2]) for e in events if e.TYPE == "segment" for w in e.words]


def segments_of(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """Segments without what may differ between runs (session id, seq, emission time)."""
    return [(e.channel, e.start, e.end, e.text, [tuple(w) for w in e.words]) for e in events if e.TYPE == "segment"]


def oracle(words: Sequence[str], sample_rate: int = 16000) -> list[tuple[float, float, str]]:
    """The synthetic backend's exact transcript, rounded as the worker's events round it."""
    return [(round(s, 3), round(e, 3), t) for s, e, t in expected_words(words, sample_rate)]


def ended(client: Any, sid: str) -> bool:
    return client.hget(KEYS.session_state(sid), "status") == b"ended"


def state(client: Any, sid: str) -> dict[str, bytes]:
    return {k.decode(): v for k, v in client.hgetall(KEYS.session_state(sid)).items()}


def reference_segments(url: str, words: Sequence[str], *, chunk_frames: int = 1600) -> list[tuple[Any, ...]]:
    """Segments of an uninterrupted burst run of the same audio, by an in-process worker.

    It runs under its own key prefix, so it never touches the sessions the test's workers serve.
    """
    prefix, sid = "reference", "reference"
    write_session(url, sid, encode_words(words), chunk_frames=chunk_frames, key_prefix=prefix)
    Worker(synthetic_settings(url, key_prefix=prefix)).run(burst=True)
    client = client_for(url)
    try:
        entries = client.xrange(Keyspace(prefix).session_output(sid))
        return segments_of([decode_event(fields[b"m"]) for _id, fields in entries])
    finally:
        client.close()
