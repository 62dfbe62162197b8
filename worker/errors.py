"""The one exception hierarchy of streamscribe.

Every error that streamscribe raises on purpose derives from :class:`StreamscribeError`, so a
caller can catch all of them with one clause and still tell the cases apart.
"""

from __future__ import annotations


class StreamscribeError(Exception):
    """Root of every error that streamscribe raises on purpose."""


class ConfigError(StreamscribeError):
    """A setting or an ASR option has a value that cannot be used."""


class BackendUnavailableError(StreamscribeError):
    """A backend's optional dependency is not installed."""


class UnknownBackendError(ConfigError):
    """No loader is registered under the requested backend name."""


class TransientBackendError(StreamscribeError):
    """The backend failed for a reason that may pass, or not happen on another worker (device
    memory exhausted). A backend raises it to have the session handed over instead of ended."""


def is_transient(error: BaseException) -> bool:
    """A failure worth another attempt: :class:`TransientBackendError`, host or device memory
    exhausted (``MemoryError``; torch's ``CUDA out of memory``; CTranslate2's ``CUDA failed with
    error out of memory``; cuBLAS failing to allocate)."""
    if isinstance(error, TransientBackendError | MemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        marker in message for marker in ("out of memory", "cublas_status_alloc_failed", "cudaerrormemoryallocation")
    )


class ModelIntegrityError(StreamscribeError):
    """A model file on disk does not match its published checksum."""


class AudioDecodeError(StreamscribeError):
    """Audio could not be read or decoded."""


class DecodeError(StreamscribeError):
    """A wire message could not be decoded (malformed msgpack, wrong version, wrong types)."""


class InvalidAudioError(StreamscribeError):
    """An audio payload decoded, but its samples are unusable (odd length, NaN, too large)."""


class SnapshotError(StreamscribeError):
    """A processor snapshot is malformed or was taken by an incompatible version."""


class SessionEndedError(StreamscribeError):
    """A session id was opened again after its session ended (its keys are kept for retention)."""


class SessionExistsError(StreamscribeError):
    """An open found the session id taken by a live session that another producer opened (no resume token)."""
