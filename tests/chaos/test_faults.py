"""Delivery guarantees under faults, on the real local stack (issue #9, `make chaos`).

1. A seeded simulator scenario of ~100k messages (duplicates, garbage, v1 bodies, reordering)
   published through RabbitMQ at a steady rate with publisher confirms, while the shovel is
   SIGKILLed five times, the worker five times, Kafka is stopped and restarted once and
   RabbitMQ is stopped and restarted once (both supervised processes restart as a service
   manager would restart them). Afterwards: every confirmed valid message id is in
   trove.notifications at least once, none is missing; every garbage body is dead-lettered
   with the reason ``parse_body`` gives; trove.operations has each operation exactly once after
   dropping repeats by record id, with the counts by outcome, failures and durations of the
   scenario; billed seconds per tenant and flavor in trove.usage (latest version per record id)
   equal the scenario's truth exactly.
2. Kafka unreachable for a minute (SIGSTOP of the broker): the shovel stops acking, RabbitMQ
   holds the backlog, nothing is dead-lettered, and everything drains afterwards.

Disk-full and topic-missing refusals are in tests/integration/test_kafka_refusals.py (part of
`make test`). The summary table (tests/chaos/summary.py) is printed at the end of the session.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.topic_reader import end_offsets
from tests.chaos.conftest import RESULTS
from tests.chaos.faults import (
    ConfirmedPublisher,
    Supervised,
    http_get,
    kafka_frozen,
    kafka_restart,
    queue_counts,
    rabbit_restart,
    shovel_command,
    worker_command,
)
from tests.chaos.summary import RunCounts
from tests.integration.conftest import free_port
from tests.integration.shovel_harness import Rabbit, load_fixtures, message_id_of
from trovemeter import codec, topics
from trovemeter.demo_command import RunLedger, open_operations, usage_stage_present
from trovemeter.demo_summary import Observed, compare, horizon_of
from trovemeter.envelope import BadNotification, parse_body
from trovemeter.model import DeadLetter, OperationCompleted, UsageRecord
from trovemeter.pipeline_tally import PipelineTally
from trovemeter.simulation import AMQP_PROPERTIES, ScenarioConfig, WireMessage, build_scenario

pytestmark = pytest.mark.chaos

SEED = int(os.environ.get("TROVEMETER_CHAOS_SEED", "4242"))
MESSAGES = int(os.environ.get("TROVEMETER_CHAOS_MESSAGES", "100000"))
RATE = float(os.environ.get("TROVEMETER_CHAOS_RATE", "500"))  # published per second
OUTPUTS = (topics.OPERATIONS, topics.ERRORS, topics.RESOURCES, topics.USAGE)
# Fault -> when, as a share of the publishing time (~200 s for 100k at 500/s): spread over it.
SCHEDULE: tuple[tuple[float, str], ...] = (
    (0.10, "shovel"), (0.15, "worker"), (0.22, "shovel"), (0.30, "worker"), (0.35, "shovel"),
    (0.45, "worker"), (0.50, "shovel"), (0.57, "kafka"), (0.72, "worker"), (0.78, "shovel"),
    (0.85, "rabbitmq"), (0.92, "worker"),
)
# Development only: TROVEMETER_CHAOS_BROKER_FAULTS=0 leaves the brokers alone (kills only), for
# trying the suite while others use the stack. `make chaos` always restarts them.
BROKER_FAULTS = os.environ.get("TROVEMETER_CHAOS_BROKER_FAULTS", "1") != "0"
# Development only: which kinds of fault to inject (default all), e.g. "" for a clean baseline.
KINDS = set(os.environ.get("TROVEMETER_CHAOS_FAULTS", "shovel,worker,kafka,rabbitmq").split(","))
FREEZE_S = float(os.environ.get("TROVEMETER_CHAOS_FREEZE_S", "60"))  # Kafka unreachable
SAMPLE_AT = max(12.0, FREEZE_S - 10)  # seconds into the outage: queue, metrics, health
# Faust's default session timeout (60 s) would make every worker kill stall the group for a
# minute until the dead member expires; a service manager restarting a killed worker at once
# is better served by a short one.
LONG_RUN_BUDGET_S = float(os.environ.get("TROVEMETER_CHAOS_BUDGET_S", "660"))
DETAILS_FILE = Path(__file__).resolve().parents[2] / ".stack" / "chaos" / "long-run-checks.txt"
# The run plays a day in ~200 s (432x): one hour of event time passes in 8 s. A killed worker
# re-reads what came after Faust's last offset commit -- 10-20 s of traffic under these faults,
# i.e. hours of event time -- and the tombstones that absorb copies of reported operations
# (pairing retention, 1 h by default: minutes of replay in a real deployment) would be gone by
# then, so re-read events of reported operations would be reported again. 24 h of event time
# covers the replay window here as the default covers it at 1x.
WORKER_ENV = {"TROVEMETER_SESSION_TIMEOUT_SECONDS": "10", "BROKER_SESSION_TIMEOUT": "10",
              "BROKER_HEARTBEAT_INTERVAL": "1", "TROVEMETER_PAIRING_RETENTION_SECONDS": "86400"}


# ------------------------------------------------------------------ helpers


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             interval: float = 1.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def read_until_end(bootstrap: str, start: dict[tuple[str, int], int],
                   keep: Callable[[Any], bool] = lambda m: True,
                   timeout: float = 300) -> list[Any]:
    """Every record after ``start`` up to the partitions' current ends (kept when ``keep``)."""
    ends = end_offsets(bootstrap, sorted({t for t, _ in start}))
    wanted = {tp: end for tp, end in ends.items() if end > start.get(tp, 0)}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 100, "log_level": 0})
    consumer.assign([TopicPartition(t, p, start.get((t, p), 0)) for (t, p) in wanted])
    reached = {tp: start.get(tp, 0) - 1 for tp in wanted}
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while any(reached[tp] < end - 1 for tp, end in wanted.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {sorted(wanted)} to their ends")
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error():
                    continue
                tp = (message.topic(), message.partition())
                reached[tp] = max(reached[tp], message.offset())
                if keep(message):
                    out.append(message)
    finally:
        consumer.close()
    return out


def header(message: Any, name: str) -> bytes | None:
    for key, value in message.headers() or ():
        if key == name:
            return value
    return None


def shovel_metrics(port: int) -> dict[str, float]:
    try:
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return {}
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def shovel_healthy(port: int) -> bool:
    try:
        status, body = http_get(f"http://127.0.0.1:{port}/healthz")
        return status == 200 and json.loads(body).get("healthy") is True
    except (OSError, ValueError):
        return False


def group_lag(bootstrap: str, group: str) -> int | None:
    """Records not yet consumed by ``group`` on every partition it has committed offsets for."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        result = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)])[group].result(10)
    except Exception:  # noqa: BLE001 - the broker restarting, the group rebalancing
        return None
    committed = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
    if not committed:
        return None
    ends = end_offsets(bootstrap, sorted({t for t, _ in committed}))
    return sum(max(0, end - max(committed.get(tp, 0), 0)) for tp, end in ends.items())


def dead_letter_expectation(bodies: Iterable[bytes]) -> dict[str, str]:
    """sha256 of each garbage body -> the reason parse_body gives it."""
    out = {}
    for body in bodies:
        try:
            parse_body(body, max_bytes=1_048_576, content_type="application/json",
                       content_encoding="utf-8")
            reason = "parsed"
        except BadNotification as exc:
            reason = exc.reason.value
        out[hashlib.sha256(body).hexdigest()] = reason
    return out


def scratch_topics(bootstrap: str, name: str) -> tuple[str, str]:
    """``<name>.notifications`` and its ``.dlq``, specified as trove.notifications and its DLQ."""
    from dataclasses import replace

    from connectors.kafka_admin import ensure_topics
    from trovemeter.topics import topic_specs

    specs = {spec.name: spec for spec in topic_specs()}
    source, dlq = f"{name}.notifications", f"{name}.notifications.dlq"
    ensure_topics(bootstrap, [replace(specs[topics.NOTIFICATIONS], name=source),
                              replace(specs[topics.NOTIFICATIONS_DLQ], name=dlq)])
    return source, dlq


def partitions_from_zero(bootstrap: str, topic: str) -> dict[tuple[str, int], int]:
    return dict.fromkeys(end_offsets(bootstrap, [topic]), 0)


def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [t for t in names if t in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001
                pass


def delete_worker_state(bootstrap: str, app_id: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    doomed = [t for t in admin.list_topics(timeout=10).topics if t.startswith(app_id)]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001
                pass
    try:
        for future in admin.delete_consumer_groups([app_id], request_timeout=10).values():
            future.result()
    except Exception:  # noqa: BLE001
        pass


# ------------------------------------------------------------------ 0. the tooling


def test_publisher_counts_only_what_rabbitmq_confirmed_into_the_queue(
        rabbit_url: str, unique_name: str) -> None:
    """The publisher the long run relies on: a dropped connection and a missing binding (as
    after a RabbitMQ restart, before the shovel re-binds) are retried, never counted."""
    from tests.integration.shovel_harness import close_connections_named, drain

    queue, exchange = f"chaos-{unique_name}.q", f"chaos-{unique_name}.trove"
    fixtures = load_fixtures()
    batch = [WireMessage(fixtures[i % len(fixtures)].with_message_id(str(uuid.uuid4())),
                         "notifications.info", exchange, AMQP_PROPERTIES, None, "valid", 0.0)
             for i in range(6000)]
    with Rabbit(rabbit_url) as rabbit:
        rabbit.prepare(queue, [exchange])
        publisher = ConfirmedPublisher(rabbit_url, exchange, 1000, lambda m: message_id_of(m.body))
        thread = threading.Thread(target=publisher.run, args=(batch,), daemon=True)
        thread.start()
        time.sleep(0.8)
        assert close_connections_named(f"trovemeter-chaos-publisher {exchange}") == 1
        time.sleep(0.8)
        rabbit.channel.queue_unbind(queue, exchange, "notifications.*")
        time.sleep(1.5)
        rabbit.channel.queue_bind(queue, exchange, "notifications.*")
        thread.join(60)
        stats = publisher.stats
        try:
            assert stats.done and stats.total == len(batch)
            assert stats.reconnects >= 1 and stats.unroutable >= 1
            queued = {message_id_of(body) for body in drain(rabbit_url, queue)}
            assert {message_id_of(m.body) for m in batch} <= queued  # every confirmed one
            assert stats.confirmed_ids == {message_id_of(m.body) for m in batch}
        finally:
            rabbit.delete_queue(queue)
            rabbit.delete_exchange(exchange)


# ------------------------------------------------------------------ 1. the long run


def test_100k_messages_through_kills_and_broker_restarts(
        kafka_bootstrap: str, rabbit_url: str, unique_name: str, tmp_path: Path) -> None:
    budget_end = time.monotonic() + LONG_RUN_BUDGET_S  # `make chaos` stays under 15 minutes
    name = f"chaos-{unique_name}"
    queue, exchange, app_id = f"{name}.q", f"{name}.trove", f"trovemeter-{name}"
    config = ScenarioConfig(seed=SEED, tenants=5, message_budget=MESSAGES, v1_share=0.1,
                            exchange=exchange)
    scenario = build_scenario(config)
    expected = scenario.expected.to_json()
    ledger = RunLedger.of(scenario)

    # The run's own copy of trove.notifications (and its DLQ): the worker reads only this run's
    # traffic, whatever else uses the stack, so "caught up" is exact. Outputs go to the real
    # trove.* topics, told apart by the worker's app id header and the scenario's tenants.
    source, dlq = scratch_topics(kafka_bootstrap, name)
    start = end_offsets(kafka_bootstrap, list(OUTPUTS))
    with Rabbit(rabbit_url) as rabbit:  # queue and binding first: nothing published is dropped
        rabbit.prepare(queue, [exchange])
    metrics_port, web_port = free_port(), free_port()
    shovel = Supervised("shovel", shovel_command(queue, exchange, metrics_port, "--topic", source,
                                                 "--dlq-topic", dlq),
                        tmp_path / "shovel.log", {}, ready=lambda: shovel_healthy(metrics_port))
    worker = Supervised("worker", worker_command(web_port), tmp_path / "worker.log",
                        {"TROVEMETER_APP_ID": app_id, "TROVEMETER_WEB_PORT": str(web_port),
                         "TROVEMETER_SOURCE_TOPIC": source,
                         "TROVEMETER_DATA_DIR": str(tmp_path / "faust"), **WORKER_ENV},
                        ready=lambda: http_get(f"http://127.0.0.1:{web_port}/")[0] < 500)
    faults: Counter[str] = Counter()
    fault_log: list[str] = []
    try:
        shovel.start()
        worker.start()
        shovel.wait_ready(90)
        try:
            worker.wait_ready(120)
        except (TimeoutError, OSError) as exc:
            fault_log.append(f"worker not serving its web views: {exc}")

        publisher = ConfirmedPublisher(rabbit_url, exchange, RATE,
                                       lambda m: message_id_of(m.body) if m.kind != "garbage"
                                       else None)
        thread = threading.Thread(target=publisher.run, args=(scenario.messages(),),
                                  name="publisher", daemon=True)
        t0 = time.monotonic()
        thread.start()
        publishing_s = len(scenario) / RATE
        for share, fault in SCHEDULE:
            time.sleep(max(0.0, t0 + share * publishing_s - time.monotonic()))
            began = time.monotonic() - t0
            if fault not in KINDS or (fault in ("kafka", "rabbitmq") and not BROKER_FAULTS):
                fault_log.append(f"{fault} fault at {began:.0f}s skipped (development setting)")
                continue
            if fault == "shovel":
                shovel.kill9()
                faults["shovel SIGKILL"] += 1
            elif fault == "worker":
                worker.kill9()
                faults["worker SIGKILL"] += 1
            elif fault == "kafka":
                down = kafka_restart()
                faults["Kafka stop/restart"] += 1
                fault_log.append(f"Kafka stopped at {began:.0f}s, back after {down:.0f}s")
            elif fault == "rabbitmq":
                down = rabbit_restart()
                faults["RabbitMQ stop/restart"] += 1
                fault_log.append(f"RabbitMQ stopped at {began:.0f}s, back after {down:.0f}s")
        thread.join(timeout=900)
        assert publisher.stats.done, "the publisher did not finish"
        stats = publisher.stats
        fault_log.append(f"published in {stats.elapsed_s:.0f}s; publisher reconnects "
                         f"{stats.reconnects}, unroutable retries {stats.unroutable}, "
                         f"in-doubt resends {sum(stats.unconfirmed_retries.values())}")

        # -- drain: the queue, then the worker
        drained = wait_for(lambda: queue_counts(queue) == (0, 0)
                           and shovel_metrics(metrics_port).get("trovemeter_shovel_in_flight", 1)
                           == 0, max(60.0, budget_end - 240 - time.monotonic()),
                           "the shovel to drain the queue", interval=2)
        fault_log.append(f"queue drained {drained:.0f}s after publishing ended")
        # the worker: every partition its group reads (the run's source and the worker's
        # internal topics) consumed; its outputs are confirmed before it commits offsets
        caught_up, last, changed_at = 0, None, time.monotonic()
        deadline = max(time.monotonic() + 60, budget_end - 90)  # leaves time to read it all
        while time.monotonic() < deadline and caught_up < 3:
            current = group_lag(kafka_bootstrap, app_id)
            caught_up = caught_up + 1 if current == 0 else 0
            if current != last:
                last, changed_at = current, time.monotonic()
            elif current != 0 and time.monotonic() - changed_at > 120:
                fault_log.append(f"worker made no progress for 120 s (lag {current})")
                break
            if caught_up < 3:
                time.sleep(5)
        if caught_up >= 3:
            fault_log.append(f"worker caught up {time.monotonic() - t0 - stats.elapsed_s:.0f}s "
                             "after publishing ended")
        elif time.monotonic() >= deadline:
            fault_log.append(f"worker not caught up within the time budget (lag {last})")
        opened = open_operations(f"http://127.0.0.1:{web_port}", ledger)
    finally:
        shovel_exits, worker_exits = shovel.unexpected_exits, worker.unexpected_exits
        shovel.stop()
        worker.stop()
        with Rabbit(rabbit_url) as rabbit:
            rabbit.delete_queue(queue)
            rabbit.delete_exchange(exchange)

    # -- trove.notifications: every confirmed valid id at least once
    ours = exchange.encode()
    notification_ids: Counter[str] = Counter()
    for message in read_until_end(kafka_bootstrap, partitions_from_zero(kafka_bootstrap, source),
                                  keep=lambda m: header(m, "trovemeter.exchange") == ours):
        mid = header(message, "trovemeter.message_id")
        if mid is not None:
            notification_ids[mid.decode()] += 1
    confirmed = stats.confirmed_ids
    delivered = confirmed & notification_ids.keys()
    missing = confirmed - notification_ids.keys()

    # -- the DLQ: every garbage body, with the reason parse_body gives
    reasons = dead_letter_expectation(stats.confirmed_garbage)
    letters: Counter[str] = Counter()
    letter_reasons: dict[str, str] = {}
    for message in read_until_end(kafka_bootstrap, partitions_from_zero(kafka_bootstrap, dlq),
                                  keep=lambda m: header(m, "trovemeter.exchange") == ours):
        letter = codec.decode(message.value())
        assert isinstance(letter, DeadLetter)
        letters[letter.body_sha256] += 1
        letter_reasons[letter.body_sha256] = letter.reason.value
    garbage_by_sha = Counter({hashlib.sha256(b).hexdigest(): n
                              for b, n in stats.confirmed_garbage.items()})
    lettered_by_reason: Counter[str] = Counter()
    for sha, n in garbage_by_sha.items():
        lettered_by_reason[letter_reasons.get(sha, "MISSING")] += min(n, letters.get(sha, 0))
    lettered_by_reason.pop("MISSING", None)
    wrong_reason = {sha: (letter_reasons[sha], reasons[sha]) for sha in letter_reasons
                    if sha in reasons and letter_reasons[sha] != reasons[sha]}
    strangers = set(letters) - set(garbage_by_sha)  # dead letters that were not garbage

    # -- the worker's outputs
    tally = PipelineTally(accept=ledger.owns)
    operation_records = usage_records = 0
    mine = app_id.encode()  # other workers on the stack may write the same topics
    for message in read_until_end(kafka_bootstrap, {k: v for k, v in start.items()
                                                    if k[0] in OUTPUTS},
                                  keep=lambda m: header(m, "trovemeter.app_id") in (None, mine)):
        try:
            record = codec.decode(message.value())
        except Exception:  # noqa: BLE001 - another producer's record
            continue
        if not ledger.owns(record):
            continue
        operation_records += isinstance(record, OperationCompleted)
        usage_records += isinstance(record, UsageRecord)
        tally.add(record)
    window = horizon_of(expected)
    observed = Observed(
        operations=tally.operation_counts(), failures=tally.failure_counts(),
        dead_letters=sum(lettered_by_reason.values()),
        message_ids={m for m in notification_ids if m in ledger.message_ids},
        durations={name: tally.durations(name) for name in expected["operation_durations"]},
        open_operations=opened, usage=tally.usage_by_tenant(*window) if tally.usage else None,
        usage_agent_present=usage_stage_present(),
        resources=tally.snapshot()["resources"]["by_type"])
    checks = compare(expected, observed)
    failed = [c for c in checks if c.ok is False]
    # Billed seconds per tenant and flavor, compared here exactly (latest version per record
    # id, windows inside the horizon), not through the demo summary's labels.
    want_seconds = {t: {f: float(v) for f, v in flavors.items() if v}
                    for t, flavors in expected["billing"]["instance_seconds"].items()}
    got_seconds = {t: {f: round(v, 6) for f, v in u.instance_seconds.items() if v}
                   for t, u in (observed.usage or {}).items() if ledger.tenants & {t}}
    got_seconds = {t: f for t, f in got_seconds.items() if f}
    usage_ok = observed.usage is not None and got_seconds == want_seconds

    def section_ok(section: str, label_end: str = "") -> bool | None:
        found = [c for c in checks if c.section == section and c.label.endswith(label_end)]
        if not found or any(c.ok is False for c in found):
            return None if not found else False
        return True if all(c.ok for c in found) else None

    run = RunCounts(
        name=f"~{MESSAGES // 1000}k messages, seed {SEED}",
        faults=[(kind, faults[kind]) for kind in ("shovel SIGKILL", "worker SIGKILL",
                                                  "Kafka stop/restart", "RabbitMQ stop/restart")
                if faults[kind]],
        published=dict(stats.confirmed), expected_ids=len(confirmed),
        delivered_ids=len(delivered), notification_records=sum(notification_ids.values()),
        dead_letters=dict(lettered_by_reason), dead_letter_records=sum(letters.values()),
        garbage_published=sum(garbage_by_sha.values()),
        operation_records=operation_records, operations_distinct=len(tally.operations),
        usage_records=usage_records, usage_latest=len(tally.usage),
        checks=[
            ("every confirmed message id in trove.notifications", not missing),
            ("dead letters carry parse_body's reason", not wrong_reason and not strangers),
            ("operations succeeded = expected", section_ok("operations", "succeeded")),
            ("operations failed = expected", section_ok("operations", "failed")),
            ("operations abandoned (reported + open) = expected",
             section_ok("operations", "abandoned")),
            ("errors by tenant/operation/exception = expected", section_ok("failures")),
            ("billed instance seconds per tenant and flavor = truth", usage_ok),
            ("usage per tenant, every meter = truth", section_ok("usage")),
            ("durations p50/p95 per operation = expected", section_ok("durations")),
        ],
        notes=[f"notifications topic: {source} (the run's copy of trove.notifications)",
               *fault_log,
               f"unexpected exits restarted: shovel {shovel_exits or 'none'}, "
               f"worker {worker_exits or 'none'}"])
    RESULTS.append(run)
    delete_worker_state(kafka_bootstrap, app_id)
    delete_topics(kafka_bootstrap, [source, dlq])

    details = "\n".join(f"{c.mark} {c.section}: {c.label}: expected {c.expected}, got "
                        f"{c.actual}" + "".join(f"\n    {d}" for d in c.details)
                        for c in checks if c.ok is not True)
    print(f"\nchecks not passed:\n{details}" if details else "\nevery check passed")
    DETAILS_FILE.parent.mkdir(parents=True, exist_ok=True)
    DETAILS_FILE.write_text(details + "\n")
    assert not missing, f"{len(missing)} confirmed message ids never reached trove.notifications"
    assert not strangers, f"{len(strangers)} dead letters of valid messages"
    assert not wrong_reason, f"dead letters with another reason than parse_body's: {wrong_reason}"
    assert run.dead_letters_missing == 0, f"{run.dead_letters_missing} garbage bodies lost"
    assert observed.usage is not None, \
        "no trove.usage record from this run: the usage agent is not in the worker (yet)"
    assert usage_ok, f"billed instance seconds differ: expected {want_seconds}, got {got_seconds}"
    assert not failed, f"pipeline totals differ from the scenario's:\n{details}"


# ------------------------------------------------------------------ 2. Kafka unreachable


def test_kafka_unreachable_for_a_minute_holds_the_backlog_and_drains(
        kafka_bootstrap: str, rabbit_url: str, unique_name: str, tmp_path: Path) -> None:
    name = f"chaos-{unique_name}"
    queue, exchange = f"{name}.q", f"{name}.trove"
    fixtures = load_fixtures()
    count = int(os.environ.get("TROVEMETER_CHAOS_BACKLOG", "20000"))
    before, prefetch = 2_000, 2000

    def messages(first: int, last: int) -> list[WireMessage]:
        out = []
        for i in range(first, last):
            fixture = fixtures[i % len(fixtures)]
            body = fixture.with_message_id(str(uuid.uuid4()))
            out.append(WireMessage(body, fixture.routing_key, exchange, AMQP_PROPERTIES,
                                   None, "valid", 0.0))
        return out

    start = end_offsets(kafka_bootstrap, [topics.NOTIFICATIONS, topics.NOTIFICATIONS_DLQ])
    with Rabbit(rabbit_url) as rabbit:
        rabbit.prepare(queue, [exchange])
    port = free_port()
    shovel = Supervised("shovel", shovel_command(queue, exchange, port, "--prefetch",
                                                 str(prefetch)),
                        tmp_path / "shovel.log", {}, ready=lambda: shovel_healthy(port))
    samples: dict[str, Any] = {}
    try:
        shovel.start()
        shovel.wait_ready(60)
        first = ConfirmedPublisher(rabbit_url, exchange, 5000, lambda m: message_id_of(m.body))
        first.run(messages(0, before))
        wait_for(lambda: shovel_metrics(port).get("trovemeter_shovel_acked_total", 0) >= before,
                 60, "the first messages acked")
        acked_before = shovel_metrics(port)["trovemeter_shovel_acked_total"]
        rest = ConfirmedPublisher(rabbit_url, exchange, 2000, lambda m: message_id_of(m.body))
        with kafka_frozen(FREEZE_S) as frozen_at:
            rest.run(messages(before, count))  # RabbitMQ takes them while Kafka is frozen
            # the shovel calls a silent Kafka an outage after 10 s without a delivery report
            time.sleep(max(0.0, frozen_at + SAMPLE_AT - time.monotonic()))
            samples["queue"] = queue_counts(queue)
            samples["metrics"] = shovel_metrics(port)
            samples["healthz"] = http_get(f"http://127.0.0.1:{port}/healthz")[0]
        drained = wait_for(lambda: queue_counts(queue) == (0, 0), 300, "the backlog to drain",
                           interval=2)
        metrics_after = shovel_metrics(port)
    finally:
        exits = shovel.unexpected_exits
        shovel.stop()
        with Rabbit(rabbit_url) as rabbit:
            rabbit.delete_queue(queue)
            rabbit.delete_exchange(exchange)

    ours = exchange.encode()
    ids: Counter[str] = Counter()
    for message in read_until_end(kafka_bootstrap, {k: v for k, v in start.items()
                                                    if k[0] == topics.NOTIFICATIONS},
                                  keep=lambda m: header(m, "trovemeter.exchange") == ours):
        ids[header(message, "trovemeter.message_id").decode()] += 1
    letters = read_until_end(kafka_bootstrap, {k: v for k, v in start.items()
                                               if k[0] == topics.NOTIFICATIONS_DLQ},
                             keep=lambda m: header(m, "trovemeter.exchange") == ours)
    confirmed = first.stats.confirmed_ids | rest.stats.confirmed_ids
    ready, unacked = samples["queue"]
    during = samples["metrics"]
    acked_during = during.get("trovemeter_shovel_acked_total", -1) - acked_before
    checks = [
        ("nothing acked while Kafka was unreachable", acked_during == 0),
        (f"RabbitMQ held the backlog: {ready} ready + {unacked} unacked at {SAMPLE_AT:.0f} s",
         ready + unacked == count - before and unacked == prefetch),
        ("/healthz 503 while Kafka was unreachable", samples["healthz"] == 503),
        ("nothing dead-lettered", not letters),
        (f"drained {drained:.0f} s after Kafka came back", True),
    ]
    run = RunCounts(
        name=f"Kafka unreachable {FREEZE_S:.0f} s", faults=[(f"Kafka SIGSTOP {FREEZE_S:.0f} s", 1)],
        published=dict(Counter(first.stats.confirmed) + Counter(rest.stats.confirmed)),
        expected_ids=len(confirmed), delivered_ids=len(confirmed & ids.keys()),
        notification_records=sum(ids.values()), dead_letters={},
        dead_letter_records=len(letters), garbage_published=0, checks=checks,
        notes=[f"shovel: {int(metrics_after.get('trovemeter_shovel_kafka_outages_total', 0))} "
               f"outage(s), {int(metrics_after.get('trovemeter_shovel_delivery_failures_total', 0))}"
               " failed reports retried",
               f"unexpected shovel exits: {exits or 'none'}"])
    RESULTS.append(run)
    assert run.lost == 0, f"{run.lost} messages lost"
    assert acked_during == 0, f"{acked_during} deliveries acked while Kafka was unreachable"
    assert ready + unacked == count - before and unacked == prefetch, (ready, unacked)
    assert samples["healthz"] == 503
    assert not letters, "dead letters while Kafka was unreachable"
    assert metrics_after.get("trovemeter_shovel_kafka_outages_total", 0) >= 1
    assert not exits, f"the shovel exited: {exits}"
