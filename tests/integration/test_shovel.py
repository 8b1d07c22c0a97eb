"""`trovemeter shovel` against the real RabbitMQ and Kafka: what goes in comes out, byte for byte;
what cannot be parsed lands in the DLQ; nothing is acked before Kafka confirmed it; kill -9,
SIGTERM, a Kafka outage and a dropped connection lose nothing; secrets never leave.

Each test has its own queue and exchange (so tests and other users of the brokers do not see each
other's messages) and reads Kafka from the end offsets taken before it published.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_port
from tests.integration.shovel_harness import (
    RABBIT_PORT,
    ROOT,
    Fixture,
    Rabbit,
    Record,
    ShovelProcess,
    by_message_id,
    child_pids,
    close_connections_named,
    drain,
    end_offsets,
    load_fixtures,
    message_id_of,
    oslo_properties,
    pid_alive,
    queue_counts,
    rabbitmqctl,
    read_records,
)
from trovemeter import codec, topics
from trovemeter.envelope import parse_body
from trovemeter.model import DeadLetter, RejectReason

pytestmark = pytest.mark.integration

TOPICS = [topics.NOTIFICATIONS, topics.NOTIFICATIONS_DLQ]
KAFKA_PID = ROOT / ".stack" / "kafka" / "kafka.pid"


@pytest.fixture
def rabbit(rabbit_url: str) -> Iterator[Rabbit]:
    with Rabbit(rabbit_url) as connection:
        yield connection


@pytest.fixture
def names(rabbit: Rabbit, unique_name: str) -> Iterator[tuple[str, str]]:
    """(queue, exchange), both unique to the test, deleted afterwards."""
    queue, exchange = f"{unique_name}.q", f"{unique_name}.trove"
    yield queue, exchange
    rabbit.delete_queue(queue)
    rabbit.delete_exchange(exchange)


@pytest.fixture
def shovels(tmp_path: Path) -> Iterator[Callable[..., ShovelProcess]]:
    """Factory of shovel subprocesses; any still running at the end are killed."""
    started: list[ShovelProcess] = []

    def start(queue: str, exchanges: list[str], *extra: str, env: dict[str, str] | None = None,
              wait: bool = True) -> ShovelProcess:
        shovel = ShovelProcess(queue, exchanges, free_port(), tmp_path / f"shovel-{len(started)}.log",
                               extra_args=extra, env=env)
        started.append(shovel.start())
        if wait:
            shovel.wait_healthy()
        return shovel

    yield start
    for shovel in started:
        if shovel.process is not None and shovel.process.poll() is None:
            shovel.kill()


def fresh_copies(fixtures: list[Fixture], n: int) -> list[tuple[Fixture, bytes, str]]:
    """n bodies in the fixtures' mix, each with its own message id."""
    out = []
    for i in range(n):
        fixture = fixtures[i % len(fixtures)]
        new_id = str(uuid.uuid4())
        out.append((fixture, fixture.with_message_id(new_id), new_id))
    return out


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_ids(bootstrap: str, start: dict[tuple[str, int], int], ids: set[str],
             timeout: float = 60) -> dict[str, list[Record]]:
    """Records on trove.notifications carrying one of ``ids``, until all arrived or timeout."""
    found: dict[str, list[Record]] = {}

    def keep(record: Record) -> bool:
        mid = record.headers.get("trovemeter.message_id")
        if mid is not None and mid.decode() in ids and record.topic == topics.NOTIFICATIONS:
            found.setdefault(mid.decode(), []).append(record)
            return True
        return False

    read_records(bootstrap, start, lambda _records: ids <= found.keys(), timeout=timeout, keep=keep)
    return found


def dead_letters_of(bootstrap: str, start: dict[tuple[str, int], int], exchange: str,
                    until: Callable[[list[Record]], bool], timeout: float = 30) -> list[Record]:
    return read_records(
        bootstrap, {k: v for k, v in start.items() if k[0] == topics.NOTIFICATIONS_DLQ}, until,
        timeout=timeout,
        keep=lambda r: r.headers.get("trovemeter.exchange") == exchange.encode())


def events(shovel: ShovelProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in shovel.log_events() if e.get("event") == name]


# ------------------------------------------------------------------ happy path


