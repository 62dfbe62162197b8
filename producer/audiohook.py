"""A Genesys Cloud AudioHook (protocol version 2) server: each AudioHook session is one streamscribe session.

Genesys connects a WebSocket per AudioHook session with the headers ``Audiohook-Organization-Id``,
``Audiohook-Session-Id``, ``Audiohook-Correlation-Id`` and ``X-API-KEY``; a connection whose API
key is not one of the gateway's is refused with 401 before the upgrade. Then JSON text messages,
each with ``version`` ("2"), ``id`` (the AudioHook session), ``type``, ``seq`` and ``parameters``
(the client's also carry ``serverseq`` and ``position``, the server's ``clientseq``):

* ``open`` offers media (``PCMU``, 8000 Hz, channels ``["external", "internal"]``, or one of
  them); the server answers ``opened`` with the one it takes, the stereo offer when there is one.
  The session is ``mulaw`` at 8000 Hz: channel 0 is ``external`` (the customer), channel 1
  ``internal`` (the agent). Its id is the AudioHook session id after ``--session-prefix``; the
  conversation, organization and participant go into its metadata, and ``language`` into its ASR
  options;
* binary frames carry the audio, the channels' samples interleaved;
* ``ping`` is answered with ``pong``, ``update`` with ``updated``; ``paused`` and ``resumed``
  bracket audio that is not sent, and ``discarded`` reports audio dropped (both stay on the
  session's timeline as silence, so the words keep their times in the call);
* ``close`` is answered with ``closed`` and ends the session: ``completed`` for the reasons
  ``end``, ``disconnect`` and ``reconnect``, ``error`` for ``error``.

A connection lost without ``close`` ends the session with ``error``. A malformed message (not JSON,
no acceptable media, audio before ``open``, audio that is not whole frames) is logged; the server
sends ``disconnect`` with reason ``error`` and the reason in ``info``, ends the session with
``error`` and closes the socket.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any

from producer.aio import AsyncProducer, AsyncSessionWriter
from producer.common import GatewayStats, silence
from producer.gateway import close_draining
from worker.errors import SessionExistsError

log = logging.getLogger(__name__)

VERSION = "2"
RATE = 8000
#: Channel order of a stereo session.
CHANNEL_ORDER = ("external", "internal")
CLOSE_REASONS = {"end": "completed", "disconnect": "completed", "reconnect": "completed", "error": "error"}
_DURATION = re.compile(r"^PT(\d+(?:\.\d+)?)S$")


class MalformedMessage(ValueError):
    """A message that breaks the AudioHook protocol; the session cannot go on."""


def seconds(duration: Any) -> float:
    """An AudioHook duration (``PT1.5S``) in seconds."""
    match = _DURATION.match(str(duration))
    if not match:
        raise MalformedMessage(f"{duration!r} is not a duration like PT1.5S")
    return float(match.group(1))


def choose_media(offers: Any) -> dict[str, Any]:
    """The media to take from ``open``'s offers: PCMU at 8000 Hz, both channels if offered."""
    if not isinstance(offers, list):
        raise MalformedMessage("open offers no media list")
    usable = [
        m
        for m in offers
        if isinstance(m, dict)
        and m.get("type") == "audio"
        and m.get("format") == "PCMU"
        and m.get("rate") == RATE
        and isinstance(m.get("channels"), list)
        and m["channels"]
        and set(m["channels"]) <= set(CHANNEL_ORDER)
        and len(set(m["channels"])) == len(m["channels"])
    ]
    if not usable:
        raise MalformedMessage(f"no offered media is PCMU at {RATE} Hz with external/internal channels: {offers!r}")
    return max(usable, key=lambda m: len(m["channels"]))


