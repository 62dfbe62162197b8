"""Where the voiced stretches of a stream lie: Silero VAD scored at absolute positions.

:class:`VoiceTracker` scores every 32 ms window (512 samples at 16 kHz) of a stream once, as
the audio arrives, and keeps just enough to answer the questions the processor asks at each
processing point: has anyone spoken since the buffer was last cut at a pause, where did the
current stretch start, where did the voice last stop, and how long has it been silent since.

Windows sit at fixed absolute positions (window ``k`` covers 16 kHz samples ``512k`` to
``512(k+1)``), and Silero's recurrent state is carried from window to window and kept in the
snapshot, so the scores do not depend on how the audio was chunked, or on whether it was fed
live or replayed from a checkpoint: processing points that rest on them stay a function of the
input alone. Audio at another rate is brought to 16 kHz by linear interpolation at absolute
positions (a sample depends on its two neighbours only), which is plenty for voice activity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.asr.vad import SPEECH_THRESHOLD, VAD_WINDOW, SileroState, score_stream

#: Rate of the windows.
VAD_RATE = 16000


@dataclass
class VoiceState:
    """The tracker's checkpointable state; positions are absolute samples at the input rate."""

    #: Next window to score (absolute window index at 16 kHz).
    next_window: int = 0
    #: Voiced stretches not yet cut off, as ``[start, end]``: voiced windows closer than the
    #: pause length are one stretch.
    stretches: list[list[int]] = field(default_factory=list)
    #: End of the last voiced window heard (kept when its stretch is cut off).
    speech_end: int = 0
    #: The open stretch's end when its last short pause was handled (see ``short_pause``).
    phrase_mark: int = 0


