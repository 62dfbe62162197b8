"""Session-side helpers of ``benchmarks/live_load.py``: audio, real-time senders, readers, latency.

* :func:`load_sources` decodes the evaluation calls (``benchmarks.calls``) or given files.
* :func:`run_sessions` streams every :class:`Session` at wall-clock pace from a few sender
  threads (each keeps a heap of due chunks, so hundreds of sessions need no thread each) and
  reads each one back in its own consumer thread, stamping every segment and partial on arrival.
* :func:`summarise` turns the stamps into word latencies (see :func:`word_latencies`).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from producer.client import Producer, SessionWriter
from producer.common import to_payload
from producer.consumer import TranscriptConsumer

RATE = 16000
#: A partial "covers" a committed word's end when its own end reaches within this many seconds
#: of it (word timestamps move a little between hypotheses).
COVER_TOLERANCE_SEC = 0.1
SENDER_THREADS = 8

Word = tuple[float, float, str]  # start, end, text


@dataclass
class Source:
    """One call's audio, 16 kHz mono float32, and its chunk payloads per chunk size."""

    name: str
    audio: np.ndarray
    _chunks: dict[int, list[bytes]] = field(default_factory=dict, repr=False)

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / RATE

    def payloads(self, chunk_ms: int) -> list[bytes]:
        if chunk_ms not in self._chunks:
            n = chunk_samples(chunk_ms)
            self._chunks[chunk_ms] = [
                to_payload(self.audio[i : i + n], "pcm_s16le", 1) for i in range(0, self.audio.shape[0], n)
            ]
        return self._chunks[chunk_ms]


@dataclass
class Session:
    """One live session: what was sent when, and what came back when (``time.time()`` stamps)."""

    sid: str
    source: Source
    offset: float  # start, seconds after the first session's
    send_times: list[float] = field(default_factory=list)  # per chunk, just before its XADD
    send_lags: list[float] = field(default_factory=list)  # per chunk, how late the sender was
    segments: list[tuple[float, int, list[Word]]] = field(default_factory=list)  # arrival, channel, words
    partials: list[tuple[float, int, float]] = field(default_factory=list)  # arrival, channel, end
    ended: str | None = None
    problems: list[str] = field(default_factory=list)


