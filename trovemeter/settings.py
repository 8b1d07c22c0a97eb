"""One typed settings object per process, read from TROVEMETER_* environment variables.

CLI flags override environment variables by passing keyword arguments to the
constructor (pydantic-settings gives init arguments the highest priority).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from trovemeter.redaction import mask_url_password

CommaList = Annotated[tuple[str, ...], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


class CommonSettings(BaseSettings):
    """Settings every trovemeter process shares."""

    # hide_input_in_errors: a validation error must not echo the input (URL and SASL passwords).
    model_config = SettingsConfigDict(env_prefix="TROVEMETER_", frozen=True, extra="ignore",
                                      hide_input_in_errors=True)

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    rabbit_url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"), description="RabbitMQ AMQP URL"
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent Schema Registry; unset = Avro single-object encoding"
    )
    web_host: str = Field("127.0.0.1", description="Address the web/metrics servers bind")
    web_port: int = Field(6066, description="Faust web server port")
    max_message_bytes: int = Field(
        1_048_576, description="Bodies larger than this are dead-lettered, not parsed"
    )
    log_level: str = Field("INFO")
    event_mapping: str | None = Field(
        None, description="YAML file of event definitions layered over the built-in mapping"
    )
    # Kafka and RabbitMQ security (docs/security.md); trovemeter.security applies them.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol of every Kafka client"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = Field(None, description="CA bundle (PEM) for the brokers")
    kafka_ssl_certificate_location: str | None = Field(None, description="client certificate (PEM)")
    kafka_ssl_key_location: str | None = Field(None, description="client private key (PEM)")
    kafka_ssl_key_password: SecretStr | None = None
    rabbit_ssl_ca_location: str | None = Field(None, description="CA bundle for amqps:// URLs")
    rabbit_ssl_certificate_location: str | None = None
    rabbit_ssl_key_location: str | None = None

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _security_consistent(self) -> CommonSettings:
        from trovemeter.security import validate

        validate(self)
        return self

    @property
    def rabbit_url_masked(self) -> str:
        return mask_url_password(self.rabbit_url.get_secret_value())

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka ``bootstrap.servers`` + security keys: the base of every Kafka client."""
        from trovemeter.security import kafka_client_config

        return kafka_client_config(self)

    def rabbit_parameters(self, url: str | None = None) -> Any:
        """pika connection parameters (TLS options for amqps://)."""
        from trovemeter.security import rabbit_parameters

        return rabbit_parameters(self, url)


class ShovelSettings(CommonSettings):
    """Settings of `trovemeter shovel` (RabbitMQ -> Kafka)."""

    exchanges: CommaList = Field(("trove", "openstack"), description="Topic exchanges to bind")
    routing_keys: CommaList = Field(("notifications.*",), description="Binding keys")
    queue: str = Field("trovemeter.notifications", description="Our own durable queue")
    exchange_durable: bool = Field(
        False, description="Declare exchanges durable (oslo.messaging default: not durable)"
    )
    prefetch: int = Field(2000, description="RabbitMQ prefetch window (unacked messages)")
    metrics_port: int = Field(9464, description="Prometheus metrics / health port of the shovel")

    _split = field_validator("exchanges", "routing_keys", mode="before")(_split_commas)


