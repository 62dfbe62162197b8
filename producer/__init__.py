"""Client side of streamscribe: push call audio (sync or asyncio), read transcript events.

The Twilio gateway (:mod:`producer.gateway`) needs the optional ``websockets`` package and is
not imported here.
"""

from producer.aio import AsyncProducer, AsyncSessionWriter
from producer.client import Producer, SessionWriter
from producer.consumer import Delivery, TranscriptConsumer

__all__ = ["AsyncProducer", "AsyncSessionWriter", "Delivery", "Producer", "SessionWriter", "TranscriptConsumer"]
