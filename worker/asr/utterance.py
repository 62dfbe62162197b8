"""Utterance-bounded buffers (``vac``): the processor's steps when the voice tracker leads.

Mixed into :class:`~worker.asr.online.OnlineASRProcessor`, whose state it shares; see that
module's docstring for the policy. Three kinds of processing point, all from the voice tracker,
so all a function of the input:

* **utterance end**: the voice paused for ``VAC_SILENCE_SEC``. Decode the stretch with the
  pause after it (beam ``final_beam_size``), commit the whole hypothesis marked
  ``utterance_end``, and cut the buffer in the pause. A decode whose words stop
  ``EARLY_STOP_SEC`` or more before the voice did ended early (Whisper's end of text in the
  middle of speech, most often in a long window): its words are committed, the buffer is cut
  before the last phrase of them (``RESUME_CONTEXT_SEC``), and the rest of the stretch is decoded
  after that phrase at the next iteration, much as faster-whisper's ``transcribe`` seeks past a
  window's last segment;
* **short pause**: ``PHRASE_PAUSE_SEC`` of silence inside a stretch. Decode the buffer, commit all
  but the last word, keep the buffer: the words before a pause have all the context they get,
  and committing them now saves a chunk of latency;
* **chunk**: ``min_chunk_sec`` of new audio in a stretch. LocalAgreement, plus words of a
  single hypothesis that the model is sure of and that lie well inside the audio, plus (with
  ``commit_deadline_sec``, 2.0 s by default) the words that have that much audio after them.

With ``commit_policy="utterance"`` there are no short-pause points, and a chunk commits nothing:
its hypothesis is the partial, and the whole stretch is committed at its end from one decode
(unless it runs past the buffer's hard cap, which commits what the hypothesis holds).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from worker.asr.audio import resample
from worker.asr.contracts import Committed, EconomyLevel, TranscribeRequest, Word

if TYPE_CHECKING:
    from worker.asr.online import OnlineASRProcessor

#: With ``vac``, this much silence after speech ends a voiced stretch and commits its tail (500 ms,
#: as whisper_streaming's voice activity controller).
VAC_SILENCE_SEC = 0.5
#: With ``vac``, a stretch keeps this much audio before its first voiced window (onsets are soft).
VAC_PRE_ROLL_SEC = 0.2
#: With ``vac``, the decode at a pause sees at most this much of the pause after the speech.
VAC_TAIL_SEC = 0.5
#: With ``vac``, a word of a single hypothesis commits when it ends this far before the buffer's
#: end with at least this probability (see :meth:`HypothesisBuffer.flush`).
CONFIDENT_MARGIN_SEC = 0.6
#: 0.7 rather than 0.85: on all 26 evaluation calls it brought μ-law's lag p50 from 1.56 to 1.48 s
#: (the bound is 1.5 s) with a quarter point less WER there (29.96 -> 29.69 %), for 0.14 points
#: more on the mix (13.70 -> 13.84 %; lag p50 1.40 -> 1.28 s). See docs/benchmarks.md.
CONFIDENT_PROBABILITY = 0.7
#: With ``vac``, a pause this long inside a stretch commits the words before it (all but the last).
PHRASE_PAUSE_SEC = 0.3
#: With ``vac``, a stretch is decoded within its length only once this much of it is voiced.
VAC_MIN_VOICED_SEC = 1.0
#: With ``vac``, a closing decode whose last word ends this long before the stretch's voice ends
#: stopped early; the rest of the stretch is decoded again instead of being cut away unheard.
#: Seen on ci-30s as μ-law with ``turn_context_sec=4``: two stops, 4.7 s and 6.3 s before the voice
#: did, and the words under them were cut away unheard.
EARLY_STOP_SEC = 1.0
#: ... provided its words reach this far past the buffer's start, so every resume moves on.
RESUME_MIN_SEC = 0.3
#: The decode after an early stop starts at the last committed phrase that begins at least this
#: long before the last word heard, not at that word's end: the rest of the turn, decoded alone,
#: began mid-sentence with nothing to go on ("Did you receive an e-mail from us and out this?").
#: All 26 long calls: 16 kHz mix 11.70 -> 11.02 % (lag p95 2.80 -> 2.94 s), μ-law 26.76 ->
#: 25.85 % (lag p95 3.08 -> 3.18 s: longer buffers stop early more often; docs/benchmarks.md).
RESUME_CONTEXT_SEC = 2.0
#: From ``EconomyLevel.CHEAP_DECODES`` up the newest hypothesis is a greedy decode in a tight window,
#: and a shorter ``commit_deadline_sec`` would commit its guesses: a worker behind four gateway
#: sessions (``tests/test_gateways_real.py``, economy level 2 throughout) read 28.5 % with a 2.0 s
#: deadline against 25.0 % with 2.5 s, and 20.0 % with either without economy.
CHEAP_DECODE_DEADLINE_SEC = 2.5
#: With ``turn_context_sec``, the context is the speech before the last committed word, and it stays
#: in the buffer through the silence after it while it starts at most this long before the cut: on
#: one channel of a call the speaker's last turn and the next lie a turn of the other party apart,
#: and until 2026-12-07 the context aged out in that silence (it was the speech within
#: ``turn_context_sec`` of the cut), so each turn was decoded without its speaker's voice before it.
#: All 26 calls as stereo: agent channel 9.32 -> 8.73 %, customer 14.00 -> 13.36 % (docs/benchmarks.md).
CONTEXT_SPAN_SEC = 12.0
#: With ``turn_context_sec``, the context starts this long before its first word's aligned start.
CONTEXT_LEAD_SEC = 0.1
#: ... at a word after a sentence mark, or after a gap this long (a pause or a turn change).
CONTEXT_GAP_SEC = 0.3
_SENTENCE_MARK = re.compile(r"[.!?,]['\"]*$")


def _begins_phrase(before: Word, word: Word) -> bool:
    return bool(_SENTENCE_MARK.search(before.text.strip())) or word.start - before.end > CONTEXT_GAP_SEC


class UtteranceBuffering:
    """The ``vac`` steps of :class:`~worker.asr.online.OnlineASRProcessor`."""

    def _prepare_utterance(self: OnlineASRProcessor) -> TranscribeRequest | None:
        self._pending = None
        self._pending_final = False
        self._pending_phrase = False
        current = self.voice.current()
        if current is None:
            return None
        start, end = current
        if self.voice.pause_after_current():
            self._pending_final = True
            if end <= self.voice.state.phrase_mark and self.transcript_buffer.buffer:
                # the short pause before this one decoded the whole stretch already: nothing new
                # was said since, so that hypothesis closes the stretch without another decode
                return None
            self._pending = self._final_request(end + round(VAC_TAIL_SEC * self.sample_rate))
            return self._pending
        if self._phrase_due():
            self._pending_phrase = True
            self._pending = self._final_request(self.buffer_end)
            return self._pending
        if (end - max(start, self.buffer_start)) / self.sample_rate < VAC_MIN_VOICED_SEC:
            return None
        self._pending = self._request(resample(self.audio_buffer, self.sample_rate))
        return self._pending

    def _phrase_due(self: OnlineASRProcessor) -> bool:
        """A short pause inside the stretch commits the words before it (agreement commits only)."""
        return not self.commit_at_utterance_end and self.voice.short_pause(PHRASE_PAUSE_SEC)

    def _final_request(self: OnlineASRProcessor, upto: int) -> TranscribeRequest:
        """The decode of the buffer up to ``upto`` (absolute samples) that closes a stretch."""
        upto = min(max(upto, self.buffer_start), self.buffer_end)
        audio = self.audio_buffer[: upto - self.buffer_start]
        return self._request(resample(audio, self.sample_rate), final=True)

    def _complete_utterance(self: OnlineASRProcessor, result: Any) -> Committed:
        request, self._pending = self._pending, None
        final, self._pending_final = self._pending_final, False
        phrase, self._pending_phrase = self._pending_phrase, False
        self.processed_end = self.buffer_end
        current = self.voice.current()
        if final and current is not None:
            return self._complete_final(request, result if request is not None else None, current[1])
        if request is None:
            if not self.voice.voiced:
                self._drop_before_voice()
            return self._committed([])
        if phrase:
            return self._complete_phrase(request, result)
        committed: list[Word] = []
        heard = self._insert(request, result)  # not heard: the last hypothesis stays
        if heard and self.commit_at_utterance_end:
            self.transcript_buffer.hold()  # the partial; the stretch commits at its end
        elif heard:
            end_sec = self.buffer_end / self.sample_rate
            committed = self.transcript_buffer.flush(
                end_sec - CONFIDENT_MARGIN_SEC, CONFIDENT_PROBABILITY, self._deadline(end_sec)
            )
        # the voice tracker says the stretch goes on, so an empty hypothesis is no reason to drop it
        committed += self._trim_after_iteration(result, bool(committed), drop_unvoiced=False)
        return self._committed(committed)

    def _complete_phrase(self: OnlineASRProcessor, request: TranscribeRequest, result: Any) -> Committed:
        """A short pause: commit all but the hypothesis's last word, which the pause may still close.

        The buffer is not cut (the turn may go on, and its words need the context). The last word
        waits: if the pause grows into an utterance end, it is committed then and carries the
        marker; if the speaker goes on, LocalAgreement settles it.
        """
        self.voice.mark_phrase()
        committed = self.transcript_buffer.flush() if self._insert(request, result) else []
        committed += self.transcript_buffer.force_commit(keep_last=1)
        return self._committed(committed)

    def _complete_final(
        self: OnlineASRProcessor, request: TranscribeRequest | None, result: Any | None, speech_end: int
    ) -> Committed:
        """Commit the whole hypothesis of the stretch that ends at ``speech_end``; cut the pause.

        ``result`` is ``None`` when the hypothesis of the short pause before is still current.
        """
        committed = self._final_words(request, result)
        resume = self._resume_point(speech_end)
        if resume is not None:
            self._trim_to(self._resume_cut(resume))  # the stretch stays open; its rest is the next decode
            return self._committed(committed)
        return self._close_stretch(committed, speech_end)

    def _finish_utterance(self: OnlineASRProcessor) -> Committed:
        """The stream ends inside a stretch: decode it to the end (again past an early stop)."""
        speech_end = min(max(self.voice.state.speech_end, self.buffer_start), self.buffer_end)
        words: list[Word] = []
        while True:
            request = self._final_request(self.buffer_end)
            words += self._final_words(request, self.asr.transcribe_requests([request])[0])
            resume = self._resume_point(speech_end)
            if resume is None:
                break
            self._trim_to(self._resume_cut(resume))  # the decode stopped early: hear the rest again
        words += self._close_stretch([], self.buffer_end).words
        words += self.transcript_buffer.force_commit()
        self._trim_to(self.buffer_end / self.sample_rate)
        return self._committed(words, utterance_end=bool(words))

    def _final_words(self: OnlineASRProcessor, request: TranscribeRequest | None, result: Any | None) -> list[Word]:
        """Commit the whole hypothesis of a closing decode (``result`` ``None``: the current one)."""
        committed = []
        if result is not None and self._insert(request, result):
            if self.commit_at_utterance_end:
                self.transcript_buffer.hold()  # this decode alone says what the stretch holds
            else:
                committed = self.transcript_buffer.flush()
        return committed + self.transcript_buffer.force_commit()

    def _resume_point(self: OnlineASRProcessor, speech_end: int) -> float | None:
        """Where to cut if the closing decode stopped early (``EARLY_STOP_SEC``), else ``None``.

        It is the end of the last committed word: the words before it stay committed, and the
        voiced audio after it, which the decode did not hear, is decoded again on its own. Only
        committed words and positions decide, so a restored processor resumes at the same place.
        """
        heard = self.transcript_buffer.last_committed_time
        if heard < self.buffer_start / self.sample_rate + RESUME_MIN_SEC:
            return None
        return heard if speech_end / self.sample_rate - heard >= EARLY_STOP_SEC else None

    def _resume_cut(self: OnlineASRProcessor, heard: float) -> float:
        """Where to cut after an early stop whose last committed word ends at ``heard`` (seconds).

        At the start of the last committed phrase (a sentence start or a word after a pause) that
        begins ``RESUME_CONTEXT_SEC`` or more before ``heard``, so the rest is decoded with that
        phrase in the window; the re-read words are dropped by time, as a turn context's are.
        Past the buffer's start by ``RESUME_MIN_SEC`` at least, so every resume moves on (the
        decode from the old start is the one that stopped); failing such a phrase, at ``heard``.
        """
        floor = self.buffer_start / self.sample_rate + RESUME_MIN_SEC
        words = [w for w in self.transcript_buffer.committed_in_buffer if w.end <= heard]
        starts = [
            words[k].start - CONTEXT_LEAD_SEC
            for k in range(1, len(words))
            if _begins_phrase(words[k - 1], words[k])
            and floor <= words[k].start - CONTEXT_LEAD_SEC <= heard - RESUME_CONTEXT_SEC
        ]
        return max(starts, default=heard)

    def _close_stretch(self: OnlineASRProcessor, committed: list[Word], speech_end: int) -> Committed:
        """The stretch that ends at ``speech_end`` is heard out: cut the buffer in the pause."""
        self.voice.cut_current()
        # cut in the pause (after any word the alignment stretched into it), keeping the
        # pre-roll of a stretch that already started in the pause
        cut = max(speech_end + round(VAC_PRE_ROLL_SEC * self.sample_rate) // 2, self._last_committed_sample())
        following = self.voice.current()
        if following is not None:
            cut = min(cut, following[0] - round(VAC_PRE_ROLL_SEC * self.sample_rate))
        self._trim_to(self._with_turn_context(max(cut, self.buffer_start) / self.sample_rate))
        if not self.voice.voiced:
            self._drop_before_voice()
        return self._committed(committed, utterance_end=bool(committed))

    def _drop_before_voice(self: OnlineASRProcessor) -> None:
        """No speech since the last cut: keep only the pre-roll that a starting word may need."""
        keep_from = self.buffer_end - round(VAC_PRE_ROLL_SEC * self.sample_rate)
        cut = max(keep_from, self._last_committed_sample())
        if cut > self.buffer_start:
            self._trim_to(self._with_turn_context(cut / self.sample_rate))

    def _with_turn_context(self: OnlineASRProcessor, cut: float) -> float:
        """Where to cut instead of ``cut`` (seconds) so the buffer keeps ``turn_context_sec`` of context.

        The context starts at a committed word that begins a sentence or follows a pause (a
        decode that starts mid-phrase tends to stop early), the earliest such word that starts
        within ``turn_context_sec`` of the end of the last committed word before ``cut``; failing
        one, at the earliest word within it. The silence after that word stays in the buffer
        with it, until the context would start more than ``CONTEXT_SPAN_SEC`` before ``cut``:
        then it ages out. Derived only from the committed words the snapshot holds, so a
        restored processor cuts at the same places, unless the worker's load switched economy
        (no context) on or off in between, as merged catch-up steps depend on the load too.
        """
        self._plain_cut = cut
        if self.turn_context_sec <= 0 or self.economy >= EconomyLevel.NO_CONTEXT:
            return cut
        words = [w for w in self.transcript_buffer.committed_in_buffer if w.end <= cut]
        if not words:
            return cut
        # the last turn_context_sec of speech before the cut, however long the silence after it
        # (on one channel of a call, the other party's turn), while it lies within the span
        earliest = max(words[-1].end - self.turn_context_sec, cut - CONTEXT_SPAN_SEC)
        inside = [k for k, w in enumerate(words) if w.start >= earliest]
        if not inside:
            return cut
        starts = [k for k in inside if k == 0 or _begins_phrase(words[k - 1], words[k])]
        first = words[starts[0] if starts else inside[0]]
        return max(first.start - CONTEXT_LEAD_SEC, self.buffer_start / self.sample_rate)

    def _deadline(self: OnlineASRProcessor, end_sec: float) -> float | None:
        """Words ending before this commit from the newest hypothesis, agreed or not."""
        if self.commit_deadline_sec is None:
            return None
        wait = self.commit_deadline_sec
        if self.economy >= EconomyLevel.CHEAP_DECODES:
            wait = max(wait, CHEAP_DECODE_DEADLINE_SEC)
        return end_sec - wait

    def _last_committed_sample(self: OnlineASRProcessor) -> int:
        return round(self.transcript_buffer.last_committed_time * self.sample_rate)
