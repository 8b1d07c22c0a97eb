"""Secrets never leave the parser: secret-named keys are dropped, URL passwords masked.

Older oslo.messaging releases put a live Keystone token in ``_context_auth_token``; payloads can
carry connection URLs such as ``rabbit://user:password@host``. Everything that reaches Kafka
(canonical notifications, dead letters, logs) goes through this module first.
"""

from __future__ import annotations

import bz2
import gzip
import re
import zlib
from typing import Any

MASK = "***"

# A key is secret when its lower-cased name contains one of these. Broad on purpose: dropping a
# harmless key costs little, forwarding a credential to every Kafka consumer costs a lot.
SECRET_KEY_PARTS: tuple[str, ...] = (
    "token",
    "password",
    "passwd",
    "secret",
    "credential",
    "private_key",
    "api_key",
    "apikey",
    "access_key",
    "authorization",
    "cookie",
)

# scheme://authority: the authority stops at the path, query, fragment, whitespace or a quote.
_URL_AUTHORITY = re.compile(r"""([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#\s"'<>]+)""")


class TooDeep(ValueError):
    """A document nests deeper than the caller allows."""


# Key -> is it secret. Notification keys repeat endlessly, so each is classified once; the bound
# keeps a stream of random keys from growing the table.
_SECRET_KEYS: dict[str, bool] = {}
_SECRET_KEYS_LIMIT = 10_000
# Key layouts (a dict's keys in order) known to hold no secret-named key: payloads and contexts
# of one kind repeat theirs, so one set lookup replaces a lookup per key (~0.9 us a message
# with the loop below). Bounded like _SECRET_KEYS.
_CLEAN_KEY_LAYOUTS: set[tuple[Any, ...]] = set()
_CLEAN_KEY_LAYOUTS_LIMIT = 10_000
# Values that can hold nothing secret by themselves.
_SCALARS = (int, float, bool, type(None))


def is_secret_key(key: str) -> bool:
    """True when ``key`` names a secret: ``auth_token``, ``db_password``, ``X-Auth-Token``."""
    secret = _SECRET_KEYS.get(key)
    if secret is None:
        lowered = key.lower()
        secret = any(part in lowered for part in SECRET_KEY_PARTS)
        if len(_SECRET_KEYS) < _SECRET_KEYS_LIMIT:
            _SECRET_KEYS[key] = secret
    return secret


def _mask_authority(match: re.Match[str]) -> str:
    scheme, authority = match.group(1), match.group(2)
    if "@" not in authority:
        return match.group(0)
    # oslo transport URLs may list several hosts: rabbit://u1:p1@h1,u2:p2@h2/vhost
    hosts = []
    for host in authority.split(","):
        userinfo, at, address = host.rpartition("@")
        if at and ":" in userinfo:
            host = f"{userinfo.split(':', 1)[0]}:{MASK}@{address}"
        hosts.append(host)
    return scheme + ",".join(hosts)


