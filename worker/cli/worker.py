"""``streamscribe worker``: serve sessions from Redis until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time

from redis.exceptions import RedisError

from producer.common import add_tls_arguments
from worker import __version__
from worker.backends.registry import load_processor
from worker.cli.logs import tag_worker
from worker.metrics import MetricsServer, PrometheusObserver, worker_info
from worker.protocol.connection import masked
from worker.runtime.loop import Worker
from worker.runtime.stopping import StopRequests
from worker.settings import WorkerSettings

#: Waits between attempts to reach Redis at start: doubling from the first up to the cap.
CONNECT_RETRY_FIRST_SEC = 0.5
CONNECT_RETRY_MAX_SEC = 10.0

log = logging.getLogger(__name__)


#: What an optional flag's ``none`` parses to: the setting is None (a flag not given is None too).
NONE = object()


def _seconds_or_none(text: str) -> float | object:
    if text.strip().lower() == "none":
        return NONE
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a transcription worker (settings also from STREAMSCRIBE_* and .env)")
    p.add_argument("--redis-url", help="default redis://localhost:6379/0")
    p.add_argument("--metrics-port", type=int, help="default 9400; 0 picks a free port")
    p.add_argument("--metrics-host", help="default 0.0.0.0")
    p.add_argument("--max-sessions", type=int)
    p.add_argument("--max-batch", type=int, help="transcribe requests per backend call (default 64; 1: sequential)")
    p.add_argument(
        "--catch-up-step-sec",
        type=float,
        help="a session behind by a chunk or more is decoded in steps of up to this much audio, so the"
        " worker catches up (default 3; 0: one decode per chunk always, replays identical to the run)",
    )
    p.add_argument("--lease-ttl-sec", type=float)
    p.add_argument("--worker-id")
    p.add_argument("--key-prefix")
    p.add_argument("--shards", type=int)
    p.add_argument("--stall-timeout-sec", type=float)
    p.add_argument("--retention-sec", type=float)
    p.add_argument("--cluster", action=argparse.BooleanOptionalAction, default=None, help="default: detect")
    add_tls_arguments(p)
    p.add_argument("--allowed-backends", help="comma-separated backends sessions may ask for")
    p.add_argument("--allowed-models", help="comma-separated models sessions may ask for")
    p.add_argument(
        "--preload", help="comma-separated models (of --allowed-models) to load before taking sessions; see /readyz"
    )
    asr = p.add_argument_group("ASR defaults (STREAMSCRIBE_ASR__*)")
    asr.add_argument("--backend", help="default faster-whisper")
    asr.add_argument("--model", help="default base")
    asr.add_argument("--language", help="default en; auto detects")
    asr.add_argument("--device", help="auto, cpu or cuda[:N]")
    asr.add_argument("--compute-type", help="auto, int8, float16, int8_float16, ...")
    asr.add_argument("--min-chunk-size", type=float, help="seconds of new audio per iteration (default 1.0)")
    asr.add_argument("--beam-size", type=int, help="beam of the chunk decodes (default 5; 1 is greedy)")
    asr.add_argument("--final-beam-size", type=int, help="beam of the decodes at pauses (default 5)")
    asr.add_argument(
        "--commit-policy",
        choices=["agreement", "utterance"],
        help="agreement (default): commit as decodes agree, lowest latency; utterance: commit each"
        " utterance once at its end, closest to offline (chunk decodes then only feed partials)",
    )
    asr.add_argument(
        "--commit-deadline-sec",
        type=_seconds_or_none,
        help="agreement: commit a word once this much audio follows it, agreed or not (default 2.0:"
        " commit lag p95 2.8 s on the long 16 kHz calls; none: wait for agreement, a pause or the utterance end)",
    )
    asr.add_argument(
        "--committed-prefix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode each buffer as a continuation of its committed words (measured worse on the long"
        " 16 kHz calls with the default deadline, and on 8 kHz mu-law; default off)",
    )
    asr.add_argument(
        "--turn-context-sec",
        type=float,
        help="keep this much of the turns before an utterance in the buffer as context (default 10; a loaded"
        " worker drops it, see STREAMSCRIBE_ECONOMY_UTILISATION; 0: cut in the pause)",
    )
    asr.add_argument(
        "--channel-turn-context-sec",
        type=float,
        help="--turn-context-sec of each channel of a multichannel session (default 4: there the context is"
        " the speaker's own last turn, and the other party's words come through the conversation prompt)",
    )
    asr.add_argument(
        "--conversation-prompt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prompt each channel of a multichannel session with every channel's committed text in time"
        " order (default on: the customer channel of the long stereo calls 1.6 WER points better)",
    )
    p.add_argument("--burst", action="store_true", help="drain the waiting sessions, then exit")
    p.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    names = (
        "redis_url",
        "metrics_port",
        "metrics_host",
        "max_sessions",
        "max_batch",
        "catch_up_step_sec",
        "lease_ttl_sec",
        "worker_id",
        "key_prefix",
        "shards",
        "stall_timeout_sec",
        "retention_sec",
        "cluster",
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        "allowed_backends",
        "allowed_models",
        "preload",
    )
    settings = WorkerSettings.build(**{n: getattr(args, n) for n in names})
    asr_flags = {
        "backend": args.backend,
        "model": args.model,
        "lan": args.language,
        "device": args.device,
        "compute_type": args.compute_type,
        "min_chunk_size": args.min_chunk_size,
        "beam_size": args.beam_size,
        "final_beam_size": args.final_beam_size,
        "commit_policy": args.commit_policy,
        "commit_deadline_sec": args.commit_deadline_sec,
        "committed_prefix": args.committed_prefix,
        "turn_context_sec": args.turn_context_sec,
        "channel_turn_context_sec": args.channel_turn_context_sec,
        "conversation_prompt": args.conversation_prompt,
    }
    changes = {k: (None if v is NONE else v) for k, v in asr_flags.items() if v is not None}
    if not changes:
        return settings
    return settings.model_copy(update={"asr": settings.asr.replace(**changes)})


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.log_level is None:  # an explicit --log-level wins over the setting
        logging.getLogger().setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
    tag_worker(settings.worker_id)
    observer = PrometheusObserver()
    asr = settings.asr
    worker_info(
        observer.registry,
        version=__version__,
        backend=asr.backend,
        model=asr.model,
        device=asr.device,
        compute_type=asr.compute_type,
    )
    # before the worker exists, a signal stops the connecting and the preloading
    requests = StopRequests()
    preloaded = threading.Event()
    worker: Worker | None = None

    def healthy() -> bool:
        return worker is not None and worker.healthy()

    # /healthz answers 503 until the worker reached Redis, and from then on says what it says;
    # /readyz also waits for the preloaded models, and fails while the worker drains
    metrics = MetricsServer(
        observer.registry,
        healthy,
        settings.metrics_host,
        settings.metrics_port,
        ready=lambda: preloaded.is_set() and healthy() and worker is not None and not worker.draining,
    )
    metrics.start()

    def on_signal(signum: int, _frame: object) -> None:
        # requests only: a handler that sets an Event or logs can deadlock the main thread
        # (worker/runtime/stopping.py); the loop logs what it does about them
        if worker is not None and signum == signal.SIGTERM:
            # docker stop, a rolling update: finish what can finish, then hand the rest over
            # (a second SIGTERM, or SIGINT, hands over at once)
            worker.drain()
            return
        requests.stop()
        if worker is not None:
            worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker = _connected(settings, observer, requests)
        if worker is None:
            return 0
        preload(settings, requests)
        for name in settings.preload:
            worker.models.note_loaded(settings.asr.replace(model=name))
        preloaded.set()
        log.info("worker %s on %s, metrics on port %d", settings.worker_id, masked(settings.redis_url), metrics.port)
        print(f"streamscribe worker {settings.worker_id} ready; metrics on :{metrics.port}", flush=True)
        if requests.stopping:  # a signal while connecting
            worker.stop()
        worker.run(burst=args.burst)
    finally:
        metrics.stop()
    return 0


def preload(settings: WorkerSettings, requests: StopRequests) -> None:
    """Load each model of ``settings.preload`` into the shared model cache before any session is taken.

    A session that asks for a preloaded model later finds it in memory: its first chunk does not
    wait for weights to load, and a rollout (``/readyz``) waits for them instead.
    """
    for name in settings.preload:
        if requests.stopping:
            return
        started = time.monotonic()
        load_processor(settings.asr.replace(model=name))
        log.info("preloaded model %s in %.1f s", name, time.monotonic() - started)


def _connected(settings: WorkerSettings, observer: PrometheusObserver, requests: StopRequests) -> Worker | None:
    """A worker connected to Redis; while Redis cannot be reached, retry with back-off (None: stopped).

    A worker started before its Redis (compose, a rolling restart of both) waits for it instead of
    exiting with a traceback and leaving the restart policy to spin.
    """
    delay = CONNECT_RETRY_FIRST_SEC
    while not requests.stopping:
        try:
            return Worker(settings, observer=observer)
        except RedisError as e:
            log.warning(
                "Redis at %s cannot be reached (%s); trying again in %.1f s", masked(settings.redis_url), e, delay
            )
        requests.wait(delay)
        delay = min(delay * 2, CONNECT_RETRY_MAX_SEC)
    return None
