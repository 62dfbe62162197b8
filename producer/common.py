"""What the sync and asyncio clients share: connection defaults, the open message, audio payloads.

The wire format itself lives in :mod:`worker.protocol`; this module only turns a caller's
arguments into it, so both clients write byte-identical messages.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.errors import SessionEndedError, SessionExistsError
from worker.protocol.connection import TLSFiles, connect
from worker.protocol.keys import Keyspace, check_session_id
from worker.protocol.messages import SessionOpen
from worker.protocol.pcm import BYTES_PER_SAMPLE, encode_pcm

#: Errors after which a command is sent again (the reply, or the request, was lost).
TRANSIENT_ERRORS = (RedisConnectionError, RedisTimeoutError)

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_KEY_PREFIX = "streamscribe"
DEFAULT_SHARDS = 4


@dataclass(frozen=True)
class ConnectionOptions:
    """Where the workers' Redis is and how its keys are laid out (must match the workers)."""

    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = DEFAULT_KEY_PREFIX
    shards: int = DEFAULT_SHARDS
    tls: TLSFiles = field(default_factory=TLSFiles)

    @classmethod
    def resolve(
        cls,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        shards: int | None = None,
        tls: TLSFiles | None = None,
    ) -> ConnectionOptions:
        """Explicit values first, then the workers' env vars (``STREAMSCRIBE_REDIS_URL``,
        ``STREAMSCRIBE_KEY_PREFIX``, ``STREAMSCRIBE_SHARDS``, ``STREAMSCRIBE_TLS_*_FILE``), then the defaults."""
        env = os.environ
        return cls(
            redis_url=redis_url or env.get("STREAMSCRIBE_REDIS_URL") or DEFAULT_REDIS_URL,
            key_prefix=key_prefix or env.get("STREAMSCRIBE_KEY_PREFIX") or DEFAULT_KEY_PREFIX,
            shards=int(shards or env.get("STREAMSCRIBE_SHARDS") or DEFAULT_SHARDS),
            tls=tls or TLSFiles.resolve(),
        )


def is_repeat(error: ResponseError) -> bool:
    """XADD with an explicit id at or below the stream's top: our earlier attempt landed."""
    return "equal or smaller" in str(error)


def same_entry(entries: list[Any], message: bytes) -> bool:
    """Whether an XRANGE of one id holds ``message``: our own earlier attempt, whose reply was lost.

    An empty range means the worker consumed the entry and trimmed it; with one writer per
    session, only an attempt of ours can have written it.
    """
    if not entries:
        return True
    fields = entries[0][1]
    return fields.get(b"m", fields.get("m")) == message


def build_open(
    session_id: str | None,
    *,
    sample_rate: int,
    encoding: str,
    channels: int,
    language: str | None,
    model: str | None,
    backend: str | None,
    min_chunk_size: float | None,
    metadata: dict[str, str] | None,
    partials: bool = True,
    tenant: str | None = None,
) -> SessionOpen:
    """The validated :class:`SessionOpen` of a new session (a random id when none is given)."""
    sid = check_session_id(session_id or uuid.uuid4().hex)
    options = (("language", language), ("model", model), ("backend", backend), ("min_chunk_size", min_chunk_size))
    asr: dict[str, Any] = {k: v for k, v in options if v is not None}
    opened = SessionOpen(
        sid, sample_rate, encoding, channels, asr, dict(metadata or {}), time.time(), partials, tenant or ""
    )
    opened.validate()
    return opened


def to_payload(audio: bytes | bytearray | memoryview | np.ndarray, encoding: str, channels: int) -> bytes:
    """One chunk's bytes in the session's encoding.

    ``audio`` is raw bytes already in ``encoding`` (interleaved), or a numpy array of shape
    ``(frames,)`` (mono) or ``(frames, channels)``: float samples in [-1, 1], or int16 samples.
    Raises ``ValueError`` for a shape or length that is not whole frames of this session.
    """
    if isinstance(audio, bytes | bytearray | memoryview):
        data = bytes(audio)
        frame_bytes = BYTES_PER_SAMPLE[encoding] * channels
        if len(data) % frame_bytes:
            raise ValueError(
                f"{len(data)} bytes is not a whole number of {channels}-channel {encoding} frames ({frame_bytes} B)"
            )
        return data
    arr = np.asarray(audio)
    if arr.ndim == 1 and channels != 1:
        raise ValueError(f"a {channels}-channel session takes arrays of shape (frames, {channels}), not 1-D")
    if arr.ndim == 2 and arr.shape[1] != channels:
        raise ValueError(f"array has {arr.shape[1]} channels; the session has {channels}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"audio arrays are (frames,) or (frames, channels), not {arr.shape}")
    if arr.dtype == np.int16:
        if encoding == "pcm_s16le":
            return arr.astype("<i2").tobytes()  # exact: no round trip through float
        arr = arr.astype(np.float32) / 32768.0
    elif not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"audio arrays must be float or int16, not {arr.dtype}")
    return encode_pcm(arr, encoding)


