"""Usage metering end to end on the real brokers: a simulated day for a few tenants published to
RabbitMQ (an exchange of its own) -> `trovemeter shovel` -> Kafka -> `trovemeter worker` (an app
id of its own) -> trove.usage, whose latest version per record id must bill *exactly* what the
simulator says (``scenario.expected.billing``), and the worker's /usage/tenants/ view the same.

Shovel and worker run on topics of this test only (the ``--topic`` / ``TROVEMETER_*_TOPIC``
settings): the worker's event time then moves with this scenario alone. The day is published
as fast as RabbitMQ takes it (~500 messages in well under a second), so the four partitions
race through it at different speeds: each partition closes its hours with its own events, and
the partitions the scenario's closing messages do not reach close theirs with ticks, once idle.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from tests.integration.worker_harness import (
    OutputReader,
    WorkerProcess,
    create_topics,
    delete_topics,
    end_offsets,
    wait_until,
)
from trovemeter.accrual import (
    BACKUP_GB_SECONDS,
    EXISTS_SECONDS,
    INSTANCE_SECONDS,
    VOLUME_GB_SECONDS,
    latest_versions,
)
from trovemeter.codec import SCHEMA_NAME_HEADER
from trovemeter.model import UsageRecord
from trovemeter.simulation import ScenarioConfig, build_scenario

pytestmark = pytest.mark.integration


@pytest.fixture
def own_topics(kafka_bootstrap: str, unique_name: str) -> Iterator[dict[str, str]]:
    names = {name: f"{unique_name}.{name}" for name in (
        "notifications", "operations", "errors", "resources", "usage", "discrepancies")}
    create_topics(kafka_bootstrap, [n for k, n in names.items() if k != "usage"], 4)
    create_topics(kafka_bootstrap, [names["usage"]], 4, config={"cleanup.policy": "compact"})
    create_topics(kafka_bootstrap, [f"{unique_name}.dlq"], 1)
    yield names
    delete_topics(kafka_bootstrap, f"{unique_name}.")


def billed(records: list[UsageRecord], horizon: datetime) -> dict[str, Any]:
    """``expected.billing``'s shape from the latest version of each record before the horizon."""
    per_flavor: dict[str, Counter[str]] = defaultdict(Counter)
    volume: Counter[str] = Counter()
    backup: dict[str, Fraction] = defaultdict(Fraction)
    audited: Counter[str] = Counter()
    for record in latest_versions(records).values():
        if record.window_start >= horizon or not record.quantity:
            continue
        if record.meter == INSTANCE_SECONDS:
            per_flavor[record.tenant_id][record.flavor_id or ""] += int(record.quantity)
        elif record.meter == VOLUME_GB_SECONDS:
            volume[record.tenant_id] += int(record.quantity)
        elif record.meter == BACKUP_GB_SECONDS:
            backup[record.tenant_id] += Fraction(record.quantity)
        elif record.meter == EXISTS_SECONDS:
            audited[record.tenant_id] += int(record.quantity)
    return {"instance_seconds": {t: dict(sorted(c.items())) for t, c in sorted(per_flavor.items())
                                 if c},
            "volume_gb_seconds": dict(sorted(volume.items())),
            "backup_gb_seconds": {t: round(float(v), 2) for t, v in sorted(backup.items())},
            "exists_seconds": dict(sorted(audited.items()))}


def viewed(body: dict[str, Any]) -> dict[str, Any]:
    """The view's meters in ``expected.billing``'s units."""
    out: dict[str, Any] = {"instance_seconds": {}}
    for meter in body["meters"]:
        if meter["meter"] == INSTANCE_SECONDS:
            out["instance_seconds"][meter["flavor_id"]] = int(meter["quantity"])
        elif meter["meter"] == BACKUP_GB_SECONDS:
            out["backup_gb_seconds"] = round(meter["quantity"], 2)
        else:
            name = {VOLUME_GB_SECONDS: "volume_gb_seconds", EXISTS_SECONDS: "exists_seconds"}
            out[name[meter["meter"]]] = int(meter["quantity"])
    return out


