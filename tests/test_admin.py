"""``streamscribe admin`` against a real server and real workers: list, end, re-announce, purge, dead letters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from producer.client import Producer, SessionWriter
from tests.test_worker_inputs import CHUNK, CraftedStream, chunk_message
from tests.worker_helpers import (
    KEYS,
    client_for,
    oracle,
    session_events,
    state,
    synthetic_settings,
    words_of,
    write_session,
)
from worker.backends.synthetic import encode_words, random_words
from worker.cli.main import main
from worker.protocol.keys import WORKER_GROUP
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)

WORDS = random_words(9, seed=121)


def admin(capsys: pytest.CaptureFixture, url: str, *args: str) -> tuple[int, str, str]:
    code = main(["admin", *args[:1], "--redis-url", url, *args[1:]])
    out = capsys.readouterr()
    return code, out.out, out.err


def live_session(url: str, sid: str) -> SessionWriter:
    """A session whose producer sent all its audio but no end marker yet."""
    writer = Producer(url).open(sid)
    audio = encode_words(WORDS, 16000)
    for k in range(0, audio.shape[0], 1600):
        writer.send(audio[k : k + 1600])
    return writer


def test_sessions_lists_every_session_with_its_status_owner_and_epoch(redis_url, capsys):
    write_session(redis_url, "done", encode_words(WORDS, 16000))
    Worker(synthetic_settings(redis_url, worker_id="w-list")).run(burst=True)
    live_session(redis_url, "pending")
    code, out, _err = admin(capsys, redis_url, "sessions", "--json")
    rows = {r["session"]: r for r in map(json.loads, out.splitlines())}
    assert code == 0 and set(rows) == {"done", "pending"}
    assert rows["done"]["status"] == "ended" and rows["done"]["owner"] == "w-list" and rows["done"]["epoch"] == 1
    assert rows["pending"]["status"] == "open" and rows["pending"]["input_entries"] > 0
    audio_sec = encode_words(WORDS, 16000).shape[0] / 16000
    assert rows["pending"]["backlog_sec"] == pytest.approx(audio_sec, abs=0.05), "nothing of it is processed"
    assert rows["done"]["backlog_sec"] == 0
    assert admin(capsys, redis_url, "waiting")[1].strip() == "1"


def test_end_makes_the_owner_commit_the_tail_and_end_the_session(redis_url, capsys):
    live_session(redis_url, "forgotten")
    code, out, _err = admin(capsys, redis_url, "end", "forgotten", "--reason", "agent_hung_up")
    assert code == 0 and "end marker appended" in out
    Worker(synthetic_settings(redis_url)).run(burst=True)
    events = session_events(client_for(redis_url), "forgotten")
    assert events[-1].reason == "agent_hung_up" and words_of(events) == oracle(WORDS)
    assert admin(capsys, redis_url, "end", "forgotten")[0] == 2, "an ended session is not ended twice"


def test_an_orphan_whose_lease_entry_was_lost_is_reannounced_and_finished_exactly_once(redis_url, capsys):
    client = client_for(redis_url)
    producer = live_session(redis_url, "orphan")
    first = Worker(synthetic_settings(redis_url, worker_id="first", lease_ttl_sec=60))
    first.start()
    first.run_iteration()
    first.run_iteration()  # it owns the session and committed part of it
    assert "orphan" in first.sessions
    code, _out, err = admin(capsys, redis_url, "reannounce", "orphan")
    assert code == 2 and "live lease" in err, "a session with a lease is not an orphan"
    # Redis loses the announcement entry and its pending-list lease (an AOF-everysec restart)
    entry = state(client, "orphan")["lease_entry"].decode()
    stream = KEYS.announcements(KEYS.shard_of("orphan"))
    client.xack(stream, WORKER_GROUP, entry)
    client.xdel(stream, entry)
    first._keeper.stop()
    producer.close()  # the producer ends the call; nothing would take it
    assert admin(capsys, redis_url, "reannounce", "orphan")[0] == 0
    Worker(synthetic_settings(redis_url, worker_id="second")).run(burst=True)
    events = session_events(client, "orphan")
    assert events[-1].reason == "completed" and words_of(events) == oracle(WORDS)
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), "no record twice"


def test_purge_refuses_a_live_session_and_deletes_every_key_of_an_ended_one(redis_url, capsys):
    client = client_for(redis_url)
    producer = live_session(redis_url, "erase-me")
    code, _out, err = admin(capsys, redis_url, "purge", "erase-me")
    assert code == 2 and "--force" in err
    producer.close()
    Worker(synthetic_settings(redis_url)).run(burst=True)
    assert admin(capsys, redis_url, "purge", "erase-me")[0] == 0
    assert not [k for k in client.scan_iter(match="streamscribe:{erase-me}:*")]
    assert not client.exists(KEYS.forward_cursor("erase-me"))
    assert admin(capsys, redis_url, "purge", "erase-me")[0] == 2, "a purged session is gone"


def test_dead_letters_shows_each_rejected_entry_with_its_reason(redis_url, capsys):
    client = client_for(redis_url)
    Producer(redis_url).open("letters")
    stream = CraftedStream(client, "letters")
    stream.add({"m": chunk_message(0, np.zeros(CHUNK, np.float32))})
    stream.add({"m": b"not msgpack"})
    stream.add({"m": chunk_message(0, np.zeros(CHUNK, np.float32))})  # a repeat
    Worker(synthetic_settings(redis_url, stall_timeout_sec=0.2)).run(burst=True, max_seconds=10)
    code, out, _err = admin(capsys, redis_url, "dead-letters", "letters", "--json")
    assert code == 0
    assert [r["reason"] for r in map(json.loads, out.splitlines())] == ["malformed", "seq_duplicate"]


def test_replay_runs_an_ended_session_again_under_a_new_id_from_its_retained_input(redis_url, capsys):
    client = client_for(redis_url)
    with Producer(redis_url).open("refused", model="tones-large", tenant="acme", metadata={"agent": "7"}) as writer:
        writer.send(encode_words(WORDS, 16000))
    Worker(synthetic_settings(redis_url)).run(burst=True)
    assert [e.code for e in session_events(client, "refused") if e.TYPE == "error"] == ["not_allowed"]

    code, out, _err = admin(capsys, redis_url, "replay", "refused", "--as", "refused-again")
    assert code == 0 and "replayed as refused-again" in out
    Worker(synthetic_settings(redis_url, allowed_models=["tones", "tones-large"])).run(burst=True)
    events = session_events(client, "refused-again")
    assert events[-1].reason == "completed" and words_of(events) == oracle(WORDS)
    assert events[0].metadata == {"agent": "7", "replay_of": "refused"}

    assert admin(capsys, redis_url, "replay", "refused", "--as", "refused-again")[0] == 2, "the new id is taken"
    live_session(redis_url, "still-live")
    code, _out, err = admin(capsys, redis_url, "replay", "still-live", "--as", "copy")
    assert code == 2 and "only an ended session" in err
    client.xtrim(KEYS.session_input("refused"), minid="2-0", approximate=False)
    code, _out, err = admin(capsys, redis_url, "replay", "refused", "--as", "other-copy")
    assert code == 2 and "trimmed" in err
