"""Bodies the fuzz run (tests/integration/test_fuzz_shovel.py) found mishandled, pinned down.

- ``oslo.version`` as an array or object made the version check raise TypeError (unhashable),
  so the shovel dead-lettered it as ``other`` ("parser failed") instead of
  ``unsupported_version``; a deeply nested one could not even be shown in the detail.
- An empty ``message_id`` parsed: every consumer drops repeats by message id, so all empty ids
  would have collapsed into one notification.
"""

from __future__ import annotations

import json

import pytest

from trovemeter.envelope import BadNotification, parse_body
from trovemeter.model import RejectReason as R

MAX = 1_048_576
INNER = {"message_id": "6aea041f-f0fd-46df-a6f4-90bfd0dd59ad", "publisher_id": "api.h",
         "event_type": "dbaas.instance_create.start", "priority": "INFO",
         "payload": {"tenant_id": "t", "request_id": "req-1"},
         "timestamp": "2026-11-25 20:33:26.681256"}


def reject(body: bytes) -> BadNotification:
    with pytest.raises(BadNotification) as caught:
        parse_body(body, max_bytes=MAX)
    assert "\n" not in caught.value.detail and len(caught.value.detail) < 300
    return caught.value


@pytest.mark.parametrize(("version", "kind"), [
    (["2.0"], "array"), ({"v": "2.0"}, "object"), (2.0, "number"), (None, "null"),
])
def test_a_version_that_is_not_a_string_is_unsupported(version: object, kind: str) -> None:
    body = json.dumps({"oslo.version": version, "oslo.message": json.dumps(INNER)}).encode()
    error = reject(body)
    assert error.reason is R.UNSUPPORTED_VERSION, error
    if kind in ("array", "object"):
        assert f"a JSON {kind}" in error.detail


def test_a_deeply_nested_version_is_described_not_printed() -> None:
    deep = "[" * 900 + "]" * 900
    with_message = ('{"oslo.version": ' + deep + ', "oslo.message": "{}"}').encode()
    assert reject(with_message).reason is R.UNSUPPORTED_VERSION
    without = ('{"oslo.version": ' + deep + "}").encode()
    error = reject(without)
    assert error.reason is R.ENVELOPE_WITHOUT_MESSAGE and "a JSON array" in error.detail


def test_a_long_version_string_is_cut_in_the_detail() -> None:
    body = json.dumps({"oslo.version": "9" * 5000, "oslo.message": "{}"}).encode()
    assert len(reject(body).detail) < 200


@pytest.mark.parametrize("message_id", ["", " ", "\t "])
def test_an_empty_message_id_is_rejected(message_id: str) -> None:
    body = json.dumps({"oslo.version": "2.0",
                       "oslo.message": json.dumps(dict(INNER, message_id=message_id))}).encode()
    error = reject(body)
    assert error.reason is R.WRONG_TYPE and "message_id is empty" in error.detail
