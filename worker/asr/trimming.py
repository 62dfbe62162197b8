"""Buffer trimming of :class:`~worker.asr.online.OnlineASRProcessor` (whisper_streaming's ``chunk_*``).

Mixed into the processor, whose state it shares. The buffer is cut behind committed text: at the
last Whisper segment end that is fully committed once the buffer passes ``buffer_trimming_sec``
(``"segment"``), or at the last committed sentence end (``"sentence"``); a buffer with nothing in
it keeps only its last second; and a hard cap force-commits the hypothesis before Whisper's 30 s
window. Every cut moves the committed words before it into the prompt.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from worker.asr.contracts import Word

if TYPE_CHECKING:
    from worker.asr.online import OnlineASRProcessor

log = logging.getLogger(__name__)

#: When the buffer holds no words at all, keep this much of its end (a word may be starting).
KEEP_UNVOICED_SEC = 1.0
_SENTENCE_END = re.compile(r"[.!?…。？！]['\"”’)\]]*$")


class BufferTrimming:
    """The buffer cuts of :class:`~worker.asr.online.OnlineASRProcessor`."""

    def _trim_after_iteration(
        self: OnlineASRProcessor, result: Any, committed_now: bool, *, drop_unvoiced: bool = True
    ) -> list[Word]:
        """Trim the buffer; returns words that a hard cut had to commit unconfirmed."""
        buffer_sec = self.audio_buffer.shape[0] / self.sample_rate
        if committed_now and self.buffer_trimming_way == "sentence" and buffer_sec > self.buffer_trimming_sec:
            self._chunk_completed_sentence()
        limit = self.buffer_trimming_sec if self.buffer_trimming_way == "segment" else self.max_buffer_sec
        if self.audio_buffer.shape[0] / self.sample_rate > limit:
            self._chunk_completed_segment(result)
        if drop_unvoiced and not self.transcript_buffer.buffer and not self.transcript_buffer.committed_in_buffer:
            self._drop_unvoiced()
        if self.audio_buffer.shape[0] / self.sample_rate > self.max_buffer_sec:
            return self._force_cut()
        return []

    def _chunk_completed_segment(self: OnlineASRProcessor, result: Any) -> None:
        committed = self.transcript_buffer.committed_in_buffer
        if not committed:
            return
        last_committed_end = committed[-1].end
        ends = [e + self.buffer_time_offset for e in self.asr.segments_end_ts(result)]
        # the last segment may still grow; cut at the latest earlier end that is fully committed
        for end in reversed(ends[:-1]):
            if end <= last_committed_end:
                self._trim_to(end)
                return

    def _chunk_completed_sentence(self: OnlineASRProcessor) -> None:
        committed = self.transcript_buffer.committed_in_buffer
        ends = [w.end for w in committed[:-1] if _SENTENCE_END.search(w.text.strip())]
        if ends:
            self._trim_to(ends[-1])

    def _drop_unvoiced(self: OnlineASRProcessor) -> None:
        """Nothing pending and nothing committed in the buffer: keep only its last second."""
        if self.transcript_buffer.buffer:
            return
        keep_from = self.buffer_end - round(KEEP_UNVOICED_SEC * self.sample_rate)
        last_committed = round(self.transcript_buffer.last_committed_time * self.sample_rate)
        cut = max(keep_from, last_committed)
        if cut > self.buffer_start:
            self._trim_to(cut / self.sample_rate)

    def _force_cut(self: OnlineASRProcessor) -> list[Word]:
        log.debug("buffer passed %.1f s with nothing confirmed; committing the hypothesis", self.max_buffer_sec)
        forced = self.transcript_buffer.force_commit()
        cut = forced[-1].end if forced else (self.buffer_end / self.sample_rate) - KEEP_UNVOICED_SEC
        self._trim_to(cut)
        if self.audio_buffer.shape[0] / self.sample_rate > self.max_buffer_sec:
            # the hypothesis ended early in the buffer: cut anyway rather than exceed the window
            self._trim_to(self.buffer_end / self.sample_rate - KEEP_UNVOICED_SEC)
        return forced

    def _trim_to(self: OnlineASRProcessor, time: float) -> None:
        cut = min(max(round(time * self.sample_rate), self.buffer_start), self.buffer_end)
        for word in self.transcript_buffer.pop_committed(cut / self.sample_rate):
            self._remember_for_prompt(word)
        self.audio_buffer = self.audio_buffer[cut - self.buffer_start :].copy()
        self.buffer_start = cut
        self.processed_end = max(self.processed_end, cut)
