"""Capacity from measured cost: a worker that cannot keep up stops claiming new sessions."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.client_helpers import WorkerThread, output_events
from tests.worker_helpers import RealtimeProducer, client_for, state, synthetic_settings, wait_for
from worker.backends.synthetic import SyntheticASR, encode_words, random_words
from worker.runtime.capacity import CapacityMeter

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_fresh_meter_offers_the_ceiling_and_a_busy_one_offers_nothing():
    clock = Clock()
    meter = CapacityMeter(0.8, 3.0, window_sec=1.0, clock=clock)
    assert meter.spare(0, 8, 0.0) == 8
    assert meter.spare(2, 8, 0.0) == 6  # nothing measured yet: up to the ceiling
    for _ in range(20):  # two sessions keeping the backend 30 % busy
        clock.now += 0.5
        meter.busy(0.15)
        meter.update()
    assert meter.utilisation == pytest.approx(0.3, abs=0.01)
    assert meter.spare(2, 8, 0.0) == 3  # 0.15 per session: (0.8 - 0.3) / 0.15 -> 3 more
    assert meter.spare(2, 8, 3.5) == 0  # behind: the backlog closes the door whatever the average
    for _ in range(20):
        clock.now += 0.5
        meter.busy(0.45)
        meter.update()
    assert meter.spare(2, 8, 0.0) == 0
    assert meter.spare(8, 8, 0.0) == 0


def test_a_worker_at_capacity_leaves_new_sessions_waiting_until_it_has_room(redis_url, monkeypatch):
    original = SyntheticASR.transcribe_batch

    def slow(self, items):
        time.sleep(0.3)  # 0.3 s per 0.5 s chunk: 60 % of the wall clock for one session
        return original(self, items)

    monkeypatch.setattr(SyntheticASR, "transcribe_batch", slow)
    settings = synthetic_settings(
        redis_url,
        asr={"backend": "synthetic", "model": "tones", "vad": False, "min_chunk_size": 0.5},
        max_sessions=4,
        capacity_headroom=0.5,
        capacity_window_sec=1.0,
    )
    busy_words = random_words(60, seed=21)
    busy = RealtimeProducer(redis_url, "busy", encode_words(busy_words), chunk_frames=8000, interval_sec=0.5)
    client = client_for(redis_url)
    with WorkerThread(settings, max_seconds=100) as worker:
        busy.start()
        wait_for(lambda: worker.worker.capacity.utilisation > 0.5, 30, "the worker to measure its load")
        waiting = RealtimeProducer(redis_url, "waiting", encode_words(random_words(5, seed=22)))
        waiting.start()
        waiting.finish()
        time.sleep(2.0)
        assert b"owner" not in state(client, "waiting")  # announced, and no worker has taken it
        assert "waiting" not in worker.worker.sessions
        busy.finish()
        # the busy call ended: the worker has room again and takes the one that waited
        assert worker.join(60)
    for sid in ("busy", "waiting"):
        events = output_events(redis_url, sid)
        assert events[-1].TYPE == "session_ended" and events[-1].reason == "completed"
    assert np.all([e.TYPE != "error" for e in output_events(redis_url, "busy")])
