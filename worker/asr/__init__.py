"""The model side: the guide's contracts, LocalAgreement streaming, audio helpers."""

from worker.asr.config import ASRConfig
from worker.asr.contracts import (
    ASRBase,
    ASRProcessor,
    BatchableProcessor,
    Committed,
    ModelLoader,
    TranscribeRequest,
    Word,
)
from worker.asr.hypothesis import HypothesisBuffer
from worker.asr.online import OnlineASRProcessor

__all__ = [
    "ASRBase",
    "ASRConfig",
    "ASRProcessor",
    "BatchableProcessor",
    "Committed",
    "HypothesisBuffer",
    "ModelLoader",
    "OnlineASRProcessor",
    "TranscribeRequest",
    "Word",
]
