"""asyncio producer: the same protocol as :mod:`producer.client`, over ``redis.asyncio``.

Chunks go in as entry ``<seq+1>-0`` of the session's input stream. When a connection breaks
after the server ran an XADD but before its reply arrived, the retry's XADD is refused with
"equal or smaller than the target stream top item": that refusal means the chunk is in, so the
writer moves on. Nothing is duplicated, and since ``seq`` only advances after a confirmed
append, nothing is lost either.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from producer import protocol
from producer.common import (
    TRANSIENT_ERRORS,
    ConnectionOptions,
    backoff_delays,
    build_open,
    new_resume_token,
    to_payload,
)
from worker.protocol.connection import TLSFiles
from worker.protocol.keys import Keyspace
from worker.protocol.messages import AudioChunk, EndOfSession, SessionOpen
from worker.protocol.scripts import Scripts

log = logging.getLogger(__name__)

T = TypeVar("T")


async def connect_async(url: str, cluster: bool | None = None, tls: TLSFiles | None = None, **kwargs: Any) -> Any:
    """A ``redis.asyncio.Redis``, or a ``RedisCluster`` when the server runs in cluster mode (TLS as ``connect``)."""
    secure = (tls or TLSFiles()).options(url)
    options = {"socket_timeout": 30, "socket_connect_timeout": 5, **secure, **kwargs}
    if cluster is None:
        probe = aioredis.Redis.from_url(url, socket_timeout=5, **secure)
        try:
            cluster = bool((await probe.info("cluster")).get("cluster_enabled"))
        finally:
            await probe.aclose()
    if cluster:
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


class AsyncProducer:
    """Opens sessions; create it with ``await AsyncProducer.connect(url)`` (or pass ``client``).

    One producer serves any number of concurrent sessions (tasks) of one event loop.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str | None = None,
        shards: int | None = None,
        retries: int = 8,
        retry_backoff_sec: float = 0.2,
        retry_max_backoff_sec: float = 5.0,
    ) -> None:
        options = ConnectionOptions.resolve(None, key_prefix, shards)
        self.keys = Keyspace(options.key_prefix, options.shards)
        self.client = client
        self.scripts = Scripts()
        self.retries = retries
        self.retry_backoff_sec = retry_backoff_sec
        self.retry_max_backoff_sec = retry_max_backoff_sec

    @classmethod
    async def connect(
        cls,
        redis_url: str | None = None,
        *,
        key_prefix: str | None = None,
        shards: int | None = None,
        cluster: bool | None = None,
        tls: TLSFiles | None = None,
        **kwargs: Any,
    ) -> AsyncProducer:
        """Connect to ``redis_url`` (default: ``STREAMSCRIBE_REDIS_URL``, then localhost)."""
        options = ConnectionOptions.resolve(redis_url, key_prefix, shards, tls)
        client = await connect_async(options.redis_url, cluster, options.tls)
        return cls(client, key_prefix=options.key_prefix, shards=options.shards, **kwargs)

    async def open(
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
    ) -> AsyncSessionWriter:
        """Create the session and announce it; ``resume_token`` resumes one (see :meth:`Producer.open`)."""
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
        writer = AsyncSessionWriter(self, opened, token)
        writer.seq = await self.run(protocol.open_session(self.keys, opened, token))
        return writer

    async def run(self, steps: protocol.Steps[T]) -> T:
        """Run one operation of :mod:`producer.protocol` (as :func:`producer.protocol.drive` does, awaiting)."""
        reply: Any = None
        refused: ResponseError | None = None
        while True:
            try:
                step = steps.send(reply) if refused is None else steps.throw(refused)
            except StopIteration as done:
                return done.value
            try:
                reply, refused = await self.retry(functools.partial(self._execute, step)), None
            except ResponseError as e:
                reply, refused = None, e

    async def _execute(self, step: protocol.Step) -> Any:
        if isinstance(step, protocol.RunScript):
            return await self._script(step.name, step.keys, step.args)
        return await step.issue(self.client)

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self.scripts.by_name[name]
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # EVAL runs it and caches it, on whichever node owns the keys' slot
            return await self.client.eval(script.source, len(keys), *keys, *args)

    async def retry(self, action: Callable[[], Awaitable[T]]) -> T:
        """Await ``action()``, calling it again after connection errors, with exponential backoff."""
        for delay in [*backoff_delays(self.retries, self.retry_backoff_sec, self.retry_max_backoff_sec), None]:
            try:
                return await action()
            except TRANSIENT_ERRORS as e:
                if delay is None:
                    raise
                log.warning("redis unreachable (%s); retrying in %.1f s", e, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


class AsyncSessionWriter:
    """Pushes one session's audio in order. Not for concurrent ``send`` calls on one writer:
    the order of chunks is the order of the awaited sends."""

    def __init__(self, producer: AsyncProducer, opened: SessionOpen, resume_token: str) -> None:
        self.producer = producer
        self.opened = opened
        #: the session's secret: ``AsyncProducer.open(session_id, resume_token=...)`` resumes it
        self.resume_token = resume_token
        self.session_id = opened.session_id
        self.seq = 0
        self.closed = False
        self._input = producer.keys.session_input(opened.session_id)

    async def send(self, audio: bytes | bytearray | np.ndarray) -> int:
        """Append one chunk (bytes in the session's encoding, or float / int16 samples). Returns its seq."""
        if self.closed:
            raise ValueError(f"session {self.session_id} is closed")
        payload = to_payload(audio, self.opened.encoding, self.opened.channels)
        sent_at = time.time()
        seq = await self.producer.run(
            protocol.append_next(self._input, self.seq, lambda s: AudioChunk(s, payload, sent_at).encode())
        )
        self.seq = seq + 1
        return seq

    async def close(self, reason: str = "completed") -> None:
        """Mark the end of the audio; the worker commits the tail and ends the session."""
        if self.closed:
            return
        sent_at = time.time()
        seq = await self.producer.run(
            protocol.append_next(self._input, self.seq, lambda s: EndOfSession(s, sent_at, reason).encode())
        )
        self.seq = seq + 1
        self.closed = True

    async def append(self, seq: int, message: bytes) -> bool:
        """XADD one encoded input message as entry ``<seq+1>-0`` (see :func:`producer.protocol.append`)."""
        return await self.producer.run(protocol.append(self._input, seq, message))

    async def __aenter__(self) -> AsyncSessionWriter:
        return self

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        await self.close("completed" if exc_type is None else "error")
