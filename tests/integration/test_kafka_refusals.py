"""Kafka refusing the shovel's records, on the real broker (issue #9): a missing topic (at start-up
and deleted while running) and a broker that refuses writes (scratch topics with a tiny
``max.message.bytes``, the safe stand-in for a full disk here). Each surfaces as a clear log line
and a metric; nothing is acked that Kafka did not take, and the queue drains once Kafka takes
records again.

A real full disk makes the broker take its log directory offline: the partitions lose their
leader and deliveries time out (``_MSG_TIMED_OUT``) or fail with ``KAFKA_STORAGE_ERROR``, which is
the retry path the Kafka outage tests (``test_shovel.py``) and the chaos suite exercise.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from tests.integration.conftest import free_port
from tests.integration.shovel_harness import (
    Rabbit,
    ShovelProcess,
    by_message_id,
    load_fixtures,
    queue_counts,
    read_records,
)
from tests.integration.test_shovel import events, fresh_copies, wait_for
from trovemeter import codec
from trovemeter.model import DeadLetter, RejectReason

pytestmark = pytest.mark.integration


@pytest.fixture
def rabbit(rabbit_url: str) -> Iterator[Rabbit]:
    with Rabbit(rabbit_url) as connection:
        yield connection


@pytest.fixture
def names(rabbit: Rabbit, unique_name: str) -> Iterator[tuple[str, str]]:
    queue, exchange = f"{unique_name}.q", f"{unique_name}.trove"
    yield queue, exchange
    rabbit.delete_queue(queue)
    rabbit.delete_exchange(exchange)


class Scratch:
    """Topics of one test (created with the given configs, deleted at the end)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.prefix = prefix
        self.created: list[str] = []

    def create(self, suffix: str, partitions: int = 1, **config: str) -> str:
        name = f"{self.prefix}.{suffix}"
        self.admin.create_topics([NewTopic(name, partitions, 1, config=config)])[name].result()
        self.created.append(name)
        wait_for(lambda: name in self.admin.list_topics(timeout=10).topics, 30, f"topic {name}")
        return name

    def delete(self, name: str) -> None:
        self.admin.delete_topics([name], operation_timeout=30)[name].result()
        wait_for(lambda: name not in self.admin.list_topics(timeout=10).topics, 30,
                 f"topic {name} gone")

    def set_config(self, name: str, **config: str) -> None:
        """Incremental: only the named keys change."""
        resource = ConfigResource("topic", name, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in config.items()])
        for future in self.admin.incremental_alter_configs([resource]).values():
            future.result()

    def cleanup(self) -> None:
        existing = set(self.admin.list_topics(timeout=10).topics)
        doomed = [t for t in self.created if t in existing]
        if doomed:
            for future in self.admin.delete_topics(doomed, operation_timeout=30).values():
                try:
                    future.result()
                except Exception:  # noqa: BLE001
                    pass


@pytest.fixture
def scratch(kafka_bootstrap: str, unique_name: str) -> Iterator[Scratch]:
    topics_ = Scratch(kafka_bootstrap, f"scratch-{unique_name}")
    yield topics_
    topics_.cleanup()


@pytest.fixture
def shovels(tmp_path: Path) -> Iterator[Callable[..., ShovelProcess]]:
    started: list[ShovelProcess] = []

    def start(queue: str, exchanges: list[str], *extra: str, wait: bool = True) -> ShovelProcess:
        shovel = ShovelProcess(queue, exchanges, free_port(), tmp_path / f"shovel-{len(started)}.log",
                               extra_args=extra)
        started.append(shovel.start())
        if wait:
            shovel.wait_healthy()
        return shovel

    yield start
    for shovel in started:
        if shovel.process is not None and shovel.process.poll() is None:
            shovel.kill()


def metric(shovel: ShovelProcess, name: str) -> float:
    try:
        return shovel.metrics().get(name, 0.0)
    except OSError:
        return 0.0


