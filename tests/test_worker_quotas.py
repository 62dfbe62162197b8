"""Per-tenant quotas of live sessions, enforced by the workers on a real server."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from producer.client import Producer
from tests.worker_helpers import KEYS, client_for, ended, oracle, session_events, synthetic_settings, words_of
from worker.backends.synthetic import encode_words, random_words
from worker.protocol.scripts import Scripts
from worker.runtime.loop import Worker
from worker.runtime.quotas import TenantQuotas

pytestmark = pytest.mark.timeout(120)

WORDS = random_words(8, seed=211)


def iterate_until(worker: Worker, done: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if not worker.run_iteration():
            time.sleep(0.01)


def whole_call(url: str, sid: str, tenant: str | None) -> None:
    with Producer(url).open(sid, tenant=tenant) as writer:
        writer.send(encode_words(WORDS, 16000))


def test_a_tenant_at_its_quota_gets_quota_exceeded_while_other_tenants_and_later_calls_go_on(redis_url):
    client = client_for(redis_url)
    producer = Producer(redis_url)
    live = [producer.open(f"acme-{n}", tenant="acme") for n in range(2)]
    for writer in live:
        writer.send(encode_words(WORDS[:3], 16000))
    worker = Worker(synthetic_settings(redis_url, tenant_limits="acme=2", tenant_max_sessions=5))
    worker.start()
    try:
        iterate_until(worker, lambda: {"acme-0", "acme-1"} <= set(worker.sessions), "the two live acme calls")
        whole_call(redis_url, "acme-2", "acme")
        whole_call(redis_url, "beta-0", "beta")
        iterate_until(worker, lambda: ended(client, "acme-2") and ended(client, "beta-0"), "the two new calls")

        refused = session_events(client, "acme-2")
        [error] = [e for e in refused if e.TYPE == "error"]
        assert error.code == "quota_exceeded" and error.fatal and "limit of 2" in error.message
        assert refused[-1].TYPE == "session_ended" and refused[-1].reason == "error"
        assert words_of(refused) == []
        assert words_of(session_events(client, "beta-0")) == oracle(WORDS), "another tenant is not limited"
        assert worker.factory.quotas.live("acme") == 2 and worker.factory.quotas.live("beta") == 0

        live[0].send(encode_words(WORDS[3:], 16000))
        live[0].close()
        iterate_until(worker, lambda: ended(client, "acme-0"), "the end of one acme call")
        assert worker.factory.quotas.live("acme") == 1, "an ended session frees its slot at once"
        whole_call(redis_url, "acme-3", "acme")
        iterate_until(worker, lambda: ended(client, "acme-3"), "a later acme call")
        assert words_of(session_events(client, "acme-3")) == oracle(WORDS)
    finally:
        worker.shutdown()


def test_a_session_without_a_tenant_counts_against_the_default_quota(redis_url):
    client = client_for(redis_url)
    Producer(redis_url).open("anonymous-0").send(encode_words(WORDS[:3], 16000))
    worker = Worker(synthetic_settings(redis_url, tenant_max_sessions=1))
    worker.start()
    try:
        iterate_until(worker, lambda: "anonymous-0" in worker.sessions, "the first call")
        whole_call(redis_url, "anonymous-1", None)
        iterate_until(worker, lambda: ended(client, "anonymous-1"), "the second call")
        assert [e.code for e in session_events(client, "anonymous-1") if e.TYPE == "error"] == ["quota_exceeded"]
        assert "tenant 'default'" in next(e.message for e in session_events(client, "anonymous-1") if e.TYPE == "error")
    finally:
        worker.shutdown()


def test_the_count_drops_sessions_nobody_vouched_for_in_three_ttls_and_never_refuses_a_counted_one(redis_url):
    client = client_for(redis_url)
    settings = synthetic_settings(redis_url, tenant_limits="acme=1", lease_ttl_sec=2.0)
    scripts = Scripts()
    scripts.load(client)
    quotas = TenantQuotas(client, KEYS, scripts, settings)
    now_ms = int(time.time() * 1000)
    client.zadd(KEYS.tenant("acme"), {"crashed-owner": now_ms - 7000})  # 3 TTLs are 6 s
    assert quotas.live("acme") == 0
    assert quotas.admit("call-a", "acme") is None
    assert quotas.admit("call-a", "acme") is None, "a session retaken after a crash is counted already"
    assert "limit of 1" in (quotas.admit("call-b", "acme") or "")
    assert client.zrange(KEYS.tenant("acme"), 0, -1) == [b"call-a"], "the stale member is gone"
    assert 0 < client.pttl(KEYS.tenant("acme")) <= 6000
    quotas.release("call-a", "acme")
    assert quotas.admit("call-b", "acme") is None
