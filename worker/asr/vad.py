"""Voice activity from the Silero VAD ONNX model that faster-whisper ships (no download)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Silero's window at 16 kHz.
VAD_WINDOW = 512
SPEECH_THRESHOLD = 0.5
#: Samples of left context Silero takes with each window.
CONTEXT = 64


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


@dataclass
class SileroState:
    """Silero's recurrent state between calls: LSTM ``h`` and ``c``, and the last 64 samples."""

    h: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), dtype=np.float32))
    c: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), dtype=np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, dtype=np.float32))


def score_stream(audio16k: np.ndarray, state: SileroState) -> tuple[np.ndarray, SileroState]:
    """Speech probability of each 512-sample window of ``audio16k``, continuing from ``state``.

    Silero is recurrent: a window's score depends on every window before it. Carrying the
    state from call to call gives the same scores (bit for bit) however the stream is split.
    """
    windows = audio16k.astype(np.float32, copy=False).reshape(-1, VAD_WINDOW)
    if windows.shape[0] == 0:
        return np.zeros(0, dtype=np.float32), state
    contexts = np.concatenate([state.context[None, :], windows[:-1, -CONTEXT:]], axis=0)
    batch = np.ascontiguousarray(np.concatenate([contexts, windows], axis=1))
    out, h, c = _silero().session.run(None, {"input": batch, "h": state.h, "c": state.c})
    probs = np.asarray(out, dtype=np.float32).reshape(-1)
    return probs, SileroState(np.asarray(h), np.asarray(c), windows[-1, -CONTEXT:].copy())
