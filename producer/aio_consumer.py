"""asyncio transcript consumer: :class:`producer.consumer.TranscriptConsumer` over ``redis.asyncio``.

The same three reads, as async iterators, for services that already run an event loop (a
WebSocket fan-out to agent desktops, an LLM pipeline):

* ``async for event in consumer.session_events(sid)``: one session, until ``session_ended``;
* ``async for delivery in consumer.all_events()``: every session, from now;
* ``async for delivery in consumer.group_events(group, name)``: shared by a consumer group, its
  own pending entries first, acknowledged once the caller asks for the next one.

The read positions, ordering and group-draining rules are the sync consumer's
(:class:`~producer.consumer.GroupCursor`, :func:`~producer.consumer.in_order`); only the I/O
differs. On Redis Cluster the shard streams are read one by one, as the sync consumer does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from producer.aio import connect_async
from producer.common import ConnectionOptions
from producer.consumer import (
    Delivery,
    Entry,
    GroupCursor,
    Streams,
    block_until,
    deadline_after,
    decode_entry,
    delivery_of,
    expired,
    flatten,
    in_order,
    split_for_cluster,
)
from worker.protocol.connection import TLSFiles, text
from worker.protocol.events import Event, SessionEnded
from worker.protocol.keys import Keyspace, check_session_id

Read = Callable[[Streams, int | None], Awaitable[Any]]


class AsyncTranscriptConsumer:
    """Reads transcript events in asyncio; create it with ``await AsyncTranscriptConsumer.connect(url)``."""

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str | None = None,
        shards: int | None = None,
        block_ms: int = 1000,
        cluster_block_ms: int = 50,
        count: int = 100,
    ) -> None:
        options = ConnectionOptions.resolve(None, key_prefix, shards)
        self.keys = Keyspace(options.key_prefix, options.shards)
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.block_ms = block_ms
        self.cluster_block_ms = cluster_block_ms
        self.count = count
        self._turn = 0

    @classmethod
    async def connect(
        cls,
        redis_url: str | None = None,
        *,
        key_prefix: str | None = None,
        shards: int | None = None,
        cluster: bool | None = None,
        tls: TLSFiles | None = None,
        **kwargs: Any,
    ) -> AsyncTranscriptConsumer:
        """Connect to ``redis_url`` (default: ``STREAMSCRIBE_REDIS_URL``, then localhost)."""
        options = ConnectionOptions.resolve(redis_url, key_prefix, shards, tls)
        client = await connect_async(options.redis_url, cluster, options.tls)
        return cls(client, key_prefix=options.key_prefix, shards=options.shards, **kwargs)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> AsyncTranscriptConsumer:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- one session -----------------------------------------------------------------------

    async def session_events(
        self, session_id: str, *, idle_timeout: float | None = None, partials: bool = False
    ) -> AsyncIterator[Event]:
        """Every event of one session, from its first, until ``session_ended`` (see the sync one)."""
        sid = check_session_id(session_id)
        streams: Streams = {self.keys.session_output(sid): "0-0"}
        if partials:
            streams[self.keys.session_partials(sid)] = "0-0"
        async for _key, entry_id, fields in self._entries(streams, idle_timeout):
            event = decode_entry(fields, entry_id)
            if event is None:
                continue
            yield event
            if isinstance(event, SessionEnded):
                return

    # -- every session ---------------------------------------------------------------------

    async def all_events(
        self, *, from_start: bool = False, idle_timeout: float | None = None, after: dict[int, str] | None = None
    ) -> AsyncIterator[Delivery]:
        """Events of every session, in order per session, from now (or the retained start)."""
        streams: Streams = {}
        for shard in self.keys.all_shards():
            key = self.keys.events(shard)
            if after and shard in after:
                streams[key] = after[shard]
            elif from_start:
                streams[key] = "0-0"
            else:
                last = await self.client.xrevrange(key, count=1)
                streams[key] = text(last[0][0]) if last else "0-0"
        shard_of = {self.keys.events(k): k for k in self.keys.all_shards()}
        async for key, entry_id, fields in self._entries(streams, idle_timeout):
            delivery = delivery_of(shard_of[key], entry_id, fields)
            if delivery is not None:
                yield delivery

    async def _entries(self, streams: Streams, idle_timeout: float | None) -> AsyncIterator[Entry]:
        deadline = deadline_after(idle_timeout)
        while True:
            replies = await self._read(self._xread, streams, block_until(deadline, self.block_ms))
            if not replies:
                if expired(deadline):
                    return
                continue
            deadline = deadline_after(idle_timeout)
            for entry in in_order(replies, streams):
                yield entry

    # -- consumer group --------------------------------------------------------------------

    async def ensure_group(self, group: str, start: str = "0") -> None:
        for shard in self.keys.all_shards():
            try:
                await self.client.xgroup_create(self.keys.events(shard), group, id=start, mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def group_events(
        self,
        group: str,
        consumer: str,
        *,
        auto_ack: bool = True,
        idle_timeout: float | None = None,
        start: str = "0",
    ) -> AsyncIterator[Delivery]:
        """Events of every session, shared among the consumers of ``group`` (see the sync one)."""
        await self.ensure_group(group, start)
        shard_of = {self.keys.events(k): k for k in self.keys.all_shards()}
        cursor = GroupCursor(list(shard_of))
        deadline = deadline_after(idle_timeout)

        async def xreadgroup(streams: Streams, block: int | None) -> Any:
            return await self.client.xreadgroup(group, consumer, streams, count=self.count, block=block)

        while True:
            draining = cursor.draining
            replies = await self._read(
                xreadgroup, cursor.streams, None if draining else block_until(deadline, self.block_ms)
            )
            cursor.advance(replies, draining)
            if not replies:
                if not draining and expired(deadline):
                    return
                continue
            deadline = deadline_after(idle_timeout)
            for key, entry_id, fields in replies:
                shard = shard_of[key]
                delivery = delivery_of(shard, entry_id, fields)
                if delivery is None:
                    await self.ack(group, shard, entry_id)  # undecodable: reported once, never redelivered
                    continue
                yield delivery
                if auto_ack:
                    await self.ack(group, shard, entry_id)

    async def ack(self, group: str, shard: int, entry_id: str) -> None:
        await self.client.xack(self.keys.events(shard), group, entry_id)

    # -- reading ---------------------------------------------------------------------------

    async def _xread(self, streams: Streams, block: int | None) -> Any:
        return await self.client.xread(streams, count=self.count, block=block)

    async def _read(self, call: Read, streams: Streams, block: int | None) -> list[Entry]:
        """One read of ``streams``: one command on a standalone server, one per stream on a cluster."""
        if not self.cluster or not split_for_cluster(streams, self.client.keyslot):
            return flatten(await call(streams, block))
        out: list[Entry] = []
        for key, pos in streams.items():
            out += flatten(await call({key: pos}, None))
        if out or block is None:
            return out
        keys = list(streams)
        key = keys[self._turn % len(keys)]
        self._turn += 1
        return flatten(await call({key: streams[key]}, min(block, self.cluster_block_ms)))
