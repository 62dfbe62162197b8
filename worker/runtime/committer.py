"""The atomic commit of each session's iteration, then the exactly-once copy to shard streams.

All sessions' commits go out in one pipeline (one round trip per loop iteration, whatever the
number of sessions); the copies of the committed records go in a second one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from worker.protocol.connection import text
from worker.protocol.keys import Keyspace
from worker.protocol.scripts import Scripts
from worker.runtime.faults import fail_session
from worker.runtime.records import Record
from worker.runtime.session import LiveSession

log = logging.getLogger(__name__)

OK, FENCED, ERROR = "ok", "fenced", "error"


@dataclass
class Copied:
    """How far a session's records are copied to its shard: its incarnation and last seq."""

    incarnation: str
    seq: int


@dataclass
class CommitOutcome:
    session: LiveSession
    result: str
    records: list[tuple[int, Record]]
    detail: str = ""


class Committer:
    def __init__(self, client: Any, keys: Keyspace, scripts: Scripts, retention_ms: int, events_maxlen: int) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts
        self.retention_ms = retention_ms
        self.events_maxlen = events_maxlen
        #: sessions whose copy to the shard streams fell behind their committed records
        self.behind: set[str] = set()
        #: input position of each session when it was acquired, until a commit consumes input
        #: past it: that commit clears the session's attempt count (see ``acquire.lua``)
        self.unproven: dict[str, str] = {}
        #: how far each owned session's records are copied (read from its state when first needed)
        self.copied: dict[str, Copied] = {}

    def taken(self, sid: str, in_pos: str) -> None:
        """This worker took the session at input position ``in_pos``: nothing kept from an earlier time."""
        self.forget(sid)
        self.unproven[sid] = in_pos

    def forget(self, sid: str) -> None:
        """The session left this worker (ended, handed over, lost): drop what is kept for it."""
        self.behind.discard(sid)
        self.unproven.pop(sid, None)
        self.copied.pop(sid, None)

    def _copy_state(self, sid: str) -> Copied:
        copied = self.copied.get(sid)
        if copied is None:
            created, floor = self.client.hmget(self.keys.session_state(sid), "created_ms", "fwd")
            copied = self.copied[sid] = Copied(text(created) if created else "", _as_seq(floor))
        return copied

    def commit(self, sessions: list[LiveSession]) -> list[CommitOutcome]:
        """Run ``commit.lua`` for every session in one pipeline."""
        if not sessions:
            return []
        prepared = []
        for s in sessions:
            built = self._build(s)
            if built is None:
                continue
            records, blob, trim = built
            sid = s.session_id
            keys = self.keys.session_keys(sid)  # state, in, out, dlq: commit.lua's KEYS order
            proven = self._proven(s)
            args: list[Any] = [
                s.lease.epoch,
                s.out_seq,
                blob,
                trim,
                "1" if s.ended else "0",
                self.retention_ms,
                "1" if proven else "0",
                self.copied[sid].seq if sid in self.copied else "",
                len(records),
            ]
            for _seq, r in records:
                args += [r.kind, r.type, r.payload]
            prepared.append((s, records, keys, args))
        replies = self._run_pipeline([(keys, args) for _s, _r, keys, args in prepared], "commit")
        outcomes = []
        for (s, records, _k, _a), reply in zip(prepared, replies, strict=True):
            outcomes.append(self._outcome(s, records, reply))
        return outcomes

    def _proven(self, s: LiveSession) -> bool:
        """The session consumed input (or ended) since it was acquired: it is not a poison pill."""
        acquired_at = self.unproven.get(s.session_id)
        return acquired_at is not None and (s.in_pos != acquired_at or s.ended)

    def _build(self, s: LiveSession) -> tuple[list[tuple[int, Record]], bytes, str] | None:
        """(records, checkpoint, trim) of one session's commit; a failure fails only that session."""
        for attempt in (1, 2):
            try:
                records = s.build_records()
                blob, trim = (b"", "") if s.untrusted else s.checkpoint()  # "": keep the last one
                return records, blob, trim
            except Exception as e:
                if attempt == 2:
                    log.exception("session %s: its failure cannot be committed either; retrying later", s.session_id)
                    return None
                fail_session(s, "building its commit", e)
        return None

    def _outcome(self, s: LiveSession, records: list[tuple[int, Record]], reply: Any) -> CommitOutcome:
        if isinstance(reply, Exception):
            log.error("session %s: commit failed: %s", s.session_id, reply)
            return CommitOutcome(s, ERROR, records, str(reply))
        status = text(reply[0])
        if status == "ok":
            s.committed(int(reply[1]))
            if self._proven(s):
                del self.unproven[s.session_id]
            return CommitOutcome(s, OK, records)
        if status == "wrongtype":
            # nothing was written: retried (with back-off) until an operator fixes the key
            log.error("session %s: commit refused, %s holds another type than a stream", s.session_id, text(reply[1]))
            return CommitOutcome(s, ERROR, records, status)
        if status == "fenced":
            log.warning(
                "session %s: fenced (epoch %s, ours %d); dropping it", s.session_id, text(reply[1]), s.lease.epoch
            )
            return CommitOutcome(s, FENCED, records)
        log.error("session %s: commit refused: %s %s", s.session_id, status, text(reply[1]))
        return CommitOutcome(s, FENCED, records, status)

    def forward(self, batches: list[tuple[str, list[tuple[int, Record]]]]) -> set[str]:
        """Copy committed records to the shard streams (``forward.lua``, idempotent).

        Returns the sessions whose copy is behind their last record (a failed or refused copy);
        a later call for such a session re-reads what is missing from its own streams first.
        """
        calls: list[tuple[list[str], list[Any]]] = []
        lasts: list[tuple[str, int]] = []
        for sid, given in batches:
            records = self.pending_records(sid) if sid in self.behind else given
            if not records:
                self.behind.discard(sid)
                continue
            shard = self.keys.shard_of(sid)
            keys = [self.keys.events(shard), self.keys.dead_letters(shard), self.keys.forward_cursor(sid)]
            copied = self._copy_state(sid)
            args: list[Any] = [
                sid,
                self.events_maxlen,
                2 * self.retention_ms,
                copied.incarnation,
                copied.seq,
                len(records),
            ]
            for seq, r in records:
                args += [seq, r.kind, r.type, r.payload]
            calls.append((keys, args))
            lasts.append((sid, records[-1][0]))
        for (sid, last), reply in zip(lasts, self._run_pipeline(calls, "forward"), strict=True):
            if isinstance(reply, Exception | list) or int(reply) < last:  # a list: a wrong-typed stream
                # the records are committed; the next copy of this session starts at its cursor
                log.warning("session %s: copy to the shard streams is behind: %s", sid, reply)
                self.behind.add(sid)
            else:
                self.behind.discard(sid)
            if not isinstance(reply, Exception | list):
                self.copied[sid].seq = max(self.copied[sid].seq, int(reply))
        return {sid for sid, _last in lasts if sid in self.behind}

    def pending_records(self, sid: str) -> list[tuple[int, Record]]:
        """Committed records of ``sid`` not yet copied to its shard (after a crash in between)."""
        self.copied.pop(sid, None)  # read afresh: another worker may have copied since
        copied = self._copy_state(sid)
        cursor = max(copied.seq, _cursor_seq(self.client.get(self.keys.forward_cursor(sid)), copied.incarnation))
        found: list[tuple[int, Record]] = []
        for key, kind in ((self.keys.session_output(sid), "e"), (self.keys.session_dead_letters(sid), "d")):
            last = "+"
            while True:
                entries = self.client.xrevrange(key, last, "-", count=200)
                older = False
                for _entry_id, fields in entries:
                    seq = int(fields[b"seq"])
                    if seq <= cursor:
                        older = True
                        break
                    found.append((seq, Record(kind, text(fields[b"type"]), fields[b"m"])))
                if older or len(entries) < 200:
                    break
                last = "(" + text(entries[-1][0])
        found.sort(key=lambda r: r[0])
        return found

    def _run_pipeline(self, calls: list[tuple[list[str], list[Any]]], script: str) -> list[Any]:
        replies = self._execute(calls, script)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            # a server restarted or failed over and lost its script cache; those calls did not run
            self.scripts.load(self.client)
            for i, reply in zip(missing, self._execute([calls[i] for i in missing], script), strict=True):
                replies[i] = reply
        return replies

    def _execute(self, calls: list[tuple[list[str], list[Any]]], script: str) -> list[Any]:
        if not calls:
            return []
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            self.scripts.queue(pipe, script, keys, args)
        try:
            return list(pipe.execute(raise_on_error=False))
        except RedisError as e:
            return [e] * len(calls)


def _as_seq(value: Any) -> int:
    """A seq stored in Redis; anything else (absent, not a number) counts as 0."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _cursor_seq(value: Any, incarnation: str) -> int:
    """The seq of a forward cursor ``<incarnation>:<seq>`` if it is this incarnation's (see forward.lua)."""
    if value is None:
        return 0
    stored, sep, seq = text(value).rpartition(":")
    if not sep:
        return _as_seq(seq)  # written before cursors named their incarnation
    return _as_seq(seq) if stored == incarnation else 0
