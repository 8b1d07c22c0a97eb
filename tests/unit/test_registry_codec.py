"""Confluent wire format through confluent-kafka's serializers, on its in-memory mock registry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trovemeter.codec import CodecError, SCHEMA_NAME_HEADER
from trovemeter.model import DeadLetter, Notification, Phase, RejectReason, ResourceType
from trovemeter.registry_codec import ConfluentCodec

NOTIFICATION = Notification(
    "m-1", "dbaas.instance_create.end", ResourceType.INSTANCE, "create", Phase.END,
    "taskmanager.h1", "INFO", datetime(2026, 11, 25, 20, 33, 26, 677900, tzinfo=UTC),
    request_id="req-1", resource_id="i-1", tenant_id="t-1", payload={"name": "datenbank-ü-数据"},
    context={"roles": ["member"]},
)


@pytest.fixture
def codec(request):
    return ConfluentCodec(f"mock://{request.node.name}")


def test_wire_format_is_magic_byte_and_schema_id(codec):
    data = codec.encode(NOTIFICATION, "trove.notifications")
    registered = codec.client.get_latest_version("trove.notifications-value")
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == registered.schema_id
    assert codec.decode(data, "trove.notifications") == NOTIFICATION


def test_each_record_type_gets_its_own_subject_and_decodes_to_its_model(codec):
    letter = DeadLetter.from_delivery(b"{", RejectReason.NOT_JSON, "body is not JSON",
                                      exchange="trove", routing_key="notifications.info")
    first = codec.encode(NOTIFICATION, "trove.notifications")
    second = codec.encode(letter, "trove.notifications.dlq")
    assert first[1:5] != second[1:5]
    # A fresh codec on the same registry finds the model from the writer schema's name.
    reader = ConfluentCodec(client=codec.client)
    assert reader.decode(second) == letter and reader.decode(first) == NOTIFICATION


def test_headers_name_the_schema(codec):
    assert codec.headers_for(NOTIFICATION) == [(SCHEMA_NAME_HEADER, b"trovemeter.Notification")]


def test_topic_is_required_to_encode(codec):
    with pytest.raises(ValueError, match="needs the topic"):
        codec.encode(NOTIFICATION)


def test_single_object_bytes_are_not_confluent_bytes(codec):
    with pytest.raises(CodecError, match="not the Confluent wire format"):
        codec.decode(b"\xc3\x01" + b"\x00" * 12)
