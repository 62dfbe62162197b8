"""Poison pills: one bad entry or one failing session never takes a worker, or the fleet, down.

* Every value decoded from the wire is bounded, so an entry such as ``seq = 2**64 - 1`` is
  rejected when it is read, not met later by a step that cannot hold it.
* An exception in one session's processing ends that session (``processing_failed``).
* A session whose restore keeps failing, or keeps killing its worker, is quarantined after
  ``max_session_attempts`` attempts, by whichever worker acquires it next.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import msgpack
import numpy as np
import pytest

from producer.client import Producer
from tests.worker_helpers import (
    KEYS,
    RealtimeProducer,
    WorkerFleet,
    client_for,
    dead_letter_reasons,
    ended,
    oracle,
    record_seqs,
    reference_segments,
    segments_of,
    session_events,
    state,
    synthetic_settings,
    wait_for,
    words_of,
    write_session,
)
from worker.asr.online import OnlineASRProcessor
from worker.backends.synthetic import encode_words, random_words
from worker.errors import DecodeError
from worker.protocol.messages import MAX_SEQ, EndOfSession, SessionOpen, decode_input
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)

CHUNK = 1600
PILL = 2**64 - 1
#: A chunk of constant 0.25: no synthetic word looks like it, so a patched processor can spot it.
POISON = np.full(CHUNK, 0.25, np.float32)
#: A prelude that makes a worker process SIGKILL itself when it restores any session.
KILL_IN_RESTORE = (
    "import os, signal\n"
    "from worker.asr.online import OnlineASRProcessor\n"
    "def _die(self, state):\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "OnlineASRProcessor.restore = _die\n"
)


@pytest.fixture
def fleet(tmp_path):
    with WorkerFleet(tmp_path) as f:
        yield f


def packed(**fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def error_codes(events: list) -> list[tuple[str, bool]]:
    return [(e.code, e.fatal) for e in events if e.TYPE == "error"]


def write_raw_input(url: str, sid: str, messages: list[bytes]) -> None:
    """Open ``sid`` as a producer does, then append ``messages`` as its input, in order."""
    Producer(url).open(sid)
    client = client_for(url)
    for n, m in enumerate(messages, 1):
        client.xadd(KEYS.session_input(sid), {"m": m}, id=f"{n}-0")


def s16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize(
    "field, value",
    [("seq", PILL), ("seq", MAX_SEQ + 1), ("seq", -(2**63)), ("sent_at", math.nan), ("sent_at", 1e300)],
)
def test_every_number_decoded_from_an_input_entry_is_bounded(field, value):
    fields = {"v": 1, "type": "chunk", "seq": 0, "payload": b"", "sent_at": 0.0, field: value}
    with pytest.raises(DecodeError, match=field):
        decode_input(packed(**fields))
    assert decode_input(packed(**{**fields, field: 0})).seq == 0


@pytest.mark.parametrize(
    "change",
    [
        {"sample_rate": PILL},
        {"channels": 2**32},
        {"created_at": math.inf},
        {"metadata": {f"k{n}": "v" for n in range(65)}},
        {"metadata": {"k": "v" * 2049}},
        {"asr": {"language": "x" * 257}},
        {"asr": {"min_chunk_size": math.nan}},
        {"asr": {"model": ["base"]}},
        {"tenant": "t" * 65},
        {"tenant": "acme}{other"},
        {"tenant": 7},
    ],
)
def test_every_value_of_an_open_message_is_bounded(change):
    good = SessionOpen("call").to_dict()
    assert SessionOpen.decode(packed(**good)).session_id == "call"
    with pytest.raises(DecodeError):
        SessionOpen.decode(packed(**{**good, **change}))


@pytest.mark.slow
def test_a_seq_of_2_64_minus_1_is_rejected_and_the_worker_goes_on_serving_its_neighbour(redis_url, fleet):
    client = client_for(redis_url)
    words = random_words(30, seed=41)
    worker = fleet.spawn(redis_url, "w-pill")
    neighbour = RealtimeProducer(redis_url, "neighbour", encode_words(words))
    neighbour.start()
    now = time.time()
    speech = s16(encode_words(random_words(3, seed=42))[:CHUNK])
    hostile = {
        # once accepted, seq 2**64 - 1 made the next expected seq 2**64, which no checkpoint holds
        "pill-chunk": [
            packed(v=1, type="chunk", seq=PILL, payload=speech, sent_at=now),
            EndOfSession(0, now).encode(),
        ],
        "pill-end": [
            packed(v=1, type="chunk", seq=0, payload=speech, sent_at=now),
            packed(v=1, type="end", seq=PILL, sent_at=now, reason="completed"),
            EndOfSession(1, now).encode(),
        ],
    }
    for sid, messages in hostile.items():
        write_raw_input(redis_url, sid, messages)
    neighbour.finish()

    wait_for(lambda: all(ended(client, sid) for sid in [*hostile, "neighbour"]), 30, "every session's end")
    assert worker.alive(), worker.log()
    for sid in hostile:
        events = session_events(client, sid)
        errors = [e for e in events if e.TYPE == "error"]
        assert [(e.code, e.fatal) for e in errors] == [("malformed", False)], sid
        assert "seq 18446744073709551615 is outside" in errors[0].message
        assert events[-1].TYPE == "session_ended"
        assert dead_letter_reasons(client, sid) == (["malformed"], ["malformed"])
        assert record_seqs(client, sid) == list(range(1, len(events) + 2))
    events = session_events(client, "neighbour")
    assert words_of(events) == oracle(words) and error_codes(events) == []
    assert segments_of(events) == reference_segments(redis_url, words)


def patch_poisoned_processor(monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """Make ``failing`` of every processor raise once it has been given the :data:`POISON` chunk."""
    insert = OnlineASRProcessor.insert_audio_chunk

    def insert_and_spot(self: OnlineASRProcessor, audio: np.ndarray) -> None:
        if audio.size and np.all(np.abs(audio - 0.25) < 1e-3):
            self.poisoned = True
        insert(self, audio)
        if failing == "insert_audio_chunk" and getattr(self, "poisoned", False):
            raise RuntimeError("poisoned")

    monkeypatch.setattr(OnlineASRProcessor, "insert_audio_chunk", insert_and_spot)
    if failing == "insert_audio_chunk":
        return
    original = getattr(OnlineASRProcessor, failing)

    def fail_when_poisoned(self: OnlineASRProcessor, *args: Any) -> Any:
        if getattr(self, "poisoned", False):
            raise OverflowError("poisoned")
        return original(self, *args)

    monkeypatch.setattr(OnlineASRProcessor, failing, fail_when_poisoned)


@pytest.mark.parametrize("failing", ["insert_audio_chunk", "complete_iter", "snapshot", "finish"])
def test_a_session_whose_processing_raises_ends_with_processing_failed_and_the_others_go_on(
    redis_url, monkeypatch, failing
):
    patch_poisoned_processor(monkeypatch, failing)
    client = client_for(redis_url)
    audio = encode_words(random_words(12, seed=43))
    writer = Producer(redis_url).open("poisoned")
    pieces = [audio[k : k + CHUNK] for k in range(0, audio.shape[0], CHUNK)]
    for piece in pieces[:20]:
        writer.send(piece)
    writer.send(POISON)  # seq 20, entry 21-0
    for piece in pieces[20:]:
        writer.send(piece)
    writer.close()
    healthy_words = random_words(30, seed=44)
    write_session(redis_url, "healthy", encode_words(healthy_words))

    Worker(synthetic_settings(redis_url)).run(burst=True)

    events = session_events(client, "poisoned")
    assert error_codes(events) == [("processing_failed", True)]
    assert events[-1].TYPE == "session_ended" and events[-1].reason == "error"
    assert [e.TYPE for e in events].count("session_ended") == 1
    own, shard = dead_letter_reasons(client, "poisoned")
    if failing == "insert_audio_chunk":  # it failed on that very entry: the letter names it
        assert own == shard == ["processing_failed"]
        [(_id, fields)] = client.xrange(KEYS.session_dead_letters("poisoned"))
        assert msgpack.unpackb(fields[b"m"])["entry_id"] == "21-0"
    else:
        assert own == shard == []
    assert record_seqs(client, "poisoned") == list(range(1, len(events) + len(own) + 1))
    healthy = session_events(client, "healthy")
    assert error_codes(healthy) == [] and words_of(healthy) == oracle(healthy_words)
    assert segments_of(healthy) == reference_segments(redis_url, healthy_words)


def checkpointed_session(url: str, sid: str, words: list[str]) -> None:
    """A session half-way through: a worker committed its first half, then handed it over (SIGTERM)."""
    client = client_for(url)
    audio = encode_words(words)
    half = audio.shape[0] // 2 // CHUNK * CHUNK
    writer = Producer(url).open(sid)
    for k in range(0, half, CHUNK):
        writer.send(audio[k : k + CHUNK])
    first = Worker(synthetic_settings(url, worker_id="first"))
    first.start()
    for _ in range(20):
        first.run_iteration()
    assert state(client, sid).get("checkpoint") and int(state(client, sid)["out_seq"]) > 1
    first.shutdown()
    for k in range(half, audio.shape[0], CHUNK):
        writer.send(audio[k : k + CHUNK])
    writer.close()


def assert_quarantined(client: Any, sid: str) -> None:
    events = session_events(client, sid)
    assert error_codes(events) == [("quarantined", True)]
    assert "3 attempt(s) in a row" in next(e.message for e in events if e.TYPE == "error")
    assert events[-1].TYPE == "session_ended" and events[-1].reason == "error"
    assert [e.TYPE for e in events].count("session_started") == 1
    assert record_seqs(client, sid) == list(range(1, len(events) + 1))


def test_a_session_whose_restore_always_raises_is_quarantined_after_three_attempts(redis_url, monkeypatch):
    client = client_for(redis_url)
    checkpointed_session(redis_url, "unrestorable", random_words(30, seed=45))
    restores = []

    def broken_restore(self: OnlineASRProcessor, snapshot: dict) -> None:
        restores.append(time.monotonic())
        raise RuntimeError("a restore bug")

    monkeypatch.setattr(OnlineASRProcessor, "restore", broken_restore)
    healthy_words = random_words(20, seed=46)
    write_session(redis_url, "healthy", encode_words(healthy_words))
    worker = Worker(synthetic_settings(redis_url, worker_id="second"))
    loop = threading.Thread(target=worker.run, daemon=True)
    loop.start()
    try:
        wait_for(lambda: ended(client, "unrestorable") and ended(client, "healthy"), 30, "both sessions' ends")
    finally:
        worker.stop()
        loop.join(10)
    assert len(restores) == 3
    assert_quarantined(client, "unrestorable")
    assert words_of(session_events(client, "healthy")) == oracle(healthy_words)


@pytest.mark.slow
def test_a_session_that_kills_every_worker_restoring_it_is_quarantined_by_the_fourth(redis_url, fleet):
    client = client_for(redis_url)
    checkpointed_session(redis_url, "killer", random_words(30, seed=47))
    for n in range(3):
        dying = fleet.spawn(redis_url, f"w-dies-{n}", prelude=KILL_IN_RESTORE)
        assert dying.proc.wait(timeout=30) == -9, dying.log()
        assert int(state(client, "killer")["attempts"]) == n + 1  # counted before the restore began

    survivor = fleet.spawn(redis_url, "w-survivor", prelude=KILL_IN_RESTORE)
    words = random_words(20, seed=48)
    write_session(redis_url, "neighbour", encode_words(words))
    wait_for(lambda: ended(client, "killer") and ended(client, "neighbour"), 30, "both sessions' ends")
    assert survivor.alive(), survivor.log()
    assert_quarantined(client, "killer")
    assert words_of(session_events(client, "neighbour")) == oracle(words)
