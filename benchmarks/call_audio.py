"""Audio for the synthetic calls: espeak-ng synthesis, levels, and the WAV files a call is written as.

No dither anywhere: the same tools give the same bytes on every run (``benchmarks.calls``).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from functools import cache
from pathlib import Path

import numpy as np

RATE = 16000


class EspeakNotFoundError(RuntimeError):
    """espeak-ng is not installed, so the synthetic calls cannot be generated."""


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise EspeakNotFoundError(
            "espeak-ng is not installed: the long-call set is synthesised with it "
            "(Debian/Ubuntu: apt-get install espeak-ng)"
        )
    return path


@cache
def tool_versions() -> str:
    """espeak-ng's and soxr's versions: a change in either may change the audio."""
    import soxr

    out = subprocess.run([espeak_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    return f"espeak-ng {out.split(':', 1)[-1].split()[0]}; soxr {soxr.__version__}"


def trim_silence(audio: np.ndarray, threshold: float = 0.002) -> np.ndarray:
    """Cut the silence espeak-ng and the recordings have at both ends: a turn's times are its voice."""
    loud = np.nonzero(np.abs(audio) > threshold)[0]
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def synthesise(text: str, voice: str, wpm: int) -> np.ndarray:
    """``text`` spoken by espeak-ng, as trimmed 16 kHz float32."""
    from worker.protocol.audiofile import resample  # soxr HQ: the generated calls' bytes depend on it

    out = subprocess.run(
        [espeak_binary(), "--stdout", "-v", voice, "-s", str(wpm)], input=text.encode(), capture_output=True
    )
    if out.returncode != 0 or out.stdout[:4] != b"RIFF":
        raise RuntimeError(f"espeak-ng failed on {text!r} ({voice}): {out.stderr.decode(errors='replace')}")
    wav = out.stdout
    rate = int.from_bytes(wav[24:28], "little")
    # --stdout cannot seek back to fill in the sizes, so read everything after the data tag
    data = wav[wav.index(b"data") + 8 :]
    pcm = np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float32) / 32768.0
    return trim_silence(resample(pcm, rate, RATE))


def set_level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if audio.size else 0.0
    return (audio * (10 ** (dbfs / 20) / rms)).astype(np.float32) if rms > 0 else audio


def write_wav(path: Path, frames: np.ndarray, rate: int) -> Path:
    """s16 PCM WAV of ``(samples,)`` or ``(samples, channels)`` float audio; rounding, no dither."""
    frames = frames.reshape(frames.shape[0], -1)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(frames.shape[1])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.round(np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def write_ulaw_wav(path: Path, audio16k: np.ndarray) -> None:
    """8 kHz mono G.711 μ-law WAV (format tag 7) of 16 kHz float audio, via soxr and G.711 tables."""
    from worker.protocol.audiofile import resample  # soxr HQ: the generated calls' bytes depend on it
    from worker.protocol.pcm import encode_pcm

    data = encode_pcm(resample(audio16k, RATE, 8000), "mulaw")
    fmt = (7).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    fmt += (8000).to_bytes(4, "little") + (1).to_bytes(2, "little") + (8).to_bytes(2, "little") + bytes(2)
    fact = b"fact" + (4).to_bytes(4, "little") + len(data).to_bytes(4, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + fact
    body += b"data" + len(data).to_bytes(4, "little") + data + (b"\0" if len(data) % 2 else b"")
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
