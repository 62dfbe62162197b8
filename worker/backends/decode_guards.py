"""Checks on the text of one decode: repetition loops, prompt copies, prefix echoes.

Whisper fails in a few known ways on short or unclear audio; :func:`~worker.backends.whisper_decode.decode_batch`
asks these functions about each decode and decodes again or cuts:

* a **loop** ("I'm I'm I'm ...", "9, 9, 9, 9"): decoded again with a beam; cut after the first copy
  if it still loops;
* a **prompt copy**: the decode repeats words of its prompt; decoded again without the prompt;
* a **prompt skip**: the decode's timestamps and its word alignment disagree by seconds, as when a
  prompt that holds the words the speaker says again led Whisper past them; decoded again
  without the prompt;
* a **prefix echo**: a continuation says its forced prefix again; those words are dropped;
* **timeless words**: a run of words that the alignment gives no time at all, or a word said again
  in next to no time; they are dropped (:func:`drop_timeless`, which the faster-whisper backend
  applies to every hypothesis).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from worker.asr.contracts import Word

#: Seconds per timestamp token.
TIME_PRECISION = 0.02
#: Above this gzip compression ratio a decode is a repetition loop (Whisper's own threshold).
COMPRESSION_RATIO_LIMIT = 2.4
#: A run of up to this many tokens said this many times in a row is a loop ("9, 9, 9, 9", or
#: "Thanks, you too." four times at the end of a call's customer channel).
LOOP_MAX_PERIOD = 8
LOOP_REPEATS = 4
#: A decode that repeats this many consecutive words of its prompt may be copying the prompt
#: (Whisper does so on short or unclear audio); it is decoded again without one.
PROMPT_COPY_WORDS = 4
#: A decode's timestamp tokens and its word alignment are two estimates of when its words were
#: said; they differ by a fraction of a second. Seconds apart, the text is not what the audio holds
#: (measured: a prompt holding the words the speaker said again, an 11 s decode said their last
#: phrase in a segment closed at 2.0 s, and the alignment stretched it to 10.3 s).
TIMING_SKEW_SEC = 2.0
#: A continuation that starts by saying this many words of its prefix again is echoing it.
PREFIX_ECHO_WORDS = 2
#: Words shorter than this are timeless to the alignment, and a run of this many of them is text
#: the audio does not hold (measured: "No, nothing else to me" said twice in one decode, the
#: second copy's words all at one instant).
TIMELESS_SEC = 0.05
TIMELESS_RUN = 3
#: A word said again right after itself takes at least this long; a shorter second copy is the
#: alignment's leftover (measured: back-channels decoded after a second of silence, on a
#: 12-minute call's customer channel, came out "Right. Right." and "Yes. Yes.", the first copy
#: stretched over the silence and the second 0.00-0.14 s long).
REPEAT_MIN_SEC = 0.15
#: Punctuation that faster-whisper merges into the next word, and into the previous one.
PREPEND = "\"'“¿([{-"
APPEND = "\"'.。,，!！?？:：”)]}、"


@dataclass
class Decoded:
    """A decode's tokens (its forced prefix and what it said), with faster-whisper's scores."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    #: Text tokens at the start of ``tokens`` that are the request's forced prefix.
    prefix: int = 0


def looping(decoded: Decoded, tokenizer: Any) -> bool:
    text = text_tokens(decoded, tokenizer)
    return decoded.compression_ratio > COMPRESSION_RATIO_LIMIT or loop_start(text) is not None


def scored(tokens: list[int], avg_logprob: float, no_speech_prob: float, prefix: int, tokenizer: Any) -> Decoded:
    """A generated sequence as :class:`Decoded`, its compression ratio taken over its own text."""
    own = tokenizer.decode(_own(tokens, prefix, tokenizer)).strip()
    return Decoded(tokens, avg_logprob, no_speech_prob, compression_ratio(own), prefix)


def text_tokens(decoded: Decoded, tokenizer: Any) -> list[int]:
    """The decode's own text tokens (after its forced prefix)."""
    return _own(decoded.tokens, decoded.prefix, tokenizer)


def _own(tokens: list[int], prefix: int, tokenizer: Any) -> list[int]:
    return [t for t in tokens if t < tokenizer.eot][prefix:]


def loop_start(tokens: list[int]) -> int | None:
    """Where a repetition loop starts: a run of 1-8 tokens said ``LOOP_REPEATS`` times in a row.

    Returns the index of the second copy (the first is kept), or ``None``. Short texts compress
    badly, so the compression ratio misses loops like "9, 9, 9, 9, 9" in a few-second buffer.
    """
    for i in range(len(tokens)):
        for period in range(1, LOOP_MAX_PERIOD + 1):
            unit = tokens[i : i + period]
            end = i + period * LOOP_REPEATS
            if end > len(tokens):
                break
            if all(tokens[j : j + period] == unit for j in range(i, end, period)):
                return i + period
    return None


