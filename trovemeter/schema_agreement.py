"""Does a dataclass model agree with its Avro schema? Field names and order, types, optionality
and defaults. Used when the codec registers a pair (so a mismatch stops start-up), by
`trovemeter schemas --check` and by the unit tests.

The correspondence (also what ``codec`` converts):
  str -> string, bool -> boolean, int -> long|int, float -> double|float, bytes -> bytes,
  datetime -> long/timestamp-micros, str Enum -> enum (same name, same symbols in order),
  dataclass -> record (same name, recursively), dict[str, Any] -> string (JSON object text),
  dict[str, X] -> map of X, list[X] -> array of X, X | None -> ["null", X] with default null,
  X | Y -> [X, Y].
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from datetime import datetime
from typing import Any

_PRIMITIVES = {str: ("string",), bool: ("boolean",), int: ("long", "int"),
               float: ("double", "float"), bytes: ("bytes",)}
_AVRO_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def model_problems(model: type, schema: dict[str, Any]) -> list[str]:
    """Every disagreement between ``model`` and the record ``schema``; empty when they agree."""
    problems: list[str] = []
    _record_problems(model, schema, {}, model.__name__, problems)
    return problems


def is_optional(hint: Any) -> bool:
    return _is_union(hint) and type(None) in typing.get_args(hint)


def non_null(hint: Any) -> Any:
    """``X`` for ``X | None``; the hint itself otherwise."""
    if not is_optional(hint):
        return hint
    rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]


def is_json_object(hint: Any) -> bool:
    """``dict[str, Any]``: free-form JSON, carried as a JSON text string."""
    return typing.get_origin(hint) is dict and typing.get_args(hint)[1:] == (Any,)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _record_problems(model: type, schema: Any, named: dict[str, Any], where: str,
                     problems: list[str]) -> None:
    if not (isinstance(schema, dict) and schema.get("type") == "record"):
        problems.append(f"{where}: schema is not a record")
        return
    _remember(schema, named)
    if schema.get("name") != model.__name__:
        problems.append(f"{where}: record is named {schema.get('name')!r}, the model "
                        f"{model.__name__!r}")
    fields = dataclasses.fields(model)
    hints = typing.get_type_hints(model)
    model_names = [f.name for f in fields]
    schema_names = [f["name"] for f in schema.get("fields", [])]
    if model_names != schema_names:
        problems.append(f"{where}: fields differ: model {model_names}, schema {schema_names}")
        return
    for field, avro_field in zip(fields, schema["fields"], strict=True):
        path = f"{where}.{field.name}"
        hint = hints[field.name]
        _type_problems(hint, avro_field["type"], named, path, problems)
        _default_problems(field, hint, avro_field, named, path, problems)


def _remember(schema: dict[str, Any], named: dict[str, Any]) -> None:
    name = schema["name"]
    namespace = schema.get("namespace")
    named[name] = schema
    if namespace and "." not in name:
        named[f"{namespace}.{name}"] = schema


def _resolve(avro_type: Any, named: dict[str, Any]) -> Any:
    if isinstance(avro_type, str) and avro_type not in _AVRO_PRIMITIVES:
        return named.get(avro_type, avro_type)
    if isinstance(avro_type, dict) and avro_type.get("type") in _AVRO_PRIMITIVES \
            and "logicalType" not in avro_type:
        return avro_type["type"]  # {"type": "string"} is just "string"
    return avro_type


def _type_problems(hint: Any, avro_type: Any, named: dict[str, Any], where: str,
                   problems: list[str]) -> None:
    avro_type = _resolve(avro_type, named)
    if _is_union(hint):
        branches = list(typing.get_args(hint))
        if type(None) in branches:  # Optional: null first, so the field can default to null
            branches = [type(None)] + [b for b in branches if b is not type(None)]
        if not isinstance(avro_type, list) or len(avro_type) != len(branches):
            problems.append(f"{where}: model {hint} needs a union of {len(branches)}, "
                            f"schema has {avro_type!r}")
            return
        for branch, avro_branch in zip(branches, avro_type, strict=True):
            if branch is type(None):
                if avro_branch != "null":
                    problems.append(f"{where}: optional field must list null first, "
                                    f"schema has {avro_type!r}")
            else:
                _type_problems(branch, avro_branch, named, where, problems)
        return
    if isinstance(avro_type, list):
        problems.append(f"{where}: schema is a union {avro_type!r}, the model {hint} is not")
        return
    origin = typing.get_origin(hint)
    if hint in _PRIMITIVES:
        if avro_type not in _PRIMITIVES[hint]:
            problems.append(f"{where}: model {hint.__name__} needs {' or '.join(_PRIMITIVES[hint])}"
                            f", schema has {avro_type!r}")
    elif hint is datetime:
        if not (isinstance(avro_type, dict) and avro_type.get("type") == "long"
                and avro_type.get("logicalType") == "timestamp-micros"):
            problems.append(f"{where}: datetime needs long/timestamp-micros, schema has "
                            f"{avro_type!r}")
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        _enum_problems(hint, avro_type, named, where, problems)
    elif dataclasses.is_dataclass(hint):
        _record_problems(hint, avro_type, named, where, problems)
    elif is_json_object(hint):
        if avro_type != "string":
            problems.append(f"{where}: dict[str, Any] travels as JSON text (string), schema has "
                            f"{avro_type!r}")
    elif origin is dict:
        if not (isinstance(avro_type, dict) and avro_type.get("type") == "map"):
            problems.append(f"{where}: model {hint} needs a map, schema has {avro_type!r}")
        else:
            _type_problems(typing.get_args(hint)[1], avro_type["values"], named, where, problems)
    elif origin is list:
        if not (isinstance(avro_type, dict) and avro_type.get("type") == "array"):
            problems.append(f"{where}: model {hint} needs an array, schema has {avro_type!r}")
        else:
            _type_problems(typing.get_args(hint)[0], avro_type["items"], named, where, problems)
    else:
        problems.append(f"{where}: model type {hint} has no Avro counterpart in trovemeter")


def _enum_problems(hint: type[enum.Enum], avro_type: Any, named: dict[str, Any], where: str,
                   problems: list[str]) -> None:
    if not (isinstance(avro_type, dict) and avro_type.get("type") == "enum"):
        problems.append(f"{where}: model enum {hint.__name__} needs an Avro enum, schema has "
                        f"{avro_type!r}")
        return
    _remember(avro_type, named)
    symbols = [member.value for member in hint]
    if avro_type.get("name") != hint.__name__ or avro_type.get("symbols") != symbols:
        problems.append(f"{where}: enum {avro_type.get('name')} {avro_type.get('symbols')} differs "
                        f"from model {hint.__name__} {symbols}")


def _default_problems(field: dataclasses.Field[Any], hint: Any, avro_field: dict[str, Any],
                      named: dict[str, Any], where: str, problems: list[str]) -> None:
    has_python_default = (field.default is not dataclasses.MISSING
                          or field.default_factory is not dataclasses.MISSING)
    if is_optional(hint):
        if avro_field.get("default", "<none>") is not None:
            problems.append(f"{where}: optional field needs \"default\": null in the schema")
        if field.default is not None:
            problems.append(f"{where}: optional field needs default None in the model")
        return
    if not has_python_default:
        return  # a schema default on a required model field only helps evolution
    if "default" not in avro_field:
        problems.append(f"{where}: the model has a default, the schema none")
        return
    python_default = (field.default if field.default is not dataclasses.MISSING
                      else field.default_factory())  # type: ignore[misc]
    expected = _as_avro_default(python_default, hint)
    actual = _fill_record_default(avro_field["default"], _resolve(avro_field["type"], named),
                                  named)
    if expected != actual:
        problems.append(f"{where}: defaults differ: model {expected!r}, schema {actual!r}")


def _as_avro_default(value: Any, hint: Any) -> Any:
    """A Python default in the form an Avro schema writes it."""
    if isinstance(value, enum.Enum):
        return value.value
    if is_json_object(hint):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if dataclasses.is_dataclass(value):
        hints = typing.get_type_hints(type(value))
        return {f.name: _as_avro_default(getattr(value, f.name), hints[f.name])
                for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return value.decode("latin-1")  # Avro JSON writes bytes defaults as code points 0-255
    return value


def _fill_record_default(default: Any, avro_type: Any, named: dict[str, Any]) -> Any:
    """A record default with its absent fields taken from the fields' own defaults; JSON text
    defaults normalised so "{}" and "{ }" compare equal."""
    if isinstance(avro_type, dict) and avro_type.get("type") == "record" \
            and isinstance(default, dict):
        return {f["name"]: _fill_record_default(default.get(f["name"], f.get("default")),
                                                _resolve(f["type"], named), named)
                for f in avro_type["fields"]}
    if avro_type == "string" and isinstance(default, str) and default[:1] in "{[":
        try:
            return json.dumps(json.loads(default), separators=(",", ":"), sort_keys=True)
        except ValueError:
            return default
    return default
