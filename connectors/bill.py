"""The Kafka side of `trovemeter bill`: read trove.usage from the beginning, keep the latest
version of each record id, write the invoice, and only then commit the consumed offsets.

The invoice is recomputed from every record each time the consumer has caught up (all its
partitions at their end), so a duplicate or a correction read later never double-charges.
The file is written to a temporary name, fsynced and renamed over the output; the offsets are
committed synchronously after that, so a committed offset always stands for an invoice on disk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from trovemeter import codec
from trovemeter.model import UsageRecord
from trovemeter.security import client_config
from trovemeter.pricing import (
    InvoiceLine,
    Period,
    PriceSheet,
    invoice_lines,
    lines_as_csv,
    lines_as_json,
)

log = logging.getLogger("trovemeter.bill")

_POLL_SECONDS = 0.5  # short, so that SIGINT and the idle check are noticed promptly


class UsageConsumer(Protocol):
    """The part of ``confluent_kafka.Consumer`` the biller uses."""

    def subscribe(self, topics: list[str], on_assign: Callable[..., None]) -> None: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def poll(self, timeout: float) -> Any: ...

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any: ...


def consumer_config(bootstrap: str | Mapping[str, Any], group_id: str) -> dict[str, Any]:
    """``bootstrap``: servers, or ``settings.kafka_client_config()`` (with TLS/SASL)."""
    return {
        **client_config(bootstrap),
        "group.id": group_id,
        "enable.auto.commit": False,  # committed by hand, after the invoice is written
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,  # tells when the consumer has caught up
    }


@dataclass
class BillRun:
    """What one biller saw and wrote."""

    records_read: int = 0
    latest: dict[str, UsageRecord] = field(default_factory=dict)  # record id -> highest version
    lines: list[InvoiceLine] = field(default_factory=list)  # of the last invoice written
    committed: list[TopicPartition] = field(default_factory=list)  # after the last invoice


def bill(consumer: UsageConsumer, topic: str, sheet: PriceSheet, output: Path,
         output_format: str, period: Period, until_idle: float | None,
         should_stop: Callable[[], bool] = lambda: False) -> BillRun:
    """Consume ``topic`` from the beginning; whenever caught up with new records, write the
    invoice and commit. Returns after ``until_idle`` seconds without records once caught up,
    or when ``should_stop()`` (SIGINT/SIGTERM) says so."""
    result = BillRun()
    latest = result.latest
    end_offsets: dict[int, int] = {}
    assigned: set[int] = set()
    at_end: set[int] = set()

    def on_assign(_consumer: Any, partitions: list[TopicPartition]) -> None:
        # Every run reads the whole (compacted) topic: the invoice needs every record's latest
        # version, not just what arrived since the last commit.
        for partition in partitions:
            partition.offset = OFFSET_BEGINNING
        assigned.update(p.partition for p in partitions)
        consumer.assign(partitions)

    consumer.subscribe([topic], on_assign=on_assign)
    unwritten = True  # even an empty topic gets its (empty) invoice
    last_record_at = time.monotonic()
    while not should_stop():
        message = consumer.poll(_POLL_SECONDS)
        if message is not None:
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
                end_offsets[message.partition()] = message.offset()
            elif error is not None:
                raise KafkaException(error)
            else:
                at_end.discard(message.partition())
                end_offsets[message.partition()] = message.offset() + 1
                last_record_at = time.monotonic()
                unwritten = True
                result.records_read += 1
                _keep_latest(latest, message.value())
        caught_up = bool(assigned) and at_end >= assigned
        if caught_up and unwritten:
            result.lines = invoice_lines(latest.values(), sheet, period)
            render = lines_as_csv if output_format == "csv" else lines_as_json
            write_durably(output, render(result.lines))
            result.committed = [TopicPartition(topic, p, o) for p, o in sorted(end_offsets.items())]
            if result.committed:
                consumer.commit(offsets=result.committed, asynchronous=False)
            log.info("bill.written", extra={"output": str(output), "lines": len(result.lines),
                                            "records": len(latest)})
            unwritten = False
        if until_idle is not None and caught_up and time.monotonic() - last_record_at >= until_idle:
            break
    return result


def _keep_latest(latest: dict[str, UsageRecord], value: bytes | None) -> None:
    if value is None:
        return  # a compaction tombstone bills nothing
    record = codec.decode(value)
    if not isinstance(record, UsageRecord):
        raise codec.CodecError(f"expected a UsageRecord, got {type(record).__name__}")
    kept = latest.get(record.record_id)
    if kept is None or record.version > kept.version:
        latest[record.record_id] = record


def write_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and make it survive a crash: temporary file,
    fsync, rename, fsync of the directory."""
    path = path.resolve()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
