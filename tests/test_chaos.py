"""Chaos: worker SIGKILLs, SIGSTOPs and Redis SIGKILL + AOF restarts, mixed at random instants while
four calls stream live, checked against the synthetic backend's exact oracle.

Redis runs with ``appendfsync always`` (acknowledged writes survive its SIGKILL; what the
``everysec`` policy can lose is the reconciliation tests' subject). Everything else is as in
production: real worker processes, real signals, producers that retry through the outage.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from tests.servers import RedisServerProcess
from tests.worker_helpers import (
    RealtimeProducer,
    WorkerFleet,
    client_for,
    ended,
    oracle,
    session_events,
    wait_for,
    wait_for_shard_copy,
    words_of,
)
from worker.backends.synthetic import encode_words, random_words

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TTL = 1.5
CALLS = 4


class DurableRedis:
    """A server whose data lives in ``data_dir`` (AOF, fsync always), killed and restarted on one port."""

    def __init__(self, data_dir: Path) -> None:
        self.args = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(data_dir)]
        self.server = RedisServerProcess(extra_args=self.args).start()
        self.port = self.server.port
        self.url = self.server.url

    def kill_and_restart(self, down_sec: float) -> None:
        assert self.server.proc is not None
        self.server.proc.kill()
        self.server.wait_stopped()
        time.sleep(down_sec)
        self.server = RedisServerProcess(port=self.port, extra_args=self.args).start()

    def stop(self) -> None:
        self.server.stop()


def test_worker_sigkills_sigstops_and_redis_restarts_lose_and_repeat_nothing(tmp_path):
    rng = random.Random(90210)
    data = tmp_path / "redis-data"
    data.mkdir()
    redis = DurableRedis(data)
    try:
        with WorkerFleet(tmp_path) as fleet:
            url = redis.url
            spawned = 0

            def spawn() -> None:
                nonlocal spawned
                spawned += 1
                fleet.spawn(url, f"w{spawned}", lease_ttl_sec=TTL)

            for _ in range(3):
                spawn()
            calls = {f"chaos-{k}": random_words(120, seed=600 + k) for k in range(CALLS)}
            producers = []
            for sid, words in calls.items():  # 48 s of audio each, sent at 2x real time, staggered
                producers.append(RealtimeProducer(url, sid, encode_words(words), interval_sec=0.05))
                producers[-1].start()
                time.sleep(rng.uniform(0.5, 2.0))

            actions: list[str] = []
            redis_restarts = 0
            while any(p.is_alive() for p in producers):
                time.sleep(rng.uniform(1.0, 2.5))
                alive = [w for w in fleet.workers if w.alive()]
                choice = rng.choice(["kill", "stop", "redis"] if redis_restarts < 2 else ["kill", "stop"])
                if choice == "kill" and alive:
                    victim = rng.choice(alive)
                    victim.kill()
                    spawn()
                    actions.append(f"SIGKILL {victim.worker_id}")
                elif choice == "stop" and alive:
                    victim = rng.choice(alive)
                    paused = rng.uniform(1.0, 3.0)  # past the TTL: its leases go to others
                    victim.send(signal.SIGSTOP)
                    time.sleep(paused)
                    victim.send(signal.SIGCONT)
                    actions.append(f"SIGSTOP {victim.worker_id} {paused:.1f} s")
                elif choice == "redis":
                    down = rng.uniform(0.2, 1.5)
                    redis.kill_and_restart(down)
                    redis_restarts += 1
                    actions.append(f"Redis SIGKILL, {down:.1f} s down, AOF restart")
            print("chaos:", "; ".join(actions))
            for p in producers:
                p.finish(timeout=60)

            client = client_for(url)
            wait_for(lambda: all(ended(client, sid) for sid in calls), 90, "every call's end")
            assert redis_restarts >= 1 and any(a.startswith("SIGKILL") for a in actions)
            assert any(a.startswith("SIGSTOP") for a in actions)
            for sid, words in calls.items():
                events = session_events(client, sid)
                types = [e.TYPE for e in events]
                assert words_of(events) == oracle(words), sid
                assert [e.seq for e in events] == list(range(1, len(events) + 1)), sid
                assert types.count("session_started") == 1 and types[-1] == "session_ended", sid
                assert "error" not in types and events[-1].reason == "completed", sid
                wait_for_shard_copy(client, sid)
            client.close()
    finally:
        redis.stop()
