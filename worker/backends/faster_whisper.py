"""faster-whisper (CTranslate2), the default backend.

``device="auto"`` takes CUDA in float16 when CTranslate2 sees a GPU, else the CPU in int8.
``model="base"`` loads the offline model from the ``base-model`` extra when it is installed;
any other name or path resolves as faster-whisper resolves it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from worker.asr.config import ASRConfig
from worker.asr.contracts import ASRBase, ASRProcessor, Word
from worker.asr.online import OnlineASRProcessor
from worker.backends.model_cache import shared_model
from worker.backends.offline_model import OFFLINE_MODEL_NAME, offline_base_available, offline_base_model_dir

log = logging.getLogger(__name__)


def resolve_device(device: str, compute_type: str) -> tuple[str, str]:
    """Turn ``auto`` into a concrete device and compute type."""
    if device == "auto":
        import ctranslate2

        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device.startswith("cuda") else "int8"
    return device, compute_type


def resolve_model_path(model: str, model_dir: str | None, cache_dir: str | None) -> str:
    if model_dir:
        return model_dir
    if model == OFFLINE_MODEL_NAME and offline_base_available():
        return str(offline_base_model_dir(cache_dir))
    return model


def load_whisper_model(model: str, device: str, compute_type: str, model_dir: str | None, cache_dir: str | None):
    """The shared ``WhisperModel`` for these options (loaded once per process)."""
    device, compute_type = resolve_device(device, compute_type)
    path = resolve_model_path(model, model_dir, cache_dir)

    def build() -> Any:
        from faster_whisper import WhisperModel

        index = 0
        dev = device
        if ":" in device:
            dev, idx = device.split(":", 1)
            index = int(idx)
        log.info("loading faster-whisper model %s on %s (%s)", path, device, compute_type)
        return WhisperModel(path, device=dev, device_index=index, compute_type=compute_type, download_root=cache_dir)

    return shared_model(("faster-whisper", path, device, compute_type), build)


class FasterWhisperASR(ASRBase):
    """The guide's faster-whisper backend; words carry their leading space, so ``sep`` is empty."""

    sep = ""

    def __init__(
        self,
        lan: str,
        modelsize: str | None = None,
        cache_dir: str | None = None,
        model_dir: str | None = None,
        *,
        device: str = "auto",
        compute_type: str = "auto",
        beam_size: int = 1,
        no_speech_threshold: float = 0.6,
        batch_encoder: bool | None = None,
        window_padding_sec: float | None = 5.0,
        **kwargs: Any,
    ) -> None:
        self._batch_encoder = batch_encoder
        self.padding_frames = None if window_padding_sec is None else round(window_padding_sec * 100)
        self.device = device
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.no_speech_threshold = no_speech_threshold
        super().__init__(lan, modelsize, cache_dir, model_dir, **kwargs)

    def load_model(
        self, modelsize: str | None = None, cache_dir: str | None = None, model_dir: str | None = None, **kwargs: Any
    ) -> Any:
        return load_whisper_model(modelsize or "base", self.device, self.compute_type, model_dir, cache_dir)

    @property
    def batch_encoder(self) -> bool:
        """Encode a batch's windows in one call: by default on a GPU only."""
        if self._batch_encoder is not None:
            return self._batch_encoder
        return str(getattr(self.model.model, "device", "cpu")).startswith("cuda")

    def _options(self, init_prompt: str) -> dict[str, Any]:
        return {
            "language": self.original_language,
            "initial_prompt": init_prompt or None,
            "beam_size": self.beam_size,
            "word_timestamps": True,
            "condition_on_previous_text": True,
            # one temperature: sampling fallbacks would make replays after a failover differ
            "temperature": 0.0,
            **self.transcribe_kargs,
        }

    def _windowed(self) -> bool:
        """Our own encoder pass applies: a set language and no faster-whisper VAD cutting."""
        return self.original_language is not None and not self.transcribe_kargs.get("vad_filter")

    def transcribe(self, audio: np.ndarray, init_prompt: str = "") -> list[Any]:
        if not self._windowed():
            segments, _info = self.model.transcribe(audio, **self._options(init_prompt))
            return list(segments)
        return self.transcribe_batch([(audio, init_prompt)])[0]

    def transcribe_batch(self, items: Sequence[tuple[np.ndarray, str]]) -> list[Any]:
        """The requests with fitted encoder windows; on a GPU, one encoder call per window size.

        Falls back to faster-whisper's own transcribe, one request at a time, for language
        detection (``lan=auto``) and for faster-whisper's VAD filter, which cut the audio first.
        On the CPU, a batched encoder measured no faster (docs/benchmarks.md), so by default each
        request is encoded alone there.
        """
        if not self._windowed():
            return super().transcribe_batch(items)
        from worker.backends.faster_whisper_batch import transcribe_windowed

        return transcribe_windowed(
            self.model,
            [(audio, self._options(prompt)) for audio, prompt in items],
            padding_frames=self.padding_frames,
            batch=self.batch_encoder,
        )

    def ts_words(self, result: list[Any]) -> list[Word]:
        words: list[Word] = []
        for segment in result:
            if segment.no_speech_prob > self.no_speech_threshold:
                continue
            for w in segment.words or ():
                words.append(Word(w.start, w.end, w.word, w.probability))
        return words

    def segments_end_ts(self, result: list[Any]) -> list[float]:
        return [s.end for s in result]

    def use_vad(self) -> None:
        self.transcribe_kargs["vad_filter"] = True


class FasterWhisperLoader:
    """``faster-whisper`` in ``MODEL_LOADERS``."""

    def load(self, config: ASRConfig) -> tuple[ASRProcessor, dict[str, Any]]:
        asr = FasterWhisperASR(
            config.lan,
            config.model,
            config.cache_dir,
            config.model_dir,
            device=config.device,
            compute_type=config.compute_type,
            beam_size=config.beam_size,
            no_speech_threshold=config.no_speech_threshold,
            batch_encoder=config.batch_encoder,
            window_padding_sec=config.window_padding_sec,
        )
        if config.task == "translate":
            asr.set_translate_task()
        processor = OnlineASRProcessor.from_config(asr, config)
        return processor, {"separator": asr.sep, "sample_rate": config.input_sample_rate, "backend": "faster-whisper"}
