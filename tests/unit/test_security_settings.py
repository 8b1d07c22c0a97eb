"""Kafka TLS/SASL and RabbitMQ TLS settings: parsed from TROVEMETER_* variables, checked for
contradictions, and passed through to every client library (librdkafka, Faust/aiokafka, pika).

The clients are constructed for real (no broker needed: librdkafka and ssl load the key material
at construction), so a misspelt key or an unreadable certificate fails here, not in production.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from pydantic import ValidationError

from connectors.bill import consumer_config
from connectors.shovel import Shovel, producer_config
from trovemeter.security import client_config, faust_credentials, kafka_client_config
from trovemeter.settings import BillSettings, CommonSettings, ShovelSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
SASL_PASSWORD = "sasl-Secret-7f3a"
KEY_PASSWORD = "key-Secret-91bc"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a client certificate whose key is encrypted with KEY_PASSWORD (openssl)."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=trovemeter-test-ca")
    run("req", "-newkey", "rsa:2048", "-passout", f"pass:{KEY_PASSWORD}", "-keyout", "client.key",
        "-out", "client.csr", "-subj", "/CN=trovemeter-client")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.pem", "-days", "2")
    return {"ca": str(d / "ca.pem"), "cert": str(d / "client.pem"), "key": str(d / "client.key")}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("TROVEMETER_"):
            monkeypatch.delenv(name)
    return monkeypatch


def sasl_ssl_env(monkeypatch: pytest.MonkeyPatch, pki: dict[str, str]) -> None:
    for name, value in {
        "TROVEMETER_KAFKA_BOOTSTRAP": "kafka-1.example:9093,kafka-2.example:9093",
        "TROVEMETER_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",  # case-insensitive
        "TROVEMETER_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "TROVEMETER_KAFKA_SASL_USERNAME": "trovemeter",
        "TROVEMETER_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "TROVEMETER_KAFKA_SSL_CA_LOCATION": pki["ca"],
        "TROVEMETER_KAFKA_SSL_CERTIFICATE_LOCATION": pki["cert"],
        "TROVEMETER_KAFKA_SSL_KEY_LOCATION": pki["key"],
        "TROVEMETER_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
    }.items():
        monkeypatch.setenv(name, value)


# ------------------------------------------------------------------ parsing


def test_default_is_plaintext_on_the_local_stack(clean_env: pytest.MonkeyPatch) -> None:
    settings = CommonSettings()
    assert settings.kafka_client_config() == {"bootstrap.servers": "127.0.0.1:9092",
                                              "security.protocol": "PLAINTEXT"}
    assert faust_credentials(settings) is None
    params = settings.rabbit_parameters()
    assert params.ssl_options is None and params.port == 5672


def test_sasl_ssl_from_the_environment(clean_env: pytest.MonkeyPatch, pki: dict[str, str]) -> None:
    sasl_ssl_env(clean_env, pki)
    settings = ShovelSettings()
    assert settings.kafka_client_config() == {
        "bootstrap.servers": "kafka-1.example:9093,kafka-2.example:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "trovemeter",
        "sasl.password": SASL_PASSWORD,
        "ssl.ca.location": pki["ca"],
        "ssl.certificate.location": pki["cert"],
        "ssl.key.location": pki["key"],
        "ssl.key.password": KEY_PASSWORD,
    }
    # Secrets stay SecretStr: not in repr, str or a JSON dump of the settings.
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert SASL_PASSWORD not in text and KEY_PASSWORD not in text
    # Every settings class shares them.
    for cls in (WorkerSettings, BillSettings):
        assert cls().kafka_client_config() == settings.kafka_client_config()


def test_ssl_only_with_a_ca(clean_env: pytest.MonkeyPatch, pki: dict[str, str]) -> None:
    settings = CommonSettings(kafka_security_protocol="SSL", kafka_ssl_ca_location=pki["ca"])
    assert settings.kafka_client_config() == {"bootstrap.servers": "127.0.0.1:9092",
                                              "security.protocol": "SSL",
                                              "ssl.ca.location": pki["ca"]}


def test_sasl_plaintext(clean_env: pytest.MonkeyPatch) -> None:
    settings = CommonSettings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                              kafka_sasl_username="u", kafka_sasl_password="p")
    config = settings.kafka_client_config()
    assert config["security.protocol"] == "SASL_PLAINTEXT" and config["sasl.mechanism"] == "PLAIN"
    assert not any(key.startswith("ssl.") for key in config)


@pytest.mark.parametrize(("fields", "words"), [
    ({"kafka_security_protocol": "SASL_SSL"}, "needs TROVEMETER_KAFKA_SASL_MECHANISM"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN",
      "kafka_sasl_username": "u"}, "TROVEMETER_KAFKA_SASL_PASSWORD"),
    ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "kafka_security_protocol is PLAINTEXT"),
    ({"kafka_ssl_ca_location": "/ca.pem"}, "use SSL or SASL_SSL"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN",
      "kafka_sasl_username": "u", "kafka_sasl_password": "p", "kafka_ssl_ca_location": "/ca.pem"},
     "use SSL or SASL_SSL"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_certificate_location": "/c.pem"}, "go together"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_key_password": "x"}, "without"),
    ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI",
      "kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "kafka_sasl_mechanism"),
    ({"rabbit_ssl_ca_location": "/ca.pem"}, "use amqps:// for TLS"),
    ({"rabbit_url": "amqps://u:p@mq/", "rabbit_ssl_key_location": "/k.pem"}, "go together"),
    ({"rabbit_url": "http://u:p@mq/"}, "must start with amqp:// or amqps://"),
])
def test_contradictions_are_refused(clean_env: pytest.MonkeyPatch, fields: dict[str, str],
                                    words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CommonSettings(**fields)
    assert words in str(caught.value)
    # The error never echoes the input: it would carry the URL's and SASL's passwords.
    assert "p@mq" not in str(caught.value) and "input_value" not in str(caught.value)


# ------------------------------------------------------------------ librdkafka clients


def test_every_confluent_client_takes_the_security_keys(clean_env: pytest.MonkeyPatch,
                                                        pki: dict[str, str]) -> None:
    """librdkafka checks key names and loads the CA, certificate and (encrypted) key when the
    client is built: a wrong key name or password fails here."""
    sasl_ssl_env(clean_env, pki)
    settings = ShovelSettings()
    expected = settings.kafka_client_config()

    config = producer_config(settings, {"linger.ms": 50})
    assert {k: config[k] for k in expected} == expected
    assert config["enable.idempotence"] is True and config["linger.ms"] == 50
    Producer(dict(config, log_level=0))

    bill = consumer_config(settings.kafka_client_config(), "trovemeter-bill")
    assert {k: bill[k] for k in expected} == expected and bill["group.id"] == "trovemeter-bill"
    Consumer(dict(bill, log_level=0)).close()
    AdminClient(dict(client_config(settings.kafka_client_config()), log_level=0))

    from connectors.topic_reader import _consumer

    reader = _consumer(settings.kafka_client_config())  # trovemeter tail, the dashboard feed
    reader.close()

    shovel = Shovel(settings, parse_workers=0)
    producer = shovel._new_producer()  # the shovel's own construction path
    assert producer is not None


def test_a_wrong_key_password_fails_when_the_client_is_built(clean_env: pytest.MonkeyPatch,
                                                             pki: dict[str, str]) -> None:
    sasl_ssl_env(clean_env, pki)
    clean_env.setenv("TROVEMETER_KAFKA_SSL_KEY_PASSWORD", "wrong")
    from confluent_kafka import KafkaException

    with pytest.raises(KafkaException, match="ssl"):
        Producer(dict(kafka_client_config(CommonSettings()), log_level=0))


def test_invalid_settings_do_not_echo_secrets(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TROVEMETER_RABBIT_URL", "amqp://trove:hunter2-Secret@mq:5672/")
    clean_env.setenv("TROVEMETER_KAFKA_SASL_PASSWORD", "sasl-Secret-x")
    clean_env.setenv("TROVEMETER_PREFETCH", "many")
    with pytest.raises(ValidationError) as caught:
        ShovelSettings()
    assert "hunter2" not in str(caught.value) and "sasl-Secret" not in str(caught.value)
    clean_env.setenv("TROVEMETER_PREFETCH", "10")
    with pytest.raises(ValidationError) as caught:  # SASL password without SASL protocol
        ShovelSettings()
    assert "hunter2" not in str(caught.value) and "sasl-Secret" not in str(caught.value)
    assert "TROVEMETER_KAFKA_SASL_PASSWORD" in str(caught.value)


def test_client_config_accepts_a_bootstrap_string_or_a_config() -> None:
    assert client_config("h:9092") == {"bootstrap.servers": "h:9092"}
    base = {"bootstrap.servers": "h:9093", "security.protocol": "SSL"}
    copy = client_config(base)
    assert copy == base and copy is not base


# ------------------------------------------------------------------ Faust / aiokafka


def test_faust_credentials_sasl_ssl(clean_env: pytest.MonkeyPatch, pki: dict[str, str]) -> None:
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    sasl_ssl_env(clean_env, pki)
    credentials = faust_credentials(WorkerSettings())
    assert isinstance(credentials, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "trovemeter"
    assert auth["sasl_plain_password"] == SASL_PASSWORD
    context = auth["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert any(c["subject"] == ((("commonName", "trovemeter-test-ca"),),)
               for c in context.get_ca_certs())
    assert SASL_PASSWORD not in repr(credentials)


def test_faust_credentials_ssl_and_sasl_plaintext(clean_env: pytest.MonkeyPatch,
                                                  pki: dict[str, str]) -> None:
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    ssl_only = faust_credentials(CommonSettings(kafka_security_protocol="SSL",
                                                kafka_ssl_ca_location=pki["ca"]))
    assert isinstance(ssl_only, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(ssl_only)["security_protocol"] == "SSL"
    plain = faust_credentials(CommonSettings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u", kafka_sasl_password="p"))
    auth = credentials_to_aiokafka_auth(plain)
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None
    assert auth["sasl_mechanism"] == "PLAIN"


def test_the_worker_app_gets_the_credentials(pki: dict[str, str]) -> None:
    """streams.app reads WorkerSettings at import: a fresh interpreter with the variables set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROVEMETER_")}
    env.update(TROVEMETER_KAFKA_SECURITY_PROTOCOL="SASL_SSL", TROVEMETER_KAFKA_SASL_MECHANISM="PLAIN",
               TROVEMETER_KAFKA_SASL_USERNAME="worker", TROVEMETER_KAFKA_SASL_PASSWORD="pw",
               TROVEMETER_KAFKA_SSL_CA_LOCATION=pki["ca"])
    code = ("import json; from streams.app import app; "
            "from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth as a; "
            "c = a(app.conf.broker_credentials); "
            "print(json.dumps({**{k: c[k] for k in ('security_protocol', 'sasl_mechanism', "
            "'sasl_plain_username')}, 'web_bind': app.conf.web_bind}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "worker",
        "web_bind": "127.0.0.1"}  # Faust's own default binds every interface


