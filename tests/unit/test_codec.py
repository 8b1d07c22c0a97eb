"""Codec: every registered model round-trips, decodes with Apache avro and vice versa, carries a
correct single-object header, and agrees with its schema; every .avsc has a model."""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import avro.io
import avro.schema
import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.avro_strategies import crc64_avro, records
from trovemeter import codec as codec_module
from trovemeter.codec import (
    AVRO_DIR,
    SCHEMA_NAME_HEADER,
    SINGLE_OBJECT_MAGIC,
    Codec,
    CodecError,
    SchemaMismatch,
    decode,
    default_codec,
    encode,
    header_for,
    serde_for,
    usage_encoder,
)
from trovemeter.model import (
    AmqpProperties,
    DeadLetter,
    Notification,
    Phase,
    RejectReason,
    MeterType,
    ResourceType,
    UsageRecord,
)
from trovemeter.schema_agreement import model_problems
from trovemeter.schemas_command import apache_canonical_form
from trovemeter.settings import CommonSettings

ENTRIES = default_codec().entries()
NAMES = [entry.full_name for entry in ENTRIES]
EXAMPLES = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def entry_named(name: str):
    return default_codec().entry_named(name)


def apache_schema(entry) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(entry.schema))


@pytest.mark.parametrize("name", NAMES)
@EXAMPLES
@given(data=st.data())
def test_round_trip(name, data):
    entry = entry_named(name)
    record = data.draw(records(entry.model))
    encoded = encode(record)
    assert decode(encoded) == record


@pytest.mark.parametrize("name", NAMES)
@EXAMPLES
@given(data=st.data())
def test_fastavro_written_bytes_decode_with_apache_avro(name, data):
    entry = entry_named(name)
    record = data.draw(records(entry.model))
    encoded = encode(record)
    # The fingerprint in the header is the one Apache avro computes for the .avsc file.
    expected = crc64_avro(apache_canonical_form(entry.schema).encode()).to_bytes(8, "little")
    assert encoded[:2] == b"\xc3\x01" and encoded[2:10] == expected
    reader = avro.io.DatumReader(apache_schema(entry))
    datum = reader.read(avro.io.BinaryDecoder(io.BytesIO(encoded[10:])))
    assert datum == entry.to_avro(record)
    assert entry.from_avro(datum) == record


@pytest.mark.parametrize("name", NAMES)
@EXAMPLES
@given(data=st.data())
def test_apache_avro_written_bytes_decode_with_trovemeter(name, data):
    entry = entry_named(name)
    record = data.draw(records(entry.model))
    schema = apache_schema(entry)
    body = io.BytesIO()
    avro.io.DatumWriter(schema).write(entry.to_avro(record), avro.io.BinaryEncoder(body))
    fingerprint = crc64_avro(apache_canonical_form(entry.schema).encode()).to_bytes(8, "little")
    assert decode(b"\xc3\x01" + fingerprint + body.getvalue()) == record


NOTIFICATION = Notification("m", "dbaas.x.start", ResourceType.INSTANCE, "x", Phase.START, "p",
                            "INFO", datetime(2026, 1, 1, tzinfo=UTC), request_id="r",
                            payload={"name": "ü-数据"}, context={"roles": ["a"]})
DIRECT = [entry.full_name for entry in ENTRIES if entry.write_fields is not None]


def fastavro_bytes(entry, record) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, entry.parsed, entry.to_avro(record))
    return entry.header + body.getvalue()


def test_notifications_take_the_direct_writer():
    assert "trovemeter.Notification" in DIRECT


@pytest.mark.parametrize("name", DIRECT)
@EXAMPLES
@given(data=st.data())
def test_the_direct_writer_writes_fastavros_bytes(name, data):
    entry = entry_named(name)
    record = data.draw(records(entry.model))
    assert encode(record) == fastavro_bytes(entry, record)


@pytest.mark.parametrize("field, value", [
    ("message_id", 5), ("request_id", b"bytes"), ("occurred_at", 2**70), ("message_id", "\ud800"),
    ("phase", "start"), ("payload", {"s": "\ud800"}),
])
def test_the_direct_writer_refuses_what_fastavro_refuses(field, value):
    record = dataclasses.replace(NOTIFICATION, **{field: value})
    entry = entry_named("trovemeter.Notification")
    with pytest.raises(CodecError):
        encode(record)
    with pytest.raises(Exception):  # noqa: B017 - fastavro raises ValueError, TypeError, ...
        fastavro_bytes(entry, record)


