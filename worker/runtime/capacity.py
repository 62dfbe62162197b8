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
processors drop optional costs, in two levels (:class:`~worker.asr.contracts.EconomyLevel`).
The turn context goes (shorter buffers) while the recent utilisation (``ECONOMY_WINDOW_SEC``) is
over ``economy_utilisation``, or would be with the sessions it owns now at the recent cost per
session (a session that just joined has cost nothing yet, and waiting for it to show would let a
backlog build), or while one session's backlog is over ``economy_backlog_sec``; past
``economy_decode_utilisation`` the decodes get cheaper too (greedy chunk decodes in tighter
windows) (:class:`Economy`). One CPU worker then follows two live calls as it did without the
context, three with cheaper decodes, and a worker with compute to spare (one call on a CPU, a
GPU well under its load) decodes every turn with the turns before it and a beam.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from worker.asr.contracts import EconomyLevel

#: Averaging window of the utilisation that switches economy: short, so that a worker that took
#: on more than it decodes well drops the optional costs within seconds, before a backlog builds.
ECONOMY_WINDOW_SEC = 10.0
#: A level of economy ends once the recent utilisation and the backlog are both below this share
#: of its thresholds, so it does not flap there (the context costs about a third more, and beam
#: search with wider windows about as much again).
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
    """The economy level of the worker's processors now (see the module docstring)."""

    def __init__(self, utilisation: float, backlog_sec: float, decode_utilisation: float = 1.0) -> None:
        self.utilisation = utilisation
        self.backlog_sec = backlog_sec
        self.decode_utilisation = decode_utilisation
        self.level = EconomyLevel.OFF

    @property
    def on(self) -> bool:
        return self.level > EconomyLevel.OFF

    def update(self, utilisation: float, backlog_sec: float) -> EconomyLevel:
        """Go up a level past its threshold, down once the load is well below it; returns the level.

        ``utilisation``: the higher of the recent and the projected one, so a session that joins
        raises the level at once, and one that leaves lowers it only as the load falls. The
        context goes past ``utilisation`` or ``backlog_sec``; cheap decodes come past
        ``decode_utilisation`` only (a backlog alone is a peak that dropping the context clears).
        """
        # a projection past 1 is as loaded as can be; capped, so that a threshold of 1 means never
        utilisation = min(utilisation, 1.0)
        share = ECONOMY_RESUME_SHARE
        cheap = self.level == EconomyLevel.CHEAP_DECODES
        loaded = self.level >= EconomyLevel.NO_CONTEXT
        if utilisation > self.decode_utilisation or (cheap and utilisation >= self.decode_utilisation * share):
            self.level = EconomyLevel.CHEAP_DECODES
        elif utilisation > self.utilisation or backlog_sec > self.backlog_sec:
            self.level = EconomyLevel.NO_CONTEXT
        elif loaded and (utilisation >= self.utilisation * share or backlog_sec >= self.backlog_sec * share):
            self.level = EconomyLevel.NO_CONTEXT  # not yet well below either threshold
        else:
            self.level = EconomyLevel.OFF
        return self.level
