"""Wire messages v1: frozen dataclasses with ``encode``/``decode`` over msgpack.

Input (producers write them):
  * :class:`SessionOpen` in the session's state hash (field ``open``);
  * :class:`AudioChunk` and :class:`EndOfSession` in the session's input stream, field ``m``.
Output (workers write them to the session's output stream and the shard's events stream):
  * :class:`SegmentEvent`, :class:`SessionStarted`, :class:`SessionEnded`, :class:`ErrorEvent`;
  * :class:`PartialEvent` in the session's capped partials stream (not numbered, not forwarded).

Every payload is a msgpack map with ``v`` (the protocol version) and ``type``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar

import msgpack

from worker.errors import DecodeError

PROTOCOL_VERSION = 1
Encoding = Literal["pcm_s16le", "pcm_f32le", "mulaw", "alaw"]
ENCODINGS: tuple[str, ...] = ("pcm_s16le", "pcm_f32le", "mulaw", "alaw")
#: The ASR options a producer may set per session (the worker's allow-list narrows them further).
SESSION_ASR_OPTIONS = ("language", "model", "backend", "min_chunk_size")

M = TypeVar("M", bound="Message")


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_map(raw: bytes) -> dict[str, Any]:
    """msgpack bytes -> dict, or :class:`DecodeError` saying why not."""
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:
        raise DecodeError(f"malformed msgpack: {e}") from e
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a msgpack map, got {type(obj).__name__}")
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {version!r} (this worker speaks {PROTOCOL_VERSION})")
    return obj


def _require(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise DecodeError(f"missing field {name!r}")
    value = obj[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DecodeError(f"field {name!r} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"v": PROTOCOL_VERSION, "type": self.TYPE, **asdict(self)}

    def encode(self) -> bytes:
        return _pack(self.to_dict())


# -- input ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionOpen(Message):
    """A new call: how its audio is encoded, per-session ASR options, free metadata."""

    TYPE: ClassVar[str] = "open"
    session_id: str
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    channels: int = 1
    asr: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    #: Publish interim hypotheses as ``partial`` events (outside the exactly-once record).
    partials: bool = True

    @classmethod
    def decode(cls, raw: bytes) -> SessionOpen:
        obj = unpack_map(raw)
        msg = cls(
            session_id=_require(obj, "session_id", str),
            sample_rate=_require(obj, "sample_rate", int),
            encoding=_require(obj, "encoding", str),
            channels=_require(obj, "channels", int),
            asr=_require(obj, "asr", dict),
            metadata=_require(obj, "metadata", dict),
            created_at=_require(obj, "created_at", float),
            # optional: opens written before partials existed have none
            partials=_require(obj, "partials", bool) if "partials" in obj else True,
        )
        msg.validate()
        return msg

    def validate(self) -> None:
        if self.encoding not in ENCODINGS:
            raise DecodeError(f"unknown encoding {self.encoding!r}; use one of {', '.join(ENCODINGS)}")
        if not 8000 <= self.sample_rate <= 192000:
            raise DecodeError(f"sample_rate {self.sample_rate} is outside 8000..192000")
        if self.encoding in ("mulaw", "alaw") and self.sample_rate != 8000:
            raise DecodeError(f"{self.encoding} audio must be 8000 Hz, not {self.sample_rate}")
        if not 1 <= self.channels <= 8:
            raise DecodeError(f"channels {self.channels} is outside 1..8")
        unknown = set(self.asr) - set(SESSION_ASR_OPTIONS)
        if unknown:
            raise DecodeError(
                f"unknown ASR option(s) {sorted(unknown)}; a session may set {', '.join(SESSION_ASR_OPTIONS)}"
            )
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()):
            raise DecodeError("metadata must map strings to strings")


@dataclass(frozen=True)
class AudioChunk(Message):
    """``payload`` is interleaved audio in the session's encoding; ``sent_at`` is the producer's clock."""

    TYPE: ClassVar[str] = "chunk"
    seq: int
    payload: bytes
    sent_at: float = 0.0


@dataclass(frozen=True)
class EndOfSession(Message):
    """No audio after this; ``seq`` continues the chunks' numbering."""

    TYPE: ClassVar[str] = "end"
    seq: int
    sent_at: float = 0.0
    reason: str = "completed"


