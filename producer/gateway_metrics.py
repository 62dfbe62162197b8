"""``streamscribe_gateway_*``: a gateway's :class:`~producer.common.GatewayStats` as Prometheus metrics.

Read at scrape time from the counters the gateway keeps (metrics as a layer: the gateways never
touch prometheus-client). Needs the ``gateway`` extra's prometheus-client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from producer.common import GatewayStats


def gateway_registry(protocol: str, stats: GatewayStats) -> Any:
    """A ``CollectorRegistry`` that reports ``stats`` labelled with ``protocol``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class GatewayCollector:
        def collect(self) -> Iterator[Any]:
            connections = GaugeMetricFamily(
                "streamscribe_gateway_connections", "Connections open now", labels=["protocol"]
            )
            connections.add_metric([protocol], stats.connections)
            yield connections
            for name, doc, value in (
                ("calls", "Calls that opened a session", stats.calls),
                ("frames", "Audio frames or messages received", stats.frames),
                ("malformed", "Calls ended for a malformed frame or message", stats.malformed),
            ):
                family = CounterMetricFamily(f"streamscribe_gateway_{name}", doc, labels=["protocol"])
                family.add_metric([protocol], value)
                yield family
            refused = CounterMetricFamily(
                "streamscribe_gateway_refused",
                "Connections refused: auth (signature, API key), duplicate (a live call), capacity",
                labels=["protocol", "reason"],
            )
            for reason, value in (
                ("auth", stats.refused_auth),
                ("duplicate", stats.refused_duplicate),
                ("capacity", stats.refused_capacity),
            ):
                refused.add_metric([protocol, reason], value)
            yield refused

    registry = CollectorRegistry()
    registry.register(GatewayCollector())
    return registry