def test_binding_elsewhere_is_one_explicit_setting_for_both_servers() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROVEMETER_")}
    code = "from streams.app import app; print(app.conf.web_bind)"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True, env=dict(env, TROVEMETER_WEB_HOST="0.0.0.0"))
    assert run.stdout.strip().splitlines()[-1] == "0.0.0.0"
    assert ShovelSettings(web_host="0.0.0.0").web_host == "0.0.0.0"
    assert ShovelSettings().web_host == WorkerSettings().web_host == "127.0.0.1"


# ------------------------------------------------------------------ RabbitMQ TLS


def test_amqps_gets_ssl_options_with_the_ca_and_client_certificate(
        clean_env: pytest.MonkeyPatch, pki: dict[str, str]) -> None:
    clean_env.setenv("TROVEMETER_RABBIT_URL", "amqps://trove:s3cret@mq.example/%2F")
    clean_env.setenv("TROVEMETER_RABBIT_SSL_CA_LOCATION", pki["ca"])
    # pika takes no key password: the RabbitMQ client key must be unencrypted.
    plain_key = Path(pki["key"]).with_name("client-plain.key")
    subprocess.run(["openssl", "rsa", "-in", pki["key"], "-passin", f"pass:{KEY_PASSWORD}",
                    "-out", str(plain_key)], check=True, capture_output=True)
    clean_env.setenv("TROVEMETER_RABBIT_SSL_CERTIFICATE_LOCATION", pki["cert"])
    clean_env.setenv("TROVEMETER_RABBIT_SSL_KEY_LOCATION", str(plain_key))
    settings = ShovelSettings()
    params = settings.rabbit_parameters()
    assert params.host == "mq.example" and params.port == 5671  # amqps default port
    assert params.credentials.username == "trove"
    options = params.ssl_options
    assert options is not None and options.server_hostname == "mq.example"
    assert options.context.verify_mode == ssl.CERT_REQUIRED and options.context.check_hostname
    assert any(c["subject"] == ((("commonName", "trovemeter-test-ca"),),)
               for c in options.context.get_ca_certs())
    assert settings.rabbit_url_masked == "amqps://trove:***@mq.example/%2F"


