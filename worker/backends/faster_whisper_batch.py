"""Many sessions' transcribe calls with one encoder pass (the costly half of Whisper).

faster-whisper transcribes one audio at a time. Here the first 30 s window of every request is
encoded in one batched CTranslate2 call; each request is then decoded (with word alignment)
by faster-whisper's own ``generate_segments`` from its slice of that output, with exactly the
options ``WhisperModel.transcribe`` would use. Streaming buffers are shorter than the window
(the processor caps them at 28 s), so the encoder runs once per batch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def _tokenizer(model: Any, task: str, language: str) -> Any:
    from faster_whisper.tokenizer import Tokenizer

    return Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=task, language=language)


def transcribe_batched(model: Any, items: Sequence[tuple[np.ndarray, dict[str, Any]]]) -> list[list[Any]]:
    """Segments for each ``(audio, transcribe keyword arguments)``; the language must be set."""
    import ctranslate2
    from faster_whisper.audio import pad_or_trim

    prepared = []
    for audio, kwargs in items:
        # transcribe() is lazy: it returns the options it resolved without decoding anything
        _segments, info = model.transcribe(audio, **kwargs)
        features = model.feature_extractor(audio)
        prepared.append((features, info))
    window = model.feature_extractor.nb_max_frames
    # the same first window generate_segments cuts: its content excludes the last frame
    batch = np.stack(
        [pad_or_trim(features[:, : min(window, features.shape[-1] - 1)]) for features, _info in prepared]
    ).astype(np.float32)
    encoded = model.model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=True)
    encoded = np.asarray(encoded)
    results = []
    for i, (features, info) in enumerate(prepared):
        options = info.transcription_options
        tokenizer = _tokenizer(model, options_task(items[i][1]), info.language)
        own = ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded[i : i + 1]))
        results.append(list(model.generate_segments(features, tokenizer, options, False, own)))
    return results


def options_task(kwargs: dict[str, Any]) -> str:
    return str(kwargs.get("task", "transcribe"))
