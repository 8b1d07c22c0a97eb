"""The canonical event model: every Trove notification, whatever its family, becomes one
``Notification``. Records that later stages emit have their own models here too; each maps to
exactly one schema in ``avro/`` (see ``trovemeter.codec``).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from trovemeter.redaction import scrub_raw


class ResourceType(str, enum.Enum):
    INSTANCE = "instance"
    CLUSTER = "cluster"
    BACKUP = "backup"
    DATABASE = "database"
    USER = "user"
    CONFIGURATION = "configuration"
    QUOTA = "quota"
    UNKNOWN = "unknown"


class Phase(str, enum.Enum):
    START = "start"
    END = "end"
    ERROR = "error"
    # Usage audits (trove.instance.exists), usage actions (trove.instance.create, ...) and
    # dbaas.quota have no start/end: they state a fact at one moment.
    POINT = "point"


@dataclass(frozen=True, slots=True)
class Notification:
    """One Trove notification, normalised. Schema: avro/notification.avsc."""

    message_id: str
    event_type: str  # exactly as Trove sent it
    resource_type: ResourceType
    operation: str  # create, delete, resize_flavor, resize_volume, restart, reboot, exists, ...
    phase: Phase
    publisher_id: str
    priority: str  # upper case as on the wire: INFO, WARN, ERROR, ...
    occurred_at: datetime  # UTC, timezone-aware
    request_id: str | None = None
    resource_id: str | None = None
    tenant_id: str | None = None
    user_id: str | None = None
    error_message: str | None = None
    exception_class: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)  # secrets removed
    # The request context oslo.messaging flattened into `_context_*` keys, without the prefix and
    # without secrets: roles, global_request_id, is_admin, ... (empty when Trove passed a dict).
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def kafka_key(self) -> str | None:
        """Records of one resource share a key, so they stay ordered in one partition."""
        return self.resource_id or self.request_id


class RejectReason(str, enum.Enum):
    """Why a message did not become a record: a metric label and the dead letter's reason."""

    TOO_LARGE = "too_large"
    CONTENT_ENCODING = "content_encoding"  # declared encoding other than UTF-8, or compressed
    CONTENT_TYPE = "content_type"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    TOO_DEEP = "too_deep"
    NOT_OBJECT = "not_object"
    ENVELOPE_WITHOUT_MESSAGE = "envelope_without_message"
    INNER_NOT_JSON = "inner_not_json"
    UNSUPPORTED_VERSION = "unsupported_version"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_TIMESTAMP = "bad_timestamp"
    ENCODE_FAILED = "encode_failed"  # parsed, but the Avro record could not be written
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class AmqpProperties:
    """The AMQP basic properties of a delivery, as RabbitMQ handed them over."""

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # values rendered as text
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None  # seconds since the epoch, as AMQP carries it
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None

    @classmethod
    def from_object(cls, props: Any) -> AmqpProperties:
        """Copy from any object with AMQP property attributes (pika's ``BasicProperties``)."""
        headers = getattr(props, "headers", None) or {}
        values = {
            name: getattr(props, name, None)
            for name in cls.__dataclass_fields__
            if name != "headers"
        }
        return cls(headers={str(k): _header_text(v) for k, v in headers.items()}, **values)


