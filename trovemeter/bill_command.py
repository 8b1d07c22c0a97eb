"""`trovemeter bill`: an example downstream consumer of trove.usage that applies a price sheet
and writes invoice lines per tenant and period (CSV or JSON), with a summary on the terminal.

It reads the topic from the beginning, keeps the latest version of each record id (duplicates
and corrections never double-charge) and commits its offsets only after the invoice file is
written and fsynced. Exit codes: 0 done, 1 Kafka or decoding failure, 2 configuration problem
(invalid price sheet or settings, usage of a flavor without a price).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from trovemeter import topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prices", help="price sheet YAML (TROVEMETER_BILL_PRICES; "
                        "example: etc/prices.example.yaml)")
    parser.add_argument("--output", required=True, type=Path, help="invoice file to write")
    parser.add_argument("--format", choices=("csv", "json"), default="csv",
                        help="invoice file format (default csv)")
    parser.add_argument("--period", choices=("month", "day"), default="month",
                        help="invoice period, by the UTC start of each usage hour (default month)")
    parser.add_argument("--topic", default=topics.USAGE,
                        help=f"usage topic to read (default {topics.USAGE})")
    parser.add_argument("--group-id", help="Kafka consumer group (TROVEMETER_BILL_GROUP_ID, "
                        "default trovemeter-bill)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (TROVEMETER_KAFKA_BOOTSTRAP)")
    parser.add_argument("--until-idle", type=float, metavar="SECONDS",
                        help="stop once caught up and idle this long (default: keep running, "
                        "rewriting the invoice whenever new usage arrives)")


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, KafkaException
    from pydantic import ValidationError

    from connectors.bill import bill, consumer_config
    from trovemeter.codec import CodecError
    from trovemeter.pricing import PriceSheetError, UnpricedUsage, load_price_sheet, tenant_totals
    from trovemeter.settings import BillSettings

    overrides: dict[str, Any] = {name: value for name, value in (
        ("bill_prices", args.prices), ("bill_group_id", args.group_id),
        ("kafka_bootstrap", args.bootstrap)) if value is not None}
    try:
        settings = BillSettings(**overrides)
    except ValidationError as exc:
        print(f"trovemeter bill: invalid settings: {exc}", file=sys.stderr)
        return 2
    if settings.bill_prices is None:
        print("trovemeter bill: no price sheet: pass --prices or set TROVEMETER_BILL_PRICES",
              file=sys.stderr)
        return 2
    try:
        sheet = load_price_sheet(settings.bill_prices)
    except PriceSheetError as exc:
        print(f"trovemeter bill: {exc}", file=sys.stderr)
        return 2

    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    consumer = Consumer(consumer_config(settings.kafka_client_config(), settings.bill_group_id))
    try:
        result = bill(consumer, args.topic, sheet, args.output, args.format, args.period,
                      args.until_idle, should_stop=lambda: stopping)
    except UnpricedUsage as exc:
        print(f"trovemeter bill: {exc}; nothing written, no offsets committed", file=sys.stderr)
        return 2
    except (KafkaException, CodecError) as exc:
        print(f"trovemeter bill: {exc}", file=sys.stderr)
        return 1
    finally:
        consumer.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    print(f"{result.records_read} usage records read, {len(result.latest)} distinct record ids, "
          f"{len(result.lines)} invoice lines -> {args.output}")
    for (tenant, period, currency), amount in tenant_totals(result.lines).items():
        print(f"  {tenant:34} {period:10} {amount:>14} {currency}")
    return 0