InputMessage = AudioChunk | EndOfSession


def decode_input(raw: bytes) -> InputMessage:
    """Decode one input-stream entry's ``m`` field."""
    obj = unpack_map(raw)
    kind = obj.get("type")
    seq = _require(obj, "seq", int)
    if seq < 0:
        raise DecodeError(f"seq must be >= 0, got {seq}")
    sent_at = _require(obj, "sent_at", float)
    if not math.isfinite(sent_at):
        raise DecodeError("sent_at must be finite")
    if kind == AudioChunk.TYPE:
        return AudioChunk(seq=seq, payload=_require(obj, "payload", bytes), sent_at=sent_at)
    if kind == EndOfSession.TYPE:
        return EndOfSession(seq=seq, sent_at=sent_at, reason=str(obj.get("reason", "completed")))
    raise DecodeError(f"unknown input message type {kind!r}")


def input_entry_id(seq: int) -> str:
    """Stream id of an input entry: Redis itself then refuses a repeated ``seq``."""
    return f"{seq + 1}-0"


# -- output ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentEvent(Message):
    """Committed text of one channel; ``words`` are ``[start, end, word, probability]``.

    ``utterance_end``: the segment closes a voiced stretch that at least 500 ms of silence
    follows on this channel (the speaker stopped; Deepgram's ``speech_final``).
    """

    TYPE: ClassVar[str] = "segment"
    session: str
    channel: int
    seq: int
    start: float
    end: float
    text: str
    words: list[list[Any]]
    emitted_at: float
    utterance_end: bool = False


@dataclass(frozen=True)
class PartialEvent(Message):
    """The unconfirmed hypothesis of one channel after an iteration; it replaces the last one.

    Outside the exactly-once record: no ``seq``, kept in a capped stream, and never a change to
    what is committed. An empty ``text`` clears the previous partial (everything was committed).
    """

    TYPE: ClassVar[str] = "partial"
    session: str
    channel: int
    start: float
    end: float
    text: str
    words: list[list[Any]]
    emitted_at: float


@dataclass(frozen=True)
class SessionStarted(Message):
    TYPE: ClassVar[str] = "session_started"
    session: str
    seq: int
    channels: int
    sample_rate: int
    encoding: str
    metadata: dict[str, str]
    worker: str
    emitted_at: float


@dataclass(frozen=True)
class SessionEnded(Message):
    """``reason``: completed, stalled or error; ``totals``: audio_sec, segments, words, errors."""

    TYPE: ClassVar[str] = "session_ended"
    session: str
    seq: int
    reason: str
    totals: dict[str, float]
    emitted_at: float


@dataclass(frozen=True)
class ErrorEvent(Message):
    """A problem with this session's input; ``fatal`` means the session ended because of it."""

    TYPE: ClassVar[str] = "error"
    session: str
    seq: int
    code: str
    message: str
    fatal: bool
    emitted_at: float


Event = SegmentEvent | SessionStarted | SessionEnded | ErrorEvent | PartialEvent
EVENT_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (SegmentEvent, SessionStarted, SessionEnded, ErrorEvent, PartialEvent)
}


def decode_event(raw: bytes) -> Event:
    """Decode an output event (as consumers do)."""
    obj = unpack_map(raw)
    cls = EVENT_TYPES.get(obj.get("type", ""))
    if cls is None:
        raise DecodeError(f"unknown event type {obj.get('type')!r}")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in obj.items() if k in names})  # type: ignore[return-value]
    except TypeError as e:
        raise DecodeError(f"malformed {cls.TYPE} event: {e}") from e


@dataclass(frozen=True)
class DeadLetter(Message):
    """A rejected input entry, kept with the reason it was rejected."""

    TYPE: ClassVar[str] = "dead_letter"
    session: str
    entry_id: str
    reason: str
    message: str
    raw: bytes
    rejected_at: float

    @classmethod
    def decode(cls, raw: bytes) -> DeadLetter:
        obj = unpack_map(raw)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})
