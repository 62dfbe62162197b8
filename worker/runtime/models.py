"""Models loaded ahead of sessions, fleet-wide: ``streamscribe models load NAME`` and ``models list``;
and the control stream that carries those commands (and ``streamscribe admin drain WORKER``).

The guide's ``POST /load_model`` loads a backend's model on a server; here a command on the
control stream asks every live worker to load an allow-listed model before its first session
needs it. Each worker loads it in a thread of its own, so the loop and the sessions it owns do not
stall, into the shared model cache that sessions then use. Every few seconds each worker writes
what it has loaded (and what it is loading, or failed to load) to the workers hash, which
``models list`` reads; a worker that stopped writing drops out of the list.

A session that asks for a model this worker has not loaded yet goes the same way
(:meth:`ModelControl.prepare`): the loop defers taking it, the load runs in the background, and
the session is taken once it is done. A first load (seconds to minutes for a large model read
from disk or a hub) never stalls the sessions the worker already serves, nor the lease keeper's
view of a live loop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from worker import __version__
from worker.asr.config import ASRConfig
from worker.backends.registry import load_processor
from worker.protocol.connection import text
from worker.protocol.keys import Keyspace
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: How often a worker reads the control stream, and how often it writes its entry.
POLL_INTERVAL_SEC = 1.0
PUBLISH_INTERVAL_SEC = 5.0
#: Entries of the control stream kept (commands are for live workers, not history).
CONTROL_MAXLEN = 1000
#: Longest model name a command may carry.
MAX_MODEL_CHARS = 256

#: How long the loop waits for a load it starts before deferring the session: a model already in
#: a loader's cache, or a small one, is taken at once; a slow load goes on in the background.
LOAD_WAIT_SEC = 0.5

#: What one model load covers: the loaders cache one model per backend, model, device and type.
ModelKey = tuple[str, str, str, str]


def model_key(config: ASRConfig) -> ModelKey:
    return (config.backend, config.model, config.device, config.compute_type)


class ModelControl:
    """One worker's side: commands read from the control stream, models loaded, its workers-hash entry."""

    def __init__(self, client: Any, keys: Keyspace, settings: WorkerSettings) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.loaded: set[str] = set()
        self.loading: set[str] = set()
        self.failed: dict[str, str] = {}
        #: loads done, running, and failed (until a deferred session takes the error), by key
        self._ready: set[ModelKey] = set()
        self._running: set[ModelKey] = set()
        self._errors: dict[ModelKey, str] = {}
        self._lock = threading.Lock()
        self._cursor = "0-0"
        self._next_poll = 0.0
        self._next_publish = 0.0
        #: called on a ``drain`` command naming this worker (``streamscribe admin drain``)
        self.on_drain: Callable[[], None] | None = None

    def start(self) -> None:
        """Commands sent from now on apply; earlier ones were for the workers live then."""
        last = self.client.xrevrange(self.keys.control(), count=1)
        self._cursor = text(last[0][0]) if last else "0-0"

    def note_loaded(self, config: ASRConfig) -> None:
        """A processor of ``config`` was built (a preload, a session): its model is in memory."""
        with self._lock:
            self.loaded.add(config.model)
            self._ready.add(model_key(config))

    def prepare(self, config: ASRConfig) -> bool:
        """True when a session of ``config`` can be built now without loading a model in the loop.

        Otherwise its model's load starts in the background (once per key), and this returns
        True when it is done: then :meth:`load_error` says whether it failed.
        """
        key = model_key(config)
        with self._lock:
            if key in self._ready or key in self._errors:
                return True
            if key in self._running:
                return False
            self._running.add(key)
            self.loading.add(config.model)
            self.failed.pop(config.model, None)
        loader = threading.Thread(target=self._load, args=(config,), name=f"load-{config.model}", daemon=True)
        loader.start()
        loader.join(LOAD_WAIT_SEC)
        return not loader.is_alive()

    def load_error(self, config: ASRConfig) -> str | None:
        """Why the background load of ``config``'s model failed, if it did; the next session retries."""
        with self._lock:
            return self._errors.pop(model_key(config), None)

    def poll(self) -> None:
        """Act on new commands, and rewrite this worker's entry when it is due."""
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + POLL_INTERVAL_SEC
            for entry_id, fields in self.client.xrange(self.keys.control(), f"({self._cursor}", "+", count=20):
                self._cursor = text(entry_id)
                if fields.get(b"drain") == self.settings.worker_id.encode() and self.on_drain is not None:
                    self.on_drain()
                raw = fields.get(b"load", b"")
                # a model name is text; anything else on the stream is not a command of ours
                model = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
                if model and len(model) <= MAX_MODEL_CHARS and "\ufffd" not in model:
                    self.request(model)
        if now >= self._next_publish:
            self._next_publish = now + PUBLISH_INTERVAL_SEC
            self.publish()

    def request(self, model: str) -> None:
        """Load ``model`` (with the worker's ASR defaults) in the background, if it is allowed."""
        if model not in self.settings.allowed_models:
            with self._lock:
                self.failed[model] = f"not in allowed_models ({', '.join(self.settings.allowed_models)})"
            log.warning("asked to load model %r, which this worker does not allow", model)
            return
        self.prepare(self.settings.asr.replace(model=model))

    def _load(self, config: ASRConfig) -> None:
        key, model = model_key(config), config.model
        started = time.monotonic()
        try:
            load_processor(config)
        except Exception as e:  # a model that cannot load is reported, never fatal to the worker
            log.warning("loading model %s failed: %s", model, e)
            with self._lock:
                self._running.discard(key)
                self.loading.discard(model)
                self.failed[model] = str(e)[:200]
                self._errors[key] = str(e)
            return
        with self._lock:
            self._running.discard(key)
            self.loading.discard(model)
            self.loaded.add(model)
            self._ready.add(key)
        log.info("loaded model %s in %.1f s, outside the loop", model, time.monotonic() - started)
        self._next_publish = 0.0  # say so at the next poll

    def publish(self) -> None:
        asr = self.settings.asr
        with self._lock:
            entry = {
                "models": sorted(self.loaded),
                "loading": sorted(self.loading),
                "failed": dict(self.failed),
                "backend": asr.backend,
                "device": asr.device,
                "version": __version__,
                "updated_ms": int(time.time() * 1000),
            }
        self.client.hset(self.keys.workers(), self.settings.worker_id, json.dumps(entry))

    def forget(self) -> None:
        """This worker stops: its entry goes."""
        self.client.hdel(self.keys.workers(), self.settings.worker_id)
