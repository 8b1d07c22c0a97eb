"""`trovemeter tail` against a scratch topic on the real Kafka."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from trovemeter import codec
from trovemeter.model import OperationCompleted, Outcome, ResourceType

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TROVEMETER = ROOT / ".venv" / "bin" / "trovemeter"
T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def scratch_topic(kafka_bootstrap: str, unique_name: str) -> Iterator[str]:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(unique_name, num_partitions=2, replication_factor=1)]
                        )[unique_name].result(30)
    yield unique_name
    admin.delete_topics([unique_name])[unique_name].result(30)


def operation(record_id: str) -> OperationCompleted:
    return OperationCompleted(record_id=record_id, outcome=Outcome.SUCCEEDED,
                              resource_type=ResourceType.INSTANCE, operation="create",
                              started_at=T0, ended_at=T0, duration_seconds=42.5,
                              tenant_id="tenant-a")


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]],
            partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in items:
        kwargs = {"partition": partition} if partition is not None else {}
        producer.produce(topic, key=key, value=value,
                         headers=[codec.header_for(operation("x"))] if value else None, **kwargs)
    assert producer.flush(30) == 0


def tail(*args: str, timeout: float = 60) -> list[dict]:
    result = subprocess.run([str(TROVEMETER), "tail", *args], capture_output=True, timeout=timeout,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_tail_prints_every_record_decoded_then_exits(kafka_bootstrap: str,
                                                     scratch_topic: str) -> None:
    produce(kafka_bootstrap, scratch_topic, [
        (b"op-1", codec.encode(operation("op-1"))),
        (b"op-2", codec.encode(operation("op-2"))),
        (b"foreign", b'{"not": "avro"}'),
        (b"op-1", None),  # a tombstone
    ], partition=0)
    produce(kafka_bootstrap, scratch_topic, [(b"op-3", codec.encode(operation("op-3")))],
            partition=1)
    lines = tail(scratch_topic)
    assert len(lines) == 5
    assert {(line["partition"], line["offset"]) for line in lines} == \
        {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)}
    by_key: dict[str, list[dict]] = {}
    for line in lines:
        by_key.setdefault(line["key"], []).append(line)
    first = by_key["op-1"][0]
    assert first["topic"] == scratch_topic
    assert first["headers"]["avro.schema.name"] == "trovemeter.OperationCompleted"
    assert first["value"]["record_id"] == "op-1"
    assert first["value"]["outcome"] == "succeeded" and first["value"]["resource_type"] == "instance"
    assert first["value"]["started_at"] == "2026-11-02T10:00:00+00:00"
    assert first["value"]["duration_seconds"] == 42.5
    assert by_key["op-1"][1]["value"] is None and "error" not in by_key["op-1"][1]
    foreign = by_key["foreign"][0]
    assert foreign["value"] is None and "not Avro" in foreign["error"]
    assert foreign["raw_base64"]

    # --key and --limit
    assert [line["offset"] for line in tail(scratch_topic, "--key", "op-1")] == [0, 3]
    assert len(tail(scratch_topic, "--limit", "2")) == 2
    assert [line["record_id"] for line in tail(scratch_topic, "--key", "op-3", "--compact")] \
        == ["op-3"]


def test_tail_follow_prints_only_new_records_until_idle(kafka_bootstrap: str,
                                                        scratch_topic: str) -> None:
    produce(kafka_bootstrap, scratch_topic, [(b"old", codec.encode(operation("old")))])
    process = subprocess.Popen([str(TROVEMETER), "tail", scratch_topic, "--follow",
                                "--until-idle", "4"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=ROOT)
    try:
        time.sleep(2.5)  # assigned at the end by now
        produce(kafka_bootstrap, scratch_topic, [(b"new", codec.encode(operation("new")))])
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["key"] for line in lines] == ["new"]
    # With --from-beginning, the history comes first.
    lines = tail(scratch_topic, "--from-beginning", "--until-idle", "1")
    assert sorted(line["key"] for line in lines) == ["new", "old"]


def test_tail_unknown_topic_is_a_clear_error() -> None:
    result = subprocess.run([str(TROVEMETER), "tail", "no.such.topic.here"], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "trove.operations" in result.stderr
