"""TLS to Redis: a real redis-server with --tls-port and client certificates required, certificates made
with openssl at test time; a whole call through a worker process, produce and tail over rediss://.

Debian's Redis 7 is built with TLS; the embedded Valkey wheel is not (it refuses --tls-port), so
these tests need redis-server and openssl on PATH (.ci/run installs both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from benchmarks.call_audio import write_wav
from tests.servers import RedisServerProcess, free_port, redis7_binary
from tests.worker_helpers import WorkerFleet, oracle
from worker.backends.synthetic import encode_words, random_words
from worker.errors import ConfigError
from worker.protocol.connection import TLSFiles, connect

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        redis7_binary() is None or shutil.which("openssl") is None,
        reason="needs redis-server (apt-get install redis-server) and openssl",
    ),
]

STREAMSCRIBE = str(Path(sys.executable).with_name("streamscribe"))
WORDS = random_words(7, seed=101)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a stranger CA."""
    for name in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
                "-subj", f"/CN={name}", "-days", "2", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", "san.cnf", cwd=folder)  # fmt: skip
    return {p.stem + p.suffix.replace(".", "_"): p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tls")
    certs = make_certificates(folder)
    port = free_port()
    server = RedisServerProcess(
        binary=str(redis7_binary()),
        extra_args=[
            "--tls-port", str(port), "--tls-cert-file", str(certs["server_crt"]),
            "--tls-key-file", str(certs["server_key"]), "--tls-ca-cert-file", str(certs["ca_crt"]),
            "--tls-auth-clients", "yes",
        ],
    )  # fmt: skip
    with server:
        yield f"rediss://127.0.0.1:{port}/0", certs, server


def tls_env(certs: dict[str, Path]) -> dict[str, str]:
    return {
        "STREAMSCRIBE_TLS_CA_FILE": str(certs["ca_crt"]),
        "STREAMSCRIBE_TLS_CERT_FILE": str(certs["client_crt"]),
        "STREAMSCRIBE_TLS_KEY_FILE": str(certs["client_key"]),
    }


def test_a_whole_call_runs_over_tls_with_a_client_certificate(tls_server, tmp_path):
    url, certs, _server = tls_server
    flags = ["--tls-ca-file", str(certs["ca_crt"]), "--tls-cert-file", str(certs["client_crt"]),
             "--tls-key-file", str(certs["client_key"])]  # fmt: skip
    wav = write_wav(tmp_path / "call.wav", encode_words(WORDS, 16000), 16000)
    with WorkerFleet(tmp_path) as fleet:
        fleet.spawn(url, "tls-worker", args=flags)
        produced = subprocess.run(
            [STREAMSCRIBE, "produce", str(wav), "--session-id", "tls-call", "--redis-url", url, "--no-progress",
             *flags],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert produced.returncode == 0, produced.stderr
        tailed = subprocess.run(
            [STREAMSCRIBE, "tail", "tls-call", "--json", "--redis-url", url, "--idle-timeout", "30"],
            capture_output=True, text=True, timeout=60, env={**os.environ, **tls_env(certs)},
        )  # fmt: skip
    assert tailed.returncode == 0, tailed.stderr
    events = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert events[-1]["type"] == "session_ended" and events[-1]["reason"] == "completed"
    words = [(w["start"], w["end"], w["word"]) for e in events if e["type"] == "segment" for w in e["words"]]
    assert words == oracle(WORDS)


def test_a_plain_client_on_the_tls_port_fails_with_one_clear_line(tls_server):
    url, _certs, _server = tls_server
    plain = url.replace("rediss://", "redis://")
    done = subprocess.run(
        [STREAMSCRIBE, "tail", "any-call", "--redis-url", plain, "--idle-timeout", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot talk to Redis" in lines[0] and "Traceback" not in done.stderr


def test_tls_refuses_a_stranger_ca_and_a_missing_client_certificate(tls_server):
    url, certs, _server = tls_server
    stranger = TLSFiles(str(certs["other-ca_crt"]), str(certs["client_crt"]), str(certs["client_key"]))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        connect(url, cluster=False, tls=stranger).ping()
    anonymous = TLSFiles(str(certs["ca_crt"]))
    with pytest.raises(redis.ConnectionError):
        connect(url, cluster=False, tls=anonymous).ping()
    assert connect(url, tls=TLSFiles(str(certs["ca_crt"]), str(certs["client_crt"]), str(certs["client_key"]))).ping()


def test_tls_files_are_checked_before_connecting(tmp_path):
    with pytest.raises(ConfigError, match="not a rediss:// URL"):
        TLSFiles(ca_file=__file__).options("redis://:secret@127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="does not exist"):
        TLSFiles(ca_file=str(tmp_path / "missing.pem")).options("rediss://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="needs its key"):
        TLSFiles(ca_file=__file__, cert_file=__file__).options("rediss://127.0.0.1:6379/0")
    assert TLSFiles().options("redis://127.0.0.1:6379/0") == {}