def test_missing_topic_at_start_up_is_one_clear_error_and_consumes_nothing(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess]) -> None:
    queue, exchange = names
    missing = f"trove.notifications.missing-{uuid.uuid4().hex[:6]}"
    batch = fresh_copies(load_fixtures(), 20)
    rabbit.prepare(queue, [exchange])
    rabbit.publish_many((exchange, f.routing_key, body, f.pika_properties()) for f, body, _ in batch)
    rabbit.wait_ready(queue, len(batch))

    shovel = shovels(queue, [exchange], "--topic", missing, wait=False)
    assert shovel.wait(timeout=60) == 2, shovel.logs()
    errors = [e for e in shovel.log_events() if e.get("level") == "error"]
    assert len(errors) == 1, shovel.logs()
    assert errors[0]["event"] == "shovel.config_error"
    assert missing in errors[0]["error"] and "trovemeter topics" in errors[0]["error"]
    assert not events(shovel, "rabbitmq.connected")  # never consumed a message
    assert queue_counts(queue) == (len(batch), 0)


def test_topic_deleted_while_running_is_named_retried_and_drains_when_recreated(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess],
        scratch: Scratch, kafka_bootstrap: str) -> None:
    queue, exchange = names
    topic, dlq = scratch.create("notifications", 2), scratch.create("dlq")
    batch = fresh_copies(load_fixtures(), 200)
    shovel = shovels(queue, [exchange], "--topic", topic, "--dlq-topic", dlq,
                     "--kafka-config", "message.timeout.ms=5000")
    for fixture, body, _ in batch[:100]:
        rabbit.publish(exchange, fixture.routing_key, body, fixture.pika_properties())
    wait_for(lambda: metric(shovel, "trovemeter_shovel_acked_total") == 100, 30, "first 100")

    scratch.delete(topic)
    for fixture, body, _ in batch[100:]:
        rabbit.publish(exchange, fixture.routing_key, body, fixture.pika_properties())
    gauge = f'trovemeter_shovel_kafka_topic_missing{{topic="{topic}"}}'
    wait_for(lambda: metric(shovel, gauge) == 1, 60, "the topic_missing gauge", interval=0.5)
    wait_for(lambda: metric(shovel, "trovemeter_shovel_delivery_failures_total") > 0, 30,
             "failed delivery reports", interval=0.5)
    missing_lines = events(shovel, "kafka.topic_missing")
    assert len(missing_lines) == 1 and missing_lines[0]["topics"] == [topic]
    assert missing_lines[0]["level"] == "error" and "trovemeter topics" in missing_lines[0]["action"]
    assert len(events(shovel, "kafka.delivery_failing")) == 1
    health = shovel.health()
    assert not health["healthy"] and health["kafka_topics_missing"] == [topic]
    assert metric(shovel, "trovemeter_shovel_acked_total") == 100  # nothing acked meanwhile
    ready, unacked = queue_counts(queue)
    assert ready + unacked == 100 and unacked > 0
    metrics = shovel.metrics()
    assert any(k.startswith("trovemeter_shovel_delivery_errors_total{") for k in metrics)
    assert shovel.process is not None and shovel.process.poll() is None  # alive, not crashed

    start = {(topic, p): 0 for p in range(2)}
    scratch.create("notifications", 2)  # `trovemeter topics` puts it back
    wait_for(lambda: queue_counts(queue) == (0, 0), 90, "the queue to drain", interval=1)
    ids = {mid for _, _, mid in batch[100:]}
    found = by_message_id(read_records(kafka_bootstrap, start,
                                       lambda rs: ids <= by_message_id(rs).keys(), timeout=60))
    assert ids <= found.keys(), f"{len(ids - found.keys())} lost"
    wait_for(lambda: metric(shovel, gauge) == 0, 30, "the gauge to clear")
    assert events(shovel, "kafka.topic_available") and events(shovel, "kafka.delivery_recovered")
    assert shovel.health()["healthy"]
    assert shovel.stop() == 0


