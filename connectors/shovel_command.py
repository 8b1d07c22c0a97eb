"""`trovemeter shovel`: RabbitMQ notifications -> Kafka (Avro), acked after Kafka confirmed.

Settings come from TROVEMETER_* environment variables (``ShovelSettings``); these flags override
them. Exit codes: 0 after SIGTERM/SIGINT, 2 for a configuration problem (one clear error, no
restart loop: exchange declared with other durability, missing topic, login refused, port taken),
1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from trovemeter import topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", help="our own durable queue (TROVEMETER_QUEUE, "
                        "default trovemeter.notifications)")
    parser.add_argument("--exchanges", help="comma-separated topic exchanges to bind "
                        "(TROVEMETER_EXCHANGES, default trove,openstack)")
    parser.add_argument("--routing-keys", help="comma-separated binding keys "
                        "(TROVEMETER_ROUTING_KEYS, default notifications.*)")
    parser.add_argument("--prefetch", type=int, help="unacked deliveries in flight "
                        "(TROVEMETER_PREFETCH, default 2000)")
    parser.add_argument("--exchange-durable", action=argparse.BooleanOptionalAction, default=None,
                        help="declare the exchanges durable (TROVEMETER_EXCHANGE_DURABLE, default "
                        "false like oslo.messaging's amqp_durable_queues)")
    parser.add_argument("--metrics-port", type=int, help="port of /metrics and /healthz "
                        "(TROVEMETER_METRICS_PORT, default 9464; 0 = any free port)")
    parser.add_argument("--topic", default=topics.NOTIFICATIONS,
                        help=f"Kafka topic of the records (default {topics.NOTIFICATIONS})")
    parser.add_argument("--dlq-topic", default=topics.NOTIFICATIONS_DLQ,
                        help=f"Kafka topic of the dead letters (default {topics.NOTIFICATIONS_DLQ})")
    parser.add_argument("--parse-workers", type=int, default=1,
                        help="helper processes that parse and encode, so parsing and the "
                        "RabbitMQ/Kafka I/O use separate cores; records keep the delivery order "
                        "(default 1; 0 = parse in the main process)")
    parser.add_argument("--kafka-config", action="append", default=[], metavar="KEY=VALUE",
                        help="extra librdkafka producer setting, repeatable (e.g. linger.ms=50, "
                        "message.timeout.ms=30000); overrides the shovel's defaults")
    parser.add_argument("--stop-timeout", type=float, default=10.0,
                        help="seconds to wait for Kafka's outstanding reports on SIGTERM (default 10)")


def settings_from_args(args: argparse.Namespace) -> Any:
    from trovemeter.settings import ShovelSettings

    overrides: dict[str, Any] = {}
    for name in ("queue", "exchanges", "routing_keys", "prefetch", "exchange_durable",
                 "metrics_port"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return ShovelSettings(**overrides)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from trovemeter.logs import configure_logging

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"trovemeter shovel: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    quiet = settings.log_level.upper() != "DEBUG"
    # The shovel logs connection trouble once per outage itself; pika and librdkafka would log
    # every reconnect attempt.
    logging.getLogger("pika").setLevel(logging.CRITICAL if quiet else logging.DEBUG)
    logging.getLogger("trovemeter.shovel.librdkafka").setLevel(
        logging.CRITICAL if quiet else logging.DEBUG)
    log = logging.getLogger("trovemeter.shovel")

    from connectors.gc_tuning import settle_after_startup
    from connectors.metrics import MetricsServer, make_registry
    from connectors.shovel import Shovel, ShovelConfigError

    overrides = {}
    for item in args.kafka_config:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            log.error("shovel.config_error", extra={"error": f"--kafka-config {item!r}: not KEY=VALUE"})
            return 2
        overrides[key.strip()] = value.strip()
    try:
        shovel = Shovel(settings, topic=args.topic, dlq_topic=args.dlq_topic,
                        stop_timeout=args.stop_timeout, producer_overrides=overrides,
                        parse_workers=max(0, args.parse_workers))
    except Exception as exc:  # noqa: BLE001 - e.g. an invalid event mapping or schema
        log.error("shovel.config_error", extra={"error": f"{type(exc).__name__}: {exc}"})
        return 2
    try:
        server = MetricsServer(settings.web_host, settings.metrics_port,
                               make_registry(shovel.stats), shovel.health).start()
    except OSError as exc:
        log.error("shovel.config_error", extra={
            "error": f"cannot serve metrics on {settings.web_host}:{settings.metrics_port}: {exc} "
                     f"(TROVEMETER_METRICS_PORT / --metrics-port)"})
        return 2

    signal.signal(signal.SIGTERM, shovel.request_stop)
    signal.signal(signal.SIGINT, shovel.request_stop)
    log.info("shovel.started", extra={
        "rabbit_url": settings.rabbit_url_masked, "queue": settings.queue,
        "exchanges": list(settings.exchanges), "routing_keys": list(settings.routing_keys),
        "exchange_durable": settings.exchange_durable, "prefetch": settings.prefetch,
        "kafka_bootstrap": settings.kafka_bootstrap, "topic": args.topic,
        "dlq_topic": args.dlq_topic, "metrics": f"http://{server.host}:{server.port}/metrics",
        "parse_workers": max(0, args.parse_workers),
        "wire_format": "confluent" if settings.schema_registry_url else "single-object"})
    settle_after_startup()
    try:
        return shovel.run()
    except ShovelConfigError as exc:
        log.error("shovel.config_error", extra={"error": str(exc)})
        return 2
    except Exception:
        log.exception("shovel.crashed")
        return 1
    finally:
        server.close()
