"""The output events against docs/events.schema.json: real events of a real call, version 1 compatibility, totals."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import msgpack
import numpy as np
import pytest

from producer.client import Producer
from tests.client_helpers import raw_client, run_worker, whisper_settings
from tests.worker_helpers import synthetic_settings
from worker.asr.audio import decode_file
from worker.backends.synthetic import encode_words, random_words
from worker.cli.tail import event_json
from worker.protocol.events import EventWord, SegmentEvent, SessionEnded, SessionStarted, decode_event
from worker.protocol.keys import Keyspace
from worker.protocol.messages import EVENT_VERSION
from worker.runtime.checkpoint import Checkpoint, Totals

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "events.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
CALL = ROOT / "samples" / "jfk_inaugural_1961.wav"


def stored_events(url: str, sid: str) -> list[dict]:
    """Every event of a session as stored (output stream, then partials), as plain maps with ``v``."""
    client, keys = raw_client(url), Keyspace()
    raw = [f[b"m"] for _id, f in client.xrange(keys.session_output(sid))]
    raw += [f[b"m"] for _id, f in client.xrange(keys.session_partials(sid))]
    return [msgpack.unpackb(m, raw=False) for m in raw]


def assert_valid(event: dict) -> None:
    errors = sorted(VALIDATOR.iter_errors(event), key=lambda e: e.path)
    assert not errors, f"{event.get('type')}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)


def stream(url: str, sid: str, audio: np.ndarray, **options: object) -> None:
    with Producer(url) as producer, producer.open(sid, sample_rate=16000, **options) as writer:
        for start in range(0, audio.shape[0], 1600):
            writer.send(audio[start : start + 1600])


@pytest.mark.slow
def test_every_event_of_a_real_call_matches_the_published_schema(valkey_url):
    audio = decode_file(CALL, 16000)
    stream(valkey_url, "schema-call", audio, language="en", metadata={"queue": "billing"})
    stream(valkey_url, "schema-auto", audio, language="auto")
    run_worker(whisper_settings(valkey_url), max_seconds=240)

    for sid, language in (("schema-call", "en"), ("schema-auto", "en")):
        events = stored_events(valkey_url, sid)
        kinds = [e["type"] for e in events]
        assert kinds[0] == "session_started" and "segment" in kinds and "session_ended" in kinds
        assert "partial" in kinds, "partials are on by default"
        for event in events:
            assert event["v"] == EVENT_VERSION
            assert_valid(event)
            assert_valid(json.loads(event_json(decode_event(msgpack.packb(event)))))  # tail --json
        started = events[0]
        assert (started["backend"], started["model"]) == ("faster-whisper", "base")
        segments = [e for e in events if e["type"] == "segment"]
        assert {s["language"] for s in segments} == {language}, "auto reports the language it detected"
        assert all(0 < w["confidence"] <= 1 for s in segments for w in s["words"])
        totals = next(e for e in events if e["type"] == "session_ended")["totals"]
        assert totals["words"] == sum(len(s["words"]) for s in segments)
        assert 0 < totals["latency_mean_sec"] <= totals["latency_p95_sec"]
    assert stored_events(valkey_url, "schema-auto")[0]["language"] == "auto"


def test_error_events_and_a_refused_session_match_the_schema(redis_url):
    with Producer(redis_url) as producer, producer.open("refused", model="large-v3") as writer:
        writer.send(encode_words(random_words(3, seed=1), 16000))
    run_worker(synthetic_settings(redis_url))
    events = stored_events(redis_url, "refused")
    assert [e["type"] for e in events] == ["session_started", "error", "session_ended"]
    for event in events:
        assert_valid(event)
    assert events[0]["model"] is None and events[-1]["totals"]["latency_mean_sec"] is None


def test_the_schema_refuses_version_1_words_and_unknown_fields():
    segment = {
        "type": "segment", "session": "s", "channel": 0, "seq": 1, "start": 0.0, "end": 1.0, "text": "hi",
        "words": [{"start": 0.0, "end": 1.0, "word": "hi", "confidence": 0.9}], "emitted_at": 1.0,
        "utterance_end": False, "language": "en",
    }  # fmt: skip
    assert_valid(segment)
    assert not VALIDATOR.is_valid({**segment, "words": [[0.0, 1.0, "hi", 0.9]]})
    assert not VALIDATOR.is_valid({**segment, "speaker": 1})
    assert not VALIDATOR.is_valid({k: v for k, v in segment.items() if k != "language"})


def test_version_1_events_still_decode_with_word_objects():
    v1 = {
        "v": 1, "type": "segment", "session": "old", "channel": 0, "seq": 3, "start": 0.5, "end": 1.2,
        "text": "hello there", "words": [[0.5, 0.8, "hello", 0.91], [0.8, 1.2, "there", 0.8]],
        "emitted_at": 10.0, "utterance_end": True,
    }  # fmt: skip
    event = decode_event(msgpack.packb(v1))
    assert isinstance(event, SegmentEvent) and event.language is None
    assert event.words == [EventWord(0.5, 0.8, "hello", 0.91), EventWord(0.8, 1.2, "there", 0.8)]
    assert event.words[0][2] == event.words[0].word == "hello"
    assert json.loads(event_json(event))["words"][1] == {"start": 0.8, "end": 1.2, "word": "there", "confidence": 0.8}
    started = decode_event(msgpack.packb({
        "v": 1, "type": "session_started", "session": "old", "seq": 1, "channels": 1, "sample_rate": 16000,
        "encoding": "pcm_s16le", "metadata": {}, "worker": "w", "emitted_at": 1.0,
    }))  # fmt: skip
    assert isinstance(started, SessionStarted) and started.model is None
    ended = decode_event(msgpack.packb({
        "v": 1, "type": "session_ended", "session": "old", "seq": 4, "reason": "completed",
        "totals": {"audio_sec": 1.0, "segments": 1, "words": 2, "errors": 0}, "emitted_at": 2.0,
    }))  # fmt: skip
    assert isinstance(ended, SessionEnded) and ended.totals["words"] == 2


def test_totals_report_the_mean_and_the_p95_bucket_of_commit_latency_and_survive_a_checkpoint():
    totals = Totals()
    assert totals.as_dict()["latency_mean_sec"] is None and totals.as_dict()["latency_p95_sec"] is None
    for latency in [0.4] * 90 + [2.2] * 9 + [7.0]:
        totals.observe_latency(latency)
    summary = totals.as_dict()
    assert summary["latency_mean_sec"] == pytest.approx((0.4 * 90 + 2.2 * 9 + 7.0) / 100, abs=1e-3)
    assert summary["latency_p95_sec"] == 2.5  # the 95th of 100 lies in the (2, 2.5] bucket
    restored = Checkpoint.decode(Checkpoint("0-0", 0, 0, 0, None, [], totals).encode()).totals
    assert restored.as_dict() == summary
    old = Totals.from_state({"audio_sec": 3.0, "segments": 2, "words": 5, "errors": 0})  # an earlier release's
    assert old.as_dict()["words"] == 5 and old.as_dict()["latency_mean_sec"] is None
    one = Totals()
    one.observe_latency(0.6)
    assert one.as_dict()["latency_p95_sec"] == 0.6, "never above the largest latency seen"
