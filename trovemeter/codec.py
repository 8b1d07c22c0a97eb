"""Records <-> Avro bytes. Each model class is registered with its schema file in ``avro/``.

Default wire format: Avro single-object encoding (``C3 01`` + the schema's 8-byte little-endian
CRC-64-AVRO fingerprint + the Avro binary body), so any Avro library decodes a value with the
``.avsc`` file alone; ``decode`` finds the schema from the fingerprint. Producers also send the
schema's full name in the ``SCHEMA_NAME_HEADER`` Kafka header. With a Schema Registry configured,
``serde_for`` returns the Confluent wire format instead (``registry_codec``).

The dataclass <-> Avro datum conversion is designed once, from the model's type hints (see
``schema_agreement`` for the correspondence): enums travel as their values, datetimes as
timestamp-micros, ``dict[str, Any]`` as JSON text, nested dataclasses as records.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import io
import json
import operator
import struct
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import fastavro
import orjson
from fastavro.logical_writers import LOGICAL_WRITERS
from fastavro.schema import fingerprint, to_parsing_canonical_form

from trovemeter.model import (
    DeadLetter,
    Notification,
    OperationCompleted,
    OperationError,
    ResourceState,
    UsageDiscrepancy,
    UsageRecord,
)
from trovemeter.schema_agreement import is_json_object, model_problems, non_null

if TYPE_CHECKING:
    from trovemeter.settings import CommonSettings

# The package is installed editable; the schemas live next to it, in the repository's avro/.
AVRO_DIR = Path(__file__).resolve().parent.parent / "avro"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SCHEMA_NAME_HEADER = "avro.schema.name"

# Every record that reaches Kafka: model class and its schema file in avro/.
MODELS: tuple[tuple[type, str], ...] = (
    (Notification, "notification.avsc"),
    (DeadLetter, "dead_letter.avsc"),
    (UsageRecord, "usage.avsc"),
    (UsageDiscrepancy, "usage_discrepancy.avsc"),
    (OperationCompleted, "operation.avsc"),
    (OperationError, "operation_error.avsc"),
    (ResourceState, "resource_state.avsc"),
)


class CodecError(ValueError):
    """A record or a value that this codec cannot encode or decode."""


class SchemaMismatch(CodecError):
    """A model and its schema disagree; raised at registration, so at start-up."""


class RecordSerde(Protocol):
    """What producers and consumers call, whichever the wire format."""

    def encode(self, record: Any, topic: str | None = None) -> bytes: ...

    def decode(self, data: bytes, topic: str | None = None) -> Any: ...

    def headers_for(self, record: Any) -> list[tuple[str, bytes]]: ...

    def fields_encoder(self, model: type) -> Callable[[Sequence[Any]], bytes] | None:
        """``encode`` for a record given as its field values in order, or None when this
        wire format needs the record itself."""
        ...


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    model: type
    path: Path
    schema: dict[str, Any]  # the .avsc as written
    parsed: dict[str, Any]  # fastavro's parsed form, reused for every record
    full_name: str
    canonical_form: str  # Avro Parsing Canonical Form
    fingerprint: bytes  # CRC-64-AVRO, little-endian, as in the single-object header
    header: bytes  # C3 01 + fingerprint
    to_avro: Callable[[Any], dict[str, Any]]
    from_avro: Callable[[dict[str, Any]], Any]
    # The Avro body from the record's field values in schema order, without fastavro (see
    # _direct_writer); None for records with fields it does not cover.
    write_fields: Callable[[Sequence[Any]], bytes] | None = None
    get_fields: Callable[[Any], Sequence[Any]] | None = None
    # The record from the Avro body at an offset of the bytes given, without fastavro (see
    # _direct_reader); None for records with fields it does not cover.
    read_record: Callable[[bytes, int], Any] | None = None

    @property
    def kafka_header(self) -> tuple[str, bytes]:
        return (SCHEMA_NAME_HEADER, self.full_name.encode())


class Codec:
    """Registry of (model, schema) pairs; encodes and decodes single-object Avro."""

    def __init__(self) -> None:
        self._by_model: dict[type, RegisteredSchema] = {}
        self._by_fingerprint: dict[bytes, RegisteredSchema] = {}
        self._by_name: dict[str, RegisteredSchema] = {}

    def register(self, model: type, avsc: str | Path) -> RegisteredSchema:
        """Register ``model`` with its schema (a file name in ``avro/`` or a path). Raises
        ``SchemaMismatch`` when they disagree, ``CodecError`` on a duplicate."""
        path = Path(avsc) if Path(avsc).is_absolute() else AVRO_DIR / avsc
        schema = json.loads(path.read_text(encoding="utf-8"))
        problems = model_problems(model, schema)
        if problems:
            raise SchemaMismatch(f"{path.name} vs {model.__qualname__}: " + "; ".join(problems))
        parsed = fastavro.parse_schema(schema)
        canonical = to_parsing_canonical_form(parsed)
        digest = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        full_name = parsed["name"]
        for key, table, what in ((model, self._by_model, "model"),
                                 (digest, self._by_fingerprint, "fingerprint"),
                                 (full_name, self._by_name, "schema name")):
            if key in table:
                raise CodecError(f"{path.name}: {what} already registered by "
                                 f"{table[key].path.name}")
        hints = typing.get_type_hints(model)
        to_avro, from_avro = _converters(model, hints)
        write_fields = _direct_writer(parsed, hints)
        get_fields = _field_getter(model) if write_fields is not None else None
        entry = RegisteredSchema(model, path, schema, parsed, full_name, canonical, digest,
                                 SINGLE_OBJECT_MAGIC + digest, to_avro, from_avro,
                                 write_fields, get_fields, _direct_reader(parsed, hints, model))
        self._by_model[model] = entry
        self._by_fingerprint[digest] = entry
        self._by_name[full_name] = entry
        return entry

    def entries(self) -> list[RegisteredSchema]:
        return list(self._by_model.values())

    def entry_for(self, model_or_record: Any) -> RegisteredSchema:
        model = model_or_record if isinstance(model_or_record, type) else type(model_or_record)
        try:
            return self._by_model[model]
        except KeyError:
            raise CodecError(f"no schema registered for {model.__qualname__}") from None

    def entry_named(self, full_name: str) -> RegisteredSchema:
        try:
            return self._by_name[full_name]
        except KeyError:
            raise CodecError(f"no model registered for schema {full_name}") from None

    def encode(self, record: Any, topic: str | None = None) -> bytes:
        """Single-object encoding of ``record``. ``topic`` is unused (``RecordSerde``)."""
        entry = self.entry_for(record)
        if entry.write_fields is not None:
            return entry.header + entry.write_fields(entry.get_fields(record))  # type: ignore[misc]
        buffer = io.BytesIO()
        buffer.write(entry.header)
        try:
            fastavro.schemaless_writer(buffer, entry.parsed, entry.to_avro(record))
        except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
            raise CodecError(f"cannot encode {entry.full_name}: {exc}") from exc
        return buffer.getvalue()

    def decode(self, data: bytes, topic: str | None = None) -> Any:
        """The record in single-object encoded ``data``; the schema comes from its fingerprint."""
        if len(data) < 10 or data[:2] != SINGLE_OBJECT_MAGIC:
            raise CodecError("not Avro single-object encoding (no C3 01 marker)")
        entry = self._by_fingerprint.get(bytes(data[2:10]))
        if entry is None:
            raise CodecError(f"no schema registered with fingerprint {bytes(data[2:10]).hex()}")
        if entry.read_record is not None:
            return entry.read_record(data if type(data) is bytes else bytes(data), 10)
        buffer = io.BytesIO(data)
        buffer.seek(10)
        try:
            datum = fastavro.schemaless_reader(buffer, entry.parsed, None)
        except (ValueError, TypeError, EOFError, IndexError, UnicodeError) as exc:
            raise CodecError(f"corrupt {entry.full_name} body: {exc}") from exc
        return entry.from_avro(datum)  # type: ignore[arg-type]

    def headers_for(self, record: Any) -> list[tuple[str, bytes]]:
        return [self.entry_for(record).kafka_header]

    def fields_encoder(self, model: type) -> Callable[[Sequence[Any]], bytes] | None:
        entry = self.entry_for(model)
        write_fields, header = entry.write_fields, entry.header
        if write_fields is None:
            return None
        return lambda values: header + write_fields(values)


@functools.cache
def default_codec() -> Codec:
    """The codec with every model in ``MODELS`` registered."""
    codec = Codec()
    for model, avsc in MODELS:
        codec.register(model, avsc)
    return codec


def encode(record: Any) -> bytes:
    return default_codec().encode(record)


def decode(data: bytes) -> Any:
    return default_codec().decode(data)


def header_for(record: Any) -> tuple[str, bytes]:
    """The Kafka header naming ``record``'s schema: (``SCHEMA_NAME_HEADER``, full name)."""
    return default_codec().entry_for(record).kafka_header


