"""``streamscribe acl``: one ``ACL SETUSER`` line per role, for Redis 7+ and Valkey.

    streamscribe acl --producer-password X --worker-password Y --consumer-password Z | redis-cli

* ``streamscribe-producer`` (producers, gateways, ``produce``): writes only what producers own,
  the session's open key (``open_session.lua``) and its input stream, and adds announcements.
  It reads no transcript and no worker state.
* ``streamscribe-worker``: every key under the prefix, with the data commands (no ``KEYS``,
  ``FLUSHALL``, ``CONFIG`` or other ``@dangerous`` ones, ``INFO`` excepted).
* ``streamscribe-consumer`` (``tail``, ``TranscriptConsumer``, pipelines): reads the output, partial
  and dead-letter streams of sessions and shards; it may run consumer groups on the shard
  streams (which moves a group's cursor, never a stream's contents), and writes nothing else.

Scripts run with their caller's rights: Redis checks every command a script runs, so the
producer's ``open_session.lua`` can touch the open key only. Passwords are printed as SHA-256
(``#<hex>``), never in the clear. The lines hold the commands a Redis Cluster client needs
(``CLUSTER SLOTS``/``SHARDS``, ``COMMAND``, ``READONLY``).
"""

from __future__ import annotations

import argparse
import hashlib
import re

from worker.errors import ConfigError
from worker.protocol.keys import Keyspace

#: What every role's client runs before any key: health, cluster discovery, connection setup.
CONNECTION = (
    "+ping +echo +hello +info +select +client|setname +client|id +command +readonly "
    "+cluster|slots +cluster|shards +cluster|info +cluster|myid +cluster|nodes"
)
#: Producers: the commands of open_session.lua, appending input, reading its own last entry.
PRODUCER = "+evalsha +eval +script|load +script|exists +type +hget +hmget +hset +xadd +xrange +xrevrange"
#: Workers: the data commands of every kind they use; no @dangerous command but INFO.
WORKER = (
    "+@read +@write +@stream +@hash +@string +@sortedset +@keyspace +@scripting +@transaction "
    "-@dangerous +info +xgroup|create +xgroup|delconsumer"
)
#: Consumers: reading streams, and running consumer groups on the shard streams.
CONSUMER = "+xrange +xrevrange +xread +xlen +xinfo|stream +exists +type"
CONSUMER_GROUPS = (
    "+xreadgroup +xack +xgroup|create +xgroup|createconsumer +xgroup|setid +xautoclaim +xclaim +xpending "
    "+xinfo|groups +xinfo|consumers"
)
USERS = {"producer": "streamscribe-producer", "worker": "streamscribe-worker", "consumer": "streamscribe-consumer"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("acl", help="print ACL SETUSER lines for the producer, worker and consumer roles")
    p.add_argument("--key-prefix", default="streamscribe", help="the workers' key prefix")
    p.add_argument("--producer-password", required=True)
    p.add_argument("--worker-password", required=True)
    p.add_argument("--consumer-password", required=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    keys = Keyspace(args.key_prefix)
    passwords = {"producer": args.producer_password, "worker": args.worker_password, "consumer": args.consumer_password}
    for line in acl_lines(keys, passwords).values():
        print(line)
    return 0


def acl_lines(keys: Keyspace, passwords: dict[str, str]) -> dict[str, str]:
    """``{role: "ACL SETUSER ..."}``; each line resets the user first, so applying it again is safe.

    A selector (a rule in parentheses) is one argument, so it is double-quoted as redis-cli reads it.
    """
    for role, password in passwords.items():
        if not password:
            raise ConfigError(f"--{role}-password must not be empty")
    p = _glob(keys.prefix)
    session = f"{p}:{{*}}"
    producer = [
        f"%RW~{session}:open",
        f"%RW~{session}:in",
        CONNECTION,
        PRODUCER,
        f'"(~{p}:sessions:* +xadd)"',  # announcements: append, never read
    ]
    worker = [f"~{p}:*", CONNECTION, WORKER]
    consumer = [
        f"%R~{session}:out",
        f"%R~{session}:partials",
        f"%R~{session}:dlq",
        f"%R~{p}:events:*",
        f"%R~{p}:dlq:*",
        CONNECTION,
        CONSUMER,
        f'"(~{p}:events:* ~{p}:dlq:* {CONSUMER_GROUPS})"',
    ]
    rules = {"producer": producer, "worker": worker, "consumer": consumer}
    lines = {}
    for role, user in USERS.items():
        digest = hashlib.sha256(passwords[role].encode()).hexdigest()
        lines[role] = " ".join(["ACL SETUSER", user, "reset", "on", f"#{digest}", "resetchannels", *rules[role]])
    return lines


def _glob(prefix: str) -> str:
    """The prefix with glob characters escaped, so a pattern matches it literally."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix)
