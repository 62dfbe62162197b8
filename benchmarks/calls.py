"""Synthetic two-party call-centre calls for the long-call evaluation, built deterministically.

    from benchmarks.calls import build_calls
    calls = build_calls("ci")       # 4 calls, about 4 minutes; "smoke": one 40 s call; "full"

Each call is planned first (``benchmarks.call_text``: every word, pause and overlap from a
fixed seed), then synthesised with espeak-ng, one voice and speed per party, mixed with seeded
line hiss and written as a 16 kHz mono mix, a 16 kHz stereo file (agent on channel 0,
customer on channel 1) and an 8 kHz G.711 μ-law mix. There is no dither and no randomness
outside the seeds, so the same tools give the same bytes on every run. Files are cached under
``cache_dir`` (default ``$STREAMSCRIBE_CALLS_DIR`` or ``~/.cache/streamscribe/calls/<key>``,
where the key hashes the generator version and the espeak-ng and soxr versions) and rebuilt
when missing. A few calls of the full set give some customer turns to real recordings from
``benchmarks/speech``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from benchmarks.call_audio import (
    RATE,
    espeak_binary,
    set_level,
    synthesise,
    tool_versions,
    trim_silence,
    write_ulaw_wav,
    write_wav,
)
from benchmarks.call_text import AGENT, CUSTOMER, PlannedTurn, plan_dialogue, turn_seconds
from benchmarks.corpus import load_manifest, speech_dir

#: Bump when anything changes what a call says or sounds like: it renames every cached file.
GENERATOR_VERSION = "3"
SUBSETS = ("smoke", "ci", "full")

# (espeak-ng voice, words per minute); the two parties of a call never share a voice
AGENT_VOICES = [("en-us+m3", 160), ("en-gb+f3", 145), ("en-us+f2", 150), ("en-gb-x-rp+m1", 165), ("en-us+m7", 155)]
CUSTOMER_VOICES = [("en-gb+f3", 145), ("en-us+m3", 160), ("en-gb+m5", 170), ("en-us+f4", 140), ("en-gb+f2", 150)]
# real recordings whose references hold only plain words, for the customer's side of a few calls
REAL_CLIPS = ["01_", "04_", "07_", "08_", "12_", "13_", "14_", "15_", "16_", "17_"]


@dataclass(frozen=True)
class Turn:
    """A voiced stretch of one party: ``speaker`` 0 is the agent, 1 the customer; seconds."""

    speaker: int
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Call:
    """One generated call: its audio files, references and timings.

    ``reference`` is the whole call's words in time order, at phrase level: a back-channel
    said during the other party's turn sits between that turn's phrases. ``turns`` are the
    parties' turns and back-channels in start order; a turn spans its short inner pauses
    (0.25-0.35 s). ``phrases`` are the pieces between those pauses, each a :class:`Turn`.
    """

    name: str
    seconds: float
    mix16k: Path
    stereo16k: Path
    ulaw8k: Path
    reference: str
    channel_references: tuple[str, str]
    turns: tuple[Turn, ...]
    phrases: tuple[Turn, ...] = field(default=())


@dataclass(frozen=True)
class CallSpec:
    """What to generate: a seed, a target length, the two voices, and real clips to include."""

    name: str
    seed: int
    target_seconds: float
    agent_voice: tuple[str, int]
    customer_voice: tuple[str, int]
    clips: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallPlan:
    """A call before synthesis: enough to count its words and estimate its length."""

    spec: CallSpec
    turns: tuple[PlannedTurn, ...]
    words: int
    estimated_seconds: float


def _spec(name: str, seed: int, seconds: float, clips: int = 0) -> CallSpec:
    r = random.Random(seed)
    agent = r.choice(AGENT_VOICES)
    customer = r.choice([v for v in CUSTOMER_VOICES if v[0] != agent[0]])
    return CallSpec(name, seed, seconds, agent, customer, tuple(r.sample(REAL_CLIPS, clips)))


def call_specs(subset: str = "full") -> list[CallSpec]:
    """The calls of ``subset``: smoke (one 40 s call) ⊂ full, ci (30, 40, 60, 90 s) ⊂ full."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}: choose one of {', '.join(SUBSETS)}")
    smoke = [_spec("smoke-40s", 1, 40)]
    ci = [_spec("ci-30s", 2, 30), _spec("ci-40s", 3, 40), _spec("ci-60s", 4, 60), _spec("ci-90s", 5, 82, clips=1)]
    if subset == "smoke":
        return smoke
    if subset == "ci":
        return ci
    lengths = random.Random(13)
    more = [_spec("long-12min", 6, 720, clips=2)]
    for i in range(20):
        more.append(_spec(f"call-{i + 1:02d}", 100 + i, round(lengths.uniform(30, 330)), clips=2 if i % 4 == 3 else 0))
    return smoke + ci + more