@pytest.mark.parametrize("parse_workers", ["1", "0"])
def test_fixtures_arrive_byte_for_byte_with_key_and_headers(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess],
        kafka_bootstrap: str, settings: Any, parse_workers: str) -> None:
    queue, exchange = names
    fixtures = load_fixtures()
    assert {f.name.rsplit(".", 1)[1] for f in fixtures} == {"v1", "v2"}
    start = end_offsets(kafka_bootstrap, TOPICS)
    shovel = shovels(queue, [exchange], "--parse-workers", parse_workers)
    for fixture in fixtures:
        rabbit.publish(exchange, fixture.routing_key, fixture.body, fixture.pika_properties())

    found = read_ids(kafka_bootstrap, start, {f.message_id for f in fixtures})
    serde = codec.default_codec()
    for fixture in fixtures:
        records = found.get(fixture.message_id)
        assert records, f"{fixture.name} never reached Kafka"
        assert len(records) == 1, f"{fixture.name} arrived {len(records)} times in a clean run"
        record = records[0]
        props = fixture.properties
        expected = parse_body(fixture.body, max_bytes=settings.max_message_bytes,
                              content_type=props["content_type"],
                              content_encoding=props["content_encoding"])
        assert record.value == serde.encode(expected), fixture.name  # byte for byte
        assert serde.decode(record.value) == expected, fixture.name
        assert record.key == (expected.resource_id or expected.request_id or "").encode() or (
            record.key is None and expected.kafka_key is None)
        assert record.headers == {
            codec.SCHEMA_NAME_HEADER: b"trovemeter.Notification",
            "trovemeter.exchange": exchange.encode(),
            "trovemeter.routing_key": fixture.routing_key.encode(),
            "trovemeter.message_id": fixture.message_id.encode(),
        }
    # One resource's records share a partition (key = resource id, else request id).
    partitions: dict[bytes | None, set[int]] = {}
    for records in found.values():
        partitions.setdefault(records[0].key, set()).add(records[0].partition)
    assert all(len(p) == 1 for p in partitions.values())

    wait_for(lambda: shovel.metrics()["trovemeter_shovel_acked_total"] == len(fixtures), 10, "acks")
    assert queue_counts(queue) == (0, 0)

    metrics = shovel.metrics()
    assert metrics["trovemeter_shovel_consumed_total"] == len(fixtures)
    assert metrics["trovemeter_shovel_produced_total"] == len(fixtures)
    assert metrics["trovemeter_shovel_in_flight"] == 0
    assert metrics["trovemeter_shovel_rabbit_connected"] == 1
    assert metrics["trovemeter_shovel_produce_latency_seconds_count"] == len(fixtures)
    for name in ("redelivered_total", "reconnects_total", "delivery_failures_total",
                 "kafka_outages_total", "kafka_ok"):
        assert f"trovemeter_shovel_{name}" in metrics
    status, body = shovel.get("/healthz")
    health = json.loads(body)
    assert status == 200 and health["healthy"] and health["rabbit_connected"]
    assert health["kafka_reachable"] and health["in_flight"] == 0 and health["queue"] == queue
    assert health["parse_workers"] == int(parse_workers)

    assert shovel.stop() == 0
    logged = list(shovel.log_events())
    assert all(e["event"] != "<not json>" for e in logged), "every log line is JSON"
    assert any(e["event"] == "shovel.stopped" for e in logged)


# ------------------------------------------------------------------ dead letters


def _v2(inner: dict[str, Any], version: str = "2.0") -> bytes:
    return json.dumps({"oslo.version": version, "oslo.message": json.dumps(inner)}).encode()


