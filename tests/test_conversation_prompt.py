"""The conversation prompt: each channel of a multichannel call prompted with both parties' words."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from benchmarks.conversation import stream_channels
from producer.client import Producer
from tests.worker_helpers import synthetic_settings
from worker.asr.config import ASRConfig
from worker.asr.contracts import ConversationalProcessor, Word
from worker.asr.online import SNAPSHOT_VERSION, OnlineASRProcessor
from worker.backends.synthetic import SyntheticASR, encode_words, random_words
from worker.runtime.loop import Worker

pytestmark = pytest.mark.timeout(120)


def words(*items: tuple[float, str]) -> list[Word]:
    return [Word(start, start + 0.3, text, 0.9) for start, text in items]


def test_a_channel_prompt_holds_both_parties_committed_words_in_time_order_within_its_length():
    proc = OnlineASRProcessor(SyntheticASR(), conversation_prompt=True, prompt_chars=30)
    assert isinstance(proc, ConversationalProcessor)
    for word in words((1.0, "Can"), (1.4, "you"), (1.8, "confirm"), (2.2, "your"), (2.6, "name?")):
        proc._remember_for_prompt(word)
    assert proc.prompt() == "Can you confirm your name?"
    proc.hear(words((3.5, "Anna"), (3.9, "Smith.")))
    assert proc.prompt() == "your name? Anna Smith."  # whole words, each with a separator, in 30 characters
    proc.hear(words((2.0, "Hello?")))  # heard later, said earlier: placed by its time
    assert proc.prompt() == "Hello? your name? Anna Smith."


def test_without_the_conversation_prompt_a_channel_is_prompted_with_its_own_words_only():
    proc = OnlineASRProcessor(SyntheticASR(), conversation_prompt=False)
    proc._remember_for_prompt(Word(1.0, 1.3, "Hello", 0.9))
    proc.hear(words((2.0, "Anna")))
    assert proc.prompt() == "Hello" and not proc.heard
    assert ASRConfig().conversation_prompt, "on by default"


def test_heard_words_survive_a_snapshot_and_a_version_2_snapshot_still_restores():
    proc = OnlineASRProcessor(SyntheticASR(), conversation_prompt=True)
    proc._remember_for_prompt(Word(1.0, 1.3, "Hello", 0.9))
    proc.hear(words((2.0, "Anna")))
    state = msgpack.unpackb(msgpack.packb(proc.snapshot()))
    assert state["v"] == SNAPSHOT_VERSION == 3
    restored = OnlineASRProcessor(SyntheticASR(), conversation_prompt=True)
    restored.restore(state)
    assert restored.prompt() == "Hello Anna" and restored.snapshot() == proc.snapshot()
    # a checkpoint written before this version: the prompt was text without times
    old = {**state, "v": 2, "prompt": ["Hello", "there"]}
    del old["heard"]
    restored.restore(old)
    assert restored.prompt() == "Hello there" and not restored.heard
    restored.hear(words((9.0, "Anna")))
    assert restored.prompt() == "Hello there Anna"


class PromptRecordingASR(SyntheticASR):
    """The synthetic backend, recording the prompt of every decode."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def transcribe(self, audio: np.ndarray, init_prompt: str = ""):  # type: ignore[no-untyped-def]
        self.prompts.append(init_prompt)
        return super().transcribe(audio, init_prompt)


def two_party_call() -> tuple[list[str], list[str], list[np.ndarray]]:
    """The agent speaks, then the customer: each channel silent while the other speaks."""
    agent, customer = random_words(12, seed=1), random_words(12, seed=2)
    a, c = encode_words(agent), encode_words(customer)
    return agent, customer, [np.concatenate([a, np.zeros_like(c)]), np.concatenate([np.zeros_like(a), c])]


def feed(processors: list[OnlineASRProcessor], audios: list[np.ndarray], start: int, stop: int) -> None:
    """Feed the channels in lockstep from ``start`` to ``stop``; each commit is heard by the other."""
    for k in range(start, stop, 1600):
        for p, audio in zip(processors, audios, strict=True):
            p.insert_audio_chunk(audio[k : min(k + 1600, stop)])
        for channel, p in enumerate(processors):
            while p.is_due():
                committed = p.process_iter()
                processors[1 - channel].hear(committed.words)


