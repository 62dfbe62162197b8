"""Fault isolation: an exception in one session's processing ends that session, never the worker.

Every per-session step of the loop (taking input, planning, completing a transcribe call,
finishing an iteration, building its commit) runs through :func:`isolated`. An exception there
ends the session with a fatal ``processing_failed`` error at its next commit, with a dead letter
of the input entry it was consuming, if any; the loop goes on serving the other sessions.
A failure that takes the whole process down instead (SIGKILL, a crash inside the backend) is
caught by the attempt count of ``acquire.lua``: after ``max_session_attempts`` attempts in a row,
:class:`worker.runtime.acquire.SessionFactory` quarantines the session instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from worker.protocol.messages import DeadLetter, shown
from worker.runtime import inputs
from worker.runtime.session import LiveSession

log = logging.getLogger(__name__)
T = TypeVar("T")


def isolated(session: LiveSession, step: str, action: Callable[..., T], *args: object, default: T) -> T:
    """``action(*args)`` for one session; if it raises, the session fails and ``default`` is returned."""
    consumed_before = session.in_pos
    try:
        return action(*args)
    except Exception as e:
        # the entry being consumed when it failed, if the step consumed any: the likely cause
        culprit = session.in_pos if session.in_pos != consumed_before else None
        fail_session(session, step, e, culprit)
        return default


def fail_session(session: LiveSession, step: str, error: BaseException, culprit: str | None = None) -> None:
    """End ``session`` with ``processing_failed`` after ``error`` in ``step``; the loop goes on."""
    sid = session.session_id
    log.error("session %s: %s failed; ending the session", sid, step, exc_info=error)
    message = f"the worker failed to process this session ({step}: {type(error).__name__}: {shown(str(error))})"
    letter = None
    if culprit is not None:
        letter = DeadLetter(sid, culprit, inputs.PROCESSING_FAILED, message, b"", time.time())
    try:
        session.abort(inputs.PROCESSING_FAILED, message, letter)
    except Exception:  # a processor hook in the end path: the end is recorded all the same
        log.exception("session %s: ending it after a failure raised too", sid)
    drop_unencodable(session)


def drop_unencodable(session: LiveSession) -> None:
    """Leave out the records that cannot be encoded, so the failed session's commit can be built."""
    kept = []
    for kind, message in session.records:
        try:
            message.encode()
        except Exception as e:
            log.error("session %s: dropped a %s record that cannot be encoded: %s", session.session_id, kind, e)
            continue
        kept.append((kind, message))
    session.records = kept
