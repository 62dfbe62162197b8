"""Per-tenant quotas of live sessions, enforced by the workers across the fleet.

A session names its tenant in its open message (``tenant``; none counts as ``default``). When a
worker takes a session that has not started yet, ``tenant_admit.lua`` admits it only while the
tenant has fewer live sessions than its limit (``tenant_limits``, else ``tenant_max_sessions``);
otherwise the session ends at once with a fatal ``quota_exceeded`` error, and nothing else of the
tenant or the fleet is touched. A session retaken after a crash or handover is never refused: it
was admitted when it started.

The count lives in one sorted set per tenant (:meth:`worker.protocol.keys.Keyspace.tenant`).
Owners vouch for their sessions every TTL/3 and remove them when they end; a member nobody
vouched for in 3 TTLs (its owner died; it waits for a worker) drops out of the count, so a crash
can never leak a tenant's slot for longer than that.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from worker.protocol.keys import Keyspace
from worker.protocol.scripts import Scripts
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: Error code of a session refused by its tenant's quota.
QUOTA_EXCEEDED = "quota_exceeded"


class TenantQuotas:
    """One worker's side: admit new sessions, vouch for owned ones, release ended ones."""

    def __init__(self, client: Any, keys: Keyspace, scripts: Scripts, settings: WorkerSettings) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts
        self.settings = settings
        self.window_ms = int(3 * settings.lease_ttl_sec * 1000)
        self.interval_sec = settings.lease_ttl_sec / 3
        self._next_vouch = 0.0

    @property
    def enabled(self) -> bool:
        return self.settings.tenant_max_sessions > 0 or any(self.settings.tenant_limits.values())

    def admit(self, sid: str, tenant: str) -> str | None:
        """None when ``sid`` may start; otherwise why not (the ``quota_exceeded`` message)."""
        limit = self.settings.tenant_limit(tenant)
        if limit <= 0:
            return None
        now = int(time.time() * 1000)
        admitted, live = self.scripts.call(
            self.client,
            "tenant_admit",
            [self.keys.tenant(tenant)],
            [sid, now, now - self.window_ms, limit, self.window_ms],
        )
        if int(admitted):
            return None
        log.warning(
            "session %s: tenant %s has %d live sessions, its limit; refusing it",
            sid,
            tenant,
            int(live),
            extra={"session": sid, "event": QUOTA_EXCEEDED},
        )
        return f"tenant {tenant!r} has {int(live)} live sessions, its limit of {limit}; try again when one ends"

    def vouch(self, owned: Iterable[tuple[str, str]]) -> None:
        """Every TTL/3: rewrite the scores of the owned ``(session, tenant)`` pairs under quota."""
        now_mono = time.monotonic()
        if not self.enabled or now_mono < self._next_vouch:
            return
        self._next_vouch = now_mono + self.interval_sec
        by_tenant: dict[str, dict[str, int]] = defaultdict(dict)
        now = int(time.time() * 1000)
        for sid, tenant in owned:
            if self.settings.tenant_limit(tenant) > 0:
                by_tenant[tenant][sid] = now
        if not by_tenant:
            return
        pipe = self.client.pipeline(transaction=False)
        for tenant, members in by_tenant.items():
            pipe.zadd(self.keys.tenant(tenant), members)
            pipe.pexpire(self.keys.tenant(tenant), self.window_ms)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):  # a wrong-typed key: admit() reports it per session
                log.warning("vouching for tenant sessions failed: %s", reply)

    def release(self, sid: str, tenant: str) -> None:
        """``sid`` ended: it no longer counts against its tenant."""
        if self.settings.tenant_limit(tenant) > 0:
            self.client.zrem(self.keys.tenant(tenant), sid)

    def live(self, tenant: str) -> int:
        """The tenant's live sessions as the quota counts them (for operators and tests)."""
        now = int(time.time() * 1000)
        return int(self.client.zcount(self.keys.tenant(tenant), now - self.window_ms, "+inf"))