@cache
def _clip_table() -> dict[str, tuple[Path, str, float]]:
    """Clip prefix -> (path, reference, seconds) from the in-repo speech manifest."""
    table = {}
    for rec in load_manifest(speech_dir()):
        prefix = next((p for p in REAL_CLIPS if rec.path.name.startswith(p)), None)
        if prefix:
            table[prefix] = (rec.path, rec.reference, rec.seconds)
    return table


def plan_call(spec: CallSpec) -> CallPlan:
    """Plan ``spec``'s words and timing (no audio): deterministic in the spec alone."""
    clips = tuple((p, _clip_table()[p][1], _clip_table()[p][2]) for p in spec.clips)
    wpm = (spec.agent_voice[1], spec.customer_voice[1])
    turns = tuple(plan_dialogue(spec.seed, spec.target_seconds, wpm, clips))
    words = sum(len(p.split()) for t in turns for p in t.pieces)
    words += sum(len(t.backchannel[1].split()) for t in turns if t.backchannel)
    seconds = sum(turn_seconds(t, wpm, {p: s for p, _, s in clips}) for t in turns) + 0.75
    return CallPlan(spec, turns, words, round(seconds, 2))


def plan_calls(subset: str = "full") -> list[CallPlan]:
    return [plan_call(s) for s in call_specs(subset)]


