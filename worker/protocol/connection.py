"""Redis clients for standalone servers and Redis Cluster, from one URL."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from worker.errors import ConfigError

log = logging.getLogger(__name__)

#: Environment variables of the TLS files, read by every client and the worker.
TLS_ENV = {
    "ca_file": "STREAMSCRIBE_TLS_CA_FILE",
    "cert_file": "STREAMSCRIBE_TLS_CERT_FILE",
    "key_file": "STREAMSCRIBE_TLS_KEY_FILE",
}


@dataclass(frozen=True)
class TLSFiles:
    """The files of a ``rediss://`` connection: the CA that signed the server's certificate, and an
    optional client certificate and key (for servers with ``tls-auth-clients yes``)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def resolve(cls, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None) -> TLSFiles:
        """Explicit values first, then ``STREAMSCRIBE_TLS_*_FILE``."""
        return cls(
            ca_file or os.environ.get(TLS_ENV["ca_file"]) or None,
            cert_file or os.environ.get(TLS_ENV["cert_file"]) or None,
            key_file or os.environ.get(TLS_ENV["key_file"]) or None,
        )

    def options(self, url: str) -> dict[str, Any]:
        """redis-py's keyword arguments for ``url``; TLS files with a plain ``redis://`` URL are refused."""
        given = {
            "ssl_ca_certs": self.ca_file,
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
        }
        given = {k: v for k, v in given.items() if v}
        if not given:
            return {}
        if urlsplit(url).scheme != "rediss":
            raise ConfigError(f"TLS files are set but {masked(url)} is not a rediss:// URL")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("a TLS client certificate needs its key, and a key its certificate")
        for path in given.values():
            if not os.path.isfile(str(path)):
                raise ConfigError(f"TLS file {path} does not exist")
        return given


def is_cluster(url: str, tls: TLSFiles | None = None) -> bool:
    """Ask the server whether it runs in cluster mode."""
    probe = redis.Redis.from_url(url, socket_timeout=5, **(tls or TLSFiles()).options(url))
    try:
        info = probe.info("cluster")
        return bool(info.get("cluster_enabled"))
    finally:
        probe.close()


def connect(url: str, cluster: bool | None = None, tls: TLSFiles | None = None, **kwargs: Any) -> Any:
    """A ``redis.Redis`` or, for a cluster, a ``RedisCluster`` (``decode_responses`` off).

    ``rediss://`` URLs connect with TLS, verifying the server against ``tls.ca_file`` (or the
    system's CAs), with ``tls``'s client certificate when it has one.
    """
    if cluster is None:
        cluster = is_cluster(url, tls)
    options = {
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "health_check_interval": 15,
        **(tls or TLSFiles()).options(url),
        **kwargs,
    }
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
