"""Leases: a session's announcement entry, pending for its owner in the workers' group.

* New sessions come from ``XREADGROUP ... >`` on the announcement shards, only while this
  worker is under ``max_sessions``.
* The owner's :class:`LeaseKeeper` thread resets the idle time of its entries every TTL/3
  (``heartbeat.lua``), so long inference cannot starve the lease.
* Any worker's janitor claims entries idle past the TTL (``XAUTOCLAIM``): their owner died or
  was paused. The epoch bump in ``acquire.lua`` then fences the old owner.
* On SIGTERM the owner parks its entries under the ``handover`` consumer with an idle time past
  the TTL, so the next janitor pass anywhere takes them at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from worker.protocol.connection import text
from worker.protocol.keys import HANDOVER_CONSUMER, Keyspace
from worker.protocol.scripts import Scripts

#: The waiting-sessions count reads at most this many entries per shard when Redis has no lag.
WAITING_COUNT_LIMIT = 10_000

log = logging.getLogger(__name__)

Claimed = tuple[int, str, str]  # (shard, entry id, session id)


class LeaseManager:
    """Reads, claims, renews, releases and acknowledges announcement entries."""

    def __init__(self, client: Any, keys: Keyspace, scripts: Scripts, group: str, consumer: str, ttl_sec: float):
        self.client = client
        self.keys = keys
        self.scripts = scripts
        self.group = group
        self.consumer = consumer
        self.ttl_ms = max(1, int(ttl_sec * 1000))
        self._janitor_cursor: dict[int, str] = {}

    def ensure_groups(self) -> None:
        for shard in self.keys.all_shards():
            try:
                self.client.xgroup_create(self.keys.announcements(shard), self.group, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def take_new(self, limit: int) -> list[Claimed]:
        """Up to ``limit`` sessions never delivered to any worker."""
        claimed: list[Claimed] = []
        for shard in self.keys.all_shards():
            if len(claimed) >= limit:
                break
            stream = self.keys.announcements(shard)
            try:
                reply = self.client.xreadgroup(self.group, self.consumer, {stream: ">"}, count=limit - len(claimed))
            except ResponseError as e:
                self._recreate_group(e)
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    claimed.append((shard, text(entry_id), _session_of(fields)))
        return claimed

    def take_expired(self, limit: int) -> list[Claimed]:
        """Up to ``limit`` sessions whose owner stopped renewing (dead, paused, or handed over)."""
        claimed: list[Claimed] = []
        for shard in self.keys.all_shards():
            if len(claimed) >= limit:
                break
            stream = self.keys.announcements(shard)
            start = self._janitor_cursor.get(shard, "0-0")
            try:
                reply = self.client.xautoclaim(
                    stream, self.group, self.consumer, self.ttl_ms, start_id=start, count=limit - len(claimed)
                )
            except ResponseError as e:
                self._recreate_group(e)
                continue
            self._janitor_cursor[shard] = text(reply[0])
            for entry_id, fields in reply[1]:
                if fields is None:
                    continue
                claimed.append((shard, text(entry_id), _session_of(fields)))
        return claimed

    def _recreate_group(self, e: ResponseError) -> None:
        """A server that restarted empty (or was flushed) lost the group: make it again."""
        if "NOGROUP" not in str(e):
            raise e
        log.warning("the workers' group is gone (%s); creating it again", e)
        self.ensure_groups()
        self._janitor_cursor.clear()

    def renew(self, held: dict[int, list[str]]) -> list[tuple[int, str]]:
        """Reset the idle time of held entries; return those that are no longer ours."""
        lost: list[tuple[int, str]] = []
        for shard, entry_ids in held.items():
            if not entry_ids:
                continue
            stream = self.keys.announcements(shard)
            gone = self.scripts.call(self.client, "heartbeat", [stream], [self.group, self.consumer, *entry_ids])
            lost.extend((shard, text(e)) for e in gone)
        return lost

    def release(self, shard: int, entry_id: str) -> None:
        """Hand a session over: park its entry, if still ours, as if idle for twice the TTL."""
        self.scripts.call(
            self.client,
            "release",
            [self.keys.announcements(shard)],
            [self.group, self.consumer, HANDOVER_CONSUMER, self.ttl_ms * 2, entry_id],
        )

    def finish(self, shard: int, entry_id: str) -> None:
        """The session is over: acknowledge and delete its announcement."""
        stream = self.keys.announcements(shard)
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(stream, self.group, entry_id)
        pipe.xdel(stream, entry_id)
        pipe.execute()

    def waiting(self) -> int:
        """Sessions announced and owned by no worker: never delivered, or parked by a handover.

        Fleet-wide (every worker sees the same streams), for the waiting-sessions gauge that
        autoscaling and alerts read. A session whose owner died counts once its lease is taken
        again, not while its TTL runs.
        """
        total = 0
        for shard in self.keys.all_shards():
            stream = self.keys.announcements(shard)
            try:
                groups = self.client.xinfo_groups(stream)
            except ResponseError:
                continue  # no stream yet: nothing was announced there
            group = next((g for g in groups if text(g["name"]) == self.group), None)
            if group is None:
                total += int(self.client.xlen(stream))  # no worker has started yet: all of it waits
                continue
            summary = self.client.xpending(stream, self.group)
            lag = group.get("lag")
            if lag is None:
                # Redis cannot tell the lag when deletions blur the count: count the entries after
                # the last delivered one
                after = "(" + text(group["last-delivered-id"])
                lag = len(self.client.xrange(stream, after, "+", count=WAITING_COUNT_LIMIT))
            parked = sum(
                int(c["pending"]) for c in summary.get("consumers") or [] if text(c["name"]) == HANDOVER_CONSUMER
            )
            total += int(lag) + parked
        return total

    def leave_group(self) -> None:
        """Remove this worker's consumer if it holds nothing (keeps XINFO CONSUMERS tidy)."""
        for shard in self.keys.all_shards():
            stream = self.keys.announcements(shard)
            try:
                pending = self.client.xpending_range(stream, self.group, "-", "+", 1, consumername=self.consumer)
                if not pending:
                    self.client.xgroup_delconsumer(stream, self.group, self.consumer)
            except ResponseError as e:
                log.debug("leaving group on %s: %s", stream, e)


