"""Prometheus metrics as a layer: the worker reports events to an observer, this turns them into metrics.

The loop never touches prometheus-client; it calls :class:`WorkerObserver` hooks. The default
observer does nothing (tests, burst runs); :class:`PrometheusObserver` records metrics, and
:class:`MetricsServer` exposes ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness).
No metric is labelled by session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from worker.runtime.inputs import REJECTION_REASONS

#: Label values of the labelled counters, each exported at 0 until its first event.
COMMIT_RESULTS = ("ok", "fenced", "error")
END_REASONS = ("completed", "stalled", "error", "max_duration", "too_many_rejections", "other")

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 60, 120)
_INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 4)


@dataclass(frozen=True)
class WorkerLoad:
    """One report of the worker's load, after each loop iteration."""

    #: sessions owned, and ``max_sessions``
    active: int
    capacity: int
    #: audio received and not processed, summed over the owned sessions
    backlog_sec: float
    #: inference seconds per wall-clock second (the capacity window's average)
    utilisation: float = 0.0
    #: new sessions the worker would take now
    spare: int = 0
    #: what the sessions drop for load (``EconomyLevel``): 0 nothing, 1 the turn context, 2 also
    #: the beam and wide windows of their decodes
    economy: int = 0


class WorkerObserver:
    """Hooks the worker calls; every one is a no-op here."""

    def chunks_received(self, chunks: int, audio_sec: float) -> None: ...
    def chunks_processed(self, chunks: int, audio_sec: float) -> None: ...
    def batch_done(self, size: int, inference_sec: float, audio_sec: float) -> None: ...
    def redecoded(self, counts: dict[str, int]) -> None: ...
    def committed(self, result: str, segments: int) -> None: ...
    def latency(self, seconds: float) -> None: ...
    def takeover(self) -> None: ...
    def rejected(self, reason: str) -> None: ...
    def session_ended(self, reason: str) -> None: ...
    def load(self, load: WorkerLoad) -> None: ...
    def waiting(self, sessions: int) -> None: ...
    def reannounced(self, sessions: int) -> None: ...
    def transient_failure(self) -> None: ...


