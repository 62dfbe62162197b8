"""Worker faults with real servers and real processes: SIGKILL, SIGSTOP, SIGTERM, lost Redis.

The synthetic backend's transcript is a pure function of the audio, so every run, however it is
interrupted, must commit exactly the oracle's words, and the same segments as an uninterrupted
burst run (processing points depend only on the input while chunk points are never merged, as
here; with merging on, the words must still be the oracle's, once each).
"""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from tests.servers import RedisServerProcess, available_server_kinds, binary_for_kind, free_port
from tests.worker_helpers import (
    KEYS,
    RealtimeProducer,
    WorkerFleet,
    client_for,
    ended,
    next_line,
    oracle,
    reference_segments,
    segments_of,
    session_events,
    slow_backend,
    state,
    synthetic_settings,
    wait_for,
    wait_for_shard_copy,
    words_of,
    write_session,
)
from worker.backends.synthetic import SyntheticASR, encode_words, random_words
from worker.protocol.keys import HANDOVER_CONSUMER, WORKER_GROUP
from worker.protocol.scripts import Scripts
from worker.runtime.loop import Worker
from worker.runtime.ownership import LeaseManager

pytestmark = pytest.mark.timeout(120)

TTL = 1.5
#: A takeover after a crash takes the TTL, a janitor pass (0.2 s here) and an iteration.
TAKEOVER_SLACK = 2.0


@pytest.fixture
def fleet(tmp_path):
    with WorkerFleet(tmp_path) as f:
        yield f


def wait_owner(client, sid: str, above_epoch: int, timeout: float) -> tuple[int, str, float]:
    """(epoch, owner, acquired at in s) once the session's epoch passes ``above_epoch``."""

    def acquired():
        s = state(client, sid)
        if int(s.get("epoch", 0)) > above_epoch and s.get("owner"):
            return int(s["epoch"]), s["owner"].decode(), int(s["acquired_ms"]) / 1000
        return None

    return wait_for(acquired, timeout, f"an owner of {sid} with epoch > {above_epoch}")


def assert_exactly_once(client, sid: str, words: list[str], reference: list | None) -> list:
    """The committed transcript is the oracle, once, in order, and the same as an uninterrupted run.

    ``reference`` ``None``: the segments may differ from such a run (chunk points merged while the
    session was behind), but not the words.
    """
    events = session_events(client, sid)
    assert words_of(events) == oracle(words)
    if reference is not None:
        assert segments_of(events) == reference
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    types = [e.TYPE for e in events]
    assert types[0] == "session_started" and types.count("session_started") == 1
    assert types[-1] == "session_ended" and types.count("session_ended") == 1
    assert "error" not in types
    assert events[-1].reason == "completed" and events[-1].totals["words"] == len(words)
    wait_for_shard_copy(client, sid)
    return events


def assert_retained(client, sid: str) -> None:
    """An ended session's keys all expire (retention), none is kept forever."""
    for key in KEYS.session_keys(sid):
        if client.exists(key):
            assert client.pttl(key) > 0, key


@pytest.mark.slow
@pytest.mark.parametrize("catch_up", [False, True], ids=["points-of-the-input", "merged-when-behind"])
def test_workers_killed_at_random_instants_lose_nothing_and_duplicate_nothing(redis_url, fleet, catch_up):
    rng = random.Random(4242)
    words = random_words(110, seed=7)  # 44 s of audio, streamed at 4x real time
    # merging: each new owner starts about 6 s behind, and merges chunk points to catch up
    reference = None if catch_up else reference_segments(redis_url, words)
    env = {"STREAMSCRIBE_CATCH_UP_STEP_SEC": "3"} if catch_up else {}
    client = client_for(redis_url)
    sid = "call-kill"
    fleet.spawn(redis_url, "w1", lease_ttl_sec=TTL, env=env)
    fleet.spawn(redis_url, "w2", lease_ttl_sec=TTL, env=env)
    producer = RealtimeProducer(redis_url, sid, encode_words(words), interval_sec=0.025)
    producer.start()

    epoch, owner, _at = wait_owner(client, sid, 0, timeout=10)
    takeovers = []
    for n in range(3):
        time.sleep(rng.uniform(0.05, 1.5))
        killed_at = fleet.by_id(owner).kill()
        fleet.spawn(redis_url, f"w{n + 3}", lease_ttl_sec=TTL, env=env)  # the standby for the next kill
        new_epoch, new_owner, acquired_at = wait_owner(client, sid, epoch, timeout=TTL + 10)
        assert new_epoch == epoch + 1, "each takeover bumps the epoch once"
        assert new_owner != owner
        takeovers.append(acquired_at - killed_at)
        epoch, owner = new_epoch, new_owner
    producer.finish()
    wait_for(lambda: ended(client, sid), 30, "the end of the session")

    print(f"takeover after SIGKILL (TTL {TTL} s): {', '.join(f'{t:.2f} s' for t in takeovers)}")
    assert all(t < TTL + TAKEOVER_SLACK for t in takeovers), takeovers
    assert_exactly_once(client, sid, words, reference)
    assert int(state(client, sid)["epoch"]) == 4
    assert_retained(client, sid)


