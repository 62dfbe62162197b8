"""Audio in: file decoding with PyAV and resampling with soxr, both to Whisper's 16 kHz mono."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.errors import AudioDecodeError

#: The rate every Whisper model expects.
WHISPER_SAMPLE_RATE = 16000


def resample(audio: np.ndarray, from_rate: int, to_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """Resample a float32 array (mono, or frames x channels) with soxr's high quality filter."""
    if from_rate == to_rate or audio.shape[0] == 0:
        return np.ascontiguousarray(audio, dtype=np.float32)
    import soxr

    return np.ascontiguousarray(soxr.resample(audio, from_rate, to_rate, quality="HQ"), dtype=np.float32)


def decode_file(
    path: str | Path, sample_rate: int = WHISPER_SAMPLE_RATE, *, split_channels: bool = False
) -> np.ndarray:
    """Decode any format PyAV reads into float32 at ``sample_rate``.

    Returns a 1-D mono array, or with ``split_channels`` a ``(channels, samples)`` array.
    Raises :class:`AudioDecodeError` with the reason when the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"audio file not found: {path}")
    try:
        import av

        with av.open(str(path), mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{path} holds no audio stream")
            stream = container.streams.audio[0]
            channels = stream.codec_context.channels or 1
            layout = "mono" if not split_channels or channels == 1 else stream.codec_context.layout.name
            resampler = av.AudioResampler(format="flt", layout=layout, rate=sample_rate)
            pieces: list[np.ndarray] = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1, out.layout.nb_channels))
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1, out.layout.nb_channels))
    except AudioDecodeError:
        raise
    except Exception as e:  # PyAV raises many types (InvalidDataError, ValueError, ...)
        raise AudioDecodeError(f"cannot decode {path}: {e}") from e
    if not pieces:
        raise AudioDecodeError(f"{path} decoded to no audio")
    frames = np.concatenate(pieces, axis=0).astype(np.float32)
    if split_channels:
        return np.ascontiguousarray(frames.T)
    return np.ascontiguousarray(frames[:, 0])