def chunk_samples(chunk_ms: int) -> int:
    return max(1, RATE * chunk_ms // 1000)


def load_sources(paths: list[str], subset: str, seconds: float | None) -> list[Source]:
    """The files given, else the calls of ``benchmarks.calls``' ``subset``; each cut to ``seconds``."""
    from worker.asr.audio import decode_file

    if paths:
        items = [(Path(p).stem, Path(p)) for p in paths]
    else:
        try:
            from benchmarks.calls import build_calls
        except ImportError as e:
            raise SystemExit(f"benchmarks.calls is not available ({e}); pass --audio FILE") from e
        try:
            calls = build_calls(subset)
        except RuntimeError as e:  # EspeakNotFoundError
            raise SystemExit(f"cannot build the calls ({e}); pass --audio FILE") from e
        items = [(str(getattr(c, "name", Path(c.mix16k).stem)), Path(c.mix16k)) for c in calls]
    cut = None if seconds is None else int(seconds * RATE)
    sources = [Source(name, decode_file(path, RATE)[:cut]) for name, path in items]
    if not sources or min(s.audio.shape[0] for s in sources) == 0:
        raise SystemExit("no audio to stream")
    return sources


# -- streaming and reading -----------------------------------------------------------------------


def run_sessions(
    producer: Producer,
    consumer: TranscriptConsumer,
    sessions: list[Session],
    chunk_ms: int,
    partials: bool,
    drain_timeout: float,
) -> None:
    """Stream every session in real time and read it back; returns when every reader is done."""
    stop = threading.Event()
    failures: list[BaseException] = []
    readers = [
        threading.Thread(target=_read, args=(consumer, s, partials, drain_timeout), name=f"read-{i}", daemon=True)
        for i, s in enumerate(sessions)
    ]
    for t in readers:
        t.start()
    base = time.monotonic() + 0.5
    count = min(SENDER_THREADS, len(sessions))
    senders = [
        threading.Thread(
            target=_send,
            args=(producer, sessions[k::count], chunk_ms, base, stop, failures),
            name=f"send-{k}",
            daemon=True,
        )
        for k in range(count)
    ]
    for t in senders:
        t.start()
    try:
        for t in senders:
            while t.is_alive():
                t.join(0.2)  # a timeout keeps Ctrl-C responsive
        if failures:
            raise RuntimeError(f"sending failed: {failures[0]!r}") from failures[0]
        for t in readers:
            while t.is_alive():
                t.join(0.2)
    except BaseException:
        stop.set()  # senders end their open sessions with reason "error"
        raise


def _send(
    producer: Producer,
    sessions: list[Session],
    chunk_ms: int,
    base: float,
    stop: threading.Event,
    failures: list[BaseException],
) -> None:
    """Send ``sessions``' chunks in due order: chunk k once its last sample has been spoken."""
    step = chunk_ms / 1000
    heap = [(base + s.offset, i, -1) for i, s in enumerate(sessions)]  # chunk -1: open the session
    heapq.heapify(heap)
    writers: dict[int, SessionWriter] = {}
    try:
        while heap and not stop.is_set():
            due, i, k = heapq.heappop(heap)
            if stop.wait(max(0.0, due - time.monotonic())):
                break
            s, payloads = sessions[i], sessions[i].source.payloads(chunk_ms)
            if k < 0:
                writers[i] = producer.open(s.sid)
            else:
                s.send_lags.append(time.monotonic() - due)
                s.send_times.append(time.time())
                writers[i].send(payloads[k])
            if k + 1 < len(payloads):
                heapq.heappush(heap, (base + s.offset + (k + 2) * step, i, k + 1))
            else:
                writers.pop(i).close()
    except BaseException as e:
        failures.append(e)
        stop.set()
    finally:
        for writer in writers.values():
            try:
                writer.close("error")
            except Exception as e:  # the worker then ends it after its stall timeout
                failures.append(e)


def _read(consumer: TranscriptConsumer, s: Session, partials: bool, idle_timeout: float) -> None:
    kwargs: dict[str, Any] = {"partials": True} if partials else {}
    try:
        for event in consumer.session_events(s.sid, idle_timeout=idle_timeout, **kwargs):
            _record(s, event, time.time())
    except Exception as e:
        s.problems.append(f"{s.sid}: reading failed: {e!r}")
    if s.ended is None:
        s.problems.append(f"{s.sid}: no session_ended within {idle_timeout:.0f} s of quiet")


def _record(s: Session, event: Any, now: float) -> None:
    kind = getattr(event, "TYPE", "")
    if kind == "segment":
        words = [w for w in (word_span(x) for x in event.words or []) if w is not None]
        if not words and event.text.strip():  # no word timings: the segment as one word
            words = [(float(event.start), float(event.end), event.text.strip())]
        s.segments.append((now, int(event.channel), words))
    elif kind == "partial":
        end = partial_end(event)
        if event.text.strip() and end is not None:  # an empty partial only clears the previous one
            s.partials.append((now, int(event.channel), end))
    elif kind == "error":
        s.problems.append(f"{s.sid}: error {event.code}: {event.message}")
    elif kind == "session_ended":
        s.ended = str(event.reason)


def word_span(word: Any) -> Word | None:
    """``[start, end, word, probability]`` or ``{start, end, word, confidence}`` -> (start, end, text)."""
    try:
        if isinstance(word, dict):
            return float(word["start"]), float(word["end"]), str(word.get("word", word.get("text", "")))
        return float(word[0]), float(word[1]), str(word[2])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def partial_end(event: Any) -> float | None:
    ends = [w[1] for w in (word_span(x) for x in getattr(event, "words", None) or []) if w is not None]
    end = float(getattr(event, "end", 0.0) or 0.0)
    if ends:
        end = max(end, *ends)
    return end if end > 0 else None


# -- latency -------------------------------------------------------------------------------------


class _FirstCover:
    """Per channel: the arrival of the first partial whose end reached a given audio time."""

    def __init__(self, partials: list[tuple[float, int, float]]) -> None:
        self._by_channel: dict[int, tuple[list[float], list[float]]] = {}
        for arrival, channel, end in partials:  # in arrival order
            arrivals, reach = self._by_channel.setdefault(channel, ([], []))
            arrivals.append(arrival)
            reach.append(max(end, reach[-1]) if reach else end)  # running max: sorted, for bisect

    def arrival(self, channel: int, end: float) -> float | None:
        arrivals, reach = self._by_channel.get(channel, ([], []))
        i = bisect_left(reach, end - COVER_TOLERANCE_SEC)
        return arrivals[i] if i < len(arrivals) else None


def word_latencies(s: Session, chunk_ms: int) -> list[tuple[float, str, float, float]]:
    """(word end, word, commit latency, first-text latency) of every committed word of ``s``."""
    if not s.send_times:
        return []
    n = chunk_samples(chunk_ms)
    cover = _FirstCover(s.partials)
    out = []
    for arrival, channel, words in s.segments:
        for _start, end, text in words:
            k = min(max(0, math.ceil(end * RATE) - 1) // n, len(s.send_times) - 1)
            sent = s.send_times[k]
            first = cover.arrival(channel, end)
            first_text = arrival if first is None else min(first, arrival)
            out.append((end, text, arrival - sent, first_text - sent))
    return out


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None, "mean": None}
    a = np.asarray(values)
    return {
        "count": len(values),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


def _sent_sec(s: Session, chunk_ms: int) -> float:
    return min(len(s.send_times) * chunk_ms / 1000, s.source.seconds)


def summarise(sessions: list[Session], partials: bool, chunk_ms: int) -> dict[str, Any]:
    """Every figure of one run, with per-session summaries and every word's latencies."""
    commit: list[float] = []
    first: list[float] = []
    per_session = []
    for s in sessions:
        lat = word_latencies(s, chunk_ms)
        commit += [c for _e, _w, c, _f in lat]
        first += [f for _e, _w, _c, f in lat]
        per_session.append(
            {
                "session": s.sid,
                "source": s.source.name,
                "offset_sec": round(s.offset, 3),
                "ended": s.ended,
                "audio_sec": _sent_sec(s, chunk_ms),
                "segments": len(s.segments),
                "partials": len(s.partials),
                "commit": _stats([c for _e, _w, c, _f in lat]),
                "words": [[round(e, 3), w, round(c, 3), round(f, 3)] for e, w, c, f in lat],
            }
        )
    lags = [lag for s in sessions for lag in s.send_lags]
    return {
        "completed": sum(s.ended == "completed" for s in sessions),
        "words": len(commit),
        "audio_sec": sum(_sent_sec(s, chunk_ms) for s in sessions),
        "partials": partials and any(s.partials for s in sessions),
        "partial_events": sum(len(s.partials) for s in sessions),
        "latency": {"commit": _stats(commit), "first_text": _stats(first)},
        "send_lag_p95": float(np.percentile(lags, 95)) if lags else None,
        "problems": [p for s in sessions for p in s.problems],
        "per_session": per_session,
    }
