"""Seeded generator of mutated oslo.messaging bodies, built from the real wire fixtures
(tests/fixtures/wire), for the shovel's fuzz test (tests/integration/test_fuzz_shovel.py).

Every body is unique (so a record on Kafka maps back to exactly one body: by message_id for a
notification, by body SHA-256 for a dead letter) and carries its category, variant and AMQP
properties. Same seed, same bodies.

Categories (issue #9): truncated JSON, wrong envelope versions, ``oslo.message`` not a string,
deep nesting, huge strings and arrays past the size limit, invalid UTF-8, NaN/Infinity, wrong
types for every known field, unknown event types, timestamps in odd formats, wrong AMQP
properties (content encoding, content type, compressed bodies), broken structure, and
unmodified controls.
"""

from __future__ import annotations

import bz2
import copy
import gzip
import json
import random
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.integration.shovel_harness import Fixture, load_fixtures

OSLO_PROPERTIES: dict[str, Any] = {"content_type": "application/json", "content_encoding": "utf-8",
                                   "delivery_mode": 2, "priority": 0, "headers": {}}
_MISSING = object()


@dataclass(frozen=True)
class FuzzBody:
    index: int
    category: str
    variant: str
    body: bytes
    routing_key: str
    properties: dict[str, Any] = field(default_factory=lambda: dict(OSLO_PROPERTIES))


@dataclass
class _Base:
    name: str
    inner: dict[str, Any]
    v2: bool
    routing_key: str


def _bases(fixtures: list[Fixture]) -> list[_Base]:
    bases = []
    for fixture in fixtures:
        document = json.loads(fixture.body)
        v2 = "oslo.message" in document
        inner = json.loads(document["oslo.message"]) if v2 else document
        bases.append(_Base(fixture.name, inner, v2, fixture.routing_key))
    return bases


def render(inner: Any, v2: bool, *, version: Any = "2.0", ensure_ascii: bool = True) -> bytes:
    """As oslo.messaging serialises: json.dumps with its default separators (v2: twice)."""
    if v2:
        text = json.dumps({"oslo.version": version, "oslo.message": json.dumps(
            inner, ensure_ascii=ensure_ascii)}, ensure_ascii=ensure_ascii)
    else:
        text = json.dumps(inner, ensure_ascii=ensure_ascii)
    return text.encode("utf-8", "surrogatepass")