def serde_for(settings: CommonSettings) -> RecordSerde:
    """The wire format the settings ask for: Confluent's (schema id) when a Schema Registry URL
    is set, else single-object encoding."""
    if settings.schema_registry_url:
        from trovemeter.registry_codec import ConfluentCodec  # imports confluent_kafka

        return ConfluentCodec(settings.schema_registry_url)
    return default_codec()


# --- dataclass <-> Avro datum -------------------------------------------------------------

Convert = Callable[[Any], Any]


def _converters(model: type, hints: dict[str, Any]) -> tuple[Convert, Convert]:
    """(to_avro, from_avro) for ``model``: only fields that need a conversion pay for one."""
    names = tuple(f.name for f in dataclasses.fields(model))
    outbound: list[tuple[str, Convert]] = []
    inbound: list[tuple[str, Convert]] = []
    for name in names:
        pair = _field_converters(hints[name])
        if pair is not None:
            outbound.append((name, pair[0]))
            inbound.append((name, pair[1]))
    get_all = operator.attrgetter(*names)

    def to_avro(record: Any) -> dict[str, Any]:
        values = get_all(record)
        datum = dict(zip(names, values if len(names) > 1 else (values,), strict=True))
        for name, convert in outbound:
            datum[name] = convert(datum[name])
        return datum

    def from_avro(datum: dict[str, Any]) -> Any:
        for name, convert in inbound:
            datum[name] = convert(datum[name])
        return model(**datum)

    return to_avro, from_avro


