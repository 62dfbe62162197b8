"""Capacity from measured cost: a worker that cannot keep up stops claiming new sessions, drops the turn context,
and decodes more cheaply.

The worker tests stream tens of seconds in real time and test the worker's own accounting, not the
server's, so they run against the embedded Valkey only (the suites of the commit path run on both).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.client_helpers import WorkerThread, output_events
from tests.worker_helpers import RealtimeProducer, client_for, state, synthetic_settings, wait_for
from worker.asr.contracts import EconomyLevel, TranscribeRequest
from worker.backends.synthetic import SyntheticASR, encode_words, random_words
from worker.runtime.capacity import ECONOMY_WINDOW_SEC, CapacityMeter, Economy

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def slow_backend(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Every synthetic decode takes 0.3 s while the returned event is set (it starts set)."""
    original = SyntheticASR.transcribe_batch
    slow = threading.Event()
    slow.set()

    def transcribe_batch(self, items):
        if slow.is_set():
            time.sleep(0.3)  # 0.3 s per 0.5 s chunk: 60 % of the wall clock for one session
        return original(self, items)

    monkeypatch.setattr(SyntheticASR, "transcribe_batch", transcribe_batch)
    return slow


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


def test_economy_switches_on_past_either_threshold_and_off_only_well_below_both():
    economy = Economy(0.6, 1.0)
    off, no_context = EconomyLevel.OFF, EconomyLevel.NO_CONTEXT
    assert economy.update(0.55, 0.9) == off and not economy.on
    assert economy.update(0.65, 0.0) == no_context and economy.on  # busy
    assert economy.update(0.5, 0.0) == no_context  # under the threshold, not yet well under it
    assert economy.update(0.44, 0.0) == off  # under three quarters of it
    assert economy.update(0.1, 1.2) == no_context  # one session waits too long, however idle on average
    assert economy.update(0.1, 0.8) == no_context
    assert economy.update(0.1, 0.7) == off
    assert economy.update(1.4, 5.0) == no_context  # the second level is off by default (threshold 1)
    assert Economy(1.0, 1.0).update(1.3, 0.5) == off  # a projection past 1 is 1: threshold 1 is never


def test_cheap_decodes_come_past_their_own_threshold_and_step_down_one_level_at_a_time():
    economy = Economy(0.6, 1.0, 0.85)
    assert economy.update(0.8, 3.0) == EconomyLevel.NO_CONTEXT  # a backlog alone only drops the context
    assert economy.update(0.9, 0.0) == EconomyLevel.CHEAP_DECODES
    assert economy.update(0.65, 0.0) == EconomyLevel.CHEAP_DECODES  # cheaper decodes cost less: stay
    assert economy.update(0.62, 0.0) == EconomyLevel.NO_CONTEXT  # well under 0.85, still over 0.6
    assert economy.update(0.5, 0.0) == EconomyLevel.NO_CONTEXT
    assert economy.update(0.9, 0.0) == EconomyLevel.CHEAP_DECODES
    assert economy.update(0.3, 0.0) == EconomyLevel.OFF  # well under both at once: straight off


def test_the_recent_utilisation_follows_a_change_of_load_sooner_than_the_capacity_average():
    clock = Clock()
    meter = CapacityMeter(0.8, 3.0, window_sec=30.0, clock=clock)
    for _ in range(int(ECONOMY_WINDOW_SEC)):  # one window of a backend busy 70 % of the time
        clock.now += 1.0
        meter.busy(0.7)
        meter.update()
    assert meter.recent_utilisation == pytest.approx(0.7 * (1 - 1 / 2.718281828), abs=0.01)
    assert meter.utilisation < 0.25 < 0.4 < meter.recent_utilisation


def test_a_session_that_joins_raises_the_projected_utilisation_before_it_costs_anything():
    clock = Clock()
    meter = CapacityMeter(0.8, 3.0, clock=clock)
    assert meter.projected_utilisation(2) == 0.0  # nothing measured
    for _ in range(60):  # one session costing 45 % of the wall clock
        clock.now += 1.0
        meter.busy(0.45)
        meter.update(active=1)
    assert meter.projected_utilisation(1) == pytest.approx(0.45, abs=0.01)
    assert meter.projected_utilisation(2) == pytest.approx(0.9, abs=0.02)
    economy = Economy(0.6, 1.0)
    assert economy.update(max(meter.recent_utilisation, meter.projected_utilisation(1)), 0.0) == EconomyLevel.OFF
    assert economy.update(max(meter.recent_utilisation, meter.projected_utilisation(2)), 0.0) == EconomyLevel.NO_CONTEXT


