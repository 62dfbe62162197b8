"""One backend call per group of due requests that share a model and options.

The loop plans each owned session up to its next processing point; the transcribe calls of all
of them are grouped here by what the backends say makes one call answer each the same
(``batch_key``), split at ``max_batch``, and sent as one call per group. A group whose call
raises is retried request by request, so one bad input ends only its own session. A request that
fails alone for a reason that may pass (device memory exhausted, see
:func:`worker.errors.is_transient`) does not end its session: the session is marked for handover,
and the loop releases it uncommitted, to be restored from its last checkpoint by whichever worker
claims it (the restore attempts count, so a session that fails everywhere is quarantined).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from worker.errors import is_transient
from worker.metrics import WorkerObserver
from worker.runtime.capacity import CapacityMeter
from worker.runtime.faults import isolated
from worker.runtime.session import PlannedCall

log = logging.getLogger(__name__)

_FAILED = object()


def transcribe(calls: list[PlannedCall], max_batch: int, observer: WorkerObserver, capacity: CapacityMeter) -> None:
    """Run ``calls`` in batches and hand each result to its session."""
    groups: dict[tuple[Any, ...], list[PlannedCall]] = defaultdict(list)
    for call in calls:
        groups[batch_key(call)].append(call)
    batches = [group[i : i + max_batch] for group in groups.values() for i in range(0, len(group), max_batch)]
    for group in batches:
        asr = group[0].processor.asr
        audio_sec = sum(c.request.audio.shape[0] for c in group) / 16000
        started = time.perf_counter()
        try:
            results = asr.transcribe_requests([c.request for c in group])
        except Exception:
            log.exception("transcribe_batch failed for %d session(s); trying each alone", len(group))
            results = [_alone(c) for c in group]
        elapsed = time.perf_counter() - started
        new_audio = sum(c.session.stats.audio_sec for c in {id(c.session): c for c in group}.values())
        observer.batch_done(len(group), elapsed, new_audio or audio_sec)
        capacity.busy(elapsed)
        for call, result in zip(group, results, strict=True):
            s = call.session
            if result is not _FAILED and not s.untrusted and s.handover is None:
                isolated(s, "completing a transcribe call", s.complete_call, call, result, default=None)


def _alone(call: PlannedCall) -> Any:
    """One request on its own, so that one bad input cannot end every session of a batch."""
    try:
        return call.processor.asr.transcribe_requests([call.request])[0]
    except Exception as e:
        if is_transient(e):
            log.warning("session %s: transcribe failed (%s); handing it over", call.session.session_id, e)
            call.session.handover = f"{type(e).__name__}: {e}"
            return _FAILED
        log.exception("session %s: transcribe failed", call.session.session_id)
        call.session.fail("backend_error", f"the ASR backend failed: {e}")
        return _FAILED


def batch_key(call: PlannedCall) -> tuple[Any, ...]:
    """Calls batch together only when their backends say one call answers each the same."""
    return (type(call.processor.asr), call.processor.asr.batch_key())
