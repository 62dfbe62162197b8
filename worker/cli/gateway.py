"""``streamscribe gateway``: accept Twilio Media Streams WebSockets, one session per call."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from producer.common import add_connection_arguments
from worker.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="bridge Twilio Media Streams (WebSocket) to sessions")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8765, help="default 8765; 0 picks a free port")
    p.add_argument("--language", help="the sessions' language (a 'language' custom parameter overrides it)")
    p.add_argument("--session-id-from", choices=["call", "stream"], default="call", help="callSid or streamSid")
    p.add_argument("--session-prefix", default="", help="put before every session id")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per chunk written (a multiple of 20 ms)")
    p.add_argument("--max-lag-ms", type=int, default=200, help="fill a track this far behind with silence")
    add_connection_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.chunk_ms < 20 or args.chunk_ms % 20:
        raise ConfigError("--chunk-ms must be a positive multiple of 20")
    try:
        import websockets  # noqa: F401
    except ImportError as e:
        raise ConfigError("the gateway needs the websockets package: pip install 'streamscribe[gateway]'") from e
    asyncio.run(_serve(args))
    return 0


async def _serve(args: argparse.Namespace) -> None:
    from producer.aio import AsyncProducer
    from producer.gateway import FRAME_MS, TwilioGateway

    producer = await AsyncProducer.connect(
        args.redis_url, key_prefix=args.key_prefix, shards=args.shards, cluster=args.cluster
    )
    gateway = TwilioGateway(
        producer,
        language=args.language,
        session_id_from=args.session_id_from,
        session_prefix=args.session_prefix,
        frames_per_chunk=args.chunk_ms // FRAME_MS,
        max_lag_ms=args.max_lag_ms,
    )
    server = await gateway.serve(args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"streamscribe gateway listening on ws://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()  # open calls end now; their sessions get their end marker
        await server.wait_closed()
        await producer.aclose()