def expected_view(billing: dict[str, Any], tenant: str) -> dict[str, Any]:
    out: dict[str, Any] = {"instance_seconds": billing["instance_seconds"].get(tenant, {})}
    for name in ("volume_gb_seconds", "backup_gb_seconds", "exists_seconds"):
        if billing[name].get(tenant):
            out[name] = billing[name][tenant]
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_a_simulated_day_bills_exactly_the_simulators_truth(
        kafka_bootstrap: str, rabbit_url: str, unique_name: str, own_topics: dict[str, str],
        tmp_path: Path, workers: int) -> None:
    """One worker; and two (one consumer group: each owns two partitions, sweeps its own keys,
    closes its quiet partitions with ticks, and the view sums both workers' parts)."""
    from connectors.simulator import publish
    from tests.integration.conftest import free_port
    from tests.integration.shovel_harness import Rabbit, ShovelProcess

    exchange, queue = f"{unique_name}.trove", f"{unique_name}.q"
    # A day that ended an hour ago (event time is capped near the wall clock), a seed (hence
    # tenant ids) of its own, the simulator's default noise: duplicates, reordering, garbage.
    # About 1 seed in 150 leaves a tenant without an instance (15 drawn among 3): draw again,
    # since the checks below need every tenant billed.
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=26)
    for _ in range(20):
        config = ScenarioConfig(seed=uuid.uuid4().int % 1_000_000, tenants=3, instances=15,
                                hours=24, start=start, exchange=exchange)
        scenario = build_scenario(config)
        billing = scenario.expected.to_json()["billing"]
        tenants = sorted(billing["exists_seconds"])
        if len(tenants) == 3 and len(billing["instance_seconds"]) == 3:
            break
    assert len(tenants) == 3 and len(billing["instance_seconds"]) == 3, config.seed

    env = {"TROVEMETER_SOURCE_TOPIC": own_topics["notifications"],
           "TROVEMETER_OPERATIONS_TOPIC": own_topics["operations"],
           "TROVEMETER_ERRORS_TOPIC": own_topics["errors"],
           "TROVEMETER_RESOURCES_TOPIC": own_topics["resources"],
           "TROVEMETER_USAGE_TOPIC": own_topics["usage"],
           "TROVEMETER_USAGE_DISCREPANCIES_TOPIC": own_topics["discrepancies"]}
    group = [WorkerProcess(kafka_bootstrap, f"{unique_name}-w", tmp_path / f"worker{i}.log",
                           env=env).start() for i in range(workers)]
    reader = OutputReader(kafka_bootstrap, end_offsets(kafka_bootstrap, [own_topics["usage"]]),
                          keep=lambda record: isinstance(record, UsageRecord))
    rabbit = Rabbit(rabbit_url)
    shovel = ShovelProcess(queue, [exchange], free_port(), tmp_path / "shovel.log",
                           extra_args=["--topic", own_topics["notifications"],
                                       "--dlq-topic", f"{unique_name}.dlq"])
    try:
        rabbit.prepare(queue, [exchange])
        shovel.start()
        shovel.wait_healthy(60)
        for worker in group:
            worker.wait_ready(own_topics["notifications"])
        if workers > 1:  # the group has settled: every worker owns source partitions
            wait_until(lambda: all(len(w.status()["assignment"].get(
                own_topics["notifications"], [])) == 4 // workers for w in group), 60,
                "partitions split between the workers")
        t0 = time.monotonic()
        report = publish(scenario.messages(), rabbit_url, [exchange], confirm=True)
        assert report.published == scenario.expected.messages["total"]

        # trove.usage: latest version per record id, until it bills the scenario's truth.
        horizon = config.horizon
        want = {name: billing[name] for name in ("instance_seconds", "volume_gb_seconds",
                                                 "backup_gb_seconds", "exists_seconds")}
        try:
            reader.wait(lambda outputs: billed([o.record for o in outputs], horizon) == want,
                        timeout=90)
        except TimeoutError:
            got = billed(reader.on(own_topics["usage"]), horizon)
            assert got == want, "\n".join(w.logs()[-2000:] for w in group)  # the difference
        seconds = time.monotonic() - t0
        records = reader.on(own_topics["usage"])
        assert billed(records, horizon) == want  # exactly: seconds, GB-seconds, audits
        assert {r.tenant_id for r in records} == set(tenants)
        for output in reader.outputs:  # keyed by record id, named by the codec's header
            assert output.key == output.record.record_id.encode()
            assert output.headers[SCHEMA_NAME_HEADER].endswith(b"UsageRecord")

        # Each worker's view of each tenant's day: the same totals, and a line per resource.
        query = f"?start={start.isoformat().replace('+00:00', 'Z')}" \
                f"&end={horizon.isoformat().replace('+00:00', 'Z')}"
        for worker in group:
            for tenant in tenants:
                code, body = worker.get(f"/usage/tenants/{tenant}/{query}")
                assert code == 200, body
                assert viewed(body) == expected_view(billing, tenant), json.dumps(body)[:3000]
                assert body["tenant_id"] == tenant and not body["partial"]
                assert len(body["workers"]) == workers
                assert body["closed_through"] >= horizon.isoformat()
                lines: Counter[str] = Counter()
                for line in body["resources"]:
                    if line["meter"] == INSTANCE_SECONDS:
                        lines[line["flavor_id"]] += line["quantity"]
                billed_flavors = {m["flavor_id"]: m["quantity"] for m in body["meters"]
                                  if m["meter"] == INSTANCE_SECONDS}
                unattributed = {u["flavor_id"]: u["quantity"] for u in body["unattributed"]
                                if u["meter"] == INSTANCE_SECONDS}
                for flavor, total in billed_flavors.items():  # lines + forgotten resources
                    assert lines[flavor] + unattributed.get(flavor, 0.0) == pytest.approx(total)
        usage = [w.status()["usage"] for w in group]
        print(f"simulated day, {workers} worker(s): {len(records)} usage records "
              f"({len(latest_versions(records))} ids) for {report.published} messages in "
              f"{seconds:.1f}s; usage: {json.dumps(usage)}")
    finally:
        reader.close()
        if shovel.process is not None:
            shovel.stop()
        for worker in group:
            worker.stop()
        rabbit.delete_queue(queue)
        rabbit.delete_exchange(exchange)
        rabbit.close()
        delete_topics(kafka_bootstrap, f"{unique_name}-w-")


def test_a_worker_killed_mid_day_bills_exactly_after_the_restart(
        kafka_bootstrap: str, rabbit_url: str, unique_name: str, own_topics: dict[str, str],
        tmp_path: Path) -> None:
    """kill -9 half-way through the day (no flush, no commit): the next worker recovers the
    metering states and watermarks from their changelogs, replays what was not committed
    (re-emitting identical records) and the latest versions still bill exactly."""
    from connectors.simulator import publish
    from tests.integration.conftest import free_port
    from tests.integration.shovel_harness import Rabbit, ShovelProcess

    exchange, queue = f"{unique_name}.trove", f"{unique_name}.q"
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=26)
    config = ScenarioConfig(seed=uuid.uuid4().int % 1_000_000, tenants=3, instances=15,
                            hours=24, start=start, exchange=exchange)
    scenario = build_scenario(config)
    billing = scenario.expected.to_json()["billing"]
    messages = list(scenario.messages())
    half = 12 * 3600
    first_half = [m for m in messages if m.sent_offset < half]
    second_half = [m for m in messages if m.sent_offset >= half]
    env = {"TROVEMETER_SOURCE_TOPIC": own_topics["notifications"],
           "TROVEMETER_OPERATIONS_TOPIC": own_topics["operations"],
           "TROVEMETER_ERRORS_TOPIC": own_topics["errors"],
           "TROVEMETER_RESOURCES_TOPIC": own_topics["resources"],
           "TROVEMETER_USAGE_TOPIC": own_topics["usage"],
           "TROVEMETER_USAGE_DISCREPANCIES_TOPIC": own_topics["discrepancies"],
           # The killed worker's partitions move to the next one after this, not a minute.
           "TROVEMETER_SESSION_TIMEOUT_SECONDS": "10"}
    app_id = f"{unique_name}-w"
    workers = [WorkerProcess(kafka_bootstrap, app_id, tmp_path / "worker-1.log",
                             env=env).start()]
    reader = OutputReader(kafka_bootstrap, end_offsets(kafka_bootstrap, [own_topics["usage"]]),
                          keep=lambda record: isinstance(record, UsageRecord))
    rabbit = Rabbit(rabbit_url)
    shovel = ShovelProcess(queue, [exchange], free_port(), tmp_path / "shovel.log",
                           extra_args=["--topic", own_topics["notifications"],
                                       "--dlq-topic", f"{unique_name}.dlq"])
    try:
        rabbit.prepare(queue, [exchange])
        shovel.start()
        shovel.wait_healthy(60)
        workers[0].wait_ready(own_topics["notifications"])
        publish(first_half, rabbit_url, [exchange], confirm=True)
        ten_hours_in = start + timedelta(hours=10)
        reader.wait(lambda outputs: any(o.record.window_start >= ten_hours_in
                                        for o in outputs), timeout=60)
        time.sleep(4)  # past a commit (2.8 s): the next worker recovers state, replays a tail
        workers[0].kill()  # mid-stream: no flush, no commit, no goodbye
        killed_at = len(reader.outputs)

        workers.append(WorkerProcess(kafka_bootstrap, app_id, tmp_path / "worker-2.log",
                                     env=env).start())
        workers[1].wait_ready(own_topics["notifications"], timeout=120)
        publish(second_half, rabbit_url, [exchange], confirm=True)
        want = {name: billing[name] for name in ("instance_seconds", "volume_gb_seconds",
                                                 "backup_gb_seconds", "exists_seconds")}
        try:
            reader.wait(lambda outputs: billed([o.record for o in outputs],
                                               config.horizon) == want, timeout=90)
        except TimeoutError:
            got = billed(reader.on(own_topics["usage"]), config.horizon)
            assert got == want, workers[1].logs()[-3000:]
        records = reader.on(own_topics["usage"])
        assert billed(records, config.horizon) == want
        # A record id never carries two contents under one version.
        seen: dict[tuple[str, int], UsageRecord] = {}
        for record in records:
            assert seen.setdefault((record.record_id, record.version), record) == record
        print(f"kill -9 after {killed_at} usage records; {len(records) - len(seen)} identical "
              f"repeats after the restart, {len(records)} records in all")
    finally:
        reader.close()
        if shovel.process is not None:
            shovel.stop()
        for worker in workers:
            worker.kill()
        rabbit.delete_queue(queue)
        rabbit.delete_exchange(exchange)
        rabbit.close()
        delete_topics(kafka_bootstrap, f"{unique_name}-w-")
