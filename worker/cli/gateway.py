"""``streamscribe gateway``: bridge telephony audio into sessions, one session per call.

``--protocol twilio`` (the default) accepts Twilio Media Streams WebSockets, ``audio-fork``
FreeSWITCH mod_audio_fork WebSockets, ``audiohook`` Genesys Cloud AudioHook WebSockets, and
``audiosocket`` Asterisk AudioSocket TCP connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Any

from producer.audiosocket import AudioSocketGateway
from producer.common import add_connection_arguments, tls_from_args
from worker.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="bridge telephony audio (Twilio, FreeSWITCH, Asterisk) to sessions")
    p.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="twilio",
        help="twilio: Media Streams (WebSocket); audio-fork: FreeSWITCH mod_audio_fork (WebSocket);"
        " audiohook: Genesys Cloud AudioHook (WebSocket); audiosocket: Asterisk AudioSocket (TCP)",
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, help="default 8765 (WebSocket), 9092 (audiosocket); 0 picks a free port")
    p.add_argument("--language", help="the sessions' language (a 'language' custom parameter overrides it)")
    p.add_argument("--tenant", help="the sessions' tenant, for the workers' per-tenant quotas")
    p.add_argument("--session-id-from", choices=["call", "stream"], default="call", help="twilio: callSid or streamSid")
    p.add_argument("--session-prefix", default="", help="put before every session id")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per chunk written (a multiple of 20 ms)")
    p.add_argument("--max-lag-ms", type=int, default=200, help="twilio: fill a track this far behind with silence")
    p.add_argument(
        "--max-connections", type=int, default=1000, help="twilio, audiosocket: refuse connections past this"
    )
    p.add_argument(
        "--metrics-port", type=int, default=9401, help="/metrics and /healthz (default 9401; 0: a free port)"
    )
    p.add_argument("--metrics-host", default="0.0.0.0")
    p.add_argument("--sample-rate", default="8k", help="audio-fork: the sampling rate of uuid_audio_fork (8k, 16k)")
    p.add_argument(
        "--mix-type", choices=["mono", "mixed", "stereo"], default="mono", help="audio-fork: the mix type it sends"
    )
    p.add_argument(
        "--twilio-auth-token",
        help=f"twilio: check X-Twilio-Signature with this auth token (default ${TWILIO_TOKEN_ENV})",
    )
    p.add_argument("--public-url", help="twilio: the <Stream url> Twilio connects to (what it signs)")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="accept unauthenticated callers: twilio without signatures, audio-fork without --basic-auth, and"
        " audiosocket (no authentication in its protocol): only on a network only the PBX reaches, or behind"
        " something that authenticates",
    )
    p.add_argument(
        "--basic-auth",
        help=f"audio-fork: USER:PASSWORD that mod_audio_fork sends (MOD_AUDIO_BASIC_AUTH_*; also ${BASIC_AUTH_ENV})",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help=f"audiohook: an accepted X-API-KEY (repeatable; also ${API_KEYS_ENV}, comma-separated)",
    )
    add_connection_arguments(p)
    p.set_defaults(run=run)


#: Protocol -> its default port.
PROTOCOLS = {"twilio": 8765, "audio-fork": 8765, "audiohook": 8765, "audiosocket": 9092}
#: The environment variable with the AudioHook API keys (kept out of the process list).
API_KEYS_ENV = "STREAMSCRIBE_GATEWAY_API_KEYS"
#: The environment variable with the Twilio auth token.
TWILIO_TOKEN_ENV = "STREAMSCRIBE_TWILIO_AUTH_TOKEN"
#: The environment variable with the audio-fork basic-auth credentials (USER:PASSWORD).
BASIC_AUTH_ENV = "STREAMSCRIBE_GATEWAY_BASIC_AUTH"


def run(args: argparse.Namespace) -> int:
    if args.chunk_ms < 20 or args.chunk_ms % 20:
        raise ConfigError("--chunk-ms must be a positive multiple of 20")
    _check_protocol_options(args)
    try:
        import prometheus_client  # noqa: F401
    except ImportError as e:
        raise ConfigError("the gateway's /metrics needs prometheus-client: pip install 'streamscribe[gateway]'") from e
    if args.protocol != "audiosocket":
        try:
            import websockets  # noqa: F401
        except ImportError as e:
            raise ConfigError("the gateway needs the websockets package: pip install 'streamscribe[gateway]'") from e
    asyncio.run(_serve(args))
    return 0


def _check_protocol_options(args: argparse.Namespace) -> None:
    """Each protocol's options, and its authentication: no gateway starts open unless told to."""
    if args.protocol == "audio-fork":
        from producer.audiofork import parse_rate

        try:
            args.sample_rate = parse_rate(args.sample_rate)
        except ValueError as e:
            raise ConfigError(f"--sample-rate: {e}") from e
        args.basic_auth = args.basic_auth or os.environ.get(BASIC_AUTH_ENV) or None
        if args.basic_auth is not None and ":" not in args.basic_auth:
            raise ConfigError("--basic-auth is USER:PASSWORD")
        if args.basic_auth is None and not args.insecure_no_auth:
            raise ConfigError(
                f"the audio-fork gateway checks the basic auth mod_audio_fork sends: give --basic-auth USER:PASSWORD "
                f"(or ${BASIC_AUTH_ENV}), or --insecure-no-auth when something in front authenticates FreeSWITCH"
            )
    if args.protocol == "audiosocket" and not args.insecure_no_auth:
        raise ConfigError(
            "AudioSocket has no authentication: anyone who reaches the port can open calls. Run it on a network "
            "only the PBX reaches and say so with --insecure-no-auth"
        )
    if args.protocol == "twilio":
        args.twilio_auth_token = args.twilio_auth_token or os.environ.get(TWILIO_TOKEN_ENV) or None
        if args.twilio_auth_token is None and not args.insecure_no_auth:
            raise ConfigError(
                f"the Twilio gateway checks X-Twilio-Signature: give --twilio-auth-token (or ${TWILIO_TOKEN_ENV}) "
                "and --public-url, or --insecure-no-auth when something in front authenticates Twilio"
            )
        if args.twilio_auth_token is not None and not args.public_url:
            raise ConfigError("--twilio-auth-token needs --public-url, the <Stream url> that Twilio signs")
    if args.protocol == "audiohook":
        args.api_key = [*args.api_key, *(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())]
        if not args.api_key:
            raise ConfigError(f"audiohook needs the API keys Genesys sends: --api-key KEY or ${API_KEYS_ENV}")


