"""Parsing in helper processes: outcomes equal the inline ones, in submission order; a dead helper
is reported, never silently skipped; the shovel drops outcomes of a channel that is gone."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from connectors.ack_window import AckWindow
from connectors.parse_pool import ParsePool, ParsePoolDied, Transformer
from connectors.shovel import Shovel
from tests.integration.shovel_harness import load_fixtures
from tests.unit.test_shovel_delivery import FakeChannel, FakeProducer, deliver
from trovemeter import codec, topics
from trovemeter.envelope import default_normaliser, parse_body
from trovemeter.settings import ShovelSettings

CONFIG = {"max_bytes": 4096, "topic": topics.NOTIFICATIONS}


def inline() -> Transformer:
    return Transformer(max_bytes=4096, topic=topics.NOTIFICATIONS, normaliser=default_normaliser(),
                       serde=codec.default_codec())


def wait_all(pool: ParsePool, batches: int, timeout: float = 30) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < batches and time.monotonic() < deadline:
        out.extend(pool.ready(timeout=0.2))
    return out


def test_outcomes_match_inline_parsing_in_order() -> None:
    bodies = [f.body for f in load_fixtures()] + [b"not json", b"x" * 5000]
    items = [(body, "application/json", "utf-8") for body in bodies]
    expected = [inline()(*item) for item in items]
    pool = ParsePool(2, CONFIG)
    try:
        ids = [pool.submit(items[i:i + 3]) for i in range(0, len(items), 3)]
        results = wait_all(pool, len(ids))
    finally:
        pool.close()
    assert [batch_id for batch_id, _ in results] == ids  # in submission order
    outcomes = [o for _, batch in results for o in batch]
    assert outcomes == expected
    assert outcomes[-2][:2] == (None, "not_json") and outcomes[-1][:2] == (None, "too_large")


class RecordOnlySerde:
    """A wire format that needs the Notification itself (as the Confluent one does)."""

    def __init__(self) -> None:
        self.codec = codec.default_codec()

    def encode(self, record, topic=None):
        return self.codec.encode(record, topic)

    def headers_for(self, record):
        return self.codec.headers_for(record)

    def fields_encoder(self, model):
        return None


def test_outcomes_from_field_values_equal_those_from_the_notification() -> None:
    bodies = [f.body for f in load_fixtures()] + [b"not json"]
    by_record = Transformer(max_bytes=4096, topic=topics.NOTIFICATIONS,
                            normaliser=default_normaliser(), serde=RecordOnlySerde())
    for body in bodies:
        outcome = inline()(body, "application/json", "utf-8")
        assert outcome == by_record(body, "application/json", "utf-8")
        if outcome[0] is not None:
            notification = parse_body(body, max_bytes=4096)
            assert outcome[1] == notification.kafka_key.encode()
            assert codec.decode(outcome[2]) == notification


def test_many_large_batches_in_flight_do_not_deadlock() -> None:
    # Megabytes each way: more than the socket buffers hold while neither side reads.
    fixture = next(f for f in load_fixtures() if f.body.startswith(b'{"message_id'))
    document = json.loads(fixture.body)
    document["payload"]["notes"] = "x" * 20_000
    batches = []
    for b in range(8):
        bodies = []
        for i in range(64):
            document["message_id"] = f"m-{b}-{i}"
            bodies.append(json.dumps(document).encode())
        batches.append(bodies)
    pool = ParsePool(1, dict(CONFIG, max_bytes=100_000))
    try:
        ids = [pool.submit([(body, "application/json", "utf-8") for body in bodies])
               for bodies in batches]
        results = wait_all(pool, len(ids), timeout=60)
    finally:
        pool.close()
    assert [batch_id for batch_id, _ in results] == ids
    assert [outcome[0] for _, batch in results for outcome in batch] == [
        f"m-{b}-{i}" for b in range(8) for i in range(64)]


def test_unknown_event_types_are_counted_across_helpers() -> None:
    body = load_fixtures()[0].body.replace(b"dbaas.backup_create.end", b"dbaas.brand_new.end")
    pool = ParsePool(1, CONFIG)
    try:
        pool.submit([(body, None, None)] * 3)
        wait_all(pool, 1)
        assert pool.unknown_counts() == {"dbaas.brand_new.end": 3}
    finally:
        pool.close()


def test_a_dead_helper_is_reported() -> None:
    pool = ParsePool(1, CONFIG)
    try:
        os.kill(pool._procs[0].pid, signal.SIGKILL)
        pool._procs[0].wait(10)
        with pytest.raises(ParsePoolDied):
            pool.submit([(b"{}", None, None)])
            wait_all(pool, 1, timeout=5)
    finally:
        pool.close()


def test_invalid_config_fails_at_start() -> None:
    with pytest.raises(ValueError, match="could not start"):
        ParsePool(1, dict(CONFIG, event_mapping="/nonexistent/mapping.yaml"))


def test_shovel_with_helpers_produces_in_delivery_order_and_drops_a_lost_channel() -> None:
    shovel = Shovel(ShovelSettings(max_message_bytes=4096), parse_workers=1)
    producer, channel = FakeProducer(), FakeChannel()
    shovel._producer, shovel._channel, shovel._window = producer, channel, AckWindow()
    shovel._start_pool()
    try:
        fixtures = load_fixtures()
        for tag, fixture in enumerate(fixtures, start=1):
            deliver(shovel, tag, fixture.body)
        deliver(shovel, len(fixtures) + 1, b"not json")
        assert producer.sent == []  # parsing happens in the helper
        shovel._submit_batch()
        deadline = time.monotonic() + 30
        while shovel._pending and time.monotonic() < deadline:
            shovel._collect(timeout=0.2)
        assert [dict(s["headers"]).get("trovemeter.message_id") for s in producer.sent[:-1]] == [
            f.message_id for f in fixtures]
        assert producer.sent[-1]["topic"] == topics.NOTIFICATIONS_DLQ
        for index in range(len(producer.sent)):
            producer.report(index)
        shovel._ack_confirmed()
        assert channel.acks == [(len(fixtures) + 1, True)]

        sent = len(producer.sent)
        deliver(shovel, len(fixtures) + 2, fixtures[0].body)
        shovel._submit_batch()
        shovel._window = AckWindow()  # the channel was lost meanwhile
        while shovel._pending and time.monotonic() < deadline:
            shovel._collect(timeout=0.2)
        assert len(producer.sent) == sent  # RabbitMQ redelivers it; nothing produced
    finally:
        shovel._pool.close()