@pytest.mark.slow
def test_a_paused_owner_is_fenced_when_it_wakes_and_writes_nothing(redis_url, fleet):
    words = random_words(80, seed=11)  # 32 s of audio at 4x
    reference = reference_segments(redis_url, words)
    client = client_for(redis_url)
    sid = "call-pause"
    # its transcribe calls take 1 s, and say when they start: the pause lands inside one, as a
    # GC or VM pause would during a long inference, so the worker wakes in the middle of an
    # iteration and goes on to commit it before anything can tell it that it lost the lease
    paused = fleet.spawn(redis_url, "w-paused", lease_ttl_sec=TTL, prelude=slow_backend(1.0))
    producer = RealtimeProducer(redis_url, sid, encode_words(words), interval_sec=0.025)
    producer.start()
    wait_owner(client, sid, 0, timeout=10)
    wait_for(lambda: client.xlen(KEYS.session_output(sid)) >= 3, 10, "the first committed segments")
    other = fleet.spawn(redis_url, "w-other", lease_ttl_sec=TTL)

    next_line(paused, "transcribe call", timeout=5)
    stopped_at = paused.send(signal.SIGSTOP)
    epoch, owner, acquired_at = wait_owner(client, sid, 1, timeout=TTL + 10)
    assert (epoch, owner) == (2, other.worker_id)
    at_takeover = int(state(client, sid)["out_seq"])
    wait_for(lambda: int(state(client, sid)["out_seq"]) > at_takeover, 10, "commits by the new owner")
    paused.send(signal.SIGCONT)

    # it wakes believing it owns the session, tries to commit, and the epoch refuses it
    wait_for(lambda: "fenced" in paused.log(), 10, "the woken worker's fenced commit")
    assert paused.alive()
    assert paused.metric("streamscribe_commits_total", result="fenced") == 1
    wait_for(lambda: paused.metric("streamscribe_sessions_active") == 0, 5, "the woken worker to drop the session")
    producer.finish()
    wait_for(lambda: ended(client, sid), 30, "the end of the session")

    print(f"takeover of a paused owner (TTL {TTL} s): {acquired_at - stopped_at:.2f} s")
    assert acquired_at - stopped_at < TTL + TAKEOVER_SLACK
    assert_exactly_once(client, sid, words, reference)
    assert int(state(client, sid)["epoch"]) == 2 and state(client, sid)["owner"] == b"w-other"
    assert paused.metric("streamscribe_sessions_active") == 0 and paused.alive()


@pytest.mark.slow
def test_sigterm_hands_the_session_over_well_under_the_ttl(redis_url, fleet):
    ttl = 10.0
    words = random_words(60, seed=13)
    reference = reference_segments(redis_url, words)
    client = client_for(redis_url)
    sid = "call-term"
    # no drain time: SIGTERM hands over at once (tests/test_worker_drain.py covers the drain)
    leaving = fleet.spawn(redis_url, "w-leaving", lease_ttl_sec=ttl, env={"STREAMSCRIBE_DRAIN_TIMEOUT_SEC": "0"})
    producer = RealtimeProducer(redis_url, sid, encode_words(words), interval_sec=0.025)
    producer.start()
    wait_owner(client, sid, 0, timeout=10)
    wait_for(lambda: client.xlen(KEYS.session_output(sid)) >= 3, 10, "the first committed segments")
    staying = fleet.spawn(redis_url, "w-staying", lease_ttl_sec=ttl)

    sent_at = leaving.send(signal.SIGTERM)
    epoch, owner, acquired_at = wait_owner(client, sid, 1, timeout=ttl)
    assert leaving.proc.wait(timeout=5) == 0
    producer.finish()
    wait_for(lambda: ended(client, sid), 30, "the end of the session")

    print(f"handover after SIGTERM (TTL {ttl} s): {acquired_at - sent_at:.2f} s")
    assert (epoch, owner) == (2, staying.worker_id)
    assert acquired_at - sent_at < 3.0
    assert_exactly_once(client, sid, words, reference)
    assert_retained(client, sid)