def _field_converters(hint: Any) -> tuple[Convert, Convert] | None:
    inner = non_null(hint)
    pair = _value_converters(inner)
    if pair is None or inner is hint:
        return pair
    out, back = pair  # optional: None passes through untouched
    return (lambda v: None if v is None else out(v)), (lambda v: None if v is None else back(v))


def _value_converters(hint: Any) -> tuple[Convert, Convert] | None:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return operator.attrgetter("value"), hint
    if is_json_object(hint):
        return _json_text, orjson.loads
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _converters(hint, typing.get_type_hints(hint))
    return None  # str, numbers, bytes, datetime (fastavro's logical types), maps, lists


def _json_text(value: dict[str, Any]) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # integers beyond 64 bits, which orjson does not write
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


# --- a direct writer for flat records ------------------------------------------------------
# fastavro's schemaless_writer costs ~9 us per Notification (the dict built for it ~3 us more),
# over a third of the shovel's parse + encode; these closures write the same bytes in ~3 us.
# Only flat records of strings, optional strings, enums, timestamp-micros and JSON texts are
# covered; anything else keeps fastavro. tests/unit/test_codec.py compares both writers' bytes.

_FieldWriter = Callable[[Any], bytes]
# Zigzag varints of 0..63 (string lengths, enum and union indexes): one byte each.
_SMALL_LONGS = tuple(bytes((2 * n,)) for n in range(64))
_STRING_IN_UNION = b"\x02"  # index 1 of ["null", "string"]
_NULL_IN_UNION = b"\x00"
# The union index and the length of an optional string of 0..63 bytes, as one prefix.
_SMALL_OPTIONAL_PREFIXES = tuple(_STRING_IN_UNION + length for length in _SMALL_LONGS)
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _long_bytes(n: int) -> bytes:
    """Avro's zigzag varint of a long."""
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise OverflowError(f"{n} does not fit an Avro long")
    n = (n << 1) ^ (n >> 63)
    # The two lengths most records write in one expression each (a third of the loop's cost):
    # two bytes for string lengths 64..8191, eight for timestamps in micros (years 1987..6535).
    if n < 0x4000:
        return bytes((n,)) if n < 0x80 else bytes((n & 0x7F | 0x80, n >> 7))
    if 1 << 49 <= n < 1 << 56:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80,
                      n >> 21 & 0x7F | 0x80, n >> 28 & 0x7F | 0x80, n >> 35 & 0x7F | 0x80,
                      n >> 42 & 0x7F | 0x80, n >> 49))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _utf8(data: bytes) -> bytes:
    size = len(data)
    return (_SMALL_LONGS[size] if size < 64 else _long_bytes(size)) + data


