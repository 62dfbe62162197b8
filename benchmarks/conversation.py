"""The channels of one call streamed together, as the worker's session drives them.

A multichannel session feeds each chunk to every channel's processor, plans the calls of the
channels that are due, completes them in channel order, and hands each channel's committed words
to the others (``ConversationalProcessor.hear``; the faster-whisper processor prompts its decodes
with them: ``conversation_prompt``). Streaming each channel on its own would miss that: here the
order is the session's, so a channel hears the others' words from the iterations before its
decode, never from the same one.

Without ``conversation_prompt`` the channels do not interact, and each gets exactly the text it
would get streamed alone (:func:`benchmarks.long_calls.stream_commits`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from worker.asr.config import ASRConfig
from worker.asr.contracts import (
    ASRProcessor,
    BatchableProcessor,
    Committed,
    StreamingProcessor,
    TranscribeRequest,
    share_committed,
)
from worker.asr.online import OnlineASRProcessor
from worker.backends.registry import load_processor


@dataclass
class ChannelRun:
    """One channel's committed text, per-word commit lags (audio time) and processing seconds."""

    texts: list[str] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    busy: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(self.texts)

    def take(self, committed: Committed, emit: float) -> None:
        """Keep a commit made with ``emit`` seconds of audio fed: its text and each word's lag."""
        if not committed.text.strip():
            return
        self.texts.append(committed.text.strip())
        if committed.words:
            self.lags.extend(emit - w.end for w in committed.words)
        elif committed.end is not None:  # a backend without words: the segment's lag for each word
            self.lags.extend([emit - committed.end] * len(committed.text.split()))


def due_point(processor: ASRProcessor) -> str | None:
    """The processing point a processor is due at, as the worker's loop reads it (``"chunk"``
    for one that does not say, which runs at every chunk), or ``None``."""
    if isinstance(processor, OnlineASRProcessor):
        return processor.due_point()
    if isinstance(processor, StreamingProcessor):
        return "chunk" if processor.is_due() else None
    return "chunk"


def stream_channels(
    processors: list[ASRProcessor], audios: list[np.ndarray], rate: int, chunk_sec: float = 0.1
) -> Iterator[tuple[int, Committed, float, float]]:
    """Feed the channels in lockstep; yield (channel, committed, audio seconds fed, busy seconds).

    After each chunk, while a channel is due: every due channel's request is prepared, then each
    is decoded and completed in channel order (one at a time, so a channel's words do not depend
    on its batch-mates), and each commit is shared with the other channels.
    """
    for p in processors:
        p.init()
    total = min(a.shape[0] for a in audios)
    step = max(1, round(chunk_sec * rate))
    for fed in range(0, total, step):
        for p, audio in zip(processors, audios, strict=True):
            p.insert_audio_chunk(audio[fed : fed + step])
        emit = min(total, fed + step) / rate
        while due := [c for c, p in enumerate(processors) if due_point(p) is not None]:
            # as LiveSession._calls plans them: a skipped or unbatchable step completes at once
            planned: list[tuple[int, BatchableProcessor, TranscribeRequest, float]] = []
            for c in due:
                p = processors[c]
                started = time.perf_counter()
                if not isinstance(p, BatchableProcessor):
                    committed = p.process_iter()
                elif (request := p.prepare_iter()) is not None:
                    planned.append((c, p, request, time.perf_counter() - started))
                    continue
                else:
                    committed = p.complete_iter(None)
                yield c, committed, emit, time.perf_counter() - started
                share_committed(processors, c, committed.words)
            for c, p, request, spent in planned:
                started = time.perf_counter()
                committed = p.complete_iter(p.asr.transcribe_requests([request])[0])
                yield c, committed, emit, spent + time.perf_counter() - started
                share_committed(processors, c, committed.words)
    for c, p in enumerate(processors):
        started = time.perf_counter()
        committed = p.finish()
        yield c, committed, total / rate, time.perf_counter() - started
        share_committed(processors, c, committed.words)


def run_channels(config: ASRConfig, audios: list[np.ndarray], rate: int, chunk_sec: float = 0.1) -> list[ChannelRun]:
    """Stream a call's channels together (:func:`stream_channels`); one :class:`ChannelRun` each.

    A word's lag is its own: the audio fed when it was committed minus its end.
    """
    processors = [load_processor(config.for_channels(len(audios)))[0] for _ in audios]
    runs = [ChannelRun() for _ in audios]
    for channel, committed, emit, busy in stream_channels(processors, audios, rate, chunk_sec):
        runs[channel].busy += busy
        runs[channel].take(committed, emit)
    return runs