def silence(encoding: str, frames: int, channels: int = 1) -> bytes:
    """``frames`` frames of digital silence in ``encoding`` (the code ``encode_pcm`` gives 0.0)."""
    return encode_pcm(np.zeros(frames * channels, dtype=np.float32), encoding)


def backoff_delays(retries: int, first: float, cap: float = 5.0) -> list[float]:
    """The waits between ``retries + 1`` attempts: doubling from ``first``, at most ``cap``."""
    return [min(first * 2**i, cap) for i in range(retries)]


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--redis-url``, ``--key-prefix``, ``--shards``, ``--cluster`` and the TLS files of the client subcommands."""
    parser.add_argument("--redis-url", help=f"default: $STREAMSCRIBE_REDIS_URL, else {DEFAULT_REDIS_URL}")
    parser.add_argument("--key-prefix", help=f"default: $STREAMSCRIBE_KEY_PREFIX, else {DEFAULT_KEY_PREFIX}")
    parser.add_argument("--shards", type=int, help=f"default: $STREAMSCRIBE_SHARDS, else {DEFAULT_SHARDS}")
    parser.add_argument(
        "--cluster", action=argparse.BooleanOptionalAction, default=None, help="Redis Cluster (default: detect)"
    )
    add_tls_arguments(parser)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca-file``, ``--tls-cert-file`` and ``--tls-key-file`` (for ``rediss://`` URLs)."""
    parser.add_argument(
        "--tls-ca-file", help="rediss://: the CA of the server's certificate ($STREAMSCRIBE_TLS_CA_FILE)"
    )
    parser.add_argument("--tls-cert-file", help="rediss://: a client certificate ($STREAMSCRIBE_TLS_CERT_FILE)")
    parser.add_argument("--tls-key-file", help="rediss://: the client certificate's key ($STREAMSCRIBE_TLS_KEY_FILE)")


def tls_from_args(args: argparse.Namespace) -> TLSFiles:
    return TLSFiles.resolve(args.tls_ca_file, args.tls_cert_file, args.tls_key_file)


def connect_from_args(args: argparse.Namespace) -> tuple[Any, Keyspace]:
    """A client and the key layout from :func:`add_connection_arguments`' flags (then the environment)."""
    options = ConnectionOptions.resolve(args.redis_url, args.key_prefix, args.shards, tls_from_args(args))
    return connect(options.redis_url, args.cluster, options.tls), Keyspace(options.key_prefix, options.shards)


def new_resume_token() -> str:
    """A secret that lets the producer that opened a session, and only it, resume it later."""
    return secrets.token_urlsafe(24)


def token_digest(token: str) -> str:
    """What the open key keeps of a resume token: other producers may read the key, not the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_open_status(session_id: str, status: str) -> None:
    """Refuse to reopen an ended session, or one that another producer opened and holds."""
    if status == "ended":
        raise SessionEndedError(
            f"session id {session_id!r} belongs to a session that already ended (kept for its retention); "
            "open the new call under a new id"
        )
    if status == "taken":
        raise SessionExistsError(
            f"session id {session_id!r} is a live session another producer opened; a restarted producer resumes "
            "it with the resume_token of its first open, anyone else is refused (its audio would mix into the call)"
        )


@dataclass
class GatewayStats:
    """What a gateway counts, the same for every protocol (``streamscribe_gateway_*`` metrics)."""

    connections: int = 0  # open now
    calls: int = 0  # sessions opened
    frames: int = 0  # audio frames or messages received
    refused_auth: int = 0  # upgrades refused for their credentials (signature, API key)
    refused_duplicate: int = 0  # streams that named a call another stream carries
    refused_capacity: int = 0  # connections past the cap
    malformed: int = 0  # calls ended for a malformed frame or message
