"""What operators see of a worker process: readiness after preloaded models, its info metric, JSON logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from tests.worker_helpers import (
    WorkerFleet,
    client_for,
    ended,
    oracle,
    session_events,
    synthetic_settings,
    wait_for,
    words_of,
    write_session,
)
from worker import __version__
from worker.backends.synthetic import encode_words, random_words
from worker.metrics import WorkerObserver
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)

#: Python run in the worker process before its CLI: every synthetic model load takes 2 s.
SLOW_LOAD = """
import time
from worker.backends.synthetic import SyntheticLoader
_load = SyntheticLoader.load
def _slow(self, config, **kw):
    time.sleep(2.0)
    return _load(self, config, **kw)
SyntheticLoader.load = _slow
"""


@pytest.fixture
def fleet(tmp_path):
    with WorkerFleet(tmp_path) as f:
        yield f


def test_a_worker_answers_readyz_only_once_its_preloaded_models_are_loaded(redis_url, fleet, tmp_path):
    from tests.servers import free_port

    port = free_port()
    spawned: list = []
    thread = threading.Thread(
        target=lambda: spawned.append(
            fleet.spawn(
                redis_url,
                "preloading",
                prelude=SLOW_LOAD,
                args=["--preload", "tones", "--metrics-port", str(port)],
            )
        )
    )
    thread.start()
    log_path = tmp_path / "preloading.log"

    def answers(path: str) -> int | None:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as reply:
                return reply.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    wait_for(lambda: answers("/readyz") is not None, 20, "the metrics port to open")
    assert answers("/readyz") == 503, "ready before the preloaded model is in memory"
    assert answers("/healthz") == 503, "live before the loop runs (the startup probe covers the load)"
    thread.join(timeout=30)
    assert spawned, "the worker did not become ready"
    worker = spawned[0]
    wait_for(lambda: answers("/readyz") == 200, 10, "/readyz after the preload")
    assert answers("/healthz") == 200
    assert "preloaded model tones" in log_path.read_text()
    assert (
        worker.metric(
            "streamscribe_worker_info",
            version=__version__,
            backend="synthetic",
            model="tones",
            device="auto",
            compute_type="auto",
        )
        == 1.0
    )
    worker.send(signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0


def test_a_worker_refuses_to_preload_a_model_it_does_not_allow(redis_url):
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "worker", "--redis-url", redis_url, "--preload", "large-v3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "preload names models outside allowed_models" in done.stderr and "large-v3" in done.stderr
    assert "Traceback" not in done.stderr


def test_json_logs_carry_the_worker_session_epoch_and_event_of_each_lifecycle_record(redis_url, fleet, tmp_path):
    worker = fleet.spawn(redis_url, "json-logs", cli_args=["--log-format", "json"])
    words = random_words(8, seed=5)
    write_session(redis_url, "call-json", encode_words(words))
    client = client_for(redis_url)
    wait_for(lambda: ended(client, "call-json"), 20, "the session to end")
    assert words_of(session_events(client, "call-json")) == oracle(words)
    client.close()
    worker.send(signal.SIGTERM)
    worker.proc.wait(timeout=20)

    records = [json.loads(line) for line in (tmp_path / "json-logs.log").read_text().splitlines() if line.strip()]
    assert records, "no log lines"
    assert all({"ts", "level", "logger", "message", "worker"} <= r.keys() for r in records)
    assert all(r["worker"] == "json-logs" for r in records)
    events = {r.get("event"): r for r in records if r.get("session") == "call-json"}
    assert events["acquired"]["epoch"] >= 1
    assert events["ended"]["reason"] == "completed"


def test_version_prints_the_package_version():
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "--version"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.strip() == f"streamscribe {__version__}"


def test_the_waiting_count_covers_undelivered_and_handed_over_sessions_but_not_owned_ones(redis_url):
    for n in range(3):
        write_session(redis_url, f"waiting-{n}", encode_words(random_words(6, seed=n)))
    observer = RecordingObserver()
    first = Worker(synthetic_settings(redis_url, worker_id="first", max_sessions=1), observer=observer)
    assert first.leases.waiting() == 3
    first.start()
    first.run_iteration()
    assert len(first.sessions) == 1 and first.leases.waiting() == 2
    assert observer.waiting_counts[-1] == 2, "the gauge is reported from the loop"
    first.shutdown()  # SIGTERM's handover parks the session for another worker
    assert Worker(synthetic_settings(redis_url, worker_id="second")).leases.waiting() == 3


class RecordingObserver(WorkerObserver):
    def __init__(self) -> None:
        self.waiting_counts: list[int] = []

    def waiting(self, sessions: int) -> None:
        self.waiting_counts.append(sessions)


def test_every_decode_a_backend_reports_as_redone_is_counted_once_by_its_guard(redis_url):
    from worker.asr.config import ASRConfig
    from worker.asr.online import OnlineASRProcessor
    from worker.backends import registry
    from worker.backends.synthetic import SyntheticASR
    from worker.metrics import PrometheusObserver

    class GuardedASR(SyntheticASR):
        """Reports every request it decodes as decoded again by a loop guard."""

        decoded = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.untaken = 0

        def transcribe_requests(self, requests):
            self.untaken += len(requests)
            GuardedASR.decoded += len(requests)
            return super().transcribe_requests(requests)

        def take_redecodes(self):
            taken, self.untaken = self.untaken, 0
            return {"loop": taken} if taken else {}

    class GuardedLoader:
        def load(self, config: ASRConfig):
            processor = OnlineASRProcessor.from_config(GuardedASR(config.lan), config, vad=False)
            return processor, {"separator": " ", "backend": "guarded"}

    registry.MODEL_LOADERS["guarded"] = GuardedLoader()
    try:
        sessions = {f"guarded-{k}": random_words(25, seed=40 + k) for k in range(3)}
        for sid, words in sessions.items():
            write_session(redis_url, sid, encode_words(words))
        settings = synthetic_settings(
            redis_url, asr={"backend": "guarded", "model": "tones", "vad": False}, allowed_backends=["guarded"]
        )
        observer = PrometheusObserver()
        Worker(settings, observer=observer).run(burst=True)
    finally:
        del registry.MODEL_LOADERS["guarded"]

    client = client_for(redis_url)
    for sid, words in sessions.items():
        assert words_of(session_events(client, sid)) == oracle(words)
    # batched requests count on the backend that ran the batch, closing decodes on their own:
    # every one of them is read once
    assert GuardedASR.decoded > 3
    assert observer.registry.get_sample_value("streamscribe_redecodes_total", {"guard": "loop"}) == GuardedASR.decoded
