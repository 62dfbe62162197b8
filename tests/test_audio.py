"""What a decode hears of a stream at another rate (worker/asr/audio.py).

A call streamed at 8 kHz must reach the model as the same call's file does offline, where
faster-whisper's ``decode_audio`` resamples it with PyAV: the soxr filter used before differed
by about 1 % of the signal and cost streaming 2.3 WER points on the μ-law calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.call_audio import write_ulaw_wav
from benchmarks.corpus import load_manifest
from worker.asr.audio import decode_file, resample
from worker.asr.online import OnlineASRProcessor
from worker.backends.synthetic import SyntheticASR
from worker.protocol import audiofile

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ulaw_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech-ulaw8k.wav"
    write_ulaw_wav(path, decode_file(load_manifest()[0].path))
    return path


def test_an_8_khz_buffer_is_resampled_to_the_samples_faster_whisper_decodes_from_its_file(ulaw_file):
    from faster_whisper.audio import decode_audio

    offline = decode_audio(str(ulaw_file), sampling_rate=16000)  # s16 on the way: 1/32768 steps
    heard = resample(decode_file(ulaw_file, 8000), 8000)
    assert heard.shape == offline.shape
    assert np.max(np.abs(heard - offline)) <= 1.5 / 32768
    # and that is not true of soxr's filter, which the client side keeps
    other = audiofile.resample(decode_file(ulaw_file, 8000), 8000, 16000)
    assert np.sqrt(np.mean((other - offline) ** 2)) > 20 * np.sqrt(np.mean((heard - offline) ** 2))


def test_a_prefix_of_the_stream_is_heard_as_the_file_is_up_to_the_filters_tail(ulaw_file):
    audio8k = decode_file(ulaw_file, 8000)
    whole = resample(audio8k, 8000)
    prefix = resample(audio8k[:40000], 8000)
    assert prefix.shape == (80000,)
    assert np.array_equal(prefix[:79900], whole[:79900])


@pytest.mark.parametrize("frames", [1, 7, 80, 799, 12345])
@pytest.mark.parametrize("rates", [(8000, 16000), (44100, 16000), (16000, 8000)])
def test_every_length_gets_its_share_of_samples_even_under_the_filters_length(frames, rates):
    source, target = rates
    audio = np.random.default_rng(frames).standard_normal(frames).astype(np.float32) * 0.1
    assert abs(resample(audio, source, target).shape[0] - frames * target / source) <= 1


def test_the_processor_of_an_8_khz_stream_asks_for_the_files_16_khz_samples(ulaw_file):
    class Recording(SyntheticASR):
        def transcribe(self, audio, init_prompt=""):
            heard.append(audio)
            return super().transcribe(audio, init_prompt)

    heard: list[np.ndarray] = []
    asr = Recording()
    proc = OnlineASRProcessor(asr, sample_rate=8000, min_chunk_sec=1.0)
    audio8k = decode_file(ulaw_file, 8000)[: 8000 * 3]
    for start in range(0, audio8k.shape[0], 800):
        proc.insert_audio_chunk(audio8k[start : start + 800])
    proc.process_iter()
    assert heard, "the processor decoded nothing"
    expected = resample(audio8k, 8000)
    assert np.array_equal(heard[-1], expected)
