"""A new owner's restore: load a session's checkpoint and rebuild its processors' audio.

The checkpoint holds no audio. Each processor snapshot gives its buffer's start and end in
absolute samples, and the checkpoint's trim point names the first input entry still needed, so
the retained input from there on, replayed through the same sequence checks, refills every
buffer exactly as the old owner had it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.asr.contracts import StreamingProcessor
from worker.errors import SnapshotError
from worker.protocol.connection import text
from worker.runtime import inputs
from worker.runtime.checkpoint import Checkpoint, FedEntry

if TYPE_CHECKING:
    from worker.runtime.session import LiveSession

#: Input entries as XRANGE returns them: (entry id, fields).
StreamEntries = list[tuple[Any, dict[Any, Any]]]


def restore_session(session: LiveSession, blob: bytes, out_seq: int, retained: StreamEntries) -> None:
    """Load a checkpoint into ``session`` and rebuild its processors' audio from ``retained``.

    A checkpoint that does not fit raises :class:`SnapshotError`; anything else a processor
    raises propagates, and the caller counts it as a failed attempt.
    """
    state = Checkpoint.decode(blob)
    session.in_pos = session.last_read_id = state.in_pos
    session.seqs = inputs.SeqTracker(state.expected_seq, state.unnumbered)
    session.frames_fed = state.frames_fed
    session.started = state.started
    session.totals = state.totals
    try:
        for proc, snap in zip(session.processors, state.channels, strict=True):
            proc.restore(snap)
    except ValueError as e:
        raise SnapshotError(f"checkpoint has {len(state.channels)} channel(s): {e}") from e
    session.out_seq = out_seq
    if state.trim is not None:
        _rebuild_audio(session, state.channels, state.trim[1], retained)


def _rebuild_audio(session: LiveSession, snapshots: list[dict[str, Any]], frame: int, retained: StreamEntries) -> None:
    """Insert the retained audio from each processor's ``buffer_start`` on, as it came before."""
    # the first retained entry was fed (the trim point is one), so replaying the sequence
    # checks from it skips exactly the entries the old owner skipped, duplicates included
    replay: inputs.SeqTracker | None = None
    opened = session.opened
    for raw_id, fields in retained:
        entry_id = text(raw_id)
        entry = inputs.parse_entry(entry_id, fields, opened, session.max_chunk_bytes)
        if replay is None:
            replay = inputs.SeqTracker(entry.seq or 0)
        if not replay.admit(entry)[0] or entry.audio is None:
            continue  # rejected (and reported) before the checkpoint
        session.fed.append(FedEntry(entry_id, frame))
        for channel, (proc, snap) in enumerate(zip(session.processors, snapshots, strict=True)):
            audio = session.channel_audio(entry.audio, channel)
            start = int(snap.get("buffer_start", 0))
            at = frame * session.processor_rate // opened.sample_rate
            skip = max(0, start - at)
            if skip < audio.shape[0]:
                proc.insert_audio_chunk(audio[skip:])
        frame += entry.frames
    for proc, snap in zip(session.processors, snapshots, strict=True):
        expected = snap.get("buffer_end")
        got = proc.buffer_end if isinstance(proc, StreamingProcessor) else expected
        if expected is not None and got != expected:
            raise SnapshotError(f"rebuilt audio ends at sample {got}, the checkpoint says {expected}")
