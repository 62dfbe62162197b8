"""Audio in for the recognisers: Whisper's rate, file decoding (PyAV) and resampling (soxr).

The functions live in :mod:`worker.protocol.audiofile`, which the client install shares; with the
worker's dependencies installed they decode with PyAV and resample with soxr's HQ filter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.protocol import audiofile

#: The rate every Whisper model expects.
WHISPER_SAMPLE_RATE = 16000


def resample(audio: np.ndarray, from_rate: int, to_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """Resample a float32 array (mono, or frames x channels); to 16 kHz unless told otherwise."""
    return audiofile.resample(audio, from_rate, to_rate)


def decode_file(
    path: str | Path, sample_rate: int = WHISPER_SAMPLE_RATE, *, split_channels: bool = False
) -> np.ndarray:
    """Decode a file into float32 at ``sample_rate`` (16 kHz unless told otherwise); see audiofile."""
    return audiofile.decode_file(path, sample_rate, split_channels=split_channels)
