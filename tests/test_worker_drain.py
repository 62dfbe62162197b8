"""Draining a worker (rolling deploys): SIGTERM or ``streamscribe admin drain`` stops it taking
sessions; what ends within ``drain_timeout_sec`` ends on it, the rest is handed over; a second
SIGTERM hands over at once. Real worker processes, real signals, a real server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.worker_helpers import (
    RealtimeProducer,
    WorkerFleet,
    client_for,
    ended,
    oracle,
    session_events,
    state,
    wait_for,
    words_of,
    write_session,
)
from worker.backends.synthetic import encode_words, random_words

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

STREAMSCRIBE = str(Path(sys.executable).with_name("streamscribe"))
DRAIN = {"STREAMSCRIBE_DRAIN_TIMEOUT_SEC": "4"}


@pytest.fixture
def fleet(tmp_path):
    with WorkerFleet(tmp_path) as f:
        yield f


def owner(client, sid: str) -> tuple[int, str]:
    s = state(client, sid)
    return int(s.get("epoch", 0)), (s.get("owner") or b"").decode()


def test_sigterm_drains_what_ends_in_time_on_the_worker_and_hands_the_rest_over(redis_url, fleet):
    client = client_for(redis_url)
    draining = fleet.spawn(redis_url, "w-draining", env=DRAIN)
    long_words, short_words = random_words(150, seed=301), random_words(10, seed=302)
    long_call = RealtimeProducer(redis_url, "long", encode_words(long_words), interval_sec=0.025)
    long_call.start()
    wait_for(lambda: owner(client, "long") == (1, "w-draining"), 10, "the long call's owner")
    short_call = RealtimeProducer(redis_url, "short", encode_words(short_words), interval_sec=0.025)
    short_call.start()
    wait_for(lambda: owner(client, "short") == (1, "w-draining"), 10, "the short call's owner")
    staying = fleet.spawn(redis_url, "w-staying")

    sent_at = draining.send(signal.SIGTERM)
    wait_for(lambda: draining.http_get("/readyz")[0] == 503, 5, "/readyz to fail while draining")
    assert draining.http_get("/healthz")[0] == 200, "a draining worker is alive"
    write_session(redis_url, "after-sigterm", encode_words(random_words(6, seed=303)))
    wait_for(lambda: ended(client, "after-sigterm"), 15, "the call opened during the drain")
    assert owner(client, "after-sigterm") == (1, "w-staying"), "a draining worker took a new session"

    short_call.finish()
    wait_for(lambda: ended(client, "short"), 10, "the short call's end")
    assert owner(client, "short") == (1, "w-draining"), "the short call ended where it was, no handover"

    wait_for(lambda: owner(client, "long")[0] == 2, 15, "the long call's handover")
    handed_after = float(state(client, "long")["acquired_ms"]) / 1000 - sent_at
    assert owner(client, "long") == (2, "w-staying")
    assert 3.5 < handed_after < 4 + 3.0, f"handed over {handed_after:.1f} s after SIGTERM (drain 4 s)"
    assert draining.proc.wait(timeout=10) == 0
    assert "drained: 1 session(s) left to hand over" in draining.log()

    long_call.finish()
    wait_for(lambda: ended(client, "long"), 30, "the long call's end")
    assert words_of(session_events(client, "long")) == oracle(long_words)
    assert words_of(session_events(client, "short")) == oracle(short_words)
    assert staying.alive()


def test_a_second_sigterm_hands_over_at_once(redis_url, fleet):
    client = client_for(redis_url)
    draining = fleet.spawn(redis_url, "w-impatient", env={"STREAMSCRIBE_DRAIN_TIMEOUT_SEC": "60"})
    words = random_words(120, seed=311)
    call = RealtimeProducer(redis_url, "call", encode_words(words), interval_sec=0.025)
    call.start()
    wait_for(lambda: owner(client, "call") == (1, "w-impatient"), 10, "the call's owner")
    fleet.spawn(redis_url, "w-other")
    draining.send(signal.SIGTERM)
    time.sleep(1.0)
    assert draining.alive() and owner(client, "call") == (1, "w-impatient"), "it drains, not stops"
    sent_at = draining.send(signal.SIGTERM)
    assert draining.proc.wait(timeout=10) == 0
    wait_for(lambda: owner(client, "call")[0] == 2, 10, "the handover")
    assert float(state(client, "call")["acquired_ms"]) / 1000 - sent_at < 3.0
    call.finish()
    wait_for(lambda: ended(client, "call"), 30, "the call's end")
    assert words_of(session_events(client, "call")) == oracle(words)


def test_admin_drain_makes_the_named_worker_drain_and_stop(redis_url, fleet):
    client = client_for(redis_url)
    target = fleet.spawn(redis_url, "w-target", env=DRAIN)
    other = fleet.spawn(redis_url, "w-other")
    wait_for(lambda: client.hget("streamscribe:workers", "w-target"), 10, "the worker's entry")
    done = subprocess.run(
        [STREAMSCRIBE, "admin", "drain", "w-target", "--redis-url", redis_url, "--wait", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "worker w-target stopped" in done.stdout
    assert target.proc.wait(timeout=10) == 0 and other.alive()
    unknown = subprocess.run(
        [STREAMSCRIBE, "admin", "drain", "w-nobody", "--redis-url", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode != 0 and "no live worker 'w-nobody'" in unknown.stderr
