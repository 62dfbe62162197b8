"""An Asterisk AudioSocket server: each TCP connection is one call, written to one session.

AudioSocket (Asterisk's ``AudioSocket()`` dialplan application and channel driver; protocol at
docs.asterisk.org, Channel Drivers / AudioSocket) frames every message as a 1-byte type, a 2-byte
big-endian payload length, then the payload:

* ``0x01``: the call's UUID, 16 bytes; the session id is that UUID, hyphenated and lowercase,
  after the gateway's session prefix;
* ``0x10``: signed linear 16-bit little-endian mono audio at 8 kHz, 20 ms per frame; the types
  ``0x11``-``0x18`` of newer Asterisk releases carry the same at 12, 16, 24, 32, 44.1, 48, 96 and
  192 kHz;
* ``0x03``: a DTMF digit (1 ASCII byte), counted and otherwise ignored;
* ``0x00``: hangup, which ends the session as ``completed``;
* ``0xff``: an error, with an optional code (Asterisk's: 0x01 the calling party hung up, 0x02 a
  frame forwarding error, 0x04 a memory error). A hang-up ends the session as ``completed``,
  anything else as ``error``.

A connection that drops without a hangup ends its session with ``error``. A malformed frame (an
unknown type, a UUID that is not 16 bytes, audio before the UUID, an odd number of audio bytes,
a change of rate within the call) is logged with its reason, ends the session with ``error`` and
closes the connection. The session is opened at the first audio frame, whose type gives its rate.
Connections that send nothing cost one small task each; past ``max_connections`` new ones are
closed at once, and one that names no call within ``handshake_timeout_sec`` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from producer.aio import AsyncProducer, AsyncSessionWriter
from producer.common import GatewayStats
from worker.errors import SessionExistsError

log = logging.getLogger(__name__)

HANGUP, UUID, DTMF, ERROR = 0x00, 0x01, 0x03, 0xFF
#: Audio frame types and their sample rates (signed linear 16-bit little-endian, mono).
SLIN_RATES = {
    0x10: 8000,
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
    0x17: 96000,
    0x18: 192000,
}
#: Asterisk's error code for "the calling party hung up": the call ended, nothing failed.
CALLER_HUNG_UP = 0x01


class MalformedFrame(ValueError):
    """A frame that breaks the AudioSocket protocol; the call cannot go on."""


@dataclass
class Frame:
    kind: int
    payload: bytes


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, or None when the peer closed the connection between frames.

    Raises :class:`asyncio.IncompleteReadError` when it closed inside a frame.
    """
    header = await reader.read(1)
    if not header:
        return None
    rest = await reader.readexactly(2)
    length = int.from_bytes(rest, "big")
    payload = await reader.readexactly(length) if length else b""
    return Frame(header[0], payload)


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    """One frame as the wire carries it (what Asterisk sends; the tests' client uses it)."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


@dataclass
class AudioSocketCall:
    """One connection's call: its UUID, its session once audio flows, and its counters."""

    call_id: str | None = None
    writer: AsyncSessionWriter | None = None
    rate: int | None = None
    pending: bytearray = field(default_factory=bytearray)
    dtmf: int = 0
    frames: int = 0


