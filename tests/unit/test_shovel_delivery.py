"""The shovel's ack discipline with a fake producer and channel: nothing is acked before its
delivery report succeeded, failures are retried (never acked), bad bodies become dead letters."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pika
import pytest
from confluent_kafka import KafkaError, KafkaException

from connectors.ack_window import AckWindow
from connectors.shovel import Shovel
from tests.integration.shovel_harness import load_fixtures
from trovemeter import codec, topics
from trovemeter.envelope import parse_body
from trovemeter.model import DeadLetter, RejectReason
from trovemeter.settings import ShovelSettings


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.raise_next: list[BaseException] = []
        self.polls = 0

    def produce(self, topic: str, value: bytes, key: bytes | None = None, *, headers: Any = None,
                on_delivery: Any = None) -> None:
        if self.raise_next:
            raise self.raise_next.pop(0)
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": headers,
                          "cb": on_delivery, "done": False})

    def report(self, index: int, err: KafkaError | None = None) -> None:
        entry = self.sent[index]
        assert not entry["done"], "a delivery report comes once"
        entry["done"] = True
        entry["cb"](err, None)

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        return 0

    def __len__(self) -> int:
        return sum(not e["done"] for e in self.sent)


class FakeChannel:
    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []
        self.is_open = True

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, multiple))


@pytest.fixture
def shovel() -> Shovel:
    engine = Shovel(ShovelSettings(max_message_bytes=4096))
    engine._producer = FakeProducer()  # type: ignore[assignment]
    engine._channel = FakeChannel()
    engine._window = AckWindow()
    return engine


def deliver(engine: Shovel, tag: int, body: bytes, redelivered: bool = False,
            properties: pika.BasicProperties | None = None) -> None:
    method = SimpleNamespace(delivery_tag=tag, redelivered=redelivered, exchange="trove",
                             routing_key="notifications.info")
    props = properties or pika.BasicProperties(content_type="application/json",
                                               content_encoding="utf-8", delivery_mode=2,
                                               headers={})
    engine._on_message(engine._channel, method, props, body)


def fake(engine: Shovel) -> tuple[FakeProducer, FakeChannel]:
    return engine._producer, engine._channel  # type: ignore[return-value]


def test_acked_only_after_the_delivery_report(shovel: Shovel) -> None:
    producer, channel = fake(shovel)
    fixture = next(f for f in load_fixtures() if f.name == "dbaas.instance_create.end.v2")
    deliver(shovel, 1, fixture.body)
    sent = producer.sent[0]
    expected = parse_body(fixture.body, max_bytes=4096)
    assert sent["topic"] == topics.NOTIFICATIONS
    assert sent["value"] == codec.encode(expected)
    assert sent["key"] == expected.resource_id.encode()
    assert dict(sent["headers"])["trovemeter.message_id"] == expected.message_id
    shovel._ack_confirmed()
    assert channel.acks == [] and shovel.stats.in_flight == 1
    producer.report(0)
    shovel._ack_confirmed()
    assert channel.acks == [(1, True)]
    assert shovel.stats.produced == 1 and shovel.stats.acked == 1 and shovel.stats.in_flight == 0
    assert shovel.stats.produce_latency.count == 1


def test_acks_up_to_the_highest_contiguous_confirmed_tag(shovel: Shovel) -> None:
    producer, channel = fake(shovel)
    body = load_fixtures()[0].body
    for tag in range(1, 6):
        deliver(shovel, tag, body)
    for index in (1, 2, 4):  # tags 2, 3, 5
        producer.report(index)
    shovel._ack_confirmed()
    assert channel.acks == []  # tag 1 still waits
    producer.report(0)
    shovel._ack_confirmed()
    assert channel.acks == [(3, True)]
    producer.report(3)
    shovel._ack_confirmed()
    assert channel.acks == [(3, True), (5, True)]


def test_failed_delivery_is_retried_never_acked_and_logged_once(
        shovel: Shovel, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    producer, channel = fake(shovel)
    body = load_fixtures()[0].body
    deliver(shovel, 1, body)
    deliver(shovel, 2, body)
    timeout = KafkaError(KafkaError._MSG_TIMED_OUT)
    with caplog.at_level(logging.INFO, logger="trovemeter.shovel"):
        producer.report(0, timeout)
        producer.report(1, timeout)
        shovel._ack_confirmed()
        assert channel.acks == []
        assert shovel.stats.delivery_failures == 2 and shovel.stats.kafka_outages == 1
        assert not shovel.stats.kafka_ok
        # Retries wait for their backoff, then re-produce the very same record.
        shovel._produce_due_retries()
        assert len(producer.sent) == 2
        now = __import__("time").monotonic()
        monkeypatch.setattr("connectors.shovel.time.monotonic", lambda: now + 1.0)
        shovel._produce_due_retries()
        assert len(producer.sent) == 4
        assert producer.sent[2]["value"] == producer.sent[0]["value"]
        assert producer.sent[2]["key"] == producer.sent[0]["key"]
        producer.report(2, timeout)  # fails again: backs off longer, still not acked
        producer.report(3)
        shovel._ack_confirmed()
        assert channel.acks == []
        monkeypatch.setattr("connectors.shovel.time.monotonic", lambda: now + 3.0)
        shovel._produce_due_retries()
        producer.report(4)
        shovel._ack_confirmed()
    assert channel.acks == [(2, True)]
    assert shovel.stats.kafka_ok and shovel.stats.produced == 2
    failing = [r for r in caplog.records if r.getMessage() == "kafka.delivery_failing"]
    recovered = [r for r in caplog.records if r.getMessage() == "kafka.delivery_recovered"]
    assert len(failing) == 1 and len(recovered) == 1


def test_reports_of_a_lost_channel_ack_nothing_on_the_new_one(shovel: Shovel) -> None:
    producer, channel = fake(shovel)
    body = load_fixtures()[0].body
    deliver(shovel, 1, body)
    shovel._window = AckWindow()  # reconnected: tags start again at 1
    deliver(shovel, 1, body)
    producer.report(0)  # the old channel's tag 1
    shovel._ack_confirmed()
    assert channel.acks == []
    producer.report(0 + 1)
    shovel._ack_confirmed()
    assert channel.acks == [(1, True)]
    producer.sent.clear()
    deliver(shovel, 2, body)
    old = shovel._window
    shovel._window = AckWindow()
    producer.report(0, KafkaError(KafkaError._MSG_TIMED_OUT))
    assert not shovel._retries and old.unconfirmed == 1  # not retried: RabbitMQ redelivers it


@pytest.mark.parametrize(("body", "properties", "reason"), [
    (b"not json", None, RejectReason.NOT_JSON),
    (b'{"oslo.version": "2.0"}', None, RejectReason.ENVELOPE_WITHOUT_MESSAGE),
    (b"x" * 5000, None, RejectReason.TOO_LARGE),
    (b"\x1f\x8b\x08\x00", pika.BasicProperties(content_encoding="gzip"),
     RejectReason.CONTENT_ENCODING),
])
def test_bad_bodies_become_dead_letters_acked_after_their_report(
        shovel: Shovel, body: bytes, properties: Any, reason: RejectReason) -> None:
    producer, channel = fake(shovel)
    deliver(shovel, 7, body, redelivered=True, properties=properties)
    sent = producer.sent[0]
    assert sent["topic"] == topics.NOTIFICATIONS_DLQ
    letter = codec.decode(sent["value"])
    assert isinstance(letter, DeadLetter) and letter.reason is reason
    assert letter.body == body and letter.redelivered and letter.exchange == "trove"
    assert dict(sent["headers"])["trovemeter.reason"] == reason.value
    shovel._ack_confirmed()
    assert channel.acks == []
    producer.report(0)
    shovel._ack_confirmed()
    assert channel.acks == [(7, True)]
    assert shovel.stats.dead_lettered == {reason.value: 1} and shovel.stats.redelivered == 1


def test_a_record_kafka_refuses_as_too_large_becomes_a_dead_letter(shovel: Shovel) -> None:
    producer, channel = fake(shovel)
    producer.raise_next.append(KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)))
    deliver(shovel, 1, load_fixtures()[0].body)
    assert [s["topic"] for s in producer.sent] == [topics.NOTIFICATIONS_DLQ]
    assert codec.decode(producer.sent[0]["value"]).reason is RejectReason.TOO_LARGE
    producer.report(0)
    shovel._ack_confirmed()
    assert channel.acks == [(1, True)]


def test_full_local_queue_is_polled_and_retried(shovel: Shovel) -> None:
    producer, _ = fake(shovel)
    producer.raise_next.extend([BufferError(), BufferError()])
    deliver(shovel, 1, load_fixtures()[0].body)
    assert len(producer.sent) == 1 and producer.polls == 2


def test_stalled_deliveries_count_as_an_outage(shovel: Shovel,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(shovel, 1, load_fixtures()[0].body)
    now = __import__("time").monotonic()
    monkeypatch.setattr("connectors.shovel.time.monotonic", lambda: now)
    shovel._watch_kafka()
    assert shovel.stats.kafka_outages == 0
    monkeypatch.setattr("connectors.shovel.time.monotonic", lambda: now + shovel.stall_after + 1)
    shovel._watch_kafka()
    shovel._watch_kafka()
    assert shovel.stats.kafka_outages == 1 and not shovel.health()["healthy"]


def test_a_late_all_brokers_down_after_recovery_leaves_the_shovel_healthy(
        shovel: Shovel) -> None:
    # librdkafka may report an old disconnect just after deliveries succeed again (seen in CI
    # after a Kafka outage): that report must not mark deliveries failing for good.
    producer, _ = fake(shovel)
    shovel.stats.rabbit_connected = shovel.stats.kafka_ok = shovel._ever_reached_kafka = True
    deliver(shovel, 1, load_fixtures()[0].body)
    producer.report(0)
    shovel._on_kafka_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert shovel.stats.kafka_outages == 0 and shovel.health()["kafka_deliveries_ok"]
    deliver(shovel, 2, load_fixtures()[0].body)
    producer.report(1)
    health = shovel.health()
    assert health["healthy"] and health["kafka_reachable"]