@pytest.mark.slow
def test_a_long_transcribe_call_does_not_starve_the_lease(redis_url, monkeypatch):
    ttl = 1.0
    words = random_words(30, seed=17)
    write_session(redis_url, "call-slow", encode_words(words))
    original = SyntheticASR.transcribe_batch
    slow_calls: list[float] = []

    def slow_transcribe_batch(self, items):
        if not slow_calls:  # the first call holds the loop (and mostly the GIL) for 3 TTLs
            until = time.monotonic() + 3 * ttl
            while time.monotonic() < until:
                sum(range(1000))
            slow_calls.append(3 * ttl)
        return original(self, items)

    monkeypatch.setattr(SyntheticASR, "transcribe_batch", slow_transcribe_batch)
    client = client_for(redis_url)
    worker = Worker(synthetic_settings(redis_url, lease_ttl_sec=ttl))
    loop = threading.Thread(target=worker.run, kwargs={"burst": True})
    loop.start()
    rival = LeaseManager(client_for(redis_url), KEYS, Scripts(), WORKER_GROUP, "rival", ttl)
    stolen, max_idle_ms = [], 0
    try:
        while loop.is_alive():
            stolen += rival.take_expired(10)
            for shard in KEYS.all_shards():
                for p in client.xpending_range(KEYS.announcements(shard), WORKER_GROUP, "-", "+", 10):
                    max_idle_ms = max(max_idle_ms, p["time_since_delivered"])
            time.sleep(0.05)
    finally:
        worker.stop()
        loop.join(30)

    print(f"longest lease idle during a {3 * ttl:.0f} s call: {max_idle_ms} ms (TTL {ttl * 1000:.0f} ms)")
    assert slow_calls, "the slow call ran"
    assert stolen == [] and max_idle_ms < ttl * 1000
    assert words_of(session_events(client, "call-slow")) == oracle(words)
    assert int(state(client, "call-slow")["epoch"]) == 1


def test_a_worker_takes_new_sessions_only_while_under_max_sessions(redis_url):
    client = client_for(redis_url)
    sessions = {f"call-{k}": random_words(12, seed=k) for k in range(3)}
    for sid, words in sessions.items():
        write_session(redis_url, sid, encode_words(words))
    worker = Worker(synthetic_settings(redis_url, max_sessions=2))
    worker.start()
    owned, delivered = [], []
    try:
        for _ in range(500):
            did_work = worker.run_iteration()
            owned.append(len(worker.sessions))
            delivered.append(
                sum(client.xpending(KEYS.announcements(s), WORKER_GROUP)["pending"] for s in KEYS.all_shards())
            )
            if not did_work and not worker.sessions:
                break
    finally:
        worker.shutdown()

    assert owned[0] == 2 and max(owned) == 2
    assert max(delivered) == 2, "the third session is not even read from its stream while two are owned"
    for sid, words in sessions.items():
        assert words_of(session_events(client, sid)) == oracle(words)


@pytest.mark.slow
def test_metrics_and_healthz_are_served_and_healthz_fails_while_redis_is_gone(fleet, tmp_path):
    server = RedisServerProcess().start()
    try:
        url, port = server.url, server.port
        worker = fleet.spawn(url, "w-metrics", lease_ttl_sec=TTL)
        words = random_words(10, seed=19)
        write_session(url, "call-metrics", encode_words(words))
        client = client_for(url)
        wait_for(lambda: ended(client, "call-metrics"), 15, "the end of the session")
        client.close()

        status, body = worker.http_get("/metrics")
        assert status == 200
        assert worker.metric("streamscribe_sessions_capacity") == 8
        assert worker.metric("streamscribe_sessions_ended_total", reason="completed") == 1
        assert worker.metric("streamscribe_segments_committed_total") >= 1
        assert worker.metric("streamscribe_audio_processed_seconds_total") == pytest.approx(4.1, abs=0.01)
        assert "streamscribe_end_to_end_latency_seconds_bucket" in body
        assert worker.http_get("/healthz")[0] == 200

        server.stop()
        gone_at = time.monotonic()
        wait_for(lambda: worker.http_get("/healthz")[0] == 503, 10, "/healthz to fail without Redis")
        print(f"/healthz answered 503 {time.monotonic() - gone_at:.2f} s after Redis stopped")
        assert worker.alive()

        # the server comes back empty (no persistence): the worker recreates its group and serves again
        server = RedisServerProcess(port=port).start()
        wait_for(lambda: worker.http_get("/healthz")[0] == 200, 15, "/healthz to recover with Redis")
        write_session(url, "call-after", encode_words(words))
        client = client_for(url)
        wait_for(lambda: ended(client, "call-after"), 15, "a session served after the restart")
        assert words_of(session_events(client, "call-after")) == oracle(words)
        client.close()
    finally:
        server.stop()