def test_a_restored_pair_of_channels_prompts_every_later_decode_as_the_uninterrupted_pair_did():
    agent, customer, audios = two_party_call()
    total, half = audios[0].shape[0], audios[0].shape[0] // 2 // 1600 * 1600

    def pair() -> list[OnlineASRProcessor]:
        return [OnlineASRProcessor(PromptRecordingASR(), min_chunk_sec=1.0, conversation_prompt=True) for _ in range(2)]

    straight = pair()
    feed(straight, audios, 0, half)
    at_cut = [len(p.asr.prompts) for p in straight]
    assert straight[1].heard, "the customer channel heard the agent before the cut"
    states = [msgpack.unpackb(msgpack.packb(p.snapshot())) for p in straight]
    feed(straight, audios, half, total)
    # a new pair restored from the checkpoint at the cut, fed the audio its buffers need, then the rest
    restored = pair()
    for p, state, audio in zip(restored, states, audios, strict=True):
        p.restore(state)
        p.insert_audio_chunk(audio[state["buffer_start"] : half])
    feed(restored, audios, half, total)
    for p, q, n in zip(straight, restored, at_cut, strict=True):
        assert q.asr.prompts == p.asr.prompts[n:]
    agent_only = set(agent) - set(customer)
    assert any(agent_only & set(prompt.split()) for prompt in restored[1].asr.prompts), "the agent's words prompt ch1"


@pytest.mark.parametrize("on", [True, False], ids=["conversation-prompt", "own-prompt"])
def test_a_stereo_session_through_the_worker_prompts_a_channel_with_the_other_partys_words(redis_url, monkeypatch, on):
    decodes: list[tuple[int, str, set[str]]] = []  # (backend instance, prompt, words heard)
    transcribe = SyntheticASR.transcribe

    def recording(self, audio, init_prompt=""):  # type: ignore[no-untyped-def]
        result = transcribe(self, audio, init_prompt)
        decodes.append((id(self), init_prompt, {w[2].strip() for w in self.ts_words(result)}))
        return result

    monkeypatch.setattr(SyntheticASR, "transcribe", recording)
    agent, customer, audios = two_party_call()
    stereo = np.stack(audios, axis=1)
    writer = Producer(redis_url).open("stereo-call", sample_rate=16000, channels=2)
    for k in range(0, stereo.shape[0], 1600):
        writer.send(stereo[k : k + 1600])
    writer.close()
    settings = synthetic_settings(redis_url)
    settings = settings.model_copy(update={"asr": settings.asr.replace(conversation_prompt=on)})
    Worker(settings).run(burst=True)

    agent_only, customer_only = set(agent) - set(customer), set(customer) - set(agent)
    customer_channel = {backend for backend, _prompt, heard in decodes if heard & customer_only}
    assert len(customer_channel) == 1, "one channel's backend hears the customer"
    prompted = [p for backend, p, _heard in decodes if backend in customer_channel and agent_only & set(p.split())]
    assert bool(prompted) == on, prompted[:2]


def test_channels_streamed_together_without_the_conversation_prompt_commit_what_each_commits_alone():
    from benchmarks.long_calls import stream_commits

    _agent, _customer, audios = two_party_call()

    def proc(on: bool) -> OnlineASRProcessor:
        return OnlineASRProcessor(SyntheticASR(), min_chunk_sec=1.0, conversation_prompt=on)

    alone = [[c.words for c, _emit, _point in stream_commits(proc(False), a, 16000) if c.words] for a in audios]
    together: list[list[tuple[Word, ...]]] = [[], []]
    for channel, committed, _emit, _busy in stream_channels([proc(False), proc(False)], audios, 16000):
        if committed.words:
            together[channel].append(committed.words)
    assert together == alone and all(alone)


def test_each_channel_of_a_multichannel_session_keeps_the_channel_turn_context_and_a_mono_session_the_other(
    redis_url, monkeypatch
):
    import worker.runtime.acquire as acquire

    built: list[float] = []
    load = acquire.load_processor

    def recording(config: ASRConfig):  # type: ignore[no-untyped-def]
        built.append(config.turn_context_sec)
        return load(config)

    monkeypatch.setattr(acquire, "load_processor", recording)
    _agent, _customer, audios = two_party_call()
    producer = Producer(redis_url)
    stereo = producer.open("stereo-call", sample_rate=16000, channels=2)
    stereo.send(np.stack(audios, axis=1)[:16000])
    stereo.close()
    settings = synthetic_settings(redis_url)
    settings = settings.model_copy(
        update={"asr": settings.asr.replace(turn_context_sec=8.0, channel_turn_context_sec=3.0)}
    )
    Worker(settings).run(burst=True)
    assert built == [3.0, 3.0]
    mono = producer.open("mono-call", sample_rate=16000)
    mono.send(audios[0][:16000])
    mono.close()
    Worker(settings).run(burst=True)
    assert built == [3.0, 3.0, 8.0]
    # the benchmark builds a call's channels as the worker does
    assert ASRConfig().for_channels(2).turn_context_sec == ASRConfig().channel_turn_context_sec
    assert ASRConfig().for_channels(1) == ASRConfig()
