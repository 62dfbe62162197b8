"""Voice activity from the Silero VAD ONNX model that faster-whisper ships (no download)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

#: Silero's window at 16 kHz.
VAD_WINDOW = 512
SPEECH_THRESHOLD = 0.5


@functools.lru_cache(maxsize=1)
def _silero() -> Any:
    from faster_whisper.vad import get_vad_model

    return get_vad_model()


def speech_probabilities(audio16k: np.ndarray) -> np.ndarray:
    """Speech probability of each 512-sample window (32 ms) of 16 kHz audio.

    Each window is scored with 64 samples of left context only, so a window's score depends on
    nothing before it: scoring a suffix of a buffer gives the same numbers as scoring the whole.
    """
    if audio16k.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    pad = (-audio16k.shape[0]) % VAD_WINDOW
    padded = np.pad(audio16k.astype(np.float32, copy=False), (0, pad))
    return np.asarray(_silero()(padded), dtype=np.float32).reshape(-1)


def has_speech(audio16k: np.ndarray, threshold: float = SPEECH_THRESHOLD) -> bool:
    probs = speech_probabilities(audio16k)
    return bool(probs.size and float(probs.max()) >= threshold)


def trailing_silence_sec(audio16k: np.ndarray, threshold: float = SPEECH_THRESHOLD) -> float:
    """Seconds of non-speech at the end of the audio (the whole length when nothing is speech)."""
    probs = speech_probabilities(audio16k)
    voiced = np.nonzero(probs >= threshold)[0]
    if voiced.size == 0:
        return audio16k.shape[0] / 16000
    return max(0.0, (audio16k.shape[0] - (int(voiced[-1]) + 1) * VAD_WINDOW) / 16000)
