"""Redis clients for standalone servers and Redis Cluster, from one URL."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

log = logging.getLogger(__name__)


def is_cluster(url: str) -> bool:
    """Ask the server whether it runs in cluster mode."""
    probe = redis.Redis.from_url(url, socket_timeout=5)
    try:
        info = probe.info("cluster")
        return bool(info.get("cluster_enabled"))
    finally:
        probe.close()


def connect(url: str, cluster: bool | None = None, **kwargs: Any) -> Any:
    """A ``redis.Redis`` or, for a cluster, a ``RedisCluster`` (``decode_responses`` off)."""
    if cluster is None:
        cluster = is_cluster(url)
    options = {"socket_timeout": 30, "socket_connect_timeout": 5, "health_check_interval": 15, **kwargs}
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def masked(url: str) -> str:
    """``url`` fit for a log line: its password (and a lone user token) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***" if parts.password is not None else "***"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
