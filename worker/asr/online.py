"""Streaming recognition with LocalAgreement (whisper_streaming's ``OnlineASRProcessor``).

Each iteration re-transcribes the audio buffer, commits what the newest hypothesis agrees on with
the one before it (or with the one before that: two of the last three decodes), and trims the
buffer behind committed text so it never grows without bound. Differences from the original,
each on purpose:

* The prompt is the last ~200 characters of committed text *before* the buffer, including the
  last such word (the original skips it).
* A word commits when the newest hypothesis agrees on it with the one before it *or* the one
  before that (the original needs two consecutive hypotheses): one odd decode in between no
  longer holds it back for another chunk (``HypothesisBuffer.flush``).
* With ``committed_prefix`` (off by default), a backend that can (``ASRBase.continues_prefix``)
  gets the committed words *inside* the buffer as a forced prefix and returns only the words after
  them, so a new hypothesis is not spliced onto the committed text by word times (loose at pauses,
  where the splice loses or doubles words). Measured better on clean 16 kHz calls and worse on
  8 kHz μ-law, where forced errors lead the continuation astray (docs/benchmarks.md).
* With ``conversation_prompt`` (on by default), a processor of one channel of a multichannel
  call also hears what the other channels commit (:meth:`hear`), and its prompt is the last
  ~200 characters of both parties' committed words in time order: the customer's answer is
  decoded after the agent's question, as in the mix. On all 26 long calls as stereo the
  customer channel read 14.4 % against 16.0 % and the agent's 9.0 % against 8.7 % (docs/benchmarks.md).
* Committed words are kept only while the buffer covers them, plus the prompt's tail: memory is
  bounded for calls that last hours.
* A hard cap: if nothing commits, the buffer is force-cut before Whisper's 30 s window.
* With ``vad`` on, an iteration whose new audio holds no speech (and with no hypothesis pending)
  skips the transcribe call and drops the silent audio.
* Words of segments whose no-speech probability is high are dropped by the backend.
* The audio buffer holds samples at the input rate, and positions are whole samples, so that a
  snapshot restored on another machine and fed the same audio reproduces every later output.

With ``vac`` (on by default, with ``vad``) the buffer is bounded by utterances, as
whisper_streaming's voice activity controller does it:

* nothing is decoded until Silero hears speech, and the buffer then starts 0.2 s before it, so
  Whisper never sees a buffer of line hiss (a source of phrases invented at the start of calls);
* once the voice has paused for ``VAC_SILENCE_SEC`` the processor is due at once: it decodes
  the stretch with the pause after it as padding, commits the whole hypothesis (marked
  ``utterance_end``), and cuts the buffer in the pause. Buffers stay one turn long, so each
  decode is cheap and the words at a turn's end commit about half a second after they are said;
* within a stretch, LocalAgreement commits as before, and with ``commit_deadline_sec``
  (2.0 s by default) a word of the newest hypothesis commits once that much audio follows it,
  agreed or not, which bounds commit lag. With
  ``commit_policy="utterance"`` nothing commits inside a stretch: its chunk decodes only feed
  partials, and the stretch is committed once, at its end, from one decode in Whisper's full
  window.
* with ``turn_context_sec`` (10 s in the default ``ASRConfig``; 4 s for each channel of a
  multichannel session, ``ASRConfig.for_channels``), the cut at an utterance end keeps that much
  of the committed speech before it, from a sentence start: the next turn is decoded with the
  turns before it in the window (their words are re-read and dropped by time, as committed
  words are). The context stays through the silence after it (on one channel of a call, the
  other party's turn) while it starts within ``CONTEXT_SPAN_SEC`` (12 s) of the cut.
  It is the first cost a worker short of compute drops (:meth:`set_economy`): the buffer is then
  cut in the pause, as it was before the context existed; a worker further short of compute also
  marks every request for a cheaper decode (``TranscribeRequest.economy``);
* :meth:`finish` decodes the open stretch once more instead of committing a stale hypothesis,
  so the last words of a call are not lost;
* a closing decode (utterance end or :meth:`finish`) whose words stop ``EARLY_STOP_SEC`` before
  the voice does is not the end of the stretch: the rest is decoded again, after the last
  committed phrase as context (:mod:`worker.asr.utterance`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from worker.asr.audio import WHISPER_SAMPLE_RATE, resample
from worker.asr.contracts import ASRBase, Committed, EconomyLevel, TranscribeRequest, Word
from worker.asr.hypothesis import HypothesisBuffer
from worker.asr.trimming import BufferTrimming
from worker.asr.utterance import VAC_SILENCE_SEC, UtteranceBuffering
from worker.asr.voice import VoiceTracker
from worker.errors import SnapshotError

if TYPE_CHECKING:
    from worker.asr.config import ASRConfig

SNAPSHOT_VERSION = 3
#: Snapshot versions :meth:`OnlineASRProcessor.restore` reads: 1 has no voice state, and 1 and 2
#: keep the prompt as text without times (their words are taken to lie at the buffer's start).
READABLE_SNAPSHOT_VERSIONS = (1, 2, SNAPSHOT_VERSION)
#: Characters of committed text given to Whisper as the initial prompt.
PROMPT_CHARS = 200
#: Whisper reads 30 s windows; the buffer is force-cut before it reaches that.
MAX_BUFFER_SEC = 28.0
#: What makes an iteration due: see :meth:`OnlineASRProcessor.due_point`.
ProcessingPoint = Literal["utterance_end", "pause", "chunk"]


class OnlineASRProcessor(UtteranceBuffering, BufferTrimming):
    """Turns a growing audio stream into committed text; see the module docstring.

    ``sample_rate`` is the rate of the audio given to :meth:`insert_audio_chunk` (telephony
    8 kHz is fine); it is resampled to 16 kHz for each transcribe call.
    """

    def __init__(
        self,
        asr: ASRBase,
        tokenizer: Any = None,
        buffer_trimming: tuple[str, float] = ("segment", 15),
        min_chunk_sec: float = 1.0,
        logfile: Any = None,
        *,
        sample_rate: int = WHISPER_SAMPLE_RATE,
        vad: bool = False,
        vac: bool = False,
        max_buffer_sec: float = MAX_BUFFER_SEC,
        prompt_chars: int = PROMPT_CHARS,
        commit_policy: str = "agreement",
        commit_deadline_sec: float | None = None,
        committed_prefix: bool = False,
        turn_context_sec: float = 0.0,
        conversation_prompt: bool = False,
    ) -> None:
        self.asr = asr
        self.tokenizer = tokenizer  # accepted for the guide's signature; sentences split on punctuation
        self.buffer_trimming_way, trimming_sec = buffer_trimming
        if self.buffer_trimming_way not in ("segment", "sentence"):
            raise ValueError(f"buffer_trimming must be 'segment' or 'sentence', not {self.buffer_trimming_way!r}")
        self.buffer_trimming_sec = float(trimming_sec)
        self.min_chunk_sec = float(min_chunk_sec)
        self.sample_rate = int(sample_rate)
        self.vad = vad
        # utterance-bounded buffers rest on the voice tracker
        self.vac = vac and vad
        self.max_buffer_sec = min(float(max_buffer_sec), MAX_BUFFER_SEC)
        self.prompt_chars = int(prompt_chars)
        if commit_policy not in ("agreement", "utterance"):
            raise ValueError(f"commit_policy must be 'agreement' or 'utterance', not {commit_policy!r}")
        # commits only at utterance ends rest on the voice tracker too
        self.commit_at_utterance_end = commit_policy == "utterance" and self.vac
        self.commit_deadline_sec = commit_deadline_sec
        self.committed_prefix = committed_prefix
        self.turn_context_sec = float(turn_context_sec)
        self.conversation_prompt = conversation_prompt
        #: Set by a worker short of compute (``EconomicalProcessor``); not part of the snapshot.
        self.economy = EconomyLevel.OFF
        self.init()

    @classmethod
    def from_config(cls, asr: ASRBase, config: ASRConfig, *, vad: bool | None = None) -> OnlineASRProcessor:
        """The processor a built-in loader wraps around ``asr`` for ``config``."""
        return cls(
            asr,
            buffer_trimming=(config.buffer_trimming, config.buffer_trimming_sec),
            min_chunk_sec=config.min_chunk_size,
            sample_rate=config.input_sample_rate,
            vad=config.vad if vad is None else vad,
            vac=config.vac,
            prompt_chars=config.prompt_chars,
            commit_policy=config.commit_policy,
            commit_deadline_sec=config.commit_deadline_sec,
            committed_prefix=config.committed_prefix,
            turn_context_sec=config.turn_context_sec,
            conversation_prompt=config.conversation_prompt,
        )

    # -- the guide's contract ----------------------------------------------------------------

    def init(self, offset: float = 0.0) -> None:
        start = round((offset or 0.0) * self.sample_rate)
        self.audio_buffer = np.zeros(0, dtype=np.float32)
        self.buffer_start = start
        self.processed_end = start
        self.transcript_buffer = HypothesisBuffer()
        self.transcript_buffer.last_committed_time = start / self.sample_rate
        #: Committed words of this channel that left the buffer: the prompt's own share.
        self.prompt_words: deque[Word] = deque()
        #: Committed words of the call's other channels (:meth:`hear`), the rest of the prompt.
        self.heard: deque[Word] = deque()
        self._pending: TranscribeRequest | None = None
        self._pending_final = False
        self._pending_phrase = False
        #: Where the last cut at an utterance end fell before the turn context moved it back.
        self._plain_cut = start / self.sample_rate
        self.voice = VoiceTracker(self.sample_rate, VAC_SILENCE_SEC)
        self.voice.state.next_window = -(-start * 16000 // self.sample_rate // 512)

    def insert_audio_chunk(self, audio: np.ndarray) -> None:
        chunk = np.asarray(audio, dtype=np.float32).reshape(-1)
        self.audio_buffer = np.concatenate([self.audio_buffer, chunk])
        if self.vac:
            self.voice.update(self.audio_buffer, self.buffer_start)

    def process_iter(self) -> Committed:
        request = self.prepare_iter()
        if request is None:
            return self.complete_iter(None)
        result = self.asr.transcribe_requests([request])[0]
        return self.complete_iter(result)

    def finish(self) -> Committed:
        """Commit the unconfirmed tail; the stream is over.

        With ``vac``, an open stretch is decoded once more up to the end of the audio, and its
        whole hypothesis is committed as an utterance end; if that decode stopped early, the
        audio after its last word is decoded again first, as at an utterance end.
        """
        if self.vac and self.voice.voiced:
            return self._finish_utterance()
        words = self.transcript_buffer.force_commit()
        self._trim_to(self.buffer_end / self.sample_rate)
        return self._committed(words, utterance_end=bool(words) and self.vac)

    # -- positions ---------------------------------------------------------------------------

    @property
    def buffer_end(self) -> int:
        """Absolute sample index one past the last inserted sample."""
        return self.buffer_start + self.audio_buffer.shape[0]

    @property
    def buffer_time_offset(self) -> float:
        return self.buffer_start / self.sample_rate

    @property
    def unprocessed_sec(self) -> float:
        return (self.buffer_end - self.processed_end) / self.sample_rate

    def is_due(self) -> bool:
        """Enough new audio arrived for another iteration, or (``vac``) the voice paused."""
        return self.due_point() is not None

    def due_point(self) -> ProcessingPoint | None:
        """The kind of processing point the next iteration is, or ``None`` while not due.

        ``"utterance_end"`` and ``"pause"`` come only with ``vac`` (the voice paused for
        ``VAC_SILENCE_SEC`` or ``PHRASE_PAUSE_SEC``); ``"chunk"`` is ``min_chunk_sec`` of new audio.
        """
        if self.vac and self.voice.pause_after_current():
            return "utterance_end"
        if self.vac and self._phrase_due():
            return "pause"
        return "chunk" if self.unprocessed_sec >= self.min_chunk_sec else None

    def can_defer(self, step_sec: float) -> bool:
        """A chunk point may wait for more audio (a worker catching up merges chunk steps).

        Never an utterance end or a pause, whose decodes close what was said, and never past
        ``step_sec`` of new audio or a buffer that the merged audio would push past the hard cap.
        """
        if self.due_point() != "chunk" or self.unprocessed_sec >= step_sec:
            return False
        return self.audio_buffer.shape[0] / self.sample_rate + step_sec - self.unprocessed_sec < self.max_buffer_sec

    def set_economy(self, level: EconomyLevel) -> None:
        """From ``NO_CONTEXT`` up, cuts at utterance ends keep no turn context (shorter buffers);
        at ``CHEAP_DECODES`` every request is marked ``economy`` too.

        Called between iterations. When the context is dropped, the context kept at the last cut
        leaves the buffer at once (it is committed speech, and silence) rather than at the next
        utterance end, which may be a long turn away.
        """
        level = EconomyLevel(level)
        if level >= EconomyLevel.NO_CONTEXT > self.economy:
            self._trim_to(self._plain_cut)
        self.economy = level

    def hear(self, words: Sequence[Word]) -> None:
        """Words another channel of the same call committed; with ``conversation_prompt`` they
        join the prompt of the next decodes (the session calls this; see ``ConversationalProcessor``)."""
        if not self.conversation_prompt:
            return
        for word in words:
            self.heard.append(Word(word.start, word.end, word.text))
        _keep_tail(self.heard, self.prompt_chars)

    def partial(self) -> Committed:
        """The unconfirmed hypothesis after the last iteration (words not committed yet)."""
        return self._committed(self.transcript_buffer.complete())

    # -- one iteration, split around the transcribe call so the worker can batch it ----------

    def prepare_iter(self) -> TranscribeRequest | None:
        """The transcribe call this iteration needs, or ``None`` when there is nothing to hear."""
        if self.vac:
            return self._prepare_utterance()
        audio16k = resample(self.audio_buffer, self.sample_rate)
        self._pending = None
        if audio16k.shape[0] == 0:
            return None
        if self.vad and not self.transcript_buffer.buffer:
            from worker.asr.vad import has_speech

            new_from = int((self.processed_end - self.buffer_start) * WHISPER_SAMPLE_RATE / self.sample_rate)
            if not has_speech(audio16k[max(0, new_from) :]):
                return None
        self._pending = self._request(audio16k)
        return self._pending

    def complete_iter(self, result: Any) -> Committed:
        """Take the backend's result for :meth:`prepare_iter`'s request (``None`` if skipped)."""
        if self.vac:
            return self._complete_utterance(result)
        request, self._pending = self._pending, None
        self.processed_end = self.buffer_end
        if request is None:
            self._drop_unvoiced()
            return self._committed([])
        committed = self.transcript_buffer.flush() if self._insert(request, result) else []
        committed += self._trim_after_iteration(result, bool(committed))
        return self._committed(committed)

    def prompt(self) -> str:
        """Up to ~200 characters of committed text that lies before the buffer, and of what the
        other channels committed (:meth:`hear`), in time order."""
        words: list[Word] = list(self.prompt_words)
        if self.heard:
            # sorted is stable: at equal start times this channel's words come first
            words = sorted([*words, *self.heard], key=lambda w: w.start)
        tail: list[str] = []
        length = 0
        for word in reversed(words):
            length += len(word.text) + 1
            if length > self.prompt_chars:
                break
            tail.append(word.text)
        return self.asr.sep.join(reversed(tail)).strip()

    def _request(self, audio16k: np.ndarray, *, final: bool = False) -> TranscribeRequest:
        """The transcribe call for ``audio16k`` (the buffer from its start) with the prompt and,
        for a backend that continues committed text, the committed words inside the buffer."""
        committed = self.transcript_buffer.committed_in_buffer
        prefix = ""
        if self.committed_prefix and self.asr.continues_prefix and committed:
            prefix = self.asr.sep.join(w.text for w in committed).strip()
        economy = self.economy >= EconomyLevel.CHEAP_DECODES
        return TranscribeRequest(audio16k, self.prompt(), final=final, prefix=prefix, economy=economy)

    def _insert(self, request: TranscribeRequest | None, result: Any) -> bool:
        """Make ``result``'s words the new hypothesis; False if it brought none to replace the last.

        A decode that continued the committed text returns only the words after it; any other
        re-read the committed words too, and the hypothesis keeps the words after them by time.
        A continuation that stops at once says nothing about the words the last hypothesis heard
        after the committed ones (measured: the model sometimes ends right after a prefix that
        closes a sentence), so that hypothesis stays.
        """
        words = self.asr.ts_words(result)
        continues = request is not None and bool(request.prefix)
        if continues and not words and self.transcript_buffer.buffer:
            return False
        self.transcript_buffer.insert(words, self.buffer_time_offset, continues=continues)
        return True

    def _remember_for_prompt(self, word: Word) -> None:
        # as a snapshot keeps it: the probability plays no part in a prompt
        self.prompt_words.append(Word(word.start, word.end, word.text))
        _keep_tail(self.prompt_words, self.prompt_chars)

    def _committed(self, words: list[Word], *, utterance_end: bool = False) -> Committed:
        if not words:
            return Committed(None, None, "")
        text = self.asr.sep.join(w.text for w in words)
        return Committed(words[0].start, words[-1].end, text, tuple(words), utterance_end)

    # -- checkpointing -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """State without audio: positions in absolute input samples, hypothesis, prompt tail."""
        return {
            "v": SNAPSHOT_VERSION,
            "sample_rate": self.sample_rate,
            "buffer_start": self.buffer_start,
            "buffer_end": self.buffer_end,
            "processed_end": self.processed_end,
            "hypothesis": self.transcript_buffer.snapshot(),
            "prompt": [[w.start, w.end, w.text] for w in self.prompt_words],
            "heard": [[w.start, w.end, w.text] for w in self.heard],
            "voice": self.voice.snapshot() if self.vac else None,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a snapshot; then insert the audio from ``buffer_start`` on, as it came before."""
        try:
            # version 1 has no voice state: the tracker starts again where the buffer starts
            if state["v"] not in READABLE_SNAPSHOT_VERSIONS:
                raise SnapshotError(f"snapshot version {state['v']} is not one of {READABLE_SNAPSHOT_VERSIONS}")
            if int(state["sample_rate"]) != self.sample_rate:
                raise SnapshotError(
                    f"snapshot was taken at {state['sample_rate']} Hz, this processor runs at {self.sample_rate} Hz"
                )
            self.init()
            self.buffer_start = int(state["buffer_start"])
            self.processed_end = int(state["processed_end"])
            self.transcript_buffer.restore(state["hypothesis"])
            if state["v"] >= 3:
                self.prompt_words = deque(_word(w) for w in state["prompt"])
                self.heard = deque(_word(w) for w in state["heard"])
            else:
                at = self.buffer_start / self.sample_rate
                self.prompt_words = deque(Word(at, at, str(w)) for w in state["prompt"])
            if self.vac and state.get("voice") is not None:
                self.voice.restore(state["voice"])
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SnapshotError(f"malformed processor snapshot: {e!r}") from e


def _keep_tail(words: deque[Word], chars: int) -> None:
    """Drop the oldest words until the rest (each with a separator) fit in ``chars``."""
    while words and sum(len(w.text) + 1 for w in words) > chars:
        words.popleft()


def _word(item: Any) -> Word:
    start, end, text = item
    return Word(float(start), float(end), str(text))
