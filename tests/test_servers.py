"""The test servers themselves: real processes that answer, stream, and cluster."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, ResponseError

from tests.servers import RedisServerProcess, binary_for_kind

SET_BOTH = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
"""


def cluster_client(cluster) -> RedisCluster:
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes])


def test_standalone_server_answers_ping_and_streams_work(redis_client: redis.Redis) -> None:
    r = redis_client
    assert r.ping()
    first = r.xadd("calls:in", {b"chunk": b"\x00\x01"})
    r.xadd("calls:in", {b"chunk": b"\x02"})
    r.xgroup_create("calls:in", "workers", id="0")

    read = r.xreadgroup("workers", "w1", {"calls:in": ">"}, count=10)
    assert read[0][1][0][0] == first
    assert read[0][1][0][1] == {b"chunk": b"\x00\x01"}

    # w1 "died": w2 claims both pending entries.
    claimed = r.xautoclaim("calls:in", "workers", "w2", min_idle_time=0, start_id="0-0")
    assert [entry_id for entry_id, _ in claimed[1]] == [entry_id for entry_id, _ in read[0][1]]
    assert r.xpending("calls:in", "workers")["consumers"] == [{"name": b"w2", "pending": 2}]


def test_each_server_kind_reports_its_version(redis_server: RedisServerProcess, request) -> None:
    kind = request.node.callspec.params["redis_server"]
    major = int(redis_server.version.split(".")[0])
    assert major >= (7 if kind == "redis7" else 8), redis_server.version
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


def test_url_fixtures_hand_out_an_empty_database(redis_url: str, valkey_url: str) -> None:
    for url in (redis_url, valkey_url):
        with redis.Redis.from_url(url) as r:
            assert r.dbsize() == 0
            r.set("left-behind", 1)  # the next test's *_url must not see it


def test_a_stopped_server_is_gone_and_its_dir_removed() -> None:
    with RedisServerProcess(binary=binary_for_kind("valkey")) as server:
        workdir = server.dir
        assert server.client().ping()
    assert server.proc.returncode is not None
    assert not workdir.exists()
    with pytest.raises(redis.ConnectionError):
        server.client(socket_connect_timeout=0.5).ping()


def test_a_server_that_cannot_start_fails_with_its_log() -> None:
    server = RedisServerProcess(binary=binary_for_kind("valkey"), extra_args=["--no-such-directive", "yes"])
    with pytest.raises(RuntimeError, match="no-such-directive"):
        server.start()
    assert server.dir is None  # cleaned up


def test_cluster_runs_a_lua_script_on_keys_sharing_a_hash_tag(redis_cluster, cluster_url: str) -> None:
    rc = cluster_client(redis_cluster)
    try:
        assert len(rc.get_primaries()) == 3
        assert rc.eval(SET_BOTH, 2, "{s1}:a", "{s1}:b", "x", "y") == [b"x", b"y"]
        assert rc.mget_nonatomic("{s1}:a", "{s1}:b") == [b"x", b"y"]
        owner = rc.get_node_from_key("{s1}:a")
        with redis.Redis(host=owner.host, port=owner.port) as node:
            assert node.get("{s1}:b") == b"y"
    finally:
        rc.close()


def test_cluster_refuses_cross_slot_scripts(redis_cluster, cluster_url: str) -> None:
    rc = cluster_client(redis_cluster)
    try:
        assert rc.keyslot("{s1}:a") != rc.keyslot("{s2}:b")
        with pytest.raises(RedisClusterException, match=r"same (key )?slot"):  # redis-py refuses first
            rc.eval(SET_BOTH, 2, "{s1}:a", "{s2}:b", "x", "y")
    finally:
        rc.close()
    # ... and so does the server itself.
    host, port = redis_cluster.startup_nodes[0]
    with redis.Redis(host=host, port=port) as node, pytest.raises(ResponseError, match="hash to the same slot"):
        node.eval(SET_BOTH, 2, "{s1}:a", "{s2}:b", "x", "y")


def test_cluster_url_starts_every_node_empty(redis_cluster, cluster_url: str) -> None:
    for host, port in redis_cluster.startup_nodes:
        with redis.Redis(host=host, port=port) as node:
            assert node.dbsize() == 0
    rc = cluster_client(redis_cluster)
    try:
        for i in range(30):  # spread keys over all three nodes for the next user
            rc.set(f"k{i}", i)
    finally:
        rc.close()
