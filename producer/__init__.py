"""Client side of streamscribe: push call audio, read transcript events."""

from producer.client import Producer, SessionWriter

__all__ = ["Producer", "SessionWriter"]
