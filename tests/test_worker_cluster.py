"""The worker on a 3-node Redis Cluster: sessions on every node, end to end, through a worker kill.

Each session's keys share its hash tag and each script's keys one slot, so the commit, the
acquire and the copy to the shard streams run on whichever node owns the slot.
"""

from __future__ import annotations

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
    state,
    wait_for,
    wait_for_shard_copy,
    words_of,
)
from worker.backends.synthetic import encode_words, random_words

pytestmark = pytest.mark.timeout(120)

TTL = 1.5


@pytest.fixture
def fleet(tmp_path):
    with WorkerFleet(tmp_path) as f:
        yield f


def one_session_per_node(client) -> list[str]:
    """Session ids whose keys live on three different nodes."""
    by_node: dict[str, str] = {}
    for k in range(100):
        sid = f"call-{k}"
        node = client.get_node_from_key(KEYS.session_state(sid)).name
        by_node.setdefault(node, sid)
    assert len(by_node) == 3
    return sorted(by_node.values())


@pytest.mark.slow
def test_sessions_on_every_cluster_node_survive_a_worker_kill_with_exact_transcripts(cluster_url, fleet):
    words = random_words(60, seed=41)
    reference = reference_segments(cluster_url, words)
    client = client_for(cluster_url)
    sids = one_session_per_node(client)
    first = fleet.spawn(cluster_url, "w-first", lease_ttl_sec=TTL)
    producers = [RealtimeProducer(cluster_url, sid, encode_words(words), interval_sec=0.025) for sid in sids]
    for p in producers:
        p.start()
    wait_for(lambda: all(state(client, sid).get("owner") == b"w-first" for sid in sids), 10, "w-first to own all")
    second = fleet.spawn(cluster_url, "w-second", lease_ttl_sec=TTL)
    wait_for(lambda: all(client.xlen(KEYS.session_output(sid)) >= 3 for sid in sids), 10, "first segments")

    killed_at = first.kill()
    wait_for(lambda: all(state(client, sid)["owner"] == b"w-second" for sid in sids), TTL + 10, "the takeover")
    takeovers = [int(state(client, sid)["acquired_ms"]) / 1000 - killed_at for sid in sids]
    for p in producers:
        p.finish()
    wait_for(lambda: all(ended(client, sid) for sid in sids), 30, "the end of every session")

    print(f"cluster takeover after SIGKILL (TTL {TTL} s): {', '.join(f'{t:.2f} s' for t in takeovers)}")
    assert max(takeovers) < TTL + 2.0
    for sid in sids:
        events = session_events(client, sid)
        assert words_of(events) == oracle(words), sid
        assert segments_of(events) == reference, sid
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), sid
        assert [e.TYPE for e in events].count("session_started") == 1
        assert events[-1].TYPE == "session_ended" and events[-1].reason == "completed"
        wait_for_shard_copy(client, sid)
        assert int(state(client, sid)["epoch"]) == 2, sid
        assert client.pttl(KEYS.session_state(sid)) > 0
    assert second.alive()
