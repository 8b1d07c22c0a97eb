"""Creates trovemeter's topics with explicit partitions, replication and cleanup policy."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from trovemeter.security import client_config
from trovemeter.topics import TopicSpec

log = logging.getLogger(__name__)


class KafkaUnavailable(RuntimeError):
    pass


def ensure_topics(bootstrap: str | Mapping[str, Any], specs: list[TopicSpec], replication: int = 1,
                  timeout: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent.
    ``bootstrap``: servers, or ``settings.kafka_client_config()`` (with TLS/SASL)."""
    config = client_config(bootstrap)
    bootstrap = config["bootstrap.servers"]
    admin = AdminClient(config)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka at {bootstrap} is not reachable: {exc}") from exc
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication,
                  config=s.kafka_config()) for s in missing],
        operation_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent creator won the race
                raise
    return created
