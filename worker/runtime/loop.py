"""The worker loop: take sessions, read input, batch transcribe calls, commit, repeat.

The loop is synchronous (inference blocks anyway, and a batch loop is easy to follow); the
lease keeper renews leases from its own thread, and metrics are served from another.
``run(burst=True)`` drains the work there is and returns, which makes tests deterministic.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from typing import Any

from redis.exceptions import RedisError

from worker.asr.contracts import EconomyLevel
from worker.metrics import END_REASONS, LoopHeartbeat, WorkerLoad, WorkerObserver
from worker.protocol.connection import connect
from worker.protocol.keys import Keyspace
from worker.protocol.scripts import Scripts
from worker.runtime.acquire import SessionFactory
from worker.runtime.batching import transcribe
from worker.runtime.capacity import CapacityMeter, Economy
from worker.runtime.committer import FENCED, OK, Committer
from worker.runtime.faults import isolated
from worker.runtime.intake import Intake
from worker.runtime.models import ModelControl
from worker.runtime.ownership import LeaseKeeper, LeaseManager
from worker.runtime.partials import PartialPublisher
from worker.runtime.readahead import read_input
from worker.runtime.reconcile import Reconciler
from worker.runtime.retry import CommitRetry
from worker.runtime.session import LiveSession
from worker.runtime.stopping import StopRequests
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: How often a worker counts the fleet's waiting sessions (a few commands per shard).
WAITING_INTERVAL_SEC = 5.0


class Worker:
    """One worker process's loop.

    ``drain()`` (SIGTERM, ``streamscribe admin drain``) stops taking sessions and serves the owned
    ones until they end or ``drain_timeout_sec`` passes; ``stop()`` (a second signal) returns after
    the iteration in hand. Either way the sessions still owned are handed over on the way out.
    """

    def __init__(self, settings: WorkerSettings, *, observer: WorkerObserver | None = None, client: Any = None):
        self.settings = settings
        self.observer = observer or WorkerObserver()
        self.keys = Keyspace(settings.key_prefix, settings.shards)
        self.client = client or connect(settings.redis_url, settings.cluster, settings.tls())
        self.scripts = Scripts()
        self.leases = LeaseManager(
            self.client, self.keys, self.scripts, settings.group, settings.worker_id, settings.lease_ttl_sec
        )
        self.factory = SessionFactory(self.client, self.keys, self.scripts, settings)
        self.committer = Committer(
            self.client, self.keys, self.scripts, int(settings.retention_sec * 1000), settings.events_maxlen
        )
        self.capacity = CapacityMeter(
            settings.capacity_headroom, settings.max_backlog_sec, window_sec=settings.capacity_window_sec
        )
        self.economy = Economy(
            settings.economy_utilisation, settings.economy_backlog_sec, settings.economy_decode_utilisation
        )
        self.partials = PartialPublisher(self.client, self.keys, int(settings.retention_sec * 1000))
        self.models = ModelControl(self.client, self.keys, settings)
        self.models.on_drain = self.drain
        self.reconciler = Reconciler(
            self.client, self.keys, self.scripts, settings.worker_id, settings.reconcile_interval_sec
        )
        self.sessions: dict[str, LiveSession] = {}
        self.health = LoopHeartbeat(settings.loop_stall_limit_sec)
        self.commit_retry = CommitRetry(settings.commit_backoff_max_sec, settings.commit_failure_limit_sec)
        self._lost: set[tuple[int, str]] = set()
        self._lost_lock = threading.Lock()
        self.requests = StopRequests(settings.drain_timeout_sec)
        self._drain_announced = False
        self._next_waiting_count = 0.0
        self._keeper: LeaseKeeper | None = None
        self._keeper_client: Any = None
        self.intake = Intake(
            settings,
            self.sessions,
            self.leases,
            self.factory,
            self.committer,
            self.models,
            self.capacity,
            self.observer,
            self.requests,
        )

    def __repr__(self) -> str:
        return f"<Worker {self.settings.worker_id} sessions={len(self.sessions)}/{self.settings.max_sessions}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.scripts.load(self.client)
        self.leases.ensure_groups()
        self.models.start()
        keeper_leases = LeaseManager(
            connect(self.settings.redis_url, self.settings.cluster, self.settings.tls()),
            self.keys,
            self.scripts,
            self.settings.group,
            self.settings.worker_id,
            self.settings.lease_ttl_sec,
        )
        self._keeper_client = keeper_leases.client
        self._keeper = LeaseKeeper(
            keeper_leases, self._held, self._on_lost, self.health.alive, self.settings.lease_ttl_sec / 3
        )
        self._keeper.start()
        self.health.beat()

    def run(self, *, burst: bool = False, max_seconds: float | None = None) -> None:
        """Loop until ``stop()``; with ``burst``, until no session is owned and none waits."""
        self.start()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self.requests.stopping:
                self._announce_drain()
                did_work = self.run_iteration()
                if burst and not did_work and not self.sessions and not self.intake.waiting:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
                if self.requests.draining and (not self.sessions or time.monotonic() > self.requests.drain_deadline):
                    log.info("drained: %d session(s) left to hand over", len(self.sessions), extra={"event": "drained"})
                    break
                if not did_work:
                    self.requests.wait(self.settings.poll_interval_sec)
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Return after the iteration in hand. Safe from a signal handler (``StopRequests``)."""
        self.requests.stop()

    def drain(self) -> None:
        """Take no new session; stop once the owned ones end, or ``drain_timeout_sec`` from now.

        A second call (another SIGTERM) stops at once. Safe from a signal handler: it only records
        the request, which the loop acts on (and logs) at its next turn (``StopRequests``).
        """
        self.requests.drain()

    def _announce_drain(self) -> None:
        if self.requests.draining and not self._drain_announced:
            self._drain_announced = True
            log.info(
                "draining: no new sessions; handing over what is left in %.0f s",
                self.settings.drain_timeout_sec,
                extra={"event": "draining"},
            )

    @property
    def draining(self) -> bool:
        return self.requests.ending

    def healthy(self) -> bool:
        """``/healthz``: the loop turns, Redis answers, leases are renewed, commits are not all failing."""
        keeper_ok = self._keeper is None or self._keeper.healthy()
        return self.health.alive() and keeper_ok and self.commit_retry.healthy()

    def shutdown(self) -> None:
        """Release every lease at once (no wait for the TTL) and stop the lease keeper."""
        if self.requests.stopping:
            log.info("stopping: handing %d session(s) over", len(self.sessions), extra={"event": "stopping"})
        if self._keeper:
            self._keeper.stop()
            self._keeper.join(timeout=5)
        for s in list(self.sessions.values()):
            try:
                # a clean handover: this owner did not die of the session, so it is no failed attempt
                self.client.hdel(self.keys.session_state(s.session_id), "attempts")
                self.leases.release(s.lease.shard, s.lease.entry_id)
                log.info("handed session %s over", s.session_id, extra={"session": s.session_id, "event": "handover"})
            except Exception as e:
                log.warning("could not hand %s over (it expires after the TTL instead): %s", s.session_id, e)
        self.sessions.clear()
        self.intake.release_all()
        with contextlib.suppress(Exception):
            self.models.forget()
        try:
            self.leases.leave_group()
        except Exception as e:
            log.debug("leaving the group: %s", e)
        self.health.connected = False
        for client in (self._keeper_client, self.client):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()

    # -- one iteration ---------------------------------------------------------------------

    def run_iteration(self) -> bool:
        try:
            did_work = self._iteration()
            self.health.beat(connected=True)
            return did_work
        except RedisError as e:
            # unreachable, failing over, or refusing writes (OOM under noeviction): back off, retry
            log.warning("redis error: %s; retrying", e)
            self.health.beat(connected=False)
            self.requests.wait(min(1.0, self.settings.lease_ttl_sec / 4))
            return False
        except Exception:
            # a bug outside any one session's steps: no heartbeat, so if it keeps failing the
            # leases go to other workers after loop_stall_limit_sec and /healthz says so
            log.exception("the loop iteration failed; retrying")
            self.requests.wait(min(1.0, self.settings.lease_ttl_sec / 4))
            return False

    def _iteration(self) -> bool:
        self._drop_lost()
        took = self.intake.take()
        read_input(self.client, self.keys, self.sessions.values(), self.settings, self.observer)
        stall = self.settings.stall_timeout_sec
        # a session whose commit failed waits for its retry with what it has, unprocessed
        planned = [s for s in self.sessions.values() if not self.commit_retry.waiting(s.session_id)]
        calls = [c for s in planned for c in isolated(s, "planning", s.plan_iteration, stall, default=[])]
        transcribe(calls, self.settings.max_batch, self.observer, self.capacity)
        self._hand_over_failed()
        for s in self.sessions.values():
            if s.dirty:
                isolated(s, "finishing its iteration", s.finish_iteration, default=None)
            for proc in s.processors:
                # a batch's guards count on the backend that ran it, a closing decode's on its own
                self.observer.redecoded(proc.asr.take_redecodes())
        due = [s for s in self.sessions.values() if s.dirty and self.commit_retry.due(s.session_id)]
        committed = self._commit(due)
        self._finish_ended()
        self._report_load()
        self.factory.quotas.vouch((sid, s.opened.quota_tenant) for sid, s in self.sessions.items() if s.processors)
        self.models.poll()
        reannounced = 0 if self.requests.stopping else self.reconciler.maybe_run()
        if reannounced:
            self.observer.reannounced(reannounced)
        return bool(took or calls or committed or reannounced)

    def _hand_over_failed(self) -> None:
        """Release, uncommitted, the sessions whose backend failed transiently (see batching).

        Their state of this iteration is dropped; the next owner restores the last checkpoint and
        replays the input after it, so nothing is lost or repeated. ``attempts`` is left counting.
        """
        for sid, s in list(self.sessions.items()):
            if s.handover is None:
                continue
            log.warning(
                "session %s: handed over after a transient backend failure: %s",
                sid,
                s.handover,
                extra={"session": sid, "event": "handover"},
            )
            self._let_go(sid)
            self.observer.transient_failure()
            with contextlib.suppress(RedisError):
                self.leases.release(s.lease.shard, s.lease.entry_id)
            self.intake.janitor_now()  # claimable now: by whichever worker's janitor runs first

    def _let_go(self, sid: str) -> None:
        """The session is no longer this worker's (ended, handed over, lost, fenced): forget it everywhere."""
        self.sessions.pop(sid, None)
        self.committer.forget(sid)
        self.commit_retry.forget(sid)

    def _drop_lost(self) -> None:
        with self._lost_lock:
            lost, self._lost = self._lost, set()
        self.intake.drop(lost)
        for shard, entry_id in lost:
            for sid, s in list(self.sessions.items()):
                if s.lease.shard == shard and s.lease.entry_id == entry_id:
                    log.warning(
                        "lost the lease of session %s; dropping it", sid, extra={"session": sid, "event": "lease_lost"}
                    )
                    self._let_go(sid)  # the new owner copies what is left

    def _commit(self, sessions: list[LiveSession]) -> int:
        if not sessions:
            return 0
        outcomes = self.committer.commit(sessions)
        forwards = []
        for o in outcomes:
            s = o.session
            self.observer.committed(o.result, sum(1 for _seq, r in o.records if r.type == "segment"))
            if o.result == OK:
                self.commit_retry.succeeded(s.session_id)
                forwards.append((s.session_id, o.records))
                self.observer.chunks_processed(s.stats.chunks, s.stats.audio_sec)
                for reason in s.stats.rejected:
                    self.observer.rejected(reason)
                if s.stats.latest_sent_at and any(r.type == "segment" for _seq, r in o.records):
                    self.observer.latency(time.time() - s.stats.latest_sent_at)
            elif o.result == FENCED:
                self._let_go(s.session_id)  # the new owner copies its records
                if o.detail == "seq_mismatch":
                    # our commit landed but its reply was lost: the lease is still ours, so hand it
                    # over now; whoever claims it (perhaps we) restores from that commit
                    with contextlib.suppress(RedisError):
                        self.leases.release(s.lease.shard, s.lease.entry_id)
            else:
                delay = self.commit_retry.failed(s.session_id)
                log.warning("session %s: commit failed; next try in %.2f s", s.session_id, delay)
        self.committer.forward(forwards)
        # after the commit, so a partial never shows text before the commit that precedes it
        self.partials.publish([o.session for o in outcomes if o.result == OK])
        return len(outcomes)

    def _finish_ended(self) -> None:
        """Close the lease of every session whose end is committed; retried until it succeeds.

        Each session on its own: a Redis error leaves it owned (and renewed) for the next
        iteration, so no slot is lost and no other ended session is skipped.
        """
        for s in [s for s in self.sessions.values() if s.ended and not s.dirty]:
            sid = s.session_id
            try:
                if sid in self.committer.forward([(sid, [])]):
                    # acknowledging now would lose the uncopied records: hand the lease over, and
                    # whoever claims it finds the session ended and finishes the copy first
                    self.leases.release(s.lease.shard, s.lease.entry_id)
                else:
                    self.leases.finish(s.lease.shard, s.lease.entry_id)
            except RedisError as e:
                log.warning("session %s ended, but closing its lease failed (retrying): %s", sid, e)
                continue
            with contextlib.suppress(RedisError):  # else it drops out of the count after 3 TTLs
                self.factory.quotas.release(sid, s.opened.quota_tenant)
            self._let_go(sid)
            self.observer.session_ended(_reason_label(s.ended_reason))
            log.info(
                "session %s ended (%s)",
                sid,
                s.ended_reason,
                extra={"session": sid, "event": "ended", "reason": s.ended_reason},
            )

    def _report_load(self) -> None:
        backlogs = [s.backlog_sec() for s in self.sessions.values()]
        backlog = sum(backlogs)
        active = len(self.sessions)
        utilisation = self.capacity.update(active)
        spare = 0 if self.draining else self.capacity.spare(active, self.settings.max_sessions, backlog)
        # the longest wait of one session, not the sum: a GPU worker's many sessions each hold a little
        load = max(self.capacity.recent_utilisation, self.capacity.projected_utilisation(active))
        economy = EconomyLevel.OFF
        if self.settings.economy:
            economy = self.economy.update(load, max(backlogs, default=0.0))
        for s in self.sessions.values():
            s.set_economy(economy)
        self.observer.load(WorkerLoad(active, self.settings.max_sessions, backlog, utilisation, spare, economy))
        now = time.monotonic()
        if now >= self._next_waiting_count:
            self._next_waiting_count = now + WAITING_INTERVAL_SEC
            self.observer.waiting(self.leases.waiting())

    # -- lease keeper callbacks (its thread) ----------------------------------------------------

    def _held(self) -> dict[int, list[str]]:
        held: dict[int, list[str]] = defaultdict(list)
        for s in list(self.sessions.values()):
            held[s.lease.shard].append(s.lease.entry_id)
        for shard, entry_id in self.intake.claims():
            held[shard].append(entry_id)
        return held

    def _on_lost(self, lost: list[tuple[int, str]]) -> None:
        with self._lost_lock:
            self._lost.update(lost)


#: ``session_ended`` reasons counted by name; a producer's free-text end reason counts as "other".
def _reason_label(reason: str | None) -> str:
    reason = reason or "completed"
    return reason if reason in END_REASONS else "other"
