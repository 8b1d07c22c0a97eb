"""Every way a body can be wrong: a typed BadNotification with a one-line reason, never a bare
exception."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trovemeter.codec import decode, encode
from trovemeter.envelope import MAX_NESTING, BadNotification, parse_body
from trovemeter.model import RejectReason as R

MAX = 1_048_576
GOOD_INNER = {
    "message_id": "6aea041f-f0fd-46df-a6f4-90bfd0dd59ad",
    "publisher_id": "api.trove-api-01",
    "event_type": "dbaas.instance_create.start",
    "priority": "INFO",
    "payload": {"tenant_id": "t", "request_id": "req-1"},
    "timestamp": "2026-11-25 20:33:26.681256",
}


def v2(inner: object, version: object = "2.0") -> bytes:
    return json.dumps({"oslo.version": version, "oslo.message": json.dumps(inner)}).encode()


def v1(inner: object) -> bytes:
    return json.dumps(inner).encode()


def inner_with(**changes: object) -> dict:
    return {**GOOD_INNER, **changes}


def inner_without(key: str) -> dict:
    return {k: v for k, v in GOOD_INNER.items() if k != key}


def rejects(body: bytes, reason: R, *, words: str, **kwargs: object) -> BadNotification:
    with pytest.raises(BadNotification) as caught:
        parse_body(body, max_bytes=kwargs.pop("max_bytes", MAX), **kwargs)  # type: ignore[arg-type]
    error = caught.value
    assert error.reason is reason, error
    assert words in error.detail, error.detail
    assert "\n" not in error.detail and len(error.detail) < 300
    return error


def test_the_good_bodies_parse():
    assert parse_body(v2(GOOD_INNER), max_bytes=MAX).event_type == GOOD_INNER["event_type"]
    assert parse_body(v1(GOOD_INNER), max_bytes=MAX).event_type == GOOD_INNER["event_type"]


def test_over_the_size_limit():
    body = v2(GOOD_INNER)
    limit = len(body) - 1
    rejects(body, R.TOO_LARGE, words=f"over the {limit}-byte limit", max_bytes=limit)
    assert parse_body(body, max_bytes=len(body)).message_id == GOOD_INNER["message_id"]


def test_not_json():
    rejects(b"{\"oslo.version\": ", R.NOT_JSON, words="body is not JSON")


def test_empty_body():
    rejects(b"", R.NOT_JSON, words="body is not JSON")


def test_trailing_garbage_after_the_document():
    rejects(v1(GOOD_INNER) + b"}", R.NOT_JSON, words="body is not JSON")


def test_invalid_utf8():
    rejects(b'{"event_type": "\xff\xfe"}', R.NOT_UTF8, words="not valid UTF-8 at byte 16")


def test_utf8_bom_is_not_guessed_away():
    rejects(b"\xef\xbb\xbf" + v1(GOOD_INNER), R.NOT_JSON, words="not JSON")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant):
    body = v1(GOOD_INNER).replace(b'"req-1"', constant.encode())
    rejects(body, R.NOT_JSON, words="not JSON")


def test_nan_inside_the_envelope_message():
    inner = json.dumps(GOOD_INNER).replace('"req-1"', "NaN")
    body = json.dumps({"oslo.version": "2.0", "oslo.message": inner}).encode()
    rejects(body, R.INNER_NOT_JSON, words="oslo.message is not JSON")


def test_deep_nesting_beyond_the_parser():
    deep = b"[" * 5000 + b"]" * 5000
    rejects(b'{"payload": ' + deep + b"}", R.TOO_DEEP, words="deeper than")


def test_deep_nesting_in_the_payload():
    payload: object = "leaf"
    for _ in range(MAX_NESTING + 1):
        payload = {"a": payload}
    rejects(v2(inner_with(payload=payload)), R.TOO_DEEP, words=f"deeper than {MAX_NESTING}")


@pytest.mark.parametrize("body, kind", [(b"[1, 2]", "array"), (b'"text"', "string"),
                                        (b"42", "number"), (b"null", "null")])
def test_body_not_an_object(body, kind):
    rejects(body, R.NOT_OBJECT, words=f"body is a JSON {kind}, not an object")


def test_envelope_without_message():
    rejects(b'{"oslo.version": "2.0"}', R.ENVELOPE_WITHOUT_MESSAGE, words="has no oslo.message")


def test_inner_message_not_json():
    body = json.dumps({"oslo.version": "2.0", "oslo.message": "{not json"}).encode()
    rejects(body, R.INNER_NOT_JSON, words="oslo.message is not JSON")


def test_inner_message_not_an_object():
    body = json.dumps({"oslo.version": "2.0", "oslo.message": "[1]"}).encode()
    rejects(body, R.NOT_OBJECT, words="oslo.message is a JSON array")


def test_oslo_message_not_a_string():
    body = json.dumps({"oslo.version": "2.0", "oslo.message": GOOD_INNER}).encode()
    rejects(body, R.WRONG_TYPE, words="oslo.message is a JSON object, not a JSON string")


@pytest.mark.parametrize("version", ["1.0", "3.0", 2.0, None])
def test_unsupported_oslo_version(version):
    rejects(v2(GOOD_INNER, version), R.UNSUPPORTED_VERSION, words="is not supported")


def test_envelope_message_without_version():
    body = json.dumps({"oslo.message": json.dumps(GOOD_INNER)}).encode()
    rejects(body, R.UNSUPPORTED_VERSION, words="oslo.version missing")


@pytest.mark.parametrize("key", ["event_type", "payload", "timestamp", "message_id",
                                 "publisher_id", "priority"])
def test_missing_field(key):
    rejects(v2(inner_without(key)), R.MISSING_FIELD, words=f"message has no {key}")


@pytest.mark.parametrize("key, value, kind", [
    ("event_type", 7, "number"), ("timestamp", 1732566806, "number"),
    ("message_id", None, "null"), ("priority", ["INFO"], "array"),
    ("publisher_id", {"host": "x"}, "object"),
])
def test_wrong_field_type(key, value, kind):
    rejects(v2(inner_with(**{key: value})), R.WRONG_TYPE, words=f"{key} is a JSON {kind}")


@pytest.mark.parametrize("payload, kind", [("text", "string"), ([1], "array"), (None, "null")])
def test_payload_not_an_object(payload, kind):
    rejects(v2(inner_with(payload=payload)), R.WRONG_TYPE, words=f"payload is a JSON {kind}")


def test_empty_event_type():
    rejects(v1(inner_with(event_type="")), R.WRONG_TYPE, words="event_type is empty")


@pytest.mark.parametrize("timestamp", ["yesterday", "2026-13-01 00:00:00", "",
                                       "0001-01-01T00:00:00+01:00"])
def test_bad_timestamp(timestamp):
    rejects(v2(inner_with(timestamp=timestamp)), R.BAD_TIMESTAMP, words="not an ISO 8601 time")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "latin-1", "utf-16"])
def test_content_encoding_other_than_utf8(encoding):
    rejects(v2(GOOD_INNER), R.CONTENT_ENCODING, words=f"content encoding '{encoding}' is not utf-8",
            content_encoding=encoding)


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress])
def test_compressed_body_without_declared_encoding(compress):
    rejects(compress(v2(GOOD_INNER)), R.CONTENT_ENCODING, words="body is compressed",
            content_encoding="utf-8")


def test_content_type_not_json():
    rejects(v2(GOOD_INNER), R.CONTENT_TYPE, words="is not JSON",
            content_type="application/x-msgpack")


def test_json_content_type_with_another_charset():
    rejects(v2(GOOD_INNER), R.CONTENT_ENCODING, words="is not utf-8",
            content_type="application/json; charset=iso-8859-1")


def test_utf8_declarations_are_accepted():
    parsed = parse_body(v2(GOOD_INNER), max_bytes=MAX, content_encoding="UTF-8",
                        content_type="application/json; charset=utf-8")
    assert parsed.message_id == GOOD_INNER["message_id"]


def test_lone_surrogate_escape_is_rejected():
    body = v1(GOOD_INNER).replace(b'"req-1"', b'"\\ud800"')
    rejects(body, R.NOT_JSON, words="not JSON")


# --- whatever arrives: a Notification that encodes, or a BadNotification; nothing else --------

JSON_ANY = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False,
                                                                 allow_infinity=False),
              st.text(max_size=12)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=10,
)
FIELD_VALUES = {
    "message_id": st.one_of(st.text(max_size=8), JSON_ANY),
    "publisher_id": st.one_of(st.text(max_size=8), JSON_ANY),
    "event_type": st.one_of(st.sampled_from(["dbaas.instance_create.end", "trove.instance.exists",
                                             "cluster.create.start", "x"]), JSON_ANY),
    "priority": st.one_of(st.sampled_from(["INFO", "error"]), JSON_ANY),
    "payload": st.one_of(st.dictionaries(st.sampled_from(["instance_id", "tenant_id", "exception",
                                                          "message", "auth_token", "id"]),
                                         JSON_ANY, max_size=4), JSON_ANY),
    "timestamp": st.one_of(st.sampled_from(["2026-11-25 20:33:26.681256", "2026-11-25"]),
                           st.text(max_size=30), JSON_ANY),
    "_context_auth_token": JSON_ANY,
    "_context_request_id": JSON_ANY,
}
MESSAGES = st.fixed_dictionaries({}, optional=FIELD_VALUES)


def parses_or_rejects(body: bytes) -> None:
    try:
        notification = parse_body(body, max_bytes=MAX)
    except BadNotification as error:
        assert isinstance(error.reason, R) and "\n" not in error.detail
        return
    assert decode(encode(notification)) == notification
    assert "auth_token" not in json.dumps([notification.payload, notification.context])


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes(body):
    parses_or_rejects(body)


@settings(max_examples=150, deadline=None)
@given(MESSAGES, st.sampled_from(["v1", "v2", "v2-raw"]))
def test_arbitrary_messages(message, wrapping):
    if wrapping == "v1":
        body = v1(message)
    elif wrapping == "v2":
        body = v2(message)
    else:  # oslo.message not stringified
        body = json.dumps({"oslo.version": "2.0", "oslo.message": message}).encode()
    parses_or_rejects(body)