async def _serve(args: argparse.Namespace) -> None:
    from producer.aio import AsyncProducer
    from producer.gateway_metrics import gateway_registry
    from worker.metrics import MetricsServer

    producer = await AsyncProducer.connect(
        args.redis_url, key_prefix=args.key_prefix, shards=args.shards, cluster=args.cluster, tls=tls_from_args(args)
    )
    gateway, scheme = _gateway(args, producer)
    server = await gateway.serve(args.host, PROTOCOLS[args.protocol] if args.port is None else args.port)
    redis_ok = asyncio.Event()
    redis_ok.set()  # it answered the connect above
    # /healthz: listening, and Redis answered a PING within the last checks
    metrics = MetricsServer(
        gateway_registry(args.protocol, gateway.stats),
        lambda: redis_ok.is_set() and server.is_serving(),
        args.metrics_host,
        args.metrics_port,
    ).start()
    bound = server.sockets[0].getsockname()[1]
    where = f"{scheme}://{args.host}:{bound}"
    print(f"streamscribe gateway ({args.protocol}), metrics on :{metrics.port}, listening on {where}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    pinger = asyncio.create_task(_watch_redis(producer, redis_ok))
    try:
        await stop.wait()
    finally:
        pinger.cancel()
        # open calls end now; their sessions get their end marker
        if isinstance(gateway, AudioSocketGateway):
            await gateway.aclose()
        else:
            server.close()
            await server.wait_closed()
        metrics.stop()
        await producer.aclose()


async def _watch_redis(producer: Any, healthy: asyncio.Event, every_sec: float = 5.0) -> None:
    """Keep ``healthy`` set while Redis answers a PING."""
    while True:
        await asyncio.sleep(every_sec)
        try:
            await asyncio.wait_for(producer.client.ping(), every_sec)
            healthy.set()
        except Exception:  # any failure to answer is "unhealthy"; the next PING may recover
            healthy.clear()


def _gateway(args: argparse.Namespace, producer: Any) -> tuple[Any, str]:
    """The protocol's gateway, and the URL scheme it listens on."""
    if args.protocol == "audiosocket":
        return (
            AudioSocketGateway(
                producer,
                language=args.language,
                tenant=args.tenant,
                session_prefix=args.session_prefix,
                chunk_ms=args.chunk_ms,
                max_connections=args.max_connections,
            ),
            "tcp",
        )
    if args.protocol == "audiohook":
        from producer.audiohook import AudioHookGateway

        gateway: Any = AudioHookGateway(
            producer,
            api_keys=tuple(args.api_key),
            language=args.language,
            tenant=args.tenant,
            session_prefix=args.session_prefix,
            chunk_ms=args.chunk_ms,
        )
    elif args.protocol == "audio-fork":
        from producer.audiofork import AudioForkGateway

        gateway = AudioForkGateway(
            producer,
            sample_rate=args.sample_rate,
            mix_type=args.mix_type,
            basic_auth=args.basic_auth,
            language=args.language,
            tenant=args.tenant,
            session_prefix=args.session_prefix,
            chunk_ms=args.chunk_ms,
        )
    else:
        from producer.gateway import FRAME_MS, TwilioGateway

        gateway = TwilioGateway(
            producer,
            language=args.language,
            tenant=args.tenant,
            session_id_from=args.session_id_from,
            session_prefix=args.session_prefix,
            frames_per_chunk=args.chunk_ms // FRAME_MS,
            max_lag_ms=args.max_lag_ms,
            auth_token=args.twilio_auth_token,
            public_url=args.public_url,
            max_connections=args.max_connections,
        )
    return gateway, "ws"
