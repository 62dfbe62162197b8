"""Failing commits: nothing half-written, a back-off per session, an unhealthy /healthz, recovery.

A key of the wrong type stands in for every write Redis refuses: the scripts check each key
they write before the first write, so a refused commit or copy writes nothing, and its retry
cannot append a record twice.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from producer.client import Producer
from tests.worker_helpers import (
    KEYS,
    client_for,
    dead_letter_reasons,
    ended,
    oracle,
    record_seqs,
    session_events,
    shard_event_records,
    synthetic_settings,
    wait_for,
    wait_for_shard_copy,
    words_of,
)
from worker.backends.synthetic import encode_words, random_words
from worker.metrics import MetricsServer, PrometheusObserver
from worker.protocol.messages import AudioChunk, EndOfSession
from worker.protocol.pcm import encode_pcm
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)

CHUNK = 1600


def write_session_with_a_bad_entry(url: str, sid: str, words: list[str]) -> None:
    """A session whose first entry is rejected, so its first commit holds a dead letter."""
    Producer(url).open(sid)
    client = client_for(url)
    key = KEYS.session_input(sid)
    client.xadd(key, {"m": b"\xc1 not msgpack"}, id="1-0")
    audio = encode_words(words)
    seq = 0
    for k in range(0, audio.shape[0], CHUNK):
        chunk = AudioChunk(seq, encode_pcm(audio[k : k + CHUNK], "pcm_s16le"), time.time())
        client.xadd(key, {"m": chunk.encode()}, id=f"{seq + 2}-0")
        seq += 1
    client.xadd(key, {"m": EndOfSession(seq, time.time()).encode()}, id=f"{seq + 2}-0")


class ServedWorker:
    """An in-process worker looping in a thread, with its /healthz served on a free port."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.observer = PrometheusObserver()
        self.worker = Worker(synthetic_settings(url, **settings), observer=self.observer)
        self.metrics = MetricsServer(self.observer.registry, self.worker.healthy, "127.0.0.1", 0).start()
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def healthz(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics.port}/healthz", timeout=2) as reply:
                return reply.status
        except urllib.error.HTTPError as e:
            return e.code

    def commits(self, result: str) -> float:
        return self.observer.registry.get_sample_value("streamscribe_commits_total", {"result": result}) or 0.0

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(10)
        self.metrics.stop()


@pytest.fixture
def served(redis_url: str) -> Iterator[ServedWorker]:
    worker = ServedWorker(redis_url, commit_backoff_max_sec=0.2, commit_failure_limit_sec=0.5)
    try:
        yield worker
    finally:
        worker.stop()


def test_a_wrong_typed_dead_letter_stream_writes_nothing_backs_off_fails_health_and_recovers(redis_url, served):
    client = client_for(redis_url)
    sid = "blocked"
    words = random_words(20, seed=51)
    client.set(KEYS.session_dead_letters(sid), "not a stream")
    write_session_with_a_bad_entry(redis_url, sid, words)
    wait_for(lambda: served.commits("error") > 0, 10, "a failed commit")
    wait_for(lambda: served.healthz() == 503, 10, "/healthz to fail while every commit fails")
    # iterations before the bad entry may have committed (session_started, segments); the one
    # that carries its dead letter is refused whole, however often it is retried
    committed = client.xlen(KEYS.session_output(sid))
    before = served.commits("error")
    time.sleep(1.0)
    # backed off to one try per 0.2 s at most (without, the loop retried every iteration)
    assert served.commits("error") - before <= 7
    assert client.xlen(KEYS.session_output(sid)) == committed, "a refused commit writes nothing"

    client.delete(KEYS.session_dead_letters(sid))
    wait_for(lambda: ended(client, sid), 15, "the session's end once the key is fixed")
    wait_for(lambda: served.healthz() == 200, 5, "/healthz to recover")
    events = session_events(client, sid)
    assert words_of(events) == oracle(words)
    assert [e.TYPE for e in events].count("session_started") == 1
    assert dead_letter_reasons(client, sid) == (["malformed"], ["malformed"])
    assert record_seqs(client, sid) == list(range(1, len(events) + 2))


def test_a_wrong_typed_shard_stream_delays_the_copy_but_never_copies_a_record_twice(redis_url, served):
    client = client_for(redis_url)
    sid = "copied"
    words = random_words(12, seed=52)
    shard_dlq = KEYS.dead_letters(KEYS.shard_of(sid))
    client.set(shard_dlq, "not a stream")
    write_session_with_a_bad_entry(redis_url, sid, words)
    wait_for(lambda: ended(client, sid), 15, "the session's end")
    time.sleep(0.5)  # copies are retried meanwhile
    assert shard_event_records(client, sid) == [], "a refused copy copies nothing"
    assert served.healthz() == 200, "the session's own commits succeed"

    client.delete(shard_dlq)
    wait_for(lambda: client.exists(shard_dlq), 15, "the dead letter's copy")
    wait_for_shard_copy(client, sid, timeout=15)
    assert dead_letter_reasons(client, sid) == (["malformed"], ["malformed"])
