"""Shared pytest fixtures.

Add new fixtures below the "Redis / Valkey servers" section; keep that section first.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# `python -m pytest` puts the repo root on sys.path; a bare `pytest` does not.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import (
    ClusterProcess,
    RedisServerProcess,
    available_server_kinds,
    binary_for_kind,
    start_cluster,
    valkey_binary,
)

# ---------------------------------------------------------------------------------------------
# Redis / Valkey servers: real processes, started once per session (see tests/servers.py).
#
#   redis_server   (session)  RedisServerProcess, parametrised over "valkey" and, when
#                             redis-server is on PATH, "redis7" (Debian's Redis 7.0)
#   redis_url      (function) redis_server's url, after FLUSHALL
#   redis_client   (function) redis.Redis(decode_responses=False) on redis_url
#   valkey_server  (session)  one valkey RedisServerProcess, not parametrised
#   valkey_url     (function) valkey_server's url, after FLUSHALL
#   redis_cluster  (session)  ClusterProcess: 3 valkey nodes, all primaries
#   cluster_url    (function) node 1's url, after FLUSHALL on every node
#
# Session servers are never flushed implicitly: take a *_url fixture for a clean database.
# ---------------------------------------------------------------------------------------------


def _flushall(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushall()


@pytest.fixture(scope="session", params=available_server_kinds())
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServerProcess]:
    server = RedisServerProcess(binary=binary_for_kind(request.param))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServerProcess) -> Iterator[str]:
    _flushall(redis_server.url)
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[RedisServerProcess]:
    server = RedisServerProcess(binary=valkey_binary())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def valkey_url(valkey_server: RedisServerProcess) -> Iterator[str]:
    _flushall(valkey_server.url)
    yield valkey_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterProcess]:
    cluster = start_cluster(valkey_binary(), n=3)  # cleans up after itself if it fails
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: ClusterProcess) -> Iterator[str]:
    for node in redis_cluster.nodes:
        _flushall(node.url)
    yield redis_cluster.url


# ---------------------------------------------------------------------------------------------
# Other fixtures go below.
# ---------------------------------------------------------------------------------------------
