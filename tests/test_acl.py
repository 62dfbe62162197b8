"""``streamscribe acl`` applied to a real server (Redis 7 and Valkey): a whole call runs as the three
users, and then every key of the session is probed with the rights of each."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from redis.exceptions import NoPermissionError, ResponseError

from producer.client import Producer
from producer.consumer import TranscriptConsumer
from tests.worker_helpers import KEYS, oracle, synthetic_settings, words_of
from worker.backends.synthetic import encode_words, random_words
from worker.cli.acl import USERS
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)

PASSWORDS = {"producer": "p-secret", "worker": "w-secret", "consumer": "c-secret"}
WORDS = random_words(10, seed=404)
PASSWORD_FLAGS = ("--producer-password=", "--worker-password=w", "--consumer-password=c")


def as_user(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{USERS[role]}:{PASSWORDS[role]}@{parts.hostname}:{parts.port}"))


@pytest.fixture
def acl_url(redis_url: str) -> Iterator[str]:
    """The server with the three users of ``streamscribe acl`` applied, as redis-cli would read them."""
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "acl", *(f"--{r}-password={pw}" for r, pw in PASSWORDS.items())],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3
    admin = redis.Redis.from_url(redis_url)
    for line in lines:
        admin.execute_command(*shlex.split(line))  # redis-cli's quoting: a selector is one argument
    try:
        yield redis_url
    finally:
        for user in USERS.values():
            admin.acl_deluser(user)
        admin.close()


def refused(action) -> bool:
    try:
        action()
    except NoPermissionError:
        return True
    except ResponseError as e:
        return "NOPERM" in str(e)
    return False


def test_a_whole_call_runs_as_the_three_users_and_each_role_reaches_only_its_own_keys(acl_url):
    producer_url, worker_url, consumer_url = (as_user(acl_url, r) for r in ("producer", "worker", "consumer"))
    with Producer(producer_url).open("acl-call") as writer:
        writer.send(encode_words(WORDS, 16000))
    Worker(synthetic_settings(worker_url)).run(burst=True)
    with TranscriptConsumer(consumer_url) as consumer:
        events = list(consumer.session_events("acl-call", idle_timeout=5))
        assert events[-1].TYPE == "session_ended" and words_of(events) == oracle(WORDS)
        shared = list(consumer.group_events("pipeline", "c1", idle_timeout=1))
        assert [d.event.TYPE for d in shared][-1] == "session_ended", "consumer groups on the shard streams"

    sid = "acl-call"
    state, open_key, out, inp = (
        KEYS.session_state(sid),
        KEYS.session_open(sid),
        KEYS.session_output(sid),
        KEYS.session_input(sid),
    )
    events_key, announcements = KEYS.events(KEYS.shard_of(sid)), KEYS.announcements(KEYS.shard_of(sid))
    producer = redis.Redis.from_url(producer_url)
    for what, action in {
        "read the worker state": lambda: producer.hgetall(state),
        "write the worker state": lambda: producer.hset(state, "epoch", 99),
        "delete the worker state": lambda: producer.delete(state),
        "read a transcript": lambda: producer.xrange(out),
        "write a transcript": lambda: producer.xadd(out, {"m": b"x"}),
        "read the shard events": lambda: producer.xrange(events_key),
        "read the announcements": lambda: producer.xrange(announcements),
        "delete its input": lambda: producer.delete(inp),
        "read the workers hash": lambda: producer.hgetall(KEYS.workers()),
        "list keys": lambda: producer.keys("*"),
    }.items():
        assert refused(action), f"the producer could {what}"
    assert producer.hget(open_key, "created_ms"), "the producer reads its open key"
    producer.close()

    consumer = redis.Redis.from_url(consumer_url)
    for what, action in {
        "read the worker state": lambda: consumer.hgetall(state),
        "read the open message": lambda: consumer.hgetall(open_key),
        "read the input": lambda: consumer.xrange(inp),
        "append to a transcript": lambda: consumer.xadd(out, {"m": b"x"}),
        "append to the shard events": lambda: consumer.xadd(events_key, {"m": b"x"}),
        "delete a transcript": lambda: consumer.delete(out),
        "trim a transcript": lambda: consumer.xtrim(out, maxlen=0),
        "append audio": lambda: consumer.xadd(inp, {"m": b"x"}),
        "announce a session": lambda: consumer.xadd(announcements, {"session": "x"}),
        "write the worker state": lambda: consumer.hset(state, "epoch", 99),
    }.items():
        assert refused(action), f"the consumer could {what}"
    consumer.close()

    worker = redis.Redis.from_url(worker_url)
    assert refused(lambda: worker.flushall()) and refused(lambda: worker.config_get("*"))
    assert refused(lambda: worker.get("not-our-prefix:key")), "the worker is confined to its prefix"
    worker.close()


def test_acl_refuses_an_empty_password_with_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "acl", *PASSWORD_FLAGS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--producer-password must not be empty" in done.stderr
