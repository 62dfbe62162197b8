"""The offline baseline: plain faster-whisper on a whole recording, beam 5, repeatable.

faster-whisper falls back to sampling (temperatures 0.2 to 1.0, best of 5) when the beam search
of a 30 s window gives a text that compresses too well (a loop) or is too improbable. CTranslate2
samples with one random generator per thread, seeded when the thread first samples: from
``ctranslate2.set_random_seed`` if it was called, else from ``std::random_device``. A shared model
therefore gives a different baseline from one process to the next, and within a process it
depends on what was sampled before. Here every baseline is decoded by its own model, loaded after
the seed is set, so its worker thread (and generator) is new and the text is the same every time,
whatever ran before. Loading base costs about a second, against 3 to 60 s of decoding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: faster-whisper's default beam, as a user running it offline gets.
OFFLINE_BEAM = 5
#: The seed of CTranslate2's sampling for the temperature fallback.
OFFLINE_SEED = 0


@dataclass(frozen=True)
class OfflineText:
    """The baseline's text; the temperature each window was decoded at (0.0 unless the fallback
    sampled); and the seconds the decode took (the model's loading excluded)."""

    text: str
    temperatures: tuple[float, ...]
    busy: float

    @property
    def sampled(self) -> bool:
        return any(t > 0 for t in self.temperatures)


def offline_transcribe(
    audio16k: np.ndarray,
    *,
    model: str = "base",
    device: str = "auto",
    compute_type: str = "auto",
    model_dir: str | None = None,
    cache_dir: str | None = None,
    language: str | None = "en",
    task: str = "transcribe",
    temperatures: Sequence[float] | None = None,
) -> OfflineText:
    """Transcribe ``audio16k`` as ``WhisperModel.transcribe`` does by default (beam 5, no VAD, the
    temperature fallback), on a model of its own with CTranslate2 seeded (module docstring)."""
    import ctranslate2
    from faster_whisper import WhisperModel

    from worker.backends.faster_whisper import resolve_device, resolve_model_path
    from worker.backends.model_cache import built_in_own_thread

    device, compute_type = resolve_device(device, compute_type)
    dev, _, index = device.partition(":")
    ctranslate2.set_random_seed(OFFLINE_SEED)
    # built in a thread of its own like the worker's models: a model built in the caller's thread
    # leaves that thread's later decodes (the streaming run beside it) 25-40 % slower
    whisper = built_in_own_thread(
        lambda: WhisperModel(
            resolve_model_path(model, model_dir, cache_dir),
            device=dev,
            device_index=int(index or 0),
            compute_type=compute_type,
            download_root=cache_dir,
        )
    )
    options = {} if temperatures is None else {"temperature": list(temperatures)}
    started = time.perf_counter()
    segments, _info = whisper.transcribe(
        audio16k, language=language, task=task, beam_size=OFFLINE_BEAM, vad_filter=False, **options
    )
    decoded = list(segments)  # the generator decodes
    busy = time.perf_counter() - started
    return OfflineText("".join(s.text for s in decoded).strip(), tuple(s.temperature for s in decoded), busy)
