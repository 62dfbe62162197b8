"""Fuzzing one worker process with thousands of hostile entries, opens and announcements.

While a neighbour session streams in real time (sped up), hostile sessions write entries with
lying msgpack headers, huge and negative integers, wrong types, NaN and infinite floats,
oversize payloads and bad audio between valid chunks; hostile opens forge ids and break every
bound; bogus announcements name nothing usable. The worker must never exit, every hostile
session must end, the neighbour's transcript must be the synthetic oracle's, and Redis memory
must stay bounded.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest

from tests.worker_helpers import (
    KEYS,
    RealtimeProducer,
    WorkerFleet,
    client_for,
    ended,
    oracle,
    reference_segments,
    segments_of,
    session_events,
    wait_for,
    words_of,
)
from worker.backends.synthetic import encode_words, random_words
from worker.protocol.messages import MAX_SEQ, AudioChunk, EndOfSession, SessionOpen
from worker.protocol.pcm import encode_pcm
from worker.protocol.scripts import Scripts

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

CAP = 8192  # the worker's max_chunk_bytes here
HOSTILE_SESSIONS = 30
ENTRIES_PER_SESSION = 150
#: Redis may hold what the test wrote, and the records of it, but never grow past this.
MEMORY_BOUND = 48 * 2**20


def packed(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


WEIRD_NUMBERS = [2**64 - 1, 2**63, MAX_SEQ + 1, -1, -(2**63), 1e300, -1e300, math.nan, math.inf, -math.inf]
WEIRD_VALUES = ["1", 1.5, None, [1], True, {"a": 1}, b"\xff", "x" * 300, msgpack.ExtType(5, b"x")]
BAD_ENDS = [{"reason": ["completed"]}, {"reason": "x" * 1000}, {"seq": 2**64 - 1}, {"sent_at": "now"}]


def _bad_audio(encoding: str) -> bytes:
    """Not whole frames, or NaN samples for a float session."""
    return np.full(4, np.nan, np.float32).tobytes() if encoding == "pcm_f32le" else b"\0\0\0"


#: Ways to spoil an entry: each takes (rng, a valid chunk's fields, the session's encoding).
SPOILERS: list[Callable[[random.Random, dict[str, Any], str], bytes]] = [
    # lying headers: a map, array, str, bin or ext claiming 4 GiB
    lambda r, g, e: r.choice([b"\xdf", b"\xdd", b"\xdb", b"\xc6", b"\xc9"]) + b"\xff\xff\xff\xff" + r.randbytes(4),
    lambda r, g, e: r.randbytes(r.randrange(1, 300)),
    lambda r, g, e: packed({**g, "seq": r.choice(WEIRD_NUMBERS)}),
    lambda r, g, e: packed({**g, "sent_at": r.choice(WEIRD_NUMBERS)}),
    lambda r, g, e: packed({**g, r.choice(["seq", "payload", "sent_at", "type", "v"]): r.choice(WEIRD_VALUES)}),
    # just over the payload cap, or far over the entry cap
    lambda r, g, e: packed({**g, "payload": b"\0" * r.choice([CAP + 2, 2 * CAP + 2048])}),
    lambda r, g, e: packed({**g, "payload": _bad_audio(e)}),
    lambda r, g, e: b"\x91" * 3000 + b"\xc0",  # nested deeper than any decoder's stack
    lambda r, g, e: packed({b"v": 1, b"type": b"chunk"}),  # bytes keys
    # end markers that cannot end the session
    lambda r, g, e: packed({"v": 1, "type": "end", "seq": g["seq"], "sent_at": time.time(), **r.choice(BAD_ENDS)}),
    lambda r, g, e: packed({**g, "seq": max(0, g["seq"] - r.randrange(1, 5))}),  # a repeat
    lambda r, g, e: packed({"v": r.choice([2, 0, "1", 1.0, None]), "type": "chunk", "seq": g["seq"]}),
    lambda r, g, e: packed(r.choice([[1, 2, 3], "chunk", 7, None, {"v": 1, "type": r.choice(["partial", 9])}])),
    lambda r, g, e: packed({**g, "seq": g["seq"] + r.randrange(1, 10**6)}),  # a gap
]


def hostile_entry(rng: random.Random, seq: int, encoding: str) -> bytes:
    """One entry's ``m`` that a worker must reject (or, for a repeat or a gap, report)."""
    good = {"v": 1, "type": "chunk", "seq": seq, "payload": b"\0\0" * 160, "sent_at": time.time()}
    return rng.choice(SPOILERS)(rng, good, encoding)


