"""``MODEL_LOADERS``: backend name -> :class:`~worker.asr.contracts.ModelLoader`.

Two ways to add a backend, as the guide says:

* add an entry to ``MODEL_LOADERS`` (the guide's way), or
* declare an entry point in the group ``streamscribe.loaders`` in your own package::

      [project.entry-points."streamscribe.loaders"]
      my_backend = "my_package.loader:MyLoader"

  The entry point may name a loader class (instantiated without arguments) or an instance.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from worker.asr.config import ASRConfig
from worker.asr.contracts import ASRProcessor, ModelLoader
from worker.backends.faster_whisper import FasterWhisperLoader
from worker.backends.synthetic import SyntheticLoader
from worker.backends.whisper_timestamped import WhisperTimestampedLoader
from worker.errors import ConfigError, UnknownBackendError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "streamscribe.loaders"

MODEL_LOADERS: dict[str, ModelLoader] = {
    "faster-whisper": FasterWhisperLoader(),
    "whisper_timestamped": WhisperTimestampedLoader(),
    "synthetic": SyntheticLoader(),
}


def _entry_point_loaders() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    return sorted(set(MODEL_LOADERS) | set(_entry_point_loaders()))


def get_loader(name: str) -> ModelLoader:
    """The loader registered as ``name``; entry points are looked up on first use."""
    if name in MODEL_LOADERS:
        return MODEL_LOADERS[name]
    ep = _entry_point_loaders().get(name)
    if ep is None:
        raise UnknownBackendError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    try:
        target = ep.load()
    except Exception as e:
        raise ConfigError(f"backend {name!r}: cannot import entry point {ep.value!r}: {e}") from e
    loader = target() if isinstance(target, type) else target
    if not isinstance(loader, ModelLoader):
        raise ConfigError(f"backend {name!r}: entry point {ep.value!r} has no load(config) method")
    MODEL_LOADERS[name] = loader
    return loader


def load_processor(config: ASRConfig) -> tuple[ASRProcessor, dict[str, Any]]:
    """Create a processor for ``config`` with the loader its ``backend`` names."""
    processor, metadata = get_loader(config.backend).load(config)
    if not isinstance(processor, ASRProcessor):
        raise ConfigError(f"backend {config.backend!r} returned {type(processor).__name__}, not an ASRProcessor")
    return processor, dict(metadata or {})
