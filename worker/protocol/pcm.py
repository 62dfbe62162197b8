"""The audio encodings of the wire format: decoding for workers, encoding for producers.

G.711 mu-law and A-law are expanded with 256-entry tables built from ITU-T G.711's formulas.
"""

from __future__ import annotations

import numpy as np

from worker.errors import InvalidAudioError

BYTES_PER_SAMPLE = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}


def _mulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(sign, -magnitude, magnitude) / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return (np.where(sign, magnitude, -magnitude) / 32768.0).astype(np.float32)


_MULAW = _mulaw_table()
_ALAW = _alaw_table()


def decode_pcm(payload: bytes, encoding: str, channels: int) -> np.ndarray:
    """Bytes -> float32 array of shape ``(frames, channels)`` in [-1, 1].

    Raises :class:`InvalidAudioError` for a length that is not whole frames, or non-finite
    float samples.
    """
    width = BYTES_PER_SAMPLE.get(encoding)
    if width is None:
        raise InvalidAudioError(f"unknown encoding {encoding!r}")
    frame_bytes = width * channels
    if len(payload) % frame_bytes:
        raise InvalidAudioError(
            f"{len(payload)} bytes is not a whole number of {channels}-channel {encoding} frames ({frame_bytes} bytes)"
        )
    if encoding == "pcm_s16le":
        samples = np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
    elif encoding == "pcm_f32le":
        samples = np.frombuffer(payload, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(samples)):
            raise InvalidAudioError("pcm_f32le payload holds NaN or infinite samples")
        samples = np.clip(samples, -1.0, 1.0)
    elif encoding == "mulaw":
        samples = _MULAW[np.frombuffer(payload, dtype=np.uint8)]
    else:
        samples = _ALAW[np.frombuffer(payload, dtype=np.uint8)]
    return samples.reshape(-1, channels)


def encode_pcm(audio: np.ndarray, encoding: str) -> bytes:
    """float32 ``(frames,)`` or ``(frames, channels)`` -> interleaved bytes in ``encoding``."""
    x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0).reshape(-1)
    if encoding == "pcm_s16le":
        return (np.round(x * 32767.0)).astype("<i2").tobytes()
    if encoding == "pcm_f32le":
        return x.astype("<f4").tobytes()
    if encoding in ("mulaw", "alaw"):
        table = _MULAW if encoding == "mulaw" else _ALAW
        # nearest code by value: the tables are small, and searchsorted keeps it exact
        order = np.argsort(table)
        sorted_vals = table[order]
        idx = np.clip(np.searchsorted(sorted_vals, x), 1, 255)
        left, right = sorted_vals[idx - 1], sorted_vals[idx]
        pick = np.where(np.abs(x - left) <= np.abs(x - right), idx - 1, idx)
        return order[pick].astype(np.uint8).tobytes()
    raise InvalidAudioError(f"unknown encoding {encoding!r}")
