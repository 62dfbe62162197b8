"""Back-off of failed commits, per session, and whether the worker's commits are failing.

A commit that fails (Redis refuses writes under ``noeviction``, a key of the wrong type) is
retried after an exponential wait, per session, so a broken session neither spins the loop nor
delays the others. While a session waits, it is not processed further: its records stay as
they are until they are committed. ``/healthz`` fails once commits were attempted and none
succeeded for ``failure_limit_sec``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: The first retry waits this long; each further failure doubles the wait up to the cap.
FIRST_RETRY_SEC = 0.05


class CommitRetry:
    """Per-session exponential back-off after failed commits, and the health of committing."""

    def __init__(
        self, max_delay_sec: float, failure_limit_sec: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_delay_sec = max_delay_sec
        self.failure_limit_sec = failure_limit_sec
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._next_try: dict[str, float] = {}
        #: when the current run of failures began (no commit has succeeded since), or None
        self._failing_since: float | None = None

    def waiting(self, sid: str) -> bool:
        """The session's last commit failed: it waits for a retry and is not processed further."""
        return sid in self._failures

    def due(self, sid: str) -> bool:
        """The session may commit now (never failed, or its back-off has passed)."""
        return self._clock() >= self._next_try.get(sid, 0.0)

    def failed(self, sid: str) -> float:
        """Record a failed commit; returns the wait before the session's next try."""
        now = self._clock()
        failures = self._failures.get(sid, 0) + 1
        self._failures[sid] = failures
        delay = min(self.max_delay_sec, FIRST_RETRY_SEC * 2 ** min(failures - 1, 30))
        self._next_try[sid] = now + delay
        if self._failing_since is None:
            self._failing_since = now
        return delay

    def succeeded(self, sid: str) -> None:
        self.forget(sid)
        self._failing_since = None

    def forget(self, sid: str) -> None:
        """The session is no longer ours (ended, fenced, lost)."""
        self._failures.pop(sid, None)
        self._next_try.pop(sid, None)
        if not self._failures:
            self._failing_since = None

    def healthy(self) -> bool:
        """False once commits have been failing, with none succeeding, for ``failure_limit_sec``."""
        return self._failing_since is None or self._clock() - self._failing_since < self.failure_limit_sec
