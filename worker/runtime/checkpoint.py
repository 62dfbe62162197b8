"""A session's checkpoint: what ``commit.lua`` saves with each iteration's records.

It holds no audio. The processors' snapshots give each buffer's start in absolute samples;
``trim`` names the first input entry that start lies in (and that entry's first frame), so a new
owner re-reads the input from there, skips to each buffer start, and has every buffer back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgpack

from worker.errors import SnapshotError

CHECKPOINT_VERSION = 1


@dataclass
class FedEntry:
    """An input entry whose audio went into the processors, and the frame it started at."""

    entry_id: str
    start_frame: int


#: Upper edges (seconds) of the commit-latency histogram a session keeps for its totals.
LATENCY_EDGES = (0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 20, 30, 60, 120)


@dataclass
class Totals:
    """What ``session_ended`` reports; checkpointed, so a takeover keeps counting.

    Commit latency is, per segment, the time from the producer's ``sent_at`` of the newest chunk
    the iteration consumed to the segment's emission (the end-to-end metric, per session). Its p95
    comes from a histogram (``LATENCY_EDGES``): the upper edge of the bucket that holds it, or the
    largest latency seen when that is smaller.
    """

    audio_sec: float = 0.0
    segments: int = 0
    words: int = 0
    errors: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES) + 1))

    def observe_latency(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.latency_sum += seconds
        self.latency_max = max(self.latency_max, seconds)
        self.latency_buckets[next((i for i, e in enumerate(LATENCY_EDGES) if seconds <= e), len(LATENCY_EDGES))] += 1

    def latency_p95(self) -> float | None:
        count = sum(self.latency_buckets)
        if not count:
            return None
        rank, seen = 0.95 * count, 0
        for i, n in enumerate(self.latency_buckets):
            seen += n
            if seen >= rank:
                return min(float(LATENCY_EDGES[i]), self.latency_max) if i < len(LATENCY_EDGES) else self.latency_max
        return None  # pragma: no cover - the loop always reaches the rank

    def as_dict(self) -> dict[str, float | None]:
        """The ``totals`` of ``session_ended``."""
        count = sum(self.latency_buckets)
        p95 = self.latency_p95()
        return {  # mean and p95 are None when no segment was committed
            "audio_sec": round(self.audio_sec, 3),
            "segments": self.segments,
            "words": self.words,
            "errors": self.errors,
            "latency_mean_sec": round(self.latency_sum / count, 3) if count else None,
            "latency_p95_sec": None if p95 is None else round(p95, 3),
        }

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps."""
        return {
            "audio_sec": self.audio_sec,
            "segments": self.segments,
            "words": self.words,
            "errors": self.errors,
            "latency_sum": self.latency_sum,
            "latency_max": self.latency_max,
            "latency_buckets": list(self.latency_buckets),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Totals:
        totals = cls(float(d["audio_sec"]), int(d["segments"]), int(d["words"]), int(d["errors"]))
        buckets = d.get("latency_buckets")  # absent in checkpoints of earlier releases
        if isinstance(buckets, list) and len(buckets) == len(totals.latency_buckets):
            totals.latency_buckets = [int(n) for n in buckets]
            totals.latency_sum = float(d.get("latency_sum", 0.0))
            totals.latency_max = float(d.get("latency_max", 0.0))
        return totals


@dataclass
class Checkpoint:
    in_pos: str
    expected_seq: int
    unnumbered: int
    frames_fed: int
    trim: tuple[str, int] | None
    channels: list[dict[str, Any]]
    totals: Totals = field(default_factory=Totals)
    started: bool = False

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "v": CHECKPOINT_VERSION,
                "in_pos": self.in_pos,
                "expected_seq": self.expected_seq,
                "unnumbered": self.unnumbered,
                "frames_fed": self.frames_fed,
                "trim": list(self.trim) if self.trim else None,
                "channels": self.channels,
                "totals": self.totals.state(),
                "started": self.started,
            },
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, blob: bytes) -> Checkpoint:
        try:
            state = msgpack.unpackb(blob, raw=False)
            if state.get("v") != CHECKPOINT_VERSION:
                raise SnapshotError(f"checkpoint version {state.get('v')!r} is not {CHECKPOINT_VERSION}")
            trim = state["trim"]
            return cls(
                in_pos=str(state["in_pos"]),
                expected_seq=int(state["expected_seq"]),
                unnumbered=int(state.get("unnumbered", 0)),
                frames_fed=int(state["frames_fed"]),
                trim=(str(trim[0]), int(trim[1])) if trim else None,
                channels=list(state["channels"]),
                totals=Totals.from_state(state["totals"]),
                started=bool(state["started"]),
            )
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, msgpack.UnpackException) as e:
            raise SnapshotError(f"malformed checkpoint: {e!r}") from e


def trim_point(
    fed: deque[FedEntry], snapshots: list[dict[str, Any]], sample_rate: int, processor_rate: int
) -> tuple[str, int] | None:
    """The first fed entry the processors still need; drops the ``fed`` entries before it.

    Without ``buffer_start`` in every snapshot (a processor that does not say what it keeps),
    nothing is trimmed: all fed input stays.
    """
    if not fed:
        return None
    starts = [s.get("buffer_start") for s in snapshots]
    if all(isinstance(s, int) for s in starts):
        needed = min(starts) * sample_rate // processor_rate
        while len(fed) > 1 and fed[1].start_frame <= needed:
            fed.popleft()
    return fed[0].entry_id, fed[0].start_frame
