"""Run a recording through a processor as if it were live (whisper_online.py's simulation)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from worker.asr.contracts import ASRProcessor, Committed, StreamingProcessor

SimulationMode = Literal["unaware", "aware", "offline"]


@dataclass(frozen=True)
class EmittedSegment:
    """Text committed at ``emit`` seconds (audio time when unaware, wall time when aware)."""

    emit: float
    start: float
    end: float
    text: str

    def as_json_dict(self) -> dict[str, float | str]:
        return {
            "emit": round(self.emit, 3),
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
        }


def _emitted(committed: Committed, emit: float) -> EmittedSegment | None:
    if committed.start is None or committed.end is None or not committed.text.strip():
        return None
    return EmittedSegment(emit, committed.start, committed.end, committed.text.strip())


def simulate(
    processor: ASRProcessor,
    audio: np.ndarray,
    sample_rate: int,
    *,
    chunk_sec: float = 1.0,
    mode: SimulationMode = "unaware",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[EmittedSegment]:
    """Yield committed segments while feeding ``audio`` to ``processor``.

    * ``unaware``: chunks of ``chunk_sec`` (a producer's frames) go in back to back, and after each
      the processor runs while it is due, as the worker drives it (a processor that does not say
      when it is due runs once per chunk); ``emit`` is the audio time at which the text was
      committed, so the result does not depend on the machine's speed.
    * ``aware``: audio arrives at wall-clock pace and each iteration takes whatever arrived
      while the last one ran, as a live call would; ``emit`` is the wall time since start.
    * ``offline``: all audio at once, one iteration and the tail; a quality reference.
    """
    total = audio.shape[0]
    step = max(1, round(chunk_sec * sample_rate))
    if mode == "offline":
        processor.insert_audio_chunk(audio)
        for committed in (processor.process_iter(), processor.finish()):
            seg = _emitted(committed, total / sample_rate)
            if seg:
                yield seg
        return

    fed = 0
    started = clock()
    while fed < total:
        if mode == "aware":
            now = clock() - started
            available = min(total, int(now * sample_rate))
            if available - fed < step and available < total:
                sleep((fed + step - available) / sample_rate)
                continue
            upto = available
        else:
            upto = min(total, fed + step)
        processor.insert_audio_chunk(audio[fed:upto])
        fed = upto
        # as the worker drives it: while due (a processor that does not say runs at every chunk)
        streaming = isinstance(processor, StreamingProcessor)
        while not streaming or processor.is_due():
            committed = processor.process_iter()
            emit = (clock() - started) if mode == "aware" else fed / sample_rate
            seg = _emitted(committed, emit)
            if seg:
                yield seg
            if not streaming:
                break
    emit = (clock() - started) if mode == "aware" else total / sample_rate
    seg = _emitted(processor.finish(), emit)
    if seg:
        yield seg
