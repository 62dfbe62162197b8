"""The worker against a real server, with the synthetic backend: one session end to end."""

from __future__ import annotations

import msgpack
import pytest
import redis

from producer.client import Producer
from tests.worker_helpers import synthetic_settings
from worker.backends.synthetic import encode_words, expected_words, random_words
from worker.protocol.events import decode_event
from worker.protocol.keys import Keyspace
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)


def session_events(url: str, sid: str) -> list:
    client = redis.Redis.from_url(url)
    entries = client.xrange(Keyspace().session_output(sid))
    return [decode_event(fields[b"m"]) for _id, fields in entries]


def test_a_session_streamed_through_a_burst_worker_gives_the_oracle_transcript(redis_url):
    words = random_words(60, seed=1)
    audio = encode_words(words)
    producer = Producer(redis_url)
    writer = producer.open("call-1", sample_rate=16000, encoding="pcm_s16le")
    step = 1600
    for i in range(0, audio.shape[0], step):
        writer.send(audio[i : i + step])
    writer.close()

    Worker(synthetic_settings(redis_url)).run(burst=True)

    events = session_events(redis_url, "call-1")
    types = [e.TYPE for e in events]
    assert types[0] == "session_started" and types[-1] == "session_ended"
    got = [w for e in events if e.TYPE == "segment" for w in e.words]
    assert [w[2] for w in got] == words
    oracle = expected_words(words)
    assert [(round(s, 3), round(e, 3)) for s, e, _t in oracle] == [(w[0], w[1]) for w in got]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    ended = events[-1]
    assert ended.reason == "completed" and ended.totals["words"] == len(words)
    # the shard's all-sessions stream holds the same events, once each
    client = redis.Redis.from_url(redis_url)
    keys = Keyspace()
    shard_events = client.xrange(keys.events(keys.shard_of("call-1")))
    assert [int(f[b"seq"]) for _i, f in shard_events] == [e.seq for e in events]
    state = client.hgetall(keys.session_state("call-1"))
    assert state[b"status"] == b"ended" and client.ttl(keys.session_state("call-1")) > 0
    checkpoint = msgpack.unpackb(state[b"checkpoint"])
    assert len(state[b"checkpoint"]) < 8192 and checkpoint["in_pos"]
