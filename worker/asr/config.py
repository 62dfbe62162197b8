"""ASR options: the guide's ``ASRConfig`` fields plus device, compute type and decoding."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.errors import ConfigError


class ASRConfig(BaseModel):
    """Options that select and tune a streaming recogniser.

    Validated once here, at the public entry point; a bad value raises
    :class:`~worker.errors.ConfigError` naming the field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = Field("base", min_length=1, description="Model name or path (base, small, large-v3, ...)")
    lan: str = Field("en", min_length=1, description="Language code, or 'auto' to detect")
    task: Literal["transcribe", "translate"] = "transcribe"
    backend: str = Field("faster-whisper", min_length=1, description="Name in MODEL_LOADERS")
    min_chunk_size: float = Field(1.0, gt=0, le=30, description="Seconds of new audio per iteration")
    buffer_trimming: Literal["segment", "sentence"] = "segment"
    buffer_trimming_sec: float = Field(15.0, gt=0, le=30, description="Trim the buffer past this length")
    vad: bool = Field(True, description="Skip audio that Silero VAD finds no speech in")
    vac: bool = Field(
        True, description="Utterance-bounded buffers (with vad): commit and cut at each pause of 0.5 s or more"
    )
    commit_policy: Literal["agreement", "utterance"] = Field(
        "agreement",
        description="agreement: commit what two chunk decodes agree on, and at pauses (lowest latency);"
        " utterance (with vac): commit each utterance once, at its end, from one decode in Whisper's"
        " full 30 s window; chunk decodes only feed partials (closest to offline, commits later)",
    )
    commit_deadline_sec: float | None = Field(
        2.0,
        gt=0,
        le=30,
        description="agreement: a word with this much audio after it commits from the newest decode, agreed or"
        " not (bounds the lag where agreement stalls; with the 10 s turn context, 2.0 s gives all 26 long"
        " 16 kHz calls a lag p95 of 2.80 s against 2.96 s with 2.5 s, and 0.2 WER points fewer);"
        " None: wait for agreement, a pause or the utterance end",
    )
    committed_prefix: bool = Field(
        False,
        description="Decode each buffer as a continuation of the committed words in it (a forced prefix)"
        " instead of joining hypotheses to them by word times: +0.6 WER points on all 26 long 16 kHz calls"
        " with the default deadline (-0.8 on 6 of them without one), +3.1 on"
        " 8 kHz mu-law (docs/benchmarks.md); backends that cannot ignore it",
    )
    turn_context_sec: float = Field(
        10.0,
        ge=0,
        le=10,
        description="vac: at an utterance end the buffer keeps up to this many seconds of the committed speech"
        " before it (from a sentence start), so the next turn is decoded with the turns before it (the other"
        " party's among them) in the window, as offline and whisper_streaming decode it. All 26 long 16 kHz"
        " calls: 11.70 % with 10 s and the 2.0 s deadline, 12.69 % with 4 s and 2.5 s (docs/benchmarks.md);"
        " a loaded worker drops it (economy); 0: cut in the pause. Single-channel sessions: each channel of"
        " a multichannel one keeps channel_turn_context_sec",
    )
    channel_turn_context_sec: float = Field(
        4.0,
        ge=0,
        le=10,
        description="turn_context_sec of each channel of a multichannel session, whose context is that speaker's"
        " own last turn (the other party's words reach it as text: conversation_prompt). 10 s on 6 long"
        " stereo calls: no better, and the agent channel's lag p95 3.01 s against 2.44 s",
    )
    conversation_prompt: bool = Field(
        True,
        description="Multichannel sessions: each channel's prompt is the last prompt_chars of every channel's"
        " committed words in time order, so a customer's answer is decoded after the agent's question."
        " All 26 long calls as stereo: customer channel 14.4 % against 16.0 %, agent channel 9.0 % against"
        " 8.7 % (docs/benchmarks.md); False: each channel is prompted with its own words only",
    )
    device: str = Field("auto", description="auto, cpu or cuda[:N]")
    compute_type: str = Field("auto", description="CTranslate2 compute type; auto picks per device")
    beam_size: int = Field(5, ge=1, le=16, description="Beam of the chunk decodes; 1 is greedy decoding")
    final_beam_size: int | None = Field(
        5, ge=1, le=16, description="Beam of the decodes that commit at pauses (vac); None: beam_size"
    )
    economy_beam_size: int = Field(
        1,
        ge=1,
        le=16,
        description="Beam of the chunk decodes while the worker is far short of compute (economy level 2;"
        " the decodes that commit at pauses keep final_beam_size)",
    )
    economy_window_padding_sec: float | None = Field(
        2.0,
        ge=0,
        le=30,
        description="window_padding_sec of every decode while the worker is far short of compute (economy level 2)",
    )
    prompt_chars: int = Field(
        200, ge=0, le=1000, description="Characters of committed text before the buffer given as the prompt; 0: none"
    )
    window_padding_sec: float | None = Field(
        5.0,
        ge=0,
        le=30,
        description="Silence after the buffer in the encoder window (5 s steps); None: Whisper's full 30 s",
    )
    no_speech_threshold: float = Field(
        0.6, ge=0, le=1, description="Drop a segment above this whose log-probability is also below -1"
    )
    input_sample_rate: int = Field(
        16000, ge=8000, le=192000, description="Rate of the audio given to the processor; resampled to 16 kHz"
    )
    model_dir: str | None = Field(None, description="Load the model from this directory")
    cache_dir: str | None = Field(None, description="Where downloaded or joined models live")

    @model_validator(mode="after")
    def _utterance_commits_need_utterances(self) -> ASRConfig:
        if self.commit_policy == "utterance" and not (self.vac and self.vad):
            raise ValueError("commit_policy 'utterance' needs vac and vad on: utterances end at pauses Silero hears")
        return self

    @classmethod
    def parse(cls, **values: Any) -> ASRConfig:
        """Build a config, turning validation errors into one clear :class:`ConfigError`."""
        try:
            return cls(**values)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']} (got {err.get('input')!r})"
                for err in e.errors()
            )
            raise ConfigError(f"invalid ASR configuration: {problems}") from e

    def replace(self, **changes: Any) -> ASRConfig:
        return ASRConfig.parse(**{**self.model_dump(), **changes})

    def for_channels(self, channels: int) -> ASRConfig:
        """The configuration of each processor of a session with ``channels`` channels: with more
        than one, the turn context is ``channel_turn_context_sec``."""
        if channels <= 1:
            return self
        return self.replace(turn_context_sec=self.channel_turn_context_sec)
