"""``streamscribe models load`` / ``list`` against a real worker process: models load in the background
on every live worker, sessions do not wait for them, and a model the worker does not allow is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.worker_helpers import (
    WorkerFleet,
    client_for,
    ended,
    oracle,
    session_events,
    wait_for,
    words_of,
    write_session,
)
from worker.backends.synthetic import encode_words, random_words

pytestmark = pytest.mark.timeout(120)

STREAMSCRIBE = str(Path(sys.executable).with_name("streamscribe"))
#: Python run in the worker before its CLI: loading "tones-b" takes 3 s, "tones" is instant.
SLOW_B = """
import time
from worker.backends.synthetic import SyntheticLoader
_load = SyntheticLoader.load
def _slow(self, config, **kw):
    if config.model == "tones-b":
        time.sleep(3.0)
    return _load(self, config, **kw)
SyntheticLoader.load = _slow
"""


def models(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STREAMSCRIBE, "models", *args[:1], "--redis-url", url, *args[1:]], capture_output=True, text=True, timeout=60
    )


def listed(url: str) -> dict[str, dict]:
    done = models(url, "list", "--json")
    assert done.returncode == 0, done.stderr
    return {row["worker"]: row for row in map(json.loads, done.stdout.splitlines())}


def test_every_live_worker_loads_an_allowed_model_in_the_background_and_refuses_others(redis_url, tmp_path):
    with WorkerFleet(tmp_path) as fleet:
        fleet.spawn(redis_url, "w-models", prelude=SLOW_B, env={"STREAMSCRIBE_ALLOWED_MODELS": "tones,tones-b"})
        wait_for(lambda: "w-models" in listed(redis_url), 15, "the worker's entry")
        assert listed(redis_url)["w-models"]["models"] == []

        asked = models(redis_url, "load", "tones-b")
        assert asked.returncode == 0 and "asked every live worker" in asked.stdout
        started = time.monotonic()
        write_session(redis_url, "during-load", encode_words(random_words(6, seed=3), 16000))
        client = client_for(redis_url)
        wait_for(lambda: ended(client, "during-load"), 15, "a session served while a model loads")
        served_in = time.monotonic() - started
        assert served_in < 2.5, f"the session waited for the load ({served_in:.1f} s)"
        assert words_of(session_events(client, "during-load")) == oracle(random_words(6, seed=3))

        done = models(redis_url, "load", "tones-b", "--wait", "30")
        assert done.returncode == 0 and "1 of 1 live worker(s) have tones-b" in done.stdout, done.stdout
        assert set(listed(redis_url)["w-models"]["models"]) == {"tones", "tones-b"}

        refused = models(redis_url, "load", "large-v3", "--wait", "30")
        assert refused.returncode == 1 and "not in allowed_models" in refused.stdout, refused.stdout
        assert "large-v3" not in listed(redis_url)["w-models"]["models"]


def test_a_session_that_needs_a_model_not_loaded_yet_waits_for_it_while_the_others_go_on(redis_url, tmp_path):
    """Before, the first session of a model loaded it inside the loop: every session stalled."""
    from producer.client import Producer
    from tests.worker_helpers import RealtimeProducer

    with WorkerFleet(tmp_path) as fleet:
        fleet.spawn(redis_url, "w-first-load", prelude=SLOW_B, env={"STREAMSCRIBE_ALLOWED_MODELS": "tones,tones-b"})
        client = client_for(redis_url)
        live_words = random_words(60, seed=11)
        live = RealtimeProducer(redis_url, "live", encode_words(live_words, 16000), interval_sec=0.05)
        live.start()
        wait_for(lambda: any(e.TYPE == "segment" for e in session_events(client, "live")), 15, "the live session")

        opened_at = time.time()
        writer = Producer(redis_url).open("needs-b", sample_rate=16000, model="tones-b")
        audio = encode_words(random_words(6, seed=12), 16000)
        for k in range(0, audio.shape[0], 1600):
            writer.send(audio[k : k + 1600])
        writer.close()
        wait_for(lambda: ended(client, "needs-b"), 20, "the session of the slow model")
        started = next(e for e in session_events(client, "needs-b") if e.TYPE == "session_started")
        assert started.emitted_at - opened_at >= 2.5, "taken before its model could have loaded"
        assert words_of(session_events(client, "needs-b")) == oracle(random_words(6, seed=12))

        during_load = [
            e
            for e in session_events(client, "live")
            if e.TYPE == "segment" and opened_at + 0.5 < e.emitted_at < started.emitted_at - 0.5
        ]
        assert len(during_load) >= 3, "the live session stalled while the other model loaded"
        live.finish()
        wait_for(lambda: ended(client, "live"), 20, "the live session's end")
        assert words_of(session_events(client, "live")) == oracle(live_words)