def hostile_opens(rng: random.Random) -> dict[str, bytes]:
    """Open messages that break a bound or a type, keyed by their session id."""
    good = SessionOpen("x").to_dict()
    changes: list[dict[str, Any]] = [
        {"sample_rate": 2**64 - 1},
        {"sample_rate": -(2**63)},
        {"channels": 2**32},
        {"channels": 0},
        {"created_at": math.nan},
        {"created_at": -math.inf},
        {"metadata": {f"k{n}": "v" for n in range(100)}},
        {"metadata": {"big": "v" * 70000}},
        {"metadata": {"k": 5}},
        {"asr": {"min_chunk_size": math.nan}},
        {"asr": {"min_chunk_size": 1e308}},
        {"asr": {"min_chunk_size": "2"}},
        {"asr": {"language": "x" * 300}},
        {"asr": {"language": 5}},
        {"asr": {"backend": "faster-whisper"}},
        {"asr": {"model": None}},
        {"asr": {"temperature": 2.0}},
        {"encoding": "x" * 10000},
        {"session_id": "neighbour"},  # forged: names another session
        {"session_id": 7},
        {"v": True},
        {"partials": "yes"},
    ]
    opens = {f"open-{n}": packed({**good, "session_id": f"open-{n}", **c}) for n, c in enumerate(changes)}
    opens["open-garbage"] = rng.randbytes(200)
    opens["open-lying"] = b"\xdf\xff\xff\xff\xff"
    return opens


def bogus_announcements(client: Any) -> list[dict[str, Any]]:
    """Announcements of nothing usable; a wrong-typed state key among them."""
    client.set(KEYS.session_state("state-not-a-hash"), "x")
    fields: list[dict[str, Any]] = [
        {"session": b"\xff\xfe\xfd"},
        {"session": ""},
        {"session": "x" * 5000},
        {"session": "has{brace}"},
        {"nosession": "1"},
        {"session": "neighbour"},  # a duplicate of a live session's announcement
        {"session": "state-not-a-hash"},
    ]
    fields += [{"session": f"never-opened-{n}"} for n in range(20)]
    return fields


def open_and_announce(client: Any, scripts: Scripts, sid: str, blob: bytes) -> None:
    scripts.call(client, "open_session", [KEYS.session_open(sid)], [blob, int(time.time() * 1000), "no-token"])
    client.xadd(KEYS.announcements(KEYS.shard_of(sid)), {"session": sid})


def write_hostile_sessions(client: Any, rng: random.Random) -> list[str]:
    """Valid opens whose input mixes hostile entries with valid chunks; some end, some never do."""
    scripts = Scripts()
    sids = []
    for n in range(HOSTILE_SESSIONS):
        sid = f"hostile-{n}"
        encoding, rate = [("pcm_s16le", 16000), ("pcm_f32le", 16000), ("mulaw", 8000)][n % 3]
        open_and_announce(client, scripts, sid, SessionOpen(sid, sample_rate=rate, encoding=encoding).encode())
        audio = encode_words(random_words(6, seed=100 + n), sample_rate=rate)
        pipe = client.pipeline(transaction=False)
        seq, key = 0, KEYS.session_input(sid)
        for k in range(ENTRIES_PER_SESSION):
            if k % 4 == 0:  # a valid chunk
                piece = audio[(k * 40) % max(1, audio.shape[0] - 800) :][:800]
                message = AudioChunk(seq, encode_pcm(piece, encoding), time.time()).encode()
                seq += 1
            else:
                message = hostile_entry(rng, seq, encoding)
                seq += rng.choice([0, 0, 1])
            pipe.xadd(key, {"m": message} if k % 37 else {"x": message}, id=f"{k + 1}-0")
        if n % 5:  # the others never end: the stall timeout ends them
            pipe.xadd(key, {"m": EndOfSession(seq + 10, time.time()).encode()}, id=f"{ENTRIES_PER_SESSION + 1}-0")
        pipe.execute()
        sids.append(sid)
    return sids


