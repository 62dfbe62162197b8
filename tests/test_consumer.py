"""Transcript consumers and ``streamscribe tail`` against real servers and a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from producer.client import Producer
from producer.consumer import Delivery, TranscriptConsumer
from tests.client_helpers import WorkerThread, output_events, run_worker, synthetic_settings, synthetic_stereo
from worker.backends.synthetic import encode_words, random_words
from worker.cli.main import main
from worker.cli.tail import clock
from worker.protocol.connection import connect
from worker.protocol.events import Event, SegmentEvent, SessionEnded, SessionStarted
from worker.protocol.keys import Keyspace

pytestmark = pytest.mark.timeout(120)

STREAMSCRIBE = str(Path(sys.executable).with_name("streamscribe"))


def produce(url: str, sid: str, words: list[str], *, pause: float = 0.0, channels: int = 1) -> None:
    """A call of ``words`` (stereo: ``words`` and their reverse), 100 ms chunks of 8 kHz mu-law."""
    audio = encode_words(words, 8000) if channels == 1 else synthetic_stereo(words, words[::-1], 8000)
    writer = Producer(url).open(sid, sample_rate=8000, encoding="mulaw", channels=channels)
    for i in range(0, audio.shape[0], 800):
        writer.send(audio[i : i + 800])
        time.sleep(pause)
    writer.close()


def collect(events, into: list) -> threading.Thread:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=lambda: into.extend(events), daemon=True)
    thread.start()
    return thread


def keyed(events: list[Event]) -> list[tuple[str, int, str]]:
    return [(e.session, e.seq, e.TYPE) for e in events]


# -- one session ---------------------------------------------------------------------------------


def test_following_a_session_before_it_exists_gets_every_event_through_its_end(redis_url):
    got: list[Event] = []
    follower = collect(TranscriptConsumer(redis_url).session_events("early", idle_timeout=60), got)
    time.sleep(0.3)  # the follower is blocked on a stream that does not exist yet
    produce(redis_url, "early", random_words(10, seed=1))
    run_worker(synthetic_settings(redis_url))
    follower.join(30)

    assert not follower.is_alive()
    assert keyed(got) == keyed(output_events(redis_url, "early"))
    assert isinstance(got[0], SessionStarted) and isinstance(got[-1], SessionEnded)
    assert [w[2] for e in got if isinstance(e, SegmentEvent) for w in e.words] == random_words(10, seed=1)


def test_following_a_session_that_is_half_done_starts_from_its_first_event(valkey_url):
    words = random_words(30, seed=2)
    producer = threading.Thread(target=produce, args=(valkey_url, "live", words), kwargs={"pause": 0.02})
    producer.start()
    client = connect(valkey_url)
    while not client.exists(Keyspace().session_input("live")):  # announced: a burst worker will see it
        time.sleep(0.01)
    with WorkerThread(synthetic_settings(valkey_url)) as worker:
        deadline = time.monotonic() + 30
        while len(output_events(valkey_url, "live")) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(output_events(valkey_url, "live")) >= 5  # joined late: events went by already
        got = list(TranscriptConsumer(valkey_url).session_events("live", idle_timeout=30))
        producer.join()
        assert worker.join(30)
    assert keyed(got) == keyed(output_events(valkey_url, "live"))
    assert [e.seq for e in got] == list(range(1, len(got) + 1)) and isinstance(got[-1], SessionEnded)


def test_following_an_ended_session_replays_it_and_stops(redis_url):
    produce(redis_url, "done", random_words(6, seed=3), channels=2)
    run_worker(synthetic_settings(redis_url))
    got = list(TranscriptConsumer(redis_url).session_events("done", idle_timeout=5))
    assert keyed(got) == keyed(output_events(redis_url, "done"))
    assert {e.channel for e in got if isinstance(e, SegmentEvent)} == {0, 1}


# -- every session -------------------------------------------------------------------------------


def sessions_spread_over_shards(count: int) -> list[str]:
    keys = Keyspace()
    sids = [f"call-{k}" for k in range(count)]
    assert len({keys.shard_of(s) for s in sids}) > 1
    return sids


def test_following_all_sessions_gets_every_session_in_order_on_every_shard(redis_url):
    sids = sessions_spread_over_shards(5)
    consumer = TranscriptConsumer(redis_url)
    got: list[Delivery] = []

    def follow() -> None:
        ended = 0
        for d in consumer.all_events(idle_timeout=60):
            got.append(d)
            ended += isinstance(d.event, SessionEnded)
            if ended == len(sids):
                return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(0.3)
    for k, sid in enumerate(sids):
        produce(redis_url, sid, random_words(5, seed=10 + k))
    run_worker(synthetic_settings(redis_url))
    follower.join(30)
    assert not follower.is_alive()
    for sid in sids:
        mine = [d for d in got if d.session == sid]
        assert keyed([d.event for d in mine]) == keyed(output_events(redis_url, sid))
        assert [d.seq for d in mine] == [d.event.seq for d in mine]


def test_all_sessions_and_groups_read_shard_by_shard_on_a_redis_cluster(cluster_url):
    """The shard streams live in different slots: no CROSSSLOT, nothing missed, nothing twice."""
    sids = sessions_spread_over_shards(6)
    consumer = TranscriptConsumer(cluster_url)
    assert consumer.cluster
    for k, sid in enumerate(sids[:3]):
        produce(cluster_url, sid, random_words(4, seed=70 + k))
    run_worker(synthetic_settings(cluster_url))
    group_first = list(consumer.group_events("pipeline", "c1", idle_timeout=0.5))
    live = consumer.all_events(idle_timeout=2)  # "now": after the first three sessions
    for k, sid in enumerate(sids[3:]):
        produce(cluster_url, sid, random_words(4, seed=80 + k))
    run_worker(synthetic_settings(cluster_url))
    from_now = list(live)
    from_start = list(consumer.all_events(from_start=True, idle_timeout=0.5))
    group_rest = list(consumer.group_events("pipeline", "c1", idle_timeout=0.5))

    def per_session(ds: list[Delivery]) -> dict[str, list[tuple[str, int, str]]]:
        return {sid: keyed([d.event for d in ds if d.session == sid]) for sid in {d.session for d in ds}}

    everything = {sid: keyed(output_events(cluster_url, sid)) for sid in sids}
    assert all(evs[-1][2] == "session_ended" for evs in everything.values())
    assert per_session(from_start) == everything
    assert per_session(group_first) == {sid: everything[sid] for sid in sids[:3]}
    assert per_session(group_first + group_rest) == everything
    assert len(group_first + group_rest) == sum(len(e) for e in everything.values())  # no duplicate
    assert per_session(from_now) == {sid: everything[sid] for sid in sids[3:]}


# -- consumer groups -----------------------------------------------------------------------------


def test_a_consumer_group_resumes_after_a_crash_with_no_gap_and_no_duplicate(redis_url):
    sids = sessions_spread_over_shards(4)
    for k, sid in enumerate(sids):
        produce(redis_url, sid, random_words(4, seed=20 + k))
    run_worker(synthetic_settings(redis_url))
    expected = sorted(k for sid in sids for k in keyed(output_events(redis_url, sid)))

    handled: list[Delivery] = []
    first = TranscriptConsumer(redis_url, count=3)
    for d in first.group_events("pipeline", "worker-a", auto_ack=False, idle_timeout=1):
        if len(handled) == 7:
            break  # crash: this one was delivered, never handled nor acknowledged
        handled.append(d)
        first.ack("pipeline", d.shard, d.entry_id)
    first.close()

    restarted = TranscriptConsumer(redis_url, count=3)
    for d in restarted.group_events("pipeline", "worker-a", idle_timeout=1):
        handled.append(d)
    assert sorted(keyed([d.event for d in handled])) == expected  # each event handled exactly once
    for sid in sids:  # and in order within each session
        seqs = [d.event.seq for d in handled if d.session == sid]
        assert seqs == sorted(seqs)
    client = connect(redis_url)
    keys = Keyspace()
    assert all(client.xpending(keys.events(k), "pipeline")["pending"] == 0 for k in keys.all_shards())


def test_consumers_of_one_group_share_the_events_without_overlap(valkey_url):
    for k, sid in enumerate(sessions_spread_over_shards(4)):
        produce(valkey_url, sid, random_words(4, seed=30 + k))
    run_worker(synthetic_settings(valkey_url))
    a = TranscriptConsumer(valkey_url, count=2).group_events("g", "a", idle_timeout=0.5)
    b = TranscriptConsumer(valkey_url, count=2).group_events("g", "b", idle_timeout=0.5)
    got_a, got_b = [next(a)], [next(b)]
    got_a += list(a)
    got_b += list(b)
    assert got_a and got_b
    assert not {(d.shard, d.entry_id) for d in got_a} & {(d.shard, d.entry_id) for d in got_b}
    total = sum(len(output_events(valkey_url, s)) for s in sessions_spread_over_shards(4))
    assert len(got_a) + len(got_b) == total


# -- streamscribe tail ---------------------------------------------------------------------------


def test_tail_prints_each_segment_with_its_times_and_channel(redis_url, capsys):
    words = random_words(12, seed=5)
    produce(redis_url, "readable", words, channels=2)
    run_worker(synthetic_settings(redis_url))
    assert main(["tail", "readable", "--redis-url", redis_url, "--idle-timeout", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = output_events(redis_url, "readable")
    segments = [e for e in events if isinstance(e, SegmentEvent)]
    assert lines[1:-1] == [f"[{clock(e.start)}-{clock(e.end)}] ch{e.channel}  {e.text}" for e in segments]
    assert lines[0].startswith("-- session started: 2 channel(s), 8000 Hz mulaw, worker ")
    assert lines[-1] == f"-- session ended (completed): 4.9 s of audio, {len(segments)} segment(s), 0 error(s)"
    # the first word of each channel starts at 0.1 s, the synthetic recordings' lead
    assert lines[1].startswith("[00:00.10-") and f"ch0  {words[0]}" in lines[1]
    assert any(line.startswith("[00:00.10-") and f"ch1  {words[-1]}" in line for line in lines)


def test_tail_json_run_before_the_session_exists_prints_every_event_and_exits(valkey_url):
    tail = subprocess.Popen(
        [STREAMSCRIBE, "tail", "json-call", "--json", "--redis-url", valkey_url, "--idle-timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        produce(valkey_url, "json-call", random_words(6, seed=6))
        run_worker(synthetic_settings(valkey_url))
        out, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    objects = [json.loads(line) for line in out.splitlines()]
    assert [(o["session"], o["seq"], o["type"]) for o in objects] == keyed(output_events(valkey_url, "json-call"))
    segment = objects[1]
    assert segment["type"] == "segment" and set(segment) == {
        "type", "session", "channel", "seq", "start", "end", "text", "words", "emitted_at", "utterance_end",
        "language",
    }  # fmt: skip
    assert segment["language"] == "en"
    assert segment["words"] and all(set(w) == {"start", "end", "word", "confidence"} for w in segment["words"])
    started = objects[0]
    assert (started["backend"], started["model"], started["language"]) == ("synthetic", "tones", "en")
    assert objects[-1]["type"] == "session_ended" and objects[-1]["reason"] == "completed"


def test_tail_all_prefixes_each_line_with_its_session(redis_url, capsys):
    for sid in ("left", "right"):
        produce(redis_url, sid, random_words(3, seed=7))
    run_worker(synthetic_settings(redis_url))
    assert main(["tail", "--all", "--from-start", "--redis-url", redis_url, "--idle-timeout", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = {sid: len(output_events(redis_url, sid)) for sid in ("left", "right")}
    assert len(lines) == sum(expected.values())
    assert {sid: sum(line.startswith(f"{sid}  ") for line in lines) for sid in expected} == expected
    assert any(line.startswith("right  [00:00.10-") for line in lines)


def test_tail_group_picks_up_where_the_previous_run_stopped(redis_url, capsys):
    argv = ["tail", "--group", "printer", "--consumer", "one", "--redis-url", redis_url, "--idle-timeout", "0.5"]
    produce(redis_url, "first", random_words(3, seed=8))
    run_worker(synthetic_settings(redis_url))
    assert main(argv) == 0
    before = capsys.readouterr().out.splitlines()
    produce(redis_url, "second", random_words(3, seed=9))
    run_worker(synthetic_settings(redis_url))
    assert main(argv) == 0
    after = capsys.readouterr().out.splitlines()
    assert len(before) == len(output_events(redis_url, "first"))
    assert len(after) == len(output_events(redis_url, "second"))
    assert {line.split()[0] for line in before} == {"first"} and {line.split()[0] for line in after} == {"second"}


def test_tail_with_no_session_and_no_mode_fails_with_one_clear_line(redis_url, capsys):
    assert main(["tail", "--redis-url", redis_url]) == 2
    assert "give a SESSION id, or --all, or --group" in capsys.readouterr().err
    assert main(["tail", "--group", "g", "--redis-url", redis_url]) == 2


def test_tail_stops_with_status_1_when_a_session_never_comes(redis_url, capsys):
    assert main(["tail", "nobody", "--redis-url", redis_url, "--idle-timeout", "0.3"]) == 1
    assert capsys.readouterr().out == ""


def test_clock_shows_minutes_seconds_and_centiseconds():
    assert [clock(t) for t in (0, 1.2, 3.4, 59.999, 61.005, 3725.5)] == [
        "00:00.00", "00:01.20", "00:03.40", "01:00.00", "01:01.00", "1:02:05.50"
    ]  # fmt: skip
