"""Every Redis key streamscribe uses, named in one place.

All keys of one session carry the hash tag ``{<session id>}``, so one Lua script can touch them
all on Redis Cluster. Global keys are sharded over ``shards`` tags ``{g<k>}``; a session belongs
to shard ``crc32(session id) % shards``, and every global key of that shard shares its slot.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from worker.errors import ConfigError

#: Consumer group of the workers on the announcement streams.
WORKER_GROUP = "workers"
#: Consumer that released leases are parked under, idle past the TTL, for the next janitor pass.
HANDOVER_CONSUMER = "handover"
#: Session ids are used inside key names and hash tags.
SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@+=-]{1,128}$")


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not SESSION_ID_PATTERN.match(session_id):
        raise ConfigError(
            f"invalid session id {session_id!r}: use 1-128 characters of letters, digits and . _ : @ + = -"
        )
    return session_id


@dataclass(frozen=True)
class Keyspace:
    """Key names under ``prefix``; ``shards`` is the number of global shards."""

    prefix: str = "streamscribe"
    shards: int = 4

    def __post_init__(self) -> None:
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            raise ConfigError(f"key prefix {self.prefix!r} must be non-empty and hold no braces")
        if not 1 <= self.shards <= 1024:
            raise ConfigError(f"shards must be between 1 and 1024, not {self.shards}")

    # -- one session: same hash tag -----------------------------------------------------------

    def session_input(self, sid: str) -> str:
        """Stream of audio chunks and the end marker, ids ``<seq+1>-0``."""
        return f"{self.prefix}:{{{sid}}}:in"

    def session_output(self, sid: str) -> str:
        """Stream of the session's transcript events."""
        return f"{self.prefix}:{{{sid}}}:out"

    def session_partials(self, sid: str) -> str:
        """Capped stream of the session's ``partial`` events: interim text, outside the exactly-once record."""
        return f"{self.prefix}:{{{sid}}}:partials"

    def session_open(self, sid: str) -> str:
        """Hash, the producer's: open message, created_ms, announced, the resume token's SHA-256.

        The only session key besides the input that producers write (``open_session.lua``); the
        owner adds ``ended`` when the session ends, so a producer that reopens the id learns it.
        """
        return f"{self.prefix}:{{{sid}}}:open"

    def session_state(self, sid: str) -> str:
        """Hash, the workers': status, epoch, owner, processor snapshot, input and output positions.

        Created by the first ``acquire.lua`` from the session's open key; producers never write it.
        """
        return f"{self.prefix}:{{{sid}}}:state"

    def session_dead_letters(self, sid: str) -> str:
        """Stream of the session's rejected inputs, kept until they are forwarded to the shard DLQ."""
        return f"{self.prefix}:{{{sid}}}:dlq"

    def session_keys(self, sid: str) -> list[str]:
        """Every key of one session but its partials, in the KEYS order of ``commit.lua``."""
        return [
            self.session_state(sid),
            self.session_input(sid),
            self.session_output(sid),
            self.session_dead_letters(sid),
            self.session_open(sid),
        ]

    # -- global, sharded ------------------------------------------------------------------------

    def shard_of(self, sid: str) -> int:
        return zlib.crc32(sid.encode()) % self.shards

    def _global(self, name: str, shard: int) -> str:
        return f"{self.prefix}:{name}:{{g{shard}}}"

    def announcements(self, shard: int) -> str:
        """Stream of new sessions; its consumer group's pending list holds the leases."""
        return self._global("sessions", shard)

    def events(self, shard: int) -> str:
        """All sessions' transcript events of this shard, for pipelines (``tail --all``)."""
        return self._global("events", shard)

    def dead_letters(self, shard: int) -> str:
        return self._global("dlq", shard)

    def forward_cursor(self, sid: str) -> str:
        """String ``<incarnation>:<seq>``: the last record of ``sid`` copied to its shard's streams.

        One key per session in the shard's slot, expiring twice the retention after its last copy,
        so cursors never pile up. The incarnation is the session state's ``created_ms``: a session
        opened later under the same id ignores an old cursor. The state's ``fwd`` field holds the
        same seq (written by each commit), so a cursor that expired or was deleted mid-call never
        makes the copy start over (see ``forward.lua``).
        """
        return f"{self._global('fwd', self.shard_of(sid))}:{sid}"

    def control(self) -> str:
        """Stream of fleet-wide commands to live workers (``{"load": model}``), capped."""
        return f"{self.prefix}:control"

    def workers(self) -> str:
        """Hash: worker id -> JSON of what it runs and has loaded, rewritten every few seconds."""
        return f"{self.prefix}:workers"

    def tenant(self, tenant: str) -> str:
        """Sorted set: the tenant's live sessions, scored by when an owner last vouched for each (ms).

        Hash-tagged by tenant, so ``tenant_admit.lua`` counts and adds in one slot. Owners rewrite
        their sessions' scores every TTL/3 and remove a session when it ends; members older than
        3 TTLs (an owner that died, a session waiting for a worker) are dropped before counting,
        and the key expires with the last of them.
        """
        return f"{self.prefix}:tenant:{{t:{tenant}}}"

    def reconcile_lock(self) -> str:
        """String, the id of the worker running the orphan-reconciliation pass; expires with the pass interval."""
        return f"{self.prefix}:reconcile:lock"

    def all_shards(self) -> range:
        return range(self.shards)
