"""LocalAgreement: text is committed once the newest hypothesis agrees with one of the two before it.

This is whisper_streaming's ``HypothesisBuffer`` algorithm, kept small and checkpointable:

* :meth:`HypothesisBuffer.insert` takes a new hypothesis (words with times relative to the
  audio buffer), keeps the words that lie after the last committed time, and removes a 1-5
  word n-gram that repeats the tail of what was already committed (Whisper re-reads the audio
  of committed words at the start of the buffer, so it tends to say them again). A hypothesis
  that *continues* the committed text (decoded with it as a forced prefix) is taken whole.
* :meth:`HypothesisBuffer.flush` commits the longest common prefix of the new hypothesis and
  either of the two before it. Two consecutive decodes that agree are whisper_streaming's rule;
  the new one agreeing with the one before the last (A, B, A) is two of the last three decodes
  saying the same, the newest among them. It commits words that one odd decode in between would
  hold back for another whole chunk (commit lag p95 3.34 → 3.12 s on the long calls, docs/benchmarks.md).
  Agreement is on a word's text, less case and punctuation (Whisper re-punctuates as a sentence
  grows), *and* its place: the same text whose start moved by more than half a second is another
  word (a degenerate decode pins its last words to the buffer's end, a chunk on each time).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from worker.asr.contracts import Word

#: Words that start before the last committed time minus this slack are old news.
_START_SLACK_SEC = 0.1
#: The n-gram dedupe only runs when the new hypothesis starts this close to the commit point.
_NGRAM_WINDOW_SEC = 1.0
_MAX_NGRAM = 5
#: Two hypotheses agree on a word only where they also place its start this close: the same text a
#: chunk apart is not the same word (a degenerate decode pins its last words to the buffer's end,
#: and two such decodes "agree" on them a chunk apart, past words not yet heard).
_AGREE_SLACK_SEC = 0.5
#: What agreement ignores: punctuation and spaces (apostrophes are part of words).
_NOT_WORD = re.compile(r"[^\w']+")


def as_word(raw: Sequence[Any], offset: float = 0.0) -> Word:
    """Normalise a backend's ``(start, end, text[, probability])`` into a :class:`Word`."""
    probability = float(raw[3]) if len(raw) > 3 else 1.0
    return Word(float(raw[0]) + offset, float(raw[1]) + offset, str(raw[2]), probability)


