"""The Twilio gateway's exposure: signed upgrades only, one stream per live call, bounded writes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from producer.aio import AsyncProducer
from producer.gateway import TwilioGateway, twilio_signature, url_variants
from tests.client_helpers import output_events, raw_client, run_worker, synthetic_settings
from tests.test_gateway import INBOUND_WORDS, media, mulaw_frames, start
from worker.backends.synthetic import encode_words
from worker.protocol.events import SegmentEvent
from worker.protocol.keys import Keyspace
from worker.protocol.messages import decode_input

pytestmark = pytest.mark.timeout(120)

STREAMSCRIBE = str(Path(sys.executable).with_name("streamscribe"))
TOKEN = "12345"
PUBLIC = "wss://transcribe.example.com/twilio"


def test_the_signature_is_twilios_hmac_sha1_of_the_url_and_the_sorted_parameters():
    # Twilio's documented example: the URL, then each POST parameter name and value, sorted by name
    url = "https://example.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234", "From": "+12349013030",
              "To": "+18005551212"}  # fmt: skip
    expected = base64.b64encode(
        hmac.new(TOKEN.encode(), (url + "".join(k + params[k] for k in sorted(params))).encode(), hashlib.sha1).digest()
    ).decode()
    assert twilio_signature(TOKEN, url, params) == expected
    assert url_variants("wss://a.example/x") == ["wss://a.example/x", "wss://a.example:443/x"]
    assert url_variants("wss://a.example:443/x") == ["wss://a.example:443/x", "wss://a.example/x"]
    assert url_variants("wss://a.example:8443/x") == ["wss://a.example:8443/x"]


async def stream(url: str, signature: str | None, call_sid: str, frames: list[bytes], *, hold: float = 0.0) -> None:
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    async with ws_connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps(start(call_sid, "MZ" + call_sid, ["inbound"])))
        for i, frame in enumerate(frames):
            await ws.send(json.dumps(media("MZ" + call_sid, "inbound", i, frame)))
        await asyncio.sleep(hold)
        await ws.send(json.dumps({"event": "stop"}))


def test_only_upgrades_signed_for_the_public_url_are_accepted(redis_url):
    frames = mulaw_frames(encode_words(INBOUND_WORDS, 8000))

    async def main() -> TwilioGateway:
        producer = await AsyncProducer.connect(redis_url)
        gateway = TwilioGateway(producer, auth_token=TOKEN, public_url=PUBLIC)
        server = await gateway.serve("127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/twilio"
        try:
            for signature in (None, twilio_signature("wrong", PUBLIC), twilio_signature(TOKEN, PUBLIC + "/x")):
                with pytest.raises(InvalidStatus) as refused:
                    await stream(url, signature, "CA-forged", frames)
                assert refused.value.response.status_code == 403
            await stream(url, twilio_signature(TOKEN, PUBLIC), "CA-signed", frames)
            await stream(url, twilio_signature(TOKEN, "wss://transcribe.example.com:443/twilio"), "CA-port", frames)
        finally:
            server.close()
            await server.wait_closed()
            await producer.aclose()
        return gateway

    gateway = asyncio.run(main())
    assert gateway.stats.refused_auth == 3 and gateway.sessions == ["CA-signed", "CA-port"]
    assert not raw_client(redis_url).exists(Keyspace().session_open("CA-forged"))


def test_a_second_stream_of_a_live_call_is_refused_and_its_audio_reaches_no_session(redis_url):
    frames = mulaw_frames(encode_words(INBOUND_WORDS, 8000))
    noise = [bytes([0x00]) * 160] * 50  # loud mu-law: any of it in the session would be heard

    async def intrude(url: str) -> int | None:
        async with ws_connect(url) as ws:
            await ws.send(json.dumps(start("CA-live", "MZ-other", ["inbound"])))
            with contextlib.suppress(ConnectionClosed):
                for i, frame in enumerate(noise):
                    await ws.send(json.dumps(media("MZ-other", "inbound", i, frame)))
            await asyncio.wait_for(ws.wait_closed(), 5)
            return ws.close_code

    async def main() -> tuple[TwilioGateway, int | None]:
        producer = await AsyncProducer.connect(redis_url)
        gateway = TwilioGateway(producer)
        server = await gateway.serve("127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            live = asyncio.create_task(stream(url, None, "CA-live", frames, hold=1.0))
            await asyncio.sleep(0.3)
            intruder = await intrude(url)
            await live
        finally:
            server.close()
            await server.wait_closed()
            await producer.aclose()
        return gateway, intruder

    gateway, close_code = asyncio.run(main())
    assert close_code == 1008
    assert gateway.stats.refused_duplicate == 1 and gateway.sessions == ["CA-live"]
    run_worker(synthetic_settings(redis_url))
    events = output_events(redis_url, "CA-live")
    assert [w.word for e in events if isinstance(e, SegmentEvent) for w in e.words] == INBOUND_WORDS


def test_a_timestamp_far_in_the_future_never_becomes_a_large_write(redis_url):
    frames = mulaw_frames(encode_words(INBOUND_WORDS[:3], 8000))

    async def main() -> None:
        producer = await AsyncProducer.connect(redis_url)
        gateway = TwilioGateway(producer)
        server = await gateway.serve("127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with ws_connect(url) as ws:
                await ws.send(json.dumps(start("CA-jump", "MZ-jump", ["inbound"])))
                for i, frame in enumerate(frames):
                    await ws.send(json.dumps(media("MZ-jump", "inbound", i, frame)))
                jump = media("MZ-jump", "inbound", 0, frames[0])
                jump["media"]["timestamp"] = str(10**9)  # eleven days ahead: dropped
                await ws.send(json.dumps(jump))
                near = media("MZ-jump", "inbound", len(frames) + 2500, frames[0])  # 50 s ahead: filled
                await ws.send(json.dumps(near))
                await ws.send(json.dumps({"event": "stop"}))
        finally:
            server.close()
            await server.wait_closed()
            await producer.aclose()

    asyncio.run(main())
    entries = raw_client(redis_url).xrange(Keyspace().session_input("CA-jump"))
    sizes = [len(decode_input(f[b"m"]).payload) for _id, f in entries[:-1]]
    assert max(sizes) <= 800, "every write is at most one --chunk-ms (100 ms of mu-law)"
    assert 50 * 8000 <= sum(sizes) <= 52 * 8000, "the 50 s jump is filled, the eleven days are not"


def test_the_gateway_refuses_to_start_unauthenticated_unless_told_to(redis_url):
    refused = subprocess.run(
        [STREAMSCRIBE, "gateway", "--port", "0", "--redis-url", redis_url], capture_output=True, text=True, timeout=60
    )
    assert (
        refused.returncode == 2 and "--twilio-auth-token" in refused.stderr and "--insecure-no-auth" in refused.stderr
    )
    no_url = subprocess.run(
        [STREAMSCRIBE, "gateway", "--port", "0", "--redis-url", redis_url, "--twilio-auth-token", TOKEN],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert no_url.returncode == 2 and "--public-url" in no_url.stderr


def test_connections_past_the_cap_are_refused_and_counted(redis_url):
    frames = mulaw_frames(encode_words(INBOUND_WORDS, 8000))

    async def second(url: str) -> int | None:
        async with ws_connect(url) as ws:
            await asyncio.wait_for(ws.wait_closed(), 5)
            return ws.close_code

    async def main() -> tuple[TwilioGateway, int | None]:
        producer = await AsyncProducer.connect(redis_url)
        gateway = TwilioGateway(producer, max_connections=1)
        server = await gateway.serve("127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            first = asyncio.create_task(stream(url, None, "CA-first", frames, hold=1.0))
            await asyncio.sleep(0.3)
            code = await second(url)
            await first
        finally:
            server.close()
            await server.wait_closed()
            await producer.aclose()
        return gateway, code

    gateway, code = asyncio.run(main())
    assert code == 1013 and gateway.stats.refused_capacity == 1 and gateway.sessions == ["CA-first"]
    assert gateway.stats.calls == 1 and gateway.stats.connections == 0
