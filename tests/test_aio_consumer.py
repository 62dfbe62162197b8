"""The asyncio transcript consumer against real servers (standalone and a 3-node cluster) and a real worker."""

from __future__ import annotations

import asyncio

import pytest

from producer.aio_consumer import AsyncTranscriptConsumer
from producer.consumer import Delivery
from tests.client_helpers import output_events, run_worker, synthetic_settings
from tests.test_consumer import keyed, produce, sessions_spread_over_shards
from worker.backends.synthetic import random_words
from worker.protocol.connection import connect
from worker.protocol.events import PartialEvent, SessionEnded
from worker.protocol.keys import Keyspace

pytestmark = pytest.mark.timeout(120)


def test_one_session_is_followed_from_before_it_starts_through_its_end_with_partials(redis_url):
    async def follow() -> list:
        async with await AsyncTranscriptConsumer.connect(redis_url) as consumer:
            return [e async for e in consumer.session_events("aio-call", idle_timeout=30, partials=True)]

    async def main() -> list:
        task = asyncio.create_task(follow())
        await asyncio.sleep(0.3)  # the consumer waits for a session that does not exist yet
        await asyncio.to_thread(produce, redis_url, "aio-call", random_words(6, seed=3))
        await asyncio.to_thread(run_worker, synthetic_settings(redis_url))
        return await task

    events = asyncio.run(main())
    committed = [e for e in events if not isinstance(e, PartialEvent)]
    assert keyed(committed) == keyed(output_events(redis_url, "aio-call"))
    assert isinstance(events[-1], SessionEnded)


def test_every_session_and_a_group_that_resumes_after_a_crash(redis_url):
    sids = sessions_spread_over_shards(4)
    for k, sid in enumerate(sids):
        produce(redis_url, sid, random_words(4, seed=40 + k))
    run_worker(synthetic_settings(redis_url))
    expected = sorted(k for sid in sids for k in keyed(output_events(redis_url, sid)))

    async def main() -> tuple[list[Delivery], list[Delivery]]:
        consumer = await AsyncTranscriptConsumer.connect(redis_url, count=3)
        everything = [d async for d in consumer.all_events(from_start=True, idle_timeout=0.5)]
        handled: list[Delivery] = []
        async for d in consumer.group_events("aio", "a", auto_ack=False, idle_timeout=1):
            if len(handled) == 5:
                break  # crash: delivered, never handled nor acknowledged
            handled.append(d)
            await consumer.ack("aio", d.shard, d.entry_id)
        await consumer.aclose()
        restarted = await AsyncTranscriptConsumer.connect(redis_url, count=3)
        handled += [d async for d in restarted.group_events("aio", "a", idle_timeout=1)]
        await restarted.aclose()
        return everything, handled

    everything, handled = asyncio.run(main())
    assert sorted(keyed([d.event for d in everything])) == expected
    assert sorted(keyed([d.event for d in handled])) == expected  # each exactly once
    keys = Keyspace()
    client = connect(redis_url)
    assert all(client.xpending(keys.events(k), "aio")["pending"] == 0 for k in keys.all_shards())


def test_the_shard_streams_are_read_one_by_one_on_a_redis_cluster(cluster_url):
    sids = sessions_spread_over_shards(4)
    for k, sid in enumerate(sids):
        produce(cluster_url, sid, random_words(4, seed=90 + k))
    run_worker(synthetic_settings(cluster_url))

    async def main() -> tuple[bool, list[Delivery], list[Delivery]]:
        consumer = await AsyncTranscriptConsumer.connect(cluster_url)
        everything = [d async for d in consumer.all_events(from_start=True, idle_timeout=0.5)]
        group = [d async for d in consumer.group_events("aio-cluster", "c1", idle_timeout=0.5)]
        await consumer.aclose()
        return consumer.cluster, everything, group

    is_cluster, everything, group = asyncio.run(main())
    assert is_cluster
    expected = sorted(k for sid in sids for k in keyed(output_events(cluster_url, sid)))
    assert sorted(keyed([d.event for d in everything])) == expected
    assert sorted(keyed([d.event for d in group])) == expected