def sample_memory(client: Any, stop: threading.Event, peak: list[int]) -> None:
    while not stop.wait(0.2):
        peak[0] = max(peak[0], int(client.info("memory")["used_memory"]))


def all_of(predicates: list[Callable[[], bool]]) -> Callable[[], bool]:
    return lambda: all(p() for p in predicates)


def test_thousands_of_hostile_entries_and_opens_never_stop_the_worker_nor_spoil_the_neighbour(redis_url, tmp_path):
    client = client_for(redis_url)
    rng = random.Random(2024)
    peak, stop = [0], threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(client_for(redis_url), stop, peak), daemon=True)
    sampler.start()
    words = random_words(40, seed=61)
    with WorkerFleet(tmp_path) as fleet:
        worker = fleet.spawn(
            redis_url,
            "w-fuzz",
            args=["--max-sessions", "100", "--stall-timeout-sec", "5"],
            env={"STREAMSCRIBE_MAX_CHUNK_BYTES": str(CAP)},
        )
        neighbour = RealtimeProducer(redis_url, "neighbour", encode_words(words))
        neighbour.start()
        started = time.monotonic()
        scripts = Scripts()
        # an input stream that is not a stream, of a session whose open is fine
        open_and_announce(client, scripts, "input-not-a-stream", SessionOpen("input-not-a-stream").encode())
        client.set(KEYS.session_input("input-not-a-stream"), "x")
        opens = hostile_opens(rng)
        for sid, blob in opens.items():
            open_and_announce(client, scripts, sid, blob)
            client.xadd(KEYS.session_input(sid), {"m": hostile_entry(rng, 0, "pcm_s16le")}, id="1-0")
        for fields in bogus_announcements(client):
            client.xadd(KEYS.announcements(rng.randrange(KEYS.shards)), fields)
        hostile = write_hostile_sessions(client, rng)
        neighbour.finish()

        every = [*hostile, *opens, "input-not-a-stream", "neighbour"]
        wait_for(all_of([lambda sid=sid: ended(client, sid) for sid in every]), 90, "every session's end")
        print(f"{len(every)} sessions ended {time.monotonic() - started:.1f} s after the first entry")
        wait_for(
            lambda: sum(client.xlen(KEYS.announcements(k)) for k in KEYS.all_shards()) == 0,
            15,
            "every announcement acknowledged",
        )
        assert worker.alive(), worker.log()
        log = worker.log()
    stop.set()
    sampler.join(5)

    assert "the loop iteration failed" not in log
    events = session_events(client, "neighbour")
    assert words_of(events) == oracle(words)
    assert [e.TYPE for e in events if e.TYPE == "error"] == []
    assert segments_of(events) == reference_segments(redis_url, words)
    for sid in every:
        sent = session_events(client, sid)
        assert sent[-1].TYPE == "session_ended", sid
        codes = [e.code for e in sent if e.TYPE == "error"]
        # every hostile entry is refused when it is decoded, never by failing the session later
        assert ("processing_failed" in codes) == (sid == "input-not-a-stream"), (sid, codes)
    print(f"peak used_memory {peak[0] / 2**20:.1f} MiB")
    assert 0 < peak[0] < MEMORY_BOUND
