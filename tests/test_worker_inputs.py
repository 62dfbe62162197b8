"""What the worker does with its input: bad entries, stalls, backpressure, memory, batching, round trips.

Bad input is crafted with raw XADDs (explicit ids) next to well-formed chunks, so the synthetic
oracle still holds for the audio that was fine: a session goes on exactly where it can.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import numpy as np
import pytest
import redis
from redis.client import Pipeline

from producer.client import Producer
from tests.worker_helpers import (
    KEYS,
    WorkerFleet,
    client_for,
    dead_letter_reasons,
    ended,
    oracle,
    record_seqs,
    reference_segments,
    rss_kib,
    segments_of,
    session_events,
    state,
    synthetic_settings,
    words_of,
    write_session,
)
from worker.backends.synthetic import SyntheticASR, encode_words, random_words
from worker.metrics import PrometheusObserver
from worker.protocol.messages import AudioChunk, EndOfSession, SessionOpen, input_entry_id
from worker.protocol.pcm import encode_pcm
from worker.protocol.scripts import Scripts
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)

CHUNK = 1600  # 100 ms at 16 kHz


def chunk_message(seq: int, audio: np.ndarray, encoding: str = "pcm_s16le") -> bytes:
    return AudioChunk(seq=seq, payload=encode_pcm(audio, encoding), sent_at=time.time()).encode()


def packed(**fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


class CraftedStream:
    """Writes a session's input entry by entry, with explicit, increasing stream ids."""

    def __init__(self, client: Any, sid: str) -> None:
        self.client = client
        self.key = KEYS.session_input(sid)
        self.n = 0

    def add(self, fields: dict[str, bytes]) -> None:
        self.n += 1
        self.client.xadd(self.key, fields, id=f"{self.n}-0")


def announce_raw_open(client: Any, sid: str, blob: bytes) -> None:
    """What a producer does to open a session, with any bytes as its open message."""
    Scripts().call(client, "open_session", [KEYS.session_open(sid)], [blob, int(time.time() * 1000), "no-token"])
    client.xadd(KEYS.announcements(KEYS.shard_of(sid)), {"session": sid})


def error_codes(events: list) -> list[tuple[str, bool]]:
    return [(e.code, e.fatal) for e in events if e.TYPE == "error"]


def rejected(observer: PrometheusObserver, reason: str) -> float:
    return observer.registry.get_sample_value("streamscribe_rejected_inputs_total", {"reason": reason}) or 0.0


