"""``streamscribe demo``: embedded server, real worker and model, a transcript, a clean exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]


def _valkey_pids() -> set[str]:
    out = subprocess.run(["pgrep", "-f", "valkey-server"], capture_output=True, text=True)
    return set(out.stdout.split())


def test_the_demo_prints_the_transcript_and_stops_everything_it_started():
    before = _valkey_pids()
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "demo", "--speed", "0"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any("session started" in line for line in lines)
    assert any("session ended (completed)" in line for line in lines)
    text = " ".join(line.split("] ch0", 1)[1] for line in lines if "] ch0" in line).lower()
    text = " ".join(text.split())
    assert "ask not what your country can do for you" in text.replace(",", "").replace(".", "")
    assert _valkey_pids() <= before  # the embedded server is gone


def test_the_demo_refuses_a_missing_recording_with_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "demo", "/no/such.wav"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 2 and "audio file not found" in out.stderr
