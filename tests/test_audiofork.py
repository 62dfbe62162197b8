"""The FreeSWITCH mod_audio_fork gateway: a client that behaves as mod_audio_fork does (sub-protocol
audio.drachtio.org, a metadata text frame, then binary L16 frames) replays calls over a real
WebSocket; a real worker transcribes the sessions."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from producer.aio import AsyncProducer
from producer.audiofork import AudioForkGateway, parse_rate
from tests.client_helpers import (
    ended_input,
    output_events,
    raw_client,
    run_worker,
    scrape,
    synthetic_settings,
    synthetic_stereo,
)
from tests.worker_helpers import rss_kib, wait_for
from worker.backends.synthetic import encode_words, random_words
from worker.protocol.events import SegmentEvent
from worker.protocol.keys import Keyspace
from worker.protocol.messages import SessionOpen
from worker.protocol.pcm import encode_pcm

pytestmark = pytest.mark.timeout(120)

CALLER = random_words(8, seed=71)
CALLEE = random_words(6, seed=72)
UUID = "7a4c3b2e-1d0f-4e5a-9b8c-0123456789ab"
STREAMSCRIBE = str(Path(sys.executable).with_name("streamscribe"))


def l16_frames(audio: np.ndarray, rate: int) -> list[bytes]:
    """``(frames,)`` or ``(frames, 2)`` float audio as mod_audio_fork sends it: 20 ms binary frames."""
    data = encode_pcm(audio, "pcm_s16le")
    step = rate // 50 * 2 * (1 if audio.ndim == 1 else audio.shape[1])
    return [data[i : i + step] for i in range(0, len(data), step)]


@contextlib.asynccontextmanager
async def serving(redis_url: str, **options: object) -> AsyncIterator[tuple[AudioForkGateway, str]]:
    producer = await AsyncProducer.connect(redis_url)
    gateway = AudioForkGateway(producer, **options)
    server = await gateway.serve("127.0.0.1", 0)
    try:
        yield gateway, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()
        await producer.aclose()


async def fork(
    url: str, frames: list[bytes], *, metadata: str | None = None, abort: bool = False, auth: str | None = None
) -> None:
    """One forked call: the metadata text frame (when given), the audio, then a normal close (or none).

    ``auth`` is ``USER:PASSWORD``, sent as mod_audio_fork sends MOD_AUDIO_BASIC_AUTH_USERNAME/PASSWORD.
    """
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else None
    async with ws_connect(url, subprotocols=["audio.drachtio.org"], additional_headers=headers) as ws:
        assert ws.subprotocol == "audio.drachtio.org"
        if metadata is not None:
            await ws.send(metadata)
        for frame in frames:
            await ws.send(frame)
        if abort:
            ws.transport.abort()  # the connection is lost: no close frame
            return
        await ws.close(1000)


def run_calls(redis_url: str, calls: list[tuple[str, list[bytes], dict]], **options: object) -> AudioForkGateway:
    async def main() -> AudioForkGateway:
        async with serving(redis_url, **options) as (gateway, url):
            await asyncio.gather(*(fork(url + path, frames, **kw) for path, frames, kw in calls))
            await asyncio.sleep(0.2)
        return gateway

    return asyncio.run(main())


def opened(url: str, sid: str) -> SessionOpen:
    return SessionOpen.decode(raw_client(url).hget(Keyspace().session_open(sid), "open"))


def channel_words(events: list, channel: int) -> list[str]:
    return [w.word for e in events if isinstance(e, SegmentEvent) and e.channel == channel for w in e.words]


def test_a_stereo_fork_becomes_one_two_channel_session_named_from_the_url_path(redis_url):
    audio = synthetic_stereo(CALLER, CALLEE, 8000)
    metadata = json.dumps({"callid": "sip-123", "from": "+15550001", "to": "+15550002"})
    gateway = run_calls(
        redis_url, [(f"/fork/{UUID}", l16_frames(audio, 8000), {"metadata": metadata})], mix_type="stereo"
    )
    assert gateway.sessions == [UUID]
    open_message = opened(redis_url, UUID)
    assert (open_message.sample_rate, open_message.channels, open_message.encoding) == (8000, 2, "pcm_s16le")
    assert open_message.metadata["from"] == "+15550001" and open_message.metadata["mix_type"] == "stereo"
    run_worker(synthetic_settings(redis_url))
    events = output_events(redis_url, UUID)
    assert events[-1].reason == "completed"
    assert channel_words(events, 0) == CALLER and channel_words(events, 1) == CALLEE


def test_the_metadata_names_the_call_and_sets_its_rate_and_layout_when_the_path_does_not(redis_url):
    audio = encode_words(CALLER, 16000)
    metadata = json.dumps({"uuid": "meta-call", "sampleRate": "16k", "mixType": "mixed", "language": "en"})
    run_calls(redis_url, [("/", l16_frames(audio, 16000), {"metadata": metadata})], sample_rate=8000)
    open_message = opened(redis_url, "meta-call")
    assert (open_message.sample_rate, open_message.channels) == (16000, 1)
    assert open_message.asr.get("language") == "en"
    run_worker(synthetic_settings(redis_url))
    assert channel_words(output_events(redis_url, "meta-call"), 0) == CALLER


def test_without_metadata_the_flags_decide_and_plain_text_metadata_is_kept(redis_url):
    run_calls(
        redis_url,
        [
            ("/no-meta", l16_frames(encode_words(CALLER, 8000), 8000), {}),
            ("/text-meta", l16_frames(encode_words(CALLEE, 8000), 8000), {"metadata": "agent=7 queue=billing"}),
        ],
    )
    assert opened(redis_url, "no-meta").sample_rate == 8000
    assert opened(redis_url, "text-meta").metadata["fork_metadata"] == "agent=7 queue=billing"


def test_a_lost_connection_ends_the_session_with_error_and_keeps_what_was_said(redis_url):
    frames = l16_frames(encode_words(CALLER, 8000), 8000)
    run_calls(redis_url, [(f"/{UUID}", frames[: len(frames) * 2 // 3], {"abort": True})])
    run_worker(synthetic_settings(redis_url))
    events = output_events(redis_url, UUID)
    said = channel_words(events, 0)
    assert events[-1].reason == "error" and said and said == CALLER[: len(said)] and len(said) < len(CALLER)


def test_audio_that_is_not_whole_stereo_frames_ends_the_call_with_error(redis_url, caplog):
    frames = l16_frames(synthetic_stereo(CALLER, CALLEE, 8000), 8000)
    frames.insert(3, b"\x00\x01\x02")  # not a whole number of 4-byte stereo frames
    gateway = run_calls(redis_url, [(f"/{UUID}", frames, {})], mix_type="stereo")
    assert gateway.stats.malformed == 1 and "not whole 4-byte frames" in caplog.text
    run_worker(synthetic_settings(redis_url))
    assert output_events(redis_url, UUID)[-1].reason == "error"


def test_sampling_rates_are_read_as_mod_audio_fork_writes_them():
    assert parse_rate("8k") == 8000 and parse_rate("16k") == 16000 and parse_rate("24000") == 24000
    for bad in ("11k", "0", "fast"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_with_basic_auth_only_upgrades_carrying_the_credentials_are_accepted(redis_url):
    frames = l16_frames(encode_words(CALLER, 8000), 8000)

    async def main() -> tuple[AudioForkGateway, list[int]]:
        statuses = []
        async with serving(redis_url, basic_auth="freeswitch:s3cret") as (gateway, url):
            for auth in (None, "freeswitch:wrong"):
                with pytest.raises(InvalidStatus) as refused:
                    await fork(url + "/refused", frames, auth=auth)
                statuses.append(refused.value.response.status_code)
            await fork(url + "/" + UUID, frames, auth="freeswitch:s3cret")
            await asyncio.sleep(0.2)
        return gateway, statuses

    gateway, statuses = asyncio.run(main())
    assert statuses == [401, 401] and gateway.stats.refused_auth == 2
    assert gateway.sessions == [UUID] and not raw_client(redis_url).exists(Keyspace().session_open("refused"))
    run_worker(synthetic_settings(redis_url))
    assert channel_words(output_events(redis_url, UUID), 0) == CALLER


def test_the_audio_fork_and_audiosocket_gateways_refuse_to_start_unauthenticated_unless_told_to(redis_url):
    for protocol, needs in (("audio-fork", "--basic-auth"), ("audiosocket", "--insecure-no-auth")):
        refused = subprocess.run(
            [STREAMSCRIBE, "gateway", "--protocol", protocol, "--port", "0", "--redis-url", redis_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and needs in refused.stderr, (protocol, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_hundred_idle_websockets_cost_bounded_memory_and_a_call_still_goes_through(valkey_url):
    gateway = subprocess.Popen(
        [STREAMSCRIBE, "gateway", "--protocol", "audio-fork", "--host", "127.0.0.1", "--port", "0",
         "--redis-url", valkey_url, "--metrics-port", "0", "--basic-auth", "fs:pw"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert gateway.stdout is not None
        line = gateway.stdout.readline()
        assert "(audio-fork)" in line and "listening on ws://" in line, line
        port = int(line.rsplit(":", 1)[1])
        metrics_port = int(re.search(r"metrics on :(\d+)", line).group(1))
        url = f"ws://127.0.0.1:{port}"
        frames = l16_frames(encode_words(CALLER, 8000), 8000)

        async def main() -> int:
            await fork(url + "/warm-up", frames[:10], auth="fs:pw")
            await asyncio.sleep(0.5)
            before = rss_kib(gateway.pid)
            assert before is not None, "the gateway is running"
            headers = {"Authorization": "Basic " + base64.b64encode(b"fs:pw").decode()}
            idle = [
                await ws_connect(url + f"/idle-{n}", subprotocols=["audio.drachtio.org"], additional_headers=headers)
                for n in range(200)
            ]
            await idle[0].send(json.dumps({"sampling": "8k", "mixType": "mono"}))  # metadata, then silence
            await asyncio.sleep(1.0)
            after = rss_kib(gateway.pid)
            assert after is not None, "the gateway is running"
            grown = after - before
            metrics = scrape(metrics_port, "/metrics")
            assert 'streamscribe_gateway_connections{protocol="audio-fork"} 200.0' in metrics
            assert scrape(metrics_port, "/healthz").startswith("ok")
            await fork(url + "/" + UUID, frames, auth="fs:pw")
            wait_for(lambda: ended_input(valkey_url, UUID), 20, "the call's end marker")
            for ws in idle:
                await ws.close()
            return grown

        grown = asyncio.run(main())
        print(f"\n200 idle audio-fork WebSockets: +{grown} KiB resident")
        assert grown < 32 * 1024
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(20) == 0
    finally:
        gateway.kill()
    run_worker(synthetic_settings(valkey_url))
    assert channel_words(output_events(valkey_url, UUID), 0) == CALLER
