"""faster-whisper (CTranslate2), the default backend.

``device="auto"`` takes CUDA in float16 when CTranslate2 sees a GPU, else the CPU in int8.
``model="base"`` loads the offline model from the ``base-model`` extra when it is installed;
any other name or path resolves as faster-whisper resolves it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from worker.asr.config import ASRConfig
from worker.asr.contracts import ASRBase, ASRProcessor, TranscribeRequest, Word
from worker.asr.online import OnlineASRProcessor
from worker.backends.decode_guards import drop_timeless
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
    """The guide's faster-whisper backend; words carry their leading space, so ``sep`` is empty.

    Requests go through :func:`~worker.backends.whisper_decode.decode_batch`: one window each,
    batched across sessions. ``lan=auto`` and faster-whisper's own VAD filter take faster-whisper's
    ``transcribe`` instead, one request at a time (they cut or probe the audio first).
    """

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
        final_beam_size: int | None = None,
        no_speech_threshold: float = 0.6,
        log_prob_threshold: float = -1.0,
        window_padding_sec: float | None = 5.0,
        full_final_window: bool = False,
        economy_beam_size: int = 1,
        economy_window_padding_sec: float | None = 2.0,
        **kwargs: Any,
    ) -> None:
        self.padding_frames = _frames(window_padding_sec)
        # a request marked economy (the worker is far short of compute): a greedy chunk decode in
        # a tighter window (3 live calls on 2 cores: commit p95 4.6 -> 3.5 s, docs/benchmarks.md)
        self.economy_padding_frames = _frames(economy_window_padding_sec)
        self.economy_beam_size = economy_beam_size
        # with utterance commits, the one decode that commits an utterance reads Whisper's whole
        # 30 s window, as Whisper was trained (measured: 10.6 % WER against 14.3 % fitted on a
        # 12-minute call; with agreement commits the full window made it worse, 14.1 % against 12.8 %)
        self.full_final_window = full_final_window
        self.device = device
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.final_beam_size = final_beam_size or beam_size
        self.no_speech_threshold = no_speech_threshold
        self.log_prob_threshold = log_prob_threshold
        self._redecodes: Counter[str] = Counter()
        super().__init__(lan, modelsize, cache_dir, model_dir, **kwargs)

    def load_model(
        self, modelsize: str | None = None, cache_dir: str | None = None, model_dir: str | None = None, **kwargs: Any
    ) -> Any:
        return load_whisper_model(modelsize or "base", self.device, self.compute_type, model_dir, cache_dir)

    def _options(self, init_prompt: str, beam_size: int) -> dict[str, Any]:
        return {
            "language": self.original_language,
            "initial_prompt": init_prompt or None,
            "beam_size": beam_size,
            "word_timestamps": True,
            "condition_on_previous_text": True,
            # one temperature: sampling fallbacks would make replays after a failover differ
            "temperature": 0.0,
            **self.transcribe_kargs,
        }

    def _batched(self) -> bool:
        """Our own decode applies: a set language and no faster-whisper VAD cutting."""
        return self.original_language is not None and not self.transcribe_kargs.get("vad_filter")

    @property
    def continues_prefix(self) -> bool:
        return self._batched()

    def batch_key(self) -> Hashable:
        # beams travel with each request; the rest of the settings only filter results
        return (FasterWhisperASR, id(self.model), self.original_language, self._task)

    @property
    def _task(self) -> str:
        return str(self.transcribe_kargs.get("task", "transcribe"))

    def transcribe(self, audio: np.ndarray, init_prompt: str = "") -> list[Any]:
        return self.transcribe_requests([TranscribeRequest(audio, init_prompt)])[0]

    def transcribe_batch(self, items: Sequence[tuple[np.ndarray, str]]) -> list[Any]:
        return self.transcribe_requests([TranscribeRequest(audio, prompt) for audio, prompt in items])

    def transcribe_requests(self, requests: Sequence[TranscribeRequest]) -> list[Any]:
        if not self._batched():
            out = []
            for r in requests:
                segments, info = self.model.transcribe(r.audio, **self._options(r.init_prompt, self._beam(r)))
                out.append(list(segments))
                if self.original_language is None:
                    self.detected_language = info.language
            return out
        from worker.backends.whisper_decode import DecodeOptions, decode_batch

        assert self.original_language is not None
        options = DecodeOptions(self.original_language, self._task)
        return decode_batch(self.model, [self._request(r) for r in requests], options, self._redecodes)

    def take_redecodes(self) -> dict[str, int]:
        taken = dict(self._redecodes)  # decode_batch counts a guard only when it fired
        self._redecodes.clear()
        return taken

    def _request(self, request: TranscribeRequest) -> Any:
        from worker.backends.whisper_decode import DecodeRequest

        if request.final and self.full_final_window:
            padding = None
        else:
            padding = self.economy_padding_frames if request.economy else self.padding_frames
        return DecodeRequest(request.audio, request.init_prompt, self._beam(request), padding, request.prefix)

    def _beam(self, request: TranscribeRequest) -> int:
        if request.final:
            return self.final_beam_size
        return self.economy_beam_size if request.economy else self.beam_size

    def ts_words(self, result: list[Any]) -> list[Word]:
        words: list[Word] = []
        for segment in result:
            # faster-whisper's rule: silence is a likely no-speech token *and* an unlikely text
            if segment.no_speech_prob > self.no_speech_threshold and segment.avg_logprob < self.log_prob_threshold:
                continue
            for w in segment.words or ():
                words.append(Word(w.start, w.end, w.word, w.probability))
        return drop_timeless(words)

    def segments_end_ts(self, result: list[Any]) -> list[float]:
        return [s.end for s in result]

    def use_vad(self) -> None:
        self.transcribe_kargs["vad_filter"] = True


def _frames(padding_sec: float | None) -> int | None:
    """Mel frames of silence after the audio (``None``: Whisper's full 30 s window)."""
    return None if padding_sec is None else round(padding_sec * 100)


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
            final_beam_size=config.final_beam_size,
            no_speech_threshold=config.no_speech_threshold,
            window_padding_sec=config.window_padding_sec,
            full_final_window=config.commit_policy == "utterance",
            economy_beam_size=config.economy_beam_size,
            economy_window_padding_sec=config.economy_window_padding_sec,
        )
        if config.task == "translate":
            asr.set_translate_task()
        processor = OnlineASRProcessor.from_config(asr, config)
        return processor, {"separator": asr.sep, "sample_rate": config.input_sample_rate, "backend": "faster-whisper"}
