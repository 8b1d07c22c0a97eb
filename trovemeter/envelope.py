"""What oslo.messaging puts on the wire -> a validated, secret-free ``OsloMessage`` -> a
``Notification``.

Accepts the ``messagingv2`` envelope (``{"oslo.version": "2.0", "oslo.message": "<JSON>"}``) and
the plain ``messaging`` (v1) body. Every way a body can be wrong raises ``BadNotification`` with a
``RejectReason`` (a metric label and the dead letter's reason) and a one-line detail. Nothing is
guessed: a body in another encoding, or compressed, is rejected.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from trovemeter.mapping import load_mapping
from trovemeter.model import Notification, RejectReason
from trovemeter.normalise import Normaliser
from trovemeter.redaction import TooDeep, is_secret_key, redact

SUPPORTED_OSLO_VERSIONS = frozenset({"2.0"})
# Real Trove payloads nest three or four levels; anything far deeper is not a notification, and
# the limit bounds the work a hostile body can cause.
MAX_NESTING = 64
CONTEXT_PREFIX = "_context_"

_UTF8_NAMES = frozenset({"utf-8", "utf8"})
# Magic numbers of gzip, zlib, zstd, bzip2 and lz4 frames: none can start a JSON text.
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda",
                     b"\x28\xb5\x2f\xfd", b"BZh", b"\x04\x22\x4d\x18")
_REQUIRED_STRINGS = ("message_id", "publisher_id", "event_type", "priority", "timestamp")
_REQUIRED_FIELDS = (*_REQUIRED_STRINGS, "payload")
_required_values = operator.itemgetter(*_REQUIRED_FIELDS)
_PREFIX_LENGTH = len(CONTEXT_PREFIX)
# Top-level key layout of a message -> (key, key without prefix) of its non-secret context keys.
_CONTEXT_LAYOUTS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
_CONTEXT_LAYOUTS_LIMIT = 1024


class BadNotification(ValueError):
    """A body that cannot become a ``Notification``.

    ``reason`` is a closed set (``RejectReason``), fit for a metric label and the dead letter;
    ``detail`` is one line naming the problem.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class OsloMessage:
    """The inner oslo.messaging notification, validated, with secrets removed."""

    message_id: str
    publisher_id: str
    event_type: str
    priority: str  # upper case
    occurred_at: datetime  # UTC, timezone-aware
    payload: dict[str, Any]
    context: dict[str, Any]  # the `_context_*` keys without their prefix


def parse_body(
    body: bytes,
    *,
    max_bytes: int,
    content_type: str | None = None,
    content_encoding: str | None = None,
    normaliser: Normaliser | None = None,
) -> Notification:
    """Parse and normalise one AMQP body. Raises ``BadNotification``.

    ``normaliser`` defaults to one on the built-in mapping; a process builds its own at start-up
    (``Normaliser.from_settings``) to apply the configured mapping and count unmapped types.
    """
    return Notification(*parse_fields(body, max_bytes=max_bytes, content_type=content_type,
                                      content_encoding=content_encoding, normaliser=normaliser))


def parse_fields(
    body: bytes,
    *,
    max_bytes: int,
    content_type: str | None = None,
    content_encoding: str | None = None,
    normaliser: Normaliser | None = None,
) -> tuple[Any, ...]:
    """``parse_body`` without building the ``Notification``: its field values in order, which
    the shovel encodes straight to Avro (the frozen dataclasses cost it ~4 us a message)."""
    return (normaliser or default_normaliser()).fields(
        *_decode(body, max_bytes, content_type, content_encoding))


@functools.cache
def default_normaliser() -> Normaliser:
    """A normaliser on the built-in mapping (tools and tests; services configure their own)."""
    return Normaliser(load_mapping())


def decode_message(
    body: bytes,
    *,
    max_bytes: int,
    content_type: str | None = None,
    content_encoding: str | None = None,
) -> OsloMessage:
    """Validate one AMQP body and return its oslo message. Raises ``BadNotification``."""
    return OsloMessage(*_decode(body, max_bytes, content_type, content_encoding))


def _decode(body: bytes, max_bytes: int, content_type: str | None,
            content_encoding: str | None) -> tuple[Any, ...]:
    """``decode_message``'s fields in ``OsloMessage`` order."""
    if len(body) > max_bytes:
        raise BadNotification(RejectReason.TOO_LARGE,
                              f"body is {len(body)} bytes, over the {max_bytes}-byte limit")
    _check_transport(body, content_type, content_encoding)
    document = _loads(body, "body", RejectReason.NOT_JSON)
    if not isinstance(document, dict):
        raise BadNotification(RejectReason.NOT_OBJECT,
                              f"body is a JSON {_json_kind(document)}, not an object")
    if "oslo.message" in document or "oslo.version" in document:
        document = _unwrap_envelope(document)
    return _validate(document)


def _check_transport(body: bytes, content_type: str | None, content_encoding: str | None) -> None:
    problem = _properties_problem(content_type, content_encoding)
    if problem is not None:
        raise BadNotification(*problem)
    if body.startswith(_COMPRESSED_MAGIC):
        raise BadNotification(
            RejectReason.CONTENT_ENCODING,
            f"body is compressed (starts with {body[:4].hex(' ')}), not JSON text")


# A publisher sends the same two properties with every message: each pair is judged once.
@functools.lru_cache(maxsize=64)
def _properties_problem(content_type: str | None,
                        content_encoding: str | None) -> tuple[RejectReason, str] | None:
    """(reason, detail) when the AMQP content type or encoding rules the body out, else None."""
    if content_encoding and content_encoding.strip().lower() not in _UTF8_NAMES:
        return RejectReason.CONTENT_ENCODING, f"content encoding {content_encoding!r} is not utf-8"
    if content_type:
        media_type, _, params = content_type.partition(";")
        if "json" not in media_type.lower():
            return RejectReason.CONTENT_TYPE, f"content type {content_type!r} is not JSON"
        charset = params.strip().lower().removeprefix("charset=").strip('"')
        if params.strip() and charset not in _UTF8_NAMES:
            return RejectReason.CONTENT_ENCODING, f"content type {content_type!r} is not utf-8"
    return None