def test_bad_bodies_land_in_the_dlq_with_reason_and_are_acked(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess],
        kafka_bootstrap: str) -> None:
    queue, exchange = names
    good = load_fixtures()[0]
    inner = json.loads(json.loads(load_fixtures()[-1].body)["oslo.message"]) \
        if load_fixtures()[-1].body.startswith(b'{"oslo.version"') else None
    v2 = next(f for f in load_fixtures() if f.name == "dbaas.instance_create.start.v2")
    inner = json.loads(json.loads(v2.body)["oslo.message"])
    no_event_type = {k: v for k, v in inner.items() if k != "event_type"}
    oversized = json.dumps({"padding": "x" * 9000}).encode()
    huge = b'{"blob": "' + b"y" * (3 * 1024 * 1024 + 500_000) + b'"}'
    plain = oslo_properties()
    gzip_props = oslo_properties()
    gzip_props.content_encoding = "gzip"
    bad: list[tuple[bytes, Any, RejectReason]] = [
        (b"this is not json {", plain, RejectReason.NOT_JSON),
        (json.dumps({"oslo.version": "2.0"}).encode(), plain, RejectReason.ENVELOPE_WITHOUT_MESSAGE),
        (json.dumps({"oslo.version": "2.0", "oslo.message": {"a": 1}}).encode(), plain,
         RejectReason.WRONG_TYPE),
        (_v2(inner, version="3.0"), plain, RejectReason.UNSUPPORTED_VERSION),
        (_v2(no_event_type), plain, RejectReason.MISSING_FIELD),
        (oversized, plain, RejectReason.TOO_LARGE),
        (gzip.compress(v2.body), gzip_props, RejectReason.CONTENT_ENCODING),
        (huge, plain, RejectReason.TOO_LARGE),
    ]
    start = end_offsets(kafka_bootstrap, TOPICS)
    shovel = shovels(queue, [exchange], "--parse-workers", "0",
                     env={"TROVEMETER_MAX_MESSAGE_BYTES": "8192"})
    rabbit.publish(exchange, "notifications.info", good.body, good.pika_properties())
    for body, props, _ in bad:
        rabbit.publish(exchange, "notifications.error", body, props)

    letters = dead_letters_of(kafka_bootstrap, start, exchange, lambda r: len(r) >= len(bad))
    assert len(letters) == len(bad)
    assert read_ids(kafka_bootstrap, start, {good.message_id})  # the good one still flows
    for record, (body, props, reason) in zip(letters, bad, strict=True):  # DLQ: one partition
        letter = codec.decode(record.value)
        assert isinstance(letter, DeadLetter)
        assert letter.reason is reason, (letter.reason, letter.detail)
        assert record.headers["trovemeter.reason"] == reason.value.encode()
        assert record.headers[codec.SCHEMA_NAME_HEADER] == b"trovemeter.DeadLetter"
        assert letter.detail and "\n" not in letter.detail
        assert letter.body_length == len(body)
        assert letter.body_sha256 == hashlib.sha256(body).hexdigest()
        assert letter.exchange == exchange and letter.routing_key == "notifications.error"
        assert letter.properties.content_encoding == props.content_encoding
        assert letter.properties.content_type == "application/json"
        assert letter.properties.delivery_mode == 2
        if len(body) <= 3 * 1024 * 1024:
            assert letter.body == body  # raw bytes, whole (none of these carries a secret)
        else:  # kept: the first 3 MiB, with the length and digest of the whole
            assert letter.body == body[: 3 * 1024 * 1024]
    assert letters[4].headers["trovemeter.message_id"] == inner["message_id"].encode()

    wait_for(lambda: shovel.metrics()["trovemeter_shovel_acked_total"] == len(bad) + 1, 10, "acks")
    assert queue_counts(queue) == (0, 0)
    metrics = shovel.metrics()
    assert metrics['trovemeter_shovel_dead_lettered_total{reason="too_large"}'] == 2
    assert sum(v for k, v in metrics.items() if "dead_lettered" in k) == len(bad)
    assert metrics["trovemeter_shovel_produced_total"] == 1
    assert len(events(shovel, "shovel.dead_letter")) == len(bad)


# ------------------------------------------------------------------ secrets


