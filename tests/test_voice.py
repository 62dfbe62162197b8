"""The voice tracker: Silero scores at absolute positions, whatever the chunking or a restore."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.corpus import speech_dir
from worker.asr.audio import decode_file, resample
from worker.asr.voice import VoiceTracker

pytestmark = pytest.mark.timeout(120)

# two speakers: 0-5.0 s, then 5.6-8.6 s
TWO_SPEAKERS = "09_two_speakers_librispeech_61-70968-0000_then_260-123286-0001.wav"


def feed(audio: np.ndarray, rate: int, sizes: list[int], tracker: VoiceTracker | None = None) -> VoiceTracker:
    tracker = tracker or VoiceTracker(rate, 0.5)
    buffer = np.zeros(0, np.float32)
    start, i, k = 0, 0, 0
    while i < audio.shape[0]:
        size = sizes[k % len(sizes)]
        buffer = np.concatenate([buffer, audio[i : i + size]])
        i += size
        k += 1
        tracker.update(buffer, start)
        # the processor trims its buffer; the tracker must not need what is gone
        keep = max(0, buffer.shape[0] - rate)
        buffer, start = buffer[keep:], start + keep
    return tracker


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return decode_file(speech_dir() / TWO_SPEAKERS)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_voiced_stretches_do_not_depend_on_how_the_audio_was_chunked(speech, rate):
    audio = resample(speech, 16000, rate)
    runs = [feed(audio, rate, sizes) for sizes in ([rate], [rate // 50], [317, 4099, 160], [audio.shape[0]])]
    states = [r.snapshot() for r in runs]
    assert all(s == states[0] for s in states)
    stretches = [(a / rate, b / rate) for a, b in runs[0].state.stretches]
    # the change of speaker is a pause of more than 0.5 s: two stretches, split inside the gap
    assert len(stretches) == 2
    assert stretches[0][0] < 0.6 and 4.5 < stretches[0][1] < 5.3
    assert 5.3 < stretches[1][0] < 6.2 and stretches[1][1] > 7.5


def test_a_restored_tracker_continues_exactly_as_one_that_never_stopped(speech):
    whole = feed(speech, 16000, [1600])
    first = feed(speech[: 4 * 16000 + 123], 16000, [1600])
    restored = VoiceTracker(16000, 0.5)
    restored.restore(json.loads(json.dumps(first.snapshot())))
    # the restored processor re-inserts the audio from its buffer start on, then the rest arrives
    start = 3 * 16000
    buffer = speech[start : 4 * 16000 + 123]
    restored.update(buffer, start)
    for end in range(4 * 16000 + 123 + 1600, speech.shape[0] + 1600, 1600):
        buffer = speech[start:end]
        restored.update(buffer, start)
    assert restored.snapshot() == whole.snapshot()


def test_line_noise_alone_opens_no_stretch():
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(20 * 16000) * 0.004).astype(np.float32)
    tracker = feed(noise, 16000, [3200])
    assert not tracker.voiced and tracker.silence_sec() > 19
