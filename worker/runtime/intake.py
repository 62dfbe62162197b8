"""Taking sessions: claim announcements within the measured capacity, wait for a model still
loading, then acquire (epoch, processors, restore) each claimed session.

A claimed announcement is renewed by the lease keeper from the moment it is claimed
(:meth:`Intake.claims`), through a deferred model load and the restore, until the session is
owned; a claim that cannot be taken is handed over for another attempt (``acquire.lua`` counts
it, so a session that keeps failing is quarantined).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable

from redis.exceptions import RedisError

from worker.errors import ConfigError
from worker.metrics import WorkerObserver
from worker.protocol.keys import check_session_id
from worker.runtime.acquire import SessionFactory
from worker.runtime.capacity import CapacityMeter
from worker.runtime.committer import Committer
from worker.runtime.models import ModelControl
from worker.runtime.ownership import Claimed, LeaseManager
from worker.runtime.session import LiveSession
from worker.runtime.stopping import StopRequests
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class Intake:
    """The loop's claims on sessions not yet owned, and the taking of them into ``sessions``."""

    def __init__(
        self,
        settings: WorkerSettings,
        sessions: dict[str, LiveSession],
        leases: LeaseManager,
        factory: SessionFactory,
        committer: Committer,
        models: ModelControl,
        capacity: CapacityMeter,
        observer: WorkerObserver,
        requests: StopRequests,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.leases = leases
        self.factory = factory
        self.committer = committer
        self.models = models
        self.capacity = capacity
        self.observer = observer
        self._requests = requests
        self._next_janitor = 0.0
        #: announcement entries claimed and being acquired (restore): renewed too
        self._acquiring: frozenset[tuple[int, str]] = frozenset()
        #: claimed announcements waiting for their model's background load: renewed, taken after
        self._deferred: dict[tuple[int, str], str] = {}

    @property
    def waiting(self) -> bool:
        """Claims wait for a model load (burst mode goes on while they do)."""
        return bool(self._deferred)

    def claims(self) -> Iterable[tuple[int, str]]:
        """The announcement entries claimed but not owned yet, for the lease keeper (its thread)."""
        return self._acquiring | set(self._deferred)

    def janitor_now(self) -> None:
        """Look for expired and handed-over leases at the next iteration, not a janitor interval later."""
        self._next_janitor = 0.0

    def drop(self, lost: set[tuple[int, str]]) -> None:
        """The keeper found these claims taken by another worker: forget them."""
        for claim in lost:
            self._deferred.pop(claim, None)

    def release_all(self) -> None:
        """Shutdown: hand every claim still waiting over, for another worker."""
        for shard, entry_id in list(self._deferred):
            with contextlib.suppress(Exception):
                self.leases.release(shard, entry_id)
        self._deferred.clear()

    def take(self) -> int:
        """Claim and take sessions while there is capacity; returns how many were taken."""
        if self._requests.ending:
            self.release_all()  # a claim still waiting for its model goes to another worker
            return 0
        backlog = sum(s.backlog_sec() for s in self.sessions.values())
        owned = len(self.sessions) + len(self._deferred)
        free = self.capacity.spare(owned, self.settings.max_sessions, backlog)
        claimed: list[Claimed] = [(shard, entry_id, sid) for (shard, entry_id), sid in self._deferred.items()]
        self._deferred.clear()
        if free > 0:
            claimed += self.leases.take_new(free)
        now = time.monotonic()
        if free - len(claimed) > 0 and now >= self._next_janitor:
            self._next_janitor = now + self.settings.janitor_interval_sec
            claimed += self.leases.take_expired(free - len(claimed))
        self._acquiring = frozenset((shard, entry_id) for shard, entry_id, _sid in claimed)
        try:
            for shard, entry_id, sid in claimed:
                try:
                    ready, load_error = self._model_ready(shard, entry_id, sid)
                    if ready:
                        self._acquire(shard, entry_id, sid, load_error)
                except Exception as e:
                    if isinstance(e, RedisError) and "WRONGTYPE" not in str(e):
                        raise  # Redis itself is failing: the whole loop backs off
                    # this session's restore failed: hand it over for another attempt; acquire.lua
                    # counted this one, and after max_session_attempts the session is quarantined
                    log.exception("could not take session %s; handing it over for another attempt", sid)
                    with contextlib.suppress(RedisError):
                        self.leases.release(shard, entry_id)
        finally:
            self._acquiring = frozenset()
        return len(claimed) - len(self._deferred)

    def _model_ready(self, shard: int, entry_id: str, sid: str) -> tuple[bool, str | None]:
        """Whether the claimed session can be taken now, and why its model failed to load if it did.

        While its model loads in the background, the claim waits in ``_deferred`` (renewed).
        """
        if sid in self.sessions:
            return True, None
        config = self.factory.requested_config(sid)
        if config is None:
            return True, None
        if self.models.prepare(config):
            return True, self.models.load_error(config)
        self._deferred[(shard, entry_id)] = sid
        return False, None

    def _acquire(self, shard: int, entry_id: str, sid: str, load_error: str | None = None) -> None:
        if sid in self.sessions:
            # our own session came back to us (a stale duplicate); keep the one we run
            return
        try:
            check_session_id(sid)
        except ConfigError as e:
            log.warning("announcement %s names no usable session (%s); acknowledging it", entry_id, e)
            self.leases.finish(shard, entry_id)
            return
        outcome = self.factory.acquire(shard, entry_id, sid, int(time.time() * 1000), load_error)
        if outcome.status in ("ended", "missing", "duplicate", "unusable"):
            if outcome.status == "ended":
                behind = self.committer.forward([(sid, self.committer.pending_records(sid))])
                self.committer.forget(sid)
                if behind:
                    # still not copied: leave the lease to expire, so a later janitor pass retries
                    return
            log.info("announcement %s of session %s: %s; acknowledging it", entry_id, sid, outcome.status)
            self.leases.finish(shard, entry_id)
            return
        session = outcome.session
        assert session is not None
        self.committer.taken(sid, session.in_pos)  # nothing kept from an earlier time this worker held it
        event = "takeover" if outcome.takeover else "acquired"
        log.info(
            "%s session %s (epoch %d)",
            "took over" if outcome.takeover else "took",
            sid,
            session.lease.epoch,
            extra={"session": sid, "epoch": session.lease.epoch, "event": event},
        )
        if outcome.takeover:
            self.observer.takeover()
            self.committer.forward([(sid, self.committer.pending_records(sid))])
        self.sessions[sid] = session
        if session.config is not None and session.processors:
            self.models.note_loaded(session.config)