def test_amqps_without_a_ca_uses_the_system_trust_store(clean_env: pytest.MonkeyPatch) -> None:
    params = CommonSettings(rabbit_url="amqps://u:p@mq.example:5999/").rabbit_parameters()
    assert params.port == 5999 and params.ssl_options is not None
    assert params.ssl_options.context.verify_mode == ssl.CERT_REQUIRED


def test_the_simulator_connects_with_the_parameters_it_is_given(
        clean_env: pytest.MonkeyPatch, pki: dict[str, str]) -> None:
    import pika

    from connectors import simulator

    seen = []

    class Captured(Exception):
        pass

    def fake_connection(params: object, **_callbacks: object) -> None:
        seen.append(params)
        raise Captured

    clean_env.setattr(pika, "SelectConnection", fake_connection)
    params = CommonSettings(rabbit_url="amqps://u:p@mq.example/",
                            rabbit_ssl_ca_location=pki["ca"]).rabbit_parameters()
    with pytest.raises(Captured):
        simulator.publish([], params, ["trove"])
    assert seen == [params] and seen[0].ssl_options is params.ssl_options
    with pytest.raises(Captured):
        simulator.publish([], "amqp://guest:guest@127.0.0.1:5672/", ["trove"])
    assert seen[1].ssl_options is None
