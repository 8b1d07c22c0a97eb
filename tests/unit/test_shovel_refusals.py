"""Kafka refusing records (too large, topic missing, a producer error at produce()): the shovel
says why in a log line and a metric, retries without spinning, and never acks (issue #9)."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import generate_latest

from connectors.ack_window import AckWindow
from connectors.metrics import make_registry
from connectors.shovel import DLQ_FALLBACK_BODY_BYTES, Shovel
from tests.integration.shovel_harness import load_fixtures
from tests.unit.test_shovel_delivery import FakeChannel, FakeProducer, deliver
from trovemeter import codec, topics
from trovemeter.model import DeadLetter, RejectReason
from trovemeter.settings import ShovelSettings

TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)


class MetadataProducer(FakeProducer):
    """A fake producer that also answers list_topics with the topics it is told exist."""

    def __init__(self, existing: set[str]) -> None:
        super().__init__()
        self.existing = existing
        self.metadata_calls = 0

    def list_topics(self, timeout: float = 0) -> Any:
        self.metadata_calls += 1
        return SimpleNamespace(topics={t: SimpleNamespace(error=None) for t in self.existing})


@pytest.fixture
def shovel() -> Shovel:
    engine = Shovel(ShovelSettings(max_message_bytes=4096), parse_workers=0)
    engine._producer = MetadataProducer({topics.NOTIFICATIONS, topics.NOTIFICATIONS_DLQ})  # type: ignore[assignment]
    engine._channel = FakeChannel()
    engine._window = AckWindow()
    return engine


def parts(engine: Shovel) -> tuple[MetadataProducer, FakeChannel]:
    return engine._producer, engine._channel  # type: ignore[return-value]


def metrics_text(engine: Shovel) -> str:
    return generate_latest(make_registry(engine.stats)).decode()


def test_a_refused_notification_becomes_a_dead_letter_without_an_outage(
        shovel: Shovel, caplog: pytest.LogCaptureFixture) -> None:
    producer, channel = parts(shovel)
    with caplog.at_level(logging.INFO, logger="trovemeter.shovel"):
        deliver(shovel, 1, load_fixtures()[0].body)
        producer.report(0, TOO_LARGE)  # the broker's max.message.bytes is smaller
        shovel._produce_due_retries()
    assert [s["topic"] for s in producer.sent] == [topics.NOTIFICATIONS, topics.NOTIFICATIONS_DLQ]
    letter = codec.decode(producer.sent[1]["value"])
    assert isinstance(letter, DeadLetter) and letter.reason is RejectReason.TOO_LARGE
    assert "refused by Kafka" in letter.detail
    producer.report(1)
    shovel._ack_confirmed()
    assert channel.acks == [(1, True)]
    assert shovel.stats.kafka_outages == 0 and shovel.stats.kafka_ok is False  # not set here
    assert not [r for r in caplog.records if r.getMessage() == "kafka.delivery_failing"]
    assert 'trovemeter_shovel_delivery_errors_total{code="MSG_SIZE_TOO_LARGE"} 1.0' in \
        metrics_text(shovel)


def test_a_dead_letter_kafka_never_takes_is_retried_with_backoff_not_in_a_loop(
        shovel: Shovel, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both topics refuse everything (as a broker with a full disk refuses every write): the
    dead letter shrinks to 64 KiB, then to no body at all; after that it waits for its backoff
    instead of re-producing at once, forever. Nothing is acked, the outage is logged once."""
    producer, channel = parts(shovel)
    v1 = next(f for f in load_fixtures() if f.name == "dbaas.instance_create.start.v1").body
    body = v1.replace(b'"payload": {', b'"padding": "' + b"p" * 200_000 + b'", "payload": {', 1)
    assert len(body) > 200_000
    shovel._max_bytes = shovel._transform.max_bytes = 1 << 20
    with caplog.at_level(logging.INFO, logger="trovemeter.shovel"):
        deliver(shovel, 1, body)
        producer.report(0, TOO_LARGE)  # notification refused
        shovel._produce_due_retries()
        producer.report(1, TOO_LARGE)  # dead letter with the whole body refused
        shovel._produce_due_retries()
        truncated = codec.decode(producer.sent[2]["value"])
        assert len(truncated.body) == DLQ_FALLBACK_BODY_BYTES and truncated.body_length == len(body)
        producer.report(2, TOO_LARGE)  # 64 KiB refused
        shovel._produce_due_retries()
        empty = codec.decode(producer.sent[3]["value"])
        assert empty.body == b"" and empty.body_sha256 and empty.reason is RejectReason.TOO_LARGE
        producer.report(3, TOO_LARGE)  # even the empty dead letter is refused
        for _ in range(100):
            shovel._produce_due_retries()
        assert len(producer.sent) == 4, "re-produced without waiting: a hot loop"
        now = time.monotonic()
        monkeypatch.setattr("connectors.shovel.time.monotonic", lambda: now + 1.0)
        shovel._produce_due_retries()
        assert len(producer.sent) == 5 and producer.sent[4]["value"] == producer.sent[3]["value"]
        shovel._ack_confirmed()
    assert channel.acks == []
    assert shovel.stats.kafka_outages == 1 and shovel.stats.delivery_errors == {
        "MSG_SIZE_TOO_LARGE": 4}
    failing = [r for r in caplog.records if r.getMessage() == "kafka.delivery_failing"]
    assert len(failing) == 1 and failing[0].code == "MSG_SIZE_TOO_LARGE"
    producer.report(4)  # the broker takes it again
    shovel._ack_confirmed()
    assert channel.acks == [(1, True)] and shovel.stats.dead_lettered == {"too_large": 1}