def test_a_loaded_worker_puts_its_sessions_in_economy_and_takes_it_off_when_the_load_falls(valkey_url, monkeypatch):
    slow = slow_backend(monkeypatch)
    settings = synthetic_settings(
        valkey_url,
        asr={"backend": "synthetic", "model": "tones", "vad": False, "min_chunk_size": 0.5},
        economy_utilisation=0.4,
    )
    words = random_words(100, seed=23)  # 40 s of audio, sent in real time
    call = RealtimeProducer(valkey_url, "call", encode_words(words), chunk_frames=8000, interval_sec=0.5)

    def processors_in_economy() -> list[EconomyLevel]:
        session = worker.worker.sessions.get("call")
        return [p.economy for p in session.processors] if session else []

    with WorkerThread(settings, max_seconds=100) as worker:
        call.start()
        wait_for(lambda: worker.worker.economy.on, 30, "the worker to switch economy on")
        wait_for(lambda: processors_in_economy() == [EconomyLevel.NO_CONTEXT], 5, "the session's processor to hear it")
        slow.clear()  # the backend is fast again: the recent load decays under 0.3
        wait_for(lambda: processors_in_economy() == [EconomyLevel.OFF], 25, "economy to end while the call goes on")
        assert worker.worker.capacity.recent_utilisation < 0.3
        call.finish(hurry=True)  # what the test waited for is seen: the rest need not come in real time
        assert worker.join(60)
    events = output_events(valkey_url, "call")
    assert events[-1].TYPE == "session_ended" and events[-1].reason == "completed"
    committed = " ".join(e.text for e in events if e.TYPE == "segment").split()
    assert committed == words  # economy changes what a decode hears, never what is kept


def test_a_worker_with_economy_off_keeps_the_turn_context_however_loaded(valkey_url, monkeypatch):
    slow_backend(monkeypatch)
    settings = synthetic_settings(
        valkey_url,
        asr={"backend": "synthetic", "model": "tones", "vad": False, "min_chunk_size": 0.5},
        economy=False,
        economy_utilisation=0.4,
    )
    call = RealtimeProducer(
        valkey_url, "call", encode_words(random_words(100, seed=24)), chunk_frames=8000, interval_sec=0.5
    )
    with WorkerThread(settings, max_seconds=100) as worker:
        call.start()
        # past economy_utilisation (0.4) and well past three quarters of it
        wait_for(lambda: worker.worker.capacity.recent_utilisation > 0.45, 30, "the worker to be loaded")
        session = wait_for(lambda: worker.worker.sessions.get("call"), 5, "the session")
        assert [p.economy for p in session.processors] == [EconomyLevel.OFF]
        call.finish(hurry=True)  # what the test waited for is seen: the rest need not come in real time
        assert worker.join(60)


def test_a_worker_far_short_of_compute_marks_its_requests_for_cheaper_decodes_and_keeps_every_word(
    valkey_url, monkeypatch
):
    slow_backend(monkeypatch)  # 60 % of the wall clock: past both thresholds below
    marked: list[bool] = []
    original = SyntheticASR.transcribe_requests

    def transcribe_requests(self, requests: list[TranscribeRequest]):
        marked.extend(r.economy for r in requests)
        return original(self, requests)

    monkeypatch.setattr(SyntheticASR, "transcribe_requests", transcribe_requests)
    settings = synthetic_settings(
        valkey_url,
        asr={"backend": "synthetic", "model": "tones", "vad": False, "min_chunk_size": 0.5},
        economy_utilisation=0.3,
        economy_decode_utilisation=0.45,
    )
    words = random_words(60, seed=25)
    call = RealtimeProducer(valkey_url, "call", encode_words(words), chunk_frames=8000, interval_sec=0.5)
    with WorkerThread(settings, max_seconds=100) as worker:
        call.start()
        wait_for(lambda: worker.worker.economy.level == EconomyLevel.CHEAP_DECODES, 30, "the worker to decode cheaply")
        session = wait_for(lambda: worker.worker.sessions.get("call"), 5, "the session")
        wait_for(lambda: [p.economy for p in session.processors] == [EconomyLevel.CHEAP_DECODES], 5, "the processor")
        wait_for(lambda: marked and marked[-1], 10, "a request marked economy")
        call.finish(hurry=True)  # what the test waited for is seen: the rest need not come in real time
        assert worker.join(60)
    assert not marked[0]  # the first decodes, before any load was measured, were plain
    events = output_events(valkey_url, "call")
    assert events[-1].TYPE == "session_ended" and events[-1].reason == "completed"
    assert " ".join(e.text for e in events if e.TYPE == "segment").split() == words


def test_a_worker_at_capacity_leaves_new_sessions_waiting_until_it_has_room(valkey_url, monkeypatch):
    slow_backend(monkeypatch)
    settings = synthetic_settings(
        valkey_url,
        asr={"backend": "synthetic", "model": "tones", "vad": False, "min_chunk_size": 0.5},
        max_sessions=4,
        capacity_headroom=0.5,
        capacity_window_sec=1.0,
    )
    busy_words = random_words(60, seed=21)
    busy = RealtimeProducer(valkey_url, "busy", encode_words(busy_words), chunk_frames=8000, interval_sec=0.5)
    client = client_for(valkey_url)
    with WorkerThread(settings, max_seconds=100) as worker:
        busy.start()
        wait_for(lambda: worker.worker.capacity.utilisation > 0.5, 30, "the worker to measure its load")
        waiting = RealtimeProducer(valkey_url, "waiting", encode_words(random_words(5, seed=22)))
        waiting.start()
        waiting.finish()
        time.sleep(2.0)
        assert b"owner" not in state(client, "waiting")  # announced, and no worker has taken it
        assert "waiting" not in worker.worker.sessions
        busy.finish(hurry=True)
        # the busy call ended: the worker has room again and takes the one that waited
        assert worker.join(60)
    for sid in ("busy", "waiting"):
        events = output_events(valkey_url, sid)
        assert events[-1].TYPE == "session_ended" and events[-1].reason == "completed"
    assert np.all([e.TYPE != "error" for e in output_events(valkey_url, "busy")])
