"""Transcript consumers: typed events of one session, of every session, or of a consumer group.

Three ways to read what the workers write:

* :meth:`TranscriptConsumer.session_events` follows one session's output stream from its first
  event (a session that does not exist yet is waited for) and stops after ``session_ended``;
* :meth:`TranscriptConsumer.all_events` follows every shard's events stream (all sessions);
* :meth:`TranscriptConsumer.group_events` reads the shard streams as a member of a consumer
  group: its own pending (delivered, unacknowledged) entries first, then new ones, so a
  restarted consumer resumes with no gap and, for what it acknowledged, no duplicate.

On Redis Cluster every shard stream lives in its own slot, and a multi-key XREAD would fail
with CROSSSLOT; there the shards are read one by one (non-blocking reads of all of them, then
a short blocking read of one, in turn), which bounds the added latency by ``cluster_block_ms``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from producer.common import ConnectionOptions
from worker.errors import DecodeError
from worker.protocol.connection import TLSFiles, connect, text
from worker.protocol.events import Event, SessionEnded, decode_event
from worker.protocol.keys import Keyspace, check_session_id

log = logging.getLogger(__name__)

Streams = dict[str, str]  # stream key -> last id read


@dataclass(frozen=True)
class Delivery:
    """One event from a shard's events stream, with where it came from (to ack or resume)."""

    shard: int
    entry_id: str
    session: str
    seq: int
    event: Event


class TranscriptConsumer:
    """Reads transcript events; connection settings default like :class:`producer.client.Producer`."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        key_prefix: str | None = None,
        shards: int | None = None,
        cluster: bool | None = None,
        client: Any = None,
        tls: TLSFiles | None = None,
        block_ms: int = 1000,
        cluster_block_ms: int = 50,
        count: int = 100,
    ) -> None:
        options = ConnectionOptions.resolve(redis_url, key_prefix, shards, tls)
        self.keys = Keyspace(options.key_prefix, options.shards)
        self.client = client or connect(options.redis_url, cluster, options.tls)
        self.cluster = isinstance(self.client, RedisCluster)
        self.block_ms = block_ms
        self.cluster_block_ms = cluster_block_ms
        self.count = count
        self._turn = 0

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TranscriptConsumer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- one session -----------------------------------------------------------------------

    def session_events(
        self, session_id: str, *, idle_timeout: float | None = None, partials: bool = False
    ) -> Iterator[Event]:
        """Every event of one session, from its first, until ``session_ended``.

        Waits for a session that has not started yet. With ``idle_timeout``, stops early (without
        ``session_ended``) after that many seconds with no event. With ``partials``, the
        session's ``partial`` events come too, in the order they were written among the
        committed ones: each replaces the previous partial of its channel, and none is ever part
        of the transcript.
        """
        sid = check_session_id(session_id)
        streams: Streams = {self.keys.session_output(sid): "0-0"}
        if partials:
            streams[self.keys.session_partials(sid)] = "0-0"
        for _key, entry_id, fields in self._entries(streams, idle_timeout):
            event = decode_entry(fields, entry_id)
            if event is None:
                continue
            yield event
            if isinstance(event, SessionEnded):
                return

    # -- every session ---------------------------------------------------------------------

    def all_events(
        self, *, from_start: bool = False, idle_timeout: float | None = None, after: dict[int, str] | None = None
    ) -> Iterator[Delivery]:
        """Events of every session, in order per session, from now (or the retained start).

        ``after`` maps shard -> the last entry id already seen (a :class:`Delivery`'s
        ``entry_id``), to resume exactly where an earlier reader stopped. "Now" is when this
        method is called, not when the iteration starts.
        """
        streams: Streams = {}
        for shard in self.keys.all_shards():
            key = self.keys.events(shard)
            if after and shard in after:
                streams[key] = after[shard]
            elif from_start:
                streams[key] = "0-0"
            else:
                # a concrete id, not "$": with per-shard reads "$" would skip what arrives between them
                last = self.client.xrevrange(key, count=1)
                streams[key] = text(last[0][0]) if last else "0-0"
        return self._follow(streams, idle_timeout)

    def _follow(self, streams: Streams, idle_timeout: float | None) -> Iterator[Delivery]:
        shard_of = {self.keys.events(k): k for k in self.keys.all_shards()}
        for key, entry_id, fields in self._entries(streams, idle_timeout):
            delivery = delivery_of(shard_of[key], entry_id, fields)
            if delivery is not None:
                yield delivery

    def _entries(self, streams: Streams, idle_timeout: float | None) -> Iterator[tuple[str, str, dict[bytes, bytes]]]:
        """Follow ``streams`` (key -> last id seen, advanced here) until ``idle_timeout`` passes quietly."""
        deadline = deadline_after(idle_timeout)
        while True:
            replies = self._xread(streams, block_until(deadline, self.block_ms))
            if not replies:
                if expired(deadline):
                    return
                continue
            deadline = deadline_after(idle_timeout)
            yield from in_order(replies, streams)

    # -- consumer group --------------------------------------------------------------------

    def ensure_group(self, group: str, start: str = "0") -> None:
        """Create ``group`` on every shard's events stream (``start``: "0" for all retained
        events, "$" for new ones only); an existing group is left as it is."""
        for shard in self.keys.all_shards():
            try:
                self.client.xgroup_create(self.keys.events(shard), group, id=start, mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def group_events(
        self,
        group: str,
        consumer: str,
        *,
        auto_ack: bool = True,
        idle_timeout: float | None = None,
        start: str = "0",
    ) -> Iterator[Delivery]:
        """Events of every session, shared among the consumers of ``group``.

        This consumer's pending entries (delivered before a crash, never acknowledged) come
        first, then new entries. With ``auto_ack`` a delivery is acknowledged when the loop asks
        for the next one, that is after the caller handled it; breaking out of the loop leaves the
        last one pending, to be delivered again on restart (at least once, never skipped). Without
        ``auto_ack``, call :meth:`ack`.
        """
        self.ensure_group(group, start)
        shard_of = {self.keys.events(k): k for k in self.keys.all_shards()}
        cursor = GroupCursor(list(shard_of))
        deadline = deadline_after(idle_timeout)
        while True:
            draining = cursor.draining
            replies = self._xreadgroup(
                group, consumer, cursor.streams, None if draining else block_until(deadline, self.block_ms)
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
                    self.ack(group, shard, entry_id)  # undecodable: reported once, never redelivered
                    continue
                yield delivery
                if auto_ack:
                    self.ack(group, shard, entry_id)

    def ack(self, group: str, shard: int, entry_id: str) -> None:
        """Acknowledge one entry of ``shard``'s events stream (``Delivery.shard``, ``.entry_id``)."""
        self.client.xack(self.keys.events(shard), group, entry_id)

    # -- reading ---------------------------------------------------------------------------

    def _xread(self, streams: Streams, block: int) -> list[tuple[str, str, dict[bytes, bytes]]]:
        return self._read(lambda s, b: self.client.xread(s, count=self.count, block=b), streams, block)

    def _xreadgroup(
        self, group: str, consumer: str, streams: Streams, block: int | None
    ) -> list[tuple[str, str, dict[bytes, bytes]]]:
        def call(s: Streams, b: int | None) -> Any:
            return self.client.xreadgroup(group, consumer, s, count=self.count, block=b)

        return self._read(call, streams, block)

    def _read(self, call: Any, streams: Streams, block: int | None) -> list[tuple[str, str, dict[bytes, bytes]]]:
        """One read of ``streams``: one command on a standalone server, one per stream on a cluster."""
        if not self.cluster or not split_for_cluster(streams, self.client.keyslot):
            # one session's streams share a hash tag: one command reads them on a cluster too
            return flatten(call(streams, block))
        out: list[tuple[str, str, dict[bytes, bytes]]] = []
        for key, pos in streams.items():
            out += flatten(call({key: pos}, None))
        if out or block is None:
            return out
        # nothing anywhere: wait briefly on one shard (in turn), then the caller polls them all again
        keys = list(streams)
        key = keys[self._turn % len(keys)]
        self._turn += 1
        return flatten(call({key: streams[key]}, min(block, self.cluster_block_ms)))