# The string writers repeat _utf8's lines rather than call it: they run ~14 times a record.
def _write_string(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} is not a string")
    data = value.encode()
    size = len(data)
    return (_SMALL_LONGS[size] if size < 64 else _long_bytes(size)) + data


def _write_optional_string(value: Any) -> bytes:
    if value is None:
        return _NULL_IN_UNION
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} is neither null nor a string")
    data = value.encode()
    size = len(data)
    if size < 64:
        return _SMALL_OPTIONAL_PREFIXES[size] + data
    return _STRING_IN_UNION + _long_bytes(size) + data


def _write_json_text(value: Any) -> bytes:
    try:
        # Without OPT_NON_STR_KEYS (a third slower): parsed JSON only has string keys.
        data = orjson.dumps(value)
    except TypeError:  # other keys, or integers beyond 64 bits: _json_text's same bytes
        data = _json_text(value).encode()
    return _utf8(data)


def _enum_writer(model_enum: type[enum.Enum], symbols: list[str]) -> _FieldWriter:
    indexes = {member: _long_bytes(symbols.index(member.value))
               for member in model_enum if member.value in symbols}

    def write(value: Any) -> bytes:
        # Members only, as the converter (.value) takes them: a str enum's plain value would
        # find its member in the table too.
        index = indexes.get(value) if type(value) is model_enum else None
        if index is None:
            raise ValueError(f"{value!r} is not a {model_enum.__name__} in the schema")
        return index

    return write