class AudioHookSession:
    """One connection's protocol state: sequence numbers, the session writer, the audio timeline."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.id: str | None = None
        self.seq = 0  # the last server message's seq
        self.clientseq = 0
        self.writer: AsyncSessionWriter | None = None
        self.channels = 0
        self.paused = False
        self.pending = bytearray()

    async def reply(self, kind: str, parameters: dict[str, Any]) -> None:
        self.seq += 1
        message = {
            "version": VERSION,
            "type": kind,
            "seq": self.seq,
            "clientseq": self.clientseq,
            "id": self.id,
            "parameters": parameters,
        }
        await self.ws.send(json.dumps(message))


class AudioHookGateway:
    """Serves AudioHook WebSockets; ``api_keys`` are the accepted ``X-API-KEY`` values (required)."""

    def __init__(
        self,
        producer: AsyncProducer,
        *,
        api_keys: tuple[str, ...],
        language: str | None = None,
        tenant: str | None = None,
        session_prefix: str = "",
        chunk_ms: int = 100,
    ) -> None:
        if not api_keys or not all(api_keys):
            raise ValueError("AudioHook needs at least one API key (X-API-KEY)")
        self.producer = producer
        self.api_keys = api_keys
        self.language = language
        #: the sessions' tenant, for the workers' per-tenant quotas
        self.tenant = tenant
        self.session_prefix = session_prefix
        self.chunk_ms = max(20, chunk_ms)
        self.sessions: list[str] = []  # every session opened, in order (for logs and tests)
        self.stats = GatewayStats()

    async def serve(self, host: str = "0.0.0.0", port: int = 8765) -> Any:
        """Start listening; returns the ``websockets`` server (``close()``, ``wait_closed()``)."""
        from websockets.asyncio.server import serve

        return await serve(self.handler, host, port, max_size=2**20, process_request=self._authorize)

    def _authorize(self, connection: Any, request: Any) -> Any:
        """Refuse the upgrade (401) unless ``X-API-KEY`` is one of the gateway's keys."""
        key = request.headers.get("X-API-KEY", "")
        if any(hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys):
            return None
        self.stats.refused_auth += 1
        log.warning("refusing an AudioHook connection: %s X-API-KEY", "a wrong" if key else "no")
        return connection.respond(401, "a valid X-API-KEY header is required\n")

    async def handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        state = AudioHookSession(ws)
        reason = "error"  # the connection was lost without close
        self.stats.connections += 1
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    await self._audio(state, raw)
                    continue
                closing = await self._dispatch(state, _message(raw))
                if closing is not None:
                    reason = closing
                    break
        except ConnectionClosed:
            pass
        except SessionExistsError as e:
            self.stats.refused_duplicate += 1
            log.warning("refusing an AudioHook session: %s", e)
            await state.reply("disconnect", {"reason": "error", "info": "this session is streaming already"})
            await close_draining(ws, 1008, "this session is streaming already")
        except MalformedMessage as e:
            self.stats.malformed += 1
            log.warning("AudioHook session %s: malformed message: %s; ending it", state.id or "(not open)", e)
            reason = "error"
            if state.id is not None:
                await state.reply("disconnect", {"reason": "error", "info": str(e)[:200]})
            await close_draining(ws, 1003, str(e))
        finally:
            self.stats.connections -= 1
            if state.writer is not None:
                await self._flush(state)
                await state.writer.close(reason)
                log.info("session %s: AudioHook session ended (%s)", state.writer.session_id, reason)

    async def _dispatch(self, state: AudioHookSession, message: dict[str, Any]) -> str | None:
        """Act on one text message; returns the session's end reason once the client closes."""
        seq = message.get("seq")
        if type(seq) is not int or seq <= state.clientseq:
            raise MalformedMessage(f"seq {seq!r} does not follow {state.clientseq}")
        state.clientseq = seq
        kind = message.get("type")
        parameters = message.get("parameters") or {}
        if kind == "open":
            await self._open(state, message)
        elif kind == "ping":
            await state.reply("pong", {})
        elif kind == "update":
            await state.reply("updated", {})
        elif kind == "paused":
            state.paused = True
        elif kind == "resumed":
            state.paused = False
            await self._gap(state, parameters.get("discarded", "PT0S"))
        elif kind == "discarded":
            await self._gap(state, parameters.get("discarded", "PT0S"))
        elif kind == "close":
            await state.reply("closed", {})
            return CLOSE_REASONS.get(str(parameters.get("reason", "end")), "error")
        elif kind == "error":
            log.warning("AudioHook %s reports an error: %s", state.id, parameters)
        return None

    async def _open(self, state: AudioHookSession, message: dict[str, Any]) -> None:
        if state.writer is not None:
            raise MalformedMessage("a second open on one connection")
        if message.get("version") != VERSION:
            raise MalformedMessage(f"protocol version {message.get('version')!r} is not {VERSION!r}")
        state.id = str(message.get("id") or "")
        if not state.id:
            raise MalformedMessage("open has no session id")
        parameters = message.get("parameters") or {}
        media = choose_media(parameters.get("media"))
        participant = parameters.get("participant") or {}
        metadata = {
            "source": "audiohook",
            "audiohook_session": state.id,
            "conversation_id": str(parameters.get("conversationId", "")),
            "organization_id": str(parameters.get("organizationId", "")),
            "ani": str(participant.get("ani", "")),
            "dnis": str(participant.get("dnis", "")),
            **{f"channel_{i}": c for i, c in enumerate(media["channels"])},
        }
        session_id = self.session_prefix + re.sub(r"[^A-Za-z0-9._:@+=-]", "_", state.id)[:100]
        state.channels = len(media["channels"])
        state.writer = await self.producer.open(
            session_id,
            sample_rate=RATE,
            encoding="mulaw",
            channels=state.channels,
            language=str(parameters.get("language") or self.language or "") or None,
            metadata=metadata,
            tenant=self.tenant,
        )
        self.sessions.append(state.writer.session_id)
        self.stats.calls += 1
        await state.reply("opened", {"startPaused": False, "media": [media]})
        log.info("AudioHook session %s -> session %s (%s)", state.id, state.writer.session_id, media["channels"])

    async def _audio(self, state: AudioHookSession, data: bytes) -> None:
        if state.writer is None:
            raise MalformedMessage("audio before open")
        self.stats.frames += 1
        if len(data) % state.channels:
            raise MalformedMessage(f"{len(data)} audio bytes are not whole {state.channels}-channel frames")
        state.pending += data
        if len(state.pending) >= state.channels * RATE * self.chunk_ms // 1000:
            await self._flush(state)

    async def _gap(self, state: AudioHookSession, duration: Any) -> None:
        """Audio that was not sent: silence of its length keeps the later words at their times."""
        gap = seconds(duration)
        if state.writer is None or gap <= 0:
            return
        await self._flush(state)
        await state.writer.send(silence("mulaw", round(gap * RATE), state.channels))

    async def _flush(self, state: AudioHookSession) -> None:
        if state.writer is not None and state.pending:
            chunk, state.pending = bytes(state.pending), bytearray()
            await state.writer.send(chunk)


def _message(raw: str) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError as e:
        raise MalformedMessage(f"a text message is not JSON: {e}") from e
    if not isinstance(message, dict):
        raise MalformedMessage("a text message is not a JSON object")
    return message
