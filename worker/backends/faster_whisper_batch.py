"""The encoder pass of faster-whisper, done here: a window fitted to the audio, and batches.

faster-whisper pads every window to Whisper's 30 s before the encoder, the costly half of a
call, however short the audio. A streaming buffer is short (the processor caps it at 28 s), so
here the window is the buffer plus ``padding_frames`` of silence, rounded up to a multiple of
5 s (and at most 30 s). The window depends only on the request's own length, never on what it
is batched with, so a request gives the same words alone or in a batch, before or after a
failover. Requests with the same window are encoded in one CTranslate2 call; each is then
decoded and word-aligned by faster-whisper's own ``generate_segments`` from its slice of the
output, with exactly the options ``WhisperModel.transcribe`` resolves.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Windows are rounded up to this many mel frames (5 s): few shapes, so many requests share one.
WINDOW_QUANTUM = 500
FULL_WINDOW = 3000


@functools.lru_cache(maxsize=64)
def _tokenizer(model: Any, task: str, language: str) -> Any:
    from faster_whisper.tokenizer import Tokenizer

    return Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=task, language=language)


def encoder_window(content_frames: int, padding_frames: int | None) -> int:
    """Mel frames the encoder sees for ``content_frames`` of audio (``None``: Whisper's full 30 s)."""
    if padding_frames is None:
        return FULL_WINDOW
    needed = content_frames + padding_frames
    return min(FULL_WINDOW, -(-needed // WINDOW_QUANTUM) * WINDOW_QUANTUM)


def transcribe_windowed(
    model: Any,
    items: Sequence[tuple[np.ndarray, dict[str, Any]]],
    *,
    padding_frames: int | None,
    batch: bool,
) -> list[list[Any]]:
    """Segments for each ``(audio, transcribe keyword arguments)``; the language must be set.

    With ``batch``, requests of the same window share one encoder call; without, each has its own.
    """
    from faster_whisper.audio import pad_or_trim

    prepared = []
    for audio, kwargs in items:
        # transcribe() is lazy: it returns the options it resolved without decoding anything
        _segments, info = model.transcribe(audio, **kwargs)
        features = model.feature_extractor(audio)
        # generate_segments' first window: its content excludes the last frame
        content = min(FULL_WINDOW, features.shape[-1] - 1)
        window = encoder_window(content, padding_frames)
        prepared.append((features, info, pad_or_trim(features[:, :content], window)))
    groups: dict[int, list[int]] = defaultdict(list)
    for i, (_f, _info, padded) in enumerate(prepared):
        groups[padded.shape[-1] if batch else -1 - i].append(i)
    encoded: dict[int, Any] = {}
    for members in groups.values():
        for i, out in zip(members, _encode(model, [prepared[i][2] for i in members]), strict=True):
            encoded[i] = out
    results = []
    for i, (features, info, _padded) in enumerate(prepared):
        tokenizer = _tokenizer(model, str(items[i][1].get("task", "transcribe")), info.language)
        segments = model.generate_segments(features, tokenizer, info.transcription_options, False, encoded[i])
        results.append(list(segments))
    return results


def _encode(model: Any, windows: list[np.ndarray]) -> list[Any]:
    """One encoder call for same-shaped windows; a StorageView per window."""
    import ctranslate2

    batch = np.ascontiguousarray(np.stack(windows).astype(np.float32))
    if len(windows) == 1:
        return [model.model.encode(ctranslate2.StorageView.from_array(batch))]
    encoded = np.asarray(model.model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=True))
    return [ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded[i : i + 1])) for i in range(len(windows))]