def _loads(data: bytes | str, what: str, reason: RejectReason) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if isinstance(data, bytes):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise BadNotification(RejectReason.NOT_UTF8, f"{what} is not valid UTF-8 at byte "
                                      f"{bad.start}: {bad.reason}") from None
        if "depth limit" in str(exc):
            raise BadNotification(RejectReason.TOO_DEEP,
                                  f"{what} nests deeper than {MAX_NESTING} levels") from None
        # orjson rejects NaN and Infinity too: they are not JSON, and Avro consumers choke on them.
        raise BadNotification(reason, f"{what} is not JSON: {exc}") from None


def _unwrap_envelope(envelope: dict[str, Any]) -> dict[str, Any]:
    version = envelope.get("oslo.version")
    # Shown in the detail: a short string as is; an array or object only by its kind (its repr
    # could be huge, or nest too deep to print).
    if "oslo.version" not in envelope:
        shown = "missing"
    elif isinstance(version, str):
        shown = repr(version[:64])
    else:
        shown = f"a JSON {_json_kind(version)}"
    if "oslo.message" not in envelope:
        raise BadNotification(RejectReason.ENVELOPE_WITHOUT_MESSAGE,
                              f"envelope (oslo.version {shown}) has no oslo.message")
    if not isinstance(version, str) or version not in SUPPORTED_OSLO_VERSIONS:  # [] is unhashable
        raise BadNotification(RejectReason.UNSUPPORTED_VERSION,
                              f"oslo.version {shown} is not supported "
                              f"(supported: {', '.join(sorted(SUPPORTED_OSLO_VERSIONS))})")
    inner = envelope["oslo.message"]
    if not isinstance(inner, str):
        raise BadNotification(RejectReason.WRONG_TYPE,
                              f"oslo.message is a JSON {_json_kind(inner)}, not a JSON string")
    message = _loads(inner, "oslo.message", RejectReason.INNER_NOT_JSON)
    if not isinstance(message, dict):
        raise BadNotification(RejectReason.NOT_OBJECT,
                              f"oslo.message is a JSON {_json_kind(message)}, not an object")
    return message


def _validate(message: dict[str, Any]) -> tuple[Any, ...]:
    try:
        message_id, publisher_id, event_type, priority, timestamp, payload = \
            _required_values(message)
    except KeyError:
        missing = next(key for key in _REQUIRED_FIELDS if key not in message)
        raise BadNotification(RejectReason.MISSING_FIELD, f"message has no {missing}") from None
    # One test for the common case; the first wrong one is named in _REQUIRED_STRINGS order.
    if not (type(message_id) is str and type(publisher_id) is str and type(event_type) is str
            and type(priority) is str and type(timestamp) is str):
        for key in _REQUIRED_STRINGS:
            if not isinstance(message[key], str):
                raise BadNotification(RejectReason.WRONG_TYPE,
                                      f"{key} is a JSON {_json_kind(message[key])}, not a string")
    if not event_type:
        raise BadNotification(RejectReason.WRONG_TYPE, "event_type is empty")
    if not message_id.strip():
        # Consumers drop repeats by message_id: every empty id would count as one notification.
        raise BadNotification(RejectReason.WRONG_TYPE, "message_id is empty")
    if not isinstance(payload, dict):
        raise BadNotification(RejectReason.WRONG_TYPE,
                              f"payload is a JSON {_json_kind(payload)}, not an object")
    context = _context_of(message)
    try:
        payload = redact(payload, max_depth=MAX_NESTING)
        context = redact(context, max_depth=MAX_NESTING)
    except TooDeep:
        raise BadNotification(RejectReason.TOO_DEEP,
                              f"message nests deeper than {MAX_NESTING} levels") from None
    return (message_id, publisher_id, event_type, priority.upper(), parse_timestamp(timestamp),
            payload, context)


def _context_of(message: dict[str, Any]) -> dict[str, Any]:
    """The ``_context_*`` keys without their prefix, secret-named ones (``auth_token``) dropped.

    oslo.messaging writes the same keys in the same order for every notification of a kind, so
    which keys form the context is worked out once per key layout (4x faster than per key).
    """
    layout = tuple(message)
    pairs = _CONTEXT_LAYOUTS.get(layout)
    if pairs is None:
        pairs = tuple((key, key[_PREFIX_LENGTH:]) for key in layout
                      if key[:_PREFIX_LENGTH] == CONTEXT_PREFIX and not is_secret_key(key))
        if len(_CONTEXT_LAYOUTS) < _CONTEXT_LAYOUTS_LIMIT:  # odd layouts must not grow it forever
            _CONTEXT_LAYOUTS[layout] = pairs
    return {short: message[key] for key, short in pairs}


def parse_timestamp(text: str) -> datetime:
    """oslo's ``str(utcnow())`` (``2026-11-25 20:33:26.679744``, UTC, no zone) or ISO 8601 with
    a zone -> aware UTC datetime. Raises ``BadNotification``."""
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            # replace(tzinfo=UTC), which costs ~0.7 us a call here (its keyword parsing)
            return datetime.combine(parsed.date(), parsed.time(), UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadNotification(RejectReason.BAD_TIMESTAMP,
                              f"timestamp {text[:64]!r} is not an ISO 8601 time") from None


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
