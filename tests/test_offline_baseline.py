"""The offline baseline of the benchmarks and the quality tests is the same text every run, even
where faster-whisper's temperature fallback samples (``benchmarks.offline``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.calls import build_calls
from worker.asr.audio import decode_file
from worker.protocol.audiofile import resample  # soxr both ways: this audio is picked for its fallback
from worker.protocol.pcm import decode_pcm, encode_pcm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]

#: Transcribes the .npy file given twice in one process, and prints both results as JSON. The
#: decode samples from its first temperature on (0.6, as the fallback would after a failed beam
#: search): whether the default schedule falls back on this audio depends on the CPU's int8
#: kernels (an AMD EPYC's did, an Intel Xeon's did not), and what must hold is that sampling
#: gives the same text every time, which the fallback's sampling then does too.
SCRIPT = """
import json, sys
import numpy as np
from benchmarks.offline import offline_transcribe
TEMPERATURES = (0.6, 0.8, 1.0)
audio = np.load(sys.argv[1])
runs = [offline_transcribe(audio, device="cpu", temperatures=TEMPERATURES) for _ in range(int(sys.argv[2]))]
print(json.dumps([{"text": r.text, "temperatures": list(r.temperatures)} for r in runs]))
"""


def transcripts(path: Path, times: int) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(times)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_offline_baseline_reads_the_same_in_every_process_where_its_fallback_samples(tmp_path):
    # the customer's channel of ci-60s through a mu-law leg, decoded by sampling (SCRIPT): on an
    # AMD EPYC its third window fell back to sampling, and the gateway tests' baselines moved
    # between runs before the seed
    call = build_calls("ci", tmp_path)[2]
    channel = decode_file(call.stereo16k, 16000, split_channels=True)[1]
    mulaw = decode_pcm(encode_pcm(resample(channel, 16000, 8000), "mulaw"), "mulaw", 1).reshape(-1)
    audio = resample(mulaw, 8000, 16000).astype(np.float32)
    path = tmp_path / "audio.npy"
    np.save(path, audio)

    first = transcripts(path, 2)
    second = transcripts(path, 1)

    assert any(t > 0 for t in first[0]["temperatures"]), "the decode did not sample"
    # the same text after another sampling decode in the same process, and in a new process
    assert first[1]["text"] == first[0]["text"]
    assert second[0]["text"] == first[0]["text"]