class AudioSocketGateway:
    """Serves AudioSocket connections; each call is written to a new ``pcm_s16le`` session.

    ``chunk_ms`` of audio go into each chunk written. ``language`` is the sessions' language.
    """

    def __init__(
        self,
        producer: AsyncProducer,
        *,
        language: str | None = None,
        tenant: str | None = None,
        session_prefix: str = "",
        chunk_ms: int = 100,
        max_connections: int = 1000,
        handshake_timeout_sec: float = 30.0,
    ) -> None:
        self.producer = producer
        self.language = language
        #: the sessions' tenant, for the workers' per-tenant quotas
        self.tenant = tenant
        self.session_prefix = session_prefix
        self.chunk_ms = max(20, chunk_ms)
        self.max_connections = max_connections
        self.handshake_timeout_sec = handshake_timeout_sec
        self.sessions: list[str] = []  # every session opened, in order (for logs and tests)
        self.stats = GatewayStats()
        self.dtmf_digits = 0  # all calls
        self._open_streams: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def serve(self, host: str = "0.0.0.0", port: int = 9092) -> asyncio.Server:
        """Start listening; returns the asyncio server. Stop with :meth:`aclose`."""
        self._server = await asyncio.start_server(self.handler, host, port, limit=2**17)
        return self._server

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop listening and cut the open calls; each session gets its end marker (``error``)."""
        if self._server is not None:
            self._server.close()
        for stream in list(self._open_streams):
            stream.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.stats.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP connection: one call."""
        if self.stats.connections >= self.max_connections:
            self.stats.refused_capacity += 1
            log.warning("refusing an AudioSocket connection: %d are open already", self.stats.connections)
            writer.close()
            return
        self.stats.connections += 1
        self._open_streams.add(writer)
        call = AudioSocketCall()
        reason = "error"  # the connection dropped without a hangup
        try:
            reason = await self._serve_call(reader, call)
        except MalformedFrame as e:
            self.stats.malformed += 1
            log.warning("AudioSocket call %s: malformed frame: %s; ending it", call.call_id or "(no uuid yet)", e)
            reason = "error"
        except (asyncio.IncompleteReadError, ConnectionError):
            reason = "error"
        except SessionExistsError as e:
            self.stats.refused_duplicate += 1
            log.warning("refusing an AudioSocket call: %s", e)
        except asyncio.TimeoutError:
            log.info("an AudioSocket connection named no call in %.0f s; closing it", self.handshake_timeout_sec)
        except Exception:
            log.exception("AudioSocket call %s failed", call.call_id or "(no uuid yet)")
        finally:
            self.dtmf_digits += call.dtmf
            if call.writer is not None:
                with contextlib.suppress(Exception):
                    await self._flush(call)
                await call.writer.close(reason)
                log.info(
                    "session %s: AudioSocket call ended (%s): %d frame(s), %d DTMF digit(s)",
                    call.writer.session_id,
                    reason,
                    call.frames,
                    call.dtmf,
                )
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._open_streams.discard(writer)
            self.stats.connections -= 1

    async def _serve_call(self, reader: asyncio.StreamReader, call: AudioSocketCall) -> str:
        """Read frames until the call ends; returns the session's end reason."""
        while True:
            timeout = self.handshake_timeout_sec if call.call_id is None else None
            frame = await asyncio.wait_for(read_frame(reader), timeout)
            if frame is None:
                return "error"  # closed without a hangup: the feed was cut
            if frame.kind == HANGUP:
                return "completed"
            if frame.kind == ERROR:
                code = frame.payload[0] if frame.payload else None
                if code == CALLER_HUNG_UP:
                    return "completed"
                log.warning("AudioSocket call %s: the peer reports error %s", call.call_id, code)
                return "error"
            if frame.kind == UUID:
                self._name(call, frame.payload)
            elif frame.kind == DTMF:
                call.dtmf += 1
            elif frame.kind in SLIN_RATES:
                await self._audio(call, SLIN_RATES[frame.kind], frame.payload)
            else:
                raise MalformedFrame(f"unknown frame type 0x{frame.kind:02x} ({len(frame.payload)} bytes)")

    def _name(self, call: AudioSocketCall, payload: bytes) -> None:
        if len(payload) != 16:
            raise MalformedFrame(f"a UUID frame holds 16 bytes, not {len(payload)}")
        if call.call_id is not None:
            raise MalformedFrame("a second UUID frame in one call")
        call.call_id = str(uuid.UUID(bytes=payload))

    async def _audio(self, call: AudioSocketCall, rate: int, payload: bytes) -> None:
        if call.call_id is None:
            raise MalformedFrame("audio before the UUID frame")
        if len(payload) % 2:
            raise MalformedFrame(f"{len(payload)} audio bytes are not whole 16-bit samples")
        if call.writer is None:
            call.writer = await self._open(call.call_id, rate)
            call.rate = rate
        elif rate != call.rate:
            raise MalformedFrame(f"the audio changed from {call.rate} Hz to {rate} Hz within the call")
        call.frames += 1
        self.stats.frames += 1
        call.pending += payload
        if len(call.pending) >= 2 * rate * self.chunk_ms // 1000:
            await self._flush(call)

    async def _flush(self, call: AudioSocketCall) -> None:
        if call.writer is not None and call.pending:
            chunk, call.pending = bytes(call.pending), bytearray()
            await call.writer.send(chunk)

    async def _open(self, call_id: str, rate: int) -> AsyncSessionWriter:
        writer = await self.producer.open(
            self.session_prefix + call_id,
            sample_rate=rate,
            encoding="pcm_s16le",
            channels=1,
            language=self.language,
            metadata={"source": "audiosocket", "call_uuid": call_id},
            tenant=self.tenant,
        )
        self.sessions.append(writer.session_id)
        self.stats.calls += 1
        log.info("AudioSocket call %s -> session %s (%d Hz)", call_id, writer.session_id, rate)
        return writer


def describe(server: Any) -> str:
    """``tcp://host:port`` of a started server."""
    host, port = server.sockets[0].getsockname()[:2]
    return f"tcp://{host}:{port}"
