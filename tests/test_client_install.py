"""The client install: producers, consumers, ``produce`` and ``tail`` with redis, msgpack and numpy only.

A real interpreter runs with nothing but those three packages (copied from this environment into a
fresh venv) and the repository on its path: the client imports, ``produce`` reads WAV with the
standard library and raw audio from stdin into a real server, and the worker says which extra it needs.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.call_audio import write_wav
from tests.client_helpers import raw_client
from worker.protocol.audiofile import _fft_resample, read_wav
from worker.protocol.keys import Keyspace
from worker.protocol.messages import AudioChunk, EndOfSession, SessionOpen, decode_input

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
CLIENT_PACKAGES = ("redis", "msgpack", "numpy")
#: Modules only the worker extra brings; the client must import none of them.
WORKER_ONLY = ("pydantic", "pydantic_settings", "faster_whisper", "ctranslate2", "av", "soxr", "prometheus_client")


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A venv with no packages, and a PYTHONPATH holding only redis, msgpack, numpy and the repo."""
    base = tmp_path_factory.mktemp("client-install")
    venv.EnvBuilder(with_pip=False).create(base / "venv")
    lib = base / "lib"
    lib.mkdir()
    for name in CLIENT_PACKAGES:
        package = Path(__import__(name).__file__).parent
        shutil.copytree(package, lib / name)
        libs = package.parent / f"{name}.libs"  # numpy's vendored shared libraries
        if libs.is_dir():
            shutil.copytree(libs, lib / libs.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = f"{lib}{os.pathsep}{ROOT}"
    return str(base / "venv" / "bin" / "python"), env


def run_client(
    client_python: tuple[str, dict[str, str]], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess:
    python, env = client_python
    return subprocess.run([python, *args], input=stdin, capture_output=True, env=env, cwd=ROOT, timeout=60, check=False)


def test_the_client_packages_import_without_any_worker_dependency(client_python):
    probe = (
        "import sys, producer, producer.aio, producer.consumer, worker.cli.produce, worker.cli.tail\n"
        f"loaded = sorted(m for m in {WORKER_ONLY!r} if m in sys.modules)\n"
        "heavy = ('worker.runtime', 'worker.asr', 'worker.backends')\n"
        "runtime = sorted(m for m in sys.modules if m.startswith(heavy))\n"
        "print(loaded, runtime)\n"
    )
    done = run_client(client_python, "-c", probe)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "[] []"


def test_the_worker_subcommand_names_the_extra_it_needs(client_python):
    done = run_client(client_python, "-m", "worker.cli.main", "worker", "--redis-url", "redis://x")
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "pip install 'streamscribe[worker]'" in lines[0], lines


def test_produce_reads_a_wav_file_with_the_standard_library_into_a_real_session(client_python, redis_url, tmp_path):
    rate = 16000
    t = np.arange(rate * 2) / rate
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_wav(tmp_path / "tone.wav", audio, rate)
    done = run_client(
        client_python, "-m", "worker.cli.main", "produce", "--redis-url", redis_url, "--no-progress", str(path)
    )
    assert done.returncode == 0, done.stderr.decode()
    sid = done.stdout.decode().strip()
    opened, sent, end = session_input(redis_url, sid)
    assert (opened.sample_rate, opened.encoding, opened.channels) == (16000, "pcm_s16le", 1)
    assert end is not None and end.reason == "completed"
    written = (np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes()
    assert sent == written, "a WAV at the session's rate goes out sample for sample"


def test_produce_resamples_a_wav_at_another_rate_without_soxr(client_python, redis_url, tmp_path):
    t = np.arange(44100) / 44100
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_wav(tmp_path / "cd.wav", np.stack([audio, audio], axis=1), 44100)
    done = run_client(
        client_python, "-m", "worker.cli.main", "produce", "--redis-url", redis_url, "--no-progress", str(path)
    )
    assert done.returncode == 0, done.stderr.decode()
    _opened, sent, _end = session_input(redis_url, done.stdout.decode().strip())
    got = np.frombuffer(sent, dtype="<i2").astype(np.float32) / 32767
    assert got.shape[0] == 16000
    expected = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    inner = slice(800, -800)  # the FFT resampler treats the signal as periodic: its edges ring
    assert np.max(np.abs(got[inner] - expected[inner])) < 0.01


def test_produce_dash_streams_raw_mulaw_from_stdin_as_it_comes(client_python, redis_url):
    raw = bytes(range(256)) * 40  # 10240 bytes: 1.28 s of 8 kHz μ-law
    done = run_client(
        client_python,
        "-m",
        "worker.cli.main",
        "produce",
        "-",
        "--encoding",
        "mulaw",
        "--redis-url",
        redis_url,
        "--session-id",
        "stdin-call",
        stdin=raw,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "stdin-call"
    opened, sent, end = session_input(redis_url, "stdin-call")
    assert (opened.sample_rate, opened.encoding) == (8000, "mulaw")
    assert sent == raw and end is not None and end.reason == "completed"


def test_the_standard_library_wav_reader_agrees_with_pyav_on_every_integer_width(tmp_path):
    import wave

    from worker.protocol.audiofile import _decode_with_pyav

    rng = np.random.default_rng(3)
    audio = rng.uniform(-0.5, 0.5, size=(4000, 2)).astype(np.float32)
    for width in (1, 2, 3, 4):
        path = tmp_path / f"w{width}.wav"
        scale = 2 ** (8 * width - 1) - 1
        ints = np.round(audio * scale).astype(np.int64)
        if width == 1:
            data = (ints + 128).astype(np.uint8).tobytes()
        else:
            data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.reshape(-1))
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(width)
            w.setframerate(16000)
            w.writeframes(data)
        channels, rate = read_wav(path)
        assert rate == 16000 and channels.shape == (2, 4000)
        reference = _decode_with_pyav(path, 16000, True)
        assert np.max(np.abs(channels - reference)) < 2.0 / 2 ** (8 * width - 1) + 1e-6, width


def test_the_fft_resampler_keeps_a_tone_below_nyquist_and_removes_one_above():
    rate = 48000
    t = np.arange(rate) / rate
    kept = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    aliased = np.sin(2 * np.pi * 12000 * t).astype(np.float32)  # above 8 kHz, the Nyquist rate of 16 kHz
    out_kept = _fft_resample(kept, rate, 16000)
    out_aliased = _fft_resample(aliased, rate, 16000)
    assert out_kept.shape == (16000,)
    assert abs(np.sqrt(np.mean(out_kept**2)) - np.sqrt(0.5)) < 0.01
    assert np.sqrt(np.mean(out_aliased**2)) < 0.01


def test_producer_modules_import_only_the_protocol_of_the_worker_package():
    problems = []
    for path in sorted((ROOT / "producer").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("worker") and not name.startswith(("worker.protocol", "worker.errors")):
                    problems.append(f"{path.name}: {name}")
    assert not problems, problems


def session_input(url: str, sid: str) -> tuple[SessionOpen, bytes, EndOfSession | None]:
    client = raw_client(url)
    keys = Keyspace()
    opened = SessionOpen.decode(client.hget(keys.session_open(sid), "open"))
    payload, end = b"", None
    for _id, fields in client.xrange(keys.session_input(sid)):
        message = decode_input(fields[b"m"])
        if isinstance(message, AudioChunk):
            payload += message.payload
        elif isinstance(message, EndOfSession):
            end = message
    return opened, payload, end