# A few objects of each kind, shared by the records drawn below: the usage writer reuses a
# segment's bytes while the same objects come again, and must notice any of them changing.
# The last one: a string equal to the first, another object.
_SHARED_TEXTS = ["t-1", "t-2", "r-1", "instance.seconds", "s", "GB*s", "".join(["t-", "1"])]
_SHARED_TIMES = [datetime(2026, 1, 1, h, tzinfo=UTC) for h in range(3)]


@st.composite
def usage_records_sharing_objects(draw: st.DrawFn) -> UsageRecord:
    text = st.one_of(st.sampled_from(_SHARED_TEXTS), st.text(max_size=8))
    return UsageRecord(
        draw(text), draw(st.integers(1, 3)), draw(text), draw(st.sampled_from(list(ResourceType))),
        draw(text), draw(text), draw(st.sampled_from(list(MeterType))), draw(text),
        draw(st.floats(allow_nan=False)), draw(st.sampled_from(_SHARED_TIMES)),
        draw(st.sampled_from(_SHARED_TIMES)), draw(st.one_of(text, st.lists(text, max_size=2))),
        draw(st.one_of(st.none(), text)), draw(st.one_of(st.none(), text)),
        draw(st.one_of(st.none(), text)), draw(st.one_of(st.none(), st.floats(allow_nan=False))),
        draw(st.one_of(st.just({}), st.dictionaries(text, text, max_size=2))))


@settings(max_examples=60, deadline=None)
@given(st.lists(usage_records_sharing_objects(), min_size=1, max_size=12))
def test_usage_records_sharing_objects_take_fastavros_bytes(records):
    entry = entry_named("trovemeter.UsageRecord")
    fields = usage_encoder()
    for record in records:
        expected = fastavro_bytes(entry, record)
        assert encode(record) == expected
        values = entry.get_fields(record)
        if not record.resource_metadata:
            assert fields(values[:16]) == expected  # resource_metadata left out: empty


def test_the_usage_writer_refuses_what_the_generic_writer_refuses():
    record = UsageRecord("id", 1, "t", ResourceType.INSTANCE, "r", "m", MeterType.DELTA, "s",
                         1.0, _SHARED_TIMES[0], _SHARED_TIMES[1], ["a"])
    encode(record)  # its segments are cached now
    for bad in (dataclasses.replace(record, meter_type="delta"),
                dataclasses.replace(record, resource_type="instance"),
                dataclasses.replace(record, tenant_id=None)):
        with pytest.raises(CodecError):
            encode(bad)
    with pytest.raises(CodecError):
        usage_encoder()(default_codec().entry_for(UsageRecord).get_fields(record)[:15])


READ_DIRECT = [entry.full_name for entry in ENTRIES if entry.read_record is not None]


def fastavro_record(entry, data: bytes):
    """The record as fastavro's reader and the datum conversion give it."""
    return entry.from_avro(fastavro.schemaless_reader(io.BytesIO(data[10:]), entry.parsed, None))


def test_notifications_take_the_direct_reader():
    assert "trovemeter.Notification" in READ_DIRECT


@pytest.mark.parametrize("name", READ_DIRECT)
@EXAMPLES
@given(data=st.data())
def test_the_direct_reader_reads_what_fastavro_reads(name, data):
    entry = entry_named(name)
    record = data.draw(records(entry.model))
    encoded = fastavro_bytes(entry, record)
    decoded = decode(encoded)
    assert decoded == record == fastavro_record(entry, encoded)
    for field in dataclasses.fields(entry.model):  # same types too (enum members, aware times)
        mine, theirs = getattr(decoded, field.name), getattr(record, field.name)
        assert type(mine) is type(theirs)
        if isinstance(mine, datetime):
            assert mine.utcoffset() == theirs.utcoffset()


@pytest.mark.parametrize("name", READ_DIRECT)
@EXAMPLES
@given(data=st.data())
def test_the_direct_reader_refuses_corrupt_bodies_with_codec_errors(name, data):
    entry = entry_named(name)
    encoded = encode(data.draw(records(entry.model)))
    cut = data.draw(st.integers(10, len(encoded) - 1))
    noise = data.draw(st.binary(max_size=40))
    for body in (encoded[:cut], encoded[:cut] + noise):
        try:
            decoded = decode(body)
        except CodecError:
            continue  # never another exception: the agent skips the record and counts it
        assert decoded == fastavro_record(entry, body)


