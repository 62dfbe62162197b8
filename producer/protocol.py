"""The producer's side of the protocol, once, without I/O: open, announce, resume, append, read back.

Each operation is a generator that yields the Redis commands it needs (:class:`Call`,
:class:`RunScript`) and receives each reply (or, for a command Redis refused, the
``ResponseError`` thrown into it). The sync :class:`producer.client.Producer` drives it with
:func:`drive`; the asyncio :class:`producer.aio.AsyncProducer` with its own ``await`` loop. Both
retry connection errors per command, which is safe because every command here is idempotent or
checked by the next one (see docs/protocol.md, "Opening a session" and "Input entries").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from producer.common import check_open_status, is_repeat, same_entry, token_digest
from worker.protocol.connection import text
from worker.protocol.keys import Keyspace
from worker.protocol.messages import SessionOpen, input_entry_id

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One Redis command: ``issue(client)`` sends it with a sync client (the reply) or an asyncio
    one (an awaitable of the reply), since redis-py names and shapes the two alike."""

    issue: Callable[[Any], Any]


@dataclass(frozen=True)
class RunScript:
    """One of the Lua scripts of ``worker/protocol/scripts``, by name (each client loads them its way)."""

    name: str
    keys: list[str]
    args: list[Any]


Step = Call | RunScript
Steps = Generator[Step, Any, T]


def drive(steps: Steps[T], execute: Callable[[Step], Any]) -> T:
    """Run ``steps`` with ``execute`` (a sync client's way to run one step); its result."""
    reply: Any = None
    refused: ResponseError | None = None
    while True:
        try:
            step = steps.send(reply) if refused is None else steps.throw(refused)
        except StopIteration as done:
            return done.value
        try:
            reply, refused = execute(step), None
        except ResponseError as e:
            reply, refused = None, e


def open_session(keys: Keyspace, opened: SessionOpen, token: str) -> Steps[int]:
    """Open (or, with the token of the first open, resume) the session; returns the next ``seq``."""
    sid = opened.session_id
    key = keys.session_open(sid)
    status, announced = yield RunScript(
        "open_session", [key], [opened.encode(), int(time.time() * 1000), token_digest(token)]
    )
    check_open_status(sid, text(status))
    if text(announced) != "1":
        # after the open key, so a worker never finds an announcement without its session
        announcements = keys.announcements(keys.shard_of(sid))
        yield Call(lambda c: c.xadd(announcements, {"session": sid}))
        yield Call(lambda c: c.hset(key, "announced", "1"))
    if text(status) != "resumed":
        return 0
    # a restarted producer continues the numbering where the input stream ends
    last = yield Call(lambda c: c.xrevrange(keys.session_input(sid), count=1))
    return int(text(last[0][0]).split("-")[0]) if last else 0


def append(input_key: str, seq: int, message: bytes) -> Steps[bool]:
    """XADD ``message`` as entry ``<seq+1>-0``.

    True when the entry now holds it (added now, or by an attempt whose reply was lost); False
    when ``seq`` is taken by another message (a send interrupted after its XADD landed).
    """
    entry_id = input_entry_id(seq)
    try:
        yield Call(lambda c: c.xadd(input_key, {"m": message}, id=entry_id))
        return True
    except ResponseError as e:
        if not is_repeat(e):
            raise
    entries = yield Call(lambda c: c.xrange(input_key, entry_id, entry_id))
    return same_entry(entries, message)


def append_next(input_key: str, seq: int, encode: Callable[[int], bytes]) -> Steps[int]:
    """Append ``encode(s)`` at the first free ``s`` from ``seq``; returns the ``s`` it landed at."""
    while not (yield from append(input_key, seq, encode(seq))):
        seq += 1  # an interrupted earlier send landed at this seq: go on after it
    return seq