def _timestamp_micros_writer(field_schema: dict[str, Any]) -> _FieldWriter:
    prepare = LOGICAL_WRITERS["long-timestamp-micros"]  # fastavro's conversion
    # The last aware datetime written and its bytes: usage records of one hour share their
    # window's datetime objects (~1 us of the ~5 a usage record takes); an identity test
    # costs a miss next to nothing.
    last: list[Any] = [object(), b""]

    def write(value: Any) -> bytes:
        if value is last[0]:
            return last[1]
        if type(value) is datetime and value.tzinfo is not None:
            written = _long_bytes((value - _EPOCH) // _MICROSECOND)  # what prepare() computes
            last[0], last[1] = value, written
            return written
        return _long_bytes(prepare(value, field_schema))  # naive (local time) or a number

    return write


def _write_long(value: Any) -> bytes:
    if not isinstance(value, int):  # a bool passes, as in fastavro
        raise TypeError(f"{type(value).__name__} is not an int")
    return _SMALL_LONGS[value] if 0 <= value < 64 else _long_bytes(value)


_pack_double = struct.Struct("<d").pack


def _write_double(value: Any) -> bytes:
    if not isinstance(value, float | int):
        raise TypeError(f"{type(value).__name__} is not a number")
    return _pack_double(value)


def _write_optional_double(value: Any) -> bytes:
    return _NULL_IN_UNION if value is None else _STRING_IN_UNION + _write_double(value)


def _write_strings(value: Any) -> bytes:
    """An array of strings: one block of all items, then the empty block (fastavro's form)."""
    if not isinstance(value, list):
        raise TypeError(f"{type(value).__name__} is not a list")
    if not value:
        return b"\x00"
    return _long_bytes(len(value)) + b"".join([_write_string(item) for item in value]) + b"\x00"


def _write_string_or_strings(value: Any) -> bytes:
    """["string", {"array": "string"}]: a string is branch 0, a list branch 1."""
    if isinstance(value, str):
        return b"\x00" + _utf8(value.encode())
    return b"\x02" + _write_strings(value)


def _write_string_map(value: Any) -> bytes:
    """A map of strings: one block of all entries, then the empty block (fastavro's form)."""
    if not isinstance(value, dict):
        raise TypeError(f"{type(value).__name__} is not a dict")
    if not value:
        return b"\x00"
    return _long_bytes(len(value)) + b"".join(
        [_write_string(k) + _write_string(v) for k, v in value.items()]) + b"\x00"


def _field_writer(avro_type: Any, hint: Any) -> _FieldWriter | None:
    if avro_type == "long" and hint is int:
        return _write_long
    if avro_type == "double" and hint is float:
        return _write_double
    if avro_type == ["null", "double"] and non_null(hint) is float:
        return _write_optional_double
    if avro_type == ["string", {"type": "array", "items": "string"}] and hint == str | list[str]:
        return _write_string_or_strings
    if avro_type == {"type": "map", "values": "string"} and hint == dict[str, str]:
        return _write_string_map
    if avro_type == "string":
        return _write_json_text if is_json_object(hint) else (
            _write_string if hint is str else None)
    if avro_type == ["null", "string"] and non_null(hint) is str:
        return _write_optional_string
    if isinstance(avro_type, dict):
        if avro_type.get("type") == "enum" and isinstance(hint, type) \
                and issubclass(hint, enum.Enum):
            return _enum_writer(hint, avro_type["symbols"])
        if avro_type.get("type") == "long" and avro_type.get("logicalType") == "timestamp-micros" \
                and hint is datetime:
            return _timestamp_micros_writer(avro_type)
    return _structured_field_writer(avro_type, hint)


def _direct_writer(parsed: dict[str, Any],
                   hints: dict[str, Any]) -> Callable[[Sequence[Any]], bytes] | None:
    """The Avro body of a record from its field values in schema order, or None when a field
    is of a kind this writer does not cover."""
    writers = []
    for field in parsed["fields"]:
        writer = _field_writer(field["type"], hints.get(field["name"]))
        if writer is None:
            return None
        writers.append(writer)
    if parsed["name"] == "trovemeter.UsageRecord" and \
            tuple(field["name"] for field in parsed["fields"]) == USAGE_FIELDS:
        return _usage_writer(writers)
    return _compiled_writer(parsed["name"], writers)


def _compiled_writer(name: str, writers: list[_FieldWriter]) -> Callable[[Sequence[Any]], bytes]:
    """``write_fields`` for ``writers`` as one function with a call per field written out
    (``w0(v0), w1(v1), ...``): ~0.7 us a Notification less than ``map(operator.call, ...)``
    over them, which this writer runs for every record of the shovel and the worker."""
    count = len(writers)
    values = "".join(f"v{index}, " for index in range(count))
    calls = "".join(f"w{index}(v{index}), " for index in range(count))
    source = (
        "def write_fields(values):\n"
        "    if len(values) != count:\n"
        "        raise CodecError(\n"
        "            f'cannot encode {name}: {len(values)} values for {count} fields')\n"
        f"    ({values}) = values\n"
        "    try:\n"
        f"        return b''.join(({calls}))\n"
        "    except (ValueError, TypeError, OverflowError, UnicodeError) as exc:\n"
        "        raise CodecError(f'cannot encode {name}: {exc}') from exc\n")
    scope: dict[str, Any] = {"CodecError": CodecError, "name": name, "count": count,
                             **{f"w{index}": writer for index, writer in enumerate(writers)}}
    # The source holds only identifiers made here (v0, w0, ...); the schema name and the
    # writers come in through the scope.
    exec(compile(source, f"<direct writer for {name}>", "exec"), scope)  # noqa: S102
    return scope["write_fields"]


# --- UsageRecord: the segments that repeat across a sweep's records ------------------------
# The hourly sweep writes ~3 usage records per resource (300k for 100k instances). A resource's
# records share the tenant, type and id objects, an hour's records the window's datetimes, and
# the meter, its type and unit come from a few constants: those three segments are written once
# and their bytes reused while the *same objects* come again (an identity test: the bytes of a
# value seen before can never be stale): ~3.8 -> ~2.7 us a record; from its field values
# (``usage_encoder``, no record built) ~6 -> ~2.8 us (timeit).

USAGE_FIELDS = ("record_id", "version", "tenant_id", "resource_type", "resource_id", "meter",
                "meter_type", "unit", "quantity", "window_start", "window_end", "derived_from",
                "user_id", "flavor_id", "flavor_name", "size_gb", "resource_metadata")
_EMPTY_MAP = b"\x00"  # an empty map: no block, the end marker


def _usage_writer(writers: list[_FieldWriter]) -> Callable[[Sequence[Any]], bytes]:
    """``write_fields`` of UsageRecord (``USAGE_FIELDS``); also takes the first 16 values
    alone, ``resource_metadata`` then written empty."""
    (w_id, w_version, w_tenant, w_type, w_resource, w_meter, w_meter_type, w_unit, w_quantity,
     w_start, w_end, w_derived, w_user, w_flavor, w_flavor_name, w_size, w_metadata) = writers
    owner: list[Any] = [None, None, None, b""]  # tenant, type, resource id; their bytes
    window: list[Any] = [None, None, b""]  # start, end; their bytes
    meters: dict[Any, tuple[Any, Any, Any, bytes]] = {}  # meter -> (meter, type, unit, bytes)

    def write_fields(values: Sequence[Any]) -> bytes:
        count = len(values)
        metadata: Any = None
        if count == 16:
            (record_id, version, tenant, resource_type, resource_id, meter, meter_type, unit,
             quantity, start, end, derived_from, user_id, flavor_id, flavor_name,
             size_gb) = values
        elif count == 17:
            (record_id, version, tenant, resource_type, resource_id, meter, meter_type, unit,
             quantity, start, end, derived_from, user_id, flavor_id, flavor_name, size_gb,
             metadata) = values
        else:
            raise CodecError(f"cannot encode trovemeter.UsageRecord: {count} values for 17 "
                             "fields")
        try:
            if tenant is not owner[0] or resource_type is not owner[1] or \
                    resource_id is not owner[2]:
                owner[:] = (tenant, resource_type, resource_id,
                            w_tenant(tenant) + w_type(resource_type) + w_resource(resource_id))
            cached = meters.get(meter) if type(meter) is str else None
            if cached is None or cached[0] is not meter or cached[1] is not meter_type or \
                    cached[2] is not unit:
                cached = (meter, meter_type, unit,
                          w_meter(meter) + w_meter_type(meter_type) + w_unit(unit))
                if type(meter) is str and len(meters) < 64:  # a few meters exist
                    meters[meter] = cached
            if start is not window[0] or end is not window[1]:
                window[:] = start, end, w_start(start) + w_end(end)
            return b"".join((
                w_id(record_id), w_version(version), owner[3], cached[3], w_quantity(quantity),
                window[2], w_derived(derived_from), w_user(user_id), w_flavor(flavor_id),
                w_flavor_name(flavor_name), w_size(size_gb),
                _EMPTY_MAP if count == 16 else w_metadata(metadata)))
        except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
            raise CodecError(f"cannot encode trovemeter.UsageRecord: {exc}") from exc

    return write_fields


def usage_encoder() -> Callable[[Sequence[Any]], bytes]:
    """``encode(UsageRecord(*values))`` from the record's field values in order, without the
    record; ``resource_metadata`` may be left out (empty). The worker's sweep encodes ~3 records
    per resource this way (``accrual.advance_fields``)."""
    entry = default_codec().entry_for(UsageRecord)
    header, write_fields = entry.header, entry.write_fields
    if write_fields is None:  # the schema changed beyond the direct writer: the record's way
        return lambda values: encode(UsageRecord(*values))
    return lambda values: header + write_fields(values)


def _field_getter(model: type) -> Callable[[Any], Sequence[Any]]:
    names = tuple(f.name for f in dataclasses.fields(model))
    get = operator.attrgetter(*names)
    return get if len(names) > 1 else (lambda record: (get(record),))


# --- optional values of any kind the direct writer covers --------------------------------
# Resource states and operation records hold optional longs, timestamps, enums and arrays of
# strings: with these every model the worker writes takes the direct writer (fastavro's
# generic writer was ~15 us per record there, docs/benchmarks.md).

_VALUE_IN_UNION = b"\x02"  # index 1 of ["null", X]


def _optional(write: _FieldWriter) -> _FieldWriter:
    """``["null", X]`` from None or what ``write`` takes."""

    def write_optional(value: Any) -> bytes:
        return _NULL_IN_UNION if value is None else _VALUE_IN_UNION + write(value)

    return write_optional


def _structured_field_writer(avro_type: Any, hint: Any) -> _FieldWriter | None:
    """The kinds ``_field_writer`` leaves to this: an array of strings, and ``["null", X]``
    for any X the direct writer covers."""
    if avro_type == {"type": "array", "items": "string"} and hint == list[str]:
        return _write_strings
    if not (isinstance(avro_type, list) and len(avro_type) == 2 and avro_type[0] == "null"):
        return None
    inner = non_null(hint)
    if inner is hint:  # not optional in the model
        return None
    write = _field_writer(avro_type[1], inner)
    return None if write is None else _optional(write)


# --- a direct reader for flat records -------------------------------------------------------
# fastavro's schemaless_reader and the datum -> dataclass conversion were ~16 us per
# Notification, the worker's first step for every event; these closures read the same fields
# in a few microseconds. The kinds covered are the direct writer's flat ones (strings, optional
# strings, enums, timestamp-micros, JSON texts); tests/unit/test_codec.py compares the records
# both readers give.

_FieldReader = Callable[[bytes, int], tuple[Any, int]]


class _Corrupt(ValueError):
    """A body that does not hold what the schema says (turned into CodecError)."""


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos]
    pos += 1
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _read_utf8(data: bytes, pos: int) -> tuple[bytes, int]:
    size = data[pos]
    if size < 0x80:  # a length under 64 (one byte), as most fields' are
        pos += 1
        if size & 1:
            raise _Corrupt("negative length")
        size >>= 1
    else:
        size, pos = _read_long(data, pos)
        if size < 0:
            raise _Corrupt("negative length")
    end = pos + size
    if end > len(data):
        raise _Corrupt("truncated string")
    return data[pos:end], end


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    raw, pos = _read_utf8(data, pos)
    return raw.decode(), pos


