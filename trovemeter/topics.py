"""The Kafka topics trovemeter owns: names are a contract with downstream consumers."""

from __future__ import annotations

from dataclasses import dataclass, field

NOTIFICATIONS = "trove.notifications"
NOTIFICATIONS_DLQ = "trove.notifications.dlq"
OPERATIONS = "trove.operations"
ERRORS = "trove.errors"
RESOURCES = "trove.resources"
USAGE = "trove.usage"
USAGE_DISCREPANCIES = "trove.usage.discrepancies"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    cleanup_policy: str = "delete"
    config: dict[str, str] = field(default_factory=dict)
    doc: str = ""

    def kafka_config(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy, **self.config}


def topic_specs(partitions: int = 4) -> list[TopicSpec]:
    """Every topic `trovemeter topics` creates, with explicit partitions and cleanup."""
    week = str(7 * 24 * 3600 * 1000)
    return [
        TopicSpec(NOTIFICATIONS, partitions, config={"retention.ms": week},
                  doc="every parsed Trove notification, canonical model, keyed by resource id"),
        TopicSpec(NOTIFICATIONS_DLQ, 1, config={"retention.ms": str(30 * 24 * 3600 * 1000)},
                  doc="raw bodies that could not be parsed or encoded, with the reason"),
        TopicSpec(OPERATIONS, partitions, doc="one record per finished operation"),
        TopicSpec(ERRORS, partitions, doc="one record per failed operation"),
        TopicSpec(RESOURCES, partitions, cleanup_policy="compact",
                  doc="latest state per resource id (compacted)"),
        TopicSpec(USAGE, partitions, cleanup_policy="compact",
                  doc="hourly usage per tenant/resource/meter; latest version per record id"),
        TopicSpec(USAGE_DISCREPANCIES, partitions,
                  doc="exists audits that disagree with the lifecycle-derived usage"),
    ]
