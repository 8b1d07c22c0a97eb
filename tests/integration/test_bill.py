"""`trovemeter bill` against the real Kafka: duplicates and corrections are charged once, and
the offsets are committed only once the invoice file exists."""

from __future__ import annotations

import argparse
import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.bill import bill, consumer_config
from connectors.kafka_admin import ensure_topics
from trovemeter import bill_command, codec
from trovemeter.accrual import INSTANCE_SECONDS, METERS, VOLUME_GB_SECONDS
from trovemeter.model import ResourceType, UsageRecord
from trovemeter.pricing import load_price_sheet
from trovemeter.topics import TopicSpec

pytestmark = pytest.mark.integration

PRICES = Path(__file__).resolve().parents[2] / "etc" / "prices.example.yaml"
START = datetime(2026, 11, 2, tzinfo=UTC)


def usage(record_id: str, meter: str, quantity: float, version: int = 1,
          tenant: str = "tenant-a", flavor: str | None = None) -> UsageRecord:
    meter_type, unit = METERS[meter]
    return UsageRecord(
        record_id=record_id, version=version, tenant_id=tenant,
        resource_type=ResourceType.INSTANCE, resource_id="inst-1", meter=meter,
        meter_type=meter_type, unit=unit, quantity=quantity, window_start=START,
        window_end=START + timedelta(hours=1), derived_from=["m-1"], flavor_id=flavor)


@pytest.fixture
def usage_topic(kafka_bootstrap: str, unique_name: str) -> str:
    """A scratch topic with two partitions, each holding records, a duplicate and a
    correction (version 2 of record `a`, written after version 1)."""
    topic = f"{unique_name}.usage"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 2, cleanup_policy="compact")])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    a1 = usage("a", INSTANCE_SECONDS, 3600.0, flavor="2")
    a2 = usage("a", INSTANCE_SECONDS, 1800.0, flavor="2", version=2)
    b = usage("b", VOLUME_GB_SECONDS, 36000.0)
    c = usage("c", INSTANCE_SECONDS, 3600.0, tenant="tenant-b", flavor="1")
    for partition, records in ((0, [a1, b, a1, a2]), (1, [c, c])):
        for record in records:
            producer.produce(topic, codec.encode(record), key=record.record_id.encode(),
                             partition=partition)
    assert producer.flush(10) == 0
    return topic


def committed_and_end_offsets(bootstrap: str, group: str, topic: str) -> tuple[list[int], list[int]]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = [TopicPartition(topic, p) for p in (0, 1)]
        committed = [tp.offset for tp in probe.committed(partitions, timeout=10)]
        ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
    finally:
        probe.close()
    return committed, ends


def test_offsets_are_committed_only_after_the_invoice_is_on_disk(
        kafka_bootstrap: str, usage_topic: str, unique_name: str, tmp_path: Path) -> None:
    output = tmp_path / "invoice.csv"
    commits: list[bool] = []

    class WatchedConsumer:
        """The real consumer, noting whether the invoice existed when offsets were committed."""

        def __init__(self, consumer: Consumer) -> None:
            self.consumer = consumer

        def __getattr__(self, name: str) -> Any:
            return getattr(self.consumer, name)

        def commit(self, **kwargs: Any) -> Any:
            commits.append(output.exists())
            return self.consumer.commit(**kwargs)

    consumer = Consumer(consumer_config(kafka_bootstrap, unique_name))
    try:
        result = bill(WatchedConsumer(consumer), usage_topic,  # type: ignore[arg-type]
                      load_price_sheet(PRICES), output, "csv", "month", until_idle=1.0)
    finally:
        consumer.close()
    assert commits == [True]
    assert result.records_read == 6
    assert sorted((r.record_id, r.version) for r in result.latest.values()) == [
        ("a", 2), ("b", 1), ("c", 1)]
    committed, ends = committed_and_end_offsets(kafka_bootstrap, unique_name, usage_topic)
    assert committed == ends == [4, 2]


def test_bill_command_writes_each_record_once(kafka_bootstrap: str, usage_topic: str,
                                              unique_name: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "invoice.csv"
    parser = argparse.ArgumentParser()
    bill_command.add_arguments(parser)
    args = parser.parse_args(["--prices", str(PRICES), "--output", str(output),
                              "--topic", usage_topic, "--group-id", unique_name,
                              "--bootstrap", kafka_bootstrap, "--until-idle", "1"])
    assert bill_command.run(args) == 0

    rows = list(csv.DictReader(output.open()))
    assert [(r["tenant_id"], r["item"], r["flavor_id"], r["quantity"], r["amount"])
            for r in rows] == [
        ("tenant-a", "instance", "2", "0.500000", "0.02"),  # version 2 only: 0.5 h x 0.04
        ("tenant-a", "volume", "", "10.000000", "0.00"),
        ("tenant-b", "instance", "1", "1.000000", "0.01"),  # its duplicate not charged
    ]
    summary = capsys.readouterr().out
    assert "6 usage records read, 3 distinct record ids, 3 invoice lines" in summary
    assert "tenant-a" in summary and "0.02 EUR" in summary
    committed, ends = committed_and_end_offsets(kafka_bootstrap, unique_name, usage_topic)
    assert committed == ends
