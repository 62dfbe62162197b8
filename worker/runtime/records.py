"""A live session's records: the events and dead letters its next commit appends.

Mixed into :class:`~worker.runtime.session.LiveSession`, whose state it shares. Every event is
built here: ``session_started`` (with the model, backend and language the session runs),
``segment`` (words, language, and the commit latency its totals count), ``error`` with its dead
letter, and ``session_ended`` with the totals. :meth:`SessionRecords.build_records` numbers them
for the commit script.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.asr.contracts import Committed, share_committed
from worker.asr.online import OnlineASRProcessor
from worker.protocol.events import ErrorEvent, SegmentEvent, SessionEnded, SessionStarted
from worker.protocol.messages import DeadLetter, Message
from worker.runtime import inputs
from worker.runtime.partials import event_words

if TYPE_CHECKING:
    from worker.runtime.session import LiveSession

log = logging.getLogger(__name__)

#: A dead letter keeps at most this much of the rejected entry's raw message.
DEAD_LETTER_RAW_BYTES = 1024


@dataclass(frozen=True)
class Record:
    """One thing to append at commit: an event ("e") or a dead letter ("d")."""

    kind: str
    type: str
    payload: bytes


@dataclass(frozen=True)
class Fatal:
    """Why the session ends with an error at its next commit; ``letter`` when the input was at fault."""

    code: str
    message: str
    letter: DeadLetter | None = None


class SessionRecords:
    """The record-building steps of :class:`~worker.runtime.session.LiveSession`."""

    def reject_open(self: LiveSession, reason: str, message: str, raw: bytes) -> None:
        """End the session because its open message is unusable: an error, and a dead letter of it."""
        letter = DeadLetter(self.session_id, "open", reason, message, raw[:DEAD_LETTER_RAW_BYTES], time.time())
        self._pending_fatal = Fatal(reason, message, letter)
        self.dirty = True

    def _end(self: LiveSession, reason: str) -> None:
        self.ended_reason = reason
        self._record(
            SessionEnded(self.session_id, 0, reason, self.totals.as_dict(), time.time()),
        )

    def _take_committed(self: LiveSession, channel: int, committed: Committed) -> None:
        self.partials.note(channel, self.processors[channel])
        spoken = (committed.text or "").strip()
        if committed.start is None or committed.end is None or not spoken:
            return
        words = event_words(committed.words)
        event = SegmentEvent(
            self.session_id,
            channel,
            0,
            round(committed.start, 3),
            round(committed.end, 3),
            spoken,
            words,
            time.time(),
            committed.utterance_end,
            self.language(channel),
        )
        self._record(event)
        # the other channels of the call hear it (a conversational processor prompts with it);
        # in channel order within an iteration, so a restored session hands over the same words
        share_committed(self.processors, channel, committed.words)
        self.totals.segments += 1
        self.totals.words += len(words)
        if self.stats.latest_sent_at > 0:
            self.totals.observe_latency(event.emitted_at - self.stats.latest_sent_at)

    def language(self: LiveSession, channel: int) -> str | None:
        """The session's language; with ``auto``, the one its backend detected (None until then)."""
        if self.config is None:
            return None
        if self.config.lan != "auto":
            return self.config.lan
        proc = self.processors[channel] if channel < len(self.processors) else None
        return proc.asr.detected_language if isinstance(proc, OnlineASRProcessor) else None

    def _emit_error(self: LiveSession, code: str, message: str, *, fatal: bool) -> None:
        self.totals.errors += 1
        self._record(ErrorEvent(self.session_id, 0, code, message, fatal, time.time()))

    def _reject(self: LiveSession, entry: inputs.InputEntry, reason: str, message: str) -> None:
        log.info("session %s: rejected entry %s: %s (%s)", self.session_id, entry.entry_id, reason, message)
        self.stats.rejected.append(reason)
        self.rejections += 1
        self._emit_error(reason, f"entry {entry.entry_id}: {message}", fatal=False)
        # a letter keeps the start of what was sent: enough to see what it was, never a flood's bulk
        letter = DeadLetter(
            self.session_id, entry.entry_id, reason, message, entry.raw[:DEAD_LETTER_RAW_BYTES], time.time()
        )
        self.records.append(("d", letter))

    def _record(self: LiveSession, message: Message) -> None:
        self.records.append(("e", message))
        self.dirty = True

    def started_event(self: LiveSession) -> None:
        if self.started:
            return
        self.started = True
        o, c = self.opened, self.config
        self.records.insert(
            0,
            (
                "e",
                SessionStarted(
                    self.session_id,
                    0,
                    o.channels,
                    o.sample_rate,
                    o.encoding,
                    o.metadata,
                    self.worker_id,
                    time.time(),
                    model=c.model if c else None,
                    backend=c.backend if c else None,
                    language=c.lan if c else None,
                ),
            ),
        )
        self.dirty = True

    def build_records(self: LiveSession) -> list[tuple[int, Record]]:
        """Number this commit's records from ``out_seq + 1`` and encode them."""
        numbered: list[tuple[int, Record]] = []
        seq = self.out_seq
        for kind, message in self.records:
            seq += 1
            if "seq" in message.__dataclass_fields__:
                message = dataclasses.replace(message, seq=seq)
            numbered.append((seq, Record(kind, message.TYPE, message.encode())))
        return numbered