class Generator:
    def __init__(self, seed: int, max_bytes: int) -> None:
        self.rng = random.Random(seed)
        self.max_bytes = max_bytes
        self.bases = _bases(load_fixtures())
        self._seen: set[bytes] = set()
        self.items: list[FuzzBody] = []

    # -- helpers

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def base(self) -> tuple[_Base, dict[str, Any]]:
        """A fixture and a deep copy of its inner message with a fresh message_id."""
        base = self.rng.choice(self.bases)
        inner = copy.deepcopy(base.inner)
        inner["message_id"] = self.uid()
        return base, inner

    def add(self, category: str, variant: str, body: bytes, routing_key: str = "notifications.info",
            properties: dict[str, Any] | None = None) -> bool:
        if body in self._seen:
            return False
        self._seen.add(body)
        self.items.append(FuzzBody(len(self.items), category, variant, body, routing_key,
                                   dict(properties or OSLO_PROPERTIES)))
        return True

    def fill(self, category: str, count: int, make: Callable[[], tuple[str, bytes] | tuple[
            str, bytes, dict[str, Any]]]) -> None:
        """Call ``make`` until ``count`` unique bodies of ``category`` exist."""
        made, attempts = 0, 0
        while made < count:
            attempts += 1
            assert attempts < count * 20, f"{category}: cannot make {count} unique bodies"
            out = make()
            properties = out[2] if len(out) == 3 else None
            if self.add(category, out[0], out[1], properties=properties):
                made += 1

    # -- categories

    def control(self) -> tuple[str, bytes]:
        base, inner = self.base()
        return f"unmodified.{'v2' if base.v2 else 'v1'}", render(inner, base.v2)

    def truncated(self) -> tuple[str, bytes]:
        base, inner = self.base()
        if base.v2 and self.rng.random() < 0.3:  # the envelope is intact, its message is cut
            text = json.dumps(inner)
            cut = self.rng.randrange(0, len(text))
            return "inner_cut", json.dumps({"oslo.version": "2.0",
                                            "oslo.message": text[:cut]}).encode()
        body = render(inner, base.v2)
        return f"cut.{'v2' if base.v2 else 'v1'}", body[: self.rng.randrange(0, len(body))]

    def envelope_version(self) -> tuple[str, bytes]:
        _, inner = self.base()
        choices: list[tuple[str, Any]] = [
            ("string", v) for v in ("1.0", "2.1", "3.0", "", " 2.0", "2.0 ", "2", "2.00", "v2.0",
                                    "2.0\u0000", "２.０", "1.0.0")
        ] + [("number", 2.0), ("number", 2), ("number", 1), ("null", None), ("bool", True),
             ("container", ["2.0"]), ("container", {"v": "2.0"}), ("missing", _MISSING),
             ("correct", "2.0")]
        kind, version = self.rng.choice(choices)
        message = json.dumps(inner)
        if version is _MISSING:
            return kind, json.dumps({"oslo.message": message}).encode()
        envelope: dict[str, Any] = {"oslo.version": version, "oslo.message": message}
        if kind == "correct":  # the right version with extra keys or the other key order
            if self.rng.random() < 0.5:
                envelope = {"oslo.message": message, "oslo.version": "2.0"}
            else:
                envelope["oslo.extra"] = self.rng.randrange(1000)
        return kind, json.dumps(envelope).encode()

    def message_not_string(self) -> tuple[str, bytes]:
        _, inner = self.base()
        rng = self.rng
        kind = rng.choice(["object", "array", "number", "null", "bool", "string_not_json",
                           "string_array", "string_number", "string_string", "string_empty",
                           "double_encoded", "missing"])
        value: Any = {
            "object": inner, "array": [inner], "number": rng.randrange(10**6), "null": None,
            "bool": rng.random() < 0.5, "string_not_json": f"message {inner['message_id']}",
            "string_array": json.dumps([inner]), "string_number": str(rng.randrange(10**9)),
            "string_string": json.dumps(inner["message_id"]), "string_empty": "",
            "double_encoded": json.dumps(json.dumps(inner)), "missing": _MISSING,
        }[kind]
        if value is _MISSING:
            return kind, json.dumps({"oslo.version": "2.0", "id": inner["message_id"]}).encode()
        return kind, json.dumps({"oslo.version": "2.0", "oslo.message": value}).encode()

    def deep_nesting(self) -> tuple[str, bytes]:
        base, inner = self.base()
        rng = self.rng
        depth = rng.choice([2, 8, 32, 61, 62, 63, 64, 65, 66, 100, 500, 1023, 1024, 1025, 1500])
        shape = rng.choice(["dict", "list", "mixed"])
        where = rng.choice(["payload", "context", "unknown_key"])
        marker = f"__DEEP_{inner['message_id']}__"
        if where == "payload":
            inner["payload"]["deep"] = marker
        elif where == "context":
            inner["_context_deep"] = marker
        else:
            inner["deep"] = marker
        # Built as text: json.dumps itself recurses too deep for the deepest shapes.
        opens, closes = [], []
        for level in range(depth):
            as_list = shape == "list" or (shape == "mixed" and level % 2)
            opens.append("[" if as_list else '{"n": ')
            closes.append("]" if as_list else "}")
        deep = "".join(opens) + json.dumps(inner["message_id"]) + "".join(reversed(closes))
        inner_text = json.dumps(inner).replace(json.dumps(marker), deep)
        v2 = base.v2 if depth < 1000 else rng.random() < 0.5
        body = json.dumps({"oslo.version": "2.0", "oslo.message": inner_text}) if v2 else inner_text
        return f"{where}.{shape}.{'le64' if depth <= 64 else 'gt64'}", body.encode()

    def oversize(self) -> tuple[str, bytes]:
        base, inner = self.base()
        rng = self.rng
        plain = len(render(inner, base.v2))
        kind = rng.choices(["string_over", "array_over", "string_under", "array_under",
                            "at_limit", "one_over"], weights=[30, 15, 25, 10, 10, 10])[0]
        target = {
            "string_over": self.max_bytes + rng.randrange(1, 48_000),
            "array_over": self.max_bytes + rng.randrange(1, 48_000),
            "string_under": rng.randrange(self.max_bytes // 2, self.max_bytes - 64),
            "array_under": rng.randrange(self.max_bytes // 2, self.max_bytes - 64),
            "at_limit": self.max_bytes, "one_over": self.max_bytes + 1,
        }[kind]
        pad = max(0, target - plain - 20)
        if kind.startswith("array"):
            inner["payload"]["items"] = [rng.randrange(10)] * max(0, pad // 3)
            return kind, render(inner, base.v2)
        inner["payload"]["blob"] = "x" * pad
        body = render(inner, base.v2)
        if kind in ("at_limit", "one_over"):  # exactly the limit, or one byte over it
            inner["payload"]["blob"] = "x" * (pad + target - len(body))
            body = render(inner, base.v2)
            assert len(body) == target, (len(body), target)
        return kind, body

    def invalid_utf8(self) -> tuple[str, bytes]:
        base, inner = self.base()
        rng = self.rng
        if rng.random() < 0.15:  # controls: raw UTF-8 text (not escaped) is valid
            inner["payload"]["name"] = "datenbank-ü-数据-" + inner["message_id"][:8]
            return "raw_utf8_valid", render(inner, base.v2, ensure_ascii=False)
        if rng.random() < 0.15:  # latin-1 bytes where UTF-8 was promised
            inner["payload"]["name"] = "datenbank-ü-" + inner["message_id"][:8]
            text = render(inner, base.v2, ensure_ascii=False).decode()
            return "latin1_bytes", text.encode("latin-1", "replace")
        bad = rng.choice([b"\xff", b"\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1",
                          b"\xe2\x82\x28", b"\xf0\x28\x8c\xbc", b"\xf8\xa1\xa1\xa1\xa1",
                          b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe6\x95"])
        body = render(inner, base.v2)
        at = rng.randrange(0, len(body) + 1)
        return f"bytes_{bad.hex()}", body[:at] + bad + body[at:]

    def nan_infinity(self) -> tuple[str, bytes]:
        base, inner = self.base()
        rng = self.rng
        kind = rng.choice(["nan", "inf", "-inf", "overflow", "string_nan"])
        where = rng.choice(["payload", "top"])
        target = inner["payload"] if where == "payload" else inner
        key = rng.choice(["volume_size", "in_use", "size", "weird"])
        if kind == "string_nan":
            target[key] = rng.choice(["NaN", "Infinity", "-Infinity"])
            return f"{where}.string_token", render(inner, base.v2)
        marker = f"__MARK_{inner['message_id']}__"
        target[key] = marker
        token = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity",
                 "overflow": rng.choice(["1e999", "-1e400", "1.5e309"])}[kind]
        body = render(inner, base.v2)
        quoted = b'\\"' + marker.encode() + b'\\"' if base.v2 else b'"' + marker.encode() + b'"'
        assert quoted in body
        return f"{where}.{kind}", body.replace(quoted, token.encode())

    KNOWN_TOP = ("message_id", "publisher_id", "event_type", "priority", "timestamp", "payload",
                 "_unique_id", "_context_request_id", "_context_project_id", "_context_user_id",
                 "_context_roles", "_context_is_admin", "_context_project", "_context_user")
    KNOWN_PAYLOAD = ("tenant_id", "request_id", "instance_id", "backup_id", "cluster_id",
                     "flavor_id", "instance_type_id", "instance_type", "instance_size",
                     "volume_size", "old_volume_size", "name", "datastore", "datastore_version",
                     "created_at", "launched_at", "deleted_at", "modify_at",
                     "audit_period_beginning", "audit_period_ending", "exception", "message",
                     "state", "region", "availability_zone", "size", "server_type", "user_id")

    def wrong_type(self) -> tuple[str, bytes]:
        base, inner = self.base()
        rng = self.rng
        in_payload = rng.random() < 0.5
        name = rng.choice(self.KNOWN_PAYLOAD if in_payload else self.KNOWN_TOP)
        values: list[tuple[str, Any]] = [
            ("int", rng.randrange(-5, 10**6)), ("float", rng.random() * 100), ("bool", True),
            ("bool", False), ("null", None), ("list", []), ("list", [1, "a", None]),
            ("object", {}), ("object", {"k": rng.randrange(100)}), ("bigint", 2**64 + 1),
            ("string", ""), ("string", " "), ("string", "x" * rng.randrange(100, 3000)),
            ("string", "☃ " + self.uid()), ("string", self.uid()),
        ]
        kind, value = rng.choice(values)
        if name == "message_id" and kind == "string" and value in ("", " "):
            inner["_unique_id"] = self.uid()  # keeps the body unique (empty ids are rejected)
        (inner["payload"] if in_payload else inner)[name] = value
        return f"{'payload.' if in_payload else ''}{name}:{kind}", render(inner, base.v2)

    def unknown_event_type(self) -> tuple[str, bytes]:
        base, inner = self.base()
        rng = self.rng
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randrange(1, 12)))
        kind, event_type = rng.choice([
            ("dbaas_unknown_op", f"dbaas.{word}.{rng.choice(['start', 'end', 'error'])}"),
            ("trove_unknown", f"trove.{word}.{rng.choice(['create', 'exists', 'zap'])}"),
            ("other_service", rng.choice(["compute.instance.create.end", "volume.attach.end",
                                          "identity.authenticate"])),
            ("design_note_unknown", f"instance.{word}.start"),
            ("case", rng.choice(["DBAAS.INSTANCE_CREATE.START", "dbaas.instance_create.START",
                                 "Trove.Instance.Exists"])),
            ("odd_chars", rng.choice(["dbaas..start", ".", " ", "dbaas.instance_create.start ",
                                      "dbaas.☃.start", "a" * 2000, "dbaas.instance_create",
                                      "\u0000"])),
            ("empty", ""),
        ])
        inner["event_type"] = event_type
        return kind, render(inner, base.v2)

    def timestamp(self) -> tuple[str, bytes]:
        base, inner = self.base()
        rng = self.rng
        y, mo, d = rng.randrange(2000, 2040), rng.randrange(1, 13), rng.randrange(1, 29)
        h, mi, s = rng.randrange(24), rng.randrange(60), rng.randrange(60)
        us = rng.randrange(10**6)
        kind, value = rng.choice([
            ("oslo", f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}.{us:06d}"),
            ("oslo_no_us", f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"),
            ("iso_t_z", f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z"),
            ("iso_offset", f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{us:06d}"
                           f"{rng.choice(['+02:00', '-05:30', '+14:00', '+00:00'])}"),
            ("bad_offset", f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}+25:00"),
            ("nanoseconds", f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{us:06d}123Z"),
            ("date_only", f"{y:04d}-{mo:02d}-{d:02d}"),
            ("basic_format", f"{y:04d}{mo:02d}{d:02d}T{h:02d}{mi:02d}{s:02d}"),
            ("epoch_string", str(rng.randrange(10**9, 2 * 10**9))),
            ("epoch_number", rng.randrange(10**9, 2 * 10**9)),
            ("epoch_float", rng.randrange(10**9, 2 * 10**9) + 0.5),
            ("rfc2822", f"Wed, {d:02d} Nov {y} {h:02d}:{mi:02d}:{s:02d} GMT"),
            ("day_first", f"{d:02d}/{mo:02d}/{y} {h:02d}:{mi:02d}"),
            ("impossible", f"{y:04d}-{rng.choice([13, 0, 2])}-{rng.choice([30, 31, 45])} "
                           f"{rng.choice([24, 99])}:{mi:02d}:{s:02d}"),
            ("leap_second", f"{y:04d}-12-31 23:59:60"),
            ("extreme", rng.choice(["0001-01-01 00:00:00-01:00", "9999-12-31 23:59:59+00:00",
                                    "9999-12-31T23:59:59.999999-14:00", "0000-01-01 00:00:00",
                                    "+10000-01-01 00:00:00"])),
            ("words", rng.choice(["now", "yesterday", "", " ", "null", "NaT"])),
            ("payload_time", None),
        ])
        if kind == "payload_time":  # payload times in odd formats: parsed, used downstream
            field_ = rng.choice(["created_at", "launched_at", "deleted_at",
                                 "audit_period_beginning", "audit_period_ending"])
            inner["payload"][field_] = rng.choice([
                f"{y}-{mo}-{d}", f"{d:02d}/{mo:02d}/{y}", rng.randrange(10**9, 2 * 10**9),
                f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}+05:00", "", "never"])
            return f"payload.{field_}", render(inner, base.v2)
        inner["timestamp"] = value
        return kind, render(inner, base.v2)

    def properties(self) -> tuple[str, bytes, dict[str, Any]]:
        base, inner = self.base()
        rng = self.rng
        body = render(inner, base.v2)
        props = dict(OSLO_PROPERTIES)
        kind = rng.choice(["gzip_body", "gzip_declared_plain_body", "latin1", "iso-8859-1",
                           "ascii", "encoding_missing", "encoding_case", "deflate", "identity",
                           "text_plain", "octet_stream", "content_type_missing",
                           "json_charset_utf8", "json_charset_latin1", "json_upper",
                           "compressed_zlib", "compressed_bz2", "compressed_zstd_magic",
                           "compressed_lz4_magic", "odd_headers", "odd_headers_bad_body",
                           "all_properties"])
        if kind == "gzip_body":
            props["content_encoding"] = "gzip"
            body = gzip.compress(body, mtime=0)
        elif kind == "gzip_declared_plain_body":
            props["content_encoding"] = "gzip"
        elif kind in ("latin1", "iso-8859-1", "ascii", "deflate", "identity"):
            props["content_encoding"] = {"latin1": "latin-1"}.get(kind, kind)
        elif kind == "encoding_missing":
            props["content_encoding"] = None
        elif kind == "encoding_case":
            props["content_encoding"] = rng.choice(["UTF-8", " utf8 ", "Utf-8"])
        elif kind == "text_plain":
            props["content_type"] = "text/plain"
        elif kind == "octet_stream":
            props["content_type"] = "application/octet-stream"
        elif kind == "content_type_missing":
            props["content_type"] = None
        elif kind == "json_charset_utf8":
            props["content_type"] = "application/json; charset=utf-8"
        elif kind == "json_charset_latin1":
            props["content_type"] = "application/json; charset=iso-8859-1"
        elif kind == "json_upper":
            props["content_type"] = "APPLICATION/JSON"
        elif kind == "compressed_zlib":
            body = zlib.compress(body, rng.choice([1, 6, 9]))
        elif kind == "compressed_bz2":
            body = bz2.compress(body)
        elif kind == "compressed_zstd_magic":
            body = b"\x28\xb5\x2f\xfd" + body
        elif kind == "compressed_lz4_magic":
            body = b"\x04\x22\x4d\x18" + body
        elif kind in ("odd_headers", "odd_headers_bad_body"):
            props["headers"] = {"x-bytes": b"\xff\xfe", "x-none": None, "x-nested": {"a": [1, 2]},
                                "x-int": rng.randrange(100), "x-text": "☃"}
            if kind == "odd_headers_bad_body":
                body = body[: len(body) // 2]
        else:  # every AMQP property set
            props.update(delivery_mode=1, priority=9, correlation_id=self.uid(), reply_to="r",
                         expiration="60000", message_id=self.uid(), timestamp=1_700_000_000,
                         type="notification", app_id="trove", user_id=None, cluster_id="c")
        return kind, body, props

    def structure(self) -> tuple[str, bytes]:
        base, inner = self.base()
        rng = self.rng
        kind = rng.choice(["top_array", "top_string", "top_number", "top_null", "missing_field",
                           "bom", "trailing_garbage", "leading_whitespace", "duplicate_keys",
                           "extra_keys", "payload_not_object", "html", "binary", "empty_object"])
        mid = inner["message_id"]
        if kind == "top_array":
            return kind, json.dumps([inner]).encode()
        if kind == "top_string":
            return kind, json.dumps(json.dumps(inner)).encode()
        if kind == "top_number":
            return kind, str(rng.randrange(10**12)).encode()
        if kind == "top_null":
            return kind, rng.choice([b"null", b"true", b"false", b"[]", b'""']) + b" " * rng.randrange(50)
        if kind == "missing_field":
            drop = rng.choice(["message_id", "publisher_id", "event_type", "priority", "payload",
                               "timestamp"])
            del inner[drop]
            return f"missing_{drop}", render(inner, base.v2) + b" " * rng.randrange(3)
        if kind == "bom":
            return kind, b"\xef\xbb\xbf" + render(inner, base.v2)
        if kind == "trailing_garbage":
            return kind, render(inner, base.v2) + rng.choice([b"}", b",", b"x", b"\x00", b"{}"])
        if kind == "leading_whitespace":
            return kind, b" \n\t" * rng.randrange(1, 4) + render(inner, base.v2) + b"\n"
        if kind == "duplicate_keys":
            body = render(inner, base.v2)
            if base.v2:
                return kind, body[:-1] + b', "oslo.version": "2.0"}'
            return kind, body[:-1] + b', "priority": "INFO"}'
        if kind == "extra_keys":
            inner[f"x_{rng.randrange(10**6)}"] = {"nested": [1, 2, {"k": None}]}
            return kind, render(inner, base.v2)
        if kind == "payload_not_object":
            inner["payload"] = rng.choice([[inner["payload"]], json.dumps(inner["payload"]), 1])
            return kind, render(inner, base.v2)
        if kind == "html":
            return kind, f"<html><body>502 Bad Gateway {mid}</body></html>".encode()
        if kind == "binary":
            return kind, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        return kind, b"{}" + b" " * rng.randrange(100)


# (category, how many) -> at least 10k bodies in all
PLAN: tuple[tuple[str, int, str], ...] = (
    ("control", 600, "control"),
    ("truncated", 1000, "truncated"),
    ("envelope_version", 800, "envelope_version"),
    ("message_not_string", 800, "message_not_string"),
    ("deep_nesting", 800, "deep_nesting"),
    ("oversize", 400, "oversize"),
    ("invalid_utf8", 1000, "invalid_utf8"),
    ("nan_infinity", 800, "nan_infinity"),
    ("wrong_type", 1600, "wrong_type"),
    ("unknown_event_type", 800, "unknown_event_type"),
    ("timestamp", 1000, "timestamp"),
    ("amqp_properties", 800, "properties"),
    ("structure", 800, "structure"),
)


def generate(seed: int, max_bytes: int, huge: int = 2) -> list[FuzzBody]:
    """The fuzz corpus: unique bodies, deterministic for ``seed``."""
    generator = Generator(seed, max_bytes)
    for category, count, method in PLAN:
        generator.fill(category, count, getattr(generator, method))
    for i in range(huge):  # past the dead letter's 3 MiB body cap
        _, inner = generator.base()
        inner["payload"]["blob"] = "h" * (3 * 1024 * 1024 + 100_000 + i)
        generator.add("oversize", "huge_over_3MiB", render(inner, True))
    return generator.items


def by_category(items: list[FuzzBody]) -> Iterator[tuple[str, list[FuzzBody]]]:
    groups: dict[str, list[FuzzBody]] = {}
    for item in items:
        groups.setdefault(item.category, []).append(item)
    yield from groups.items()
