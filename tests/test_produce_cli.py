"""``streamscribe produce`` end to end: files in any format, concurrent sessions, telephony
encodings, ``--split-channels``, ``--realtime``, and a producer killed mid-call."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.call_audio import write_wav
from tests.client_helpers import (
    WorkerThread,
    channel_words,
    output_events,
    raw_client,
    run_worker,
    synthetic_settings,
    synthetic_stereo,
)
from worker.backends.synthetic import encode_words, random_words
from worker.cli.main import main
from worker.protocol.events import ErrorEvent, SessionEnded
from worker.protocol.keys import Keyspace
from worker.protocol.messages import AudioChunk, SessionOpen, decode_input

pytestmark = pytest.mark.timeout(120)

STREAMSCRIBE = str(Path(sys.executable).with_name("streamscribe"))
WORDS_A = random_words(8, seed=41)
WORDS_B = random_words(6, seed=42)


def write_flac(path: Path, audio: np.ndarray, rate: int) -> Path:
    """A FLAC file written with PyAV (``(frames,)`` or ``(frames, 2)`` float audio)."""
    import av

    frames = audio.reshape(audio.shape[0], -1)
    layout = "mono" if frames.shape[1] == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=rate, layout=layout)
        pcm = (np.clip(frames, -1, 1) * 32767).round().astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def session_open(url: str, sid: str) -> SessionOpen:
    return SessionOpen.decode(raw_client(url).hget(Keyspace().session_open(sid), "open"))


def chunks(url: str, sid: str) -> list[AudioChunk]:
    entries = raw_client(url).xrange(Keyspace().session_input(sid))
    return [m for m in (decode_input(f[b"m"]) for _i, f in entries) if isinstance(m, AudioChunk)]


def test_produce_streams_several_files_at_once_and_prints_each_session_id(redis_url, tmp_path, capsys):
    wav = write_wav(tmp_path / "a.wav", encode_words(WORDS_A, 16000), 16000)
    same = encode_words(WORDS_B, 44100)
    flac = write_flac(tmp_path / "b.flac", np.stack([same, same], axis=1), 44100)  # stereo, downmixed

    assert main(["produce", str(wav), str(flac), "--redis-url", redis_url, "--language", "en", "--tenant", "acme"]) == 0
    out, err = capsys.readouterr()
    ids = out.split()
    assert len(ids) == 2 and len(set(ids)) == 2
    assert "100%" in err and "2/2 done" in err

    opened = [session_open(redis_url, sid) for sid in ids]
    assert [o.metadata["source"] for o in opened] == ["a.wav", "b.flac"]
    assert [o.tenant for o in opened] == ["acme", "acme"]
    assert all(o.channels == 1 and o.sample_rate == 16000 and o.asr == {"language": "en"} for o in opened)
    assert [len(c.payload) for c in chunks(redis_url, ids[0])][:-1] == [3200] * (len(chunks(redis_url, ids[0])) - 1)
    run_worker(synthetic_settings(redis_url))
    assert channel_words(output_events(redis_url, ids[0]), 0) == WORDS_A
    assert channel_words(output_events(redis_url, ids[1]), 0) == WORDS_B


@pytest.mark.parametrize("encoding", ["mulaw", "alaw", "pcm_s16le"])
def test_produce_split_channels_sends_a_stereo_call_as_one_two_channel_session(valkey_url, tmp_path, capsys, encoding):
    path = write_wav(tmp_path / "call.wav", synthetic_stereo(WORDS_A, WORDS_B, 8000), 8000)
    args = ["produce", str(path), "--split-channels", "--encoding", encoding, "--chunk-ms", "20"]
    if encoding == "pcm_s16le":
        args += ["--sample-rate", "8000"]
    assert main([*args, "--session-id", "stereo-call", "--redis-url", valkey_url, "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out == "stereo-call\n" and err == ""
    opened = session_open(valkey_url, "stereo-call")
    assert (opened.channels, opened.sample_rate, opened.encoding) == (2, 8000, encoding)
    frame_bytes = 160 * 2 * (2 if encoding == "pcm_s16le" else 1)
    assert {len(c.payload) for c in chunks(valkey_url, "stereo-call")[:-1]} == {frame_bytes}  # 20 ms frames
    run_worker(synthetic_settings(valkey_url))
    events = output_events(valkey_url, "stereo-call")
    assert channel_words(events, 0) == WORDS_A and channel_words(events, 1) == WORDS_B


def test_produce_realtime_sends_at_the_pace_of_the_audio(valkey_url, tmp_path, capsys):
    path = write_wav(tmp_path / "short.wav", encode_words(WORDS_B[:3], 16000), 16000)  # 1.3 s
    started = time.monotonic()
    assert main(["produce", str(path), "--realtime", "--chunk-ms", "250", "--redis-url", valkey_url]) == 0
    elapsed = time.monotonic() - started
    sid = capsys.readouterr().out.strip()
    sent = [c.sent_at for c in chunks(valkey_url, sid)]
    assert 1.25 <= elapsed < 3.0
    # chunk k leaves once its audio has been spoken: 0.25 s apart, like a live call (the last one is short)
    assert all(0.15 < b - a < 0.35 for a, b in itertools.pairwise(sent[:-1]))


def test_produce_refuses_bad_arguments_with_one_clear_line(redis_url, tmp_path, capsys):
    wav = write_wav(tmp_path / "a.wav", encode_words(WORDS_A[:2], 16000), 16000)
    cases = [
        (["--session-id", "x", str(wav), str(wav)], "exactly one file"),
        (["--encoding", "mulaw", "--sample-rate", "16000", str(wav)], "mulaw audio is 8000 Hz"),
        ([str(tmp_path / "missing.wav")], "audio file not found"),
        (["--metadata", "novalue", str(wav)], "KEY=VALUE"),
        (["--tenant", "acme corp", str(wav)], "tenant 'acme corp'"),
    ]
    for extra, message in cases:
        assert main(["produce", "--redis-url", redis_url, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert raw_client(redis_url).dbsize() == 0  # nothing was opened


@pytest.mark.slow
def test_a_producer_killed_mid_call_leaves_a_session_that_ends_with_a_stall_error(valkey_url, tmp_path):
    words = random_words(25, seed=43)  # 10 s of audio, sent in real time
    path = write_wav(tmp_path / "long.wav", encode_words(words, 8000), 8000)
    env = {**os.environ, "STREAMSCRIBE_REDIS_URL": valkey_url}
    command = [STREAMSCRIBE, "produce", str(path), "--realtime", "--encoding", "mulaw", "--no-progress"]
    producer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert producer.stdout is not None
        sid = producer.stdout.readline().strip()  # printed once the session is open and announced
        with WorkerThread(synthetic_settings(valkey_url, stall_timeout_sec=2.0), max_seconds=60) as worker:
            deadline = time.monotonic() + 20
            while len(chunks(valkey_url, sid)) < 25 and time.monotonic() < deadline:  # 2.5 s into the call
                time.sleep(0.05)
            producer.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            producer.wait(10)
            assert worker.join(30), "the worker hung on the dead producer's session"
            ended_after = time.monotonic() - killed_at
    finally:
        producer.kill()
        producer.wait()

    events = output_events(valkey_url, sid)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [(e.code, e.fatal) for e in errors] == [("stalled", True)]
    assert "no input for 2 s" in errors[0].message
    assert isinstance(events[-1], SessionEnded) and events[-1].reason == "stalled"
    heard = channel_words(events, 0)
    assert heard == words[: len(heard)] and 3 <= len(heard) < len(words)  # what came in was transcribed
    assert 1.5 <= ended_after < 10.0  # the stall clock starts at the last chunk read, just before the kill
    print(f"\nkilled producer: session ended {ended_after:.1f} s after the kill (stall limit 2 s)")


def test_produce_and_tail_use_the_workers_key_prefix_and_shards(redis_url, tmp_path, capsys, monkeypatch):
    path = write_wav(tmp_path / "a.wav", encode_words(WORDS_B, 8000), 8000)
    monkeypatch.setenv("STREAMSCRIBE_REDIS_URL", redis_url)  # no --redis-url: the workers' variable
    monkeypatch.setenv("STREAMSCRIBE_SHARDS", "2")
    assert main(["produce", str(path), "--encoding", "alaw", "--key-prefix", "acme", "--session-id", "k1"]) == 0
    capsys.readouterr()
    keys = Keyspace("acme", 2)
    client = raw_client(redis_url)
    assert client.exists(keys.session_input("k1")) and client.xlen(keys.announcements(keys.shard_of("k1"))) == 1
    assert not client.exists(Keyspace().session_input("k1"))
    run_worker(synthetic_settings(redis_url, key_prefix="acme", shards=2))
    assert main(["tail", "k1", "--key-prefix", "acme", "--shards", "2", "--json", "--idle-timeout", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[-1])["type"] == "session_ended"
    words = [w["word"] for line in lines for w in json.loads(line).get("words", [])]
    assert words == WORDS_B