def mask_url_password(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``.

    Works on a whole URL (``rabbit://u:pw@h:5672/`` -> ``rabbit://u:***@h:5672/``) and on URLs
    inside longer text such as an exception message.
    """
    if "://" not in text:
        return text
    return _URL_AUTHORITY.sub(_mask_authority, text)


def redact(value: Any, *, max_depth: int = 64) -> Any:
    """``value`` without secret-named keys (at any depth) and with URL passwords masked in every
    string. Raises ``TooDeep`` beyond ``max_depth`` nested containers.

    Returns ``value`` itself when there is nothing to remove (the common case: checking is
    cheaper than copying), else a redacted copy.
    """
    if _is_clean(value, max_depth):
        return value
    return _redacted_copy(value, max_depth)


def _is_clean(value: Any, depth_left: int) -> bool:
    """True when ``value`` holds no secret key and no URL; False also for types it does not
    know, which then take the careful path."""
    kind = type(value)
    if kind is dict:
        if depth_left <= 0:
            raise TooDeep("nested deeper than allowed")
        if tuple(value) not in _CLEAN_KEY_LAYOUTS and not _keys_clean(value):
            return False
        items: Any = value.values()
    elif kind is list:
        if depth_left <= 0:
            raise TooDeep("nested deeper than allowed")
        items = value
    elif kind is str:
        return "://" not in value
    else:
        return kind in _SCALARS
    for item in items:
        item_kind = type(item)
        if item_kind is str:
            if "://" in item:
                return False
        elif item_kind not in _SCALARS and not _is_clean(item, depth_left - 1):
            return False
    return True


def _keys_clean(value: dict[Any, Any]) -> bool:
    """True when every key of ``value`` is known not to be secret; then its key layout is
    remembered. False also for keys not yet classified: the copy classifies them."""
    if any(_SECRET_KEYS.get(key, True) for key in value):
        return False
    if len(_CLEAN_KEY_LAYOUTS) < _CLEAN_KEY_LAYOUTS_LIMIT:
        _CLEAN_KEY_LAYOUTS.add(tuple(value))
    return True


def _redacted_copy(value: Any, depth_left: int) -> Any:
    kind = type(value)
    if kind is str:
        return mask_url_password(value)
    if kind in _SCALARS:
        return value
    if depth_left <= 0 and isinstance(value, (dict, list, tuple)):
        raise TooDeep("nested deeper than allowed")
    if isinstance(value, dict):
        copy = {}
        for key, item in value.items():
            if isinstance(key, str) and is_secret_key(key):
                continue
            item_kind = type(item)
            if item_kind in _SCALARS or (item_kind is str and "://" not in item):
                copy[key] = item  # the common leaf: no call
            else:
                copy[key] = _redacted_copy(item, depth_left - 1)
        return copy
    if isinstance(value, (list, tuple)):
        return [_redacted_copy(item, depth_left - 1) for item in value]
    if isinstance(value, str):  # a str subclass
        return mask_url_password(value)
    return value


# Secret-named keys with a string value in raw JSON text, plain ("k": "v") or escaped inside a
# JSON string (\"k\": \"v\"), as oslo.messaging's v2 envelope nests the message.
_RAW_PLAIN_PAIR = re.compile(rb'("([^"\\]*)"\s*:\s*")((?:[^"\\]|\\.)*)(")')
_RAW_ESCAPED_PAIR = re.compile(rb'(\\"([^"\\]*)\\"\s*:\s*\\")((?:(?!\\").)*)(\\")', re.DOTALL)


def _mask_raw_pair(match: re.Match[bytes]) -> bytes:
    key = match.group(2).decode("utf-8", "replace")
    if not match.group(3) or not is_secret_key(key):
        return match.group(0)
    return match.group(1) + MASK.encode() + match.group(4)


# Compressed bodies (a client with kombu_compression, or garbage) would carry their secrets
# past the masking below: they are inspected decompressed, up to this much.
MAX_INSPECTED_BYTES = 16 * 1024 * 1024


def _gzip() -> Any:
    return zlib.decompressobj(16 + zlib.MAX_WBITS)


# magic -> (new decompressor, compress function)
_COMPRESSIONS: tuple[tuple[bytes, Any, Any], ...] = (
    (b"\x1f\x8b", _gzip, lambda data: gzip.compress(data, mtime=0)),
    (b"\x78\x01", zlib.decompressobj, zlib.compress),
    (b"\x78\x5e", zlib.decompressobj, zlib.compress),
    (b"\x78\x9c", zlib.decompressobj, zlib.compress),
    (b"\x78\xda", zlib.decompressobj, zlib.compress),
    (b"BZh", bz2.BZ2Decompressor, bz2.compress),
)


def _scrub_compressed(body: bytes) -> bytes | None:
    """A gzip, zlib or bzip2 body whose decompressed text holds a secret -> the masked text,
    compressed the same way (also when it is longer than ``MAX_INSPECTED_BYTES``: only the
    inspected part is kept). None when nothing had to change or the body does not decompress.
    (zstd and lz4 frames cannot be inspected with the standard library: kept as they are.)"""
    for magic, decompressor, compress in _COMPRESSIONS:
        if body.startswith(magic):
            break
    else:
        return None
    try:
        plain = decompressor().decompress(body, MAX_INSPECTED_BYTES + 1)
    except (OSError, EOFError, ValueError, zlib.error):
        return None  # not compressed after all (or broken from the start): treated as bytes
    cut = len(plain) > MAX_INSPECTED_BYTES
    plain = plain[:MAX_INSPECTED_BYTES]
    scrubbed = scrub_raw(plain)
    if scrubbed == plain and not cut:
        return None
    return bytes(compress(scrubbed))


def scrub_raw(body: bytes) -> bytes:
    """Best-effort masking of secrets in bytes that could not be parsed (for dead letters).

    Masks the string value of secret-named keys in JSON text, plain or escaped one level deep,
    and URL passwords; in a gzip, zlib or bzip2 body, in its decompressed text (the result is
    compressed again). Bytes that are not UTF-8 pass through unchanged.
    """
    if body[:1] in (b"\x1f", b"\x78", b"B"):
        compressed = _scrub_compressed(body)
        if compressed is not None:
            return compressed
    scrubbed = _RAW_PLAIN_PAIR.sub(_mask_raw_pair, body)
    scrubbed = _RAW_ESCAPED_PAIR.sub(_mask_raw_pair, scrubbed)
    if b"://" in scrubbed:
        text = scrubbed.decode("utf-8", "surrogateescape")
        scrubbed = mask_url_password(text).encode("utf-8", "surrogateescape")
    return scrubbed