def test_secrets_never_reach_kafka_or_the_logs(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess],
        kafka_bootstrap: str) -> None:
    queue, exchange = names
    token = "gAAAAAB" + secrets.token_hex(24)
    url_password = "Pw" + secrets.token_hex(12)
    rabbit_password = "Rb" + secrets.token_hex(12)
    user = f"trovemeter-test-{secrets.token_hex(4)}"
    transport_url = f"rabbit://trove:{url_password}@rabbit-1.example:5672,trove:{url_password}@rabbit-2:5672/trove"

    fixtures = {f.name: f for f in load_fixtures()}
    inner = json.loads(json.loads(fixtures["dbaas.instance_create.start.v2"].body)["oslo.message"])
    planted = dict(inner, message_id=str(uuid.uuid4()), _context_auth_token=token,
                   payload=dict(inner["payload"], transport_url=transport_url,
                                options={"connection": transport_url, "admin_token": token}))
    v1 = json.loads(fixtures["dbaas.instance_create.start.v1"].body)
    planted_v1 = dict(v1, message_id=str(uuid.uuid4()), _context_auth_token=token,
                      payload=dict(v1["payload"], transport_url=transport_url))
    broken = {k: v for k, v in planted.items() if k != "event_type"}  # -> DLQ, raw body scrubbed
    broken_v1 = {k: v for k, v in planted_v1.items() if k != "timestamp"}
    bodies = [_v2(planted), json.dumps(planted_v1).encode(), _v2(broken),
              json.dumps(broken_v1).encode()]
    assert all(token.encode() in b and url_password.encode() in b for b in bodies)

    rabbitmqctl("add_user", user, rabbit_password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        start = end_offsets(kafka_bootstrap, TOPICS)
        shovel = shovels(queue, [exchange], env={
            "TROVEMETER_RABBIT_URL": f"amqp://{user}:{rabbit_password}@127.0.0.1:{RABBIT_PORT}/%2F",
            "TROVEMETER_LOG_LEVEL": "DEBUG"})
        for body in bodies:
            rabbit.publish(exchange, "notifications.info", body)
        good = read_ids(kafka_bootstrap, start, {planted["message_id"], planted_v1["message_id"]})
        letters = dead_letters_of(kafka_bootstrap, start, exchange, lambda r: len(r) >= 2)
        wait_for(lambda: shovel.metrics()["trovemeter_shovel_acked_total"] == 4, 10, "acks")
        assert shovel.stop() == 0
    finally:
        rabbitmqctl("delete_user", user)

    assert len(good) == 2 and len(letters) == 2
    records = [r for rs in good.values() for r in rs] + letters
    for record in records:
        blob = record.value + (record.key or b"") + b"".join(
            k.encode() + v for k, v in record.headers.items())
        for secret in (token, url_password, rabbit_password):
            assert secret.encode() not in blob, f"secret leaked into {record.topic}"
    notification = codec.decode(good[planted["message_id"]][0].value)
    assert "auth_token" not in notification.context
    assert notification.payload["transport_url"].startswith("rabbit://trove:***@rabbit-1.example")
    assert "admin_token" not in notification.payload["options"]
    letter = codec.decode(letters[0].value)
    assert letter.body_redacted and b"***" in letter.body

    log_text = shovel.logs()
    assert f"{user}:***@127.0.0.1" in log_text  # the URL is logged, masked
    assert "rabbitmq.connected" in log_text and "shovel.dead_letter" in log_text
    for secret in (token, url_password, rabbit_password):
        assert secret not in log_text, "secret leaked into the shovel's log"


# ------------------------------------------------------------------ failures


def test_exchange_durability_mismatch_is_one_clear_error(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess]) -> None:
    queue, exchange = names
    rabbit.channel.exchange_declare(exchange, "topic", durable=True)  # deployment: durable
    shovel = shovels(queue, [exchange], wait=False)  # the shovel's default: not durable
    assert shovel.wait(timeout=30) == 2, shovel.logs()
    errors = [e for e in shovel.log_events() if e.get("level") == "error"]
    assert len(errors) == 1, shovel.logs()
    message = errors[0]["error"]
    assert exchange in message and "durable=false" in message
    assert "TROVEMETER_EXCHANGE_DURABLE=true" in message
    assert not events(shovel, "rabbitmq.unavailable")  # no retry loop

    ok = shovels(queue, [exchange], "--exchange-durable")  # the flag that fixes it
    assert ok.stop() == 0


