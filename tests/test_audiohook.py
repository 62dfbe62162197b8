"""The Genesys AudioHook gateway: a client written from the AudioHook v2 protocol (headers, open/opened,
ping/pong, paused/resumed, close/closed, PCMU stereo binary frames) over a real WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from producer.aio import AsyncProducer
from producer.audiohook import AudioHookGateway, choose_media
from tests.client_helpers import output_events, raw_client, run_worker, synthetic_settings, synthetic_stereo
from worker.backends.synthetic import encode_words, random_words
from worker.protocol.events import SegmentEvent
from worker.protocol.keys import Keyspace
from worker.protocol.messages import SessionOpen
from worker.protocol.pcm import encode_pcm

pytestmark = pytest.mark.timeout(120)

KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
CUSTOMER = random_words(8, seed=81)
AGENT = random_words(6, seed=82)
STEREO = [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}]
OFFERS = [*STEREO, {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}]


def pcmu_frames(audio: np.ndarray) -> list[bytes]:
    """``(frames, 2)`` float audio as Genesys sends it: PCMU, channels interleaved, 20 ms per frame."""
    data = encode_pcm(audio, "mulaw")
    step = 160 * audio.reshape(audio.shape[0], -1).shape[1]
    return [data[i : i + step] for i in range(0, len(data), step)]


class Client:
    """The AudioHook client side: numbered messages with ``serverseq`` and ``position``."""

    def __init__(self, ws: Any, session: str) -> None:
        self.ws = ws
        self.session = session
        self.seq = 0
        self.serverseq = 0
        self.position = 0.0

    async def send(self, kind: str, parameters: dict[str, Any]) -> None:
        self.seq += 1
        await self.ws.send(json.dumps({
            "version": "2", "type": kind, "seq": self.seq, "serverseq": self.serverseq, "id": self.session,
            "position": f"PT{self.position:.2f}S", "parameters": parameters,
        }))  # fmt: skip

    async def receive(self) -> dict[str, Any]:
        message = json.loads(await self.ws.recv())
        assert message["version"] == "2" and message["id"] == self.session
        assert message["seq"] == self.serverseq + 1 and message["clientseq"] == self.seq
        self.serverseq = message["seq"]
        return message

    async def audio(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.ws.send(frame)
            self.position += 0.02


@contextlib.asynccontextmanager
async def serving(redis_url: str) -> AsyncIterator[tuple[AudioHookGateway, str]]:
    producer = await AsyncProducer.connect(redis_url)
    gateway = AudioHookGateway(producer, api_keys=(KEY,))
    server = await gateway.serve("127.0.0.1", 0)
    try:
        yield gateway, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/audiohook"
    finally:
        server.close()
        await server.wait_closed()
        await producer.aclose()


def headers(session: str, key: str | None = KEY) -> dict[str, str]:
    out = {
        "Audiohook-Organization-Id": "d7934305-0972-4844-938e-9060eef73d05",
        "Audiohook-Session-Id": session,
        "Audiohook-Correlation-Id": str(uuid.uuid4()),
    }
    if key is not None:
        out["X-API-KEY"] = key
    return out


async def call(url: str, session: str, script: Any) -> Any:
    async with ws_connect(url, additional_headers=headers(session)) as ws:
        return await script(Client(ws, session))


async def open_call(client: Client, offers: list[dict] = OFFERS) -> dict[str, Any]:
    await client.send("open", {
        "organizationId": "d7934305-0972-4844-938e-9060eef73d05",
        "conversationId": "090eaa2f-72fa-480a-83e0-8667ff89c0ec",
        "participant": {"id": str(uuid.uuid4()), "ani": "+13175555555", "aniName": "John Doe", "dnis": "+18005551234"},
        "media": offers, "language": "en",
    })  # fmt: skip
    return await client.receive()


def channel_words(events: list, channel: int) -> list[tuple[float, str]]:
    return [(w.start, w.word) for e in events if isinstance(e, SegmentEvent) and e.channel == channel for w in e.words]


def test_an_audiohook_session_is_a_stereo_session_with_the_customer_on_channel_0(redis_url):
    session = str(uuid.uuid4())
    frames = pcmu_frames(synthetic_stereo(CUSTOMER, AGENT, 8000))

    async def script(client: Client) -> list[dict]:
        opened = await open_call(client)
        await client.audio(frames[:50])
        await client.send("ping", {"rtt": "PT0.05S"})
        pong = await client.receive()
        await client.audio(frames[50:])
        await client.send("close", {"reason": "end"})
        return [opened, pong, await client.receive()]

    async def main() -> tuple[AudioHookGateway, list[dict]]:
        async with serving(redis_url) as (gateway, url):
            replies = await call(url, session, script)
        return gateway, replies

    gateway, (opened, pong, closed) = asyncio.run(main())
    assert opened["type"] == "opened" and opened["parameters"]["media"] == STEREO
    assert pong["type"] == "pong" and closed["type"] == "closed"
    assert gateway.sessions == [session]
    open_message = SessionOpen.decode(raw_client(redis_url).hget(Keyspace().session_open(session), "open"))
    assert (open_message.encoding, open_message.sample_rate, open_message.channels) == ("mulaw", 8000, 2)
    assert open_message.metadata["conversation_id"] == "090eaa2f-72fa-480a-83e0-8667ff89c0ec"
    assert open_message.metadata["channel_0"] == "external" and open_message.asr["language"] == "en"
    run_worker(synthetic_settings(redis_url))
    events = output_events(redis_url, session)
    assert events[-1].reason == "completed"
    assert [w for _t, w in channel_words(events, 0)] == CUSTOMER
    assert [w for _t, w in channel_words(events, 1)] == AGENT


def test_audio_discarded_while_paused_stays_on_the_timeline_as_silence(redis_url):
    session = str(uuid.uuid4())
    first, second = encode_words(CUSTOMER[:3], 8000), encode_words(CUSTOMER[3:6], 8000)

    async def script(client: Client) -> None:
        await open_call(client, [{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}])
        await client.audio(pcmu_frames(first))
        await client.send("paused", {})
        await client.send("resumed", {"start": f"PT{client.position:.2f}S", "discarded": "PT2.5S"})
        await client.audio(pcmu_frames(second))
        await client.send("close", {"reason": "end"})
        await client.receive()

    async def main() -> None:
        async with serving(redis_url) as (_gateway, url):
            await call(url, session, script)

    asyncio.run(main())
    run_worker(synthetic_settings(redis_url))
    words = channel_words(output_events(redis_url, session), 0)
    assert [w for _t, w in words] == CUSTOMER[:6]
    gap = words[3][0] - (first.shape[0] / 8000)
    assert 2.5 <= gap < 2.5 + 0.5, "the second part starts after the 2.5 s that were discarded"


def test_a_connection_without_the_api_key_is_refused_before_the_upgrade(redis_url):
    async def main() -> AudioHookGateway:
        async with serving(redis_url) as (gateway, url):
            for key in (None, "wrong"):
                with pytest.raises(InvalidStatus) as refused:
                    async with ws_connect(url, additional_headers=headers("s", key)):
                        pass
                assert refused.value.response.status_code == 401
        return gateway

    assert asyncio.run(main()).stats.refused_auth == 2


def test_a_lost_connection_ends_the_session_with_error(redis_url):
    session = str(uuid.uuid4())
    frames = pcmu_frames(synthetic_stereo(CUSTOMER, AGENT, 8000))

    async def script(client: Client) -> None:
        await open_call(client)
        await client.audio(frames[: len(frames) // 2])
        client.ws.transport.abort()

    async def main() -> None:
        async with serving(redis_url) as (_gateway, url):
            await call(url, session, script)
            await asyncio.sleep(0.2)

    asyncio.run(main())
    run_worker(synthetic_settings(redis_url))
    assert output_events(redis_url, session)[-1].reason == "error"


@pytest.mark.parametrize(
    ("offers", "audio", "why"),
    [
        ([{"type": "audio", "format": "L16", "channels": ["external"], "rate": 16000}], b"", "no acceptable media"),
        (OFFERS, b"\x00\x01\x02", "not whole 2-channel frames"),
    ],
)
def test_a_malformed_session_gets_disconnect_and_ends_with_error(redis_url, offers, audio, why):
    session = str(uuid.uuid4())

    async def script(client: Client) -> list[dict]:
        replies = []
        await client.send("open", {"organizationId": "o", "conversationId": "c", "participant": {}, "media": offers})
        with contextlib.suppress(Exception):
            replies.append(await client.receive())
            await client.ws.send(audio)
            replies.append(await client.receive())
        return replies

    async def main() -> tuple[AudioHookGateway, list[dict]]:
        async with serving(redis_url) as (gateway, url):
            replies = await call(url, session, script)
        return gateway, replies

    gateway, replies = asyncio.run(main())
    assert gateway.stats.malformed == 1, why
    disconnect = replies[-1]
    assert disconnect["type"] == "disconnect" and disconnect["parameters"]["reason"] == "error"
    if gateway.sessions:
        run_worker(synthetic_settings(redis_url))
        assert output_events(redis_url, session)[-1].reason == "error"


def test_the_stereo_offer_is_taken_over_a_mono_one_and_odd_offers_are_refused():
    assert choose_media(list(reversed(OFFERS))) == STEREO[0]
    with pytest.raises(ValueError):
        choose_media([{"type": "audio", "format": "PCMU", "channels": ["external", "external"], "rate": 8000}])