def test_records_the_topic_refuses_as_too_large_become_dead_letters(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess],
        scratch: Scratch, kafka_bootstrap: str) -> None:
    queue, exchange = names
    topic = scratch.create("notifications", **{"max.message.bytes": "200"})
    dlq = scratch.create("dlq")
    batch = fresh_copies(load_fixtures(), 30)
    shovel = shovels(queue, [exchange], "--topic", topic, "--dlq-topic", dlq)
    for fixture, body, _ in batch:
        rabbit.publish(exchange, fixture.routing_key, body, fixture.pika_properties())
    wait_for(lambda: metric(shovel, "trovemeter_shovel_acked_total") == len(batch), 60, "acks")
    letters = read_records(kafka_bootstrap, {(dlq, 0): 0}, lambda rs: len(rs) >= len(batch))
    assert len(letters) == len(batch)
    bodies = {body for _, body, _ in batch}
    for record in letters:
        letter = codec.decode(record.value)
        assert isinstance(letter, DeadLetter) and letter.reason is RejectReason.TOO_LARGE
        assert "refused by Kafka" in letter.detail and letter.body in bodies  # whole raw body
    metrics = shovel.metrics()
    assert metrics['trovemeter_shovel_dead_lettered_total{reason="too_large"}'] == len(batch)
    assert metrics['trovemeter_shovel_delivery_errors_total{code="MSG_SIZE_TOO_LARGE"}'] >= 1
    assert metrics["trovemeter_shovel_kafka_outages_total"] == 0  # a refusal, not an outage
    lines = events(shovel, "shovel.dead_letter")
    assert lines and all(e["reason"] == "too_large" for e in lines)
    assert queue_counts(queue) == (0, 0)
    assert shovel.stop() == 0


def test_a_broker_refusing_every_write_holds_everything_without_spinning(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess],
        scratch: Scratch, kafka_bootstrap: str) -> None:
    """Both topics refuse every record (as a broker whose disk is full refuses every write):
    nothing is acked, the outage is one log line with Kafka's error, the failures are counted
    by error name, and retries back off instead of hammering the broker. When the broker takes
    records again, everything drains."""
    queue, exchange = names
    topic = scratch.create("notifications", **{"max.message.bytes": "60"})
    dlq = scratch.create("dlq", **{"max.message.bytes": "60"})
    batch = fresh_copies(load_fixtures(), 20)
    shovel = shovels(queue, [exchange], "--topic", topic, "--dlq-topic", dlq)
    for fixture, body, _ in batch:
        rabbit.publish(exchange, fixture.routing_key, body, fixture.pika_properties())
    code = 'trovemeter_shovel_delivery_errors_total{code="MSG_SIZE_TOO_LARGE"}'
    wait_for(lambda: metric(shovel, code) >= 3 * len(batch), 30, "the refusals", interval=0.5)
    first = metric(shovel, code)
    time.sleep(10)
    # Without backoff every refused record would be re-sent at once, hundreds of times a
    # second; with it (0.5 s doubling) 20 records fail at most a few hundred times in 10 s.
    failed_in_10s = metric(shovel, code) - first
    assert failed_in_10s < 20 * 8, failed_in_10s
    assert metric(shovel, "trovemeter_shovel_acked_total") == 0
    assert queue_counts(queue) == (0, len(batch))  # all held, unacked
    failing = events(shovel, "kafka.delivery_failing")
    assert len(failing) == 1 and failing[0]["code"] == "MSG_SIZE_TOO_LARGE"
    assert "too large" in failing[0]["error"].lower()
    assert shovel.health()["healthy"] is False

    scratch.set_config(dlq, **{"max.message.bytes": "1048576"})
    wait_for(lambda: queue_counts(queue) == (0, 0), 90, "the queue to drain", interval=1)
    letters = read_records(kafka_bootstrap, {(dlq, 0): 0}, lambda rs: len(rs) >= len(batch))
    shas = {codec.decode(r.value).body_sha256 for r in letters}
    assert shas == {hashlib.sha256(body).hexdigest() for _, body, _ in batch}  # none lost
    assert events(shovel, "kafka.delivery_recovered")
    assert shovel.stop() == 0
