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


@dataclass
class Totals:
    audio_sec: float = 0.0
    segments: int = 0
    words: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "audio_sec": round(self.audio_sec, 3),
            "segments": self.segments,
            "words": self.words,
            "errors": self.errors,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Totals:
        return cls(float(d["audio_sec"]), int(d["segments"]), int(d["words"]), int(d["errors"]))


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
                "totals": self.totals.as_dict(),
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
                totals=Totals.from_dict(state["totals"]),
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
