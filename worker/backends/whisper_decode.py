"""One batched Whisper pass for many streaming requests: features, encode, generate, align.

faster-whisper's ``transcribe`` handles one long recording: it pads each window to 30 s,
decodes it, drops an unfinished last segment and encodes a second window from there. A
streaming buffer is short (the processor keeps it under 28 s, and with ``vac`` one utterance
long), so here every request is one window, and the whole batch goes through four stages:

1. **features**: log-mel of each request, with numpy on the host, or with torch on the model's
   device (:mod:`worker.backends.features`: a GPU model's batch then never visits the host);
2. **encode**: the window is the buffer plus ``padding_frames`` of silence, rounded up to 5 s
   (at most 30 s); requests with the same window share one CTranslate2 encoder call, whose
   output stays where the model runs (no host round trip on a GPU);
3. **generate**: one CTranslate2 ``generate`` per (window, beam) bucket, each request with its
   own prompt, returning scores and no-speech probabilities. Tokens after the last timestamp are
   kept as a final segment (faster-whisper drops them and decodes again from there, which costs
   a 30 s encode and loses the words at the end of a buffer). A request whose text repeats
   itself (compression ratio above 2.4) is decoded again with beam 5, deterministically, and
   one whose text repeats four words of its prompt in a row is decoded again without the
   prompt (Whisper copies its prompt on short or unclear audio; words really said again are
   heard again without it);
4. **align**: one ``align`` per bucket gives the word timestamps. A prompted request whose
   alignment puts a segment's words seconds past the timestamp that closed it was led past
   words the audio holds (a prompt holding words the speaker says again can do that instead of
   copying them): it is decoded and aligned again without the prompt.

A request may carry a ``prefix``: the text already committed for the start of its audio. It goes
after the task tokens as an open segment, so the decode continues it; only the words after it are
returned (and none that say it again). The checks on each decode's text are in
:mod:`worker.backends.decode_guards`.

A request's window, prompt and beam depend only on the request, never on its batch-mates, so
its words are the same alone or batched up to floating-point noise of batched kernels (what a
replay after a failover may differ in).
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.backends.decode_guards import (
    APPEND,
    PREPEND,
    TIME_PRECISION,
    TIMING_SKEW_SEC,
    Decoded,
    copies_prompt,
    cut_loop,
    looping,
    plain_words,
    prefix_echo,
    scored,
    timing_skew,
)
from worker.backends.features import FeatureBackend, LogMel, log_mel_for

#: Windows are rounded up to this many mel frames (5 s): few shapes, so many requests share one.
WINDOW_QUANTUM = 500
FULL_WINDOW = 3000
#: Seconds per mel frame.
FRAME_SEC = 0.01
#: The beam of the retry of a repetitive decode.
RETRY_BEAM = 5
#: Token budget per second of audio: fast speech is ~4 text tokens/s (150 words a minute is
#: 3.3) plus timestamps; a decode past this is looping, and capping it bounds a bad window's cost.
TOKENS_PER_SEC = 8
MIN_NEW_TOKENS = 16
#: Tokens of previous text in a prompt (the processor gives ~200 characters, ~45 tokens).
PROMPT_TOKENS = 48
_SENTENCE_MARKS = ".。!！?？"


@dataclass(frozen=True)
class DecodeRequest:
    """One window to transcribe: 16 kHz audio, the prompt text, its beam, and the silence after
    the audio in its encoder window (mel frames; ``None``: Whisper's full 30 s window)."""

    audio: np.ndarray
    prompt: str
    beam_size: int
    padding_frames: int | None = 500
    #: Text already committed for the start of ``audio``: the decode continues it (forced), and
    #: only the words after it are returned.
    prefix: str = ""


@dataclass(frozen=True)
class DecodeOptions:
    """Options shared by every request of a batch (the backend's settings)."""

    language: str
    task: str = "transcribe"
    #: Where log-mel features are computed (:func:`worker.backends.features.log_mel_for`).
    features: FeatureBackend = "auto"


def encoder_window(content_frames: int, padding_frames: int | None) -> int:
    """Mel frames the encoder sees for ``content_frames`` of audio (``None``: Whisper's full 30 s)."""
    if padding_frames is None:
        return FULL_WINDOW
    needed = content_frames + padding_frames
    return min(FULL_WINDOW, -(-needed // WINDOW_QUANTUM) * WINDOW_QUANTUM)


@functools.lru_cache(maxsize=64)
def _tokenizer(model: Any, task: str, language: str) -> Any:
    from faster_whisper.tokenizer import Tokenizer

    return Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=task, language=language)


@functools.lru_cache(maxsize=64)
def _suppressed(model: Any, task: str, language: str) -> tuple[int, ...]:
    from faster_whisper.transcribe import get_suppressed_tokens

    return tuple(get_suppressed_tokens(_tokenizer(model, task, language), [-1]))


@dataclass
class _Prepared:
    #: log-mel frames of the content (numpy, or a torch tensor on the model's device)
    features: Any
    content: int
    window: int
    prompt: list[int]
    #: The prompt's previous-text words, normalised (empty without a prompt).
    previous: tuple[str, ...] = ()
    #: The forced prefix after the task tokens: a timestamp and the committed text's tokens.
    prefix: tuple[int, ...] = ()

    @property
    def prefix_text(self) -> int:
        """Text tokens in ``prefix`` (all but its opening timestamp)."""
        return max(0, len(self.prefix) - 1)

    def without_prompt(self, tokenizer: Any) -> _Prepared:
        prompt = [*tokenizer.sot_sequence, *self.prefix]
        return _Prepared(self.features, self.content, self.window, prompt, (), self.prefix)


def decode_batch(
    model: Any, requests: Sequence[DecodeRequest], options: DecodeOptions, redecodes: Counter[str] | None = None
) -> list[list[Any]]:
    """faster-whisper ``Segment`` lists (with words) for each request, in order.

    ``redecodes``, when given, counts the requests each guard decoded again (``loop``,
    ``prompt_copy``, ``prompt_skip``): what the guards cost, for the worker's metrics.
    """
    counts: Counter[str] = Counter() if redecodes is None else redecodes
    tokenizer = _tokenizer(model, options.task, options.language)
    log_mel = log_mel_for(model, options.features)
    prepared = [_prepare(log_mel, tokenizer, r) for r in requests]
    # CTranslate2 wants the start-of-transcript token at one position across a batch, so the
    # lengths of the previous text bucket too; they are cut to PROMPT_TOKENS, so past a call's
    # first sentences they are all that long and batch together. Prefixes come after that token
    # and may differ in length (checked: the same words alone or together)
    buckets: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, (p, r) in enumerate(zip(prepared, requests, strict=True)):
        buckets[(p.window, r.beam_size, len(p.prompt) - len(p.prefix))].append(i)
    results: list[list[Any]] = [[] for _ in requests]
    for (window, beam, _previous_length), members in buckets.items():
        encoded = _encode(model, log_mel, [prepared[i] for i in members], window)
        decoded = _generate(model, tokenizer, encoded, [prepared[i] for i in members], beam, options)
        retry = [k for k, d in enumerate(decoded) if looping(d, tokenizer) and beam < RETRY_BEAM]
        if retry:
            counts["loop"] += len(retry)
            # a repetition loop: beam search usually escapes it; same request, same answer
            again = _generate(
                model, tokenizer, _select(encoded, retry), [prepared[members[k]] for k in retry], RETRY_BEAM, options
            )
            for k, d in zip(retry, again, strict=True):
                decoded[k] = d
        copied = [k for k, d in enumerate(decoded) if copies_prompt(d, prepared[members[k]].previous, tokenizer)]
        if copied:
            counts["prompt_copy"] += len(copied)
            # the same request without its prompt: what it says then was said, not copied
            bare = [prepared[members[k]].without_prompt(tokenizer) for k in copied]
            again = _generate(model, tokenizer, _select(encoded, copied), bare, beam, options)
            for k, d in zip(copied, again, strict=True):
                decoded[k] = d
        for d in decoded:
            # still looping: keep the text before the loop (one copy of the repeated part)
            cut_loop(d, tokenizer)
        words = _align(model, tokenizer, encoded, [prepared[i] for i in members], decoded)
        skipped = [
            k
            for k, d in enumerate(decoded)
            if k not in copied
            and prepared[members[k]].previous
            and timing_skew(d, words[k], tokenizer) > TIMING_SKEW_SEC
        ]
        if skipped:
            counts["prompt_skip"] += len(skipped)
            # the prompt led the decode past words the audio holds (the speaker said them again):
            # the same request without it
            bare = [prepared[members[k]].without_prompt(tokenizer) for k in skipped]
            rows = _select(encoded, skipped)
            again = _generate(model, tokenizer, rows, bare, beam, options)
            for d in again:
                cut_loop(d, tokenizer)
            for k, d, w in zip(skipped, again, _align(model, tokenizer, rows, bare, again), strict=True):
                decoded[k], words[k] = d, w
        for k, i in enumerate(members):
            echo = prefix_echo(words[k], decoded[k])
            results[i] = _segments(tokenizer, decoded[k], words[k], prepared[i].content * FRAME_SEC, echo)
    return results


# -- stages ----------------------------------------------------------------------------------


def _prepare(log_mel: LogMel, tokenizer: Any, request: DecodeRequest) -> _Prepared:
    features = log_mel(request.audio)
    # as faster-whisper's first window: the content excludes the last frame
    content = max(1, min(FULL_WINDOW, features.shape[-1] - 1))
    window = encoder_window(content, request.padding_frames)
    prompt: list[int] = []
    words: tuple[str, ...] = ()
    if request.prompt.strip():
        previous = tokenizer.encode(" " + request.prompt.strip())[-PROMPT_TOKENS:]
        prompt = [tokenizer.sot_prev, *previous]
        words = plain_words(tokenizer.decode(previous))
    prompt.extend(tokenizer.sot_sequence)
    prefix: tuple[int, ...] = ()
    if request.prefix.strip():
        # an open segment from the start of the audio (closing it with the committed words' end
        # time made the model stop there: measured, it lost whole phrases)
        prefix = (tokenizer.timestamp_begin, *tokenizer.encode(" " + request.prefix.strip()))
        prompt.extend(prefix)
    return _Prepared(features[:, :content], content, window, prompt, words, prefix)


def _encode(model: Any, log_mel: LogMel, prepared: list[_Prepared], window: int) -> Any:
    import ctranslate2

    # padded with silence to the window, on the device the features were computed on
    batch = log_mel.batch([p.features for p in prepared], window)
    assert batch.shape[-1] == window
    # kept on the model's device: generate and align read it from there
    return model.model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=False)


def _select(encoded: Any, rows: list[int]) -> Any:
    """Rows of an encoder output, as a new batch (for the few requests decoded again)."""
    import ctranslate2

    if str(getattr(encoded, "device", "cpu")) != "cpu":
        import torch

        tensor = torch.as_tensor(encoded, device=encoded.device)
        return ctranslate2.StorageView.from_array(tensor[rows].contiguous())
    array = np.asarray(encoded)
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array[rows]))