def test_bad_chunks_are_reported_dead_lettered_and_counted_while_the_audio_around_them_stays_exact(redis_url):
    client = client_for(redis_url)
    cap = 8192
    words = random_words(30, seed=21)
    audio = encode_words(words)
    pieces = [audio[k : k + CHUNK] for k in range(0, audio.shape[0], CHUNK)]
    Producer(redis_url).open("bad")
    stream = CraftedStream(client, "bad")
    seq = 0

    def good() -> None:  # the next piece of the real audio, in sequence
        nonlocal seq
        stream.add({"m": chunk_message(seq, pieces.pop(0))})
        seq += 1

    def bad_chunk(message: bytes) -> None:  # a chunk the producer numbered, whose content is bad
        nonlocal seq
        stream.add({"m": message})
        seq += 1

    for _ in range(10):
        good()
    stream.add({"m": b"\xc1 not msgpack"})  # a stray write: takes no seq
    good()
    stream.add({"x": b"no m field"})
    bad_chunk(packed(v=2, type="chunk", seq=seq, payload=b"\0\0", sent_at=0.0))  # a newer producer
    good()
    bad_chunk(packed(v=1, type="chunk", seq=str(seq), payload="not bytes", sent_at=0.0))  # wrong types
    good()
    bad_chunk(AudioChunk(seq, b"\0" * (2 * cap), 0.0).encode())  # far over the cap: not even decoded
    good()
    bad_chunk(AudioChunk(seq, b"\0" * (cap + 2), 0.0).encode())  # just over the cap
    good()
    bad_chunk(AudioChunk(seq, b"\0\0\0", 0.0).encode())  # odd-length s16 PCM
    good()
    stream.add({"m": chunk_message(seq - 1, np.zeros(CHUNK, np.float32))})  # the last chunk again
    stream.add({"m": chunk_message(3, np.zeros(CHUNK, np.float32))})  # an old one again
    seq += 2  # two chunks the producer numbered never arrive (their audio is not part of the words)
    while pieces:
        good()
    stream.add({"m": EndOfSession(seq, time.time()).encode()})
    stream.add({"m": chunk_message(seq + 1, np.zeros(CHUNK, np.float32))})  # after the end

    # a float session with NaN and infinite samples, and a healthy session beside them
    f32_words = random_words(12, seed=22)
    f32 = Producer(redis_url).open("bad-f32", encoding="pcm_f32le")
    f32_audio = encode_words(f32_words)
    for k in range(0, f32_audio.shape[0], CHUNK):
        f32.send(f32_audio[k : k + CHUNK])
        if k == 5 * CHUNK:
            f32.send(np.full(CHUNK, np.nan, np.float32).tobytes())
            f32.send(np.full(CHUNK, np.inf, np.float32).tobytes())
    f32.close()
    healthy_words = random_words(30, seed=23)
    write_session(redis_url, "healthy", encode_words(healthy_words))

    observer = PrometheusObserver()
    Worker(synthetic_settings(redis_url, max_chunk_bytes=cap), observer=observer).run(burst=True)

    expected = [
        "malformed",
        "malformed",
        "unsupported_version",
        "malformed",
        "chunk_too_large",
        "chunk_too_large",
        "bad_audio",
        "seq_duplicate",
        "seq_duplicate",
        "seq_gap",
        "after_end",
    ]
    events = session_events(client, "bad")
    assert error_codes(events) == [(code, False) for code in expected]
    assert words_of(events) == oracle(words)
    assert events[-1].TYPE == "session_ended" and events[-1].reason == "completed"
    assert dead_letter_reasons(client, "bad") == (expected, expected)
    assert record_seqs(client, "bad") == list(range(1, len(events) + len(expected) + 1))

    f32_events = session_events(client, "bad-f32")
    assert error_codes(f32_events) == [("bad_audio", False), ("bad_audio", False)]
    assert words_of(f32_events) == oracle(f32_words)
    assert dead_letter_reasons(client, "bad-f32") == (["bad_audio"] * 2, ["bad_audio"] * 2)

    healthy = session_events(client, "healthy")
    assert error_codes(healthy) == [] and words_of(healthy) == oracle(healthy_words)
    assert dead_letter_reasons(client, "healthy") == ([], [])
    assert segments_of(healthy) == reference_segments(redis_url, healthy_words)

    counts = {reason: expected.count(reason) for reason in expected}
    counts["bad_audio"] += 2
    for reason, count in counts.items():
        assert rejected(observer, reason) == count, reason


def test_unusable_session_opens_end_with_a_clear_error_and_never_hurt_other_sessions(redis_url):
    client = client_for(redis_url)

    def good(sid: str) -> dict:
        return SessionOpen(sid).to_dict()

    opens = {
        "open-garbage": (b"\x93not a map", "bad_session"),
        "open-version": (packed(**{**good("open-version"), "v": 2}), "bad_session"),
        "open-types": (packed(**{**good("open-types"), "sample_rate": "16000"}), "bad_session"),
        "open-options": (packed(**{**good("open-options"), "asr": {"min_chunk_size": -1}}), "bad_session"),
        "open-forged": (packed(**good("someone-else")), "bad_session"),
        "open-backend": (packed(**{**good("open-backend"), "asr": {"backend": "faster-whisper"}}), "not_allowed"),
        "open-model": (packed(**{**good("open-model"), "asr": {"model": "large-v3"}}), "not_allowed"),
        "open-channels": (packed(**{**good("open-channels"), "channels": 4}), "not_allowed"),
    }
    for sid, (blob, _reason) in opens.items():
        announce_raw_open(client, sid, blob)
        client.xadd(KEYS.session_input(sid), {"m": chunk_message(0, np.zeros(CHUNK, np.float32))}, id="1-0")
    healthy_words = random_words(20, seed=24)
    write_session(redis_url, "healthy", encode_words(healthy_words))

    observer = PrometheusObserver()
    Worker(synthetic_settings(redis_url), observer=observer).run(burst=True)

    for sid, (_blob, reason) in opens.items():
        events = session_events(client, sid)
        assert [e.TYPE for e in events] == ["session_started", "error", "session_ended"], sid
        assert error_codes(events) == [(reason, True)], sid
        assert events[-1].reason == "error" and events[1].message, sid
        assert dead_letter_reasons(client, sid) == ([reason], [reason]), sid
        assert client.pttl(KEYS.session_state(sid)) > 0, sid
    assert rejected(observer, "bad_session") == 5 and rejected(observer, "not_allowed") == 3
    assert "someone-else" in session_events(client, "open-forged")[1].message
    healthy = session_events(client, "healthy")
    assert words_of(healthy) == oracle(healthy_words) and error_codes(healthy) == []


