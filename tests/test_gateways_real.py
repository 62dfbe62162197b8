"""One recorded two-party call through every gateway, transcribed by a real worker with the base model.

Each gateway gets the call as its source sends it: Twilio both tracks as mu-law, mod_audio_fork
stereo L16 at 16 kHz, AudioHook stereo PCMU, and AudioSocket (one direction of a call, mono) the
8 kHz mix. Offline faster-whisper (beam 5, same model) transcribes the same audio the gateway got
(decoded from the same encoding), and the streamed transcript must stay near it.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import numpy as np
import pytest
from websockets.asyncio.client import connect as ws_connect

from benchmarks.call_scoring import pooled, score
from benchmarks.calls import build_calls
from benchmarks.offline import offline_transcribe
from producer.aio import AsyncProducer
from producer.audiofork import AudioForkGateway
from producer.audiohook import AudioHookGateway
from producer.audiosocket import AudioSocketGateway, encode_frame
from producer.gateway import TwilioGateway
from tests.client_helpers import output_events, run_worker, whisper_settings
from tests.test_audiohook import KEY, OFFERS, Client, headers, open_call
from tests.test_gateway import media, mulaw_frames, replay, start
from worker.asr.audio import decode_file, resample
from worker.protocol import audiofile
from worker.protocol.events import SegmentEvent
from worker.protocol.pcm import decode_pcm, encode_pcm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: How far the streamed WER may be above offline, pooled over the four gateway sessions (about 340
#: words), in points. Three of the four are 8 kHz telephone legs, where streaming reads 4.8 points
#: above offline on the 26 long calls (docs/benchmarks.md): 0.02 held on an AMD EPYC, and an Intel
#: Xeon's int8 kernels gave 25.0 % against 17.9 % on these sessions. The bound catches a gateway
#: that garbles audio, which reads far worse; the streaming quality itself is the benchmark's.
MARGIN = 0.10
#: ... and on any one session (85 words: one word is 1.2 points, and which words a streaming decode
#: gets wrong moves by a word or two with any change to the commit policy, so a tighter bound here
#: would test noise: on an Intel Xeon, whose int8 kernels give other texts than an AMD EPYC's, the
#: Twilio session read 26 errors against offline's 15, where 0.08 had held). A gateway that garbles
#: audio (a wrong rate or codec) is far past it.
SESSION_MARGIN = 0.15


def offline(audio16k: np.ndarray) -> str:
    """faster-whisper's defaults (beam 5, the temperature fallback), seeded so it is the same every run."""
    return offline_transcribe(audio16k, device="cpu").text


def channel_text(events: list, channel: int) -> str:
    return " ".join(e.text for e in events if isinstance(e, SegmentEvent) and e.channel == channel)


def through_mulaw(audio8k: np.ndarray) -> np.ndarray:
    """What a mu-law leg leaves of the audio."""
    return decode_pcm(encode_pcm(audio8k, "mulaw"), "mulaw", 1).reshape(-1)