def cut_loop(decoded: Decoded, tokenizer: Any) -> None:
    start = loop_start(text_tokens(decoded, tokenizer))
    if start is None:
        return
    # the same place in the full sequence, which has timestamps between the text tokens
    kept = -decoded.prefix
    for n, token in enumerate(decoded.tokens):
        if token < tokenizer.eot:
            if kept == start:
                decoded.tokens = decoded.tokens[:n]
                return
            kept += 1


def plain_words(text: str) -> tuple[str, ...]:
    return tuple(w for w in (w.strip(PREPEND + APPEND).lower() for w in text.split()) if w)


def copies_prompt(decoded: Decoded, previous: tuple[str, ...], tokenizer: Any) -> bool:
    """The decode holds ``PROMPT_COPY_WORDS`` consecutive words of ``previous`` (its prompt's words)."""
    n = PROMPT_COPY_WORDS
    if len(previous) < n:
        return False
    said = plain_words(tokenizer.decode(text_tokens(decoded, tokenizer)))
    grams = {previous[i : i + n] for i in range(len(previous) - n + 1)}
    return any(said[i : i + n] in grams for i in range(len(said) - n + 1))


def timing_skew(decoded: Decoded, words: list[dict[str, Any]], tokenizer: Any) -> float:
    """Seconds by which the alignment puts a closed segment's last word past the segment's end.

    ``words`` are the decode's aligned words (faster-whisper's dicts, punctuation merged); the
    segment is closed by its timestamp token. 0 when they agree or no segment is closed.
    """
    begin, count, skew = tokenizer.timestamp_begin, 0, 0.0
    ends = _word_ends(words)
    opened = False
    for token in decoded.tokens:
        if token < tokenizer.eot:
            count += 1
            opened = True
        elif token >= begin and opened:
            # a timestamp after text closes the segment: its last word is the count-th token's
            skew = max(skew, ends.get(count, 0.0) - (token - begin) * TIME_PRECISION)
            opened = False
    return skew


def _word_ends(words: list[dict[str, Any]]) -> dict[int, float]:
    """The aligned end of the word holding each text token, by the token's 1-based index."""
    ends, seen = {}, 0
    for w in words:
        for _ in w["tokens"]:
            seen += 1
            ends[seen] = float(w["end"])
    return ends


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def prefix_echo(words: list[dict[str, Any]], decoded: Decoded) -> int:
    """Words at the start of a continuation that say its prefix's last words again.

    Given a prefix that already holds everything the audio says, Whisper tends to say it again
    (an utterance end right after a pause's commit). A real repetition is rarely
    ``PREFIX_ECHO_WORDS`` words or longer, so such a run is dropped.
    """
    if not decoded.prefix:
        return 0
    said, seen, split = [], 0, 0
    for w in words:
        seen += len(w["tokens"])
        said.extend(plain_words(w["word"]))
        if seen <= decoded.prefix:
            split = len(said)
    before, after = said[:split], said[split:]
    for n in range(min(len(before), len(after)), PREFIX_ECHO_WORDS - 1, -1):
        if after[:n] == before[-n:]:
            return n
    return 0


def drop_timeless(words: list[Word]) -> list[Word]:
    """``words`` without the text the audio does not hold, by the alignment's times.

    Whisper sometimes says a phrase twice, or runs on after the audio, and the word alignment
    then piles those words onto one instant. A real word takes time, so a run of
    ``TIMELESS_RUN`` or more words shorter than ``TIMELESS_SEC`` each is dropped before
    LocalAgreement can agree on it (one or two short words, as the alignment gives fast speech,
    stay), and so is a word shorter than ``REPEAT_MIN_SEC`` that repeats the word before it.
    """
    said = [w for k, w in enumerate(words) if k == 0 or not _said_again(words[k - 1], w)]
    kept: list[Word] = []
    run: list[Word] = []
    for word in said:
        if word.end - word.start < TIMELESS_SEC:
            run.append(word)
            continue
        if len(run) < TIMELESS_RUN:
            kept.extend(run)
        run = []
        kept.append(word)
    if len(run) < TIMELESS_RUN:
        kept.extend(run)
    return kept


def _said_again(before: Word, word: Word) -> bool:
    """``word`` repeats ``before`` (but for case and punctuation) in less than ``REPEAT_MIN_SEC``."""
    if word.end - word.start >= REPEAT_MIN_SEC:
        return False
    return before.text.strip(" " + PREPEND + APPEND).lower() == word.text.strip(" " + PREPEND + APPEND).lower()
