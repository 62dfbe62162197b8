"""streamscribe worker: streaming Whisper transcription over Redis Streams."""

__version__ = "0.1.0"