async def feed_all(url: str, stereo16k: np.ndarray, mix8k: np.ndarray) -> None:
    producer = await AsyncProducer.connect(url)
    twilio = TwilioGateway(producer)
    fork = AudioForkGateway(producer, sample_rate=16000, mix_type="stereo")
    hook = AudioHookGateway(producer, api_keys=(KEY,))
    socket_gateway = AudioSocketGateway(producer)
    servers = [await g.serve("127.0.0.1", 0) for g in (twilio, fork, hook)]
    socket_server = await socket_gateway.serve("127.0.0.1", 0)
    ports = [s.sockets[0].getsockname()[1] for s in [*servers, socket_server]]
    stereo8k = audiofile.resample(stereo16k, 16000, 8000)

    async def via_twilio() -> None:
        tracks = [mulaw_frames(stereo8k[:, c]) for c in (0, 1)]
        messages = [media("MZ-real", t, i, f) for i, fs in enumerate(zip(*tracks, strict=True))
                    for t, f in zip(("inbound", "outbound"), fs, strict=True)]  # fmt: skip
        await replay(f"ws://127.0.0.1:{ports[0]}", [start("real-twilio", "MZ-real", ["inbound", "outbound"])], messages)

    async def via_fork() -> None:
        data = encode_pcm(stereo16k, "pcm_s16le")
        async with ws_connect(f"ws://127.0.0.1:{ports[1]}/real-fork", subprotocols=["audio.drachtio.org"]) as ws:
            await ws.send(json.dumps({"language": "en"}))
            for i in range(0, len(data), 1280):
                await ws.send(data[i : i + 1280])
            await ws.close(1000)

    async def via_hook() -> None:
        data = encode_pcm(stereo8k, "mulaw")
        async with ws_connect(f"ws://127.0.0.1:{ports[2]}/", additional_headers=headers("real-hook")) as ws:
            client = Client(ws, "real-hook")
            await open_call(client, OFFERS)
            await client.audio([data[i : i + 320] for i in range(0, len(data), 320)])
            await client.send("close", {"reason": "end"})
            await client.receive()

    async def via_socket() -> None:
        call = uuid.UUID("00000000-0000-4000-8000-00000000abcd")
        data = encode_pcm(mix8k, "pcm_s16le")
        _reader, writer = await asyncio.open_connection("127.0.0.1", ports[3])
        writer.write(encode_frame(0x01, call.bytes))
        for i in range(0, len(data), 320):
            writer.write(encode_frame(0x10, data[i : i + 320]))
        writer.write(encode_frame(0x00))
        await writer.drain()
        writer.close()

    await asyncio.gather(via_twilio(), via_fork(), via_hook(), via_socket())
    await asyncio.sleep(0.5)
    for server in servers:
        server.close()
        await server.wait_closed()
    await socket_gateway.aclose()
    await producer.aclose()


def test_a_recorded_call_through_each_gateway_stays_near_offline_on_the_same_audio(valkey_url, tmp_path):
    call = build_calls("ci", tmp_path)[0]
    stereo16k = decode_file(call.stereo16k, 16000, split_channels=True).T.copy()
    mix8k = audiofile.resample(decode_file(call.mix16k, 16000), 16000, 8000)
    asyncio.run(feed_all(valkey_url, stereo16k, mix8k))
    run_worker(whisper_settings(valkey_url), max_seconds=600)

    refs = call.channel_references
    stereo8k = audiofile.resample(stereo16k, 16000, 8000)
    mulaw16k = [resample(through_mulaw(stereo8k[:, c]), 8000, 16000) for c in (0, 1)]
    expected = {
        "real-twilio": [(refs[c], mulaw16k[c]) for c in (0, 1)],
        "real-fork": [(refs[c], stereo16k[:, c].copy()) for c in (0, 1)],
        "real-hook": [(refs[c], mulaw16k[c]) for c in (0, 1)],
        "00000000-0000-4000-8000-00000000abcd": [(call.reference, resample(mix8k, 8000, 16000))],
    }
    report, streamed_all, offline_all = [], [], []
    for sid, channels in expected.items():
        events = output_events(valkey_url, sid)
        assert events[-1].reason == "completed", sid
        streamed = [score(ref, channel_text(events, c)) for c, (ref, _a) in enumerate(channels)]
        baseline = [score(ref, offline(audio)) for ref, audio in channels]
        streamed_all += streamed
        offline_all += baseline
        report.append(f"{sid}: streaming {pooled(streamed).wer:.3f} offline {pooled(baseline).wer:.3f}")
        assert pooled(streamed).wer <= pooled(baseline).wer + SESSION_MARGIN, "\n".join(report)
    report.append(f"all: streaming {pooled(streamed_all).wer:.3f} offline {pooled(offline_all).wer:.3f}")
    print("\n" + "\n".join(report))
    assert pooled(streamed_all).wer <= pooled(offline_all).wer + MARGIN, "\n".join(report)
