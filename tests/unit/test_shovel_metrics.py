"""The shovel's metrics families and its /metrics + /healthz server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client import generate_latest

from connectors.metrics import LatencyHistogram, MetricsServer, ShovelStats, make_registry


def test_histogram_is_cumulative() -> None:
    hist = LatencyHistogram((0.01, 0.1))
    for value in (0.005, 0.01, 0.05, 3.0):
        hist.observe(value)
    assert hist.cumulative() == [("0.01", 2), ("0.1", 3), ("+Inf", 4)]
    assert hist.count == 4 and abs(hist.total - 3.065) < 1e-9


def test_families() -> None:
    stats = ShovelStats()
    stats.consumed, stats.produced, stats.acked, stats.in_flight = 5, 3, 4, 1
    stats.count_dead_letter("not_json")
    stats.produce_latency.observe(0.004)
    stats.unmapped = {"dbaas.new_thing.start": 2}
    text = generate_latest(make_registry(stats)).decode()
    for line in ("trovemeter_shovel_consumed_total 5.0", "trovemeter_shovel_produced_total 3.0",
                 'trovemeter_shovel_dead_lettered_total{reason="not_json"} 1.0',
                 "trovemeter_shovel_acked_total 4.0", "trovemeter_shovel_in_flight 1.0",
                 "trovemeter_shovel_redelivered_total 0.0", "trovemeter_shovel_reconnects_total 0.0",
                 'trovemeter_shovel_produce_latency_seconds_bucket{le="0.005"} 1.0',
                 "trovemeter_shovel_produce_latency_seconds_count 1.0",
                 'trovemeter_shovel_unmapped_event_types_total{event_type="dbaas.new_thing.start"} 2.0'):
        assert line in text, line


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_server_serves_metrics_and_health() -> None:
    stats = ShovelStats()
    state = {"healthy": True, "rabbit_connected": True}
    server = MetricsServer("127.0.0.1", 0, make_registry(stats), lambda: dict(state)).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(base + "/metrics")
        assert status == 200 and b"trovemeter_shovel_consumed_total" in body
        status, body = _get(base + "/healthz")
        assert status == 200 and json.loads(body)["rabbit_connected"] is True
        state["healthy"] = False
        assert _get(base + "/healthz")[0] == 503
        assert _get(base + "/nope")[0] == 404
    finally:
        server.close()
