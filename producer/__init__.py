"""Client side of streamscribe: push call audio (sync or asyncio), read transcript events.

The gateways (:mod:`producer.gateway` for Twilio, :mod:`producer.audiofork`,
:mod:`producer.audiohook`, :mod:`producer.audiosocket`) are not imported here; the WebSocket ones
need the optional ``websockets`` package.
"""

from producer.aio import AsyncProducer, AsyncSessionWriter
from producer.aio_consumer import AsyncTranscriptConsumer
from producer.client import Producer, SessionWriter
from producer.consumer import Delivery, TranscriptConsumer

__all__ = [
    "AsyncProducer",
    "AsyncSessionWriter",
    "AsyncTranscriptConsumer",
    "Delivery",
    "Producer",
    "SessionWriter",
    "TranscriptConsumer",
]
