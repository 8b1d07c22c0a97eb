"""The Faust app and nothing else: `faust -A streams.app worker -l info` starts it."""

from __future__ import annotations

import faust

from trovemeter.security import faust_credentials
from trovemeter.settings import WorkerSettings

settings = WorkerSettings()

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    broker_credentials=faust_credentials(settings),  # TLS/SASL (docs/security.md); None: plaintext
    store=settings.store,
    datadir=settings.data_dir,
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=1,
    # At-least-once with idempotent state and deterministic output ids: exactly-once with
    # group_by and tables hangs in recovery (faust-pitfalls.md, #47).
    processing_guarantee="at_least_once",
    web_host=settings.web_host,
    # web_host only names the server in URLs; Faust binds 0.0.0.0 unless told (docs/security.md)
    web_bind=settings.web_host,
    web_port=settings.web_port,
    autodiscover=False,
    origin="streams",
)
