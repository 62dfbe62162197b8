"""Stop and drain requests, which signal handlers make (worker/runtime/stopping.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from worker.runtime.stopping import StopRequests

pytestmark = pytest.mark.timeout(60)

#: A main thread that waits in a loop while another thread sends it thousands of signals, each
#: handled by a drain or stop request. With a ``threading.Event`` in its place (``set()`` in the
#: handler, ``wait(0)`` in the loop) this died of recursion in each of three runs here: every
#: handler blocks on the lock that the interrupted ``Event.wait`` holds, and the next signal
#: interrupts that handler in turn (with a single signal, it blocks forever).
HAMMER = textwrap.dedent(
    """
    import os, signal, threading, time
    from worker.runtime.stopping import StopRequests

    requests = StopRequests(drain_timeout_sec=60)
    handled = 0

    def handler(_signum, _frame):
        global handled
        handled += 1
        requests.drain()

    signal.signal(signal.SIGUSR1, handler)
    done = threading.Event()

    def hammer():
        pid = os.getpid()
        while not done.is_set():
            os.kill(pid, signal.SIGUSR1)
            time.sleep(0.0002)

    threading.Thread(target=hammer, daemon=True).start()
    started = time.monotonic()
    stops = 0
    while time.monotonic() - started < 3:
        if requests.wait(0):
            stops += 1
            requests.stopping = requests.draining = False
    done.set()
    print("handled", handled, "stops", stops, flush=True)
    """
)


def test_a_stop_or_drain_requested_by_a_flood_of_signals_never_blocks_the_main_thread():
    run = subprocess.run([sys.executable, "-c", HAMMER], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    _, handled, _, stops = run.stdout.split()
    assert int(handled) > 100 and int(stops) > 10, run.stdout


def test_a_wait_ends_as_soon_as_a_stop_is_requested():
    requests = StopRequests()
    threading.Timer(0.2, requests.stop).start()
    started = time.monotonic()
    assert requests.wait(30) is True
    assert time.monotonic() - started < 2


def test_a_wait_without_a_request_sleeps_its_time_and_says_so():
    requests = StopRequests()
    started = time.monotonic()
    assert requests.wait(0.2) is False
    assert time.monotonic() - started >= 0.2


def test_a_second_drain_or_a_drain_without_a_timeout_stops_at_once():
    draining = StopRequests(drain_timeout_sec=30)
    draining.drain()
    assert draining.draining and not draining.stopping
    assert draining.drain_deadline - time.monotonic() == pytest.approx(30, abs=1)
    draining.drain()
    assert draining.stopping
    impatient = StopRequests(drain_timeout_sec=0)
    impatient.drain()
    assert impatient.stopping and not impatient.draining
