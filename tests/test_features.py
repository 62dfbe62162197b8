"""Log-mel features with numpy and with torch (worker/backends/features.py), on the real model.

The torch path is what a GPU worker runs; here it runs on the CPU, where CTranslate2 and torch
execute the same code as on a device, short of the device itself.
"""

from __future__ import annotations

import difflib

import numpy as np
import pytest

from benchmarks.call_scoring import normalise
from benchmarks.corpus import load_manifest
from worker.asr.audio import decode_file
from worker.asr.contracts import TranscribeRequest
from worker.backends.features import NumpyLogMel, TorchLogMel, log_mel_for

torch = pytest.importorskip("torch", reason="the test extra installs torch (CPU build)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def plain(words: list[str]) -> list[str]:
    """The words as a scorer reads them (Whisper's English normaliser): "I'll" is "I will"."""
    return normalise(" ".join(words)).split()


@pytest.fixture(scope="module")
def asr():
    from worker.backends.faster_whisper import FasterWhisperASR

    return FasterWhisperASR("en", "base", final_beam_size=5)


@pytest.mark.parametrize("seconds", [0.3, 7.0, 29.5])
def test_torch_features_match_faster_whispers_numpy_features_to_rounding(asr, seconds):
    speech = decode_file(load_manifest()[0].path)
    audio = np.resize(speech, round(seconds * 16000))  # real speech, repeated for the long case
    expected = NumpyLogMel(asr.model.feature_extractor)(audio)
    got = TorchLogMel(asr.model.feature_extractor.mel_filters, "cpu")(audio)
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == expected.shape
    # features lie in about [-1.5, 1.5]; float32 STFTs differ in the last bits (about 1e-5)
    assert float(np.abs(got.numpy() - expected).max()) < 1e-4


def test_a_torch_batch_is_padded_with_silence_to_the_window_and_handed_over_as_float32(asr):
    log_mel = TorchLogMel(asr.model.feature_extractor.mel_filters, "cpu")
    short, long = log_mel(np.zeros(8000, np.float32)), log_mel(np.ones(32000, np.float32) * 0.01)
    batch = log_mel.batch([short, long[:, :150]], 500)
    assert isinstance(batch, np.ndarray) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert batch.shape == (2, 80, 500)
    assert np.all(batch[0, :, short.shape[-1] :] == 0) and np.all(batch[1, :, 150:] == 0)
    np.testing.assert_array_equal(batch[1, :, :150], long[:, :150].numpy())


def test_auto_takes_numpy_for_a_model_on_the_cpu_and_torch_only_when_asked(asr):
    assert isinstance(log_mel_for(asr.model), NumpyLogMel)
    assert isinstance(log_mel_for(asr.model, "numpy"), NumpyLogMel)
    chosen = log_mel_for(asr.model, "torch")
    assert isinstance(chosen, TorchLogMel) and chosen.device == "cpu"


def test_a_batch_decoded_from_torch_features_gives_the_words_of_numpy_features(asr):
    from worker.backends.whisper_decode import DecodeOptions, decode_batch

    recordings = load_manifest()[2:8]
    requests = [
        asr._request(TranscribeRequest(decode_file(r.path), f"prompt {i}" if i % 2 else "", final=i % 3 == 0))
        for i, r in enumerate(recordings)
    ]
    by = {
        backend: decode_batch(asr.model, requests, DecodeOptions("en", features=backend))
        for backend in ("numpy", "torch")
    }
    words = {backend: [[(w.text, w.start, w.end) for w in asr.ts_words(r)] for r in out] for backend, out in by.items()}
    # rounding may flip a close call between two spellings (" For" and " for" after a prompt
    # seen once; "I will" and "I'll" on an AVX-512 AMD EPYC), or, on an Intel Xeon's int8
    # kernels, whether a decode says a recording's last word ("built around it" against "built
    # around"): read as a scorer reads them, at most one word per recording differs
    assert sum(len(ws) for ws in words["numpy"]) > 40
    differing = 0
    for a, b in zip(words["numpy"], words["torch"], strict=True):
        texts = plain([t for t, _s, _e in a]), plain([t for t, _s, _e in b])
        same = sum(m.size for m in difflib.SequenceMatcher(None, *texts).get_matching_blocks())
        assert max(map(len, texts)) - same <= 1, texts
        if texts[0] != texts[1] or len(a) != len(b):
            differing += 1  # another token sequence is aligned afresh: its times may move
            continue
        # features differ by about 1e-5 here; one word start moved by two alignment frames (40 ms)
        # on the Intel Xeon, by three (60 ms: " nor" in recording 8) on an AVX-512 AMD EPYC
        assert all(abs(x[1] - y[1]) <= 0.061 and abs(x[2] - y[2]) <= 0.061 for x, y in zip(a, b, strict=True))
    assert differing <= 1, "the features change what more than one recording says"
