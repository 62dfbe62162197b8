"""How many more sessions this worker can take, from the cost it measures.

``max_sessions`` is a ceiling. Below it, a worker takes a new session only while it keeps up:
its inference time per wall-clock second (utilisation) stays under ``capacity_headroom``, with
room for one more session at the cost its sessions have had on average, and the audio waiting
in its owned sessions stays under ``max_backlog_sec``. A worker that cannot keep up stops
claiming, so another worker, or a replica that an autoscaler adds on the exported gauge
(``streamscribe_capacity_available_sessions``), takes the new calls.

Utilisation is an exponentially weighted average over about ``window_sec``, so one slow batch
does not close the door, and a worker that just started (no measurement yet) takes up to its
ceiling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class CapacityMeter:
    """Utilisation and spare sessions of one worker; fed by the loop after each batch."""

    def __init__(
        self,
        headroom: float,
        max_backlog_sec: float,
        *,
        window_sec: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.headroom = headroom
        self.max_backlog_sec = max_backlog_sec
        self.window_sec = window_sec
        self.clock = clock
        self._utilisation = 0.0
        self._busy = 0.0
        self._since = clock()
        self._measured = False

    def busy(self, inference_sec: float) -> None:
        """Time spent in the backend since the last update."""
        self._busy += max(0.0, inference_sec)

    def update(self) -> float:
        """Fold the busy time since the last update into the average; returns utilisation."""
        now = self.clock()
        elapsed = now - self._since
        if elapsed <= 0:
            return self._utilisation
        weight = 1.0 - math.exp(-elapsed / self.window_sec)
        self._utilisation += weight * (min(1.0, self._busy / elapsed) - self._utilisation)
        self._busy, self._since = 0.0, now
        self._measured = self._measured or self._utilisation > 0
        return self._utilisation

    @property
    def utilisation(self) -> float:
        return self._utilisation

    def spare(self, active: int, ceiling: int, backlog_sec: float) -> int:
        """Sessions this worker may take now (never more than ``ceiling - active``)."""
        free = max(0, ceiling - active)
        if free == 0 or backlog_sec > self.max_backlog_sec:
            return 0
        if not self._measured or active == 0:
            return free
        room = self.headroom - self._utilisation
        if room <= 0:
            return 0
        per_session = self._utilisation / active
        return min(free, math.floor(room / per_session)) if per_session > 0 else free
