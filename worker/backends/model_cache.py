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
        model = factory()
        with _lock:
            _models[key] = model
        return model
