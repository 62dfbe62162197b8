"""Synchronous producer: open a session, push audio chunks, end it.

Chunks are written with the stream id ``<seq+1>-0``, so a retry after a lost reply is refused
by Redis itself and nothing is duplicated; connection errors are retried with backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from producer import protocol
from producer.common import (
    TRANSIENT_ERRORS,
    ConnectionOptions,
    backoff_delays,
    build_open,
    new_resume_token,
    to_payload,
)
from worker.protocol.connection import TLSFiles, connect
from worker.protocol.keys import Keyspace
from worker.protocol.messages import AudioChunk, EndOfSession, SessionOpen
from worker.protocol.scripts import Scripts

log = logging.getLogger(__name__)

T = TypeVar("T")


class Producer:
    """Opens sessions on a Redis (or Redis Cluster) that workers serve.

    ``redis_url``, ``key_prefix`` and ``shards`` default to the workers' environment variables
    (``STREAMSCRIBE_REDIS_URL`` ...), then to ``redis://localhost:6379/0``, ``streamscribe``, 4.
    The client is thread-safe: several threads may each write their own sessions.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        key_prefix: str | None = None,
        shards: int | None = None,
        cluster: bool | None = None,
        client: Any = None,
        tls: TLSFiles | None = None,
        retries: int = 8,
        retry_backoff_sec: float = 0.2,
        retry_max_backoff_sec: float = 5.0,
    ) -> None:
        options = ConnectionOptions.resolve(redis_url, key_prefix, shards, tls)
        self.keys = Keyspace(options.key_prefix, options.shards)
        self.client = client or connect(options.redis_url, cluster, options.tls)
        self.scripts = Scripts()
        self.retries = retries
        self.retry_backoff_sec = retry_backoff_sec
        self.retry_max_backoff_sec = retry_max_backoff_sec

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
        partials: bool = True,
        tenant: str | None = None,
        resume_token: str | None = None,
    ) -> SessionWriter:
        """Create the session and announce it to the workers; returns its writer.

        The writer's ``resume_token`` is the session's secret: a restarted producer passes it as
        ``resume_token`` to resume the session, and its chunk numbering continues where the input
        stream ends. Anyone else's open of a live id is refused (:class:`SessionExistsError`), an
        ended one's too (:class:`SessionEndedError`), so a second stream that names a live call
        reaches no session.
        """
        opened = build_open(
            session_id,
            sample_rate=sample_rate,
            encoding=encoding,
            channels=channels,
            language=language,
            model=model,
            backend=backend,
            min_chunk_size=min_chunk_size,
            metadata=metadata,
            partials=partials,
            tenant=tenant,
        )
        token = resume_token or new_resume_token()
        writer = SessionWriter(self, opened, token)
        writer.seq = self.run(protocol.open_session(self.keys, opened, token))
        return writer

    def run(self, steps: protocol.Steps[T]) -> T:
        """Run one operation of :mod:`producer.protocol`, retrying connection errors per command."""
        return protocol.drive(steps, lambda step: self.retry(lambda: self._execute(step)))

    def _execute(self, step: protocol.Step) -> Any:
        if isinstance(step, protocol.RunScript):
            return self.scripts.call(self.client, step.name, step.keys, step.args)
        return step.issue(self.client)

    def retry(self, action: Callable[[], T]) -> T:
        """Run ``action``, retrying connection errors with exponential backoff."""
        for delay in [*backoff_delays(self.retries, self.retry_backoff_sec, self.retry_max_backoff_sec), None]:
            try:
                return action()
            except TRANSIENT_ERRORS as e:
                if delay is None:
                    raise
                log.warning("redis unreachable (%s); retrying in %.1f s", e, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class SessionWriter:
    """Pushes one session's audio in order; ``seq`` numbers make every retry idempotent."""

    def __init__(self, producer: Producer, opened: SessionOpen, resume_token: str) -> None:
        self.producer = producer
        self.opened = opened
        #: the session's secret: ``Producer.open(session_id, resume_token=...)`` resumes it
        self.resume_token = resume_token
        self.session_id = opened.session_id
        self.seq = 0
        self.closed = False
        self._input = producer.keys.session_input(opened.session_id)

    def send(self, audio: bytes | bytearray | np.ndarray) -> int:
        """Append one chunk: raw bytes in the session's encoding, or samples (float in [-1, 1] or
        int16; ``(frames,)`` or ``(frames, channels)``) that are encoded here. Returns its seq."""
        if self.closed:
            raise ValueError(f"session {self.session_id} is closed")
        payload = to_payload(audio, self.opened.encoding, self.opened.channels)
        sent_at = time.time()
        seq = self.producer.run(
            protocol.append_next(self._input, self.seq, lambda s: AudioChunk(s, payload, sent_at).encode())
        )
        self.seq = seq + 1
        return seq

    def close(self, reason: str = "completed") -> None:
        """Mark the end of the audio; the worker commits the tail and ends the session."""
        if self.closed:
            return
        sent_at = time.time()
        seq = self.producer.run(
            protocol.append_next(self._input, self.seq, lambda s: EndOfSession(s, sent_at, reason).encode())
        )
        self.seq = seq + 1
        self.closed = True

    def append(self, seq: int, message: bytes) -> bool:
        """XADD one encoded input message as entry ``<seq+1>-0`` (see :func:`producer.protocol.append`)."""
        return self.producer.run(protocol.append(self._input, seq, message))

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close("completed" if exc_type is None else "error")