class WorkerSettings(CommonSettings):
    """Settings of the Faust worker (`trovemeter worker`, `faust -A streams.app worker`)."""

    app_id: str = Field("trovemeter", description="Faust app id (consumer group, table names)")
    store: str = Field("memory://", description="Faust table store (memory:// or rocksdb://)")
    data_dir: str = Field(".stack/faust", description="Faust data directory")
    topic_partitions: int = Field(4, description="Partitions of internal/changelog topics")
    usage_allowed_lateness_seconds: float = Field(
        600, ge=0, description="An hour's usage is emitted once event time passes its end + this"
    )
    usage_correction_retention_hours: int = Field(
        6, ge=1, description="Closed hours stay correctable this long (bounds per-resource state)"
    )
    usage_exists_tolerance_seconds: float = Field(
        60, ge=0, description="Exists audit vs lifecycle seconds beyond this is a discrepancy"
    )
    usage_idle_partition_seconds: float = Field(
        2.0, ge=0, description="A source partition without events for this long (and nothing "
        "left to read) follows the other partitions' event time (ticks) to close its hours"
    )
    usage_view_hours: int = Field(
        48, ge=1, description="Hours of per-tenant usage totals kept for /usage/tenants/"
    )
    usage_sweep_slice_ms: float = Field(
        1.0, gt=0, description="When an hour closes, the partition's keys are advanced in "
        "slices of about this much work between events (at least one key each)"
    )
    # --- topics (defaults: trovemeter.topics; overridden by benchmarks and isolated tests) ---
    source_topic: str = Field("trove.notifications", description="Notifications the worker reads")
    operations_topic: str = Field("trove.operations", description="Finished operations")
    errors_topic: str = Field("trove.errors", description="Failed operations (also counted)")
    resources_topic: str = Field("trove.resources", description="Resource state (compacted)")
    usage_topic: str = Field("trove.usage", description="Hourly usage records (compacted)")
    usage_discrepancies_topic: str = Field(
        "trove.usage.discrepancies", description="Exists audits that disagree with the lifecycle"
    )
    # --- pairing (trovemeter.pairing.PairingPolicy; all in event time) ---
    operation_timeouts: str = Field(
        "", description="Per-operation timeouts over the defaults, seconds: "
        "'create=7200,backup.create=21600' ('<resource type>.<operation>' or '<operation>')"
    )
    operation_default_timeout_seconds: float = Field(
        3600, ge=0, description="Timeout of an operation not named in the timeouts"
    )
    pairing_max_clock_skew_seconds: float = Field(
        300, ge=0, description="How far the start and end hosts' clocks may disagree"
    )
    pairing_allowed_lateness_seconds: float = Field(
        600, ge=0, description="How far behind the newest event another may arrive in order"
    )
    pairing_retention_seconds: float = Field(
        3600, ge=0, description="How long a reported operation absorbs redelivered copies"
    )
    tick_interval_seconds: float = Field(
        1.0, gt=0, description="How often each worker carries its event time to every "
        "pairing partition (expiry of quiet partitions)"
    )
    # --- the worker's write path (streams/outbox.py) ---
    forward_linger_ms: float = Field(
        5, ge=0, description="Phased events are forwarded to the pairing topic in batches "
        "collected for at most this long"
    )
    forward_max_batch: int = Field(500, ge=1, description="Notifications per forwarded batch")
    producer_linger_ms: float = Field(
        2, ge=0, description="librdkafka linger.ms of trove.operations, trove.errors and the "
        "forwards to the pairing topic (the operations' latency path)"
    )
    bulk_linger_ms: float = Field(
        25, ge=0, description="librdkafka linger.ms of trove.resources, trove.usage, "
        "trove.usage.discrepancies and the changelogs (fewer, larger requests)"
    )
    checkpoint_interval_seconds: float = Field(
        0.5, gt=0, description="How often table changes are written to their changelogs "
        "(after the outputs they caused are confirmed); also done before every offset commit"
    )
    commit_interval_seconds: float = Field(2.8, gt=0, description="Faust offset commit interval")
    session_timeout_seconds: float = Field(
        60, ge=6, description="Kafka group session timeout: how long a dead worker keeps its "
        "partitions before the others take them over"
    )
    # --- tables and views ---
    recent_operations_per_partition: int = Field(
        250, ge=1, description="Finished operations kept per partition for /operations/recent/"
    )
    error_hours_kept: int = Field(48, ge=1, description="Hourly error windows kept per key")
    web_canonical_url: str | None = Field(
        None, description="URL other workers use to reach this one's web server "
        "(default http://<web_host>:<web_port>)"
    )
    web_fanout_timeout_seconds: float = Field(
        3.0, gt=0, description="How long a view waits for the other workers' parts"
    )

    def timeouts(self) -> dict[str, float]:
        """``operation_timeouts`` parsed: {'create': 7200.0, 'backup.create': 21600.0}."""
        return self._parse_timeouts(self.operation_timeouts)

    @staticmethod
    def _parse_timeouts(text: str) -> dict[str, float]:
        parsed: dict[str, float] = {}
        for item in text.split(","):
            if not item.strip():
                continue
            name, sep, value = item.partition("=")
            try:
                seconds = float(value) if sep and name.strip() else -1.0
            except ValueError:
                seconds = -1.0
            if seconds < 0:
                raise ValueError(f"operation timeout {item.strip()!r}: expected NAME=SECONDS "
                                 "with SECONDS >= 0")
            parsed[name.strip()] = seconds
        return parsed

    @field_validator("operation_timeouts")
    @classmethod
    def _timeouts_valid(cls, value: str) -> str:
        cls._parse_timeouts(value)
        return value


class BillSettings(CommonSettings):
    """Settings of `trovemeter bill` (trove.usage -> invoice lines)."""

    bill_group_id: str = Field("trovemeter-bill", description="Kafka consumer group of the biller")
    bill_prices: str | None = Field(None, description="Price sheet YAML (etc/prices.example.yaml)")
