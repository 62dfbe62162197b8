"""Audio in for the recognisers: Whisper's rate, file decoding and resampling (both PyAV).

The audio a decode hears is brought to 16 kHz as faster-whisper's ``decode_audio`` brings a file
to it: with PyAV's resampler (libswresample, its default filter). So a call streamed at 8 kHz
and the same call transcribed offline from its file give the model the same samples, not two
renderings of the band edge. That mattered: soxr's HQ filter differs from libswresample's by
about 1 % of the signal's RMS (libswresample leaves a faint band at 4–4.6 kHz), and on the 26
evaluation calls as 8 kHz μ-law streaming read 29.67 % with soxr and 28.58 % with this
(offline 22.56 %; docs/benchmarks.md). The client side (:mod:`worker.protocol.audiofile`) keeps
soxr, and so do the session's per-chunk conversions, where a stateless call per chunk must
return exactly its share of samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.protocol import audiofile

#: The rate every Whisper model expects.
WHISPER_SAMPLE_RATE = 16000


def resample(audio: np.ndarray, from_rate: int, to_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 array as faster-whisper resamples a file (16 kHz unless told otherwise).

    A buffer too short for the filter to give its share of samples (a few ms), or an array of
    several channels, goes through :func:`worker.protocol.audiofile.resample` instead.
    """
    if from_rate == to_rate or audio.shape[0] == 0 or audio.ndim != 1:
        return audiofile.resample(audio, from_rate, to_rate)
    import av

    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
    )
    frame.sample_rate = from_rate
    pieces = audiofile.resampled_frames(av.AudioResampler(format="flt", layout="mono", rate=to_rate), [frame])
    expected = audio.shape[0] * to_rate / from_rate
    if not pieces or abs(sum(p.shape[0] for p in pieces) - expected) > 1:
        return audiofile.resample(audio, from_rate, to_rate)
    return np.ascontiguousarray(np.concatenate(pieces)[:, 0], dtype=np.float32)


def decode_file(
    path: str | Path, sample_rate: int = WHISPER_SAMPLE_RATE, *, split_channels: bool = False
) -> np.ndarray:
    """Decode a file into float32 at ``sample_rate`` (16 kHz unless told otherwise); see audiofile."""
    return audiofile.decode_file(path, sample_rate, split_channels=split_channels)
