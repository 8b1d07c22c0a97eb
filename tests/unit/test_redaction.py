"""No secret-named key survives at any depth; URL passwords are masked wherever they appear."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trovemeter.redaction import (
    SECRET_KEY_PARTS,
    TooDeep,
    is_secret_key,
    mask_url_password,
    _redacted_copy,
    redact,
    scrub_raw,
)
from trovemeter.settings import CommonSettings

SECRET_KEYS = st.builds(
    lambda prefix, part, suffix, upper: (prefix + part + suffix).upper() if upper
    else prefix + part + suffix,
    st.sampled_from(["", "_context_", "db_", "os-"]), st.sampled_from(SECRET_KEY_PARTS),
    st.sampled_from(["", "_id", "_info", "s"]), st.booleans(),
)
PLAIN_KEYS = st.text(alphabet="abcdefghijklmnopqrsuvwxyz_", min_size=1, max_size=12).filter(
    lambda key: not is_secret_key(key))
KEYS = st.one_of(SECRET_KEYS, PLAIN_KEYS)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(KEYS, children, max_size=5)),
    max_leaves=30,
)


def keys_at_any_depth(value: object) -> list[str]:
    if isinstance(value, dict):
        return [*value, *(k for item in value.values() for k in keys_at_any_depth(item))]
    if isinstance(value, list):
        return [k for item in value for k in keys_at_any_depth(item)]
    return []


@settings(max_examples=150, deadline=None)
@given(DOCUMENTS)
def test_no_secret_named_key_survives_at_any_depth(document):
    assert not any(is_secret_key(key) for key in keys_at_any_depth(redact(document)))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(PLAIN_KEYS,
                      SCALARS.filter(lambda v: not isinstance(v, str) or "://" not in v)))
def test_documents_without_secrets_are_unchanged(document):
    assert redact(document) == document


CREDENTIAL_URLS = st.builds("rabbit://{}:{}@{}:5672/".format, st.sampled_from(["guest", "nova"]),
                            st.sampled_from(["pw", "s3cr3t"]), st.sampled_from(["h1", "h2"]))
# Few keys and values, so that documents share key layouts and the same keys hold clean values
# in one document and secrets in the next.
SHARED_KEYS = st.sampled_from(["name", "id", "url", "auth_token", "db_password", "roles"])
LEAVES = st.one_of(st.none(), st.integers(), st.sampled_from(["x", "http://h/x"]), CREDENTIAL_URLS)
SHARED_LAYOUT_DOCUMENTS = st.recursive(
    LEAVES,
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(SHARED_KEYS, children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(SHARED_LAYOUT_DOCUMENTS, min_size=1, max_size=6))
def test_remembered_clean_layouts_never_let_a_secret_through(documents):
    # redact's check remembers key layouts it found clean; whatever it has seen before, each
    # document comes out as the careful copy makes it, twice over (the second time with every
    # key classified and every clean layout of the batch remembered), and then a document
    # without secrets or URLs is returned as it is.
    for second_pass in (False, True):
        for document in documents:
            redacted = redact(document)
            assert redacted == _redacted_copy(document, 64)
            assert not any(is_secret_key(key) for key in keys_at_any_depth(redacted))
            assert ":pw@" not in json.dumps(redacted) and ":s3cr3t@" not in json.dumps(redacted)
            if second_pass and redacted == document and "://" not in json.dumps(document):
                assert redacted is document


@pytest.mark.parametrize("key", ["_context_auth_token", "auth_token", "password", "Password",
                                 "admin_password", "secret", "client_secret", "token",
                                 "X-Auth-Token", "credentials", "private_key"])
def test_secret_key_names(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["tenant_id", "user_id", "request_id", "name", "instance_id",
                                 "_context_user_identity", "roles"])
def test_ordinary_key_names(key):
    assert not is_secret_key(key)


USERS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=10)
PASSWORDS = st.text(alphabet=string.ascii_letters + string.digits + "!$%&*+=-_~",
                    min_size=1, max_size=16)
HOSTS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["rabbit", "amqp", "mysql+pymysql", "https"]), USERS, PASSWORDS, HOSTS,
       st.sampled_from(["", ":5672", ":3306"]), st.sampled_from(["", "/", "/vhost?x=1"]),
       st.text(max_size=10).filter(lambda t: "://" not in t))
def test_url_passwords_are_masked_inside_text(scheme, user, password, host, port, path, prefix):
    text = f"{prefix} connect {scheme}://{user}:{password}@{host}{port}{path} failed"
    masked = mask_url_password(text)
    assert masked == f"{prefix} connect {scheme}://{user}:***@{host}{port}{path} failed"


@pytest.mark.parametrize("url, expected", [
    ("rabbit://user:pw@host", "rabbit://user:***@host"),
    ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
    ("rabbit://u1:p1@h1:5672,u2:p2@h2:5672/trove", "rabbit://u1:***@h1:5672,u2:***@h2:5672/trove"),
    ("mysql://root@db/trove", "mysql://root@db/trove"),  # no password
    ("http://host:8080/path@x", "http://host:8080/path@x"),  # port, not a password
    ("no url here", "no url here"),
])
def test_mask_url_password(url, expected):
    assert mask_url_password(url) == expected


def test_redact_masks_urls_in_nested_strings():
    document = {"config": [{"url": "rabbit://trove:hunter2@mq:5672/"}], "n": 1}
    assert redact(document) == {"config": [{"url": "rabbit://trove:***@mq:5672/"}], "n": 1}


def test_redact_refuses_deep_documents():
    deep: object = 1
    for _ in range(10):
        deep = [deep]
    with pytest.raises(TooDeep):
        redact(deep, max_depth=5)


def test_settings_use_the_one_implementation():
    settings_ = CommonSettings(rabbit_url="amqp://trove:hunter2@mq:5672/")
    assert settings_.rabbit_url_masked == "amqp://trove:***@mq:5672/"


def test_scrub_raw_masks_secrets_in_unparseable_bodies():
    inner = json.dumps({"_context_auth_token": "gAAAA-live-token", "x": "amqp://u:pw@h/"})
    body = (json.dumps({"oslo.version": "2.0", "oslo.message": inner, "password": "pw2"})
            + "{truncated").encode()
    scrubbed = scrub_raw(body)
    for secret in (b"gAAAA-live-token", b"pw2", b":pw@"):
        assert secret not in scrubbed
    assert b'\\"_context_auth_token\\": \\"***\\"' in scrubbed
    assert scrub_raw(b"\xff\xfe not utf-8 token") == b"\xff\xfe not utf-8 token"