def _session_of(fields: dict[Any, Any]) -> str:
    """The announced session id; bytes that are not UTF-8 give an id the caller refuses, not an error."""
    raw = fields.get(b"session", fields.get("session", b""))
    if isinstance(raw, bytes):
        return raw[:1024].decode(errors="replace")
    return text(raw)


class LeaseKeeper(threading.Thread):
    """Renews this worker's leases every TTL/3 from its own thread and connection.

    It stops renewing when the loop has not ticked for ``loop_alive()`` to hold: a hung worker
    must lose its sessions rather than keep them forever. :meth:`healthy` is false once no renewal
    has succeeded for a TTL (the thread died, or its connection fails while the loop's works):
    the leases are then lost, whatever the loop does, and ``/healthz`` must say so.
    """

    def __init__(
        self,
        leases: LeaseManager,
        held: Callable[[], dict[int, list[str]]],
        on_lost: Callable[[list[tuple[int, str]]], None],
        loop_alive: Callable[[], bool],
        interval_sec: float,
    ) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.leases = leases
        self.held = held
        self.on_lost = on_lost
        self.loop_alive = loop_alive
        self.interval_sec = interval_sec
        self._stop_event = threading.Event()
        self._renewed_at = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_sec):
            self.renew_once()

    def renew_once(self) -> None:
        if not self.loop_alive():
            log.error("the worker loop is stalled; not renewing leases so other workers take over")
            return
        try:
            lost = self.leases.renew(self.held())
        except Exception as e:  # a Redis hiccup must not kill the thread; the next tick retries
            log.warning("lease renewal failed: %s", e)
            return
        self._renewed_at = time.monotonic()
        if lost:
            self.on_lost(lost)

    def healthy(self) -> bool:
        """The thread runs and renewed within a TTL (three of its intervals)."""
        return self.is_alive() and time.monotonic() - self._renewed_at < 3 * self.interval_sec

    def stop(self) -> None:
        self._stop_event.set()
