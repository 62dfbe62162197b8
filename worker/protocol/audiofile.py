"""Audio files and rates on both sides of the wire: decode to float32, resample.

The client install has numpy only, so this module imports its optional decoders on use:

* :func:`decode_file` reads any format PyAV reads when PyAV is installed (the worker, and the
  ``files`` extra); without it, WAV files (integer PCM) are read with the standard library;
* :func:`resample` uses soxr's high-quality filter when soxr is installed (the worker has it, so its
  outputs never depend on what else is installed); without it, a band-limited FFT resampler. A
  decode's audio is resampled as faster-whisper resamples a file instead (:mod:`worker.asr.audio`).
"""

from __future__ import annotations

import itertools
import wave
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import AudioDecodeError

FILES_EXTRA = "pip install 'streamscribe[files]'"


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a float32 array (mono, or frames x channels) from ``from_rate`` to ``to_rate``."""
    if from_rate == to_rate or audio.shape[0] == 0:
        return np.ascontiguousarray(audio, dtype=np.float32)
    try:
        import soxr
    except ImportError:
        return _fft_resample(np.asarray(audio, dtype=np.float32), from_rate, to_rate)
    return np.ascontiguousarray(soxr.resample(audio, from_rate, to_rate, quality="HQ"), dtype=np.float32)


def _fft_resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Whole-signal Fourier resampling: the spectrum is cut (or padded) at the lower Nyquist rate."""
    frames = audio.shape[0]
    out_frames = max(1, round(frames * to_rate / from_rate))
    spectrum = np.fft.rfft(audio, axis=0)
    keep = min(spectrum.shape[0], out_frames // 2 + 1)
    resized = np.zeros((out_frames // 2 + 1, *spectrum.shape[1:]), dtype=spectrum.dtype)
    resized[:keep] = spectrum[:keep]
    out = np.fft.irfft(resized, n=out_frames, axis=0) * (out_frames / frames)
    return np.ascontiguousarray(out, dtype=np.float32)


def decode_file(path: str | Path, sample_rate: int, *, split_channels: bool = False) -> np.ndarray:
    """Decode an audio file into float32 at ``sample_rate``.

    Returns a 1-D mono array, or with ``split_channels`` a ``(channels, samples)`` array.
    Raises :class:`AudioDecodeError` with the reason when the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"audio file not found: {path}")
    try:
        import av  # noqa: F401
    except ImportError:
        channels, rate = read_wav(path)
        audio = resample(channels.T, rate, sample_rate).T
        return np.ascontiguousarray(audio) if split_channels else np.ascontiguousarray(audio.mean(axis=0))
    return _decode_with_pyav(path, sample_rate, split_channels)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file of integer PCM as float32 ``(channels, samples)`` and its sample rate (standard library)."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise AudioDecodeError(
            f"cannot read {path} as integer PCM WAV ({e}); other formats (and float or μ-law WAV) need PyAV: "
            f"{FILES_EXTRA}"
        ) from e
    if width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        bytes3 = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        ints = (
            bytes3[:, 0].astype(np.int32) | (bytes3[:, 1].astype(np.int32) << 8) | (bytes3[:, 2].astype(np.int32) << 16)
        )
        samples = (np.where(ints >= 1 << 23, ints - (1 << 24), ints)).astype(np.float32) / float(1 << 23)
    elif width in (2, 4):
        dtype = np.dtype("<i2") if width == 2 else np.dtype("<i4")
        samples = np.frombuffer(raw, dtype=dtype).astype(np.float32) / float(2 ** (8 * width - 1))
    else:
        raise AudioDecodeError(f"{path}: {8 * width}-bit samples are not PCM this reader knows")
    if samples.size == 0:
        raise AudioDecodeError(f"{path} decoded to no audio")
    return np.ascontiguousarray(samples.reshape(-1, channels).T), rate


def resampled_frames(resampler: Any, frames: Iterable[Any]) -> list[np.ndarray]:
    """PyAV ``frames`` through ``resampler`` and then its flush, as ``(samples, channels)`` arrays."""
    pieces: list[np.ndarray] = []
    for frame in itertools.chain(frames, [None]):
        for out in resampler.resample(frame):
            pieces.append(out.to_ndarray().reshape(-1, out.layout.nb_channels))
    return pieces


def _decode_with_pyav(path: Path, sample_rate: int, split_channels: bool) -> np.ndarray:
    import av

    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{path} holds no audio stream")
            stream = container.streams.audio[0]
            channels = stream.codec_context.channels or 1
            layout = "mono" if not split_channels or channels == 1 else stream.codec_context.layout.name
            resampler = av.AudioResampler(format="flt", layout=layout, rate=sample_rate)
            pieces = resampled_frames(resampler, container.decode(stream))
    except AudioDecodeError:
        raise
    except Exception as e:  # PyAV raises many types (InvalidDataError, ValueError, ...)
        raise AudioDecodeError(f"cannot decode {path}: {e}") from e
    if not pieces:
        raise AudioDecodeError(f"{path} decoded to no audio")
    frames = np.concatenate(pieces, axis=0).astype(np.float32)
    if split_channels:
        return np.ascontiguousarray(frames.T)
    return np.ascontiguousarray(frames[:, 0])
