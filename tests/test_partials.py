"""Interim results: ``partial`` events beside the exactly-once record, with the synthetic backend."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from producer.client import Producer
from producer.consumer import TranscriptConsumer
from tests.client_helpers import output_events, raw_client
from tests.worker_helpers import synthetic_settings
from worker.backends.synthetic import encode_words, random_words
from worker.protocol.events import PartialEvent, SegmentEvent, SessionEnded, decode_event
from worker.protocol.keys import Keyspace
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)

STREAMSCRIBE = str(Path(sys.executable).with_name("streamscribe"))


def stream_session(url: str, sid: str, words: list[str], *, partials: bool = True) -> None:
    writer = Producer(url).open(sid, sample_rate=16000, encoding="pcm_s16le", partials=partials)
    audio = encode_words(words)
    for i in range(0, audio.shape[0], 1600):
        writer.send(audio[i : i + 1600])
    writer.close()


def committed(events: list) -> list[tuple]:
    segments = [e for e in events if isinstance(e, SegmentEvent)]
    return [(e.channel, e.start, e.end, e.text, e.words, e.utterance_end) for e in segments]


def test_partials_show_the_hypothesis_and_never_change_what_is_committed(redis_url):
    words = random_words(40, seed=11)
    stream_session(redis_url, "with-partials", words)
    stream_session(redis_url, "without-partials", words, partials=False)
    Worker(synthetic_settings(redis_url, asr={"backend": "synthetic", "model": "tones", "vad": False,
                                             "min_chunk_size": 0.5})).run(burst=True)  # fmt: skip

    on, off = output_events(redis_url, "with-partials"), output_events(redis_url, "without-partials")
    assert committed(on) == committed(off) and committed(on)
    assert all(e.TYPE != "partial" for e in on)  # never in the numbered record
    client = raw_client(redis_url)
    keys = Keyspace()
    assert not client.exists(keys.session_partials("without-partials"))
    raw = client.xrange(keys.session_partials("with-partials"))
    partials = [decode_event(f[b"m"]) for _i, f in raw]
    assert partials and all(isinstance(p, PartialEvent) for p in partials)
    assert client.pttl(keys.session_partials("with-partials")) > 0  # it expires with the session
    final = {(w[0], w[1], w[2]) for e in on if isinstance(e, SegmentEvent) for w in e.words}
    for p in partials:
        assert "seq" not in p.to_dict()
        # the synthetic backend's hypotheses are exact, so every interim word is committed later
        assert {(w[0], w[1], w[2]) for w in p.words} <= final
        assert p.text == " ".join(w[2] for w in p.words)
    assert partials[-1].text == ""  # the end committed everything: the last partial clears


def test_a_consumer_with_partials_gets_them_in_order_between_the_committed_events(redis_url):
    words = random_words(30, seed=12)
    seen: list = []
    consumer = TranscriptConsumer(redis_url)
    reader = threading.Thread(
        target=lambda: seen.extend(consumer.session_events("live", partials=True, idle_timeout=30)), daemon=True
    )
    reader.start()
    stream_session(redis_url, "live", words)
    Worker(synthetic_settings(redis_url)).run(burst=True)
    reader.join(30)
    consumer.close()
    assert isinstance(seen[-1], SessionEnded)
    assert committed(seen) == committed(output_events(redis_url, "live"))
    assert any(isinstance(e, PartialEvent) for e in seen)
    # a partial never shows words that a segment read before it already committed
    done: set = set()
    for e in seen:
        if isinstance(e, SegmentEvent):
            done |= {(w[0], w[2]) for w in e.words}
        elif isinstance(e, PartialEvent):
            assert not done & {(w[0], w[2]) for w in e.words}


def test_tail_json_partials_prints_partial_lines_and_the_committed_transcript(redis_url):
    stream_session(redis_url, "tailed", random_words(20, seed=13))
    Worker(synthetic_settings(redis_url)).run(burst=True)
    out = subprocess.run(
        [STREAMSCRIBE, "tail", "tailed", "--json", "--partials", "--redis-url", redis_url, "--idle-timeout", "10"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    objects = [json.loads(line) for line in out.stdout.splitlines()]
    types = [o["type"] for o in objects]
    assert "partial" in types and types[-1] == "session_ended"
    assert {"type", "session", "channel", "start", "end", "text", "words", "emitted_at"} == set(
        next(o for o in objects if o["type"] == "partial")
    )
    plain = subprocess.run(
        [STREAMSCRIBE, "tail", "tailed", "--partials", "--redis-url", redis_url, "--idle-timeout", "10"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert " ~ " in plain.stdout
    refused = subprocess.run(
        [STREAMSCRIBE, "tail", "--all", "--partials", "--redis-url", redis_url, "--idle-timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0 and "--partials follows one SESSION" in refused.stderr
