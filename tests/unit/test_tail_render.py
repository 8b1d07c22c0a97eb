"""`trovemeter tail`: one Kafka record -> the JSON object it prints."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from trovemeter import codec
from trovemeter.model import (
    AmqpProperties,
    DeadLetter,
    MeterType,
    OperationCompleted,
    Outcome,
    RejectReason,
    ResourceType,
    UsageRecord,
)
from trovemeter.tail_command import dumps, render_record, to_jsonable

T0 = datetime(2026, 11, 2, 10, 0, 1, 250000, tzinfo=UTC)


def test_operation_record_renders_enums_as_values_and_datetimes_iso() -> None:
    record = OperationCompleted(record_id="r-1", outcome=Outcome.FAILED,
                                resource_type=ResourceType.INSTANCE, operation="create",
                                started_at=T0, ended_at=T0, duration_seconds=0.0,
                                tenant_id="t1")
    data = codec.encode(record)
    out = render_record("trove.operations", 2, 41, b"r-1", [codec.header_for(record)], data,
                        codec.decode, timestamp_ms=1_700_000_000_123)
    assert list(out) == ["topic", "partition", "offset", "timestamp", "key", "headers", "value"]
    assert out["topic"] == "trove.operations" and out["partition"] == 2 and out["offset"] == 41
    assert out["key"] == "r-1"
    assert out["headers"] == {"avro.schema.name": "trovemeter.OperationCompleted"}
    assert out["timestamp"] == "2023-11-14T22:13:20.123000+00:00"
    value = out["value"]
    assert value["outcome"] == "failed" and value["resource_type"] == "instance"
    assert value["started_at"] == "2026-11-02T10:00:01.250000+00:00"
    assert datetime.fromisoformat(value["started_at"]) == T0
    # The printed line is plain JSON that any tool reads back.
    assert json.loads(dumps(out)) == out


def test_bytes_are_base64_and_nested_records_are_objects() -> None:
    letter = DeadLetter(reason=RejectReason.NOT_JSON, detail="body is not JSON",
                        body=b"\xff\x00not json", body_length=10, body_sha256="ab",
                        body_redacted=False, exchange="trove", routing_key="notifications.info",
                        received_at=T0, properties=AmqpProperties(content_type="text/plain",
                                                                  headers={"x": "1"}))
    out = render_record("trove.notifications.dlq", 0, 0, None, None, codec.encode(letter),
                        codec.decode)
    value = out["value"]
    assert out["key"] is None and out["headers"] == {}
    assert base64.b64decode(value["body"]) == b"\xff\x00not json"
    assert value["reason"] == "not_json"
    assert value["properties"]["content_type"] == "text/plain"
    assert value["properties"]["headers"] == {"x": "1"}


def test_union_of_string_and_list_keeps_its_shape() -> None:
    usage = UsageRecord(record_id="u", version=2, tenant_id="t", resource_type=ResourceType.INSTANCE,
                        resource_id="i", meter="instance.seconds", meter_type=MeterType.DELTA,
                        unit="s", quantity=3600.0, window_start=T0, window_end=T0,
                        derived_from=["m1", "m2"], flavor_id="2")
    value = render_record("trove.usage", 0, 7, b"u", [], codec.encode(usage), codec.decode)["value"]
    assert value["derived_from"] == ["m1", "m2"] and value["meter_type"] == "delta"
    assert value["quantity"] == 3600.0 and value["version"] == 2


def test_a_value_that_does_not_decode_is_shown_not_fatal() -> None:
    raw = b'{"from": "a foreign producer"}'
    out = render_record("trove.operations", 1, 5, b"\xffkey", [("h", None), ("n", b"\xfe")],
                        raw, codec.decode)
    assert out["value"] is None
    assert out["error"].startswith("CodecError: not Avro single-object encoding")
    assert base64.b64decode(out["raw_base64"]) == raw
    assert out["key"] == "\\xffkey"  # not UTF-8: escaped, never a crash
    assert out["headers"] == {"h": None, "n": "\\xfe"}
    json.loads(dumps(out))


def test_a_tombstone_has_a_null_value_and_no_error() -> None:
    out = render_record("trove.resources", 0, 9, b"res-1", None, None, codec.decode)
    assert out["value"] is None and "error" not in out


def test_to_jsonable_odds_and_ends() -> None:
    assert to_jsonable(ResourceType.BACKUP) == "backup"
    assert to_jsonable({1: (1, 2), "s": {3}}) == {"1": [1, 2], "s": [3]}
    assert to_jsonable(b"\x00") == "AA=="
    assert to_jsonable(None) is None and to_jsonable(1.5) == 1.5
    assert to_jsonable(object.__new__(type("Odd", (), {"__str__": lambda s: "odd"}))) == "odd"
