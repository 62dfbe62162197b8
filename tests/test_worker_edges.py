"""Edges of the worker: id reuse, a backend failing one request, the backlog, cursor expiry."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from producer.client import Producer
from tests.worker_helpers import (
    KEYS,
    client_for,
    oracle,
    session_events,
    synthetic_settings,
    words_of,
    write_session,
)
from worker.backends.synthetic import SyntheticASR, encode_words, random_words
from worker.errors import SessionEndedError
from worker.metrics import PrometheusObserver, WorkerObserver
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)


def metric(observer: PrometheusObserver, name: str, **labels: str) -> float:
    value = observer.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def test_reopening_an_ended_session_id_is_refused_with_a_clear_error(redis_url):
    write_session(redis_url, "call-once", encode_words(random_words(6, seed=1)))
    Worker(synthetic_settings(redis_url)).run(burst=True)
    with pytest.raises(SessionEndedError, match="new id"):
        Producer(redis_url).open("call-once")


def test_the_forward_cursor_is_a_key_that_expires_with_the_session(redis_url):
    write_session(redis_url, "call-cursor", encode_words(random_words(6, seed=2)))
    Worker(synthetic_settings(redis_url, retention_sec=600)).run(burst=True)
    client = client_for(redis_url)
    cursor_key = KEYS.forward_cursor("call-cursor")
    events = session_events(client, "call-cursor")
    created = client.hget(KEYS.session_state("call-cursor"), "created_ms").decode()
    assert client.get(cursor_key).decode() == f"{created}:{events[-1].seq}"
    assert 600_000 < client.pttl(cursor_key) <= 1_200_000
    assert client.pttl(KEYS.session_state("call-cursor")) <= 600_000


def test_a_forward_cursor_lost_mid_call_copies_no_record_to_the_shard_stream_twice(redis_url):
    """The cursor can expire in a long silence, or be deleted (older producers did); the commit's
    record of what was copied (the state's ``fwd``) keeps the copy from starting over at seq 1."""
    client = client_for(redis_url)
    words = random_words(20, seed=8)
    write_session(redis_url, "call-lost-cursor", encode_words(words))
    worker = Worker(synthetic_settings(redis_url))
    original = worker.committer._run_pipeline
    copies = 0

    def forgetful(calls, script):
        nonlocal copies
        replies = original(calls, script)
        if script == "forward":
            copies += 1
            if copies in (2, 4):
                client.delete(KEYS.forward_cursor("call-lost-cursor"))
        return replies

    worker.committer._run_pipeline = forgetful
    worker.run(burst=True)
    assert copies > 4
    records = [int(f[b"seq"]) for _id, f in client.xrange(KEYS.session_output("call-lost-cursor"))]
    shard = [int(f[b"seq"]) for _id, f in client.xrange(KEYS.events(KEYS.shard_of("call-lost-cursor")))]
    assert shard == records
    assert words_of(session_events(client, "call-lost-cursor")) == oracle(words)


def test_a_backend_failing_one_request_of_a_batch_ends_only_that_session(redis_url, monkeypatch):
    poison = 0.123  # a sample value only the poisoned session carries

    def transcribe_batch(self, items):
        if any(np.isclose(audio, poison, atol=1e-4).any() for audio, _prompt in items):
            raise RuntimeError("the batch holds an input the backend cannot take")
        return [self.transcribe(audio, prompt) for audio, prompt in items]

    original = SyntheticASR.transcribe

    def transcribe(self, audio, init_prompt=""):
        if np.isclose(audio, poison, atol=1e-4).any():
            raise RuntimeError("cannot transcribe this input")
        return original(self, audio, init_prompt)

    monkeypatch.setattr(SyntheticASR, "transcribe_batch", transcribe_batch)
    monkeypatch.setattr(SyntheticASR, "transcribe", transcribe)
    words = random_words(12, seed=3)
    healthy = encode_words(words)
    poisoned = healthy.copy()
    poisoned[16000:16100] = poison
    write_session(redis_url, "call-healthy", healthy)
    write_session(redis_url, "call-poisoned", poisoned)
    Worker(synthetic_settings(redis_url)).run(burst=True)
    client = client_for(redis_url)
    good = session_events(client, "call-healthy")
    assert [w[2] for w in words_of(good)] == words and good[-1].reason == "completed"
    bad = session_events(client, "call-poisoned")
    assert bad[-1].TYPE == "session_ended" and bad[-1].reason == "error"
    assert any(e.TYPE == "error" and e.code == "backend_error" and e.fatal for e in bad)


def test_an_announcement_with_an_unusable_session_id_is_acknowledged_and_skipped(redis_url):
    client = client_for(redis_url)
    stream = KEYS.announcements(0)
    client.xadd(stream, {"session": "bad id {with} braces"})
    Worker(synthetic_settings(redis_url)).run(burst=True)
    assert client.xlen(stream) == 0


def test_the_backlog_gauge_counts_audio_still_unread_in_redis(redis_url):
    audio = encode_words(random_words(150, seed=4))  # about a minute
    write_session(redis_url, "call-backlog", audio, chunk_frames=1600)
    observer = PrometheusObserver()
    worker = Worker(synthetic_settings(redis_url, read_count=20), observer=observer)
    worker.start()
    try:
        worker.run_iteration()  # takes the session
        worker.run_iteration()  # reads 20 entries (2 s), processes one point
        backlog = metric(observer, "streamscribe_backlog_audio_seconds")
        total = audio.shape[0] / 16000
        assert total - 6 < backlog <= total
    finally:
        worker.stop()
        worker.shutdown()


def test_a_free_text_end_reason_is_counted_as_other(redis_url):
    writer = Producer(redis_url).open("call-reason")
    writer.send(encode_words(random_words(4, seed=5)))
    writer.close(reason="agent hung up after 3 minutes")
    observer = PrometheusObserver()
    Worker(synthetic_settings(redis_url), observer=observer).run(burst=True)
    assert metric(observer, "streamscribe_sessions_ended_total", reason="other") == 1
    events = session_events(client_for(redis_url), "call-reason")
    assert events[-1].reason == "agent hung up after 3 minutes"
    assert msgpack.unpackb(client_for(redis_url).hget(KEYS.session_state("call-reason"), "checkpoint"))


def test_an_id_reused_after_its_retention_is_copied_to_the_shard_stream_from_the_start(redis_url):
    client = client_for(redis_url)
    write_session(redis_url, "call-again", encode_words(random_words(6, seed=6)))
    Worker(synthetic_settings(redis_url)).run(burst=True)
    first = session_events(client, "call-again")
    for key in KEYS.session_keys("call-again"):
        client.delete(key)  # as if the retention ran out; the cursor key outlives it
    assert client.exists(KEYS.forward_cursor("call-again"))
    words = random_words(3, seed=7)
    write_session(redis_url, "call-again", encode_words(words))
    Worker(synthetic_settings(redis_url)).run(burst=True)
    second = session_events(client, "call-again")
    shard = client.xrange(KEYS.events(KEYS.shard_of("call-again")))
    copied = [int(f[b"seq"]) for _id, f in shard]
    assert copied == [e.seq for e in first] + [e.seq for e in second]
    assert [w[2] for w in words_of(second)] == words


def test_a_redis_error_while_closing_an_ended_sessions_lease_is_retried_not_leaked(redis_url, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from worker.runtime.ownership import LeaseManager

    real_finish = LeaseManager.finish
    failures = []

    def finish_failing_once(self, shard, entry_id):
        if not failures:
            failures.append(entry_id)
            raise RedisConnectionError("connection reset while acknowledging")
        return real_finish(self, shard, entry_id)

    monkeypatch.setattr(LeaseManager, "finish", finish_failing_once)
    write_session(redis_url, "call-ack", encode_words(random_words(6, seed=8)))
    worker = Worker(synthetic_settings(redis_url))
    worker.run(burst=True, max_seconds=30)
    client = client_for(redis_url)
    stream = KEYS.announcements(KEYS.shard_of("call-ack"))
    assert failures and worker.sessions == {}
    assert client.xpending(stream, "workers")["pending"] == 0 and client.xlen(stream) == 0
    assert session_events(client, "call-ack")[-1].TYPE == "session_ended"


def test_a_model_that_fails_to_load_ends_its_session_not_the_worker(redis_url, monkeypatch):
    from worker.backends.synthetic import SyntheticLoader

    def load(self, config, **kwargs):
        raise RuntimeError("CUDA failed with error out of memory")

    monkeypatch.setattr(SyntheticLoader, "load", load)
    write_session(redis_url, "call-oom", encode_words(random_words(4, seed=9)))
    Worker(synthetic_settings(redis_url)).run(burst=True, max_seconds=30)
    events = session_events(client_for(redis_url), "call-oom")
    assert [e.TYPE for e in events] == ["session_started", "error", "session_ended"]
    assert events[1].code == "backend_error" and "out of memory" in events[1].message


def test_labelled_counters_are_exported_at_zero_before_their_first_event():
    from prometheus_client import generate_latest

    from worker.runtime.inputs import REJECTION_REASONS

    exposition = generate_latest(PrometheusObserver().registry).decode()
    for reason in REJECTION_REASONS:
        assert f'streamscribe_rejected_inputs_total{{reason="{reason}"}} 0.0' in exposition
    for reason in ("completed", "stalled", "error", "other"):
        assert f'streamscribe_sessions_ended_total{{reason="{reason}"}} 0.0' in exposition
    for result in ("ok", "fenced", "error"):
        assert f'streamscribe_commits_total{{result="{result}"}} 0.0' in exposition


def test_a_transient_backend_failure_hands_the_session_over_and_its_transcript_stays_exact(redis_url, monkeypatch):
    original = SyntheticASR.transcribe_batch
    failures: list[int] = []

    def out_of_memory_twice(self, items):
        if len(failures) < 2:  # the batch, then the request alone: the session is handed over
            failures.append(len(items))
            raise RuntimeError("CUDA failed with error out of memory")
        return original(self, items)

    monkeypatch.setattr(SyntheticASR, "transcribe_batch", out_of_memory_twice)
    words = random_words(12, seed=21)
    write_session(redis_url, "call-transient", encode_words(words))
    observer = CountingObserver()
    Worker(synthetic_settings(redis_url), observer=observer).run(burst=True, max_seconds=30)
    events = session_events(client_for(redis_url), "call-transient")
    assert len(failures) == 2 and observer.transient == 1
    assert [e.TYPE for e in events if e.TYPE != "segment"] == ["session_started", "session_ended"]
    assert words_of(events) == oracle(words) and events[-1].reason == "completed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_a_session_whose_backend_keeps_running_out_of_memory_is_quarantined_not_retried_forever(redis_url, monkeypatch):
    def always_out_of_memory(self, items):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(SyntheticASR, "transcribe_batch", always_out_of_memory)
    write_session(redis_url, "call-oom-always", encode_words(random_words(6, seed=22)))
    observer = CountingObserver()
    Worker(synthetic_settings(redis_url, max_session_attempts=3), observer=observer).run(burst=True, max_seconds=30)
    events = session_events(client_for(redis_url), "call-oom-always")
    assert observer.transient == 3
    assert events[-1].TYPE == "session_ended" and events[-1].reason == "error"
    assert any(e.TYPE == "error" and e.code == "quarantined" for e in events)


class CountingObserver(WorkerObserver):
    def __init__(self) -> None:
        self.transient = 0

    def transient_failure(self) -> None:
        self.transient += 1
