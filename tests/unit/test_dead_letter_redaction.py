"""Dead letters carry no secrets, found by tests/integration/test_secrets.py: a secret inside a
gzip/zlib/bzip2 body reached the DLQ as is (now masked in the decompressed text, compressed
again), and so did a secret-named AMQP header (now masked)."""

from __future__ import annotations

import bz2
import gzip
import json
import zlib
from collections.abc import Callable

import pytest

from trovemeter.model import DeadLetter, RejectReason
from trovemeter.redaction import MAX_INSPECTED_BYTES, scrub_raw

TOKEN = "gAAAAABtoken-7c1e"
BODY = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps({
    "message_id": "m", "_context_auth_token": TOKEN,
    "payload": {"transport_url": "rabbit://trove:pw-9a2f@mq:5672/", "name": "db"}})}).encode()

CODECS: list[tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = [
    ("gzip", gzip.compress, gzip.decompress),
    ("zlib", zlib.compress, zlib.decompress),
    ("zlib-9", lambda b: zlib.compress(b, 9), zlib.decompress),
    ("zlib-1", lambda b: zlib.compress(b, 1), zlib.decompress),
    ("bzip2", bz2.compress, bz2.decompress),
]


@pytest.mark.parametrize(("name", "compress", "decompress"), CODECS)
def test_secrets_inside_compressed_bodies_are_masked(
        name: str, compress: Callable[[bytes], bytes], decompress: Callable[[bytes], bytes]) -> None:
    scrubbed = scrub_raw(compress(BODY))
    plain = decompress(scrubbed)  # still a valid stream of the same kind
    assert TOKEN.encode() not in plain and b"pw-9a2f" not in plain
    assert b'\\"_context_auth_token\\": \\"***\\"' in plain and b"rabbit://trove:***@mq" in plain


def test_a_clean_compressed_body_is_kept_byte_for_byte() -> None:
    clean = gzip.compress(json.dumps({"message_id": "m", "payload": {"a": 1}}).encode())
    assert scrub_raw(clean) == clean


def test_a_truncated_stream_is_inspected_as_far_as_it_goes() -> None:
    truncated = gzip.compress(BODY)[:-12]
    plain = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(scrub_raw(truncated))
    assert TOKEN.encode() not in plain and plain


def test_bytes_that_only_look_compressed_pass_through() -> None:
    for fake in (b"\x1f\x8b not gzip", b"x\x9c\x00\x01junk", b"BZh9 nope"):
        assert scrub_raw(fake) == fake


def test_a_bomb_is_cut_at_the_inspection_limit() -> None:
    bomb = gzip.compress(b"0" * (MAX_INSPECTED_BYTES + 1000))
    scrubbed = scrub_raw(bomb)
    assert len(gzip.decompress(scrubbed)) == MAX_INSPECTED_BYTES  # only what was inspected


def test_the_dead_letter_says_it_was_redacted_and_keeps_the_original_digest() -> None:
    body = gzip.compress(BODY)
    letter = DeadLetter.from_delivery(body, RejectReason.CONTENT_ENCODING, "gzip",
                                      exchange="trove", routing_key="notifications.info")
    assert letter.body_redacted and letter.body != body
    assert TOKEN.encode() not in gzip.decompress(letter.body)
    assert letter.body_length == len(body)
    import hashlib

    assert letter.body_sha256 == hashlib.sha256(body).hexdigest()


def test_secret_amqp_headers_and_url_passwords_in_properties_are_masked() -> None:
    """A dead letter keeps the delivery's AMQP properties (found by test_secrets.py: an
    ``x-token`` header reached the DLQ as is)."""
    import pika

    from connectors.shovel import _amqp_properties

    props = _amqp_properties(pika.BasicProperties(
        content_type="application/json", content_encoding="latin-1", app_id="trove",
        reply_to="amqp://u:pw-reply@mq/", headers={
            "x-token": TOKEN, "X-Auth-Token": TOKEN, "x-trace": "abc",
            "x-nested": {"password": TOKEN, "ok": 1}, "x-url": "rabbit://u:pw-hdr@mq/"}))
    assert props.headers["x-token"] == props.headers["X-Auth-Token"] == "***"
    assert props.headers["x-trace"] == "abc"
    assert TOKEN not in props.headers["x-nested"] and '"ok": 1' in props.headers["x-nested"]
    assert props.headers["x-url"] == "rabbit://u:***@mq/"
    assert props.reply_to == "amqp://u:***@mq/" and props.app_id == "trove"
    assert props.content_encoding == "latin-1"