def test_a_session_whose_producer_goes_silent_ends_as_stalled_with_its_tail_committed(redis_url):
    client = client_for(redis_url)
    words = random_words(10, seed=25)
    writer = Producer(redis_url).open("silent")
    audio = encode_words(words)
    for k in range(0, audio.shape[0], CHUNK):
        writer.send(audio[k : k + CHUNK])  # and never an end

    observer = PrometheusObserver()
    started = time.monotonic()
    Worker(synthetic_settings(redis_url, stall_timeout_sec=1.0), observer=observer).run(burst=True)

    assert time.monotonic() - started >= 1.0
    events = session_events(client, "silent")
    assert error_codes(events) == [("stalled", True)]
    assert events[-1].TYPE == "session_ended" and events[-1].reason == "stalled"
    assert words_of(events) == oracle(words), "the tail is committed, not lost"
    assert observer.registry.get_sample_value("streamscribe_sessions_ended_total", {"reason": "stalled"}) == 1
    assert all(client.pttl(key) > 0 for key in KEYS.session_keys("silent") if client.exists(key))


def test_input_is_trimmed_only_by_commits_and_a_takeover_replays_the_retained_input_exactly(redis_url):
    """The trim point moves only with a successful commit; a fenced one trims nothing; and the
    next owner rebuilds the audio from what was kept, past a duplicate chunk it must skip again."""
    client = client_for(redis_url)
    words = random_words(60, seed=26)
    audio = encode_words(words)
    Producer(redis_url).open("trim")
    stream = CraftedStream(client, "trim")
    seq = 0
    for k in range(0, audio.shape[0], CHUNK):
        stream.add({"m": chunk_message(seq, audio[k : k + CHUNK])})
        if seq == 170:
            stream.add({"m": chunk_message(168, audio[k : k + CHUNK])})  # a duplicate, entry 172-0
        seq += 1
    stream.add({"m": EndOfSession(seq, time.time()).encode()})
    total = client.xlen(KEYS.session_input("trim"))

    # a TTL so long that no lease renewal runs during the test: only the epoch can fence
    observer = PrometheusObserver()
    first = Worker(synthetic_settings(redis_url, worker_id="first", lease_ttl_sec=60), observer=observer)
    first.start()
    try:
        while True:
            first.run_iteration()
            checkpoint = msgpack.unpackb(state(client, "trim")["checkpoint"])
            kept = client.xrange(KEYS.session_input("trim"), count=1)
            assert kept[0][0].decode() == checkpoint["trim"][0], "trimmed exactly where the last commit said"
            if checkpoint["trim"][0] != "1-0" and int(checkpoint["in_pos"].split("-")[0]) > 172:
                break
        assert int(checkpoint["trim"][0].split("-")[0]) < 172, "the duplicate lies in the retained input"
        assert client.xlen(KEYS.session_input("trim")) < total

        # it hands the session over (as on SIGTERM); a second worker's janitor takes it at once
        lease = first.sessions["trim"].lease
        first.leases.release(lease.shard, lease.entry_id)
        second = Worker(synthetic_settings(redis_url, worker_id="second"))
        second.run_iteration()
        assert int(state(client, "trim")["epoch"]) == 2
        # the first worker still believes it owns the session: its next commit is refused
        before = (client.xlen(KEYS.session_input("trim")), client.xlen(KEYS.session_output("trim")))
        first.run_iteration()
        assert observer.registry.get_sample_value("streamscribe_commits_total", {"result": "fenced"}) == 1
        assert "trim" not in first.sessions
        after = (client.xlen(KEYS.session_input("trim")), client.xlen(KEYS.session_output("trim")))
        assert after == before, "a fenced commit writes and trims nothing"
    finally:
        first.shutdown()
    second.run(burst=True)

    events = session_events(client, "trim")
    assert words_of(events) == oracle(words)
    assert error_codes(events) == [("seq_duplicate", False)], "reported once, by the first owner"
    assert record_seqs(client, "trim") == list(range(1, len(events) + 2)), "the events and one dead letter"
    assert segments_of(events) == reference_segments(redis_url, words)
    assert int(state(client, "trim")["epoch"]) == 2


