"""The canonical event model: every Trove notification, whatever its family, becomes one
``Notification``. Records that later stages emit have their own models here too; each maps to
exactly one schema in ``avro/`` (see ``trovemeter.codec``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


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

    @property
    def kafka_key(self) -> str | None:
        """Records of one resource share a key, so they stay ordered in one partition."""
        return self.resource_id or self.request_id
