"""Orphans after Redis data loss: announcement entries (and the leases in their pending list) that
vanish are found by the fleet's reconciliation pass and announced again, exactly once."""

from __future__ import annotations

import time

import pytest

from producer.client import Producer
from tests.worker_helpers import (
    KEYS,
    client_for,
    oracle,
    session_events,
    state,
    synthetic_settings,
    words_of,
    write_session,
)
from worker.backends.synthetic import encode_words, random_words
from worker.metrics import PrometheusObserver
from worker.protocol.keys import WORKER_GROUP
from worker.protocol.scripts import Scripts
from worker.runtime.loop import Worker
from worker.runtime.reconcile import orphans, reannounce

pytestmark = pytest.mark.timeout(120)

WORDS = random_words(9, seed=131)


def lose_announcement(client, sid: str) -> None:  # type: ignore[no-untyped-def]
    """What an AOF-everysec restart can do: the session's keys survive, its announcement does not."""
    stream = KEYS.announcements(KEYS.shard_of(sid))
    for entry_id, fields in client.xrange(stream):
        if fields[b"session"] == sid.encode():
            client.xack(stream, WORKER_GROUP, entry_id)
            client.xdel(stream, entry_id)


def test_sessions_whose_announcement_or_lease_was_lost_are_found_and_finished_exactly_once(redis_url):
    client = client_for(redis_url)
    # lost while a worker held it: that worker committed part of the call, then died
    writer = Producer(redis_url).open("held")
    audio = encode_words(WORDS, 16000)
    for k in range(0, audio.shape[0], 1600):
        writer.send(audio[k : k + 1600])
    first = Worker(synthetic_settings(redis_url, worker_id="first", lease_ttl_sec=60, reconcile_interval_sec=0.3))
    first.start()
    first.run_iteration()
    first.run_iteration()
    assert int(state(client, "held")[b"out_seq".decode()]) >= 1, "part of it is committed"
    first._keeper.stop()  # the first owner's process is gone
    lose_announcement(client, "held")
    writer.close()  # the producer finishes the call; nothing would ever read it
    # lost before any worker took it
    write_session(redis_url, "never-taken", encode_words(WORDS, 16000))
    lose_announcement(client, "never-taken")
    time.sleep(0.4)  # the first worker's reconciliation lock expires
    write_session(redis_url, "healthy", encode_words(WORDS[:3], 16000))  # announced: not an orphan

    assert sorted(o.session for o in orphans(client, KEYS)) == ["held", "never-taken"]
    observer = PrometheusObserver()
    second = Worker(synthetic_settings(redis_url, worker_id="second", reconcile_interval_sec=0.5), observer=observer)
    second.run(burst=True, max_seconds=60)

    for sid, words in (("never-taken", WORDS), ("held", WORDS), ("healthy", WORDS[:3])):
        events = session_events(client, sid)
        assert events[-1].reason == "completed", sid
        assert words_of(events) == oracle(words), sid
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs)), f"{sid}: a record twice"
    assert observer.registry.get_sample_value("streamscribe_sessions_reannounced_total") == 2
    assert orphans(client, KEYS) == []


def test_of_two_workers_that_find_the_same_orphan_only_one_announces_it(redis_url):
    client = client_for(redis_url)
    write_session(redis_url, "contested", encode_words(WORDS, 16000))
    lose_announcement(client, "contested")
    (found,) = orphans(client, KEYS)
    assert reannounce(client, KEYS, Scripts(), found) is not None
    assert reannounce(client, KEYS, Scripts(), found) is None, "the first announcement stands"
    assert orphans(client, KEYS) == []
    stream = KEYS.announcements(KEYS.shard_of("contested"))
    assert [f[b"session"] for _id, f in client.xrange(stream)] == [b"contested"]


def test_hostile_announcements_and_keys_do_not_break_the_pass(redis_url):
    client = client_for(redis_url)
    write_session(redis_url, "lost", encode_words(WORDS[:3], 16000))
    lose_announcement(client, "lost")
    stream = KEYS.announcements(0)
    client.xadd(stream, {"session": b"\xff\xfe"})
    client.xadd(stream, {"other": b"x"})
    client.hset(b"streamscribe:{\xff}:state", mapping={"status": "open", "announced": "1"})
    assert [o.session for o in orphans(client, KEYS)] == ["lost"]
