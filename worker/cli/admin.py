"""``streamscribe admin``: what an operator does to the sessions of a fleet, from the command line.

    streamscribe admin sessions [--json]             every retained session: status, owner, epoch, age
    streamscribe admin waiting                       sessions announced and owned by no worker
    streamscribe admin dead-letters SESSION [--json] a session's rejected input, with reasons
    streamscribe admin end SESSION [--reason R]      end a live session as its producer would
    streamscribe admin reannounce SESSION            give an orphan (open, no live lease) to the workers
    streamscribe admin purge SESSION [--force]       delete every key of a session (erasure requests)
    streamscribe admin drain WORKER [--wait SEC]     a worker takes no new session, finishes or hands over
    streamscribe admin replay SESSION --as NEW       run an ended session again from its retained input

Each acts through the same keys and messages as producers and workers do (docs/protocol.md):
``end`` appends an end marker after the last chunk, so the owner commits the tail and ends the
session; ``reannounce`` clears the lost lease of a session whose announcement entry is gone
(Redis data loss) and announces it again, so a worker restores it from its last checkpoint with the
exactly-once record intact; ``purge`` refuses a live session unless ``--force``; ``drain`` puts a
command on the control stream that the named worker acts on as on SIGTERM (``models list`` names
the live workers); ``replay`` runs an ended session again under a new id from its open message and
its retained input, entry for entry (after the allow-list, quota or a bug that ended it was fixed).
Dead letters themselves keep only the first 1024 bytes of what was rejected, so they show what was
wrong; the input stream, kept for ``retention_sec``, is what a replay sends again.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from producer.common import add_connection_arguments, connect_from_args
from worker.errors import ConfigError
from worker.protocol.connection import text
from worker.protocol.keys import WORKER_GROUP, Keyspace, check_session_id
from worker.protocol.messages import DeadLetter, EndOfSession, input_entry_id

#: State fields ``sessions`` shows, in order.
STATE_FIELDS = ("status", "owner", "epoch", "created_ms", "acquired_ms", "out_seq", "lease_entry")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("admin", help="list, end, re-announce and purge sessions; read dead letters")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("sessions", help="every retained session with its owner, epoch and age")
    listing.add_argument("--json", action="store_true", help="one JSON object per session")
    actions.add_parser("waiting", help="sessions announced and owned by no worker, per shard")
    letters = actions.add_parser("dead-letters", help="a session's rejected input")
    letters.add_argument("session")
    letters.add_argument("--json", action="store_true")
    end = actions.add_parser("end", help="end a live session now (an end marker after its last chunk)")
    end.add_argument("session")
    end.add_argument("--reason", default="ended_by_operator", help="the session_ended reason")
    again = actions.add_parser("reannounce", help="give an orphaned open session to the workers again")
    again.add_argument("session")
    purge = actions.add_parser("purge", help="delete every key of a session")
    purge.add_argument("session")
    purge.add_argument("--force", action="store_true", help="also a live session (its owner ends with errors)")
    drain = actions.add_parser("drain", help="a worker takes no new session; it finishes or hands over its own")
    drain.add_argument("worker", help="the worker id (streamscribe models list)")
    drain.add_argument("--wait", type=float, default=0.0, metavar="SEC", help="wait this long for it to stop")
    replay = actions.add_parser("replay", help="run an ended session again, under a new id, from its retained input")
    replay.add_argument("session")
    replay.add_argument("--as", dest="new_session", required=True, metavar="NEW", help="the new session's id")
    for action in (listing, actions.choices["waiting"], letters, end, again, purge, drain, replay):
        add_connection_arguments(action)
        action.add_argument("--group", default=WORKER_GROUP, help="the workers' consumer group (their --group)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    client, keys = connect_from_args(args)
    try:
        return ACTIONS[args.action](client, keys, args)
    finally:
        client.close()


def _sessions(client: Any, keys: Keyspace, args: argparse.Namespace) -> int:
    from worker.runtime.reconcile import retained_sessions

    now_ms = time.time() * 1000
    rows = []
    for sid in retained_sessions(client, keys):
        values = _state(client, keys, sid)
        values = {name: values.get(name) for name in STATE_FIELDS}
        values["status"] = values["status"] or "open"  # opened, not taken by any worker yet
        created = float(values["created_ms"] or now_ms)
        entries, seconds = (0, 0.0) if values["status"] == "ended" else _backlog(client, keys, sid)
        rows.append(
            {
                "session": sid,
                "status": values["status"],
                "owner": values["owner"],
                "epoch": int(values["epoch"] or 0),
                "age_sec": round((now_ms - created) / 1000, 1),
                "input_entries": int(client.xlen(keys.session_input(sid))),
                "backlog_entries": entries,
                "backlog_sec": round(seconds, 1),
                "out_seq": int(values["out_seq"] or 0),
            }
        )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(
        f"{'session':40s} {'status':7s} {'owner':30s} {'epoch':>5s} {'age':>9s} {'input':>6s} {'backlog':>9s} "
        f"{'out':>5s}"
    )
    for r in rows:
        print(
            f"{r['session']:40s} {r['status'] or '-':7s} {r['owner'] or '-':30s} {r['epoch']:5d} "
            f"{r['age_sec']:8.0f}s {r['input_entries']:6d} {r['backlog_sec']:8.1f}s {r['out_seq']:5d}"
        )
    return 0


#: Entries ``sessions`` reads per session to measure its backlog (more shows as at least this).
BACKLOG_READ_LIMIT = 5000


def _backlog(client: Any, keys: Keyspace, sid: str) -> tuple[int, float]:
    """Input entries after the last committed position, and their audio seconds (no worker's view needed)."""
    from worker.errors import StreamscribeError
    from worker.protocol.messages import AudioChunk, SessionOpen, decode_input
    from worker.protocol.pcm import BYTES_PER_SAMPLE
    from worker.runtime.checkpoint import Checkpoint

    blob = client.hget(keys.session_open(sid), "open")
    checkpoint = client.hget(keys.session_state(sid), "checkpoint")
    try:
        opened = SessionOpen.decode(blob or b"")
        after = Checkpoint.decode(checkpoint).in_pos if checkpoint else "0-0"
    except StreamscribeError:
        return 0, 0.0
    frame_bytes = BYTES_PER_SAMPLE[opened.encoding] * opened.channels
    entries = client.xrange(keys.session_input(sid), f"({after}", "+", count=BACKLOG_READ_LIMIT)
    seconds = 0.0
    for _id, fields in entries:
        try:
            message = decode_input(fields.get(b"m", b""))
        except StreamscribeError:
            continue
        if isinstance(message, AudioChunk):
            seconds += len(message.payload) / frame_bytes / opened.sample_rate
    return len(entries), seconds


def _waiting(client: Any, keys: Keyspace, args: argparse.Namespace) -> int:
    from worker.protocol.scripts import Scripts
    from worker.runtime.ownership import LeaseManager

    leases = LeaseManager(client, keys, Scripts(), args.group, "admin", 10.0)
    print(leases.waiting())
    return 0


def _dead_letters(client: Any, keys: Keyspace, args: argparse.Namespace) -> int:
    sid = check_session_id(args.session)
    for _id, fields in client.xrange(keys.session_dead_letters(sid)):
        letter = DeadLetter.decode(fields[b"m"])
        if args.json:
            row = {
                "seq": int(fields.get(b"seq", 0)),
                "entry": letter.entry_id,
                "reason": letter.reason,
                "message": letter.message,
                "raw_bytes": len(letter.raw),
                "rejected_at": letter.rejected_at,
            }
            print(json.dumps(row))
        else:
            print(f"{letter.entry_id:>12s}  {letter.reason:20s} {letter.message}  ({len(letter.raw)} bytes kept)")
    return 0


def _state(client: Any, keys: Keyspace, sid: str) -> dict[str, str]:
    """The session's open key (created_ms, announced) and the workers' state over it, without blobs."""
    opened, state = client.hgetall(keys.session_open(sid)), client.hgetall(keys.session_state(sid))
    if not opened and not state:
        raise ConfigError(f"no session {sid!r} (never opened, or its retention passed)")
    hidden = (b"checkpoint", b"open", b"token")
    return {text(k): text(v) for raw in (opened, state) for k, v in raw.items() if k not in hidden}


def _end(client: Any, keys: Keyspace, args: argparse.Namespace) -> int:
    sid = check_session_id(args.session)
    if _state(client, keys, sid).get("status") == "ended":
        raise ConfigError(f"session {sid!r} has ended already")
    last = client.xrevrange(keys.session_input(sid), count=1)
    seq = int(text(last[0][0]).split("-")[0]) if last else 0
    marker = EndOfSession(seq=seq, sent_at=time.time(), reason=args.reason)
    client.xadd(keys.session_input(sid), {"m": marker.encode()}, id=input_entry_id(seq))
    print(f"end marker appended to {sid} at seq {seq}; its owner commits the tail and ends it ({args.reason})")
    return 0


def _reannounce(client: Any, keys: Keyspace, args: argparse.Namespace) -> int:
    from worker.protocol.scripts import Scripts
    from worker.runtime.reconcile import Orphan, named_in_announcements, reannounce

    sid = check_session_id(args.session)
    state = _state(client, keys, sid)
    if state.get("status") == "ended":
        raise ConfigError(f"session {sid!r} has ended; nothing to re-announce")
    if sid in named_in_announcements(client, keys, [keys.shard_of(sid)]):
        raise ConfigError(f"session {sid!r} has an announcement entry (a live lease, or waiting); it is not an orphan")
    orphan = Orphan(sid, state.get("lease_entry", ""), state.get("reannounced_ms", ""))
    entry = reannounce(client, keys, Scripts(), orphan)
    if entry is None:
        raise ConfigError(f"session {sid!r} changed meanwhile (or was never announced); look again")
    print(f"session {sid} announced again ({entry}); a worker restores it from its last checkpoint")
    return 0


def _purge(client: Any, keys: Keyspace, args: argparse.Namespace) -> int:
    sid = check_session_id(args.session)
    status = _state(client, keys, sid).get("status")
    if status != "ended" and not args.force:
        raise ConfigError(f"session {sid!r} is {status or 'open'}; end it first, or purge it with --force")
    names = [*keys.session_keys(sid), keys.session_partials(sid)]
    removed = sum(int(client.delete(name)) for name in names) + int(client.delete(keys.forward_cursor(sid)))
    print(f"session {sid}: {removed} key(s) deleted (its copies in the shard streams age out with them)")
    return 0


def _drain(client: Any, keys: Keyspace, args: argparse.Namespace) -> int:
    from worker.runtime.models import CONTROL_MAXLEN

    if client.hget(keys.workers(), args.worker) is None:
        raise ConfigError(f"no live worker {args.worker!r}; `streamscribe models list` names them")
    client.xadd(keys.control(), {"drain": args.worker}, maxlen=CONTROL_MAXLEN, approximate=True)
    print(f"asked worker {args.worker} to drain: no new sessions; it finishes or hands over its own and stops")
    deadline = time.monotonic() + args.wait
    while args.wait > 0 and client.hget(keys.workers(), args.worker) is not None:
        if time.monotonic() > deadline:
            print(f"worker {args.worker} still runs after {args.wait:.0f} s")
            return 1
        time.sleep(0.2)
    if args.wait > 0:
        print(f"worker {args.worker} stopped")
    return 0


def _replay(client: Any, keys: Keyspace, args: argparse.Namespace) -> int:
    from producer.client import Producer
    from worker.errors import DecodeError
    from worker.protocol.messages import SessionOpen

    sid, new = check_session_id(args.session), check_session_id(args.new_session)
    status = _state(client, keys, sid).get("status")
    if status != "ended":
        raise ConfigError(f"session {sid!r} is {status or 'open'}; only an ended session is replayed")
    try:
        opened = SessionOpen.decode(client.hget(keys.session_open(sid), "open") or b"")
    except DecodeError as e:
        raise ConfigError(f"session {sid!r} has no usable open message ({e}); there is nothing to replay") from e
    entries = client.xrange(keys.session_input(sid))
    if entries and text(entries[0][0]) != input_entry_id(0):
        raise ConfigError(
            f"session {sid!r}: its input was trimmed as it was processed (it starts at entry {text(entries[0][0])}); "
            "only a session whose whole input is retained can be replayed"
        )
    asr = opened.asr
    writer = Producer(key_prefix=keys.prefix, shards=keys.shards, client=client).open(
        new,
        sample_rate=opened.sample_rate,
        encoding=opened.encoding,
        channels=opened.channels,
        language=asr.get("language"),
        model=asr.get("model"),
        backend=asr.get("backend"),
        min_chunk_size=asr.get("min_chunk_size"),
        metadata={**opened.metadata, "replay_of": sid},
        partials=opened.partials,
        tenant=opened.tenant or None,
    )
    target = keys.session_input(new)
    pipe = client.pipeline(transaction=False)
    for entry_id, fields in entries:  # entry for entry: what was rejected is rejected again
        pipe.xadd(target, fields, id=entry_id)
    pipe.execute()
    last = int(text(entries[-1][0]).split("-")[0]) if entries else 0
    ends = entries and _is_end(entries[-1][1])
    if not ends:  # it ended without an end marker (stalled, refused): end the replay after the input
        writer.append(last, EndOfSession(seq=last, sent_at=time.time(), reason="completed").encode())
    print(f"session {sid} replayed as {new}: {len(entries)} input entries; `streamscribe tail {new}` reads it")
    return 0


def _is_end(fields: dict[Any, Any]) -> bool:
    from worker.errors import DecodeError
    from worker.protocol.messages import decode_input

    try:
        return isinstance(decode_input(fields.get(b"m", b"")), EndOfSession)
    except DecodeError:
        return False


ACTIONS = {
    "sessions": _sessions,
    "waiting": _waiting,
    "dead-letters": _dead_letters,
    "end": _end,
    "reannounce": _reannounce,
    "purge": _purge,
    "drain": _drain,
    "replay": _replay,
}
