"""One heavy model per (backend, model, device, compute type), shared by every session."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_models: dict[tuple[str, ...], Any] = {}
_lock = threading.Lock()


def shared_model(key: tuple[str, ...], factory: Callable[[], T]) -> T:
    """Return the cached model for ``key``, building it with ``factory`` the first time."""
    with _lock:
        if key not in _models:
            _models[key] = factory()
        return _models[key]