def _header_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return json.dumps(value, default=str)  # AMQP tables and arrays nest


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery that could not become a record. Schema: avro/dead_letter.avsc."""

    reason: RejectReason
    detail: str  # one line naming the problem
    body: bytes  # the delivered bytes, secret values masked, possibly truncated
    body_length: int  # length of the delivered body, before masking or truncation
    body_sha256: str  # hex digest of the delivered body, to match it against other copies
    body_redacted: bool  # True when secret values in `body` were masked
    exchange: str
    routing_key: str
    received_at: datetime  # UTC, timezone-aware
    redelivered: bool = False
    properties: AmqpProperties = field(default_factory=AmqpProperties)

    @classmethod
    def from_delivery(
        cls,
        body: bytes,
        reason: RejectReason,
        detail: str,
        *,
        exchange: str,
        routing_key: str,
        properties: AmqpProperties | None = None,
        redelivered: bool = False,
        received_at: datetime | None = None,
        max_body_bytes: int | None = None,
    ) -> DeadLetter:
        """Build a dead letter from a raw delivery: masks secrets in the body and truncates it
        to ``max_body_bytes`` so an oversized body still fits on the dead-letter topic."""
        kept = body if max_body_bytes is None else body[:max_body_bytes]
        scrubbed = scrub_raw(kept)
        return cls(
            reason=reason,
            detail=detail,
            body=scrubbed,
            body_length=len(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            body_redacted=scrubbed != kept,
            exchange=exchange,
            routing_key=routing_key,
            received_at=received_at or datetime.now(UTC),
            redelivered=redelivered,
            properties=properties or AmqpProperties(),
        )


class MeterType(str, enum.Enum):
    """Ceilometer's sample types."""

    CUMULATIVE = "cumulative"
    DELTA = "delta"
    GAUGE = "gauge"


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Metered usage of one resource by one tenant over one window. Schema: avro/usage.avsc.

    Field names follow Ceilometer's sample where they overlap (meter = counter_name,
    meter_type = counter_type, unit = counter_unit, quantity = counter_volume,
    tenant_id = project_id, resource_metadata).
    """

    record_id: str  # stable per (tenant, resource, meter, window): the compacted topic's key
    version: int  # grows with each correction of the same record; the highest wins
    tenant_id: str
    resource_type: ResourceType
    resource_id: str
    meter: str
    meter_type: MeterType
    unit: str
    quantity: float
    window_start: datetime  # UTC, inclusive
    window_end: datetime  # UTC, exclusive
    derived_from: str | list[str]  # message id(s) of the notifications this was computed from
    user_id: str | None = None
    flavor_id: str | None = None
    flavor_name: str | None = None
    size_gb: float | None = None
    resource_metadata: dict[str, str] = field(default_factory=dict)


class DiscrepancyCause(str, enum.Enum):
    """The likely reason why an exists audit and the lifecycle events disagree."""

    MISSED_CREATE = "missed_create"  # audited, but no create (or a later one) in the lifecycle
    MISSED_DELETE = "missed_delete"  # the audit reports a delete the lifecycle lacks
    FLAVOR_MISMATCH = "flavor_mismatch"  # seconds agree, flavor at the audit does not
    UNEXPECTED_DELETE = "unexpected_delete"  # the lifecycle deleted it inside the audited period
    UNEXPLAINED = "unexplained"


@dataclass(frozen=True, slots=True)
class UsageDiscrepancy:
    """An exists audit that the lifecycle-derived usage disagrees with (StackTach's usage
    audit). Schema: avro/usage_discrepancy.avsc."""

    discrepancy_id: str  # stable per (instance, audit period): the topic's key
    tenant_id: str
    resource_id: str  # the instance
    audit_message_id: str
    audit_period_beginning: datetime  # UTC
    audit_period_ending: datetime  # UTC
    audited_seconds: float  # what the audit says the instance lived within its period
    lifecycle_seconds: float  # what the create/resize/delete events give for that period
    difference_seconds: float  # audited - lifecycle
    likely_cause: DiscrepancyCause
    audited_flavor_id: str | None = None
    lifecycle_flavor_id: str | None = None  # in force at the end of the period
    user_id: str | None = None


# --- operation / error / resource-state records (pairing) ---


class Outcome(str, enum.Enum):
    """How an operation ended."""

    SUCCEEDED = "succeeded"  # its end came
    FAILED = "failed"  # its error came
    ABANDONED = "abandoned"  # no end or error within the operation's timeout


@dataclass(frozen=True, slots=True)
class OperationCompleted:
    """One finished operation: a start joined to its end or error. Schema: avro/operation.avsc.

    A record may lack its start (the end came, the start never did: started_at and duration are
    None) or its end (abandoned: ended_at and duration are None). Attributes come from the end,
    else from the start.
    """

    record_id: str  # deterministic per operation (see trovemeter.pairing): consumers drop repeats
    outcome: Outcome
    resource_type: ResourceType
    operation: str
    request_id: str | None = None
    resource_id: str | None = None
    tenant_id: str | None = None
    user_id: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: float | None = None
    start_publisher: str | None = None
    end_publisher: str | None = None  # of the end, or of the error when failed
    start_message_id: str | None = None
    end_message_id: str | None = None
    flavor_id: str | None = None  # the new flavor of a flavor resize
    volume_size_gb: int | None = None  # the new size of a volume resize
    size_gb: float | None = None  # a backup's size
    datastore: str | None = None
    datastore_version: str | None = None
    error_message: str | None = None
    exception_class: str | None = None


@dataclass(frozen=True, slots=True)
class OperationError:
    """The error of one failed operation. Schema: avro/operation_error.avsc."""

    record_id: str  # the record_id of the operation's OperationCompleted
    resource_type: ResourceType
    operation: str
    occurred_at: datetime  # UTC, timezone-aware: when the error notification was sent
    message_id: str  # of the error notification
    publisher_id: str
    request_id: str | None = None
    resource_id: str | None = None
    tenant_id: str | None = None
    user_id: str | None = None
    error_message: str | None = None
    exception_class: str | None = None
    exception_last_line: str | None = None  # the traceback's final line, `module.Class: text`


class ResourceStatus(str, enum.Enum):
    """Lifecycle status of an instance, cluster or backup (a backup is `active` once complete)."""

    BUILDING = "building"
    ACTIVE = "active"
    RESIZING = "resizing"
    REBOOTING = "rebooting"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ResourceState:
    """Latest known state of one instance, cluster or backup. Schema: avro/resource_state.avsc."""

    resource_id: str
    resource_type: ResourceType
    last_event_type: str  # of the newest notification but the exists audits (resource_state)
    last_event_at: datetime  # UTC, timezone-aware
    last_message_id: str
    tenant_id: str | None = None
    status: ResourceStatus | None = None
    flavor_id: str | None = None
    flavor_name: str | None = None
    volume_size_gb: int | None = None
    size_gb: float | None = None  # backups
    cluster_size: int | None = None  # clusters: number of member instances
    instance_ids: list[str] | None = None  # clusters: member instance ids, sorted
    name: str | None = None
    datastore: str | None = None
    datastore_version: str | None = None
    created_at: datetime | None = None
    launched_at: datetime | None = None
    deleted_at: datetime | None = None
