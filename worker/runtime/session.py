"""One owned session: its processors (one per channel), input position, and next commit.

The session moves through the worker's loop in three steps:

1. :meth:`LiveSession.take_entries` queues entries read from the input stream;
2. :meth:`LiveSession.plan_iteration` consumes queued entries until a processor is due (or the
   stream ends) and returns the transcribe calls this iteration needs;
3. :meth:`LiveSession.complete_call` takes each call's result and
   :meth:`LiveSession.finish_iteration` closes the step; they build the records (events and
   dead letters, :mod:`worker.runtime.records`) and the checkpoint that the commit script writes
   atomically.

Processing points depend on the input (a processor is due once ``min_chunk`` seconds of new
audio are in) and, with ``catch_up_step_sec``, on the backlog: a session behind by a chunk merges
chunk points into longer steps to catch up. With merging off, a run restored from a checkpoint
makes the same calls as one that never stopped, and with a deterministic backend emits the same
segments; with it on, the same words may be split and timed otherwise, each committed once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.asr.config import ASRConfig
from worker.asr.contracts import (
    ASRProcessor,
    BatchableProcessor,
    DeferrableProcessor,
    EconomicalProcessor,
    EconomyLevel,
    StreamingProcessor,
    TranscribeRequest,
)
from worker.protocol.audiofile import resample
from worker.protocol.connection import text
from worker.protocol.events import PartialEvent, SessionEnded
from worker.protocol.messages import DeadLetter, Message, SessionOpen
from worker.runtime import inputs
from worker.runtime.checkpoint import Checkpoint, FedEntry, Totals, trim_point
from worker.runtime.partials import PartialTracker
from worker.runtime.records import Fatal, SessionRecords

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionLease:
    """Ownership of one session: the announcement entry in the pending list, and the epoch."""

    session_id: str
    shard: int
    entry_id: str
    epoch: int


@dataclass
class PlannedCall:
    """A transcribe call of one channel, to be batched with others."""

    session: LiveSession
    channel: int
    processor: BatchableProcessor
    request: TranscribeRequest


@dataclass
class IterationStats:
    chunks: int = 0
    audio_sec: float = 0.0
    latest_sent_at: float = 0.0
    rejected: list[str] = field(default_factory=list)


class LiveSession(SessionRecords):
    """State of a session this worker owns."""

    def __init__(
        self,
        lease: SessionLease,
        opened: SessionOpen,
        processors: list[ASRProcessor],
        *,
        worker_id: str,
        max_chunk_bytes: int,
        processor_rate: int,
        config: ASRConfig | None = None,
        max_rejections: int = 100,
        catch_up_step_sec: float = 0.0,
    ) -> None:
        self.lease = lease
        #: the session's ASR options (None when its open message was refused)
        self.config = config
        self.opened = opened
        self.processors = processors
        self.worker_id = worker_id
        self.max_chunk_bytes = max_chunk_bytes
        self.processor_rate = processor_rate
        self.queue: deque[inputs.InputEntry] = deque()
        self.fed: deque[FedEntry] = deque()
        self.last_read_id = "0-0"
        self.in_pos = "0-0"
        self.frames_fed = 0
        self.seqs = inputs.SeqTracker()
        self.out_seq = 0
        self.started = False
        self.ended_reason: str | None = None
        self.end_reached = False
        self.totals = Totals()
        self.records: list[tuple[str, Message]] = []
        self.dirty = False
        self.last_input_at = time.monotonic()
        self.stats = IterationStats()
        self._pending_fatal: Fatal | None = None
        self.end_reason = "completed"
        self._unread_entries = 0
        self._chunk_frames = 0
        #: its processing raised: no checkpoint is taken of it any more (see :meth:`abort`)
        self.untrusted = False
        #: why its backend failed transiently: the loop hands it over uncommitted (see batching)
        self.handover: str | None = None
        self.partials = PartialTracker(lease.session_id, enabled=opened.partials)
        #: Unix time past which the session ends (``max_session_sec`` after its open; set on acquire)
        self.deadline = float("inf")
        #: rejected entries so far in this ownership; past ``max_rejections`` the session ends
        self.rejections = 0
        self.max_rejections = max_rejections
        #: behind by a step or more, chunk points merge into steps of up to this much audio (0: never)
        self.catch_up_step_sec = catch_up_step_sec
        #: what its processors drop of their optional costs (the worker is loaded; see :meth:`set_economy`)
        self.economy = EconomyLevel.OFF

    @property
    def session_id(self) -> str:
        return self.lease.session_id

    @property
    def ended(self) -> bool:
        return self.ended_reason is not None

    def backlog_sec(self) -> float:
        """Audio received but not processed: queued here, plus entries still unread in Redis."""
        queued = sum(e.frames for e in self.queue)
        return (queued + self._unread_entries * self._chunk_frames) / self.opened.sample_rate

    def set_economy(self, level: EconomyLevel) -> None:
        """The worker is short of compute (or no longer): its processors drop the costs of ``level``.

        The loop reports its load after every iteration; only a change reaches the processors.
        """
        if level == self.economy:
            return
        self.economy = level
        for p in self.processors:
            if isinstance(p, EconomicalProcessor):
                p.set_economy(level)

    def queued_bytes(self) -> int:
        """Decoded audio read ahead and not consumed yet."""
        return sum(e.audio.nbytes for e in self.queue if e.audio is not None)

    def note_input_length(self, length: int) -> None:
        """The input stream's XLEN: it holds the entries since the trim point (all fed, or queued)."""
        self._unread_entries = max(0, length - len(self.fed) - len(self.queue))

    # -- step 1: input ---------------------------------------------------------------------

    def take_entries(self, entries: list[tuple[Any, dict[Any, Any]]]) -> tuple[int, float]:
        """Queue entries read after ``last_read_id``; returns (chunks, audio seconds) received."""
        chunks, frames = 0, 0
        for raw_id, fields in entries:
            entry_id = text(raw_id)
            entry = inputs.parse_entry(entry_id, fields, self.opened, self.max_chunk_bytes)
            self.queue.append(entry)
            self.last_read_id = entry_id
            if entry.audio is not None:
                chunks += 1
                frames += entry.frames
                self._chunk_frames = entry.frames
        if entries:
            self.last_input_at = time.monotonic()
        return chunks, frames / self.opened.sample_rate

    # -- step 2: plan ----------------------------------------------------------------------

    def plan_iteration(self, stall_timeout_sec: float) -> list[PlannedCall]:
        """Consume queued input up to the next processing point; return the calls it needs."""
        self.stats = IterationStats()
        if self.ended:
            return []
        if self._pending_fatal:
            return []
        if not self.end_reached and time.time() > self.deadline:
            return self._plan_end(inputs.MAX_DURATION, "the session reached this worker's max_session_sec")
        if self.rejections > self.max_rejections:
            return self._plan_end(
                inputs.TOO_MANY_REJECTIONS, f"more than {self.max_rejections} input entries were rejected"
            )
        due = self._consume_until_due()
        if not due and not self.end_reached and time.monotonic() - self.last_input_at > stall_timeout_sec:
            log.warning("session %s: no input for %.0f s, ending it", self.session_id, stall_timeout_sec)
            self._emit_error("stalled", f"no input for {stall_timeout_sec:.0f} s; the producer is gone", fatal=True)
            self.end_reached = True
            self.end_reason = "stalled"
            due = True
        if not due:
            return []
        return self._calls()

    def _calls(self) -> list[PlannedCall]:
        """The transcribe calls of the channels that are due (and, at the end, of all with audio left)."""
        calls: list[PlannedCall] = []
        for channel, proc in enumerate(self.processors):
            if not (_is_due(proc) or (self.end_reached and _unprocessed_sec(proc) > 0)):
                continue
            if isinstance(proc, BatchableProcessor):
                request = proc.prepare_iter()
                if request is not None:
                    calls.append(PlannedCall(self, channel, proc, request))
                else:
                    self._take_committed(channel, proc.complete_iter(None))
            else:
                self._take_committed(channel, proc.process_iter())
        self.dirty = True
        return calls

    def _plan_end(self, code: str, message: str) -> list[PlannedCall]:
        """End the session now: a fatal error, the queued input dropped, the processors finished."""
        log.warning("session %s: %s; ending it", self.session_id, message)
        self._emit_error(code, message, fatal=True)
        self.queue.clear()
        self.end_reached = True
        self.end_reason = code
        return self._calls()

    def _consume_until_due(self) -> bool:
        """Consume queued entries up to the next processing point (True) or the queue's end.

        That is the first point, unless the session is behind: with ``catch_up_step_sec``, while
        a further step of audio is already queued, chunk points that every due processor may
        defer are merged into one step of up to that much audio. A decode costs about the same
        whatever share of its buffer is new, so merging is what lets a worker that fell behind
        catch up instead of falling further behind. The price: the points then depend on how far
        behind the session was, so a replay after a takeover may commit other words than the run
        it replaces would have (once each, never twice: the commit is still atomic with the
        position). With ``catch_up_step_sec`` 0 the points depend on the input alone, and a
        restored, real-time or burst run makes the same calls.
        """
        due = False
        while self.queue:
            if due and not self._may_merge():
                return True
            entry = self.queue.popleft()
            self.in_pos = entry.entry_id
            self.dirty = True
            if not self._admit(entry):
                continue
            if entry.end is not None:
                self.end_reached = True
                self.end_reason = entry.end.reason
                for rest in self.queue:
                    self._reject(rest, inputs.AFTER_END, "entry after the end of the session")
                    self.in_pos = rest.entry_id
                self.queue.clear()
                return True
            self._feed(entry)
            due = due or any(_is_due(p) for p in self.processors)
        return due

    def _may_merge(self) -> bool:
        """Behind by a step (a whole ``min_chunk`` of audio queued or still in Redis), and every due
        point may wait. A step merges only what is queued: the read-ahead's bounds cap it."""
        if self.catch_up_step_sec <= 0 or self.queue[0].audio is None:
            return False
        if self.backlog_sec() < (self.config.min_chunk_size if self.config else 1.0):
            return False
        return all(
            isinstance(p, DeferrableProcessor) and p.can_defer(self.catch_up_step_sec)
            for p in self.processors
            if _is_due(p)
        )

    def _admit(self, entry: inputs.InputEntry) -> bool:
        """Accept an entry in sequence (True), or reject it with an error and a dead letter."""
        expected = self.seqs.expected
        accepted, missing = self.seqs.admit(entry)
        if entry.reject_reason:
            self._reject(entry, entry.reject_reason, entry.reject_message)
        elif not accepted:
            self._reject(entry, inputs.SEQ_DUPLICATE, f"seq {entry.seq} repeats; expected {expected}")
        elif missing:
            # the entry itself is fine; the letter records the audio that never arrived
            message = f"{missing} chunk(s) missing before seq {entry.seq}"
            self.stats.rejected.append(inputs.SEQ_GAP)
            self._emit_error(inputs.SEQ_GAP, f"entry {entry.entry_id}: {message}", fatal=False)
            self.records.append(
                ("d", DeadLetter(self.session_id, entry.entry_id, inputs.SEQ_GAP, message, b"", time.time()))
            )
        return accepted

    def _feed(self, entry: inputs.InputEntry) -> None:
        assert entry.audio is not None
        self.fed.append(FedEntry(entry.entry_id, self.frames_fed))
        for channel, proc in enumerate(self.processors):
            proc.insert_audio_chunk(self.channel_audio(entry.audio, channel))
        self.frames_fed += entry.frames
        self.totals.audio_sec += entry.frames / self.opened.sample_rate
        self.stats.chunks += 1
        self.stats.audio_sec += entry.frames / self.opened.sample_rate
        self.stats.latest_sent_at = max(self.stats.latest_sent_at, entry.sent_at)

    def channel_audio(self, audio: np.ndarray, channel: int) -> np.ndarray:
        mono = np.ascontiguousarray(audio[:, channel])
        if self.processor_rate != self.opened.sample_rate:
            # soxr, chunk by chunk: each call must give exactly its share of samples
            return resample(mono, self.opened.sample_rate, self.processor_rate)
        return mono

    # -- step 3: complete ------------------------------------------------------------------

    def complete_call(self, call: PlannedCall, result: Any) -> None:
        self._take_committed(call.channel, call.processor.complete_iter(result))

    def finish_iteration(self) -> None:
        """After every call of this iteration completed: the end of stream, if reached."""
        if self._pending_fatal:
            fatal, self._pending_fatal = self._pending_fatal, None
            if fatal.letter is not None:
                self.stats.rejected.append(fatal.code)
                self.records.append(("d", fatal.letter))
            self._emit_error(fatal.code, fatal.message, fatal=True)
            self._end("error")
            return
        if self.end_reached and not self.ended:
            for channel, proc in enumerate(self.processors):
                self._take_committed(channel, proc.finish())
            self._end(self.end_reason)

    def fail(self, code: str, message: str) -> None:
        """End the session with a fatal error at the next commit."""
        self._pending_fatal = Fatal(code, message)
        self.dirty = True

    def abort(self, code: str, message: str, letter: DeadLetter | None = None) -> None:
        """End the session now because its processing raised; its state is not trusted after that.

        The records built before the failure came from steps that completed, so they are kept;
        an end recorded in the failed step gives way to the error's. Its commit keeps the last
        checkpoint (nothing restores an ended session), and nothing of it is processed again.
        """
        self.untrusted = True
        self.queue.clear()
        self.end_reached = True
        self.records = [(kind, m) for kind, m in self.records if not isinstance(m, SessionEnded)]
        self.ended_reason = None
        self._pending_fatal = Fatal(code, message, letter)
        self.finish_iteration()

    def take_partials(self) -> list[PartialEvent]:
        """The partials to publish after this iteration's commit (the latest per channel)."""
        return self.partials.take()

    # -- commit ---------------------------------------------------------------------------------

    def checkpoint(self) -> tuple[bytes, str]:
        """(checkpoint blob, XTRIM MINID of input) for the commit script."""
        snapshots = [p.snapshot() for p in self.processors]
        trim = trim_point(self.fed, snapshots, self.opened.sample_rate, self.processor_rate)
        state = Checkpoint(
            in_pos=self.in_pos,
            expected_seq=self.seqs.expected,
            unnumbered=self.seqs.unnumbered,
            frames_fed=self.frames_fed,
            trim=trim,
            channels=snapshots,
            totals=self.totals,
            started=self.started,
        )
        return state.encode(), trim[0] if trim else ""

    def committed(self, next_out_seq: int) -> None:
        self.out_seq = next_out_seq
        self.records = []
        self.dirty = False


def _is_due(proc: ASRProcessor) -> bool:
    """A processor that does not say when it is due (the guide's) runs at every chunk."""
    return proc.is_due() if isinstance(proc, StreamingProcessor) else True


def _unprocessed_sec(proc: ASRProcessor) -> float:
    return proc.unprocessed_sec if isinstance(proc, StreamingProcessor) else 1.0
