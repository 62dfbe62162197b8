"""A WebSocket bridge from Twilio Media Streams to streamscribe sessions.

Twilio connects one WebSocket per ``<Stream>`` and sends JSON text messages:

* ``connected``; then ``start`` with ``streamSid``, ``callSid``, ``accountSid``, ``tracks``
  (``["inbound"]``, or ``["inbound", "outbound"]`` for ``track="both_tracks"``),
  ``mediaFormat`` (``audio/x-mulaw``, 8000 Hz, 1 channel per track) and ``customParameters``;
* ``media`` with ``track``, ``chunk`` (1, 2, ... per track), ``timestamp`` (ms since the stream
  started) and ``payload`` (base64 of 20 ms of mu-law, 160 bytes);
* ``stop`` when the call or the stream ends (``mark`` and ``dtmf`` are ignored).

Each stream becomes one session, ``mulaw`` at 8000 Hz, named after the call's ``callSid`` (or
the ``streamSid``, see :class:`TwilioGateway`). With both tracks the session is stereo:
channel 0 is the inbound track (the caller), channel 1 the outbound track (what the caller
hears: the agent or the bot). The tracks arrive as separate, not always alternating, messages;
:class:`FrameMixer` places each 20 ms frame by its timestamp and emits a stereo frame once both
tracks have it, or with silence for a track that is more than ``max_lag_ms`` behind (a track
that sends nothing, or a lost frame). So the channels stay aligned in time and the worker
transcribes each one separately; every segment says which channel spoke.

With an auth token, an upgrade whose ``X-Twilio-Signature`` does not sign the public URL (the
``<Stream url>``) with it is refused with 403, before any message is read. A stream that names a
call another stream carries is refused (close 1008), so its audio reaches no session. Frames are
written in chunks of ``frames_per_chunk``, and a timestamp more than a minute ahead is dropped, so
no message can turn into a large write.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from producer.aio import AsyncProducer, AsyncSessionWriter
from producer.common import GatewayStats, silence
from worker.errors import SessionExistsError

log = logging.getLogger(__name__)

TELEPHONY_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = TELEPHONY_RATE * FRAME_MS // 1000
#: Twilio's media formats and the wire encodings they are.
MEDIA_ENCODINGS = {"audio/x-mulaw": "mulaw", "audio/x-alaw": "alaw"}
#: Channel order of a two-track stream.
TRACK_ORDER = ("inbound", "outbound")
#: A frame this far ahead of the last one emitted is a broken timestamp, not a pause (one minute):
#: Twilio streams silence as media too, so a real stream never jumps this far.
MAX_AHEAD_FRAMES = 60 * 1000 // FRAME_MS


class FrameMixer:
    """Aligns the tracks' frames by index and interleaves them into multi-channel frames.

    ``push`` takes one track's frame (index = timestamp / 20 ms; a longer payload is split into
    consecutive frames) and returns the interleaved frames now complete, in order. A frame is
    complete when every track has it, or when some track is ``max_lag_frames`` ahead: missing
    tracks are then filled with ``fill`` (silence). Late and repeated frames are dropped.
    """

    def __init__(
        self, tracks: Sequence[str], *, fill: bytes, frame_bytes: int = FRAME_SAMPLES, max_lag_frames: int = 10
    ):
        if len(fill) != frame_bytes:
            raise ValueError(f"fill must be one frame ({frame_bytes} bytes)")
        self.tracks = list(tracks)
        self.fill = fill
        self.frame_bytes = frame_bytes
        self.max_lag_frames = max_lag_frames
        self.buffers: dict[str, dict[int, bytes]] = {t: {} for t in self.tracks}
        self.next_index = 0
        self.max_seen = -1
        self.filled = 0  # track-frames replaced by silence
        self.dropped = 0  # late, repeated or absurd frames

    def push(self, track: str, index: int, payload: bytes) -> list[bytes]:
        buffer = self.buffers.get(track)
        if buffer is None:
            self.dropped += 1
            return []
        for offset in range(0, len(payload), self.frame_bytes):
            piece = payload[offset : offset + self.frame_bytes]
            piece += self.fill[len(piece) :]
            i = index + offset // self.frame_bytes
            if i < self.next_index or i in buffer or i > self.next_index + MAX_AHEAD_FRAMES:
                self.dropped += 1
                continue
            buffer[i] = piece
            self.max_seen = max(self.max_seen, i)
        return self._drain(final=False)

    def flush(self) -> list[bytes]:
        """Everything still buffered, gaps filled: the stream has ended."""
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> list[bytes]:
        out = []
        while self.next_index <= self.max_seen:
            n = self.next_index
            complete = all(n in b for b in self.buffers.values())
            if not (complete or final or self.max_seen - n >= self.max_lag_frames):
                break
            pieces = []
            for b in self.buffers.values():
                piece = b.pop(n, None)
                if piece is None:
                    self.filled += 1
                    piece = self.fill
                pieces.append(piece)
            out.append(_interleave(pieces))
            self.next_index += 1
        return out


def _interleave(pieces: list[bytes]) -> bytes:
    if len(pieces) == 1:
        return pieces[0]
    # one byte per sample (G.711): frame-major interleaving is a transpose
    return np.stack([np.frombuffer(p, dtype=np.uint8) for p in pieces], axis=1).tobytes()


class CallStream:
    """One Twilio stream's session: frames in, chunks of ``frames_per_chunk`` frames out."""

    def __init__(self, writer: AsyncSessionWriter, mixer: FrameMixer, frames_per_chunk: int) -> None:
        self.writer = writer
        self.mixer = mixer
        self.frames_per_chunk = frames_per_chunk
        self.pending: list[bytes] = []
        self.counters: dict[str, int] = {}

    @property
    def session_id(self) -> str:
        return self.writer.session_id

    async def media(self, media: dict[str, Any]) -> None:
        track = str(media.get("track") or self.mixer.tracks[0])
        try:
            payload = base64.b64decode(media.get("payload") or "", validate=True)
        except (binascii.Error, ValueError):
            log.warning("session %s: media payload is not base64; dropped", self.session_id)
            return
        index = self._index(track, media)
        self.counters[track] = index + max(1, len(payload) // self.mixer.frame_bytes)
        self.pending += self.mixer.push(track, index, payload)
        if len(self.pending) >= self.frames_per_chunk:
            await self._send()

    def _index(self, track: str, media: dict[str, Any]) -> int:
        """The frame's place in the stream: its timestamp, else its chunk number, else next in line."""
        for field, scale in (("timestamp", FRAME_MS), ("chunk", 1)):
            value = media.get(field)
            if value is not None:
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    continue
                return max(0, round(number / scale) - (1 if field == "chunk" else 0))
        return self.counters.get(track, 0)

    async def finish(self, reason: str) -> None:
        self.pending += self.mixer.flush()
        await self._send()
        await self.writer.close(reason)
        if self.mixer.filled or self.mixer.dropped:
            log.info(
                "session %s: %d track frame(s) filled with silence, %d dropped",
                self.session_id,
                self.mixer.filled,
                self.mixer.dropped,
            )

    async def _send(self) -> None:
        """Write the pending frames in chunks of at most ``frames_per_chunk``: never one huge XADD."""
        while self.pending:
            chunk, self.pending = self.pending[: self.frames_per_chunk], self.pending[self.frames_per_chunk :]
            await self.writer.send(b"".join(chunk))


class TwilioGateway:
    """Serves Twilio Media Streams WebSockets; each stream is written to a new session.

    ``session_id_from``: ``"call"`` names the session after the ``callSid`` (one stream per call,
    the usual setup), ``"stream"`` after the ``streamSid`` (several streams per call). A
    ``language`` custom parameter of the stream overrides the gateway's ``language``.
    """

    def __init__(
        self,
        producer: AsyncProducer,
        *,
        language: str | None = None,
        tenant: str | None = None,
        session_id_from: str = "call",
        session_prefix: str = "",
        frames_per_chunk: int = 5,
        max_lag_ms: int = 200,
        auth_token: str | None = None,
        public_url: str | None = None,
        max_connections: int = 1000,
    ) -> None:
        if session_id_from not in ("call", "stream"):
            raise ValueError("session_id_from is 'call' or 'stream'")
        if auth_token is not None and not public_url:
            raise ValueError("checking X-Twilio-Signature needs the public URL Twilio connects to")
        self.auth_token = auth_token
        self.public_url = public_url
        self.max_connections = max_connections
        self.stats = GatewayStats()
        self.producer = producer
        self.language = language
        #: the sessions' tenant, for the workers' per-tenant quotas
        self.tenant = tenant
        self.session_id_from = session_id_from
        self.session_prefix = session_prefix
        self.frames_per_chunk = max(1, frames_per_chunk)
        self.max_lag_frames = max(1, max_lag_ms // FRAME_MS)
        self.sessions: list[str] = []  # every session opened, in order (for logs and tests)
        self.filled_frames = 0  # track frames replaced by silence, all streams
        self.dropped_frames = 0  # late, repeated or absurd track frames, all streams

    async def serve(self, host: str = "0.0.0.0", port: int = 8765) -> Any:
        """Start listening; returns the ``websockets`` server (``close()``, ``wait_closed()``)."""
        from websockets.asyncio.server import serve

        return await serve(self.handler, host, port, max_size=2**20, process_request=self._authorize)

    def _authorize(self, connection: Any, request: Any) -> Any:
        """With an auth token: refuse the upgrade (403) unless ``X-Twilio-Signature`` signs the public URL."""
        if self.auth_token is None:
            return None
        assert self.public_url is not None
        given = request.headers.get("X-Twilio-Signature", "")
        if given and any(
            hmac.compare_digest(given, twilio_signature(self.auth_token, url)) for url in url_variants(self.public_url)
        ):
            return None
        self.stats.refused_auth += 1
        log.warning("refusing a WebSocket upgrade: %s X-Twilio-Signature", "a wrong" if given else "no")
        return connection.respond(403, "X-Twilio-Signature is missing or does not match\n")

    async def handler(self, ws: Any) -> None:
        """One WebSocket connection: one Twilio stream."""
        from websockets.exceptions import ConnectionClosed

        call: CallStream | None = None
        reason = "error"  # the socket closed without a stop message: the feed was cut
        if self.stats.connections >= self.max_connections:
            self.stats.refused_capacity += 1
            log.warning("refusing a stream: %d connections are open already", self.stats.connections)
            await ws.close(1013, "the gateway is at capacity")  # 1013: try again later
            return
        self.stats.connections += 1
        try:
            async for raw in ws:
                message = _parse(raw)
                event = message.get("event")
                if event == "start" and call is None:
                    try:
                        call = await self._start(message)
                    except ValueError as e:
                        log.warning("refusing a stream: %s", e)
                        await close_draining(ws, 1003, str(e))  # 1003: unsupported data
                        return
                    except SessionExistsError as e:
                        self.stats.refused_duplicate += 1
                        log.warning("refusing a stream: %s", e)
                        await close_draining(ws, 1008, "this call is streaming already")  # 1008: policy violation
                        return
                elif event == "media" and call is not None:
                    self.stats.frames += 1
                    await call.media(message.get("media") or {})
                elif event == "stop":
                    reason = "completed"
                    break
                elif event not in ("connected", "mark", "dtmf", "start"):
                    log.debug("ignoring a %r message", event)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("stream %s failed", call.session_id if call else "(not started)")
            raise
        finally:
            self.stats.connections -= 1
            if call is not None:
                await call.finish(reason)
                self.filled_frames += call.mixer.filled
                self.dropped_frames += call.mixer.dropped
                log.info("session %s: stream ended (%s)", call.session_id, reason)

    async def _start(self, message: dict[str, Any]) -> CallStream:
        start = message.get("start") or {}
        fmt = start.get("mediaFormat") or {}
        encoding = MEDIA_ENCODINGS.get(str(fmt.get("encoding", "audio/x-mulaw")))
        rate = int(fmt.get("sampleRate") or TELEPHONY_RATE)
        if encoding is None or rate != TELEPHONY_RATE:
            raise ValueError(f"unsupported media format {fmt!r}: expected audio/x-mulaw at 8000 Hz")
        stream_sid = str(start.get("streamSid") or message.get("streamSid") or "")
        call_sid = str(start.get("callSid") or "")
        tracks = [t for t in TRACK_ORDER if t in (start.get("tracks") or ["inbound"])] or ["inbound"]
        params = {str(k): str(v) for k, v in (start.get("customParameters") or {}).items()}
        metadata = {
            **params,
            "source": "twilio",
            "call_sid": call_sid,
            "stream_sid": stream_sid,
            "account_sid": str(start.get("accountSid") or ""),
            "tracks": ",".join(tracks),
            **{f"channel_{i}": t for i, t in enumerate(tracks)},
        }
        name = call_sid if self.session_id_from == "call" and call_sid else stream_sid
        session_id = self.session_prefix + re.sub(r"[^A-Za-z0-9._:@+=-]", "_", name)[:100] if name else None
        writer = await self.producer.open(
            session_id,
            sample_rate=TELEPHONY_RATE,
            encoding=encoding,
            channels=len(tracks),
            language=params.get("language", self.language),
            metadata=metadata,
            tenant=self.tenant,
        )
        self.sessions.append(writer.session_id)
        self.stats.calls += 1
        log.info("stream %s of call %s -> session %s (%s)", stream_sid, call_sid, writer.session_id, metadata["tracks"])
        mixer = FrameMixer(tracks, fill=silence(encoding, FRAME_SAMPLES), max_lag_frames=self.max_lag_frames)
        return CallStream(writer, mixer, self.frames_per_chunk)


async def close_draining(ws: Any, code: int, reason: str) -> None:
    """Close a WebSocket from inside its receive loop, reading (and dropping) what is still queued.

    ``close()`` waits for the peer's close frame, which sits behind the messages it already sent;
    with the incoming queue full, reading pauses and the handshake would hang until its timeout.
    """
    from websockets.exceptions import ConnectionClosed

    closing = asyncio.ensure_future(ws.close(code, reason[:120]))
    with contextlib.suppress(ConnectionClosed):
        async for _message in ws:
            pass
    await closing


def twilio_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """Twilio's request signature: base64 HMAC-SHA1, keyed by the auth token, of the URL followed by
    the POST parameters sorted by name (each name then its value); a WebSocket upgrade has none."""
    data = url + "".join(name + (params or {})[name] for name in sorted(params or {}))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def url_variants(url: str) -> list[str]:
    """The URL as given, and with its default port added or removed (Twilio may sign either)."""
    parts = urlsplit(url)
    default = {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if parts.port is None and default is not None:
        other = parts._replace(netloc=f"{host}:{default}")
    elif parts.port is not None and parts.port == default:
        other = parts._replace(netloc=host)
    else:
        return [url]
    return [url, urlunsplit(other)]


def _parse(raw: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except (TypeError, ValueError):
        log.warning("ignoring a message that is not JSON")
        return {}
    return message if isinstance(message, dict) else {}
