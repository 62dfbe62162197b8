"""``streamscribe tail``: print transcript events as the workers write them.

* ``tail SESSION``: one session from its first event (waiting for it to start) until it ends;
* ``tail --all``: every session, each line prefixed with the session id;
* ``tail --group NAME --consumer NAME``: every session, as a member of a consumer group that
  acknowledges what it printed and resumes after a restart where it stopped.

Lines read ``[00:01.20-00:03.40] ch0  text``, with ``  //`` after a segment that ends an
utterance; with ``--partials``, interim text reads ``[00:03.40-00:04.10] ch0 ~ text``.
``--json`` prints each event as one JSON object with its ``type`` and fields instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

from producer.common import add_connection_arguments, tls_from_args
from producer.consumer import TranscriptConsumer
from worker.errors import ConfigError
from worker.protocol.events import ErrorEvent, Event, PartialEvent, SegmentEvent, SessionEnded, SessionStarted


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tail", help="print a session's transcript (or every session's) as it is written")
    p.add_argument("session", nargs="?", help="the session id (or use --all / --group)")
    p.add_argument("--all", action="store_true", help="follow every session, from now")
    p.add_argument("--from-start", action="store_true", help="with --all: begin with the oldest retained event")
    p.add_argument("--group", help="read every session as this consumer group (acknowledges, resumes)")
    p.add_argument("--consumer", help="this reader's name in --group (reuse it to resume)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument(
        "--partials", action="store_true", help="with SESSION: also print interim hypotheses (partial events)"
    )
    p.add_argument("--idle-timeout", type=float, help="stop after this many seconds without an event")
    add_connection_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    modes = sum((bool(args.session), bool(args.all), bool(args.group)))
    if modes != 1:
        raise ConfigError("give a SESSION id, or --all, or --group NAME --consumer NAME (one of them)")
    if bool(args.group) != bool(args.consumer):
        raise ConfigError("--group and --consumer go together")
    if args.partials and not args.session:
        raise ConfigError("--partials follows one SESSION (partials stay in the session's own stream)")
    consumer = TranscriptConsumer(
        args.redis_url, key_prefix=args.key_prefix, shards=args.shards, cluster=args.cluster, tls=tls_from_args(args)
    )
    try:
        if args.session:
            events = consumer.session_events(args.session, idle_timeout=args.idle_timeout, partials=args.partials)
            ended = _print_all(((None, e) for e in events), args.json)
            return 0 if ended else 1
        if args.all:
            deliveries: Iterable = consumer.all_events(from_start=args.from_start, idle_timeout=args.idle_timeout)
        else:
            deliveries = consumer.group_events(args.group, args.consumer, idle_timeout=args.idle_timeout)
        _print_all(((d.session, d.event) for d in deliveries), args.json)
        return 0
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head); nothing left to say
        return 0
    finally:
        consumer.close()


def _print_all(events: Iterable[tuple[str | None, Event]], as_json: bool) -> bool:
    """Print each event as it comes; True when the last one printed ended its session."""
    ended = False
    for session, event in events:
        line = event_json(event) if as_json else format_event(event)
        if session is not None and not as_json:
            line = f"{session}  {line}"
        print(line, flush=True)
        ended = isinstance(event, SessionEnded)
    return ended


def event_json(event: Event) -> str:
    """``{"type": ..., <the event's fields>}`` on one line, words as objects (``docs/events.schema.json``)."""
    fields = {k: v for k, v in event.to_dict().items() if k != "v"}
    return json.dumps(fields, ensure_ascii=False)


def format_event(event: Event) -> str:
    """One readable line: a segment's time span, channel and text, or what happened."""
    if isinstance(event, SegmentEvent):
        end = "  //" if event.utterance_end else ""
        return f"[{clock(event.start)}-{clock(event.end)}] ch{event.channel}  {event.text}{end}"
    if isinstance(event, PartialEvent):
        return f"[{clock(event.start)}-{clock(event.end)}] ch{event.channel} ~ {event.text}"
    if isinstance(event, SessionStarted):
        return (
            f"-- session started: {event.channels} channel(s), {event.sample_rate} Hz {event.encoding}, "
            f"worker {event.worker}"
        )
    if isinstance(event, ErrorEvent):
        return f"!! {'fatal ' if event.fatal else ''}error {event.code}: {event.message}"
    totals = event.totals
    return (
        f"-- session ended ({event.reason}): {float(totals.get('audio_sec', 0)):.1f} s of audio, "
        f"{int(totals.get('segments', 0))} segment(s), {int(totals.get('errors', 0))} error(s)"
    )


def clock(seconds: float) -> str:
    """``mm:ss.cc`` (``h:mm:ss.cc`` past an hour), rounded to the centisecond."""
    centis = round(max(0.0, seconds) * 100)
    minutes, rest = divmod(centis, 6000)
    hours, minutes = divmod(minutes, 60)
    stamp = f"{minutes:02d}:{rest // 100:02d}.{rest % 100:02d}"
    return f"{hours}:{stamp}" if hours else stamp
