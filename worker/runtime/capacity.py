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

**Economy.** A worker that already owns more than it can decode well has a second lever: its
processors drop an optional cost (the turn context: shorter buffers, cheaper decodes) while the
recent utilisation (``ECONOMY_WINDOW_SEC``) is over ``economy_utilisation``, or would be with the
sessions it owns now at the recent cost per session (a session that just joined has cost nothing
yet, and waiting for it to show would let a backlog build), or while the backlog is over
``economy_backlog_sec`` (:class:`Economy`). One CPU worker then follows two live calls as it did
without the context, and a worker with compute to spare (one call on a CPU, a GPU well under
its load) decodes every turn with the turns before it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: Averaging window of the utilisation that switches economy: short, so that a worker that took
#: on more than it decodes well drops the optional costs within seconds, before a backlog builds.
ECONOMY_WINDOW_SEC = 10.0
#: Economy ends once the recent utilisation and the backlog are both below this share of their
#: thresholds, so it does not flap at the threshold (the context costs about a third more).
ECONOMY_RESUME_SHARE = 0.75


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
        self._recent = 0.0
        self._recent_sessions = 0.0
        self._busy = 0.0
        self._since = clock()
        self._measured = False

    def busy(self, inference_sec: float) -> None:
        """Time spent in the backend since the last update."""
        self._busy += max(0.0, inference_sec)

    def update(self, active: int = 0) -> float:
        """Fold the busy time since the last update (``active`` sessions owned) into the averages;
        returns utilisation."""
        now = self.clock()
        elapsed = now - self._since
        if elapsed <= 0:
            return self._utilisation
        busy = min(1.0, self._busy / elapsed)
        self._utilisation += (1.0 - math.exp(-elapsed / self.window_sec)) * (busy - self._utilisation)
        recent = 1.0 - math.exp(-elapsed / ECONOMY_WINDOW_SEC)
        self._recent += recent * (busy - self._recent)
        self._recent_sessions += recent * (active - self._recent_sessions)
        self._busy, self._since = 0.0, now
        self._measured = self._measured or self._utilisation > 0
        return self._utilisation

    @property
    def utilisation(self) -> float:
        return self._utilisation

    @property
    def recent_utilisation(self) -> float:
        """The same over about ``ECONOMY_WINDOW_SEC``."""
        return self._recent

    def projected_utilisation(self, active: int) -> float:
        """The recent utilisation scaled to ``active`` sessions at the recent cost per session."""
        if self._recent_sessions < 0.5:  # too few sessions were measured to have a cost each
            return self._recent
        return self._recent * active / self._recent_sessions

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


class Economy:
    """Whether the worker's processors drop their optional costs now (see the module docstring)."""

    def __init__(self, utilisation: float, backlog_sec: float) -> None:
        self.utilisation = utilisation
        self.backlog_sec = backlog_sec
        self.on = False

    def update(self, utilisation: float, backlog_sec: float) -> bool:
        """Switch on past either threshold, off once both are well below; returns the state.

        ``utilisation``: the higher of the recent and the projected one, so a session that joins
        switches economy on at once, and one that leaves switches it off only as the load falls.
        """
        if self.on:
            calm = utilisation < self.utilisation * ECONOMY_RESUME_SHARE
            self.on = not (calm and backlog_sec < self.backlog_sec * ECONOMY_RESUME_SHARE)
        else:
            self.on = utilisation > self.utilisation or backlog_sec > self.backlog_sec
        return self.on