Entry = tuple[str, str, dict[bytes, bytes]]  # stream key, entry id, fields


class GroupCursor:
    """Where a group consumer reads each shard: its own pending entries ("0-0" on), then new ones (">").

    I/O-free, shared by the sync and asyncio consumers: :meth:`advance` takes what one read
    returned; once a shard's pending list is drained (a read while draining returned nothing of
    it), that shard reads new entries.
    """

    def __init__(self, keys: list[str]) -> None:
        self.streams: Streams = {key: "0-0" for key in keys}

    @property
    def draining(self) -> bool:
        return any(pos != ">" for pos in self.streams.values())

    def advance(self, replies: list[Entry], draining: bool) -> None:
        if draining:
            seen = {key for key, _id, _f in replies}
            for key, pos in self.streams.items():
                if pos != ">" and key not in seen:
                    self.streams[key] = ">"
        for key, entry_id, _fields in replies:
            if self.streams[key] != ">":
                self.streams[key] = entry_id


def in_order(replies: list[Entry], streams: Streams) -> list[Entry]:
    """One read's entries in id order, each stream's position advanced past them.

    One session's streams live on one node, so their ids share a clock: merging by id gives the
    order in which the worker wrote them.
    """
    if len(streams) > 1:
        replies = sorted(replies, key=lambda r: _id_order(r[1]))
    for key, entry_id, _fields in replies:
        streams[key] = entry_id
    return replies


def split_for_cluster(streams: Streams, keyslot: Any) -> bool:
    """Whether ``streams`` span slots, so that a cluster must read them one by one."""
    return len(streams) > 1 and len({keyslot(k) for k in streams}) > 1


def flatten(reply: Any) -> list[tuple[str, str, dict[bytes, bytes]]]:
    """XREAD's reply (a list, or a dict under RESP3) as (stream, entry id, fields) triples."""
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else reply
    out = []
    for key, entries in items:
        for entry_id, fields in entries:
            # a pending entry deleted by trimming comes back with no fields
            out.append((text(key), text(entry_id), fields or {}))
    return out


def decode_entry(fields: dict[bytes, bytes], entry_id: str) -> Event | None:
    raw = fields.get(b"m")
    if raw is None:
        log.warning("entry %s has no event (trimmed away?); skipping it", entry_id)
        return None
    try:
        return decode_event(raw)
    except DecodeError as e:
        log.warning("entry %s: %s; skipping it", entry_id, e)
        return None


def delivery_of(shard: int, entry_id: str, fields: dict[bytes, bytes]) -> Delivery | None:
    event = decode_entry(fields, entry_id)
    if event is None:
        return None
    return Delivery(shard, entry_id, text(fields.get(b"session", event.session)), int(fields.get(b"seq", 0)), event)


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def deadline_after(idle_timeout: float | None) -> float | None:
    return None if idle_timeout is None else time.monotonic() + idle_timeout


def block_until(deadline: float | None, block_ms: int) -> int:
    """How long one blocking read may wait: ``block_ms``, less if ``deadline`` comes sooner."""
    if deadline is None:
        return block_ms
    return max(1, min(block_ms, int((deadline - time.monotonic()) * 1000)))


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