def test_the_direct_reader_reads_memoryviews_and_ignores_trailing_bytes():
    encoded = encode(NOTIFICATION)
    assert decode(memoryview(encoded + b"\x00junk")) == NOTIFICATION


def test_the_fields_encoder_refuses_a_wrong_number_of_values():
    encode_fields = codec_module.default_codec().fields_encoder(Notification)
    values = dataclasses.astuple(NOTIFICATION)
    assert encode_fields(values) == encode(NOTIFICATION)
    for wrong in (values[:-1], (*values, "extra")):
        with pytest.raises(CodecError, match="values for"):
            encode_fields(wrong)


@pytest.mark.parametrize("name", NAMES)
def test_single_object_header_is_marker_plus_crc64_of_canonical_form(name):
    entry = entry_named(name)
    fingerprint = crc64_avro(entry.canonical_form.encode()).to_bytes(8, "little")
    assert entry.fingerprint == fingerprint
    assert entry.header == SINGLE_OBJECT_MAGIC + fingerprint == b"\xc3\x01" + fingerprint
    # Parsing Canonical Form drops docs, defaults and logical types, and uses full names.
    assert '"doc"' not in entry.canonical_form and "logicalType" not in entry.canonical_form
    assert entry.canonical_form.startswith('{"name":"' + entry.full_name + '","type":"record"')


def test_crc64_matches_the_specification_example_value():
    # Fingerprint of the canonical form "null"; a well-known value from the Avro test suites.
    assert crc64_avro(b'"null"') == 0x63DD24E7CC258F8A


@pytest.mark.parametrize("name", NAMES)
def test_model_agrees_with_schema(name):
    entry = entry_named(name)
    assert model_problems(entry.model, entry.schema) == []


def test_every_avsc_in_avro_dir_has_a_registered_model():
    registered = {entry.path.name for entry in ENTRIES}
    files = {path.name for path in AVRO_DIR.glob("*.avsc")}
    assert files, f"no schemas found in {AVRO_DIR}"
    assert files - registered == set(), "schemas without a model in trovemeter.codec.MODELS"
    assert len(registered) == len(ENTRIES) == len(codec_module.MODELS)


def test_header_names_the_schema():
    record = DeadLetter.from_delivery(b"x", RejectReason.NOT_JSON, "body is not JSON",
                                      exchange="trove", routing_key="notifications.info")
    assert header_for(record) == (SCHEMA_NAME_HEADER, b"trovemeter.DeadLetter")
    assert default_codec().headers_for(record) == [header_for(record)]


def test_the_fixture_payload_travels_as_json_text():
    record = Notification("m", "dbaas.x.start", ResourceType.INSTANCE, "x", Phase.START, "p",
                          "INFO", datetime(2026, 1, 1, tzinfo=UTC), payload={"name": "ü-数据"})
    datum = entry_named("trovemeter.Notification").to_avro(record)
    assert json.loads(datum["payload"]) == {"name": "ü-数据"} and datum["context"] == "{}"


@pytest.mark.parametrize("payload", [{1: "one", "b": {2.5: None}}, {"n": 2**70, "s": "x"}])
def test_json_texts_the_fast_path_cannot_write_take_fastavros_bytes(payload):
    record = dataclasses.replace(NOTIFICATION, payload=payload)
    assert encode(record) == fastavro_bytes(entry_named("trovemeter.Notification"), record)


def test_payload_with_integers_beyond_64_bits_still_encodes():
    record = Notification("m", "e", ResourceType.UNKNOWN, "e", Phase.POINT, "p", "INFO",
                          datetime(2026, 1, 1, tzinfo=UTC), payload={"n": 2**70})
    assert decode(encode(record)).payload == {"n": 2**70}


@pytest.mark.parametrize("data, words", [
    (b"", "no C3 01 marker"),
    (b"\x00\x00\x00\x00\x01" + b"\x00" * 10, "no C3 01 marker"),
    (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "no schema registered with fingerprint"),
])
def test_decode_rejects_foreign_bytes(data, words):
    with pytest.raises(CodecError, match=words):
        decode(data)


