"""Synchronous producer: open a session, push audio chunks, end it.

Chunks are written with the stream id ``<seq+1>-0``, so a retry after a lost reply is refused
by Redis itself and nothing is duplicated; connection errors are retried with backoff.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.protocol.keys import Keyspace, check_session_id
from worker.protocol.messages import AudioChunk, EndOfSession, SessionOpen, input_entry_id
from worker.protocol.pcm import encode_pcm
from worker.protocol.scripts import Scripts
from worker.runtime.connection import connect, text

log = logging.getLogger(__name__)

_TRANSIENT = (RedisConnectionError, RedisTimeoutError)


def _is_repeat(e: ResponseError) -> bool:
    return "equal or smaller" in str(e)


class Producer:
    """Opens sessions on a Redis (or Redis Cluster) that workers serve."""

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        *,
        key_prefix: str = "streamscribe",
        shards: int = 4,
        cluster: bool | None = None,
        client: Any = None,
        retries: int = 8,
        retry_backoff_sec: float = 0.2,
    ) -> None:
        self.keys = Keyspace(key_prefix, shards)
        self.client = client or connect(redis_url, cluster)
        self.scripts = Scripts()
        self.retries = retries
        self.retry_backoff_sec = retry_backoff_sec

    def open(
        self,
        session_id: str | None = None,
        *,
        sample_rate: int = 16000,
        encoding: str = "pcm_s16le",
        channels: int = 1,
        language: str | None = None,
        model: str | None = None,
        backend: str | None = None,
        min_chunk_size: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> SessionWriter:
        """Create the session and announce it to the workers; returns its writer."""
        sid = check_session_id(session_id or uuid.uuid4().hex)
        asr = {
            k: v
            for k, v in (
                ("language", language),
                ("model", model),
                ("backend", backend),
                ("min_chunk_size", min_chunk_size),
            )
            if v is not None
        }
        opened = SessionOpen(sid, sample_rate, encoding, channels, asr, dict(metadata or {}), time.time())
        opened.validate()
        state = self.keys.session_state(sid)
        status, announced = self.retry(
            lambda: self.scripts.call(self.client, "open_session", [state], [opened.encode(), int(time.time() * 1000)])
        )
        if text(status) == "exists" and text(announced) == "1":
            log.info("session %s exists and is announced already", sid)
        else:
            shard = self.keys.shard_of(sid)
            self.retry(lambda: self.client.xadd(self.keys.announcements(shard), {"session": sid}))
            self.retry(lambda: self.client.hset(state, "announced", "1"))
        writer = SessionWriter(self, opened)
        if text(status) == "exists":
            # a restarted producer continues the numbering where the stream ends
            last = self.retry(lambda: self.client.xrevrange(self.keys.session_input(sid), count=1))
            writer.seq = int(text(last[0][0]).split("-")[0]) if last else 0
        return writer

    def retry(self, action: Any) -> Any:
        """Run ``action``, retrying connection errors with exponential backoff."""
        delay = self.retry_backoff_sec
        for attempt in range(self.retries + 1):
            try:
                return action()
            except _TRANSIENT as e:
                if attempt == self.retries:
                    raise
                log.warning("redis unreachable (%s); retry %d in %.1f s", e, attempt + 1, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")


class SessionWriter:
    """Pushes one session's audio in order; ``seq`` numbers make every retry idempotent."""

    def __init__(self, producer: Producer, opened: SessionOpen) -> None:
        self.producer = producer
        self.opened = opened
        self.session_id = opened.session_id
        self.seq = 0
        self.closed = False
        self._input = producer.keys.session_input(opened.session_id)

    def send(self, audio: bytes | np.ndarray) -> int:
        """Append one chunk: raw bytes in the session's encoding, or float samples
        (``(frames,)`` or ``(frames, channels)``) that are encoded here. Returns its seq."""
        if self.closed:
            raise ValueError(f"session {self.session_id} is closed")
        payload = audio if isinstance(audio, bytes | bytearray) else encode_pcm(audio, self.opened.encoding)
        seq = self.seq
        self._append(AudioChunk(seq=seq, payload=bytes(payload), sent_at=time.time()).encode(), seq)
        self.seq += 1
        return seq

    def close(self, reason: str = "completed") -> None:
        """Mark the end of the audio; the worker commits the tail and ends the session."""
        if self.closed:
            return
        self._append(EndOfSession(seq=self.seq, sent_at=time.time(), reason=reason).encode(), self.seq)
        self.seq += 1
        self.closed = True

    def _append(self, message: bytes, seq: int) -> None:
        def add() -> None:
            try:
                self.producer.client.xadd(self._input, {"m": message}, id=input_entry_id(seq))
            except ResponseError as e:
                if not _is_repeat(e):
                    raise
                # our earlier attempt landed and only its reply was lost

        self.producer.retry(add)

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close("completed" if exc_type is None else "error")
