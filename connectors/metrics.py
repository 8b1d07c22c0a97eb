"""The shovel's Prometheus metrics and health endpoint.

The hot path only bumps plain integers on ``ShovelStats`` (no locks, no label lookups per
message); a custom collector turns them into Prometheus families when ``/metrics`` is scraped.
Reading them from the HTTP thread is safe under the GIL; a scrape may see a count one message
old, never a torn value.

Endpoints (``web_host:metrics_port``, default 127.0.0.1:9464):
  /metrics   Prometheus text format
  /healthz   JSON; 200 when RabbitMQ is connected and Kafka deliveries succeed, else 503
"""

from __future__ import annotations

import json
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "trovemeter_shovel"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0)


class LatencyHistogram:
    """A histogram cheap enough to observe once per message (no lock, one bisect)."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above the highest bound (+Inf)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        counts = list(self.counts)  # snapshot
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class ShovelStats:
    """Counters of one shovel process (monotonic over reconnects)."""

    def __init__(self) -> None:
        self.consumed = 0  # deliveries received from RabbitMQ
        self.redelivered = 0  # of which RabbitMQ flagged as redelivered
        self.produced = 0  # notification records Kafka confirmed
        self.dead_lettered: dict[str, int] = {}  # dead letters Kafka confirmed, by reason
        self.acked = 0  # deliveries acked to RabbitMQ
        self.delivery_failures = 0  # failed Kafka delivery reports (each one re-produced)
        self.reconnects = 0  # RabbitMQ sessions re-established after a loss
        self.kafka_outages = 0  # periods of failing/stalled Kafka deliveries
        self.produce_latency = LatencyHistogram()  # produce() -> successful delivery report
        self.in_flight = 0  # consumed, not yet acked (RabbitMQ's unacked count for us)
        self.rabbit_connected = False
        self.kafka_ok = False
        # event_type -> count of notifications the mapping did not know (the normaliser's
        # bounded Counter; forwarded as resource_type "unknown", not dead-lettered)
        self.unmapped: Mapping[str, int] = {}
        # librdkafka error name -> failed delivery reports (_MSG_TIMED_OUT, MSG_SIZE_TOO_LARGE,
        # KAFKA_STORAGE_ERROR, UNKNOWN_TOPIC_OR_PART, ...): why deliveries fail, not only how often
        self.delivery_errors: dict[str, int] = {}
        # output topic -> 1 while Kafka says it does not exist (checked while deliveries fail)
        self.topics_missing: dict[str, int] = {}

    def count_dead_letter(self, reason: str) -> None:
        self.dead_lettered[reason] = self.dead_lettered.get(reason, 0) + 1

    def count_delivery_error(self, code: str) -> None:
        self.delivery_errors[code] = self.delivery_errors.get(code, 0) + 1


class ShovelCollector(Collector):
    def __init__(self, stats: ShovelStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        yield counter("consumed", "Deliveries received from RabbitMQ", s.consumed)
        yield counter("redelivered", "Deliveries RabbitMQ flagged as redelivered", s.redelivered)
        yield counter("produced", "Notification records confirmed by Kafka", s.produced)
        dead = CounterMetricFamily(f"{PREFIX}_dead_lettered",
                                   "Dead letters confirmed by Kafka, by reason", labels=["reason"])
        for reason, n in sorted(dict(s.dead_lettered).items()):
            dead.add_metric([reason], n)
        yield dead
        yield counter("acked", "Deliveries acked to RabbitMQ (after Kafka confirmed them)", s.acked)
        yield counter("delivery_failures", "Failed Kafka delivery reports (re-produced, never acked)",
                      s.delivery_failures)
        errors = CounterMetricFamily(f"{PREFIX}_delivery_errors",
                                     "Failed Kafka delivery reports by librdkafka error name",
                                     labels=["code"])
        for code, n in sorted(dict(s.delivery_errors).items()):
            errors.add_metric([code], n)
        yield errors
        missing = GaugeMetricFamily(f"{PREFIX}_kafka_topic_missing",
                                    "1 while Kafka reports the output topic missing",
                                    labels=["topic"])
        for topic, flag in sorted(dict(s.topics_missing).items()):
            missing.add_metric([topic], flag)
        yield missing
        yield counter("reconnects", "RabbitMQ sessions re-established after a loss", s.reconnects)
        yield counter("kafka_outages", "Periods of failing or stalled Kafka deliveries",
                      s.kafka_outages)
        yield GaugeMetricFamily(f"{PREFIX}_in_flight",
                                "Deliveries consumed and not yet acked", value=s.in_flight)
        yield GaugeMetricFamily(f"{PREFIX}_rabbit_connected", "1 when consuming from RabbitMQ",
                                value=int(s.rabbit_connected))
        yield GaugeMetricFamily(f"{PREFIX}_kafka_ok", "1 when Kafka deliveries succeed",
                                value=int(s.kafka_ok))
        unmapped = CounterMetricFamily(f"{PREFIX}_unmapped_event_types",
                                       "Notifications of event types the mapping does not know",
                                       labels=["event_type"])
        for event_type, n in sorted(dict(s.unmapped).items()):
            unmapped.add_metric([event_type], n)
        yield unmapped
        hist = s.produce_latency
        yield HistogramMetricFamily(f"{PREFIX}_produce_latency_seconds",
                                    "Time from produce() to Kafka's successful delivery report",
                                    buckets=hist.cumulative(), sum_value=hist.total)


def make_registry(stats: ShovelStats) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShovelCollector(stats))
    return registry


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Callable[[], dict[str, Any]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path in ("/healthz", "/health"):
                    state = health()
                    body = json.dumps(state, sort_keys=True).encode()
                    self._send(200 if state.get("healthy") else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /healthz\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # scrapes are not worth a log line each

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