def test_decode_rejects_a_truncated_body():
    record = DeadLetter.from_delivery(b"x" * 50, RejectReason.NOT_JSON, "d", exchange="e",
                                      routing_key="r")
    with pytest.raises(CodecError, match="corrupt trovemeter.DeadLetter"):
        decode(encode(record)[:30])


def test_encode_rejects_unregistered_records():
    with pytest.raises(CodecError, match="no schema registered"):
        encode(object())


def test_dead_letter_masks_secrets_and_truncates():
    body = b'{"_context_auth_token": "live-token", "payload": ' + b"x" * 100
    letter = DeadLetter.from_delivery(body, RejectReason.TOO_LARGE, "too big", exchange="trove",
                                      routing_key="notifications.info", max_body_bytes=60,
                                      properties=AmqpProperties(content_type="application/json",
                                                                headers={"k": "v"}))
    assert b"live-token" not in letter.body and letter.body_redacted
    assert letter.body_length == len(body) and len(letter.body) <= 60
    assert decode(encode(letter)) == letter


def test_amqp_properties_from_a_pika_like_object():
    class Props:
        content_type = "application/json"
        content_encoding = "utf-8"
        headers = {"x-death": [{"count": 1}], "b": b"raw"}
        delivery_mode = 2
        priority = 0

    props = AmqpProperties.from_object(Props())
    assert props.headers == {"x-death": '[{"count": 1}]', "b": "raw"}
    assert (props.delivery_mode, props.message_id) == (2, None)


# --- registering a new pair, and what a mismatch looks like -----------------------------------

SCHEMA = {
    "type": "record", "name": "Probe", "namespace": "test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "attrs", "type": {"type": "map", "values": "string"}, "default": {}},
    ],
}


@dataclass(frozen=True)
class Probe:
    id: str
    at: datetime
    note: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)


def test_register_a_new_pair(tmp_path):
    path = tmp_path / "probe.avsc"
    path.write_text(json.dumps(SCHEMA))
    codec = Codec()
    entry = codec.register(Probe, path)
    record = Probe("p-1", datetime(2026, 1, 1, tzinfo=UTC), attrs={"a": "b"})
    assert entry.full_name == "test.Probe"
    assert codec.decode(codec.encode(record)) == record
    with pytest.raises(CodecError, match="already registered"):
        codec.register(Probe, path)


@dataclass(frozen=True)
class WrongProbe:
    id: int
    at: str
    note: str | None
    attrs: dict[str, int] = field(default_factory=dict)


def test_mismatches_are_named(tmp_path):
    problems = " | ".join(model_problems(WrongProbe, {**SCHEMA, "name": "WrongProbe"}))
    assert "WrongProbe.id: model int needs long or int, schema has 'string'" in problems
    assert "WrongProbe.at: model str needs string" in problems
    assert "WrongProbe.note: optional field needs default None in the model" in problems
    assert "WrongProbe.attrs: model int needs long or int, schema has 'string'" in problems
    path = tmp_path / "probe.avsc"
    path.write_text(json.dumps(SCHEMA))
    with pytest.raises(SchemaMismatch, match="record is named 'Probe'"):
        Codec().register(WrongProbe, path)


def test_field_order_and_enum_symbols_must_agree():
    schema = json.loads((AVRO_DIR / "notification.avsc").read_text())
    schema["fields"][2]["type"]["symbols"] = ["instance", "cluster"]
    assert any("enum ResourceType" in p for p in model_problems(Notification, schema))
    schema["fields"].reverse()
    assert any("fields differ" in p for p in model_problems(Notification, schema))


def test_serde_for_settings_picks_the_wire_format():
    assert serde_for(CommonSettings()) is default_codec()
    registry = serde_for(CommonSettings(schema_registry_url="mock://serde-for"))
    assert type(registry).__name__ == "ConfluentCodec"


# Around each varint length the direct writer special-cases (1, 2 and 8 bytes) and beyond.
_LONG_BOUNDS = [sign * bound + delta for bound in (0, 1 << 6, 1 << 13, 1 << 48, 1 << 55, 1 << 62)
                for sign in (1, -1) for delta in (-1, 0, 1)]


@given(st.one_of(st.sampled_from(_LONG_BOUNDS + [-(1 << 63), (1 << 63) - 1]),
                 st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)))
def test_long_varints_match_fastavro(n: int) -> None:
    # The direct writer writes the common varint lengths without its loop: same bytes.
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", n)
    assert codec_module._long_bytes(n) == out.getvalue()