def test_kafka_outage_keeps_messages_unacked_until_kafka_returns(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess],
        kafka_bootstrap: str) -> None:
    queue, exchange = names
    batch = fresh_copies(load_fixtures(), 3000)
    ids = {mid for _, _, mid in batch}
    start = end_offsets(kafka_bootstrap, TOPICS)
    # Deliveries time out after 5 s here (60 s by default), so the outage also exercises the
    # failed-report path: re-produce with backoff, never ack.
    shovel = shovels(queue, [exchange], "--prefetch", "500", "--kafka-config",
                     "message.timeout.ms=5000")
    before = batch[:300]
    for fixture, body, _ in before:
        rabbit.publish(exchange, fixture.routing_key, body, fixture.pika_properties())
    wait_for(lambda: shovel.metrics()["trovemeter_shovel_acked_total"] == len(before), 20,
             "the first messages")

    kafka_pid = int(KAFKA_PID.read_text())
    os.kill(kafka_pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        stop_publishing = threading.Event()

        def publish_while_down() -> None:  # messages keep flowing into RabbitMQ meanwhile
            with Rabbit(rabbit.url) as publisher:
                for i, (fixture, body, _) in enumerate(batch[300:]):
                    publisher.publish(exchange, fixture.routing_key, body, fixture.pika_properties())
                    if i % 100 == 99:
                        time.sleep(0.05)
                    if stop_publishing.is_set():
                        break

        thread = threading.Thread(target=publish_while_down)
        thread.start()
        thread.join(timeout=30)
        wait_for(lambda: shovel.health()["kafka_deliveries_ok"] is False, 20,
                 "the shovel to notice the stalled deliveries", interval=0.5)
        ready, unacked = queue_counts(queue)
        metrics = shovel.metrics()
        acked_during = metrics["trovemeter_shovel_acked_total"] - len(before)
        status, _ = shovel.get("/healthz")
        while time.monotonic() - stopped_at < 15:
            time.sleep(0.2)
    finally:
        os.kill(kafka_pid, signal.SIGCONT)
    outage = time.monotonic() - stopped_at

    assert acked_during == 0, "acked while Kafka was unreachable"
    assert unacked == 500 and ready == len(batch) - len(before) - 500  # all kept by RabbitMQ
    assert metrics["trovemeter_shovel_in_flight"] == 500
    assert metrics["trovemeter_shovel_delivery_failures_total"] > 0  # timed out, re-produced
    assert status == 503

    found = read_ids(kafka_bootstrap, start, ids, timeout=90)
    assert ids <= found.keys(), f"{len(ids - found.keys())} messages lost"
    wait_for(lambda: queue_counts(queue) == (0, 0), 60, "the queue to drain", interval=1)
    assert not dead_letters_of(kafka_bootstrap, start, exchange, lambda r: False, timeout=2)
    failing = events(shovel, "kafka.delivery_failing")
    assert len(failing) == 1, [(e.get("ts"), e.get("code"), e.get("error")) for e in  # once per outage
                               failing + events(shovel, "kafka.delivery_recovered")]
    assert len(events(shovel, "kafka.delivery_recovered")) == 1
    health = shovel.health()
    assert health["healthy"], health
    assert shovel.stop() == 0
    assert outage < 25


def test_kill_9_mid_stream_loses_nothing(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess],
        kafka_bootstrap: str) -> None:
    queue, exchange = names
    batch = fresh_copies(load_fixtures(), 10_000)
    ids = {mid for _, _, mid in batch}
    rabbit.prepare(queue, [exchange])
    rabbit.publish_many((exchange, f.routing_key, body, f.pika_properties()) for f, body, _ in batch)
    rabbit.wait_ready(queue, len(batch))
    start = end_offsets(kafka_bootstrap, TOPICS)

    first = shovels(queue, [exchange], wait=False)
    wait_for(lambda: _acked(first) >= 2000, 30, "2000 acks", interval=0.02)
    helpers = child_pids(first.pid)
    assert helpers, "the shovel parses in a helper process by default"
    first.kill()
    assert first.process is not None and first.process.returncode == -signal.SIGKILL
    wait_for(lambda: not any(pid_alive(p) for p in helpers), 10, "the helpers to die with it")
    ready, unacked = queue_counts(queue)
    assert unacked == 0 and 0 < ready < len(batch)

    second = shovels(queue, [exchange])
    found = read_ids(kafka_bootstrap, start, ids, timeout=90)
    assert ids <= found.keys(), f"{len(ids - found.keys())} messages lost"
    wait_for(lambda: queue_counts(queue) == (0, 0), 30, "the queue to drain", interval=1)
    assert second.metrics()["trovemeter_shovel_redelivered_total"] > 0
    duplicates = sum(len(r) - 1 for r in found.values())
    assert duplicates <= 2000 + 10  # only what was in flight at the kill may repeat
    assert second.stop() == 0


def _acked(shovel: ShovelProcess) -> float:
    try:
        return shovel.metrics().get("trovemeter_shovel_acked_total", 0)
    except OSError:
        return 0