def _read_optional_string(data: bytes, pos: int) -> tuple[str | None, int]:
    index = data[pos]
    if index == 0:
        return None, pos + 1
    if index != 2:
        raise _Corrupt(f"union index {index} out of range")
    raw, pos = _read_utf8(data, pos + 1)
    return raw.decode(), pos


def _read_json_text(data: bytes, pos: int) -> tuple[Any, int]:
    raw, pos = _read_utf8(data, pos)
    return orjson.loads(raw), pos  # orjson checks the UTF-8 itself


def _enum_reader(model_enum: type[enum.Enum], symbols: list[str]) -> _FieldReader | None:
    try:
        members = tuple(model_enum(symbol) for symbol in symbols)
    except ValueError:  # a symbol the model lacks: fastavro's path raises as it should
        return None

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        index, pos = _read_long(data, pos)
        if index < 0:
            raise _Corrupt(f"enum index {index}")
        return members[index], pos

    return read


def _read_timestamp_micros(data: bytes, pos: int) -> tuple[datetime, int]:
    micros, pos = _read_long(data, pos)
    return _EPOCH + timedelta(microseconds=micros), pos  # fastavro's conversion


def _field_reader(avro_type: Any, hint: Any) -> _FieldReader | None:
    if avro_type == "string":
        return _read_json_text if is_json_object(hint) else (
            _read_string if hint is str else None)
    if avro_type == ["null", "string"] and non_null(hint) is str and non_null(hint) is not hint:
        return _read_optional_string
    if isinstance(avro_type, dict):
        if avro_type.get("type") == "enum" and isinstance(hint, type) \
                and issubclass(hint, enum.Enum):
            return _enum_reader(hint, avro_type["symbols"])
        if avro_type.get("type") == "long" and avro_type.get("logicalType") == "timestamp-micros" \
                and hint is datetime:
            return _read_timestamp_micros
    return None