class PrometheusObserver(WorkerObserver):
    """Records the worker's events as Prometheus metrics in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.chunks_received_total = Counter(
            "streamscribe_chunks_received_total", "Audio chunks read from input streams", registry=r
        )
        self.audio_received_seconds_total = Counter(
            "streamscribe_audio_received_seconds_total", "Seconds of audio read from input streams", registry=r
        )
        self.chunks_processed_total = Counter(
            "streamscribe_chunks_processed_total", "Audio chunks whose processing was committed", registry=r
        )
        self.audio_processed_seconds_total = Counter(
            "streamscribe_audio_processed_seconds_total", "Seconds of audio whose processing was committed", registry=r
        )
        self.segments_committed_total = Counter(
            "streamscribe_segments_committed_total", "Transcript segments committed to output streams", registry=r
        )
        self.commits_total = Counter(
            "streamscribe_commits_total", "Atomic commit steps by result (ok, fenced, error)", ["result"], registry=r
        )
        self.reannounced_total = Counter(
            "streamscribe_sessions_reannounced",
            "Orphaned sessions (no announcement left after Redis lost it) announced again by this worker",
            registry=r,
        )
        self.transient_failures_total = Counter(
            "streamscribe_transient_failures",
            "Sessions handed over, uncommitted, after a transient backend failure (device memory exhausted)",
            registry=r,
        )
        self.takeovers_total = Counter(
            "streamscribe_takeovers_total", "Sessions this worker took over from another owner", registry=r
        )
        self.rejected_inputs_total = Counter(
            "streamscribe_rejected_inputs_total", "Input entries rejected, by reason", ["reason"], registry=r
        )
        self.redecodes_total = Counter(
            "streamscribe_redecodes_total",
            "Requests a backend's quality guard decoded again (loop, prompt_copy, prompt_skip)",
            ["guard"],
            registry=r,
        )
        self.sessions_ended_total = Counter(
            "streamscribe_sessions_ended_total", "Sessions ended by this worker, by reason", ["reason"], registry=r
        )
        for result in COMMIT_RESULTS:
            self.commits_total.labels(result=result)
        for reason in REJECTION_REASONS:
            self.rejected_inputs_total.labels(reason=reason)
        for reason in END_REASONS:
            self.sessions_ended_total.labels(reason=reason)
        self.sessions_active = Gauge("streamscribe_sessions_active", "Sessions this worker owns", registry=r)
        self.sessions_waiting = Gauge(
            "streamscribe_sessions_waiting",
            "Sessions announced and owned by no worker (fleet-wide: every worker reports it; take the max)",
            registry=r,
        )
        self.sessions_capacity = Gauge(
            "streamscribe_sessions_capacity", "Sessions this worker may own (max_sessions)", registry=r
        )
        self.utilisation = Gauge(
            "streamscribe_worker_utilisation",
            "Inference seconds per wall-clock second (30 s moving average); the worker keeps up below 1",
            registry=r,
        )
        self.capacity_available_sessions = Gauge(
            "streamscribe_capacity_available_sessions",
            "New sessions this worker would take now, from its measured cost (0: at capacity or behind)",
            registry=r,
        )
        self.economy = Gauge(
            "streamscribe_economy",
            "What the worker's sessions drop for load: 0 nothing, 1 the turn context (economy_utilisation,"
            " economy_backlog_sec), 2 also the beam and wide windows of decodes (economy_decode_utilisation)",
            registry=r,
        )
        self.backlog_audio_seconds = Gauge(
            "streamscribe_backlog_audio_seconds", "Audio received but not yet processed (owned sessions)", registry=r
        )
        self.end_to_end_latency_seconds = Histogram(
            "streamscribe_end_to_end_latency_seconds",
            "From the producer's send time of the newest audio chunk in a commit to that commit (with segments)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration_seconds = Histogram(
            "streamscribe_inference_duration_seconds",
            "Duration of one batched transcribe call",
            buckets=_INFERENCE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "streamscribe_batch_size", "Transcribe requests per batched call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.real_time_factor = Histogram(
            "streamscribe_real_time_factor",
            "Inference seconds per second of new audio, per batch",
            buckets=_RTF_BUCKETS,
            registry=r,
        )

    def chunks_received(self, chunks: int, audio_sec: float) -> None:
        self.chunks_received_total.inc(chunks)
        self.audio_received_seconds_total.inc(audio_sec)

    def chunks_processed(self, chunks: int, audio_sec: float) -> None:
        self.chunks_processed_total.inc(chunks)
        self.audio_processed_seconds_total.inc(audio_sec)

    def batch_done(self, size: int, inference_sec: float, audio_sec: float) -> None:
        self.batch_size.observe(size)
        self.inference_duration_seconds.observe(inference_sec)
        if audio_sec > 0:
            self.real_time_factor.observe(inference_sec / audio_sec)

    def redecoded(self, counts: dict[str, int]) -> None:
        for guard, n in counts.items():
            self.redecodes_total.labels(guard=guard).inc(n)

    def committed(self, result: str, segments: int) -> None:
        self.commits_total.labels(result=result).inc()
        if segments and result == "ok":  # a fenced or failed commit wrote nothing
            self.segments_committed_total.inc(segments)

    def latency(self, seconds: float) -> None:
        self.end_to_end_latency_seconds.observe(max(0.0, seconds))

    def takeover(self) -> None:
        self.takeovers_total.inc()

    def rejected(self, reason: str) -> None:
        self.rejected_inputs_total.labels(reason=reason).inc()

    def session_ended(self, reason: str) -> None:
        self.sessions_ended_total.labels(reason=reason).inc()

    def load(self, load: WorkerLoad) -> None:
        self.sessions_active.set(load.active)
        self.sessions_capacity.set(load.capacity)
        self.backlog_audio_seconds.set(load.backlog_sec)
        self.utilisation.set(load.utilisation)
        self.capacity_available_sessions.set(load.spare)
        self.economy.set(load.economy)

    def waiting(self, sessions: int) -> None:
        self.sessions_waiting.set(sessions)

    def reannounced(self, sessions: int) -> None:
        self.reannounced_total.inc(sessions)

    def transient_failure(self) -> None:
        self.transient_failures_total.inc()


def worker_info(registry: CollectorRegistry, **labels: str) -> Info:
    """``streamscribe_worker_info``: version, backend, model, device and compute type, as labels."""
    info = Info("streamscribe_worker", "What this worker runs", registry=registry)
    info.info(labels)
    return info


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one port, served from a daemon thread.

    ``healthy`` and ``ready`` are called per request; each path answers 200 while its callable
    returns True, else 503. Liveness (``/healthz``) says the process should not be restarted;
    readiness (``/readyz``) adds that its preloaded models are in memory, so a rollout waits for
    them. Without ``ready``, readiness is liveness.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        host: str,
        port: int,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif self.path.startswith("/healthz"):
                    ok = server_self.healthy()
                    body, status, ctype = (b"ok\n" if ok else b"unhealthy\n"), (200 if ok else 503), "text/plain"
                elif self.path.startswith("/readyz"):
                    ok = server_self.ready()
                    body, status, ctype = (b"ready\n" if ok else b"not ready\n"), (200 if ok else 503), "text/plain"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.healthy = healthy
        self.ready = ready or healthy
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on :%d/metrics, health on :%d/healthz", self.port, self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class LoopHeartbeat:
    """The loop's liveness: ``beat()`` each iteration; ``alive()`` while the last beat is recent."""

    def __init__(self, stall_limit_sec: float) -> None:
        self.stall_limit_sec = stall_limit_sec
        self.connected = False
        self._last = time.monotonic()

    def beat(self, connected: bool = True) -> None:
        self.connected = connected
        self._last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self._last

    def alive(self) -> bool:
        return self.connected and self.age() < self.stall_limit_sec
