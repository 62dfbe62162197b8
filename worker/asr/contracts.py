"""The extension contracts of the custom-ASR integration guide, typed (README: "Adding a custom backend").

* :class:`ASRBase` is the model contract: a backend transcribes a 16 kHz float32 buffer and
  exposes word timestamps and segment ends of its result.
* :class:`ASRProcessor` is the real-time wrapper contract that the worker drives. Beyond the
  guide it can :meth:`~ASRProcessor.snapshot` and :meth:`~ASRProcessor.restore` itself, which
  is what lets another worker resume a call after a crash.
* :class:`ModelLoader` turns an :class:`~worker.asr.config.ASRConfig` into a processor.

A backend written for the guide (subclass ``ASRBase``, wrap it in ``OnlineASRProcessor``,
register a loader) plugs in unchanged; see ``worker.backends.registry`` for registration.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from worker.asr.config import ASRConfig


class Word(NamedTuple):
    """One recognised word with absolute times in seconds.

    Backends may return plain ``(start, end, text)`` triples as the guide says; the processor
    turns them into ``Word`` with ``probability`` 1.0.
    """

    start: float
    end: float
    text: str
    probability: float = 1.0


@dataclass(frozen=True)
class Committed:
    """Text committed by one processor step.

    It unpacks like the guide's ``(beg, end, text)`` triple, so ``b, e, t = proc.process_iter()``
    keeps working; ``start`` and ``end`` are ``None`` when nothing was committed.
    """

    start: float | None
    end: float | None
    text: str
    words: tuple[Word, ...] = field(default=())
    #: The text closes a voiced stretch that a pause follows (the speaker stopped).
    utterance_end: bool = False

    def __iter__(self) -> Iterator[Any]:
        yield self.start
        yield self.end
        yield self.text

    @property
    def empty(self) -> bool:
        return not self.words and not self.text


@dataclass(frozen=True)
class TranscribeRequest:
    """One transcribe call, prepared by a processor so that the worker can batch many of them."""

    audio: np.ndarray
    init_prompt: str = ""
    #: The decode that closes a voiced stretch: its whole hypothesis is committed, so a backend
    #: may spend more on it (faster-whisper: ``final_beam_size``).
    final: bool = False
    #: Text already committed for the start of ``audio``, given only to a backend whose
    #: ``continues_prefix`` is true: it decodes the audio as a continuation of this text and
    #: returns only the words after it.
    prefix: str = ""
    #: The worker is far short of compute (:attr:`EconomyLevel.CHEAP_DECODES`): a backend may
    #: decode this request more cheaply (faster-whisper: ``economy_beam_size`` for a chunk decode,
    #: ``economy_window_padding_sec`` for every decode). A backend written to the guide ignores it.
    economy: bool = False


class ASRBase:
    """Base class of model backends (the guide's ``ASRBase``).

    Subclasses implement :meth:`transcribe`, :meth:`ts_words` and :meth:`segments_end_ts`, and
    usually :meth:`load_model`. A subclass that sets ``self.model`` itself before calling
    ``super().__init__`` (as the guide's example does) keeps its model.
    """

    #: Joins words into text. faster-whisper words carry their leading space, so it uses "".
    sep: str = " "
    #: With ``lan="auto"``, the language the last decode detected (a backend that detects sets it).
    detected_language: str | None = None

    @property
    def continues_prefix(self) -> bool:
        """The backend honours :attr:`TranscribeRequest.prefix` (returns only the words after it).

        False by default: a backend written to the guide re-transcribes the whole buffer, and the
        processor splices its words after the committed ones by their times.
        """
        return False

    def __init__(
        self,
        lan: str,
        modelsize: str | None = None,
        cache_dir: str | None = None,
        model_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.original_language = None if lan in ("auto", "", None) else lan
        self.modelsize = modelsize
        self.transcribe_kargs: dict[str, Any] = {}
        if getattr(self, "model", None) is None:
            self.model = self.load_model(modelsize, cache_dir, model_dir, **kwargs)

    def load_model(
        self,
        modelsize: str | None = None,
        cache_dir: str | None = None,
        model_dir: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Load and return the model object; the default loads nothing."""
        return None

    def transcribe(self, audio: np.ndarray, init_prompt: str = "") -> Any:
        """Transcribe a 16 kHz mono float32 buffer; the result's shape is the backend's own."""
        raise NotImplementedError

    def transcribe_batch(self, items: Sequence[tuple[np.ndarray, str]]) -> list[Any]:
        """Transcribe several ``(audio, init_prompt)`` pairs; results in the same order.

        The default loops over :meth:`transcribe`. A backend overrides it with a truly batched
        call; the worker already gathers the requests of every ready session into one call.
        """
        return [self.transcribe(audio, init_prompt=prompt) for audio, prompt in items]

    def transcribe_requests(self, requests: Sequence[TranscribeRequest]) -> list[Any]:
        """Results for the processors' requests, in order: what the worker and processors call.

        The default hands the ``(audio, prompt)`` pairs to :meth:`transcribe_batch`, so a backend
        written to the guide works unchanged; a backend that uses the rest of a request (its
        ``final`` and ``economy`` flags) overrides this.
        """
        return self.transcribe_batch([(r.audio, r.init_prompt) for r in requests])

    def batch_key(self) -> Hashable:
        """Requests of backends with equal keys may go to one :meth:`transcribe_requests` call.

        The default batches a backend with itself only, which is always safe; a backend whose
        instances share a model says which settings make their answers equal.
        """
        return (type(self), id(self))

    def take_redecodes(self) -> dict[str, int]:
        """Requests decoded again since the last call, by the guard that did it; resets the count.

        What a backend's quality guards cost (faster-whisper: a repetition loop, a copied or a
        skipping prompt): the worker exports it as ``streamscribe_redecodes_total``. None by default.
        """
        return {}

    def ts_words(self, result: Any) -> list[tuple[float, float, str]] | list[Word]:
        """Words of a result as ``(start, end, word)``, in seconds relative to the buffer."""
        raise NotImplementedError

    def segments_end_ts(self, result: Any) -> list[float]:
        """End times of the result's segments, in seconds relative to the buffer."""
        raise NotImplementedError

    def use_vad(self) -> None:
        """Turn on the backend's voice activity filter."""
        raise NotImplementedError(f"{type(self).__name__} has no voice activity filter")

    def set_translate_task(self) -> None:
        self.transcribe_kargs["task"] = "translate"


@runtime_checkable
class ASRProcessor(Protocol):
    """The real-time wrapper that the worker drives (the guide's ``ASRProcessor``)."""

    def init(self, offset: float = 0.0) -> None:
        """Reset to an empty stream whose first sample lies at ``offset`` seconds."""

    def insert_audio_chunk(self, audio: np.ndarray) -> None:
        """Append audio to the processor's buffer."""

    def process_iter(self) -> Committed:
        """Transcribe the buffer and return the newly committed text."""

    def finish(self) -> Committed:
        """Return the uncommitted tail at the end of the stream."""

    def snapshot(self) -> dict[str, Any]:
        """A msgpack-serialisable state with no audio in it."""

    def restore(self, state: dict[str, Any]) -> None:
        """Load a state taken by :meth:`snapshot` (the audio is then inserted again)."""


@runtime_checkable
class BatchableProcessor(ASRProcessor, Protocol):
    """A processor whose iteration splits around its transcribe call, so calls can be batched.

    ``process_iter()`` is ``complete_iter(asr.transcribe_batch([prepare_iter()])[0])``.
    """

    asr: ASRBase

    def prepare_iter(self) -> TranscribeRequest | None:
        """The transcribe call this iteration needs, or ``None`` when it can be skipped."""

    def complete_iter(self, result: Any) -> Committed:
        """Finish an iteration with the backend's result for :meth:`prepare_iter`'s request."""


@runtime_checkable
class StreamingProcessor(ASRProcessor, Protocol):
    """A processor that says when it is due: the worker steps it at those points only.

    Processing points must depend on the inserted audio alone (never on time or load), so a
    session restored from a checkpoint makes the same calls as one that never stopped.
    """

    @property
    def unprocessed_sec(self) -> float:
        """Seconds of inserted audio that no iteration has processed yet."""

    @property
    def buffer_end(self) -> int:
        """Absolute sample index (at the processor's input rate) one past the last inserted sample."""

    def is_due(self) -> bool:
        """An iteration should run now."""


@runtime_checkable
class DeferrableProcessor(Protocol):
    """A processor whose chunk iterations a worker that has fallen behind may merge.

    A worker with a backlog feeds such a processor more audio before stepping it, so one decode
    covers several chunks' worth: the decode of a buffer costs about the same whatever share of it
    is new, so merging is how a worker catches up. Only a plain chunk point may be merged; a point
    that closes something (an utterance end, a pause) is taken where it falls.
    """

    def can_defer(self, step_sec: float) -> bool:
        """The due iteration may wait for more audio, up to ``step_sec`` of unprocessed audio in all."""


class EconomyLevel(IntEnum):
    """How much of its optional cost a loaded worker's processors drop, in two steps."""

    #: Every decode as configured.
    OFF = 0
    #: Cuts at utterance ends keep no turn context: shorter buffers (``economy_utilisation``).
    NO_CONTEXT = 1
    #: And every request is marked :attr:`TranscribeRequest.economy`, so the backend decodes it
    #: more cheaply (``economy_decode_utilisation``).
    CHEAP_DECODES = 2


@runtime_checkable
class EconomicalProcessor(Protocol):
    """A processor with costs it may drop while its worker is short of compute.

    A worker whose recent utilisation or backlog passes an economy threshold moves every session
    to that :class:`EconomyLevel`, and back once the load has fallen well below it
    (``worker.runtime.capacity``), so a loaded worker keeps up with plainer decodes instead of
    falling behind with better ones. What was committed stays committed; only later decodes
    change. Like merged catch-up steps, this makes a replay after a takeover depend on the load
    it meets.
    """

    def set_economy(self, level: EconomyLevel) -> None:
        """Drop the costs of ``level`` (and restore those above it) from the next processing point on."""


@runtime_checkable
class ConversationalProcessor(Protocol):
    """A processor of one channel of a multichannel call that listens to the other channels.

    The session hands it every word another channel commits, as it commits it, in channel order
    within an iteration, so a restored session hands over the same words at the same points. The
    processor may use them (the faster-whisper processor prompts each decode with both parties'
    committed text, in time order: ``conversation_prompt``); they must be part of its snapshot.
    """

    def hear(self, words: Sequence[Word]) -> None:
        """Words another channel of the same call just committed."""


def share_committed(processors: Sequence[object], channel: int, words: Sequence[Word]) -> None:
    """What a multichannel session does with a channel's commit: every other channel's
    conversational processor hears its words, in channel order."""
    if not words:
        return
    for other, processor in enumerate(processors):
        if other != channel and isinstance(processor, ConversationalProcessor):
            processor.hear(words)


@runtime_checkable
class InterimProcessor(Protocol):
    """A processor that can show its unconfirmed hypothesis (for ``partial`` events)."""

    def partial(self) -> Committed:
        """Text heard but not committed yet (never committed as such); empty when all is committed."""


@runtime_checkable
class ModelLoader(Protocol):
    """Creates a processor for a configuration (the guide's ``ModelLoader``).

    ``metadata`` is free-form; the worker reads ``sample_rate`` (the rate the processor takes, default
    16000: audio at another session rate is resampled per chunk before it is inserted).
    """

    def load(self, config: ASRConfig) -> tuple[ASRProcessor, dict[str, Any]]: ...