class VoiceTracker:
    """Voice activity of one stream at ``rate`` Hz; see the module docstring."""

    def __init__(self, rate: int, pause_sec: float, threshold: float = SPEECH_THRESHOLD) -> None:
        self.rate = int(rate)
        self.pause = round(pause_sec * self.rate)
        self.threshold = threshold
        self.state = VoiceState()
        self.silero = SileroState()

    # -- positions ---------------------------------------------------------------------------

    def _to_input(self, pos16: int) -> int:
        return pos16 * self.rate // VAD_RATE

    @property
    def scored_end(self) -> int:
        """Input samples before this position have been scored."""
        return self._to_input(self.state.next_window * VAD_WINDOW)

    def silence_sec(self) -> float:
        """Seconds since the voice last stopped, up to what has been scored."""
        return max(0, self.scored_end - self.state.speech_end) / self.rate

    # -- scoring -----------------------------------------------------------------------------

    def update(self, buffer: np.ndarray, buffer_start: int) -> None:
        """Score the complete windows of ``buffer`` (which starts at ``buffer_start``) not yet scored."""
        first = self.state.next_window
        if self._to_input(first * VAD_WINDOW) < buffer_start:
            # the audio before the buffer was never scored (a processor restored from a snapshot
            # without voice state): start where the buffer starts, with a fresh recurrent state
            first = -(-(buffer_start * VAD_RATE // self.rate) // VAD_WINDOW) + 1
            self.silero = SileroState()
        last = self._windows_before(buffer_start + buffer.shape[0])
        if last <= first:
            return
        audio16 = self._at_16k(buffer, buffer_start, first * VAD_WINDOW, last * VAD_WINDOW)
        scores, self.silero = score_stream(audio16, self.silero)
        self._take(first, scores)
        self.state.next_window = last

    def _windows_before(self, buffer_end: int) -> int:
        """Windows whose every sample (interpolation neighbours included) lies before ``buffer_end``."""
        if self.rate == VAD_RATE:
            return buffer_end // VAD_WINDOW
        # the 16 kHz sample j needs input samples floor(j*r/16k) and the one after it
        last16 = ((buffer_end - 1) * VAD_RATE) // self.rate
        return max(0, last16) // VAD_WINDOW

    def _at_16k(self, buffer: np.ndarray, buffer_start: int, start16: int, end16: int) -> np.ndarray:
        """16 kHz samples ``start16``..``end16`` of the stream (zeros before its start)."""
        count = end16 - start16
        if self.rate == VAD_RATE:
            out = np.zeros(count, dtype=np.float32)
            lo = max(start16, buffer_start)
            out[lo - start16 :] = buffer[lo - buffer_start : end16 - buffer_start]
            return out
        # linear interpolation at absolute positions: a sample depends on its two neighbours only
        j = np.arange(start16, end16, dtype=np.int64)
        num = j * self.rate
        base = num // VAD_RATE
        frac = (num % VAD_RATE).astype(np.float32) / VAD_RATE
        idx0 = base - buffer_start
        idx1 = np.minimum(idx0 + 1, buffer.shape[0] - 1)
        valid = idx0 >= 0
        idx0c = np.clip(idx0, 0, buffer.shape[0] - 1)
        out = buffer[idx0c] * (1 - frac) + buffer[np.clip(idx1, 0, None)] * frac
        out[~valid] = 0.0
        return out.astype(np.float32)

    def _take(self, first: int, scores: np.ndarray) -> None:
        stretches = self.state.stretches
        for k in np.nonzero(scores >= self.threshold)[0]:
            start = self._to_input((first + int(k)) * VAD_WINDOW)
            end = self._to_input((first + int(k) + 1) * VAD_WINDOW)
            if stretches and start - stretches[-1][1] < self.pause:
                stretches[-1][1] = end
            else:
                stretches.append([start, end])
            self.state.speech_end = end

    # -- what the processor asks -------------------------------------------------------------

    @property
    def voiced(self) -> bool:
        """Speech was heard since the buffer was last cut at a pause."""
        return bool(self.state.stretches)

    def current(self) -> tuple[int, int] | None:
        """The first stretch not yet cut off, as (start, end)."""
        return tuple(self.state.stretches[0]) if self.state.stretches else None  # type: ignore[return-value]

    def pause_after_current(self) -> bool:
        """The first stretch is followed by a pause: another stretch, or enough scored silence."""
        stretches = self.state.stretches
        if not stretches:
            return False
        return len(stretches) > 1 or self.scored_end - stretches[0][1] >= self.pause

    def short_pause(self, min_sec: float) -> bool:
        """The only stretch has been silent for ``min_sec`` since it last grew, and that pause is new.

        A short pause may be the end of a phrase inside a turn, or the first part of a turn's
        end: the processor commits what lies before it without cutting the buffer.
        """
        stretches = self.state.stretches
        if len(stretches) != 1 or stretches[0][1] <= self.state.phrase_mark:
            return False
        return self.scored_end - stretches[0][1] >= round(min_sec * self.rate)

    def mark_phrase(self) -> None:
        """The short pause after the open stretch was handled."""
        if self.state.stretches:
            self.state.phrase_mark = self.state.stretches[0][1]

    def cut_current(self) -> None:
        """The buffer was cut at the pause after the first stretch."""
        if self.state.stretches:
            self.state.stretches.pop(0)

    # -- checkpointing -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "next_window": self.state.next_window,
            "stretches": [list(s) for s in self.state.stretches],
            "speech_end": self.state.speech_end,
            "phrase_mark": self.state.phrase_mark,
            # float32 survives msgpack's float64 exactly, so a restored tracker scores identically
            "silero": [self.silero.h.ravel().tolist(), self.silero.c.ravel().tolist(), self.silero.context.tolist()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.state = VoiceState(
            next_window=int(state["next_window"]),
            stretches=[[int(a), int(b)] for a, b in state["stretches"]],
            speech_end=int(state["speech_end"]),
            phrase_mark=int(state.get("phrase_mark", 0)),
        )
        h, c, context = state["silero"]
        self.silero = SileroState(
            np.asarray(h, dtype=np.float32).reshape(1, 1, -1),
            np.asarray(c, dtype=np.float32).reshape(1, 1, -1),
            np.asarray(context, dtype=np.float32),
        )
