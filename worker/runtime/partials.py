"""Interim results: each iteration's unconfirmed hypothesis as a ``partial`` event.

Partials are outside the exactly-once record. They carry no ``seq``, go to a capped stream of
their own per session (``Keyspace.session_partials``) after the iteration's commit, and a
failure to publish them is logged and forgotten: the next iteration publishes a newer one. They
derive from the hypothesis that the checkpoint holds, so they never change what is committed,
and a worker that takes a session over publishes the same ones again from the same point.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from worker.asr.contracts import ASRProcessor, Committed, InterimProcessor, Word
from worker.protocol.events import EventWord, PartialEvent
from worker.protocol.keys import Keyspace

if TYPE_CHECKING:
    from worker.runtime.session import LiveSession

log = logging.getLogger(__name__)

#: Partials kept per session: a consumer that reads late only needs the newest.
PARTIALS_MAXLEN = 32


def event_words(words: Sequence[Word]) -> list[EventWord]:
    """A processor's words as the events carry them (times to the millisecond)."""
    return [
        EventWord(round(w.start, 3), round(w.end, 3), w.text.strip(), round(float(w.probability), 4)) for w in words
    ]


def partial_event(session_id: str, channel: int, partial: Committed) -> PartialEvent:
    text = partial.text.strip()
    start = round(partial.start, 3) if partial.start is not None else 0.0
    end = round(partial.end, 3) if partial.end is not None else 0.0
    return PartialEvent(session_id, channel, start, end, text, event_words(partial.words), time.time())


class PartialTracker:
    """One session's partials: the latest per channel waiting for its iteration's commit."""

    def __init__(self, session_id: str, *, enabled: bool) -> None:
        self.session_id = session_id
        self.enabled = enabled
        self._pending: dict[int, PartialEvent] = {}
        self._published: dict[int, str] = {}

    def note(self, channel: int, processor: ASRProcessor) -> None:
        """After a step of ``channel``: its unconfirmed hypothesis, if it changed."""
        if not self.enabled or not isinstance(processor, InterimProcessor):
            return
        partial = partial_event(self.session_id, channel, processor.partial())
        if partial.text != self._published.get(channel, ""):
            self._published[channel] = partial.text
            self._pending[channel] = partial

    def take(self) -> list[PartialEvent]:
        out, self._pending = list(self._pending.values()), {}
        return out


class PartialPublisher:
    """Appends sessions' partials to their capped streams, one pipeline per loop iteration."""

    def __init__(self, client: Any, keys: Keyspace, retention_ms: int) -> None:
        self.client = client
        self.keys = keys
        self.retention_ms = retention_ms

    def publish(self, sessions: Sequence[LiveSession]) -> int:
        pipe = self.client.pipeline(transaction=False)
        count = 0
        for s in sessions:
            for event in s.take_partials():
                key = self.keys.session_partials(s.session_id)
                event = PartialEvent(**{**event.__dict__, "emitted_at": time.time()})
                pipe.xadd(key, {"type": event.TYPE, "m": event.encode()}, maxlen=PARTIALS_MAXLEN, approximate=True)
                pipe.pexpire(key, self.retention_ms)
                count += 1
        if not count:
            return 0
        try:
            pipe.execute()
        except RedisError as e:
            log.warning("publishing %d partial(s) failed (the next iteration sends newer ones): %s", count, e)
            return 0
        return count
