"""Worker settings: one model for the environment (``STREAMSCRIBE_*``, ``.env``) and CLI flags."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.asr.config import ASRConfig
from worker.errors import ConfigError
from worker.protocol.connection import TLSFiles


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(BaseSettings):
    """Every setting of ``streamscribe worker``; see the README's settings table.

    Nested ASR defaults use ``__``: ``STREAMSCRIBE_ASR__MODEL=small``.
    """

    model_config = SettingsConfigDict(
        env_prefix="STREAMSCRIBE_",
        env_nested_delimiter="__",
        env_parse_none_str="null",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    redis_url: str = Field("redis://localhost:6379/0", description="Redis or Valkey URL (any node of a cluster)")
    cluster: bool | None = Field(None, description="Redis Cluster; None detects it from the server")
    tls_ca_file: str | None = Field(None, description="rediss://: the CA that signed the server's certificate")
    tls_cert_file: str | None = Field(None, description="rediss://: a client certificate (tls-auth-clients)")
    tls_key_file: str | None = Field(None, description="rediss://: the client certificate's key")
    key_prefix: str = Field("streamscribe", description="Prefix of every key")
    shards: int = Field(4, ge=1, le=1024, description="Shards of the global streams")
    group: str = Field("workers", min_length=1, description="Consumer group of the workers")
    worker_id: str = Field(default_factory=default_worker_id, description="This worker's consumer name")
    max_sessions: int = Field(8, ge=1, le=10000, description="Sessions one worker owns at most")
    capacity_headroom: float = Field(
        0.85, gt=0, le=1, description="Take new sessions only while inference uses less of the wall clock than this"
    )
    max_backlog_sec: float = Field(
        3.0, gt=0, description="Take no new session while the owned sessions hold more unprocessed audio than this"
    )
    capacity_window_sec: float = Field(30.0, gt=0, description="Averaging window of the measured utilisation")
    economy: bool = Field(
        True,
        description="Sessions drop the turn context while the worker is loaded, and decode more cheaply while it is"
        " far more loaded (see economy_utilisation, economy_decode_utilisation); false: never, so that with"
        " catch_up_step_sec 0 a replay after a takeover is identical",
    )
    economy_utilisation: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Over this utilisation (10 s average) sessions drop the turn context until it is under"
        " three quarters of it; 1: only the backlog switches it",
    )
    economy_backlog_sec: float = Field(
        1.0, gt=0, description="Sessions drop the turn context while one of them has more unprocessed audio than this"
    )
    economy_decode_utilisation: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Over this utilisation (as economy_utilisation) chunk decodes are greedy, and every decode's"
        " window is tighter (asr.economy_beam_size, asr.economy_window_padding_sec), until it is under three"
        " quarters of it; 1: never",
    )
    max_batch: int = Field(
        64, ge=1, le=4096, description="Transcribe requests per backend call; 1 is the sequential path"
    )
    catch_up_step_sec: float = Field(
        3.0,
        ge=0,
        le=10,
        description="A session behind by a chunk or more merges chunk points into steps of up to this much audio,"
        " so the worker catches up; 0: never merge (a replay then makes exactly the calls of the run it replaces)",
    )
    lease_ttl_sec: float = Field(10.0, gt=0.2, description="A silent owner loses its sessions after this")
    janitor_interval_sec: float = Field(1.0, gt=0, description="How often to look for expired leases")
    reconcile_interval_sec: float = Field(
        60.0, gt=0, description="How often the fleet looks for orphans (open sessions no announcement names)"
    )
    poll_interval_sec: float = Field(0.05, gt=0, description="Idle wait between reads")
    drain_timeout_sec: float = Field(
        30.0,
        ge=0,
        description="SIGTERM drains: no new sessions, owned ones served until they end or this long, then handed over",
    )
    stall_timeout_sec: float = Field(60.0, gt=0, description="End a session with no input for this long")
    loop_stall_limit_sec: float = Field(
        30.0, gt=0, description="Stop renewing leases (and fail /healthz) if the loop hangs this long"
    )
    retention_sec: float = Field(86400.0, gt=0, description="Keep an ended session's keys this long")
    max_chunk_bytes: int = Field(262144, ge=1024, description="Larger audio chunks are rejected")
    max_channels: int = Field(2, ge=1, le=8, description="Channels per session")
    read_count: int = Field(500, ge=1, description="Input entries read per session per round trip")
    read_ahead_bytes: int = Field(
        32 * 2**20, ge=2**20, description="Decoded audio one session holds read ahead, at most (bytes)"
    )
    max_session_attempts: int = Field(
        3, ge=1, le=1000, description="Attempts in a row to restore or process a session before it is quarantined"
    )
    commit_backoff_max_sec: float = Field(5.0, gt=0, description="Longest wait between a session's failed commits")
    commit_failure_limit_sec: float = Field(
        30.0, gt=0, description="/healthz fails when commits are attempted but none succeeded for this long"
    )
    events_maxlen: int = Field(1_000_000, ge=1000, description="Approximate cap of each shard's events stream")
    allowed_backends: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["faster-whisper"], description="Backends a session may ask for (comma-separated)"
    )
    allowed_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["base"], description="Models a session may ask for (comma-separated)"
    )
    allowed_languages: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Languages a session may ask for, 'auto' included (comma-separated); empty: any",
    )
    min_chunk_floor_sec: float = Field(
        0.5, ge=0, le=30, description="A session's min_chunk_size below this is refused (it sets the decode rate)"
    )
    max_session_sec: float = Field(
        4 * 3600.0, gt=0, description="End a session this long after it was opened (wall clock), whatever it sends"
    )
    max_rejections: int = Field(
        100, ge=1, description="End a session after this many rejected input entries (dead letters)"
    )
    tenant_max_sessions: int = Field(
        0, ge=0, description="Live sessions each tenant may have across the fleet; 0: no quota"
    )
    tenant_limits: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict, description="Per-tenant quotas that override tenant_max_sessions (acme=20,beta=5)"
    )
    preload: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models (of allowed_models) loaded before the worker takes sessions; /readyz waits for them",
    )
    metrics_host: str = Field("0.0.0.0", description="Address of /metrics and /healthz")
    metrics_port: int = Field(9400, ge=0, le=65535, description="0 picks a free port; -1 is not allowed")
    log_level: str = Field("INFO")
    asr: ASRConfig = Field(default_factory=ASRConfig)

    @field_validator("allowed_backends", "allowed_models", "allowed_languages", "preload", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                import json

                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("tenant_limits", mode="before")
    @classmethod
    def _split_limits(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("{"):
                import json

                return json.loads(value)
            limits: dict[str, str] = {}
            for pair in filter(None, (p.strip() for p in value.split(","))):
                tenant, sep, limit = pair.partition("=")
                if not sep or not tenant.strip():
                    raise ValueError(f"{pair!r}: use TENANT=LIMIT")
                limits[tenant.strip()] = limit.strip()
            return limits
        return value

    @field_validator("tenant_limits", mode="after")
    @classmethod
    def _limits_not_negative(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {t: n for t, n in value.items() if n < 0}
        if bad:
            raise ValueError(f"a tenant's limit is 0 or more: {bad}")
        return value

    def tenant_limit(self, tenant: str) -> int:
        """The tenant's quota of live sessions; 0 means none."""
        return self.tenant_limits.get(tenant, self.tenant_max_sessions)

    @model_validator(mode="after")
    def _preload_is_allowed(self) -> WorkerSettings:
        refused = [m for m in self.preload if m not in self.allowed_models]
        if refused:
            raise ValueError(f"preload names models outside allowed_models {self.allowed_models}: {refused}")
        return self

    def tls(self) -> TLSFiles:
        return TLSFiles(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)

    @classmethod
    def build(cls, **overrides: object) -> WorkerSettings:
        """Environment and ``.env`` first, then explicit overrides (CLI flags); errors name the field."""
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in e.errors()
            )
            raise ConfigError(f"invalid worker settings: {problems}") from e
