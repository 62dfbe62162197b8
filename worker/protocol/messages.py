"""Wire messages v1: frozen dataclasses with ``encode``/``decode`` over msgpack.

Input (producers write them):
  * :class:`SessionOpen` in the session's state hash (field ``open``);
  * :class:`AudioChunk` and :class:`EndOfSession` in the session's input stream, field ``m``.
Output: the events workers write are in :mod:`worker.protocol.events`; this module has their
envelope (:class:`Message`, :func:`unpack_map`) and the dead-letter record.

Every payload is a msgpack map with ``v`` (the protocol version) and ``type``. Input messages are
version 1. Output events are version 2 (``EVENT_VERSION``): words are objects ``{start, end, word,
confidence}``, segments name their ``language``, ``session_started`` the model, backend and language.
:func:`decode_event` reads version 1 events too (words as ``[start, end, word, probability]``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar

import msgpack

from worker.errors import DecodeError

PROTOCOL_VERSION = 1
#: Version of the output events; consumers read this one and the one before it.
EVENT_VERSION = 2
EVENT_VERSIONS = (1, 2)
Encoding = Literal["pcm_s16le", "pcm_f32le", "mulaw", "alaw"]
ENCODINGS: tuple[str, ...] = ("pcm_s16le", "pcm_f32le", "mulaw", "alaw")
#: The ASR options a producer may set per session (the worker's allow-list narrows them further).
SESSION_ASR_OPTIONS = ("language", "model", "backend", "min_chunk_size")

M = TypeVar("M", bound="Message")

# Bounds of every value decoded from the wire: anything outside is rejected at decoding, so no
# later step (sequence checks, checkpoint encoding, events) ever meets a value it cannot hold.
#: Largest input ``seq``: it and the next one fit a signed 64-bit integer and a JSON number exactly.
MAX_SEQ = 2**53 - 1
#: Timestamps (``sent_at``, ``created_at``) are seconds in ``[0, MAX_TIMESTAMP]`` (until year 2242).
MAX_TIMESTAMP = float(2**33)
#: Longest end-marker ``reason``; it is echoed in ``session_ended``.
MAX_REASON_CHARS = 256
#: Largest ``open`` message, and the limits of its ``metadata`` (echoed in ``session_started``).
MAX_OPEN_BYTES = 65536
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 2048
#: Longest string ASR option (``language``, ``model``, ``backend``); the allow-lists narrow them further.
MAX_ASR_OPTION_CHARS = 256
#: Longest value shown in an error message: a hostile entry must not make its error event huge.
_SHOWN_CHARS = 64


def shown(value: Any) -> str:
    """``repr(value)``, cut to a length fit for an error message."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_map(raw: bytes, versions: tuple[int, ...] = (PROTOCOL_VERSION,)) -> dict[str, Any]:
    """msgpack bytes -> dict, or :class:`DecodeError` saying why not (``v`` must be in ``versions``)."""
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:
        raise DecodeError(f"malformed msgpack: {e}") from e
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a msgpack map, got {type(obj).__name__}")
    version = obj.get("v")
    if type(version) is not int or version not in versions:  # not True, not 1.0
        speaks = " or ".join(str(v) for v in versions)
        raise DecodeError(f"unsupported protocol version {shown(version)} (this side speaks {speaks})")
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


def _bounded_int(obj: dict[str, Any], name: str, low: int, high: int) -> int:
    value = _require(obj, name, int)
    if not low <= value <= high:
        raise DecodeError(f"{name} {shown(value)} is outside {low}..{high}")
    return value


def _timestamp(obj: dict[str, Any], name: str) -> float:
    value = _require(obj, name, float)
    if not math.isfinite(value):
        raise DecodeError(f"{name} must be finite")
    if not 0.0 <= value <= MAX_TIMESTAMP:
        raise DecodeError(f"{name} {shown(value)} is outside 0..{MAX_TIMESTAMP:.0f} s")
    return value


def _bounded_str(value: Any, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise DecodeError(f"{what} has {len(value)} characters; at most {max_chars} are allowed")
    return value


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.VERSION, "type": self.TYPE, **asdict(self)}

    def encode(self) -> bytes:
        return _pack(self.to_dict())


# -- input ----------------------------------------------------------------------------------------


