"""`trovemeter simulate`: publish a seeded Trove notification scenario to RabbitMQ, exactly as
oslo.messaging's notifier would, and write the totals a correct pipeline must arrive at.

RabbitMQ comes from TROVEMETER_RABBIT_URL. Exit codes: 0 done, 1 RabbitMQ unreachable or lost,
or messages not confirmed, 2 invalid arguments or a refused exchange declaration, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trovemeter.simulation import ExpectedTotals, Scenario, ScenarioConfig, build_scenario

if TYPE_CHECKING:
    from connectors.simulator import PublishReport

log = logging.getLogger("trovemeter.simulator")
_DEFAULTS = ScenarioConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scenario = parser.add_argument_group("scenario")
    scenario.add_argument("--seed", type=int, default=_DEFAULTS.seed,
                          help=f"same seed, same bytes (default {_DEFAULTS.seed})")
    scenario.add_argument("--tenants", type=int, default=_DEFAULTS.tenants,
                          help=f"projects (default {_DEFAULTS.tenants})")
    scenario.add_argument("--instances", type=int, default=_DEFAULTS.instances,
                          help=f"instance lifecycles (default {_DEFAULTS.instances})")
    scenario.add_argument("--hours", type=int, default=_DEFAULTS.hours,
                          help=f"simulated hours; the accounting horizon is start + hours "
                          f"(default {_DEFAULTS.hours})")
    scenario.add_argument("--start", type=_utc_hour, default=_DEFAULTS.start,
                          help="simulated start, an hour boundary in UTC "
                          "(default 2026-11-02T00:00:00Z)")
    scenario.add_argument("--messages", type=int, default=None, metavar="N",
                          help="add instance lifecycles until the scenario has about N messages "
                          "(benchmarks)")
    scenario.add_argument("--failure-rate", type=float, default=_DEFAULTS.failure_rate,
                          help="share of operations ending in .error "
                          f"(default {_DEFAULTS.failure_rate})")
    scenario.add_argument("--abandon-rate", type=float, default=_DEFAULTS.abandon_rate,
                          help="share of operations whose start never gets an end "
                          f"(default {_DEFAULTS.abandon_rate})")
    scenario.add_argument("--backups", action=argparse.BooleanOptionalAction,
                          default=_DEFAULTS.backups, help="backup create/delete (default on)")
    scenario.add_argument("--clusters", action=argparse.BooleanOptionalAction,
                          default=_DEFAULTS.clusters,
                          help="cluster create/grow/delete (default on)")
    scenario.add_argument("--exists", action=argparse.BooleanOptionalAction,
                          default=_DEFAULTS.exists_audits,
                          help="hourly trove.instance.exists audits (default on)")
    scenario.add_argument("--closing-delay", type=int, default=_DEFAULTS.closing_delay_s,
                          metavar="SECONDS", help="the last messages' time after the horizon "
                          f"(default {_DEFAULTS.closing_delay_s})")

    noise = parser.add_argument_group("noise")
    noise.add_argument("--duplicate-rate", type=float, default=_DEFAULTS.duplicate_rate,
                       help="share of messages published twice "
                       f"(default {_DEFAULTS.duplicate_rate})")
    noise.add_argument("--reorder-rate", type=float, default=_DEFAULTS.reorder_rate,
                       help="share of starts sent after their end, and of adjacent swaps "
                       f"(default {_DEFAULTS.reorder_rate})")
    noise.add_argument("--garbage-rate", type=float, default=_DEFAULTS.garbage_rate,
                       help="chance of a garbage body before each message "
                       f"(default {_DEFAULTS.garbage_rate})")
    noise.add_argument("--v1-share", type=float, default=_DEFAULTS.v1_share,
                       help="share of bodies sent by driver `messaging` (no envelope) "
                       f"(default {_DEFAULTS.v1_share})")

    output = parser.add_argument_group("publishing")
    output.add_argument("--exchange", default=_DEFAULTS.exchange,
                        help="topic exchange (oslo.messaging's control_exchange; "
                        f"default {_DEFAULTS.exchange})")
    pacing = output.add_mutually_exclusive_group()
    pacing.add_argument("--speed", type=float, default=None, metavar="X",
                        help="compressed clock: X simulated seconds per wall second")
    pacing.add_argument("--rate", type=float, default=None, metavar="N",
                        help="fixed rate: N messages per second")
    output.add_argument("--confirm", action="store_true",
                        help="publisher confirms: count only what RabbitMQ acknowledged")
    output.add_argument("--expected", type=Path, default=None, metavar="PATH",
                        help="write the scenario's expected totals (JSON) here")
    output.add_argument("--count-only", "--dry-run", dest="dry_run", action="store_true",
                        help="plan, write --expected and print the statistics; publish nothing")
    output.add_argument("--progress-interval", type=float, default=5.0, metavar="SECONDS",
                        help="seconds between progress log lines (default 5)")


def _utc_hour(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("give a UTC time, e.g. 2026-11-02T00:00:00Z")
    return moment


def config_from_args(args: argparse.Namespace) -> ScenarioConfig:
    return ScenarioConfig(
        seed=args.seed, tenants=args.tenants, instances=args.instances, hours=args.hours,
        start=args.start, failure_rate=args.failure_rate, abandon_rate=args.abandon_rate,
        duplicate_rate=args.duplicate_rate, reorder_rate=args.reorder_rate,
        garbage_rate=args.garbage_rate, v1_share=args.v1_share, backups=args.backups,
        clusters=args.clusters, exists_audits=args.exists, message_budget=args.messages,
        closing_delay_s=args.closing_delay, exchange=args.exchange,
    )


def write_expected(path: Path, expected: ExpectedTotals) -> None:
    """Write atomically: a reader polling for the file never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False, encoding="utf-8") as handle:
        json.dump(expected.to_json(), handle, indent=2)
        handle.write("\n")
    os.replace(handle.name, path)