def default_cache_dir() -> Path:
    env = os.environ.get("STREAMSCRIBE_CALLS_DIR")
    if env:
        return Path(env)
    key = hashlib.sha256(f"{GENERATOR_VERSION}|{tool_versions()}".encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "streamscribe" / "calls" / key


@dataclass
class _Track:
    """Voiced pieces placed on the two channels, in samples, while a call is laid out."""

    placed: list[tuple[int, int, np.ndarray, str]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    last_end: list[int] = field(default_factory=lambda: [0, 0])

    def put(self, speaker: int, start: int, audio: np.ndarray, text: str) -> int:
        self.placed.append((speaker, start, audio, text))
        self.last_end[speaker] = max(self.last_end[speaker], start + audio.size)
        return start + audio.size


def _samples(seconds: float) -> int:
    return round(seconds * RATE)


def _voice_audio(plan: CallPlan, levels: tuple[float, float], pool: ThreadPoolExecutor) -> dict:
    """Every distinct (speaker, text) of the call synthesised once, espeak-ng processes in parallel."""
    voices = (plan.spec.agent_voice, plan.spec.customer_voice)
    keys: dict[tuple[int, str], None] = {}
    for t in plan.turns:
        if not t.clip:
            keys.update({(t.speaker, p): None for p in t.pieces})
        if t.backchannel:
            keys[(1 - t.speaker, t.backchannel[1])] = None

    def run(key: tuple[int, str]) -> np.ndarray:
        voice, wpm = voices[key[0]]
        return set_level(synthesise(key[1], voice, wpm), levels[key[0]])

    return dict(zip(keys, pool.map(run, keys), strict=True))


def _lay_out(plan: CallPlan, audio: dict, levels: tuple[float, float]) -> _Track:
    """Place the turns on the timeline: pauses from the plan, never a party over itself."""
    from worker.asr.audio import decode_file

    track, prev_end = _Track(), 0
    for t in plan.turns:
        start = max(prev_end + _samples(t.gap), track.last_end[t.speaker] + _samples(0.2), 0)
        if t.clip:
            path, reference, _ = _clip_table()[t.clip]
            pieces = [(reference, set_level(trim_silence(decode_file(path), 0.005), levels[CUSTOMER]))]
        else:
            pieces = [(p, audio[(t.speaker, p)]) for p in t.pieces]
        pos, ends = start, []
        for k, (text, a) in enumerate(pieces):
            ends.append(track.put(t.speaker, pos, a, text))
            pos = ends[-1] + (_samples(t.pauses[k]) if k < len(t.pauses) else 0)
        track.turns.append(Turn(t.speaker, start / RATE, ends[-1] / RATE, " ".join(x for x, _ in pieces)))
        if t.backchannel:
            after, text, lead = t.backchannel
            other = 1 - t.speaker
            b_start = max(ends[after] - _samples(lead), track.last_end[other] + _samples(0.2))
            b_end = track.put(other, b_start, audio[(other, text)], text)
            track.turns.append(Turn(other, b_start / RATE, b_end / RATE, text))
        prev_end = ends[-1]
    return track


def _render(plan: CallPlan, folder: Path, pool: ThreadPoolExecutor) -> None:
    """Synthesise, mix and write one call's three audio files and its ``call.json``."""
    rng = np.random.default_rng(plan.spec.seed)
    levels = (float(rng.uniform(-22, -18)), float(rng.uniform(-24, -18)))  # speech RMS in dBFS
    hiss_db = float(rng.uniform(-50, -45))
    track = _lay_out(plan, _voice_audio(plan, levels, pool), levels)
    total = max(s + a.size for _, s, a, _ in track.placed) + _samples(float(rng.uniform(0.5, 1.0)))
    speech = np.zeros((2, total), np.float32)
    for speaker, start, a, _ in track.placed:
        speech[speaker, start : start + a.size] += a
    # line hiss: independent seeded white noise on each channel and on the mix
    hiss = (rng.standard_normal((3, total)) * 10 ** (hiss_db / 20)).astype(np.float32)
    stereo, mix = speech + hiss[:2], speech.sum(axis=0) + hiss[2]
    peak = max(float(np.abs(stereo).max()), float(np.abs(mix).max()))
    if peak > 0.98:  # overlapping speech may add up past full scale: scale, never clip
        stereo, mix = stereo * (0.98 / peak), mix * (0.98 / peak)
    write_wav(folder / "mix16k.wav", mix, RATE)
    write_wav(folder / "stereo16k.wav", stereo.T, RATE)
    write_ulaw_wav(folder / "ulaw8k.wav", mix)

    def as_turn(speaker: int, start: int, a: np.ndarray, text: str) -> list:
        return [speaker, round(start / RATE, 4), round((start + a.size) / RATE, 4), text]

    phrases = sorted((as_turn(*p) for p in track.placed), key=lambda p: (p[1], p[0]))
    meta = {
        "name": plan.spec.name,
        "seconds": total / RATE,  # exact: samples / 16000
        "reference": " ".join(p[3] for p in phrases),
        "channel_references": [" ".join(p[3] for p in phrases if p[0] == ch) for ch in (AGENT, CUSTOMER)],
        "turns": sorted(
            ([t.speaker, round(t.start, 4), round(t.end, 4), t.text] for t in track.turns), key=lambda t: (t[1], t[0])
        ),
        "phrases": phrases,
        "spec": asdict(plan.spec),
        "levels_dbfs": {"agent": round(levels[0], 2), "customer": round(levels[1], 2), "hiss": round(hiss_db, 2)},
        "generator": GENERATOR_VERSION,
        "tools": tool_versions(),
    }
    (folder / "call.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _load(folder: Path) -> Call:
    meta = json.loads((folder / "call.json").read_text())
    return Call(
        name=meta["name"],
        seconds=meta["seconds"],
        mix16k=folder / "mix16k.wav",
        stereo16k=folder / "stereo16k.wav",
        ulaw8k=folder / "ulaw8k.wav",
        reference=meta["reference"],
        channel_references=tuple(meta["channel_references"]),
        turns=tuple(Turn(*t) for t in meta["turns"]),
        phrases=tuple(Turn(*p) for p in meta["phrases"]),
    )


def call_folder(plan: CallPlan, root: Path) -> Path:
    """Where ``plan``'s files live: its name and a hash of everything that shapes its audio."""
    recipe = [GENERATOR_VERSION, tool_versions(), asdict(plan.spec), [asdict(t) for t in plan.turns]]
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return root / f"{plan.spec.name}-{key}"


def build_calls(subset: str = "full", cache_dir: Path | None = None) -> list[Call]:
    """The calls of ``subset`` ("smoke", "ci" or "full"), generated into ``cache_dir`` if missing.

    Raises :class:`~benchmarks.call_audio.EspeakNotFoundError` when espeak-ng is not installed.
    """
    espeak_binary()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    calls = []
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for plan in plan_calls(subset):
            folder = call_folder(plan, root)
            if not all((folder / f).is_file() for f in ("call.json", "mix16k.wav", "stereo16k.wav", "ulaw8k.wav")):
                # write beside, then rename: a concurrent or interrupted build never leaves half a call
                tmp = root / f".{folder.name}.{os.getpid()}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                _render(plan, tmp, pool)
                shutil.rmtree(folder, ignore_errors=True)
                try:
                    os.replace(tmp, folder)
                except OSError:  # another process renamed its copy first: the bytes are the same
                    shutil.rmtree(tmp, ignore_errors=True)
            calls.append(_load(folder))
    return calls


def main() -> None:
    """``python -m benchmarks.calls [SUBSET]``: build a subset and print its size."""
    import sys
    import time

    subset = sys.argv[1] if len(sys.argv) > 1 else "ci"
    started = time.perf_counter()
    calls = build_calls(subset)
    words = sum(len(c.reference.split()) for c in calls)
    print(
        f"{subset}: {len(calls)} calls, {sum(c.seconds for c in calls) / 60:.1f} min, {words} words, "
        f"built or loaded in {time.perf_counter() - started:.1f} s"
    )
    for c in calls:
        print(f"  {c.name:12s} {c.seconds:7.1f} s {len(c.reference.split()):6d} words  {c.mix16k.parent}")


if __name__ == "__main__":
    main()
