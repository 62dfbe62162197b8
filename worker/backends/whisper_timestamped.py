"""whisper_timestamped, the integration guide's own backend (optional extra, imported lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.asr.config import ASRConfig
from worker.asr.contracts import ASRBase, ASRProcessor
from worker.asr.online import OnlineASRProcessor
from worker.backends.model_cache import shared_model
from worker.errors import BackendUnavailableError

_INSTALL_HINT = "the whisper_timestamped backend needs its extra: pip install 'streamscribe[whisper-timestamped]'"


def _import_whisper_timestamped() -> tuple[Any, Any]:
    try:
        import whisper
        import whisper_timestamped
    except ImportError as e:
        raise BackendUnavailableError(_INSTALL_HINT) from e
    return whisper, whisper_timestamped


class WhisperTimestampedASR(ASRBase):
    sep = " "

    def load_model(
        self, modelsize: str | None = None, cache_dir: str | None = None, model_dir: str | None = None, **kwargs: Any
    ) -> Any:
        whisper, wts = _import_whisper_timestamped()
        self._transcribe_timestamped = wts.transcribe_timestamped
        name = model_dir or modelsize or "base"
        return shared_model(
            ("whisper_timestamped", name, "auto", "auto"), lambda: whisper.load_model(name, download_root=cache_dir)
        )

    def transcribe(self, audio: np.ndarray, init_prompt: str = "") -> dict[str, Any]:
        return self._transcribe_timestamped(
            self.model,
            audio,
            language=self.original_language,
            initial_prompt=init_prompt,
            verbose=None,
            condition_on_previous_text=True,
            **self.transcribe_kargs,
        )

    def ts_words(self, result: dict[str, Any]) -> list[tuple[float, float, str]]:
        return [(w["start"], w["end"], w["text"]) for s in result["segments"] for w in s["words"]]

    def segments_end_ts(self, result: dict[str, Any]) -> list[float]:
        return [s["end"] for s in result["segments"]]

    def use_vad(self) -> None:
        self.transcribe_kargs["vad"] = True


class WhisperTimestampedLoader:
    """``whisper_timestamped`` in ``MODEL_LOADERS``."""

    def load(self, config: ASRConfig) -> tuple[ASRProcessor, dict[str, Any]]:
        asr = WhisperTimestampedASR(config.lan, config.model, config.cache_dir, config.model_dir)
        if config.task == "translate":
            asr.set_translate_task()
        processor = OnlineASRProcessor.from_config(asr, config)
        return processor, {
            "separator": asr.sep,
            "sample_rate": config.input_sample_rate,
            "backend": "whisper_timestamped",
        }