class HypothesisBuffer:
    """Holds the unconfirmed hypothesis and the committed words that the audio buffer covers."""

    def __init__(self) -> None:
        self.committed_in_buffer: list[Word] = []
        self.buffer: list[Word] = []
        self.older: list[Word] = []
        self.new: list[Word] = []
        self.last_committed_time = 0.0
        self.last_committed_word: str | None = None

    def insert(self, new: Iterable[Sequence[Any]], offset: float, *, continues: bool = False) -> None:
        """Take a hypothesis whose times are relative to ``offset`` seconds.

        ``continues``: the hypothesis continues the committed text (the backend decoded after it
        as a forced prefix), so all of it is new, whatever its words' times.
        """
        words = [as_word(w, offset) for w in new]
        if continues:
            self.new = words
            return
        self.new = self._after_commit(words)
        if not self.new or not self.committed_in_buffer:
            return
        if abs(self.new[0].start - self.last_committed_time) >= _NGRAM_WINDOW_SEC:
            return
        longest = min(len(self.committed_in_buffer), len(self.new), _MAX_NGRAM)
        for n in range(1, longest + 1):
            committed_tail = [w.text for w in self.committed_in_buffer[-n:]]
            new_head = [w.text for w in self.new[:n]]
            # a re-read repeats committed audio; a word said again starts after the commit point
            if committed_tail == new_head and self.new[n - 1].start < self.last_committed_time:
                del self.new[:n]
                break

    def flush(
        self,
        confident_before: float | None = None,
        confidence: float = 1.0,
        due_before: float | None = None,
    ) -> list[Word]:
        """Commit and return the longest common prefix of the new hypothesis and either of the two before it.

        With ``confident_before``, the new hypothesis's next words are committed too while each
        ends before that time, has at least ``confidence`` probability and is not the
        hypothesis's last word: words well inside the audio that the model is sure of rarely
        change, and waiting for a second hypothesis costs a whole chunk of latency. With
        ``due_before``, the new hypothesis's words that end before it are committed whatever
        their agreement (but never its last word): a bound on how long a word can wait.
        """
        commit = self._agreed()
        if confident_before is not None:
            commit += self._confident(confident_before, confidence)
        if due_before is not None:
            commit += self._due(due_before)
        if commit:
            self.last_committed_word = commit[-1].text
            self.last_committed_time = commit[-1].end
        self.older = self.buffer
        self.buffer = self.new
        self.new = []
        self.committed_in_buffer.extend(commit)
        return commit

    def _agreed(self) -> list[Word]:
        """Pop the new hypothesis's words that the unconfirmed one, or the one before it, starts with too."""
        # the one before it, less its copies of the words committed since
        older = self._after_commit(self.older)
        n = max(_common_prefix(self.new, self.buffer), _common_prefix(self.new, older))
        agreed, self.new = self.new[:n], self.new[n:]
        del self.buffer[:n]
        return agreed

    def _after_commit(self, words: list[Word]) -> list[Word]:
        """The words that start after the last committed time (less a slack): not old news."""
        return [w for w in words if w.start > self.last_committed_time - _START_SLACK_SEC]

    def _confident(self, before: float, confidence: float) -> list[Word]:
        """Pop the new hypothesis's next sure words that end before ``before`` (never its last)."""
        sure: list[Word] = []
        while len(self.new) > 1 and self.new[0].end <= before and self.new[0].probability >= confidence:
            sure.append(self.new.pop(0))
        return sure

    def _due(self, before: float) -> list[Word]:
        """Pop the new hypothesis's next words that end before ``before`` (never its last)."""
        due: list[Word] = []
        while len(self.new) > 1 and self.new[0].end <= before:
            due.append(self.new.pop(0))
        return due

    def hold(self) -> None:
        """Make the new hypothesis the unconfirmed one, committing nothing (see ``flush``)."""
        self.older = self.buffer
        self.buffer = self.new
        self.new = []

    def force_commit(self, keep_last: int = 0) -> list[Word]:
        """Commit the unconfirmed hypothesis (end of stream, end of voice, hard cap).

        ``keep_last`` words at its end stay unconfirmed.
        """
        split = max(0, len(self.buffer) - keep_last)
        commit, self.buffer = self.buffer[:split], self.buffer[split:]
        if commit:
            self.last_committed_word = commit[-1].text
            self.last_committed_time = commit[-1].end
        self.committed_in_buffer.extend(commit)
        return commit

    def pop_committed(self, time: float) -> list[Word]:
        """Forget committed words that end at or before ``time``; return them."""
        k = 0
        while k < len(self.committed_in_buffer) and self.committed_in_buffer[k].end <= time:
            k += 1
        popped = self.committed_in_buffer[:k]
        del self.committed_in_buffer[:k]
        return popped

    def complete(self) -> list[Word]:
        """The current unconfirmed hypothesis."""
        return list(self.buffer)

    # -- checkpointing ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "committed": [list(w) for w in self.committed_in_buffer],
            "buffer": [list(w) for w in self.buffer],
            "older": [list(w) for w in self.older],
            "last_time": self.last_committed_time,
            "last_word": self.last_committed_word,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.committed_in_buffer = [as_word(w) for w in state["committed"]]
        self.buffer = [as_word(w) for w in state["buffer"]]
        self.older = [as_word(w) for w in state.get("older", ())]
        self.new = []
        self.last_committed_time = float(state["last_time"])
        self.last_committed_word = state["last_word"]


def _common_prefix(a: Sequence[Word], b: Sequence[Word]) -> int:
    n = 0
    while n < len(a) and n < len(b) and same_word(a[n], b[n]):
        n += 1
    return n


def same_word(a: Word, b: Word) -> bool:
    """Two hypotheses' words are one: the same text but for case and punctuation, in the same place.

    Whisper re-punctuates a phrase as more of the sentence arrives ("course," then "course."); the
    words did not change, and waiting for the punctuation to settle costs a chunk of latency.
    """
    return _bare(a.text) == _bare(b.text) and abs(a.start - b.start) <= _AGREE_SLACK_SEC


def _bare(text: str) -> str:
    return _NOT_WORD.sub("", text).lower()
