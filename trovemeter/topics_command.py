"""`trovemeter topics`: create trovemeter's Kafka topics (idempotent)."""

from __future__ import annotations

import argparse

from trovemeter.settings import CommonSettings
from trovemeter.topics import topic_specs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    parser.add_argument("--replication", type=int, default=1, help="replication factor (default 1)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default TROVEMETER_KAFKA_BOOTSTRAP)")


def run(args: argparse.Namespace) -> int:
    from connectors.kafka_admin import KafkaUnavailable, ensure_topics

    overrides = {"kafka_bootstrap": args.bootstrap} if args.bootstrap else {}
    settings = CommonSettings(**overrides)
    specs = topic_specs(args.partitions)
    try:
        created = ensure_topics(settings.kafka_client_config(), specs, replication=args.replication)
    except KafkaUnavailable as exc:
        print(f"trovemeter topics: {exc}")
        return 1
    for spec in specs:
        state = "created" if spec.name in created else "exists "
        print(f"topic {state} {spec.name:28} partitions={spec.partitions} cleanup={spec.cleanup_policy}")
    return 0
