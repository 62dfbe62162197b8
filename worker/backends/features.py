"""Log-mel features of a batch of requests: numpy on the host, or torch where the model runs.

faster-whisper computes features with numpy on the host (``FeatureExtractor``). For a model on a
GPU that costs a host STFT per request and a copy of every window to the device; a probe with 64
streams on an H100 spent half of its batch time there. With torch installed (the ``gpu`` extra),
:class:`TorchLogMel` computes the same features with torch on the model's device, and the batch
goes to the encoder from there (CTranslate2 reads a CUDA tensor in place).

Both compute Whisper's log-mel exactly as faster-whisper does (160 zero samples appended, a
periodic Hann window, a centred, reflect-padded 400-point STFT every 160 samples, the last frame
dropped, Slaney mel filters, log10 floored at 1e-10, clamped to 8 below the maximum, then scaled);
they differ by floating-point rounding only (``tests/test_features.py`` bounds it).

``features="auto"`` takes torch for a model on a GPU when torch can be imported, and numpy on the
CPU: there the two cost about the same and numpy keeps the CPU's transcripts as they were measured.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

FeatureBackend = Literal["auto", "numpy", "torch"]
N_FFT = 400
HOP = 160
#: faster-whisper appends this many zero samples before its STFT.
TAIL_PADDING = 160


class NumpyLogMel:
    """faster-whisper's own feature extractor, on the host."""

    device = "cpu"

    def __init__(self, extractor: Any) -> None:
        self.extractor = extractor

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return self.extractor(audio)

    def batch(self, features: list[Any], frames: int) -> Any:
        """``features`` cut or padded with zeros to ``frames`` and stacked, C-contiguous float32."""
        from faster_whisper.audio import pad_or_trim

        rows = [pad_or_trim(f, frames) for f in features]
        return np.ascontiguousarray(np.stack(rows).astype(np.float32))


class TorchLogMel:
    """The same features with torch, on ``device`` (``cuda:0``, ``cpu``)."""

    def __init__(self, mel_filters: np.ndarray, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.device = device
        #: the filters it was built from, kept so that their ``id`` (the cache key) is never reused
        self.mel_filters = mel_filters
        self.window = torch.hann_window(N_FFT, device=device)
        self.filters = torch.as_tensor(np.asarray(mel_filters, dtype=np.float32), device=device)

    def __call__(self, audio: np.ndarray) -> Any:
        torch = self.torch
        samples = torch.as_tensor(np.asarray(audio, dtype=np.float32)).to(self.device)
        samples = torch.nn.functional.pad(samples, (0, TAIL_PADDING))
        stft = torch.stft(samples, N_FFT, HOP, window=self.window, center=True, pad_mode="reflect", return_complex=True)
        magnitudes = stft[..., :-1].abs() ** 2
        mel = self.filters @ magnitudes
        log_spec = torch.clamp(mel, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0

    def batch(self, features: list[Any], frames: int) -> Any:
        """``features`` cut or padded with zeros to ``frames`` and stacked, on the device."""
        torch = self.torch
        rows = [torch.nn.functional.pad(f[:, :frames], (0, max(0, frames - f.shape[-1]))) for f in features]
        stacked = torch.stack(rows).contiguous()
        # CTranslate2 reads a CUDA tensor in place (__cuda_array_interface__), a host one as numpy
        return stacked if stacked.is_cuda else stacked.numpy()


LogMel = NumpyLogMel | TorchLogMel


def log_mel_for(model: Any, backend: FeatureBackend = "auto") -> LogMel:
    """The feature extractor for a faster-whisper ``model`` (see the module docstring)."""
    extractor = model.feature_extractor
    if backend == "numpy":
        return NumpyLogMel(extractor)
    device = _model_device(model)
    if backend == "torch":
        return _torch_log_mel(extractor.mel_filters, device)
    if device != "cpu" and _has_torch():
        return _torch_log_mel(extractor.mel_filters, device)
    return NumpyLogMel(extractor)


_TORCH_EXTRACTORS: dict[tuple[int, str], TorchLogMel] = {}


def _torch_log_mel(mel_filters: np.ndarray, device: str) -> TorchLogMel:
    # one per (filters, device): the window and filters are built once, not per batch
    key = (id(mel_filters), device)
    if key not in _TORCH_EXTRACTORS:
        _TORCH_EXTRACTORS[key] = TorchLogMel(mel_filters, device)
    return _TORCH_EXTRACTORS[key]


def _model_device(model: Any) -> str:
    """``cpu``, or ``cuda:N`` for the first GPU the CTranslate2 model runs on."""
    device = str(model.model.device)
    if device == "cpu":
        return "cpu"
    indices = list(model.model.device_index)
    return f"{device}:{indices[0] if indices else 0}"


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