#: A tenant names a key (``P:tenant:{t:<tenant>}``), so it is bounded like a session id.
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9._:@+=-]{1,64}$")
#: The tenant of sessions whose open message names none.
DEFAULT_TENANT = "default"


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
    #: Whose call this is, for the workers' per-tenant quotas; "" counts as ``DEFAULT_TENANT``.
    tenant: str = ""

    @property
    def quota_tenant(self) -> str:
        return self.tenant or DEFAULT_TENANT

    @classmethod
    def decode(cls, raw: bytes) -> SessionOpen:
        if len(raw) > MAX_OPEN_BYTES:
            raise DecodeError(f"open message of {len(raw)} bytes exceeds the cap of {MAX_OPEN_BYTES} bytes")
        obj = unpack_map(raw)
        msg = cls(
            session_id=_bounded_str(_require(obj, "session_id", str), "session_id", 128),
            sample_rate=_bounded_int(obj, "sample_rate", 8000, 192000),
            encoding=_require(obj, "encoding", str),
            channels=_bounded_int(obj, "channels", 1, 8),
            asr=_require(obj, "asr", dict),
            metadata=_require(obj, "metadata", dict),
            created_at=_timestamp(obj, "created_at"),
            # optional: opens written before partials existed have none
            partials=_require(obj, "partials", bool) if "partials" in obj else True,
            tenant=_require(obj, "tenant", str) if "tenant" in obj else "",
        )
        msg.validate()
        return msg

    def validate(self) -> None:
        if self.encoding not in ENCODINGS:
            raise DecodeError(f"unknown encoding {shown(self.encoding)}; use one of {', '.join(ENCODINGS)}")
        if not 8000 <= self.sample_rate <= 192000:
            raise DecodeError(f"sample_rate {self.sample_rate} is outside 8000..192000")
        if self.encoding in ("mulaw", "alaw") and self.sample_rate != 8000:
            raise DecodeError(f"{self.encoding} audio must be 8000 Hz, not {self.sample_rate}")
        if not 1 <= self.channels <= 8:
            raise DecodeError(f"channels {self.channels} is outside 1..8")
        if self.tenant and not TENANT_PATTERN.match(self.tenant):
            raise DecodeError(f"tenant {shown(self.tenant)}: use 1-64 characters of letters, digits and . _ : @ + = -")
        unknown = set(self.asr) - set(SESSION_ASR_OPTIONS)
        if unknown:
            raise DecodeError(
                f"unknown ASR option(s) {shown(sorted(unknown))}; a session may set {', '.join(SESSION_ASR_OPTIONS)}"
            )
        for name in ("language", "model", "backend"):
            if name in self.asr:
                _bounded_str(self.asr[name], f"ASR option {name!r}", MAX_ASR_OPTION_CHARS)
        if "min_chunk_size" in self.asr:
            size = self.asr["min_chunk_size"]
            if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size):
                raise DecodeError(f"ASR option 'min_chunk_size' must be a finite number, got {shown(size)}")
        self._validate_metadata()

    def _validate_metadata(self) -> None:
        if len(self.metadata) > MAX_METADATA_ENTRIES:
            raise DecodeError(f"metadata has {len(self.metadata)} entries; at most {MAX_METADATA_ENTRIES} are allowed")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()):
            raise DecodeError("metadata must map strings to strings")
        for key, value in self.metadata.items():
            _bounded_str(key, "a metadata key", MAX_METADATA_KEY_CHARS)
            _bounded_str(value, f"metadata {shown(key)}", MAX_METADATA_VALUE_CHARS)


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
    seq = _bounded_int(obj, "seq", 0, MAX_SEQ)
    sent_at = _timestamp(obj, "sent_at")
    if kind == AudioChunk.TYPE:
        return AudioChunk(seq=seq, payload=_require(obj, "payload", bytes), sent_at=sent_at)
    if kind == EndOfSession.TYPE:
        reason = _bounded_str(obj.get("reason", "completed"), "reason", MAX_REASON_CHARS)
        return EndOfSession(seq=seq, sent_at=sent_at, reason=reason)
    raise DecodeError(f"unknown input message type {shown(kind)}")


def input_entry_id(seq: int) -> str:
    """Stream id of an input entry: Redis itself then refuses a repeated ``seq``."""
    return f"{seq + 1}-0"


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
