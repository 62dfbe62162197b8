"""The sync and asyncio producers against real servers and a real worker.

Telephony audio (G.711 mu-law and A-law at 8 kHz, PCM16 at 8/16/48 kHz) in 20 ms frames, stereo
calls transcribed per channel, and retries that neither duplicate nor lose a chunk.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from benchmarks.corpus import corpus_wer
from producer.aio import AsyncProducer, connect_async
from producer.client import Producer
from tests.client_helpers import (
    FlakyProxy,
    channel_text,
    channel_words,
    output_events,
    raw_client,
    recording,
    run_worker,
    stereo,
    synthetic_settings,
    synthetic_stereo,
    whisper_settings,
)
from worker.asr.audio import decode_file, resample
from worker.backends.synthetic import encode_words, expected_words, random_words
from worker.errors import SessionExistsError
from worker.protocol.connection import connect
from worker.protocol.keys import Keyspace
from worker.protocol.messages import AudioChunk, EndOfSession, SessionOpen, decode_input

pytestmark = pytest.mark.timeout(120)

WORDS_0 = random_words(12, seed=3)
WORDS_1 = random_words(9, seed=4)


def frames_of(audio: np.ndarray, rate: int, ms: int = 20) -> list[np.ndarray]:
    step = rate * ms // 1000
    return [audio[i : i + step] for i in range(0, audio.shape[0], step)]


def input_entries(url: str, sid: str) -> list[tuple[str, AudioChunk | EndOfSession]]:
    client = connect(url)
    try:
        entries = client.xrange(Keyspace().session_input(sid))
    finally:
        client.close()
    return [(i.decode(), decode_input(f[b"m"])) for i, f in entries]


def assert_oracle(events: list, channel: int, words: list[str], rate: int) -> None:
    """The channel's words are exactly ``words``, at the synthetic oracle's times."""
    got = [w for e in events if e.TYPE == "segment" and e.channel == channel for w in e.words]
    assert [w[2] for w in got] == words
    for (start, end, _text), w in zip(expected_words(words, rate), got, strict=True):
        assert abs(w[0] - start) < 2e-3 and abs(w[1] - end) < 2e-3


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [
        ("mulaw", 8000),
        ("alaw", 8000),
        ("pcm_s16le", 8000),
        ("pcm_s16le", 16000),
        ("pcm_s16le", 48000),
        ("pcm_f32le", 16000),
    ],
)
def test_a_stereo_telephony_call_in_20_ms_frames_is_transcribed_per_channel(valkey_url, encoding, rate):
    audio = synthetic_stereo(WORDS_0, WORDS_1, rate)
    writer = Producer(valkey_url).open("call", sample_rate=rate, encoding=encoding, channels=2)
    for frame in frames_of(audio, rate):
        writer.send(frame)
    writer.close()
    assert len(input_entries(valkey_url, "call")) == len(frames_of(audio, rate)) + 1

    run_worker(synthetic_settings(valkey_url))

    events = output_events(valkey_url, "call")
    assert events[0].TYPE == "session_started" and events[0].encoding == encoding and events[0].channels == 2
    assert events[-1].TYPE == "session_ended" and events[-1].reason == "completed"
    assert not [e for e in events if e.TYPE == "error"]
    assert_oracle(events, 0, WORDS_0, rate)
    assert_oracle(events, 1, WORDS_1, rate)
    assert {e.channel for e in events if e.TYPE == "segment"} == {0, 1}


def test_the_sync_producer_takes_bytes_float_and_int16_chunks_alike(redis_url):
    audio = encode_words(WORDS_0, 16000)
    as_int16 = (audio * 32767).round().astype(np.int16)
    writer = Producer(redis_url).open("mixed", sample_rate=16000)
    for k, frame in enumerate(frames_of(as_int16, 16000, ms=100)):
        kind = k % 3
        writer.send(frame.tobytes() if kind == 0 else frame if kind == 1 else frame.astype(np.float32) / 32767)
    writer.close()

    payloads = b"".join(m.payload for _i, m in input_entries(redis_url, "mixed") if isinstance(m, AudioChunk))
    assert payloads == as_int16.astype("<i2").tobytes()
    run_worker(synthetic_settings(redis_url))
    assert channel_words(output_events(redis_url, "mixed"), 0) == WORDS_0


def test_chunks_that_are_not_whole_frames_of_the_session_are_refused_before_sending(redis_url):
    writer = Producer(redis_url).open("shape", sample_rate=8000, encoding="pcm_s16le", channels=2)
    with pytest.raises(ValueError, match="whole number"):
        writer.send(b"\x00" * 6)  # 1.5 stereo frames
    with pytest.raises(ValueError, match="1-D"):
        writer.send(np.zeros(160, dtype=np.float32))
    with pytest.raises(ValueError, match="3 channels"):
        writer.send(np.zeros((160, 3), dtype=np.float32))
    with pytest.raises(TypeError):
        writer.send(np.zeros((160, 2), dtype=np.int32))
    assert writer.seq == 0 and input_entries(redis_url, "shape") == []


def test_the_async_producer_writes_exactly_what_the_sync_producer_writes(redis_url):
    audio = synthetic_stereo(WORDS_0, WORDS_1, 8000)
    meta = {"call_sid": "CA1"}
    sync = Producer(redis_url).open("sync", sample_rate=8000, encoding="mulaw", channels=2, metadata=meta)
    for frame in frames_of(audio, 8000):
        sync.send(frame)
    sync.close()

    async def produce() -> None:
        producer = await AsyncProducer.connect(redis_url)
        async with (
            producer,
            await producer.open("async", sample_rate=8000, encoding="mulaw", channels=2, metadata=meta) as w,
        ):
            for frame in frames_of(audio, 8000):
                await w.send(frame)

    asyncio.run(produce())
    a, b = input_entries(redis_url, "sync"), input_entries(redis_url, "async")
    assert [i for i, _m in a] == [i for i, _m in b] == [f"{n + 1}-0" for n in range(len(a))]
    assert [(m.TYPE, m.seq, getattr(m, "payload", None)) for _i, m in a] == [
        (m.TYPE, m.seq, getattr(m, "payload", None)) for _i, m in b
    ]
    client = raw_client(redis_url)
    keys = Keyspace()
    opened = [SessionOpen.decode(client.hget(keys.session_open(s), "open")) for s in ("sync", "async")]
    assert opened[0].metadata == opened[1].metadata == meta and opened[1].encoding == "mulaw"
    run_worker(synthetic_settings(redis_url))
    for sid in ("sync", "async"):
        events = output_events(redis_url, sid)
        assert channel_words(events, 0) == WORDS_0 and channel_words(events, 1) == WORDS_1


CLUSTER_CALLS = {f"call-{k}": (random_words(8, seed=10 + k), random_words(8, seed=20 + k)) for k in range(4)}


def produce_cluster_calls(url: str) -> None:
    async def produce() -> None:
        producer = await AsyncProducer.connect(url)

        async def one(sid: str, words: tuple[list[str], list[str]]) -> None:
            writer = await producer.open(sid, sample_rate=8000, encoding="alaw", channels=2)
            for frame in frames_of(synthetic_stereo(*words, 8000), 8000):
                await writer.send(frame)
            await writer.close()

        await asyncio.gather(*(one(sid, words) for sid, words in CLUSTER_CALLS.items()))
        await producer.aclose()

    asyncio.run(produce())


def test_the_async_producer_streams_concurrent_calls_on_a_redis_cluster(cluster_url):
    produce_cluster_calls(cluster_url)
    keys = Keyspace()
    client = connect(cluster_url)
    announced = [f[b"session"].decode() for k in keys.all_shards() for _i, f in client.xrange(keys.announcements(k))]
    assert sorted(announced) == sorted(CLUSTER_CALLS)
    for sid, words in CLUSTER_CALLS.items():
        frames = frames_of(synthetic_stereo(*words, 8000), 8000)
        entries = input_entries(cluster_url, sid)
        assert [m.seq for _i, m in entries] == list(range(len(frames) + 1)) and entries[-1][1].TYPE == "end"
        assert SessionOpen.decode(client.hget(keys.session_open(sid), "open")).encoding == "alaw"
    client.close()


def test_a_worker_transcribes_async_produced_calls_on_a_redis_cluster(cluster_url):
    produce_cluster_calls(cluster_url)
    run_worker(synthetic_settings(cluster_url))
    for sid, (w0, w1) in CLUSTER_CALLS.items():
        events = output_events(cluster_url, sid)
        assert channel_words(events, 0) == w0 and channel_words(events, 1) == w1


def test_a_lost_xadd_reply_is_retried_without_duplicating_the_chunk(redis_url):
    proxy = FlakyProxy(redis_url)
    frames = frames_of(encode_words(WORDS_0, 8000), 8000)

    async def produce() -> None:
        # redis-py's own retries are off: the producer's retry is the one under test
        client = await connect_async(proxy.url, cluster=False, retry=Retry(NoBackoff(), 0))
        producer = AsyncProducer(client, retry_backoff_sec=0.01)
        writer = await producer.open("lossy", sample_rate=8000, encoding="mulaw")
        for k, frame in enumerate(frames):
            if k % 10 == 5:
                proxy.drop_next_reply()  # this chunk lands; its "OK" never comes back
            await writer.send(frame)
        # and the explicit case: the same message sent twice is one entry
        last = (await client.xrevrange(producer.keys.session_input("lossy"), count=1))[0][1][b"m"]
        assert await writer.append(writer.seq - 1, last) is True
        assert await writer.append(writer.seq - 1, AudioChunk(writer.seq - 1, b"\xff" * 160).encode()) is False
        await writer.close()
        await producer.aclose()

    try:
        asyncio.run(produce())
    finally:
        proxy.close()
    assert proxy.dropped == len(range(5, len(frames), 10))
    entries = input_entries(redis_url, "lossy")
    assert [i for i, _m in entries] == [f"{n + 1}-0" for n in range(len(frames) + 1)]
    run_worker(synthetic_settings(redis_url))
    events = output_events(redis_url, "lossy")
    assert not [e for e in events if e.TYPE == "error"]
    assert_oracle(events, 0, WORDS_0, 8000)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_send_interrupted_after_its_xadd_landed_does_not_swallow_the_next_chunk(valkey_url, flavour):
    """The XADD of chunk k landed, then the send was cancelled (or interrupted) before ``seq``
    moved on; chunk k+1 must not be taken for a retry of chunk k."""
    frames = frames_of(encode_words(WORDS_0, 8000), 8000)
    interrupted = {7, 30, 31}

    async def produce_async() -> None:
        producer = await AsyncProducer.connect(valkey_url)
        writer = await producer.open("interrupted", sample_rate=8000, encoding="mulaw")
        for k, frame in enumerate(frames):
            await writer.send(frame)
            if k in interrupted:
                writer.seq -= 1  # as if cancelled between the XADD's landing and ``seq += 1``
        await writer.close()
        await producer.aclose()

    def produce_sync() -> None:
        writer = Producer(valkey_url).open("interrupted", sample_rate=8000, encoding="mulaw")
        for k, frame in enumerate(frames):
            writer.send(frame)
            if k in interrupted:
                writer.seq -= 1
        writer.close()

    asyncio.run(produce_async()) if flavour == "async" else produce_sync()
    entries = input_entries(valkey_url, "interrupted")
    assert [m.seq for _i, m in entries] == list(range(len(frames) + 1))
    run_worker(synthetic_settings(valkey_url))
    events = output_events(valkey_url, "interrupted")
    assert not [e for e in events if e.TYPE == "error"]
    assert_oracle(events, 0, WORDS_0, 8000)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_connections_cut_mid_stream_lose_and_duplicate_nothing(redis_url, flavour):
    proxy = FlakyProxy(redis_url)
    audio = synthetic_stereo(WORDS_0, WORDS_1, 16000)
    frames = frames_of(audio, 16000)
    stop = threading.Event()

    def chaos() -> None:  # cuts that land at random points, mid-request or mid-reply included
        while not stop.wait(0.025):
            proxy.cut()

    async def produce_async() -> None:
        client = await connect_async(proxy.url, cluster=False, retry=Retry(NoBackoff(), 0))
        producer = AsyncProducer(client, retry_backoff_sec=0.005, retry_max_backoff_sec=0.05, retries=50)
        writer = await producer.open("cut", channels=2)
        for k, frame in enumerate(frames):
            if k % 7 == 3:
                proxy.cut()  # and some between requests, for sure
            await writer.send(frame)
        await writer.close()
        await producer.aclose()

    def produce_sync() -> None:
        client = connect(proxy.url, cluster=False, retry=Retry(NoBackoff(), 0))
        writer = Producer(client=client, retry_backoff_sec=0.005, retry_max_backoff_sec=0.05, retries=50).open(
            "cut", channels=2
        )
        for k, frame in enumerate(frames):
            if k % 7 == 3:
                proxy.cut()
            writer.send(frame)
        writer.close()

    cutter = threading.Thread(target=chaos, daemon=True)
    cutter.start()
    try:
        asyncio.run(produce_async()) if flavour == "async" else produce_sync()
    finally:
        stop.set()
        cutter.join()
        proxy.close()
    assert proxy.cuts > len(frames) // 7
    entries = input_entries(redis_url, "cut")
    assert [i for i, _m in entries] == [f"{n + 1}-0" for n in range(len(frames) + 1)]
    run_worker(synthetic_settings(redis_url))
    events = output_events(redis_url, "cut")
    assert not [e for e in events if e.TYPE == "error"]
    assert channel_words(events, 0) == WORDS_0 and channel_words(events, 1) == WORDS_1


def test_a_restarted_async_producer_resumes_its_session_with_its_token_and_no_one_else_can(valkey_url):
    frames = frames_of(encode_words(WORDS_0, 8000), 8000)
    half = len(frames) // 2

    async def produce(part: list[np.ndarray], close: bool, token: str | None = None) -> str:
        producer = await AsyncProducer.connect(valkey_url)
        writer = await producer.open("resumed", sample_rate=8000, encoding="mulaw", resume_token=token)
        for frame in part:
            await writer.send(frame)
        if close:
            await writer.close()
        await producer.aclose()
        return writer.resume_token

    token = asyncio.run(produce(frames[:half], close=False))
    with pytest.raises(SessionExistsError, match="another producer opened"):
        asyncio.run(produce(frames[half:], close=True))  # anyone without the token
    with pytest.raises(SessionExistsError):
        asyncio.run(produce(frames[half:], close=True, token="a-guess"))
    asyncio.run(produce(frames[half:], close=True, token=token))  # a new process, the same session
    entries = input_entries(valkey_url, "resumed")
    assert [m.seq for _i, m in entries] == list(range(len(frames) + 1))
    announced = raw_client(valkey_url).xlen(Keyspace().announcements(Keyspace().shard_of("resumed")))
    assert announced == 1
    run_worker(synthetic_settings(valkey_url))
    assert channel_words(output_events(valkey_url, "resumed"), 0) == WORDS_0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stereo_call_of_real_speech_gives_each_channel_its_own_transcript(valkey_url):
    """Agent (03) on channel 0 and customer (04) on channel 1, overlapping, 8 kHz mu-law in 20 ms frames."""
    agent, customer = recording("03_"), recording("04_")
    left = resample(decode_file(agent.path), 16000, 8000)
    right = np.concatenate([np.zeros(2400, np.float32), resample(decode_file(customer.path), 16000, 8000)])
    audio = stereo(left, right)
    writer = Producer(valkey_url).open("real-call", sample_rate=8000, encoding="mulaw", channels=2, language="en")
    for frame in frames_of(audio, 8000):
        writer.send(frame)
    writer.close()

    started = time.monotonic()
    run_worker(whisper_settings(valkey_url), max_seconds=240)
    elapsed = time.monotonic() - started

    events = output_events(valkey_url, "real-call")
    assert events[-1].TYPE == "session_ended" and events[-1].reason == "completed"
    text0, text1 = channel_text(events, 0), channel_text(events, 1)
    wer0, wer1 = corpus_wer([agent.reference], [text0]), corpus_wer([customer.reference], [text1])
    print(f"\nstereo call: ch0 WER {wer0:.3f} {text0!r}; ch1 WER {wer1:.3f} {text1!r}; worker {elapsed:.1f} s")
    assert wer0 <= 0.4 and wer1 <= 0.4
    # no cross-talk: each channel's distinctive words stay on it
    assert "danger" in text0.lower() and "danger" not in text1.lower()
    assert "shook" in text1.lower() and "shook" not in text0.lower()
