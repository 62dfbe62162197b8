"""One heavy model per (backend, model, device, compute type), shared by every session."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_models: dict[tuple[str, ...], Any] = {}
#: one lock per key, so a model loading in the background never blocks a session of another
_locks: dict[tuple[str, ...], threading.Lock] = {}
_lock = threading.Lock()


def shared_model(key: tuple[str, ...], factory: Callable[[], T]) -> T:
    """Return the cached model for ``key``, building it with ``factory`` the first time."""
    with _lock:
        if key in _models:
            return _models[key]
        key_lock = _locks.setdefault(key, threading.Lock())
    with key_lock:
        with _lock:
            if key in _models:
                return _models[key]
        model = built_in_own_thread(factory)
        with _lock:
            _models[key] = model
        return model


def built_in_own_thread(factory: Callable[[], T]) -> T:
    """``factory()`` run in a short-lived thread of its own, its result or its exception.

    Measured on the 2-core CPU of docs/benchmarks.md: a CTranslate2 Whisper model built in the
    thread that later runs inference decodes 15-30 % slower (3 x 12 s with beam 5: 5.5-7.3 s
    against 4.4-5.2 s), and the live worker's RTF was 0.72 against 0.40. Building every model in
    a thread that then exits gives every caller (worker loop, preload, simulate, benchmarks) the
    fast case, whichever thread asks first.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def build() -> None:
        try:
            outcome.append(factory())
        except BaseException as e:  # handed to the caller, as if it had called factory() itself
            failure.append(e)

    builder = threading.Thread(target=build, name="model-build", daemon=True)
    builder.start()
    builder.join()
    if failure:
        raise failure[0]
    return outcome[0]
