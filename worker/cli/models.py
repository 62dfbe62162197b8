"""``streamscribe models``: load a model on every live worker ahead of its sessions, and list what each has.

streamscribe models load small [--wait 120]   every live worker loads it (if it allows it)
streamscribe models list [--json]             each live worker's loaded, loading and failed models
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from producer.common import add_connection_arguments, connect_from_args
from worker.protocol.connection import text
from worker.protocol.keys import Keyspace

#: A worker whose entry is older than this is gone (entries are rewritten every 5 s).
LIVE_SEC = 20.0
CONTROL_MAXLEN = 1000


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="load a model on every live worker; list what each has loaded")
    actions = p.add_subparsers(dest="action", required=True)
    load = actions.add_parser("load", help="every live worker loads NAME (an allowed model) in the background")
    load.add_argument("name")
    load.add_argument("--wait", type=float, default=0.0, help="wait this long for every live worker to have it")
    listing = actions.add_parser("list", help="each live worker's models")
    listing.add_argument("--json", action="store_true")
    for action in (load, listing):
        add_connection_arguments(action)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    client, keys = connect_from_args(args)
    try:
        if args.action == "load":
            return _load(client, keys, args)
        return _list(client, keys, args)
    finally:
        client.close()


def live_workers(client: Any, keys: Keyspace) -> dict[str, dict[str, Any]]:
    now_ms = time.time() * 1000
    workers = {text(k): json.loads(v) for k, v in client.hgetall(keys.workers()).items()}
    return {w: e for w, e in workers.items() if now_ms - float(e.get("updated_ms", 0)) < LIVE_SEC * 1000}


def _load(client: Any, keys: Keyspace, args: argparse.Namespace) -> int:
    client.xadd(keys.control(), {"load": args.name}, maxlen=CONTROL_MAXLEN, approximate=True)
    print(f"asked every live worker to load {args.name}")
    deadline = time.monotonic() + args.wait
    while args.wait > 0:
        workers = live_workers(client, keys)
        pending = [w for w, e in workers.items() if args.name not in e["models"] and args.name not in e["failed"]]
        if not pending:
            failed = {w: e["failed"][args.name] for w, e in workers.items() if args.name in e["failed"]}
            for worker, why in failed.items():
                print(f"{worker}: not loaded: {why}")
            print(f"{len(workers) - len(failed)} of {len(workers)} live worker(s) have {args.name}")
            return 1 if failed else 0
        if time.monotonic() > deadline:
            print(f"still loading on {len(pending)} worker(s) after {args.wait:.0f} s: {', '.join(sorted(pending))}")
            return 1
        time.sleep(0.5)
    return 0


def _list(client: Any, keys: Keyspace, args: argparse.Namespace) -> int:
    workers = live_workers(client, keys)
    for worker, entry in sorted(workers.items()):
        if args.json:
            print(json.dumps({"worker": worker, **entry}))
            continue
        loading = f"  loading: {', '.join(entry['loading'])}" if entry["loading"] else ""
        failed = f"  failed: {', '.join(entry['failed'])}" if entry["failed"] else ""
        print(
            f"{worker:40s} {entry['backend']}/{entry['device']}  {', '.join(entry['models']) or '-'}{loading}{failed}"
        )
    return 0