@pytest.mark.slow
def test_worker_memory_stays_flat_over_a_35_minute_session(valkey_url, tmp_path):
    minutes = 35
    words = random_words(int(minutes * 60 / 0.4), seed=27)
    audio = encode_words(words)
    frames_total = audio.shape[0]
    Producer(valkey_url).open("long")
    client = client_for(valkey_url)
    pipe = client.pipeline(transaction=False)
    step = CHUNK
    for seq, k in enumerate(range(0, frames_total, step)):
        pipe.xadd(KEYS.session_input("long"), {"m": chunk_message(seq, audio[k : k + step])}, id=input_entry_id(seq))
    last = -(-frames_total // step)
    pipe.xadd(KEYS.session_input("long"), {"m": EndOfSession(last, time.time()).encode()}, id=input_entry_id(last))
    pipe.execute()
    del pipe, audio

    samples: list[tuple[float, int]] = []  # (fraction of the audio fed, RSS in KiB)
    with WorkerFleet(tmp_path) as fleet:
        worker = fleet.spawn(valkey_url, "w-long", lease_ttl_sec=30, args=["--burst"])
        while worker.alive():
            checkpoint = client.hget(KEYS.session_state("long"), "checkpoint")
            rss = rss_kib(worker.pid)
            if rss is None:
                break
            samples.append((msgpack.unpackb(checkpoint)["frames_fed"] / frames_total if checkpoint else 0.0, rss))
            time.sleep(0.05)
        assert worker.proc.wait(timeout=60) == 0

    assert ended(client, "long")
    assert words_of(session_events(client, "long")) == oracle(words)
    start_rss = samples[0][1]
    early = max(rss for fed, rss in samples if 0.1 <= fed < 0.3)
    late = max(rss for fed, rss in samples if fed >= 0.7)
    peak = max(rss for _fed, rss in samples)
    print(
        f"worker RSS over {minutes} min of audio: start {start_rss / 1024:.1f} MiB, 10-30% {early / 1024:.1f} MiB, "
        f"70-100% {late / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, {len(samples)} samples"
    )
    assert peak - start_rss < 24 * 1024, "the working set is bounded (no backlog decoded into memory)"
    assert late - early < 4 * 1024, "no growth with the length of the session"


def test_sessions_ready_together_share_one_transcribe_call_per_backend_configuration(redis_url, monkeypatch):
    client = client_for(redis_url)
    words = random_words(25, seed=28)
    rates = {"wide-1": 16000, "wide-2": 16000, "wide-3": 16000, "wide-4": 16000, "narrow-1": 8000, "narrow-2": 8000}
    for sid, rate in rates.items():
        write_session(redis_url, sid, encode_words(words, sample_rate=rate), sample_rate=rate, chunk_frames=rate // 10)
    calls: list[tuple[int, int]] = []
    original = SyntheticASR.transcribe_batch

    def counting(self, items):
        calls.append((self.grid_rate, len(items)))
        return original(self, items)

    monkeypatch.setattr(SyntheticASR, "transcribe_batch", counting)
    Worker(synthetic_settings(redis_url)).run(burst=True)

    wide = [size for rate, size in calls if rate == 16000]
    narrow = [size for rate, size in calls if rate == 8000]
    print(f"{len(calls)} transcribe_batch calls; batch sizes at 16 kHz {set(wide)}, at 8 kHz {set(narrow)}")
    # every processing point of the four 16 kHz sessions is one call of four, and likewise at 8 kHz;
    # the two groups never share a call, whose single backend would answer with the wrong grid
    assert wide and set(wide) == {4} and narrow and set(narrow) == {2} and len(wide) == len(narrow)
    for sid, rate in rates.items():
        assert words_of(session_events(client, sid)) == oracle(words, rate), sid


class CountingPipeline(Pipeline):
    """A pipeline that records each execution (one round trip) and the commands it carried."""

    trips: list[list[tuple[Any, ...]]]

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.trips.append([args[:2] for args, _options in self.command_stack])
        return super().execute(raise_on_error)


class CountingRedis(redis.Redis):
    """A client that records every round trip: a command of its own, or a pipeline's execution."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trips: list[list[tuple[Any, ...]]] = []

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        pipe = CountingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.trips = self.trips
        return pipe

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.trips.append([args[:2]])
        return super().execute_command(*args, **options)


def test_all_sessions_commit_in_one_round_trip_per_iteration(redis_url):
    sessions = [f"call-{k}" for k in range(4)]
    for k, sid in enumerate(sessions):
        write_session(redis_url, sid, encode_words(random_words(20, seed=30 + k)))
    client = CountingRedis.from_url(redis_url)
    counter = redis.Redis.from_url(redis_url)
    counter.config_resetstat()
    # a TTL long enough that no heartbeat (the lease keeper's own connection) falls into the run
    worker = Worker(synthetic_settings(redis_url, lease_ttl_sec=60), client=client)
    worker.start()
    iterations = 0
    try:
        while worker.run_iteration() or worker.sessions:
            iterations += 1
    finally:
        worker.shutdown()

    commit_sha = worker.scripts.by_name["commit"].sha
    commit_trips = [t for t in client.trips if any(c == ("EVALSHA", commit_sha) for c in t)]
    commits = sum(len(t) for t in commit_trips)
    per_session = len(commit_trips) / commits
    print(
        f"{iterations} iterations, {len(commit_trips)} commit round trips carrying {commits} commits "
        f"({per_session:.2f} round trips per session commit); "
        f"{len(client.trips) / iterations:.1f} round trips per iteration in all"
    )
    assert all(all(c == ("EVALSHA", commit_sha) for c in t) for t in commit_trips), "commits travel alone"
    assert len(commit_trips) <= iterations
    assert max(len(t) for t in commit_trips) == len(sessions), "all sessions' commits share one round trip"
    assert per_session <= 0.5
    # the server saw exactly the script calls this client sent: no hidden round trips
    seen = sum(1 for t in client.trips for c in t if c[0] == "EVALSHA")
    stats = counter.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == seen
    for sid in sessions:
        assert ended(client, sid)


def test_records_whose_copy_to_the_shard_stream_failed_are_copied_later_in_order(redis_url):
    """The shard stream gets every record once, in order, even when copies are lost on the way,
    the last one (with session_ended) included: the next owner of the lease finishes the copy."""
    client = client_for(redis_url)
    words = random_words(20, seed=31)
    write_session(redis_url, "copy", encode_words(words))
    worker = Worker(synthetic_settings(redis_url, worker_id="lossy"))
    original = worker.committer._run_pipeline
    lost: list[int] = []
    copies = 0

    def lossy(calls, script):  # the 2nd copy and the last one are lost, as in a connection drop
        nonlocal copies
        if script == "forward":
            copies += 1
            if copies == 2 or any("session_ended" in args for _keys, args in calls):
                lost.append(copies)
                return [redis.ConnectionError("connection lost")] * len(calls)
        return original(calls, script)

    worker.committer._run_pipeline = lossy
    worker.run(burst=True)
    # lost: the 2nd copy, the final one, and its retry just before the lease is handed over
    assert ended(client, "copy") and lost[0] == 2 and len(lost) == 3
    Worker(synthetic_settings(redis_url, worker_id="next")).run(burst=True)

    records = [(int(f[b"seq"]), f[b"m"]) for _id, f in client.xrange(KEYS.session_output("copy"))]
    shard = [(int(f[b"seq"]), f[b"m"]) for _id, f in client.xrange(KEYS.events(KEYS.shard_of("copy")))]
    assert shard == records
    assert words_of(session_events(client, "copy")) == oracle(words)