def test_a_stopping_worker_hands_over_only_the_leases_it_still_holds(redis_url):
    client = client_for(redis_url)
    for sid in ("kept", "taken"):
        write_session(redis_url, sid, encode_words(random_words(8, seed=len(sid))))
    leaving = Worker(synthetic_settings(redis_url, worker_id="leaving", lease_ttl_sec=60))
    leaving.start()
    leaving.run_iteration()
    assert set(leaving.sessions) == {"kept", "taken"}
    # meanwhile another worker took "taken" over (as its janitor would after a pause)
    lease = leaving.sessions["taken"].lease
    stream = KEYS.announcements(lease.shard)
    client.xclaim(stream, WORKER_GROUP, "successor", 0, [lease.entry_id], justid=True)

    leaving.shutdown()  # SIGTERM's hand-over

    def holder(sid: str) -> str:
        for shard in KEYS.all_shards():
            stream = KEYS.announcements(shard)
            for p in client.xpending_range(stream, WORKER_GROUP, "-", "+", 10):
                [(_id, fields)] = client.xrange(stream, p["message_id"], p["message_id"])
                if fields[b"session"] == sid.encode():
                    return p["consumer"].decode()
        return ""

    assert holder("kept") == HANDOVER_CONSUMER, "its own lease is parked for the next janitor pass"
    assert holder("taken") == "successor", "a lease it lost stays with the worker that took it"


@pytest.mark.parametrize("kind", available_server_kinds())
def test_a_worker_started_before_its_redis_waits_for_it_and_then_serves(fleet, kind):
    port = free_port()
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    spawned: list = []
    thread = threading.Thread(target=lambda: spawned.append(fleet.spawn(url, "early", ready_timeout=60)))
    thread.start()
    log_path = fleet.log_dir / "early.log"
    wait_for(lambda: log_path.exists() and log_path.read_text().count("cannot be reached") >= 2, 20, "retries")
    assert thread.is_alive(), "the worker exited instead of waiting for Redis"
    log = log_path.read_text()
    assert "Traceback" not in log and "s3cret" not in log and "redis://:***@127.0.0.1" in log
    with RedisServerProcess(binary_for_kind(kind), port=port, password="s3cret"):
        thread.join(timeout=60)
        assert spawned, "the worker did not become ready once Redis was up"
        words = random_words(8, seed=41)
        write_session(url, "after-redis", encode_words(words))
        client = client_for(url)
        wait_for(lambda: ended(client, "after-redis"), 20, "the session to end")
        assert words_of(session_events(client, "after-redis")) == oracle(words)
        spawned[0].send(signal.SIGTERM)
        assert spawned[0].proc.wait(timeout=20) == 0
    assert "s3cret" not in log_path.read_text()


def test_healthz_fails_when_the_lease_keeper_cannot_renew_while_the_loop_still_turns(redis_url, monkeypatch):
    ttl = 1.0
    worker = Worker(synthetic_settings(redis_url, lease_ttl_sec=ttl))
    loop = threading.Thread(target=worker.run, name="loop")
    loop.start()
    try:
        wait_for(lambda: worker.healthy(), 10, "a healthy worker")
        keeper = worker._keeper
        assert keeper is not None

        def refused(held):
            raise ConnectionError("the keeper's connection is gone")

        monkeypatch.setattr(keeper.leases, "renew", refused)
        wait_for(lambda: not worker.healthy(), 5 * ttl, "/healthz to fail without renewals")
        assert worker.health.alive(), "the loop itself still turns"
        monkeypatch.undo()
        wait_for(lambda: worker.healthy(), 5 * ttl, "/healthz to recover with the renewals")
    finally:
        worker.stop()
        loop.join(30)
