"""The Twilio Media Streams gateway: a client replays calls over a real WebSocket (JSON messages,
base64 mu-law in 20 ms frames), the gateway writes sessions, a real worker transcribes them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from benchmarks.corpus import corpus_wer
from benchmarks.offline import offline_transcribe
from producer.aio import AsyncProducer
from producer.gateway import FrameMixer, TwilioGateway
from tests.client_helpers import (
    channel_text,
    channel_words,
    output_events,
    raw_client,
    recording,
    run_worker,
    synthetic_settings,
    whisper_settings,
)
from worker.asr.audio import decode_file, resample
from worker.backends.synthetic import encode_words, expected_words, random_words
from worker.protocol import audiofile
from worker.protocol.events import SegmentEvent, SessionEnded, SessionStarted
from worker.protocol.keys import Keyspace
from worker.protocol.messages import SessionOpen
from worker.protocol.pcm import decode_pcm, encode_pcm

pytestmark = pytest.mark.timeout(120)

STREAMSCRIBE = str(Path(sys.executable).with_name("streamscribe"))
SILENCE = encode_pcm(np.zeros(1, np.float32), "mulaw")[0]  # the code of 0.0, as the gateway fills
INBOUND_WORDS = random_words(10, seed=51)
OUTBOUND_WORDS = random_words(7, seed=52)
OUTBOUND_LEAD = 0.5  # the agent's side says nothing for the first 0.5 s


def mulaw_frames(audio: np.ndarray) -> list[bytes]:
    """8 kHz float audio as Twilio sends it: mu-law, 160 bytes (20 ms) per media message."""
    data = encode_pcm(audio, "mulaw")
    data += bytes([SILENCE]) * (-len(data) % 160)
    return [data[i : i + 160] for i in range(0, len(data), 160)]


def media(stream_sid: str, track: str, index: int, frame: bytes) -> dict:
    return {
        "event": "media",
        "streamSid": stream_sid,
        "media": {
            "track": track,
            "chunk": str(index + 1),
            "timestamp": str(index * 20),
            "payload": base64.b64encode(frame).decode(),
        },
    }


def start(call_sid: str, stream_sid: str, tracks: list[str], **params: str) -> dict:
    return {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": stream_sid,
        "start": {
            "accountSid": "AC0123",
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": tracks,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": params,
        },
    }


def messy_two_track_call(stream_sid: str) -> list[dict]:
    """Both tracks as a real feed delivers them: the outbound track starts late, lags 3 frames,
    arrives partly out of order, skips silent frames and stops early; one inbound frame repeats."""
    inbound = mulaw_frames(encode_words(INBOUND_WORDS, 8000))
    outbound = mulaw_frames(encode_words(OUTBOUND_WORDS, 8000, lead_sec=OUTBOUND_LEAD))
    silent = {i for i, f in enumerate(outbound) if f == bytes([SILENCE]) * 160}
    rng = random.Random(5)
    skipped = set(range(15)) | set(rng.sample(sorted(silent - set(range(15))), 6)) | set(silent_tail(outbound))
    out_queue = [(i, f) for i, f in enumerate(outbound) if i not in skipped]
    messages: list[dict] = []
    for i, frame in enumerate(inbound):
        messages.append(media(stream_sid, "inbound", i, frame))
        if i == 40:
            messages.append(media(stream_sid, "inbound", i, frame))  # a repeat
        while out_queue and out_queue[0][0] <= i - 3:
            j, f = out_queue.pop(0)
            messages.append(media(stream_sid, "outbound", j, f))
    messages += [media(stream_sid, "outbound", j, f) for j, f in out_queue]
    # swap some neighbours: frames of the two tracks do not come in a fixed order
    for k in range(10, len(messages) - 1, 17):
        messages[k], messages[k + 1] = messages[k + 1], messages[k]
    return messages


def silent_tail(frames: list[bytes]) -> list[int]:
    last = max(i for i, f in enumerate(frames) if f != bytes([SILENCE]) * 160)
    return list(range(last + 2, len(frames)))


async def replay(url: str, first: list[dict], frames: list[dict], *, stop: bool = True) -> None:
    """A Twilio-like client: connected, start, the media messages, stop."""
    async with ws_connect(url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        for message in [*first, *frames]:
            await ws.send(json.dumps(message))
        if stop:
            await ws.send(json.dumps({"event": "stop", "streamSid": "MZ", "stop": {"callSid": "CA"}}))


@contextlib.asynccontextmanager
async def serving(redis_url: str, **options) -> AsyncIterator[tuple[TwilioGateway, str]]:
    """A gateway on a free port of 127.0.0.1; on exit, its handlers have finished their sessions."""
    producer = await AsyncProducer.connect(redis_url)
    gateway = TwilioGateway(producer, **options)
    server = await gateway.serve("127.0.0.1", 0)
    try:
        yield gateway, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()
        await producer.aclose()


async def through_gateway(redis_url: str, calls: list[tuple[list[dict], list[dict], bool]], **options) -> TwilioGateway:
    """Replay ``calls`` to a gateway concurrently; returns the gateway (its sessions and counters)."""
    async with serving(redis_url, **options) as (gateway, url):
        await asyncio.gather(*(replay(url, first, frames, stop=stop) for first, frames, stop in calls))
    return gateway


def assert_oracle(events: list, channel: int, words: list[str], lead: float = 0.1) -> None:
    got = [w for e in events if isinstance(e, SegmentEvent) and e.channel == channel for w in e.words]
    assert [w[2] for w in got] == words
    for (s, e, _t), w in zip(expected_words(words, 8000, lead_sec=lead), got, strict=True):
        assert abs(w[0] - s) < 2e-3 and abs(w[1] - e) < 2e-3


def test_a_two_track_call_becomes_a_stereo_session_with_one_transcript_per_channel(redis_url):
    first = [start("CA-two-tracks", "MZ1", ["inbound", "outbound"], agent="a-17", language="en")]
    gateway = asyncio.run(through_gateway(redis_url, [(first, messy_two_track_call("MZ1"), True)], tenant="acme"))
    assert gateway.sessions == ["CA-two-tracks"]
    stored = raw_client(redis_url).hget(Keyspace().session_open("CA-two-tracks"), "open")
    assert SessionOpen.decode(stored).tenant == "acme", "the gateway's --tenant reaches the open message"
    assert gateway.dropped_frames == 1 and gateway.filled_frames > 25  # the repeat; the skipped outbound frames
    run_worker(synthetic_settings(redis_url))

    events = output_events(redis_url, "CA-two-tracks")
    started, ended = events[0], events[-1]
    assert isinstance(started, SessionStarted) and (started.channels, started.encoding) == (2, "mulaw")
    assert started.sample_rate == 8000
    assert started.metadata["call_sid"] == "CA-two-tracks" and started.metadata["stream_sid"] == "MZ1"
    assert started.metadata["agent"] == "a-17" and started.metadata["channel_1"] == "outbound"
    assert isinstance(ended, SessionEnded) and ended.reason == "completed"
    assert not [e for e in events if e.TYPE == "error"]
    assert_oracle(events, 0, INBOUND_WORDS)  # the caller, channel 0
    assert_oracle(events, 1, OUTBOUND_WORDS, lead=OUTBOUND_LEAD)  # the agent, channel 1, in place


def test_concurrent_single_track_calls_each_become_a_mono_session(valkey_url):
    calls = []
    for k in range(3):
        frames = mulaw_frames(encode_words(random_words(5, seed=60 + k), 8000))
        messages = [media(f"MZ{k}", "inbound", i, f) for i, f in enumerate(frames)]
        calls.append(([start(f"CA{k}", f"MZ{k}", ["inbound"])], messages, True))
    gateway = asyncio.run(through_gateway(valkey_url, calls, session_prefix="tw-", frames_per_chunk=1))
    assert sorted(gateway.sessions) == ["tw-CA0", "tw-CA1", "tw-CA2"]
    entries = raw_client(valkey_url).xlen(Keyspace().session_input("tw-CA0"))
    assert entries == len(calls[0][1]) + 1  # one 20 ms frame per chunk, then the end marker
    run_worker(synthetic_settings(valkey_url))
    for k in range(3):
        events = output_events(valkey_url, f"tw-CA{k}")
        assert events[0].channels == 1 and events[-1].reason == "completed"
        assert channel_words(events, 0) == random_words(5, seed=60 + k)


def test_a_stream_cut_without_a_stop_message_ends_its_session_at_once(valkey_url):
    frames = mulaw_frames(encode_words(INBOUND_WORDS, 8000))
    messages = [media("MZ", "inbound", i, f) for i, f in enumerate(frames[:100])]  # 2 s, then the line drops
    asyncio.run(through_gateway(valkey_url, [([start("CA-cut", "MZ", ["inbound"])], messages, False)]))
    run_worker(synthetic_settings(valkey_url))  # no stall wait: the end marker is there
    events = output_events(valkey_url, "CA-cut")
    assert isinstance(events[-1], SessionEnded) and events[-1].reason == "error"
    heard = channel_words(events, 0)
    assert heard == INBOUND_WORDS[: len(heard)] and len(heard) >= 3


def test_an_unsupported_media_format_is_refused_and_opens_no_session(valkey_url):
    bad = start("CA-l16", "MZ", ["inbound"])
    bad["start"]["mediaFormat"] = {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}

    async def attempt() -> int | None:
        async with serving(valkey_url) as (_gateway, url), ws_connect(url) as ws:
            await ws.send(json.dumps(bad))
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code

    assert asyncio.run(attempt()) == 1003
    assert raw_client(valkey_url).dbsize() == 0


def test_the_frame_mixer_aligns_tracks_by_timestamp_and_fills_gaps_with_silence():
    fill = bytes([SILENCE]) * 4
    mixer = FrameMixer(["inbound", "outbound"], fill=fill, frame_bytes=4, max_lag_frames=2)
    a = [bytes([i]) * 4 for i in range(6)]
    b = [bytes([100 + i]) * 4 for i in range(6)]
    out = mixer.push("inbound", 0, a[0]) + mixer.push("outbound", 0, b[0])
    assert out == [bytes([0, 100]) * 4]
    out = mixer.push("inbound", 1, a[1]) + mixer.push("inbound", 2, a[2])  # outbound 1 is late
    assert out == []
    out = mixer.push("inbound", 3, a[3])  # 2 frames ahead: frame 1 goes out with silence for outbound
    assert out == [bytes([1, SILENCE]) * 4]
    out = mixer.push("outbound", 1, b[1]) + mixer.push("outbound", 2, b[2])  # too late for 1, on time for 2
    assert out == [bytes([2, 102]) * 4] and mixer.dropped == 1
    out = mixer.push("inbound", 4, a[4] + a[5])  # a 40 ms payload is two frames
    assert out == [bytes([3, SILENCE]) * 4]
    assert mixer.flush() == [bytes([4, SILENCE]) * 4, bytes([5, SILENCE]) * 4]
    assert mixer.filled == 4


@pytest.mark.slow
def test_the_gateway_command_serves_calls_until_sigterm(valkey_url):
    gateway = subprocess.Popen(
        [
            STREAMSCRIBE,
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--redis-url",
            valkey_url,
            "--insecure-no-auth",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert gateway.stdout is not None
        url = gateway.stdout.readline().split()[-1]
        assert url.startswith("ws://127.0.0.1:")
        frames = mulaw_frames(encode_words(INBOUND_WORDS, 8000))
        messages = [media("MZ9", "inbound", i, f) for i, f in enumerate(frames)]
        asyncio.run(replay(url, [start("CA-cli", "MZ9", ["inbound"])], messages))
        gateway.terminate()
        assert gateway.wait(15) == 0
    finally:
        gateway.kill()
    run_worker(synthetic_settings(valkey_url))
    assert_oracle(output_events(valkey_url, "CA-cli"), 0, INBOUND_WORDS)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_real_telephone_recording_through_the_gateway_reads_as_offline_does_within_a_word(valkey_url):
    """17_telephone8k (band-limited speech) resampled to 8 kHz with soxr and mu-law encoded.

    The bound is offline faster-whisper on the same mu-law audio plus one word: the clip has 8
    words, so an absolute bound would test which single word a decode gets wrong (offline reads
    3 of them wrong here), while a gateway that garbles audio (a wrong rate or codec) is far past it.
    """
    clip = recording("17_")
    audio = audiofile.resample(decode_file(clip.path), 16000, 8000)
    frames = mulaw_frames(audio)
    heard = resample(decode_pcm(b"".join(frames), "mulaw", 1)[:, 0], 8000, 16000)
    baseline = corpus_wer([clip.reference], [offline_transcribe(heard, device="cpu").text])
    messages = [media("MZ17", "inbound", i, f) for i, f in enumerate(frames)]
    first = [start("CA-phone", "MZ17", ["inbound"], language="en")]
    asyncio.run(through_gateway(valkey_url, [(first, messages, True)]))
    run_worker(whisper_settings(valkey_url), max_seconds=240)
    events = output_events(valkey_url, "CA-phone")
    assert events[-1].reason == "completed"
    text = channel_text(events, 0)
    wer = corpus_wer([clip.reference], [text])
    print(f"\ntelephone 8 kHz mu-law via the gateway: WER {wer:.3f} (offline {baseline:.3f}) {text!r}")
    assert wer <= baseline + 1 / len(clip.reference.split()) + 1e-9