def test_sigterm_stops_cleanly_and_leaves_exactly_the_unconfirmed(
        rabbit: Rabbit, rabbit_url: str, names: tuple[str, str],
        shovels: Callable[..., ShovelProcess], kafka_bootstrap: str) -> None:
    queue, exchange = names
    batch = fresh_copies(load_fixtures(), 10_000)
    ids = {mid for _, _, mid in batch}
    rabbit.prepare(queue, [exchange])
    rabbit.publish_many((exchange, f.routing_key, body, f.pika_properties()) for f, body, _ in batch)
    rabbit.wait_ready(queue, len(batch))
    start = end_offsets(kafka_bootstrap, TOPICS)

    shovel = shovels(queue, [exchange], wait=False)
    wait_for(lambda: _acked(shovel) >= 2000, 30, "2000 acks", interval=0.02)
    signalled = time.monotonic()
    assert shovel.stop(timeout=15) == 0
    assert time.monotonic() - signalled < 5

    ready, unacked = queue_counts(queue)
    assert unacked == 0 and ready < len(batch) - 2000
    on_kafka = set(by_message_id(read_records(
        kafka_bootstrap, {k: v for k, v in start.items() if k[0] == topics.NOTIFICATIONS},
        lambda records: len(records) >= len(batch) - ready, timeout=30,
        keep=lambda r: r.headers.get("trovemeter.exchange") == exchange.encode())))
    left = {message_id_of(body) for body in drain(rabbit_url, queue)}
    assert len(left) == ready
    assert on_kafka.isdisjoint(left), "a message both on Kafka and still queued"
    assert on_kafka | left == ids, "a message neither on Kafka nor in the queue"
    stopped = events(shovel, "shovel.stopped")
    assert len(stopped) == 1 and stopped[0]["left_unacked_in_rabbitmq"] == 0


def test_reconnects_after_the_connection_is_closed_and_logs_once(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess],
        kafka_bootstrap: str) -> None:
    queue, exchange = names
    batch = fresh_copies(load_fixtures(), 400)
    start = end_offsets(kafka_bootstrap, TOPICS)
    shovel = shovels(queue, [exchange])
    for fixture, body, _ in batch[:200]:
        rabbit.publish(exchange, fixture.routing_key, body, fixture.pika_properties())
    wait_for(lambda: _acked(shovel) == 200, 20, "the first 200")

    assert close_connections_named(f"trovemeter-shovel {queue}") == 1
    for fixture, body, _ in batch[200:]:
        rabbit.publish(exchange, fixture.routing_key, body, fixture.pika_properties())
    found = read_ids(kafka_bootstrap, start, {mid for _, _, mid in batch}, timeout=60)
    assert len(found) == len(batch)
    wait_for(lambda: shovel.metrics()["trovemeter_shovel_reconnects_total"] == 1, 20, "reconnect")
    wait_for(lambda: queue_counts(queue) == (0, 0), 30, "the queue to drain", interval=1)
    assert len(events(shovel, "rabbitmq.session_lost")) == 1
    assert len(events(shovel, "rabbitmq.reconnected")) == 1
    assert shovel.stop() == 0


def test_a_killed_parser_helper_loses_nothing(
        rabbit: Rabbit, names: tuple[str, str], shovels: Callable[..., ShovelProcess],
        kafka_bootstrap: str) -> None:
    queue, exchange = names
    batch = fresh_copies(load_fixtures(), 6000)
    ids = {mid for _, _, mid in batch}
    rabbit.prepare(queue, [exchange])
    rabbit.publish_many((exchange, f.routing_key, body, f.pika_properties()) for f, body, _ in batch)
    rabbit.wait_ready(queue, len(batch))
    start = end_offsets(kafka_bootstrap, TOPICS)
    shovel = shovels(queue, [exchange], wait=False)
    wait_for(lambda: _acked(shovel) >= 1000, 30, "1000 acks", interval=0.02)
    (helper,) = child_pids(shovel.pid)
    os.kill(helper, signal.SIGKILL)

    found = read_ids(kafka_bootstrap, start, ids, timeout=90)
    assert ids <= found.keys(), f"{len(ids - found.keys())} messages lost"
    wait_for(lambda: queue_counts(queue) == (0, 0), 30, "the queue to drain", interval=1)
    lost = events(shovel, "rabbitmq.session_lost")
    assert len(lost) == 1 and "parser helper" in lost[0]["error"]
    assert len(child_pids(shovel.pid)) == 1  # a new helper took over
    assert shovel.stop() == 0
