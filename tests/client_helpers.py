"""Helpers of the client-side tests (producer, consumer, gateway, produce CLI): real workers, real audio."""

from __future__ import annotations

import contextlib
import threading
import urllib.request
from collections.abc import Sequence

import numpy as np
import redis

from benchmarks.corpus import Recording, load_manifest
from tests.worker_helpers import synthetic_settings
from worker.backends.synthetic import encode_words
from worker.protocol.events import Event, SegmentEvent, decode_event
from worker.protocol.keys import Keyspace
from worker.protocol.messages import EndOfSession, decode_input
from worker.runtime.loop import Worker
from worker.settings import WorkerSettings


def whisper_settings(url: str, **overrides: object) -> WorkerSettings:
    """A worker with the real ``base`` model on the CPU (installed, works offline)."""
    return synthetic_settings(
        url,
        asr={"backend": "faster-whisper", "model": "base", "device": "cpu"},
        allowed_backends=["faster-whisper"],
        allowed_models=["base"],
        **overrides,
    )


def run_worker(settings: WorkerSettings, max_seconds: float = 90.0) -> None:
    """Drain every waiting session with one in-process worker, then return."""
    Worker(settings).run(burst=True, max_seconds=max_seconds)


class WorkerThread:
    """A burst worker in a thread, for sessions that are still being written."""

    def __init__(self, settings: WorkerSettings, max_seconds: float = 90.0) -> None:
        self.worker = Worker(settings)
        self.thread = threading.Thread(
            target=self.worker.run, kwargs={"burst": True, "max_seconds": max_seconds}, daemon=True
        )

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.worker.stop()
        self.thread.join(30)

    def join(self, timeout: float) -> bool:
        """Wait for the burst to finish; False if it is still running."""
        self.thread.join(timeout)
        return not self.thread.is_alive()


def output_events(url: str, sid: str, keys: Keyspace | None = None) -> list[Event]:
    """The session's output stream, decoded (read directly, not through the consumer)."""
    keys = keys or Keyspace()
    from worker.protocol.connection import connect

    client = connect(url)
    try:
        return [decode_event(fields[b"m"]) for _id, fields in client.xrange(keys.session_output(sid))]
    finally:
        client.close()


def channel_words(events: Sequence[Event], channel: int) -> list[str]:
    return [w[2] for e in events if isinstance(e, SegmentEvent) and e.channel == channel for w in e.words]


def channel_text(events: Sequence[Event], channel: int) -> str:
    return " ".join(e.text for e in events if isinstance(e, SegmentEvent) and e.channel == channel)


def stereo(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``(frames, 2)`` float32, the shorter channel padded with silence."""
    n = max(left.shape[0], right.shape[0])
    out = np.zeros((n, 2), dtype=np.float32)
    out[: left.shape[0], 0] = left
    out[: right.shape[0], 1] = right
    return out


def synthetic_stereo(words0: list[str], words1: list[str], rate: int) -> np.ndarray:
    return stereo(encode_words(words0, rate), encode_words(words1, rate))


def recording(prefix: str) -> Recording:
    """The corpus recording whose file name starts with ``prefix`` (``"03_"``)."""
    return next(r for r in load_manifest() if r.path.name.startswith(prefix))


def raw_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


class FlakyProxy:
    """A TCP proxy in front of a real server that can lose replies and cut connections.

    ``drop_next_reply()`` lets the next request through to the server and then closes the
    client's connection instead of forwarding the server's answer: the command ran, the client
    never hears so (a lost reply). ``cut()`` closes every open connection at once.
    """

    def __init__(self, upstream_url: str) -> None:
        import socket
        from urllib.parse import urlparse

        parsed = urlparse(upstream_url)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = 0
        self.cuts = 0
        self._drop = 0
        self._lock = threading.Lock()
        self._conns: list[tuple[object, object]] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def drop_next_reply(self) -> None:
        with self._lock:
            self._drop += 1

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            self.cuts += 1
        for pair in conns:
            _close(*pair)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        import socket

        while not self._closed:
            try:
                client, _addr = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._conns.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source, target, replies: bool) -> None:  # type: ignore[no-untyped-def]
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if replies:
                    with self._lock:
                        drop = self._drop > 0
                        if drop:
                            self._drop -= 1
                            self.dropped += 1
                    if drop:
                        break
                target.sendall(data)
        except OSError:
            pass
        _close(source, target)


def _close(*sockets: object) -> None:
    import socket

    for s in sockets:
        assert isinstance(s, socket.socket)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


def ended_input(url: str, sid: str) -> bool:
    """The session's input ends with its end marker (a gateway or producer wrote the whole call)."""
    last = raw_client(url).xrevrange(Keyspace().session_input(sid), count=1)
    return bool(last) and isinstance(decode_input(last[0][1][b"m"]), EndOfSession)


def scrape(port: int, path: str) -> str:
    """The body of ``http://127.0.0.1:<port><path>`` (a gateway's /metrics or /healthz)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return reply.read().decode()
