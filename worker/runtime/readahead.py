"""Reading each owned session's input ahead of its processing, in one pipelined round trip."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from worker.metrics import WorkerObserver
from worker.protocol.keys import Keyspace
from worker.runtime.faults import fail_session, isolated
from worker.runtime.session import LiveSession
from worker.settings import WorkerSettings


def read_input(
    client: Any, keys: Keyspace, sessions: Iterable[LiveSession], settings: WorkerSettings, observer: WorkerObserver
) -> None:
    """Top up each session's queue: to ``read_count`` entries and ``read_ahead_bytes`` of decoded audio.

    Never more: a backlog (after an outage, or a burst) stays in Redis, not decoded in this
    process's memory, which stays flat however far behind a session is. The byte bound counts
    each entry still unread at its largest decoded size (``max_chunk_bytes`` of one-byte
    samples become four-byte floats), so huge chunks cannot multiply it.
    """
    limit = settings.read_count
    largest = 4 * settings.max_chunk_bytes
    wanted: list[tuple[LiveSession, int]] = []
    for s in sessions:
        room = (settings.read_ahead_bytes - s.queued_bytes()) // largest
        count = min(limit - len(s.queue), room if s.queue else max(1, room))
        if not s.end_reached and count > 0:
            wanted.append((s, count))
    if not wanted:
        return
    pipe = client.pipeline(transaction=False)
    for s, count in wanted:
        key = keys.session_input(s.session_id)
        pipe.xrange(key, f"({s.last_read_id}", "+", count=count)
        pipe.xlen(key)  # for the backlog still in Redis
    replies = pipe.execute(raise_on_error=False)
    for (s, _count), entries, length in zip(wanted, replies[0::2], replies[1::2], strict=True):
        problem = next((r for r in (entries, length) if isinstance(r, Exception)), None)
        if problem is not None:
            if "WRONGTYPE" not in str(problem):
                raise problem
            fail_session(s, "reading its input", problem)  # its input key is not a stream
            continue
        if entries:
            chunks, audio_sec = isolated(s, "taking input", s.take_entries, entries, default=(0, 0.0))
            observer.chunks_received(chunks, audio_sec)
        s.note_input_length(int(length))
