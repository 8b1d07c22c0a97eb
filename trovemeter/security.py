"""Kafka TLS/SASL and RabbitMQ TLS: settings -> the configuration of each client library.

One place turns ``CommonSettings``' security fields into what the clients take, so every client
in the project connects the same way (docs/security.md):

- ``kafka_client_config``: librdkafka keys (``bootstrap.servers`` + ``security.protocol``,
  ``sasl.*``, ``ssl.*``) for every confluent-kafka Producer, Consumer and AdminClient;
- ``faust_credentials``: the worker's ``broker_credentials`` (aiokafka underneath);
- ``rabbit_parameters``: pika connection parameters, with ``pika.SSLOptions`` for ``amqps://``.

``validate`` rejects combinations that would silently connect differently from what the
operator meant (a CA file with PLAINTEXT, SASL without a mechanism, TLS files with ``amqp://``).
Nothing here logs; secrets stay ``SecretStr`` until they are handed to a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    import pika

    from trovemeter.settings import CommonSettings

KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# Mechanisms that need nothing but a user name and a password (GSSAPI and OAUTHBEARER need
# more than these settings carry).
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def validate(s: CommonSettings) -> None:
    """Raise ``ValueError`` for security settings that contradict each other."""
    protocol = s.kafka_security_protocol
    sasl = protocol.startswith("SASL_")
    tls = protocol.endswith("SSL")
    sasl_given = [name for name in ("kafka_sasl_mechanism", "kafka_sasl_username",
                                    "kafka_sasl_password") if getattr(s, name) is not None]
    if sasl:
        missing = [name for name in ("kafka_sasl_mechanism", "kafka_sasl_username",
                                     "kafka_sasl_password") if getattr(s, name) is None]
        if missing:
            raise ValueError(f"kafka_security_protocol {protocol} needs "
                             + ", ".join(f"TROVEMETER_{m.upper()}" for m in missing))
    elif sasl_given:
        raise ValueError(", ".join(f"TROVEMETER_{m.upper()}" for m in sasl_given)
                         + f" given, but kafka_security_protocol is {protocol}: "
                         "use SASL_SSL (or SASL_PLAINTEXT)")
    ssl_given = [name for name in ("kafka_ssl_ca_location", "kafka_ssl_certificate_location",
                                   "kafka_ssl_key_location", "kafka_ssl_key_password")
                 if getattr(s, name) is not None]
    if ssl_given and not tls:
        raise ValueError(", ".join(f"TROVEMETER_{m.upper()}" for m in ssl_given)
                         + f" given, but kafka_security_protocol is {protocol}: use SSL or SASL_SSL")
    if (s.kafka_ssl_certificate_location is None) != (s.kafka_ssl_key_location is None):
        raise ValueError("TROVEMETER_KAFKA_SSL_CERTIFICATE_LOCATION and "
                         "TROVEMETER_KAFKA_SSL_KEY_LOCATION go together (client certificate)")
    if s.kafka_ssl_key_password is not None and s.kafka_ssl_key_location is None:
        raise ValueError("TROVEMETER_KAFKA_SSL_KEY_PASSWORD without TROVEMETER_KAFKA_SSL_KEY_LOCATION")

    scheme = urlsplit(s.rabbit_url.get_secret_value()).scheme.lower()
    if scheme not in ("amqp", "amqps"):
        raise ValueError(f"TROVEMETER_RABBIT_URL must start with amqp:// or amqps://, not {scheme}://")
    rabbit_tls = [name for name in ("rabbit_ssl_ca_location", "rabbit_ssl_certificate_location",
                                    "rabbit_ssl_key_location") if getattr(s, name) is not None]
    if rabbit_tls and scheme != "amqps":
        raise ValueError(", ".join(f"TROVEMETER_{m.upper()}" for m in rabbit_tls)
                         + " given, but TROVEMETER_RABBIT_URL is amqp://: use amqps:// for TLS")
    if (s.rabbit_ssl_certificate_location is None) != (s.rabbit_ssl_key_location is None):
        raise ValueError("TROVEMETER_RABBIT_SSL_CERTIFICATE_LOCATION and "
                         "TROVEMETER_RABBIT_SSL_KEY_LOCATION go together (client certificate)")


def kafka_security_config(s: CommonSettings) -> dict[str, Any]:
    """The librdkafka security keys only (no bootstrap)."""
    config: dict[str, Any] = {"security.protocol": s.kafka_security_protocol}
    if s.kafka_security_protocol.startswith("SASL_"):
        assert s.kafka_sasl_password is not None  # validate()
        config["sasl.mechanism"] = s.kafka_sasl_mechanism
        config["sasl.username"] = s.kafka_sasl_username
        config["sasl.password"] = s.kafka_sasl_password.get_secret_value()
    for key, value in (("ssl.ca.location", s.kafka_ssl_ca_location),
                       ("ssl.certificate.location", s.kafka_ssl_certificate_location),
                       ("ssl.key.location", s.kafka_ssl_key_location)):
        if value is not None:
            config[key] = value
    if s.kafka_ssl_key_password is not None:
        config["ssl.key.password"] = s.kafka_ssl_key_password.get_secret_value()
    return config


def kafka_client_config(s: CommonSettings) -> dict[str, Any]:
    """``bootstrap.servers`` and the security keys: the base of every confluent-kafka client."""
    return {"bootstrap.servers": s.kafka_bootstrap, **kafka_security_config(s)}


def client_config(kafka: str | Mapping[str, Any]) -> dict[str, Any]:
    """A client's base config from either a bootstrap string (plaintext, tests and tools) or
    ``kafka_client_config()`` (a copy: callers add their own keys)."""
    if isinstance(kafka, str):
        return {"bootstrap.servers": kafka}
    return dict(kafka)


def _ssl_context(ca: str | None, cert: str | None, key: str | None,
                 key_password: str | None = None) -> Any:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key, password=key_password)
    return context


def faust_credentials(s: CommonSettings) -> Any:
    """``broker_credentials`` for the Faust app: None for PLAINTEXT, else ``SSLCredentials`` or
    ``SASLCredentials`` (with an SSL context for SASL_SSL) built from the same settings."""
    protocol = s.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    import faust

    context = None
    if protocol.endswith("SSL"):
        context = _ssl_context(
            s.kafka_ssl_ca_location, s.kafka_ssl_certificate_location, s.kafka_ssl_key_location,
            s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    assert s.kafka_sasl_password is not None  # validate()
    credentials = faust.SASLCredentials(
        username=s.kafka_sasl_username, password=s.kafka_sasl_password.get_secret_value(),
        ssl_context=context, mechanism=s.kafka_sasl_mechanism)
    return credentials


def rabbit_parameters(s: CommonSettings, url: str | None = None) -> pika.URLParameters:
    """pika parameters for ``url`` (default ``TROVEMETER_RABBIT_URL``). ``amqps://`` gets
    ``pika.SSLOptions`` with a verifying context: the CA file (else the system's trust store),
    the client certificate and key when set, and the URL's host as server name."""
    import pika

    params = pika.URLParameters(url or s.rabbit_url.get_secret_value())
    if urlsplit(url or s.rabbit_url.get_secret_value()).scheme.lower() == "amqps":
        context = _ssl_context(s.rabbit_ssl_ca_location, s.rabbit_ssl_certificate_location,
                               s.rabbit_ssl_key_location)
        params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    return params
