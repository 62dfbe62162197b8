"""A worker's stop and drain requests, safe to make from a signal handler.

Python runs a signal handler in the main thread, between two bytecodes of whatever the main thread
was doing. If that was ``threading.Event.wait``, the thread holds the event's lock (a plain,
non-reentrant lock) for a few bytecodes around the actual wait, and an ``Event.set()`` in the
handler then blocks on a lock its own thread holds, forever. A worker hung that way after its
second SIGTERM (once in a few hundred test runs; ``tests/test_worker_stopping.py`` shows the
hazard itself). Logging from a handler has a cousin of the same hazard: a handler that writes to
stderr while the main thread is inside a write raises ``RuntimeError: reentrant call``.

So a request here only assigns attributes (no lock, no I/O), and the loop acts on it, and logs it,
at its next turn. Waits sleep in short steps that look at the request, instead of waiting on an
event that a handler would have to set.
"""

from __future__ import annotations

import time

#: How long a wait sleeps between two looks at the requests.
WAIT_STEP_SEC = 0.05


class StopRequests:
    """``stop()`` and ``drain()`` as plain attribute assignments; ``wait()`` wakes on either."""

    def __init__(self, drain_timeout_sec: float = 0.0) -> None:
        self.drain_timeout_sec = drain_timeout_sec
        self.stopping = False
        self.draining = False
        #: ``time.monotonic()`` by which a drain hands over what is left
        self.drain_deadline = float("inf")

    @property
    def ending(self) -> bool:
        """A drain or a stop was requested: the worker takes no new session."""
        return self.draining or self.stopping

    def stop(self) -> None:
        """Stop after the iteration in hand, handing the owned sessions over."""
        self.stopping = True

    def drain(self) -> None:
        """Take no new session and stop once the owned ones end, or ``drain_timeout_sec`` from now.

        A second call (another SIGTERM), or a drain timeout of 0, stops at once.
        """
        if self.draining or self.drain_timeout_sec <= 0:
            self.stopping = True
            return
        self.drain_deadline = time.monotonic() + self.drain_timeout_sec
        self.draining = True

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, less if a stop is requested meanwhile; True if one is."""
        until = time.monotonic() + seconds
        while not self.stopping:
            left = until - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, WAIT_STEP_SEC))
        return self.stopping