def run(args: argparse.Namespace) -> int:
    from trovemeter.logs import configure_logging
    from trovemeter.settings import CommonSettings

    settings = CommonSettings()
    configure_logging(settings.log_level)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"trovemeter simulate: {exc}", file=sys.stderr)
        return 2
    planning_started = time.perf_counter()
    scenario = build_scenario(config)
    log.info("simulator.planned", extra={
        "messages": len(scenario), "seed": config.seed,
        "planning_s": round(time.perf_counter() - planning_started, 3)})
    if args.expected is not None:
        write_expected(args.expected, scenario.expected)
        log.info("simulator.expected_written", extra={"path": str(args.expected)})
    if args.dry_run:
        print(statistics(scenario))
        return 0
    return _publish(scenario, args, settings.rabbit_parameters(), settings.rabbit_url_masked)


def _publish(scenario: Scenario, args: argparse.Namespace, url: Any, url_masked: str) -> int:
    import pika.exceptions

    from connectors.simulator import Pacing, SimulatorConfigError, publish

    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    logging.getLogger("pika").setLevel(logging.CRITICAL if quiet else logging.DEBUG)
    try:
        pacing = Pacing(rate=args.rate, speed=args.speed)
    except ValueError as exc:
        print(f"trovemeter simulate: {exc}", file=sys.stderr)
        return 2
    log.info("simulator.publishing", extra={
        "url": url_masked, "exchange": scenario.config.exchange, "messages": len(scenario),
        "pacing": pacing.describe(), "confirm": args.confirm})
    try:
        report = publish(scenario.messages(), url, [scenario.config.exchange], pacing=pacing,
                         confirm=args.confirm, progress_interval_s=args.progress_interval)
    except SimulatorConfigError as exc:
        log.error("simulator.config_error", extra={"error": str(exc), "url": url_masked})
        return 2
    except pika.exceptions.AMQPError as exc:
        log.error("simulator.rabbit_error", extra={"error": f"{type(exc).__name__}: {exc}",
                                                   "url": url_masked})
        return 1
    print(summary_line(report, scenario, url_masked, pacing.describe(), args.confirm))
    if report.interrupted:
        return 130
    if args.confirm and (report.nacked or report.confirmed != report.published):
        return 1
    return 0


def summary_line(report: PublishReport, scenario: Scenario, url_masked: str, pacing: str,
                 confirm: bool) -> str:
    kinds = report.by_kind
    confirmed = f", confirmed {report.confirmed}, nacked {report.nacked}" if confirm else ""
    state = " INTERRUPTED" if report.interrupted else ""
    return (f"simulate{state}: published {report.published}/{len(scenario)} messages "
            f"(valid {kinds['valid']}, duplicate {kinds['duplicate']}, garbage {kinds['garbage']}) "
            f"to exchange {scenario.config.exchange} at {url_masked} in {report.elapsed_s:.1f} s "
            f"({report.rate:.0f} msg/s, {pacing}){confirmed}")


def statistics(scenario: Scenario) -> str:
    """What --dry-run prints: the scenario in a few lines."""
    expected = scenario.expected
    messages = expected.messages
    outcomes = {"succeeded": 0, "failed": 0, "abandoned": 0}
    for (_, _, outcome), count in expected.operations.items():
        outcomes[outcome] += count
    instance_hours = sum(s for flavors in expected.instance_seconds.values()
                         for s in flavors.values()) / 3600
    lines = [
        f"scenario seed={scenario.config.seed} tenants={scenario.config.tenants} "
        f"hours={scenario.config.hours} horizon={expected.scenario['horizon']}",
        f"messages total={messages['total']} valid={messages['valid']} "
        f"duplicate={messages['duplicate']} garbage={messages['garbage']} v1={messages['v1']} "
        f"ends_before_starts={messages['ends_before_starts']} "
        f"adjacent_swaps={messages['adjacent_swaps']}",
        "operations " + " ".join(f"{name}={count}" for name, count in outcomes.items()),
        "resources " + " ".join(f"{name}={count}" for name, count in expected.resources.items()),
        f"billing instance_hours={instance_hours:.2f} "
        f"volume_gb_hours={sum(expected.volume_gb_seconds.values()) / 3600:.2f} "
        f"backup_gb_hours={sum(expected.backup_gb_seconds.values()) / 3600:.2f} "
        f"exists_hours={sum(expected.exists_seconds.values()) / 3600:.0f}",
    ]
    for name, stats in sorted(expected.operation_durations.items()):
        lines.append(f"duration {name:24} n={stats.count:<5} p50={stats.p50_s:8.1f}s "
                     f"p95={stats.p95_s:8.1f}s")
    return "\n".join(lines)
