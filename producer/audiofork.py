"""A WebSocket server for FreeSWITCH ``mod_audio_fork``: each forked call is written to one session.

``uuid_audio_fork <uuid> start <ws-url> <mix-type> <sampling-rate> [metadata]`` (drachtio's
mod_audio_fork) opens one WebSocket per call, advertising the sub-protocol ``audio.drachtio.org``
(``audiostream.drachtio.org`` in older releases). It sends the ``metadata`` argument as a text
frame first, when one is given, then the call's audio as binary frames: signed 16-bit linear PCM,
little-endian, at the sampling rate (``8k``, ``16k``, or a multiple of 8000), with one channel
(``mono``: the caller; ``mixed``: both parties mixed) or two interleaved (``stereo``: the caller on
channel 0, the callee on channel 1).

Neither the rate nor the layout is on the wire, so they come from the gateway's flags, which the
metadata may override per call (``sampleRate``/``sample_rate``, ``mixType``/``mix_type``). The
session id is the last segment of the URL path (``ws://gateway:8766/<uuid>``, the usual way to put
the channel UUID in the URL), or else the metadata's ``uuid``, ``callid`` or ``session_id``, or a
random id; ``--session-prefix`` goes before it.

A close with code 1000 or 1001 (``uuid_audio_fork ... stop``, a hang-up) ends the session as
``completed``; a connection lost without a close frame ends it with ``error``. Audio that is not
whole frames of samples, or a rate or mix type the gateway cannot take, is a malformed call: it is
logged, the session ends with ``error``, and the socket is closed with 1003. Metadata that is not
a JSON object is kept as text (``fork_metadata``) in the session's metadata.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from producer.aio import AsyncProducer, AsyncSessionWriter
from producer.common import GatewayStats
from producer.gateway import close_draining
from worker.errors import SessionExistsError

log = logging.getLogger(__name__)

SUBPROTOCOLS = ("audio.drachtio.org", "audiostream.drachtio.org")
MIX_CHANNELS = {"mono": 1, "mixed": 1, "stereo": 2}
#: Metadata keys that name the call, in order of preference.
ID_KEYS = ("uuid", "callid", "call_id", "session_id")


class MalformedCall(ValueError):
    """Audio or metadata that breaks the protocol; the call cannot go on."""


def parse_rate(value: Any) -> int:
    """``8k``, ``16k``, ``16000``: a sampling rate in Hz (a multiple of 8000 up to 192 kHz)."""
    text = str(value).strip().lower()
    rate = int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)
    if rate % 8000 or not 8000 <= rate <= 192000:
        raise ValueError(f"sampling rate {value!r} is not a multiple of 8000 Hz up to 192 kHz")
    return rate


class AudioForkGateway:
    """Serves mod_audio_fork WebSockets; each call is written to a new ``pcm_s16le`` session."""

    def __init__(
        self,
        producer: AsyncProducer,
        *,
        sample_rate: int = 8000,
        mix_type: str = "mono",
        basic_auth: str | None = None,
        language: str | None = None,
        tenant: str | None = None,
        session_prefix: str = "",
        chunk_ms: int = 100,
        subprotocols: tuple[str, ...] = SUBPROTOCOLS,
    ) -> None:
        if mix_type not in MIX_CHANNELS:
            raise ValueError(f"mix type {mix_type!r} is not one of {', '.join(MIX_CHANNELS)}")
        self.producer = producer
        self.sample_rate = parse_rate(sample_rate)
        self.mix_type = mix_type
        #: the ``Authorization: Basic`` value accepted on the upgrade; None accepts every upgrade
        self.authorization = None if basic_auth is None else "Basic " + base64.b64encode(basic_auth.encode()).decode()
        self.language = language
        #: the sessions' tenant, for the workers' per-tenant quotas
        self.tenant = tenant
        self.session_prefix = session_prefix
        self.chunk_ms = max(20, chunk_ms)
        self.subprotocols = subprotocols
        self.sessions: list[str] = []  # every session opened, in order (for logs and tests)
        self.stats = GatewayStats()

    async def serve(self, host: str = "0.0.0.0", port: int = 8766) -> Any:
        """Start listening; returns the ``websockets`` server (``close()``, ``wait_closed()``)."""
        from websockets.asyncio.server import serve

        return await serve(
            self.handler,
            host,
            port,
            max_size=2**20,
            subprotocols=list(self.subprotocols),
            process_request=self._authorize,
        )

    def _authorize(self, connection: Any, request: Any) -> Any:
        """Refuse the upgrade (401) unless it carries the basic-auth credentials, when they are set."""
        if self.authorization is None:
            return None
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), self.authorization.encode()):
            return None
        self.stats.refused_auth += 1
        log.warning("refused an audio fork from %s: no valid basic auth", connection.remote_address)
        response = connection.respond(401, "basic auth required\n")
        response.headers["WWW-Authenticate"] = 'Basic realm="streamscribe"'
        return response

    async def handler(self, ws: Any) -> None:
        """One WebSocket: one forked call."""
        from websockets.exceptions import ConnectionClosed

        writer: AsyncSessionWriter | None = None
        pending = bytearray()
        reason = "error"
        metadata: dict[str, Any] = {}
        frame_bytes = chunk_bytes = 0
        self.stats.connections += 1
        try:
            async for message in ws:
                if isinstance(message, str):
                    if writer is None and not metadata:
                        metadata = _metadata(message)
                    continue  # later text frames (send_text) carry the application's own events
                if writer is None:
                    writer, frame_bytes, chunk_bytes = await self._open(ws, metadata)
                self.stats.frames += 1
                if len(message) % frame_bytes:
                    raise MalformedCall(f"{len(message)} audio bytes are not whole {frame_bytes}-byte frames")
                pending += message
                if len(pending) >= chunk_bytes:
                    await writer.send(bytes(pending))
                    pending.clear()
            reason = "completed" if ws.close_code in (1000, 1001) else "error"
        except ConnectionClosed as e:
            reason = "completed" if e.rcvd is not None and e.rcvd.code in (1000, 1001) else "error"
        except SessionExistsError as e:
            self.stats.refused_duplicate += 1
            log.warning("refusing an audio fork: %s", e)
            await close_draining(ws, 1008, "this call is streaming already")
        except MalformedCall as e:
            self.stats.malformed += 1
            log.warning("audio fork %s: %s; ending the call", writer.session_id if writer else "(not started)", e)
            await close_draining(ws, 1003, str(e))
        finally:
            self.stats.connections -= 1
            if writer is not None:
                if pending:
                    await writer.send(bytes(pending))
                await writer.close(reason)
                log.info("session %s: audio fork ended (%s)", writer.session_id, reason)

    async def _open(self, ws: Any, metadata: dict[str, Any]) -> tuple[AsyncSessionWriter, int, int]:
        try:
            rate = parse_rate(metadata.get("sampleRate", metadata.get("sample_rate", self.sample_rate)))
        except ValueError as e:
            raise MalformedCall(str(e)) from e
        mix = str(metadata.get("mixType", metadata.get("mix_type", self.mix_type)))
        if mix not in MIX_CHANNELS:
            raise MalformedCall(f"mix type {mix!r} is not one of {', '.join(MIX_CHANNELS)}")
        channels = MIX_CHANNELS[mix]
        name = _path_id(ws) or next((str(metadata[k]) for k in ID_KEYS if metadata.get(k)), "")
        session_id = self.session_prefix + re.sub(r"[^A-Za-z0-9._:@+=-]", "_", name)[:100] if name else None
        flat = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
        writer = await self.producer.open(
            session_id,
            sample_rate=rate,
            encoding="pcm_s16le",
            channels=channels,
            language=str(metadata.get("language") or self.language or "") or None,
            metadata={**{k: v[:2048] for k, v in list(flat.items())[:48]}, "source": "audio_fork", "mix_type": mix},
            tenant=self.tenant,
        )
        self.sessions.append(writer.session_id)
        self.stats.calls += 1
        log.info("audio fork -> session %s (%d Hz, %s)", writer.session_id, rate, mix)
        frame_bytes = 2 * channels
        return writer, frame_bytes, frame_bytes * rate * self.chunk_ms // 1000


def _metadata(text: str) -> dict[str, Any]:
    """The metadata frame: a JSON object, or any other text kept as it is."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"fork_metadata": text[:2048]}


def _path_id(ws: Any) -> str:
    """The last non-empty segment of the request path (``/fork/<uuid>`` -> ``<uuid>``)."""
    path = urlsplit(ws.request.path).path
    segments = [unquote(s) for s in path.split("/") if s]
    return segments[-1] if segments else ""