def _generate(
    model: Any, tokenizer: Any, encoded: Any, prepared: list[_Prepared], beam: int, options: DecodeOptions
) -> list[Decoded]:
    longest_prompt = max(len(p.prompt) for p in prepared)
    longest_content = max(p.content for p in prepared) * FRAME_SEC
    budget = max(MIN_NEW_TOKENS, round(longest_content * TOKENS_PER_SEC))
    results = model.model.generate(
        encoded,
        [p.prompt for p in prepared],
        beam_size=beam,
        max_length=min(model.max_length, longest_prompt + budget),
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=list(_suppressed(model, options.task, options.language)),
        max_initial_timestamp_index=round(1.0 / TIME_PRECISION),
    )
    decoded = []
    for result, p in zip(results, prepared, strict=True):
        tokens = list(result.sequences_ids[0])
        # faster-whisper's average log-probability (length penalty 1)
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        decoded.append(scored(tokens, avg_logprob, result.no_speech_prob, p.prefix_text, tokenizer))
    return decoded


def _align(
    model: Any, tokenizer: Any, encoded: Any, prepared: list[_Prepared], decoded: list[Decoded]
) -> list[list[dict[str, Any]]]:
    """Word timings of each decode (faster-whisper's ``find_alignment``, batched)."""
    from faster_whisper.transcribe import merge_punctuations

    text_tokens = [[t for t in d.tokens if t < tokenizer.eot] for d in decoded]
    todo = [k for k, tokens in enumerate(text_tokens) if tokens]
    words: list[list[dict[str, Any]]] = [[] for _ in decoded]
    if not todo:
        return words
    source = encoded if len(todo) == len(decoded) else _select(encoded, todo)
    aligned = model.find_alignment(
        tokenizer, [text_tokens[k] for k in todo], source, [prepared[k].content for k in todo]
    )
    for k, alignment in zip(todo, aligned, strict=True):
        _clip_long_words(alignment)
        merge_punctuations(alignment, PREPEND, APPEND)
        words[k] = [w for w in alignment if w["word"]]
    return words


