"""Orphan reconciliation: open sessions that no announcement entry names are announced again.

Redis can lose an announcement entry and the lease in its pending list (an AOF-everysec restart,
a replica promotion, a cluster failover). The session's keys survive, but no worker would ever
take it again, and a producer that reopens it sees ``exists`` and does not announce it. Every
``reconcile_interval_sec``, one worker of the fleet (a lock key decides which) looks for such
sessions and announces each again; the worker that takes it restores its last checkpoint, so
the exactly-once record stays intact. ``streamscribe admin reannounce`` does the same for one
session, on demand.

The pass reads every retained session's open key and state (SCAN, pipelined HMGET) and every announcement
stream (each holds one entry per live session), so its cost grows with the sessions retained;
the lock makes it once per interval for the whole fleet, not once per worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from worker.errors import ConfigError
from worker.protocol.connection import text
from worker.protocol.keys import Keyspace, check_session_id
from worker.protocol.scripts import Scripts

log = logging.getLogger(__name__)

#: States read per round trip during a pass.
BATCH = 500


def session_name(raw: Any) -> str | None:
    """A session id read from Redis, or None for bytes that are no valid id (a hostile entry or key)."""
    try:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        return check_session_id(name)
    except (UnicodeDecodeError, ConfigError):
        return None


def named_in_announcements(client: Any, keys: Keyspace, shards: range | list[int]) -> set[str]:
    """Sessions that an entry of these shards' announcement streams names (delivered or not)."""
    named: set[str] = set()
    for shard in shards:
        for _id, fields in client.xrange(keys.announcements(shard)):
            name = session_name(fields.get(b"session", b""))
            if name is not None:
                named.add(name)
    return named


@dataclass(frozen=True)
class Orphan:
    """An open, announced session that no announcement names, as the pass saw it."""

    session: str
    lease: str  # the lost lease entry, '' when it never had one
    mark: str  # its reannounced_ms, '' when never re-announced


def retained_sessions(client: Any, keys: Keyspace) -> list[str]:
    """Every session whose open key is still in Redis (open, or ended and kept for retention), sorted."""
    prefix, suffix = f"{keys.prefix}:{{".encode(), b"}:open"
    found: set[str] = set()
    for raw in client.scan_iter(match=f"{keys.prefix}:{{*}}:open", count=1000):
        key = raw if isinstance(raw, bytes) else str(raw).encode()
        sid = session_name(key[len(prefix) : -len(suffix)])
        if sid is not None:
            found.add(sid)
    return sorted(found)


def orphans(client: Any, keys: Keyspace) -> list[Orphan]:
    """Every open, announced session that no announcement entry names."""
    announced = named_in_announcements(client, keys, keys.all_shards())
    sessions = retained_sessions(client, keys)
    found: list[Orphan] = []
    for start in range(0, len(sessions), BATCH):
        batch = sessions[start : start + BATCH]
        pipe = client.pipeline(transaction=False)
        for sid in batch:
            pipe.hmget(keys.session_open(sid), "announced", "ended")
            pipe.hmget(keys.session_state(sid), "status", "lease_entry", "reannounced_ms")
        replies = pipe.execute()
        for sid, (flag, ended), (status, lease, mark) in zip(batch, replies[0::2], replies[1::2], strict=True):
            live = text(ended or b"") != "1" and text(status or b"") != "ended"
            if live and text(flag or b"") == "1" and sid not in announced:
                found.append(Orphan(sid, text(lease or b""), text(mark or b"")))
    return found


def reannounce(client: Any, keys: Keyspace, scripts: Scripts, orphan: Orphan) -> str | None:
    """Announce the session again if it is still the orphan that was found; the new entry's id, or None."""
    sid, lost_lease = orphan.session, orphan.lease
    now_ms = int(time.time() * 1000)
    session_keys = [keys.session_state(sid), keys.session_open(sid)]
    if not scripts.call(client, "reannounce", session_keys, [lost_lease, now_ms, orphan.mark]):
        return None
    entry = text(client.xadd(keys.announcements(keys.shard_of(sid)), {"session": sid}))
    log.warning(
        "session %s had no announcement (lost lease %r); announced it again as %s",
        sid,
        lost_lease,
        entry,
        extra={"session": sid, "event": "reannounced"},
    )
    return entry


class Reconciler:
    """Runs a reconciliation pass at most every ``interval_sec``, on one worker of the fleet at a time."""

    def __init__(self, client: Any, keys: Keyspace, scripts: Scripts, worker_id: str, interval_sec: float):
        self.client = client
        self.keys = keys
        self.scripts = scripts
        self.worker_id = worker_id
        self.interval_sec = interval_sec
        self._next = 0.0

    def maybe_run(self) -> int:
        """Sessions announced again by this call (0 when it was not this worker's turn)."""
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self.interval_sec
        if not self.client.set(
            self.keys.reconcile_lock(), self.worker_id, nx=True, px=max(1, int(self.interval_sec * 1000))
        ):
            return 0
        try:
            found = orphans(self.client, self.keys)
            return sum(1 for orphan in found if reannounce(self.client, self.keys, self.scripts, orphan))
        except RedisError:
            raise  # Redis itself is failing: the whole loop backs off
        except Exception:  # an optional pass must never stop the loop; the next one tries again
            log.exception("the reconciliation pass failed; the next one tries again")
            return 0