def _direct_reader(parsed: dict[str, Any], hints: dict[str, Any],
                   model: type) -> Callable[[bytes, int], Any] | None:
    """The record whose Avro body starts at ``pos`` of ``data``, or None when a field is of a
    kind this reader does not cover. Bytes after the body are ignored, as fastavro does."""
    # (is a string, is optional, reader): strings -- most fields -- are read in the loop
    # itself, saving two calls and a tuple per field (~1 us of ~11 per Notification here).
    plan: list[tuple[bool, bool, _FieldReader]] = []
    for field in parsed["fields"]:
        reader = _field_reader(field["type"], hints.get(field["name"]))
        if reader is None:
            return None
        inline = reader is _read_string or reader is _read_optional_string
        plan.append((inline, reader is _read_optional_string, reader))
    names = [field["name"] for field in parsed["fields"]]
    if names != [f.name for f in dataclasses.fields(model)]:
        return None  # the positional construction below needs the schema's order
    name = parsed["name"]

    def read_record(data: bytes, pos: int) -> Any:
        values = []
        append = values.append
        length = len(data)
        try:
            for is_string, optional, read in plan:
                if not is_string:
                    value, pos = read(data, pos)
                    append(value)
                    continue
                if optional:  # ["null", "string"]: index 0 or 1
                    index = data[pos]
                    pos += 1
                    if index == 0:
                        append(None)
                        continue
                    if index != 2:
                        raise _Corrupt(f"union index {index} out of range")
                size = data[pos]  # _read_utf8, inline
                if size < 0x80:
                    pos += 1
                    if size & 1:
                        raise _Corrupt("negative length")
                    size >>= 1
                else:
                    size, pos = _read_long(data, pos)
                    if size < 0:
                        raise _Corrupt("negative length")
                end = pos + size
                if end > length:
                    raise _Corrupt("truncated string")
                append(data[pos:end].decode())
                pos = end
        except (IndexError, ValueError, OverflowError) as exc:  # UnicodeError, JSON: ValueError
            raise CodecError(f"corrupt {name} body: {exc}") from exc
        return model(*values)

    return read_record