def test_an_error_at_produce_is_a_failed_delivery_not_a_crash(
        shovel: Shovel, monkeypatch: pytest.MonkeyPatch) -> None:
    producer, channel = parts(shovel)
    producer.raise_next.append(KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC)))
    deliver(shovel, 1, load_fixtures()[0].body)  # raised inside produce(): must not propagate
    assert producer.sent == [] and len(shovel._retries) == 1
    assert shovel.stats.delivery_errors == {"_UNKNOWN_TOPIC": 1} and shovel.stats.kafka_outages == 1
    now = time.monotonic()
    monkeypatch.setattr("connectors.shovel.time.monotonic", lambda: now + 1.0)
    shovel._produce_due_retries()
    producer.report(0)
    shovel._ack_confirmed()
    assert channel.acks == [(1, True)] and shovel.stats.produced == 1


def test_a_topic_deleted_while_running_is_named_in_a_log_line_and_a_metric(
        shovel: Shovel, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    producer, channel = parts(shovel)
    text = metrics_text(shovel)
    assert f'trovemeter_shovel_kafka_topic_missing{{topic="{topics.NOTIFICATIONS}"}} 0.0' in text
    producer.existing.discard(topics.NOTIFICATIONS)
    now = time.monotonic()
    with caplog.at_level(logging.INFO, logger="trovemeter.shovel"):
        deliver(shovel, 1, load_fixtures()[0].body)
        monkeypatch.setattr("connectors.shovel.time.monotonic",
                            lambda: now + shovel.stall_after + 1)
        shovel._watch_kafka()  # stalled -> outage -> look at the topics
        shovel._watch_kafka()  # not again before 30 s
        assert producer.metadata_calls == 1
        producer.report(0, KafkaError(KafkaError._MSG_TIMED_OUT))
        assert shovel.health()["kafka_topics_missing"] == [topics.NOTIFICATIONS]
        assert not shovel.health()["healthy"]
        text = metrics_text(shovel)
        assert f'trovemeter_shovel_kafka_topic_missing{{topic="{topics.NOTIFICATIONS}"}} 1.0' in text
        assert f'trovemeter_shovel_kafka_topic_missing{{topic="{topics.NOTIFICATIONS_DLQ}"}} 0.0' in text
        assert 'trovemeter_shovel_delivery_errors_total{code="_MSG_TIMED_OUT"} 1.0' in text
        monkeypatch.setattr("connectors.shovel.time.monotonic",
                            lambda: now + shovel.stall_after + 32)
        shovel._watch_kafka()  # checked again, still missing: not logged twice
        assert producer.metadata_calls == 2
        shovel._ack_confirmed()
        assert channel.acks == []
        producer.existing.add(topics.NOTIFICATIONS)  # `trovemeter topics`
        shovel._produce_due_retries()
        producer.report(1)
        shovel._ack_confirmed()
    assert channel.acks == [(1, True)]
    missing = [r for r in caplog.records if r.getMessage() == "kafka.topic_missing"]
    assert len(missing) == 1 and missing[0].topics == [topics.NOTIFICATIONS]
    assert "trovemeter topics" in missing[0].action
    assert [r for r in caplog.records if r.getMessage() == "kafka.topic_available"]
    assert shovel.health()["kafka_topics_missing"] == []
