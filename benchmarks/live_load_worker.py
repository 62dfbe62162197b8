"""Process-side helpers of ``benchmarks/live_load.py``: the worker subprocess, its metrics, CPU and GPU.

* :class:`WorkerProcess` starts one ``streamscribe worker`` subprocess, waits for its "ready"
  line (which names its metrics port), scrapes ``/metrics`` and stops it (SIGTERM, then SIGKILL).
* :class:`CpuMeter` reads a process's CPU seconds (psutil when installed, else ``/proc``).
* :class:`GpuSampler` samples ``nvidia-smi`` utilisation in the background, where it exists.
* :func:`metrics_delta` turns two scrapes into the worker's RTF, busy fraction and mean batch.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_READY = re.compile(r"streamscribe worker (\S+) ready; metrics on :(\d+)")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")

# the worker's metric names (worker/metrics.py)
INFERENCE_SUM = "streamscribe_inference_duration_seconds_sum"
INFERENCE_COUNT = "streamscribe_inference_duration_seconds_count"
BATCH_SUM = "streamscribe_batch_size_sum"
BATCH_COUNT = "streamscribe_batch_size_count"
AUDIO_PROCESSED = "streamscribe_audio_processed_seconds_total"
AUDIO_RECEIVED = "streamscribe_audio_received_seconds_total"
LATENCY_SUM = "streamscribe_end_to_end_latency_seconds_sum"
LATENCY_COUNT = "streamscribe_end_to_end_latency_seconds_count"
BACKLOG = "streamscribe_backlog_audio_seconds"
ACTIVE = "streamscribe_sessions_active"
ECONOMY = "streamscribe_economy"
#: summed over its guards
REDECODES = "streamscribe_redecodes_total"


def streamscribe_command() -> list[str]:
    """The ``streamscribe`` console script beside this interpreter, else ``python -m worker.cli.main``."""
    script = Path(sys.executable).with_name("streamscribe")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "worker.cli.main"]


def parse_metrics(body: str) -> dict[str, float]:
    """Prometheus text format -> sample name -> value, summed over label sets."""
    out: dict[str, float] = {}
    for line in body.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        with contextlib.suppress(ValueError):
            out[match.group(1)] = out.get(match.group(1), 0.0) + float(match.group(3))
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float], wall_sec: float) -> dict[str, float | None]:
    """The worker's figures over one measured window, from two scrapes of ``/metrics``.

    ``rtf``: inference seconds per second of audio whose processing was committed;
    ``busy``: inference seconds per wall second (1.0 = the model never idle);
    ``mean_batch``: transcribe requests per batched call;
    ``redecodes``: requests the backend's quality guards decoded again.
    """

    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    inference, audio, batches = d(INFERENCE_SUM), d(AUDIO_PROCESSED), d(BATCH_COUNT)
    return {
        "inference_sec": inference,
        "audio_processed_sec": audio,
        "audio_received_sec": d(AUDIO_RECEIVED),
        "rtf": inference / audio if audio > 0 else None,
        "busy": inference / wall_sec if wall_sec > 0 else None,
        "batches": batches,
        "mean_batch": d(BATCH_SUM) / batches if batches > 0 else None,
        "redecodes": d(REDECODES),
        "worker_latency_mean": d(LATENCY_SUM) / d(LATENCY_COUNT) if d(LATENCY_COUNT) > 0 else None,
    }


class WorkerProcess:
    """One ``streamscribe worker`` subprocess; stdout is read for the ready line, stderr goes to a log."""

    def __init__(self, redis_url: str, worker_id: str, log_path: Path, args: Sequence[str] = ()) -> None:
        self.worker_id = worker_id
        self.log_path = log_path
        self.metrics_port = 0
        command = [
            *streamscribe_command(), "worker",
            "--redis-url", redis_url,
            "--worker-id", worker_id,
            "--metrics-port", "0",
            "--metrics-host", "127.0.0.1",
            *args,
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, name="worker-stdout", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = _READY.search(line)
            if match:
                self.metrics_port = int(match.group(2))
                self._ready.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode} before ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready in {timeout:.0f} s:\n{self.log_tail()}")

    def scrape(self, timeout: float = 5.0) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return parse_metrics(reply.read().decode())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_sec: float = 15.0) -> None:
        """SIGTERM (the worker hands its sessions over), then SIGKILL after ``grace_sec``."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_sec)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()


class CpuMeter:
    """CPU seconds (user + system, all threads) of one process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        try:
            import psutil  # type: ignore[import-untyped]

            self._process: Any = psutil.Process(pid)
        except ImportError:
            self._process = None

    def seconds(self) -> float | None:
        try:
            if self._process is not None:
                times = self._process.cpu_times()
                return float(times.user + times.system)
            with open(f"/proc/{self.pid}/stat") as f:
                # the command name (field 2) may hold spaces: split after its closing parenthesis
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self._ticks  # utime, stime (fields 14, 15)
        except Exception:
            return None


class GpuSampler:
    """Mean and peak GPU utilisation and memory from ``nvidia-smi -lms``, while running."""

    def __init__(self, interval_ms: int = 500) -> None:
        self.samples: list[tuple[float, float]] = []  # (utilisation %, memory MiB): one per GPU per interval
        self._proc: subprocess.Popen[str] | None = None
        self._interval_ms = interval_ms

    @staticmethod
    def available() -> bool:
        return shutil.which("nvidia-smi") is not None

    def start(self) -> GpuSampler:
        if not self.available():
            return self
        self.samples = []
        query = ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        self._proc = subprocess.Popen(
            ["nvidia-smi", *query, f"-lms={self._interval_ms}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, name="gpu-sampler", daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                util, mem = (float(v) for v in line.strip().split(",")[:2])
                self.samples.append((util, mem))

    def stop(self) -> dict[str, float] | None:
        if self._proc is None:
            return None
        with contextlib.suppress(OSError):
            self._proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc = None
        if not self.samples:
            return None
        utils = [u for u, _m in self.samples]
        return {
            "util_mean": sum(utils) / len(utils),
            "util_max": max(utils),
            "memory_max_mib": max(m for _u, m in self.samples),
        }