def _clip_long_words(alignment: list[dict[str, Any]]) -> None:
    """A word at a sentence boundary is at most twice the median word (faster-whisper's rule)."""
    durations = np.array([w["end"] - w["start"] for w in alignment])
    durations = durations[durations.nonzero()]
    if durations.size == 0:
        return
    max_duration = 2 * min(0.7, float(np.median(durations)))
    for i in range(1, len(alignment)):
        if alignment[i]["end"] - alignment[i]["start"] > max_duration:
            if alignment[i]["word"] in _SENTENCE_MARKS:
                alignment[i]["end"] = alignment[i]["start"] + max_duration
            elif alignment[i - 1]["word"] in _SENTENCE_MARKS:
                alignment[i]["start"] = alignment[i]["end"] - max_duration


def _segments(
    tokenizer: Any, decoded: Decoded, words: list[dict[str, Any]], duration: float, echo: int = 0
) -> list[Any]:
    """Split a decode into segments at its timestamp tokens; each gets the words it holds.

    Words of the forced prefix, and ``echo`` words after them, are left out.
    """
    from faster_whisper.transcribe import Segment, Word

    begin = tokenizer.timestamp_begin
    spans: list[tuple[float, float, list[int]]] = []
    start: float | None = None
    current: list[int] = []
    for token in decoded.tokens:
        if token >= begin:
            time = (token - begin) * TIME_PRECISION
            if start is None:
                start = time
            elif current:
                spans.append((start, time, current))
                current, start = [], None
            else:
                start = time
        elif token < tokenizer.eot:
            current.append(token)
    if current:
        # the unfinished last segment: its words run to the end of the audio
        spans.append((start or 0.0, duration, current))
    segments = []
    cursor = 0
    seen = 0  # text tokens of the words passed so far
    for n, (seg_start, seg_end, tokens) in enumerate(spans):
        seg_words, used = [], 0
        while cursor < len(words) and used < len(tokens):
            w = words[cursor]
            end = min(float(w["end"]), duration)
            used += len(w["tokens"])
            seen += len(w["tokens"])
            cursor += 1
            if seen <= decoded.prefix:
                continue  # committed already: the prefix the decode continued
            if echo > 0:
                echo -= 1
                continue
            text = w["word"]
            if seen - len(w["tokens"]) < decoded.prefix:
                # the continuation's first tokens joined the prefix's last word ("call" + "er")
                text = tokenizer.decode(w["tokens"][decoded.prefix - (seen - len(w["tokens"])) :])
            seg_words.append(Word(min(float(w["start"]), end), end, text, float(w["probability"])))
        segments.append(
            Segment(
                id=n,
                seek=0,
                start=seg_start,
                end=min(seg_end, duration),
                text=tokenizer.decode(tokens),
                tokens=tokens,
                avg_logprob=decoded.avg_logprob,
                compression_ratio=decoded.compression_ratio,
                no_speech_prob=decoded.no_speech_prob,
                words=seg_words,
                temperature=0.0,
            )
        )
    return segments
