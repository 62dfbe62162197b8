"""The real speech corpus (benchmarks/speech, in the repo) and WER scoring, for tests and benchmarks."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path


def speech_dir() -> Path:
    """The corpus folder: ``$STREAMSCRIBE_SPEECH_DIR`` if set, else ``benchmarks/speech`` in the repo."""
    env = os.environ.get("STREAMSCRIBE_SPEECH_DIR")
    if env:
        return Path(env)
    # in the repo, so that a fresh clone runs the real-speech tests with nothing beside it
    return Path(__file__).resolve().parent / "speech"


@dataclass(frozen=True)
class Recording:
    path: Path
    seconds: float
    reference: str


def load_manifest(directory: Path | None = None) -> list[Recording]:
    directory = directory or speech_dir()
    with (directory / "manifest.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [Recording(directory / r["file"], float(r["seconds"]), r["reference_transcript"]) for r in rows]


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER (total errors / total reference words) after Whisper's English normaliser."""
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    refs = [norm(r) for r in references]
    hyps = [norm(h) for h in hypotheses]
    return jiwer.wer(refs, hyps)
