"""Hypothesis strategies: model records from their type hints, Avro datums from a schema, and an
independent CRC-64-AVRO (from the Avro specification) to check fingerprints against."""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

TEXT = st.text(max_size=24)
LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
INTS = st.integers(min_value=-(2**31), max_value=2**31 - 1)
DOUBLES = st.floats(allow_nan=False)
# The whole range a Python datetime can hold, at microsecond precision, always UTC.
TIMESTAMPS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                          timezones=st.just(UTC))
JSON_VALUES = st.recursive(
    # JSON has no NaN or Infinity (the parser rejects them), so payloads never hold them.
    st.one_of(st.none(), st.booleans(), LONGS, st.floats(allow_nan=False, allow_infinity=False),
              TEXT),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(TEXT, children, max_size=3)),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(TEXT, JSON_VALUES, max_size=5)


def records(model: type) -> st.SearchStrategy[Any]:
    """Instances of a dataclass model, every field drawn from its type hint."""
    hints = typing.get_type_hints(model)
    return st.builds(model, **{f.name: for_hint(hints[f.name]) for f in dataclasses.fields(model)})


def for_hint(hint: Any) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if arg is type(None) else for_hint(arg) for arg in args))
    if hint is Any:
        return JSON_VALUES
    simple = {str: TEXT, int: LONGS, float: DOUBLES, bool: st.booleans(),
              bytes: st.binary(max_size=32), datetime: TIMESTAMPS}
    if hint in simple:
        return simple[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(list(hint))
    if dataclasses.is_dataclass(hint):
        return records(hint)  # type: ignore[arg-type]
    if origin is dict:
        return JSON_OBJECTS if args[1] is Any else st.dictionaries(TEXT, for_hint(args[1]),
                                                                   max_size=3)
    if origin is list:
        return st.lists(for_hint(args[0]), max_size=3)
    raise NotImplementedError(f"no strategy for {hint}")


def datums(schema: Any, named: dict[str, Any] | None = None, namespace: str | None = None,
           json_fields: frozenset[str] = frozenset()) -> st.SearchStrategy[Any]:
    """Avro datums (as fastavro writes them) valid for the schema JSON ``schema``. String fields
    named in ``json_fields`` hold JSON object text, as the codec writes ``dict[str, Any]``."""
    named = {} if named is None else named
    if isinstance(schema, list):
        return st.one_of(*(datums(branch, named, namespace, json_fields) for branch in schema))
    if isinstance(schema, str):
        primitives = {"null": st.none(), "boolean": st.booleans(), "int": INTS, "long": LONGS,
                      "float": st.floats(allow_nan=False, width=32), "double": DOUBLES,
                      "bytes": st.binary(max_size=32), "string": TEXT}
        if schema in primitives:
            return primitives[schema]
        full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
        return st.deferred(lambda: datums(named.get(full, named.get(schema)), named, namespace,
                                          json_fields))
    kind = schema["type"]
    if schema.get("logicalType") in ("timestamp-micros", "timestamp-millis"):
        if schema["logicalType"] == "timestamp-millis":
            return TIMESTAMPS.map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
        return TIMESTAMPS
    if kind in ("record", "enum", "fixed"):
        namespace = schema.get("namespace", namespace)
        full = schema["name"] if "." in schema["name"] or not namespace \
            else f"{namespace}.{schema['name']}"
        named[full] = named[schema["name"]] = schema
    if kind == "record":
        return st.fixed_dictionaries({
            f["name"]: JSON_OBJECTS.map(json.dumps)
            if f["name"] in json_fields and f["type"] == "string"
            else datums(f["type"], named, namespace, json_fields)
            for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(datums(schema["items"], named, namespace, json_fields), max_size=3)
    if kind == "map":
        return st.dictionaries(TEXT, datums(schema["values"], named, namespace, json_fields),
                               max_size=3)
    return datums(kind, named, namespace, json_fields)  # {"type": "string"} and the like


# CRC-64-AVRO exactly as the Avro specification gives it, to check the libraries against.
_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for index in range(256):
        value = index
        for _ in range(8):
            value = (value >> 1) ^ (_EMPTY & -(value & 1))
        table.append(value)
    return table


_TABLE = _table()


def crc64_avro(data: bytes) -> int:
    value = _EMPTY
    for byte in data:
        value = (value >> 8) ^ _TABLE[(value ^ byte) & 0xFF]
    return value


def json_text_fields(model: type) -> frozenset[str]:
    """Fields of ``model`` (and its nested records) that travel as JSON object text."""
    names: set[str] = set()
    for name, hint in typing.get_type_hints(model).items():
        if typing.get_origin(hint) is dict and typing.get_args(hint)[1] is Any:
            names.add(name)
        elif dataclasses.is_dataclass(hint):
            names |= json_text_fields(hint)  # type: ignore[arg-type]
    return frozenset(names)
