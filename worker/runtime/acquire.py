"""Taking a claimed session: bump its epoch, load its processors, restore its checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from worker.asr.config import ASRConfig
from worker.backends.registry import load_processor
from worker.errors import ConfigError, DecodeError, StreamscribeError
from worker.protocol.connection import text
from worker.protocol.keys import Keyspace
from worker.protocol.messages import SessionOpen
from worker.protocol.scripts import Scripts
from worker.runtime import inputs
from worker.runtime.checkpoint import Checkpoint
from worker.runtime.quotas import QUOTA_EXCEEDED, TenantQuotas
from worker.runtime.restore import restore_session
from worker.runtime.session import LiveSession, SessionLease
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class Acquired:
    """What ``acquire.lua`` said: ``ok`` (with a session), ``ended``, ``missing`` or ``duplicate``.

    ``unusable``: the session's state key is not a hash, so no worker can ever serve it.
    """

    status: str
    session: LiveSession | None = None
    takeover: bool = False


class SessionFactory:
    def __init__(self, client: Any, keys: Keyspace, scripts: Scripts, settings: WorkerSettings) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts
        self.settings = settings
        self.quotas = TenantQuotas(client, keys, scripts, settings)

    def requested_config(self, sid: str) -> ASRConfig | None:
        """The ASR options the session's open message asks for, read without taking the session.

        None when there is no usable open message or it asks for something refused here: taking
        the session then ends it with the reason, and needs no model.
        """
        try:
            opened = SessionOpen.decode(self.client.hget(self.keys.session_open(sid), "open") or b"")
            self._check_allowed(opened)
            return self.session_config(opened)
        except Exception:  # whatever is wrong, acquire() finds it again and ends the session with it
            return None

    def acquire(self, shard: int, entry_id: str, sid: str, now_ms: int, load_error: str | None = None) -> Acquired:
        """Take the claimed session; ``load_error``: its model failed to load, so it ends with that."""
        try:
            reply = self.scripts.call(
                self.client,
                "acquire",
                [self.keys.session_state(sid), self.keys.session_open(sid)],
                [self.settings.worker_id, entry_id, now_ms],
            )
        except ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
            log.error("session %s: its state or open key is not a hash (%s); it cannot be served", sid, e)
            return Acquired("unusable")
        status = text(reply[0])
        if status != "ok":
            return Acquired(status)
        epoch, open_blob, checkpoint, out_seq = int(reply[1]), reply[2], reply[3], int(reply[4])
        lease = SessionLease(sid, shard, entry_id, epoch)
        attempts = int(reply[6])
        if attempts > self.settings.max_session_attempts:
            # the earlier attempts died or failed in restore or processing: do neither again
            return Acquired("ok", self._quarantined(lease, open_blob, checkpoint, out_seq, attempts), epoch > 1)
        session = self._build(lease, open_blob, load_error)
        session.out_seq = out_seq
        session.deadline = _deadline(reply[7], now_ms, self.settings.max_session_sec)
        if session.dirty:  # it ends at once (a refused open, a backend that cannot load)
            _carry_over(session, checkpoint)
            session.started_event()
        elif checkpoint:
            try:
                # anything but a bad checkpoint (a processor's own error) propagates: the caller
                # hands the session over, and the attempt count decides whether it is tried again
                restore_session(session, checkpoint, out_seq, self._retained_input(sid, checkpoint))
            except StreamscribeError as e:
                log.error("session %s: cannot restore its checkpoint: %s", sid, e)
                session = self._build(lease, open_blob)
                session.out_seq = out_seq
                _carry_over(session, checkpoint)
                session.started_event()
                if not session.dirty:
                    session.fail("restore_failed", f"the session's checkpoint could not be restored: {e}")
        else:
            session = self._admitted(session)
            session.started_event()
        return Acquired("ok", session, takeover=epoch > 1)

    def _admitted(self, session: LiveSession) -> LiveSession:
        """A session that starts now, or, past its tenant's quota, one that ends at once saying so."""
        refusal = self.quotas.admit(session.session_id, session.opened.quota_tenant)
        if refusal is None:
            return session
        refused = self._live(session.lease, session.opened, [], session.opened.sample_rate, session.config)
        refused.out_seq = session.out_seq
        refused.deadline = session.deadline
        refused.fail(QUOTA_EXCEEDED, refusal)
        return refused

    def _build(self, lease: SessionLease, open_blob: bytes | None, load_error: str | None = None) -> LiveSession:
        """A live session; a bad open message or a refused option gives one that fails at once."""
        raw = open_blob or b""
        try:
            if not open_blob:
                raise DecodeError("the session has no open message")
            opened = SessionOpen.decode(open_blob)
            if opened.session_id != lease.session_id:
                raise DecodeError(
                    f"the open message names session {opened.session_id!r}, stored under {lease.session_id!r}"
                )
        except DecodeError as e:
            fallback = SessionOpen(session_id=lease.session_id)
            return self._refused(lease, fallback, inputs.BAD_SESSION, f"invalid session open message: {e}", raw)
        try:
            self._check_allowed(opened)
        except ConfigError as e:
            return self._refused(lease, opened, inputs.NOT_ALLOWED, str(e), raw)
        try:
            config = self.session_config(opened)
        except ConfigError as e:
            return self._refused(lease, opened, inputs.BAD_SESSION, f"invalid ASR options: {e}", raw)
        try:
            if load_error is not None:
                raise ConfigError(f"model {config.model!r} could not be loaded: {load_error}")
            per_channel = config.for_channels(opened.channels)
            loaded = [load_processor(per_channel) for _ in range(opened.channels)]
        except Exception as e:  # faster-whisper, ctranslate2 and the hub raise their own types
            # the session asked for something allowed; this worker could not provide it
            session = self._live(lease, opened, [], opened.sample_rate, config)
            session.fail("backend_error", str(e))
            return session
        rate = int(loaded[0][1].get("sample_rate", 16000))
        return self._live(lease, opened, [p for p, _meta in loaded], rate, config)

    def _quarantined(
        self, lease: SessionLease, open_blob: bytes | None, checkpoint: bytes, out_seq: int, attempts: int
    ) -> LiveSession:
        """A session that failed too often: it ends at once, without loading or restoring anything."""
        sid = lease.session_id
        log.error(
            "session %s: %d attempts in a row failed; quarantining it",
            sid,
            attempts - 1,
            extra={"session": sid, "event": "quarantined"},
        )
        try:
            opened = SessionOpen.decode(open_blob or b"")
            if opened.session_id != sid:
                raise DecodeError("forged session id")
        except DecodeError:
            opened = SessionOpen(session_id=sid)
        session = self._live(lease, opened, [], opened.sample_rate)
        session.out_seq = out_seq
        session.untrusted = True  # its commit keeps the last checkpoint, for inspection
        _carry_over(session, checkpoint)
        session.started_event()
        message = (
            f"{attempts - 1} attempt(s) in a row to restore or process this session failed or killed their "
            "worker; it is ended instead of tried again"
        )
        session.fail(inputs.QUARANTINED, message)
        return session

    def _refused(self, lease: SessionLease, opened: SessionOpen, reason: str, message: str, raw: bytes) -> LiveSession:
        session = self._live(lease, opened, [], opened.sample_rate)
        session.reject_open(reason, message, raw)
        return session

    def _live(
        self,
        lease: SessionLease,
        opened: SessionOpen,
        processors: list[Any],
        rate: int,
        config: ASRConfig | None = None,
    ) -> LiveSession:
        return LiveSession(
            lease,
            opened,
            processors,
            worker_id=self.settings.worker_id,
            max_chunk_bytes=self.settings.max_chunk_bytes,
            processor_rate=rate,
            config=config,
            max_rejections=self.settings.max_rejections,
            catch_up_step_sec=self.settings.catch_up_step_sec,
        )

    def _check_allowed(self, opened: SessionOpen) -> None:
        """Refuse (ConfigError) what this worker does not serve: channels, backend, model."""
        s = self.settings
        asked = opened.asr
        if opened.channels > s.max_channels:
            raise ConfigError(f"{opened.channels} channels; this worker takes at most {s.max_channels}")
        if "backend" in asked and str(asked["backend"]) not in s.allowed_backends:
            raise ConfigError(
                f"backend {asked['backend']!r} is not allowed here; allowed: {', '.join(s.allowed_backends)}"
            )
        if "model" in asked and str(asked["model"]) not in s.allowed_models:
            raise ConfigError(f"model {asked['model']!r} is not allowed here; allowed: {', '.join(s.allowed_models)}")
        language = str(asked.get("language", s.asr.lan))
        if s.allowed_languages and language not in s.allowed_languages:
            raise ConfigError(f"language {language!r} is not allowed here; allowed: {', '.join(s.allowed_languages)}")
        chunk = asked.get("min_chunk_size")
        if isinstance(chunk, int | float) and 0 < chunk < s.min_chunk_floor_sec:  # <= 0 is invalid: bad_session
            raise ConfigError(
                f"min_chunk_size {chunk} s is below this worker's floor of {s.min_chunk_floor_sec} s "
                "(each chunk is a decode)"
            )

    def session_config(self, opened: SessionOpen) -> ASRConfig:
        """The worker's ASR defaults with the session's overrides (see :meth:`_check_allowed`)."""
        s = self.settings
        asked = opened.asr
        changes: dict[str, Any] = {
            "backend": str(asked.get("backend", s.asr.backend)),
            "model": str(asked.get("model", s.asr.model)),
            "input_sample_rate": opened.sample_rate,
        }
        if "language" in asked:
            changes["lan"] = asked["language"]
        if "min_chunk_size" in asked:
            changes["min_chunk_size"] = asked["min_chunk_size"]
        return s.asr.replace(**changes)

    def _retained_input(self, sid: str, checkpoint: bytes) -> list[tuple[Any, dict[Any, Any]]]:
        """The input entries from the checkpoint's trim point through its position."""
        state = Checkpoint.decode(checkpoint)
        if state.trim is None:
            return []
        return self.client.xrange(self.keys.session_input(sid), state.trim[0], state.in_pos)


def _carry_over(session: LiveSession, checkpoint: bytes) -> None:
    """What a session that ends at once keeps of the call so far: whether it started, its totals."""
    if not checkpoint:
        return
    try:
        state = Checkpoint.decode(checkpoint)
    except StreamscribeError:
        return
    session.started = state.started
    session.totals = state.totals


def _deadline(created_ms: Any, now_ms: int, max_session_sec: float) -> float:
    """When the session must end (Unix seconds): ``max_session_sec`` after its open.

    The open time is the producer's clock; one in the future (skew, or a producer dodging the
    cap) counts from now instead.
    """
    try:
        opened_ms = min(int(created_ms), now_ms)
    except (TypeError, ValueError):
        opened_ms = now_ms
    return opened_ms / 1000 + max_session_sec
