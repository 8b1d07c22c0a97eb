"""Fuzz the running shovel with ~11k mutated real bodies (issue #9, the subset in `make test`).

``fuzz_bodies.generate`` mutates the captured oslo.messaging fixtures, seeded: truncated JSON,
wrong envelope versions, ``oslo.message`` not a string, deep nesting, huge strings and arrays
past the size limit, invalid UTF-8, NaN/Infinity, wrong types for every known field, unknown
event types, timestamps in odd formats, wrong AMQP properties (gzip/latin-1/missing content
encoding, text/plain, compressed bodies), broken structure, and unmodified controls.

All of them go through RabbitMQ to a real ``trovemeter shovel`` (default: a parser helper
process) writing to scratch topics. Then, for EACH body, the outcome on Kafka must be exactly
what ``parse_body`` decides in this process: the same Avro record (byte for byte, same key and
headers), or a dead letter with the raw bytes (secrets masked as ``scrub_raw`` does), their
length and SHA-256, the same reason and detail. Nothing twice, nothing missing; the shovel never
crashes or stalls, every delivery is acked, the queue drains.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from connectors.shovel import DLQ_MAX_BODY_BYTES
from tests.integration.conftest import free_port
from tests.integration.fuzz_bodies import FuzzBody, generate
from tests.integration.shovel_harness import Rabbit, ShovelProcess, queue_counts, read_records
from tests.integration.test_kafka_refusals import Scratch
from tests.integration.test_shovel import events, wait_for
from trovemeter import codec
from trovemeter.envelope import BadNotification, default_normaliser, parse_body
from trovemeter.model import DeadLetter, Notification, RejectReason
from trovemeter.redaction import mask_url_password, scrub_raw

pytestmark = pytest.mark.integration

SEED = 9
MAX_BYTES = 32 * 1024  # TROVEMETER_MAX_MESSAGE_BYTES of the shovel under test
PARSED = "parsed"


@pytest.fixture
def rabbit(rabbit_url: str) -> Iterator[Rabbit]:
    with Rabbit(rabbit_url) as connection:
        yield connection


def verdict(item: FuzzBody) -> tuple[str, Any]:
    """What the shovel must do with ``item``: (PARSED, Notification) or (reason, detail)."""
    props = item.properties
    try:
        notification = parse_body(item.body, max_bytes=MAX_BYTES,
                                  content_type=props.get("content_type"),
                                  content_encoding=props.get("content_encoding"),
                                  normaliser=default_normaliser())
    except BadNotification as exc:
        return exc.reason.value, exc.detail
    return PARSED, notification


def pika_props(props: dict[str, Any]) -> pika.BasicProperties:
    return pika.BasicProperties(**{k: v for k, v in props.items() if v is not None})


def outcome_table(items: list[FuzzBody], outcomes: list[str]) -> str:
    table: dict[str, Counter[str]] = {}
    for item, outcome in zip(items, outcomes, strict=True):
        table.setdefault(item.category, Counter())[outcome] += 1
    lines = [f"{'category':20} {'bodies':>6}  outcomes (parsed / dead-lettered by reason)"]
    for category, counts in table.items():
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        lines.append(f"{category:20} {sum(counts.values()):>6}  {detail}")
    totals = Counter(outcomes)
    lines.append(f"{'total':20} {len(outcomes):>6}  parsed {totals[PARSED]}, dead-lettered "
                 f"{len(outcomes) - totals[PARSED]}")
    return "\n".join(lines)


def test_every_fuzzed_body_is_parsed_or_dead_lettered_exactly_as_parse_body_says(
        rabbit: Rabbit, unique_name: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    items = generate(SEED, MAX_BYTES)
    assert len(items) >= 10_000
    assert len({item.body for item in items}) == len(items)
    verdicts = [verdict(item) for item in items]
    outcomes = [kind for kind, _ in verdicts]
    serde = codec.default_codec()
    parsed = {v.message_id: (item, v) for item, (kind, v) in zip(items, verdicts, strict=True)
              if kind == PARSED}
    assert len(parsed) == outcomes.count(PARSED), "two parsed bodies share a message_id"
    dead = {hashlib.sha256(item.body).hexdigest(): (item, kind, detail)
            for item, (kind, detail) in zip(items, verdicts, strict=True) if kind != PARSED}
    # Coverage: every category has bodies, and the corpus reaches every reject reason a body
    # can earn on its own (encode_failed/other would mean a bug; too_large also comes from Kafka).
    assert set(outcomes) >= {PARSED} | {r.value for r in RejectReason} - {"encode_failed", "other"}

    queue, exchange = f"{unique_name}.q", f"{unique_name}.trove"
    scratch = Scratch(kafka_bootstrap, f"scratch-{unique_name}")
    shovel = None
    try:
        topic, dlq = scratch.create("notifications", 4), scratch.create("dlq")
        shovel = ShovelProcess(queue, [exchange], free_port(), tmp_path / "shovel.log",
                               extra_args=["--topic", topic, "--dlq-topic", dlq],
                               env={"TROVEMETER_MAX_MESSAGE_BYTES": str(MAX_BYTES)}).start()
        shovel.wait_healthy()
        started = time.monotonic()
        with Rabbit(rabbit.url) as publisher:
            published = publisher.publish_many(
                ((exchange, item.routing_key, item.body, pika_props(item.properties))
                 for item in items), confirm=True)
        assert published == len(items)

        def all_acked() -> bool:
            assert shovel is not None and shovel.process is not None
            assert shovel.process.poll() is None, f"the shovel died:\n{shovel.logs()[-3000:]}"
            return shovel.metrics().get("trovemeter_shovel_acked_total", 0) >= len(items)

        wait_for(all_acked, 300, "every delivery acked", interval=0.5)
        took = time.monotonic() - started
        records = read_records(kafka_bootstrap, {(topic, p): 0 for p in range(4)},
                               lambda rs: len(rs) >= len(parsed), timeout=120)
        letters = read_records(kafka_bootstrap, {(dlq, 0): 0},
                               lambda rs: len(rs) >= len(dead), timeout=120)
        time.sleep(1)  # nothing more may come
        extra = read_records(kafka_bootstrap, {(dlq, 0): len(letters)}, lambda rs: False,
                             timeout=1)
        metrics = shovel.metrics()
        health = shovel.health()
        counts = queue_counts(queue)
        assert shovel.stop() == 0
    finally:
        if shovel is not None and shovel.process is not None and shovel.process.poll() is None:
            shovel.kill()
        rabbit.delete_queue(queue)
        rabbit.delete_exchange(exchange)
        scratch.cleanup()

    print(f"\nfuzz: {len(items)} bodies, seed {SEED}, limit {MAX_BYTES} B, shovel drained in "
          f"{took:.1f} s\n{outcome_table(items, outcomes)}")

    # -- each parsed body: exactly one record, the very bytes parse_body + the codec give
    assert len(records) == len(parsed), (len(records), len(parsed))
    seen: set[str] = set()
    for record in records:
        message_id = record.headers["trovemeter.message_id"].decode()
        assert message_id not in seen, f"{message_id} twice"
        seen.add(message_id)
        item, notification = parsed[message_id]
        assert isinstance(notification, Notification)
        assert record.value == serde.encode(notification), (item.category, item.variant)
        assert record.key == (notification.kafka_key.encode()
                              if notification.kafka_key is not None else None)
        assert record.headers["trovemeter.exchange"] == exchange.encode()
        assert record.headers["trovemeter.routing_key"] == item.routing_key.encode()
        assert record.headers[codec.SCHEMA_NAME_HEADER] == b"trovemeter.Notification"
    assert seen == parsed.keys()

    # -- each rejected body: exactly one dead letter with its raw bytes, reason and detail
    assert not extra and len(letters) == len(dead), (len(letters), len(dead))
    lettered: set[str] = set()
    for record in letters:
        letter = codec.decode(record.value)
        assert isinstance(letter, DeadLetter)
        assert letter.body_sha256 not in lettered, "a body dead-lettered twice"
        lettered.add(letter.body_sha256)
        item, reason, detail = dead[letter.body_sha256]
        where = (item.category, item.variant)
        assert letter.reason.value == reason, (where, letter.reason, reason, letter.detail)
        assert letter.detail == mask_url_password(" ".join(detail.split()))[:1000], where
        assert letter.body_length == len(item.body), where
        kept = scrub_raw(item.body[:DLQ_MAX_BODY_BYTES])
        assert letter.body == kept, where  # the raw bytes (secret values masked)
        assert letter.body_redacted == (kept != item.body[:DLQ_MAX_BODY_BYTES])
        assert letter.exchange == exchange and letter.routing_key == item.routing_key
        assert not letter.redelivered
        assert letter.properties.content_type == item.properties.get("content_type"), where
        assert letter.properties.content_encoding == item.properties.get("content_encoding")
        assert record.headers["trovemeter.reason"] == reason.encode()
    assert lettered == dead.keys()

    # -- the shovel: alive to the end, every delivery acked once, no reconnect, no stall
    assert counts == (0, 0)
    assert metrics["trovemeter_shovel_consumed_total"] == len(items)
    assert metrics["trovemeter_shovel_acked_total"] == len(items)
    assert metrics["trovemeter_shovel_redelivered_total"] == 0
    assert metrics["trovemeter_shovel_produced_total"] == len(parsed)
    by_reason = Counter(kind for kind in outcomes if kind != PARSED)
    for reason, n in by_reason.items():
        assert metrics[f'trovemeter_shovel_dead_lettered_total{{reason="{reason}"}}'] == n, reason
    assert metrics["trovemeter_shovel_reconnects_total"] == 0
    assert metrics["trovemeter_shovel_delivery_failures_total"] == 0
    mapping = default_normaliser().mapping
    unknown = sum(1 for _, n in parsed.values() if not mapping.classify(n.event_type).known)
    unmapped = sum(v for k, v in metrics.items()
                   if k.startswith("trovemeter_shovel_unmapped_event_types_total"))
    assert unmapped == unknown > 0
    assert health["healthy"] and health["in_flight"] == 0
    assert not events(shovel, "rabbitmq.session_lost") and not events(shovel, "shovel.crashed")
    assert not events(shovel, "kafka.delivery_failing")
    lines = events(shovel, "shovel.dead_letter")
    minutes = int(took // 60) + 1
    assert 0 < len(lines) <= 20 * minutes, "dead-letter log lines are rate-limited"
    assert all(e["event"] != "<not json>" for e in shovel.log_events())
