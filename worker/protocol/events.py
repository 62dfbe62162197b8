"""Output events (version 2, ``EVENT_VERSION``): what workers write and consumers read.

* :class:`SegmentEvent`, :class:`SessionStarted`, :class:`SessionEnded`, :class:`ErrorEvent` in
  the session's output stream and the shard's events stream, numbered by ``seq``;
* :class:`PartialEvent` in the session's capped partials stream (not numbered, not forwarded).

Words are objects ``{start, end, word, confidence}``; segments name their ``language``,
``session_started`` the model, backend and language. :func:`decode_event` reads version 1 events
too (words as ``[start, end, word, probability]``). The envelope (msgpack map with ``v`` and
``type``) is :mod:`worker.protocol.messages`'.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple

from worker.errors import DecodeError
from worker.protocol.messages import EVENT_VERSION, EVENT_VERSIONS, Message, shown, unpack_map


class EventWord(NamedTuple):
    """One word of a segment or partial: on the wire ``{start, end, word, confidence}``.

    A tuple too, so ``w[2]`` is the word as in version 1's ``[start, end, word, probability]``.
    ``confidence`` is the model's probability of the word (0..1).
    """

    start: float
    end: float
    word: str
    confidence: float


def _event_words(raw: Any) -> list[EventWord]:
    """Words of a version 2 event (maps) or a version 1 event (arrays)."""
    if not isinstance(raw, list):
        raise DecodeError(f"words must be a list, got {type(raw).__name__}")
    words = []
    for w in raw:
        if isinstance(w, dict):
            words.append(EventWord(float(w["start"]), float(w["end"]), str(w["word"]), float(w["confidence"])))
        elif isinstance(w, (list, tuple)) and len(w) >= 3:
            words.append(EventWord(float(w[0]), float(w[1]), str(w[2]), float(w[3]) if len(w) > 3 else 1.0))
        else:
            raise DecodeError(f"a word must be a map or an array, got {shown(w)}")
    return words


@dataclass(frozen=True)
class Event(Message):
    """An output event (version 2): words are written as maps."""

    VERSION: ClassVar[int] = EVENT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if "words" in out:
            out["words"] = [EventWord(*w)._asdict() for w in out["words"]]
        return out


@dataclass(frozen=True)
class SegmentEvent(Event):
    """Committed text of one channel; ``words`` are :class:`EventWord`.

    ``utterance_end``: the segment closes a voiced stretch that at least 500 ms of silence
    follows on this channel (the speaker stopped; Deepgram's ``speech_final``). ``language``: the
    session's language, or with ``auto`` the one detected (None until it is known).
    """

    TYPE: ClassVar[str] = "segment"
    session: str
    channel: int
    seq: int
    start: float
    end: float
    text: str
    words: list[EventWord]
    emitted_at: float
    utterance_end: bool = False
    language: str | None = None


@dataclass(frozen=True)
class PartialEvent(Event):
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
    words: list[EventWord]
    emitted_at: float


@dataclass(frozen=True)
class SessionStarted(Event):
    """``model``, ``backend`` and ``language`` are what the worker runs for this session
    (``language`` may be ``auto``: segments then carry the detected one)."""

    TYPE: ClassVar[str] = "session_started"
    session: str
    seq: int
    channels: int
    sample_rate: int
    encoding: str
    metadata: dict[str, str]
    worker: str
    emitted_at: float
    model: str | None = None
    backend: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class SessionEnded(Event):
    """``reason``: the end marker's (completed by default), stalled, max_duration,
    too_many_rejections or error; ``totals``: audio_sec, segments, words, errors,
    latency_mean_sec and latency_p95_sec (commit latency; None without segments)."""

    TYPE: ClassVar[str] = "session_ended"
    session: str
    seq: int
    reason: str
    totals: dict[str, float | None]
    emitted_at: float


@dataclass(frozen=True)
class ErrorEvent(Event):
    """A problem with this session's input; ``fatal`` means the session ended because of it."""

    TYPE: ClassVar[str] = "error"
    session: str
    seq: int
    code: str
    message: str
    fatal: bool
    emitted_at: float


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls for cls in (SegmentEvent, SessionStarted, SessionEnded, ErrorEvent, PartialEvent)
}


def decode_event(raw: bytes) -> Event:
    """Decode an output event of version 1 or 2 (as consumers do)."""
    obj = unpack_map(raw, EVENT_VERSIONS)
    cls = EVENT_TYPES.get(obj.get("type", ""))
    if cls is None:
        raise DecodeError(f"unknown event type {obj.get('type')!r}")
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in obj.items() if k in names}
    try:
        if "words" in values:
            values["words"] = _event_words(values["words"])
        return cls(**values)
    except (TypeError, KeyError, ValueError) as e:
        raise DecodeError(f"malformed {cls.TYPE} event: {e!r}") from e
