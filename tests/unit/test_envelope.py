"""Every captured wire fixture parses to the expected Notification (v1 and v2, non-ASCII)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trovemeter.envelope import decode_message, parse_body, parse_timestamp
from trovemeter.model import Notification, Phase, ResourceType

WIRE = Path(__file__).resolve().parents[1] / "fixtures" / "wire"
INPUTS = {row["name"]: row for row in map(json.loads, (WIRE / "inputs.jsonl").open())}
MAX = 1_048_576

TENANT = "5f1c4b5a7e2d4c0f9a3b6d8e1f2a3b4c"
USER = "9a8b7c6d5e4f40312a1b2c3d4e5f6a7b"
REQUEST = "req-3f9a1c2e-7b4d-4e8a-9c1f-2d3e4f5a6b7c"
INSTANCE = "0b1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
BACKUP = "4d5e6f7a-8b9c-4d0e-af1b-2c3d4e5f6a7b"
TROVE_ERROR = "trove.common.exception.TroveError"
NO_HOST = "Server creation failed: No valid host was found."

I, B = ResourceType.INSTANCE, ResourceType.BACKUP
# name: resource type, operation, phase, resource id, request id, exception class, error message
EXPECTED = {
    "dbaas.instance_create.start.v2": (I, "create", Phase.START, None, REQUEST, None, None),
    "dbaas.instance_create.end.v2": (I, "create", Phase.END, INSTANCE, REQUEST, None, None),
    "dbaas.instance_create.error.v2": (I, "create", Phase.ERROR, INSTANCE, REQUEST, TROVE_ERROR,
                                       NO_HOST),
    "dbaas.backup_create.start.v2": (B, "create", Phase.START, None, REQUEST, None, None),
    "dbaas.backup_create.end.v2": (B, "create", Phase.END, BACKUP, REQUEST, None, None),
    "trove.instance.exists.v2": (I, "exists", Phase.POINT, INSTANCE, None, None, None),
    "trove.instance.delete.v2": (I, "delete", Phase.POINT, INSTANCE, None, None, None),
    "dbaas.instance_create.start.v1": (I, "create", Phase.START, None, REQUEST, None, None),
    "priority-warn.v2": (I, "create", Phase.END, INSTANCE, REQUEST, None, None),
    "priority-error.v2": (I, "create", Phase.ERROR, INSTANCE, REQUEST, TROVE_ERROR, NO_HOST),
    "nonascii.v2": (I, "create", Phase.START, None, REQUEST, None, None),
    "trove.instance.exists.v1": (I, "exists", Phase.POINT, INSTANCE, None, None, None),
    "nonascii.v1": (I, "create", Phase.START, None, REQUEST, None, None),
}


def fixture(name: str) -> tuple[bytes, dict]:
    meta = json.loads((WIRE / f"{name}.meta.json").read_text())
    return (WIRE / f"{name}.body").read_bytes(), meta


def parse_fixture(name: str) -> Notification:
    body, meta = fixture(name)
    props = meta["properties"]
    return parse_body(body, max_bytes=MAX, content_type=props["content_type"],
                      content_encoding=props["content_encoding"])


def inner_message(body: bytes) -> dict:
    outer = json.loads(body)
    return json.loads(outer["oslo.message"]) if "oslo.message" in outer else outer


def test_every_fixture_has_an_expectation():
    assert sorted(p.name.removesuffix(".body") for p in WIRE.glob("*.body")) == sorted(EXPECTED)
    assert set(INPUTS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses_to_expected_model(name):
    resource_type, operation, phase, resource_id, request_id, exc_class, error = EXPECTED[name]
    source = INPUTS[name]
    body, _ = fixture(name)
    wire = inner_message(body)

    n = parse_fixture(name)

    assert n.message_id == wire["message_id"]
    assert n.event_type == source["event_type"]
    assert (n.resource_type, n.operation, n.phase) == (resource_type, operation, phase)
    assert n.resource_id == resource_id
    assert n.request_id == request_id
    assert n.tenant_id == TENANT
    assert n.user_id == USER
    assert n.publisher_id == source["publisher_id"]
    assert n.priority == source["priority"]
    assert n.occurred_at.tzinfo is UTC
    assert n.occurred_at == datetime.fromisoformat(wire["timestamp"]).replace(tzinfo=UTC)
    assert (n.exception_class, n.error_message) == (exc_class, error)
    assert n.payload == source["payload"]  # nothing Trove sent is lost


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_secret_survives(name):
    n = parse_fixture(name)
    text = json.dumps([n.payload, n.context])
    assert "auth_token" not in text
    assert "SECRET-TOKEN-123" not in text


def test_context_kept_without_prefix_and_secrets():
    n = parse_fixture("dbaas.instance_create.start.v2")
    assert n.context["roles"] == ["member", "reader"]
    assert n.context["request_id"] == REQUEST
    assert "auth_token" not in n.context
    assert not any(key.startswith("_context_") for key in n.context)


def test_dict_context_was_dropped_by_oslo_so_context_is_empty():
    assert parse_fixture("trove.instance.exists.v2").context == {}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_non_ascii_text_decoded(version):
    n = parse_fixture(f"nonascii.{version}")
    assert n.payload["name"] == "datenbank-ü-数据"
    assert n.payload["description"] == "Größe 2 GB – 测试"


def test_v1_and_v2_of_the_same_notification_agree():
    v1, v2 = parse_fixture("trove.instance.exists.v1"), parse_fixture("trove.instance.exists.v2")
    ignore = {"message_id", "occurred_at"}
    assert {k: getattr(v1, k) for k in Notification.__dataclass_fields__ if k not in ignore} == \
        {k: getattr(v2, k) for k in Notification.__dataclass_fields__ if k not in ignore}


def test_raw_utf8_body_is_accepted():
    # oslo escapes non-ASCII, but JSON allows raw UTF-8 and other producers send it.
    body, _ = fixture("nonascii.v1")
    raw = json.dumps(json.loads(body), ensure_ascii=False).encode("utf-8")
    assert parse_body(raw, max_bytes=MAX).payload["name"] == "datenbank-ü-数据"


def test_decode_message_exposes_the_validated_oslo_message():
    body, _ = fixture("dbaas.instance_create.end.v2")
    message = decode_message(body, max_bytes=MAX)
    assert message.event_type == "dbaas.instance_create.end"
    assert message.context["project_id"] == TENANT


@pytest.mark.parametrize("text, expected", [
    ("2026-11-25 20:33:26.679744", datetime(2026, 11, 25, 20, 33, 26, 679744, tzinfo=UTC)),
    ("2026-11-25 20:33:26", datetime(2026, 11, 25, 20, 33, 26, tzinfo=UTC)),  # .000000 omitted
    ("2026-11-25T21:33:26+01:00", datetime(2026, 11, 25, 20, 33, 26, tzinfo=UTC)),
    ("2026-11-25T20:33:26Z", datetime(2026, 11, 25, 20, 33, 26, tzinfo=UTC)),
])
def test_timestamps_become_aware_utc(text, expected):
    parsed = parse_timestamp(text)
    assert parsed == expected and parsed.tzinfo is UTC


@given(st.datetimes(), st.sampled_from([" ", "T"]),
       st.sampled_from(["auto", "hours", "minutes", "seconds", "microseconds"]))
def test_naive_timestamps_are_the_same_time_in_utc(moment, sep, timespec):
    # parse_timestamp attaches UTC without datetime.replace (slow): same fields, fold and zone.
    text = moment.isoformat(sep, timespec)
    naive = datetime.fromisoformat(text)
    parsed = parse_timestamp(text)
    assert (parsed, parsed.fold, parsed.tzinfo) == (naive.replace(tzinfo=UTC), naive.fold, UTC)


def test_kafka_key_is_resource_id_else_request_id():
    assert parse_fixture("dbaas.instance_create.end.v2").kafka_key == INSTANCE
    assert parse_fixture("dbaas.instance_create.start.v2").kafka_key == REQUEST
