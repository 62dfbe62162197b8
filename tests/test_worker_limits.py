"""A session cannot set its own cost: the worker's language allow-list, chunk floor, maximum duration,
rejection cap and dead-letter truncation, each on a real server with a real worker."""

from __future__ import annotations

import time

import numpy as np
import pytest

from producer.client import Producer
from tests.test_worker_inputs import CHUNK, CraftedStream, chunk_message, error_codes
from tests.worker_helpers import (
    KEYS,
    client_for,
    dead_letter_reasons,
    oracle,
    session_events,
    synthetic_settings,
    words_of,
    write_session,
)
from worker.backends.synthetic import encode_words, random_words
from worker.metrics import PrometheusObserver
from worker.protocol.messages import DeadLetter
from worker.runtime.loop import Worker
from worker.runtime.readahead import read_input

pytestmark = pytest.mark.timeout(120)

WORDS = random_words(8, seed=111)


def open_with(url: str, sid: str, **asr: object) -> None:
    with Producer(url).open(sid, **asr) as writer:  # type: ignore[arg-type]
        writer.send(encode_words(WORDS, 16000))


def test_languages_outside_the_allow_list_and_chunks_below_the_floor_are_refused(redis_url):
    open_with(redis_url, "french", language="fr")
    open_with(redis_url, "tiny-chunks", min_chunk_size=0.05)
    open_with(redis_url, "english", language="en", min_chunk_size=0.5)
    Worker(synthetic_settings(redis_url, allowed_languages=["en", "auto"], min_chunk_floor_sec=0.5)).run(burst=True)
    client = client_for(redis_url)
    for sid, why in (("french", "language 'fr' is not allowed"), ("tiny-chunks", "below this worker's floor")):
        events = session_events(client, sid)
        assert error_codes(events) == [("not_allowed", True)], sid
        assert why in next(e.message for e in events if e.TYPE == "error"), sid
    assert words_of(session_events(client, "english")) == oracle(WORDS)


def test_a_session_past_the_maximum_duration_ends_whatever_it_sends(redis_url):
    client = client_for(redis_url)
    writer = Producer(redis_url).open("dripping")
    writer.send(encode_words(WORDS[:2], 16000))  # a producer that sends a little and never ends
    client.hset(KEYS.session_open("dripping"), "created_ms", int(time.time() * 1000) - 10_000)
    observer = PrometheusObserver()
    Worker(synthetic_settings(redis_url, max_session_sec=5.0), observer=observer).run(burst=True, max_seconds=30)
    events = session_events(client, "dripping")
    assert error_codes(events) == [("max_duration", True)]
    assert events[-1].TYPE == "session_ended" and events[-1].reason == "max_duration"
    assert observer.registry.get_sample_value("streamscribe_sessions_ended_total", {"reason": "max_duration"}) == 1
    write_session(redis_url, "in-time", encode_words(WORDS, 16000))
    Worker(synthetic_settings(redis_url, max_session_sec=5.0)).run(burst=True)
    assert session_events(client, "in-time")[-1].reason == "completed"


def test_a_flood_of_rejected_entries_ends_the_session_and_dead_letters_keep_only_their_start(redis_url):
    client = client_for(redis_url)
    Producer(redis_url).open("flood")
    stream = CraftedStream(client, "flood")
    stream.add({"m": chunk_message(0, np.zeros(CHUNK, np.float32))})
    for _ in range(12):
        stream.add({"m": b"\xc1" * 200_000})  # not msgpack, and 200 kB of it
    stream.add({"m": chunk_message(1, np.zeros(CHUNK, np.float32))})
    Worker(synthetic_settings(redis_url, max_rejections=5)).run(burst=True)
    events = session_events(client, "flood")
    codes = error_codes(events)
    assert codes[-1] == ("too_many_rejections", True) and events[-1].reason == "too_many_rejections"
    assert 5 < len([c for c in codes if c == ("malformed", False)]) <= 12
    own, shard = dead_letter_reasons(client, "flood")
    assert own and own == shard
    letters = [DeadLetter.decode(f[b"m"]) for _id, f in client.xrange(KEYS.session_dead_letters("flood"))]
    assert all(len(letter.raw) <= 1024 for letter in letters)


def test_read_ahead_holds_at_most_read_ahead_bytes_of_decoded_audio_even_with_the_largest_chunks(redis_url):
    cap = 262144  # max_chunk_bytes: 256 KiB of mu-law is 32 s of 8 kHz audio, 1 MiB decoded
    audio = encode_words(random_words(40, seed=5), 8000)
    audio = np.concatenate([audio, np.zeros(cap * 12 - audio.shape[0], np.float32)])
    with Producer(redis_url).open("huge-chunks", sample_rate=8000, encoding="mulaw") as writer:
        for k in range(0, audio.shape[0], cap):
            writer.send(audio[k : k + cap])
    worker = Worker(synthetic_settings(redis_url, read_ahead_bytes=4 * 2**20, max_chunk_bytes=cap))
    worker.start()
    worker.intake.take()
    read_input(worker.client, worker.keys, worker.sessions.values(), worker.settings, worker.observer)
    session = worker.sessions["huge-chunks"]
    assert 0 < session.queued_bytes() <= 4 * 2**20 and len(session.queue) == 4
    worker.shutdown()  # hands the session over; a fresh worker finishes it
    Worker(synthetic_settings(redis_url, read_ahead_bytes=4 * 2**20, max_chunk_bytes=cap)).run(burst=True)
    events = session_events(client_for(redis_url), "huge-chunks")
    assert events[-1].reason == "completed" and words_of(events) == oracle(random_words(40, seed=5), 8000)
