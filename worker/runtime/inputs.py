"""Input entries of a session, decoded and checked when read, acted on when consumed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.errors import DecodeError, InvalidAudioError
from worker.protocol.messages import AudioChunk, EndOfSession, SessionOpen, decode_input
from worker.protocol.pcm import decode_pcm

#: Rejection reasons (the ``reason`` label of ``streamscribe_rejected_inputs_total``).
MALFORMED = "malformed"
UNSUPPORTED_VERSION = "unsupported_version"
CHUNK_TOO_LARGE = "chunk_too_large"
BAD_AUDIO = "bad_audio"
SEQ_DUPLICATE = "seq_duplicate"
SEQ_GAP = "seq_gap"
AFTER_END = "after_end"
NOT_ALLOWED = "not_allowed"
BAD_SESSION = "bad_session"
#: Fatal error codes of a session whose processing failed (no rejected input of its own).
PROCESSING_FAILED = "processing_failed"
QUARANTINED = "quarantined"
#: Fatal error codes, and end reasons, of a session the worker's limits end.
MAX_DURATION = "max_duration"
TOO_MANY_REJECTIONS = "too_many_rejections"
#: Every reason above: the metric exports each at 0 from the start, so a rate() over it works
#: before the first rejection and an alert can tell "none yet" from "not exported".
REJECTION_REASONS = (
    MALFORMED,
    UNSUPPORTED_VERSION,
    CHUNK_TOO_LARGE,
    BAD_AUDIO,
    SEQ_DUPLICATE,
    SEQ_GAP,
    AFTER_END,
    NOT_ALLOWED,
    BAD_SESSION,
    PROCESSING_FAILED,
    QUARANTINED,
)


@dataclass(frozen=True)
class InputEntry:
    """One entry of the input stream: a chunk, the end marker, or something rejected."""

    entry_id: str
    seq: int | None
    audio: np.ndarray | None = None  # (frames, channels) float32 at the session's rate
    sent_at: float = 0.0
    end: EndOfSession | None = None
    reject_reason: str | None = None
    reject_message: str = ""
    raw: bytes = b""

    @property
    def frames(self) -> int:
        return 0 if self.audio is None else int(self.audio.shape[0])


def parse_entry(entry_id: str, fields: dict[Any, Any], session: SessionOpen, max_chunk_bytes: int) -> InputEntry:
    """Decode one stream entry; problems become a rejected entry, never an exception."""
    raw = fields.get(b"m", fields.get("m", b""))
    if not isinstance(raw, bytes | bytearray) or not raw:
        return InputEntry(entry_id, None, reject_reason=MALFORMED, reject_message="entry has no 'm' field", raw=b"")
    raw = bytes(raw)
    if len(raw) > max_chunk_bytes + 1024:
        return InputEntry(
            entry_id,
            None,
            reject_reason=CHUNK_TOO_LARGE,
            reject_message=f"entry of {len(raw)} bytes exceeds the cap of {max_chunk_bytes} bytes",
            raw=raw[:1024],
        )
    try:
        message = decode_input(raw)
    except DecodeError as e:
        reason = UNSUPPORTED_VERSION if "version" in str(e) else MALFORMED
        return InputEntry(entry_id, None, reject_reason=reason, reject_message=str(e), raw=raw)
    except Exception as e:  # a decoder bug must reject this entry, not stop the session or the worker
        message_text = f"undecodable entry ({type(e).__name__})"
        return InputEntry(entry_id, None, reject_reason=MALFORMED, reject_message=message_text, raw=raw)
    if isinstance(message, EndOfSession):
        return InputEntry(entry_id, message.seq, sent_at=message.sent_at, end=message)
    assert isinstance(message, AudioChunk)
    if len(message.payload) > max_chunk_bytes:
        return InputEntry(
            entry_id,
            message.seq,
            reject_reason=CHUNK_TOO_LARGE,
            reject_message=f"chunk of {len(message.payload)} bytes exceeds the cap of {max_chunk_bytes} bytes",
            raw=raw[:1024],
        )
    try:
        audio = decode_pcm(message.payload, session.encoding, session.channels)
    except InvalidAudioError as e:
        return InputEntry(entry_id, message.seq, reject_reason=BAD_AUDIO, reject_message=str(e), raw=raw)
    except Exception as e:  # as above: the entry is at fault, not the worker
        message_text = f"undecodable audio ({type(e).__name__})"
        return InputEntry(entry_id, message.seq, reject_reason=BAD_AUDIO, reject_message=message_text, raw=raw)
    return InputEntry(entry_id, message.seq, audio=audio, sent_at=message.sent_at)


@dataclass
class SeqTracker:
    """Which ``seq`` comes next: tells duplicates and gaps apart from chunks in order.

    A run and a restore both decide with it, so a new owner that replays the retained input
    feeds exactly the entries the old owner fed (a duplicate it skipped stays skipped).
    ``unnumbered`` counts rejected entries whose seq could not be read since the last one that
    could: a gap they explain is reported as their rejection, not a second time as missing audio.
    """

    expected: int = 0
    unnumbered: int = 0

    def admit(self, entry: InputEntry) -> tuple[bool, int]:
        """(accepted, chunks missing just before it) for the next entry in stream order."""
        if entry.reject_reason:
            if entry.seq is None:
                self.unnumbered += 1
            elif entry.seq >= self.expected:
                self._advance(entry.seq)
            return False, 0
        assert entry.seq is not None
        if entry.seq < self.expected:
            return False, 0
        return True, self._advance(entry.seq)

    def _advance(self, seq: int) -> int:
        missing = seq - self.expected
        explained = min(missing, self.unnumbered)
        self.expected = seq + 1
        self.unnumbered = 0
        return missing - explained
