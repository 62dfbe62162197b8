"""The Asterisk AudioSocket gateway: a client written from the protocol's definition (type byte,
big-endian length, payload) replays calls over real TCP, a real worker transcribes the sessions."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from producer.aio import AsyncProducer
from producer.audiosocket import AudioSocketGateway, encode_frame
from tests.client_helpers import ended_input, output_events, raw_client, run_worker, scrape, synthetic_settings
from tests.worker_helpers import rss_kib, wait_for
from worker.backends.synthetic import encode_words, random_words
from worker.protocol.events import SegmentEvent, SessionEnded
from worker.protocol.keys import Keyspace
from worker.protocol.messages import SessionOpen
from worker.protocol.pcm import encode_pcm

pytestmark = pytest.mark.timeout(120)

STREAMSCRIBE = str(Path(sys.executable).with_name("streamscribe"))
WORDS = random_words(9, seed=61)
CALL = uuid.UUID("40325ec2-5efd-4bd3-805f-53576e581d13")  # the example UUID of Asterisk's documentation


def slin_frames(audio: np.ndarray, rate: int = 8000) -> list[bytes]:
    """Float audio as Asterisk sends it: signed 16-bit little-endian, 20 ms per frame."""
    data = encode_pcm(audio, "pcm_s16le")
    step = rate // 50 * 2
    return [data[i : i + step] for i in range(0, len(data), step)]


def call_frames(call: uuid.UUID, audio: np.ndarray, *, kind: int = 0x10, rate: int = 8000) -> list[bytes]:
    frames = [encode_frame(0x01, call.bytes)]
    frames += [encode_frame(kind, f) for f in slin_frames(audio, rate)]
    return frames


async def send(port: int, frames: list[bytes], *, pace: float = 0.0, close: bool = True) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for frame in frames:
        writer.write(frame)
        await writer.drain()
        if pace:
            await asyncio.sleep(pace)
    if close:
        writer.close()
        await writer.wait_closed()


async def through_gateway(url: str, calls: list[list[bytes]], **options: object) -> AudioSocketGateway:
    producer = await AsyncProducer.connect(url)
    gateway = AudioSocketGateway(producer, **options)
    server = await gateway.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.gather(*(send(port, frames) for frames in calls))
        for _ in range(200):  # the handlers finish after the client closed
            if gateway.stats.connections == 0:
                break
            await asyncio.sleep(0.02)
    finally:
        await gateway.aclose()
        await producer.aclose()
    return gateway


def words_of(events: list) -> list[str]:
    return [w.word for e in events if isinstance(e, SegmentEvent) for w in e.words]


def session_open(url: str, sid: str) -> SessionOpen:
    return SessionOpen.decode(raw_client(url).hget(Keyspace().session_open(sid), "open"))


def test_a_call_is_one_session_named_after_its_uuid_and_a_hangup_completes_it(redis_url):
    frames = call_frames(CALL, encode_words(WORDS, 8000))
    frames.insert(5, encode_frame(0x03, b"5"))  # a DTMF digit mid-call: counted, not audio
    frames.append(encode_frame(0x00))
    gateway = asyncio.run(through_gateway(redis_url, [frames], session_prefix="pbx-"))
    sid = f"pbx-{CALL}"
    assert gateway.sessions == [sid] and sid == "pbx-40325ec2-5efd-4bd3-805f-53576e581d13"
    assert gateway.dtmf_digits == 1 and gateway.stats.malformed == 0
    opened = session_open(redis_url, sid)
    assert (opened.sample_rate, opened.encoding, opened.channels) == (8000, "pcm_s16le", 1)
    assert opened.metadata == {"source": "audiosocket", "call_uuid": str(CALL)}
    run_worker(synthetic_settings(redis_url))
    events = output_events(redis_url, sid)
    assert isinstance(events[-1], SessionEnded) and events[-1].reason == "completed"
    assert words_of(events) == WORDS


def test_higher_rate_slin_frames_open_a_session_at_their_rate(redis_url):
    frames = [*call_frames(CALL, encode_words(WORDS, 16000), kind=18, rate=16000), encode_frame(0)]
    asyncio.run(through_gateway(redis_url, [frames]))
    assert session_open(redis_url, str(CALL)).sample_rate == 16000
    run_worker(synthetic_settings(redis_url))
    assert words_of(output_events(redis_url, str(CALL))) == WORDS


@pytest.mark.parametrize(("error_code", "reason"), [(b"\x01", "completed"), (b"\x02", "error"), (b"", "error")])
def test_an_error_frame_ends_the_call_a_caller_hangup_as_completed(redis_url, error_code, reason):
    frames = [*call_frames(CALL, encode_words(WORDS[:3], 8000)), encode_frame(255, error_code)]
    asyncio.run(through_gateway(redis_url, [frames]))
    run_worker(synthetic_settings(redis_url))
    assert output_events(redis_url, str(CALL))[-1].reason == reason


def test_an_abrupt_disconnect_ends_the_session_with_error_and_keeps_what_was_said(redis_url):
    audio = encode_words(WORDS, 8000)
    frames = call_frames(CALL, audio)
    cut = len(frames) * 2 // 3
    asyncio.run(through_gateway(redis_url, [frames[:cut]]))  # no hangup: the TCP connection just closes
    run_worker(synthetic_settings(redis_url))
    events = output_events(redis_url, str(CALL))
    assert events[-1].reason == "error"
    said = words_of(events)
    assert said and said == WORDS[: len(said)] and len(said) < len(WORDS)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (encode_frame(0x42, b"??"), "unknown frame type"),
        (encode_frame(0x10, b"\x00\x01\x02"), "odd number of audio bytes"),
        (encode_frame(0x12, b"\x00\x00" * 320), "a change of rate"),
        (encode_frame(0x01, CALL.bytes), "a second UUID"),
    ],
)
def test_a_malformed_frame_ends_the_session_with_error_and_other_calls_go_on(redis_url, bad, why, caplog):
    other = uuid.uuid4()
    frames = call_frames(CALL, encode_words(WORDS[:4], 8000))
    frames.insert(len(frames) // 2, bad)
    good = [*call_frames(other, encode_words(WORDS, 8000)), encode_frame(0)]
    gateway = asyncio.run(through_gateway(redis_url, [frames, good]))
    assert gateway.stats.malformed == 1, why
    assert "malformed frame" in caplog.text
    run_worker(synthetic_settings(redis_url))
    assert output_events(redis_url, str(CALL))[-1].reason == "error"
    assert output_events(redis_url, str(other))[-1].reason == "completed"
    assert words_of(output_events(redis_url, str(other))) == WORDS


def test_audio_before_the_uuid_closes_the_connection_without_a_session(redis_url):
    frames = [encode_frame(0x10, b"\x00\x00" * 160), encode_frame(0x01, CALL.bytes)]
    gateway = asyncio.run(through_gateway(redis_url, [frames]))
    assert gateway.stats.malformed == 1 and gateway.sessions == []


@pytest.mark.slow
def test_two_hundred_idle_connections_cost_bounded_memory_and_a_call_still_goes_through(valkey_url):
    gateway = subprocess.Popen(
        [STREAMSCRIBE, "gateway", "--protocol", "audiosocket", "--host", "127.0.0.1", "--port", "0",
         "--redis-url", valkey_url, "--metrics-port", "0", "--insecure-no-auth"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    idle: list[socket.socket] = []
    try:
        assert gateway.stdout is not None
        line = gateway.stdout.readline()
        assert "(audiosocket)" in line and "listening on tcp://" in line, line
        port = int(line.rsplit(":", 1)[1])
        metrics_port = int(re.search(r"metrics on :(\d+)", line).group(1))
        asyncio.run(send(port, [*call_frames(uuid.uuid4(), encode_words(WORDS[:2], 8000)), encode_frame(0)]))
        time.sleep(0.5)
        before = rss_kib(gateway.pid)
        assert before is not None, "the gateway is running"
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        idle[0].sendall(encode_frame(0x01, uuid.uuid4().bytes))  # one names its call and then says nothing
        time.sleep(1.0)
        after = rss_kib(gateway.pid)
        assert after is not None, "the gateway is running"
        grown = after - before
        print(f"\n200 idle AudioSocket connections: +{grown} KiB resident")
        assert grown < 16 * 1024
        metrics = scrape(metrics_port, "/metrics")
        assert 'streamscribe_gateway_connections{protocol="audiosocket"} 200.0' in metrics
        assert 'streamscribe_gateway_calls_total{protocol="audiosocket"} 1.0' in metrics
        assert 'streamscribe_gateway_refused_total{protocol="audiosocket",reason="capacity"} 0.0' in metrics
        assert scrape(metrics_port, "/healthz").startswith("ok")
        asyncio.run(send(port, [*call_frames(CALL, encode_words(WORDS, 8000)), encode_frame(0)]))
        # the gateway has written the whole call once its end marker is in the session's input
        wait_for(lambda: ended_input(valkey_url, str(CALL)), 20, "the call's end marker")
        assert gateway.poll() is None
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(20) == 0
    finally:
        for s in idle:
            s.close()
        gateway.kill()
    run_worker(synthetic_settings(valkey_url))
    assert words_of(output_events(valkey_url, str(CALL))) == WORDS
