"""`trovemeter worker` against the real Kafka (and, end to end, RabbitMQ and the shovel).

Each test runs its own worker process(es) with its own app id (consumer group, changelog and
pairing topics), web port and data directory. The first test uses the real topics
(trove.notifications -> trove.operations / trove.errors / trove.resources) for a tenant of its
own; other workers sharing this stack (demos, benchmarks) read trove.notifications too and may
write records for the same operations (with the event time of *their* stream), so it reads only
the records with its own worker's ``trovemeter.app_id`` header. The restart, two-worker and
end-to-end tests count records exactly, so they run on topics of their own (the
``TROVEMETER_*_TOPIC`` settings), where nothing else reads or writes.

"No operation reported twice" is checked as: every operation's record id is on trove.operations
with exactly one content (a consumer that drops repeats by record id sees each operation once,
and never two versions of one). After a kill -9 the worker may write a record it had already
written (at-least-once, no Kafka transactions): the test reports how many such identical
repeats there were; after a graceful stop there are none.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.worker_harness import (
    OutputReader,
    WorkerProcess,
    commit_group_at_end,
    create_topics,
    delete_topics,
    end_offsets,
    exists,
    note,
    produce,
    shovel_producer,
    utcnow,
    wait_until,
)
from trovemeter import topics
from trovemeter.model import (
    OperationCompleted,
    OperationError,
    Outcome,
    Phase,
    ResourceState,
    ResourceStatus,
    ResourceType,
)

pytestmark = pytest.mark.integration

FAST = {
    "TROVEMETER_TICK_INTERVAL_SECONDS": "0.5",
    # A killed worker's partitions move to the next one after this, not after a minute.
    "TROVEMETER_SESSION_TIMEOUT_SECONDS": "10",
}
SHORT_TIMEOUTS = {
    **FAST,
    # Event time moves with the notifications' timestamps: with these, a start without end is
    # abandoned, and an end without start reported, seconds (of event time) later. An event
    # that arrives more than the allowed lateness behind the newest is late by contract, so a
    # test using these produces the event that moves event time on only after the rest is read.
    "TROVEMETER_OPERATION_TIMEOUTS": "delete=5",
    "TROVEMETER_PAIRING_MAX_CLOCK_SKEW_SECONDS": "1",
    "TROVEMETER_PAIRING_ALLOWED_LATENESS_SECONDS": "60",
    "TROVEMETER_PAIRING_RETENTION_SECONDS": "120",
}


@pytest.fixture
def workers(tmp_path: Path, kafka_bootstrap: str) -> Iterator[list[WorkerProcess]]:
    """Worker processes started by the test; killed at the end, their topics deleted."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()
        worker.remove_data_dir()
    for app_id in {w.app_id for w in started}:
        delete_topics(kafka_bootstrap, f"{app_id}-")


@pytest.fixture
def own_topics(kafka_bootstrap: str, unique_name: str) -> Iterator[dict[str, str]]:
    """Source and output topics of this test only (4 partitions, like the real ones)."""
    names = {name: f"{unique_name}.{name}"
             for name in ("notifications", "operations", "errors", "resources")}
    create_topics(kafka_bootstrap, names.values(), 4)
    yield names
    delete_topics(kafka_bootstrap, f"{unique_name}.")


def topic_env(names: dict[str, str]) -> dict[str, str]:
    return {"TROVEMETER_SOURCE_TOPIC": names["notifications"],
            "TROVEMETER_OPERATIONS_TOPIC": names["operations"],
            "TROVEMETER_ERRORS_TOPIC": names["errors"],
            "TROVEMETER_RESOURCES_TOPIC": names["resources"]}


def differences(versions: dict[str, list[Any]]) -> dict[str, Any]:
    """The fields in which the versions of a record differ (for assertion messages)."""
    out = {}
    for record_id, records in versions.items():
        if len(records) > 1:
            fields = [f for f in records[0].__dataclass_fields__
                      if len({repr(getattr(r, f)) for r in records}) > 1]
            out[record_id] = {f: [getattr(r, f) for r in records] for f in fields}
    return out


def view_until(worker: WorkerProcess, path: str, ok: Any, timeout: float = 30) -> Any:
    """The JSON of a view once ``ok(body)`` holds (views catch up with the outputs)."""
    def answer() -> Any:
        code, body = worker.get(path)
        return body if code == 200 and ok(body) else None
    return wait_until(answer, timeout, f"{path} on {worker.url}")


def distinct(records: list[Any]) -> dict[str, list[Any]]:
    """record id -> the distinct versions written (a repeat of the same content is one)."""
    versions: dict[str, list[Any]] = {}
    for record in records:
        seen = versions.setdefault(record.record_id, [])
        if record not in seen:
            seen.append(record)
    return versions


# ------------------------------------------------------------------ one worker, real topics


def test_one_worker_pairs_counts_and_tracks_state(kafka_bootstrap: str, unique_name: str,
                                                  workers: list[WorkerProcess],
                                                  tmp_path: Path) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    app_id = f"{unique_name}-w"
    commit_group_at_end(kafka_bootstrap, app_id, [topics.NOTIFICATIONS, topics.ERRORS])
    worker = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "worker.log",
                           env=SHORT_TIMEOUTS).start()
    workers.append(worker)
    worker.wait_ready(topics.NOTIFICATIONS)

    base = utcnow() - timedelta(minutes=10)
    t = lambda seconds: base + timedelta(seconds=seconds)  # noqa: E731
    inst, backup = str(uuid.uuid4()), str(uuid.uuid4())
    req = {name: str(uuid.uuid4()) for name in "ABCDEFG"}
    # Everything but the audit within 30 s of event time (< the allowed lateness): nothing is
    # decided by event time until the audit, 5 minutes later, is read.
    create_start = note(Phase.START, t(0), tenant=tenant, request_id=req["A"],
                        payload={"flavor_id": "7", "name": "db-a", "datastore": "mysql",
                                 "datastore_version": "8.0"})
    create_end = note(Phase.END, t(20), tenant=tenant, request_id=req["A"], resource_id=inst,
                      payload={"instance_id": inst, "flavor_id": "7", "volume_size": 10,
                               "name": "db-a"})
    failed_start = note(Phase.START, t(1), tenant=tenant, request_id=req["B"])
    failed_error = note(Phase.ERROR, t(5), tenant=tenant, request_id=req["B"])
    backup_start = note(Phase.START, t(2), tenant=tenant, request_id=req["C"],
                        resource_type=ResourceType.BACKUP, payload={"instance_id": inst})
    backup_end = note(Phase.END, t(15), tenant=tenant, request_id=req["C"], resource_id=backup,
                      resource_type=ResourceType.BACKUP, payload={"size": 2.5})
    resize_start = note(Phase.START, t(21), tenant=tenant, request_id=req["D"],
                        operation="resize_flavor", resource_id=inst,
                        payload={"instance_id": inst, "new_flavor_id": "8"})
    resize_end = note(Phase.END, t(24), tenant=tenant, request_id=req["D"],
                      operation="resize_flavor", resource_id=inst)
    delete_start = note(Phase.START, t(25), tenant=tenant, request_id=req["E"],
                        operation="delete", resource_id=inst)
    orphan_end = note(Phase.END, t(26), tenant=tenant, request_id=req["F"],
                      operation="resize_volume", resource_id=inst)
    restart_start = note(Phase.START, t(27), tenant=tenant, request_id=req["G"],
                         operation="restart", resource_id=inst)
    audit = exists(t(300), tenant=tenant, instance_id=inst, flavor_id="8")

    start = end_offsets(kafka_bootstrap, [topics.OPERATIONS, topics.ERRORS, topics.RESOURCES])
    reader = OutputReader(kafka_bootstrap, start, app_id=app_id,
                          keep=lambda record: getattr(record, "tenant_id", None) == tenant)
    producer = shovel_producer(kafka_bootstrap)
    produce(producer, topics.NOTIFICATIONS, [
        create_end, create_start,  # the end first: order must not matter
        failed_start, failed_error,
        backup_end, backup_start,
        resize_start, resize_start, resize_end, resize_end,  # at-least-once upstream
        delete_start, orphan_end, restart_start,
    ])

    def out(requests: str) -> Any:
        return lambda outputs: {r.request_id for r in reader.on(topics.OPERATIONS)} >= \
            {req[k] for k in requests}
    # A-D complete on arrival. Once they are out, every partition has been read up to them, and
    # what is left (E, F, G) is on the instance's partition, ahead of the audit below.
    reader.wait(out("ABCD"), timeout=60)
    # Event time moves on only with the stream: an audit stamped later decides E and F.
    produce(producer, topics.NOTIFICATIONS, [audit])
    reader.wait(out("ABCDEF"), timeout=60)
    reader.poll(1.0)  # a late repeat would show up here

    ops = distinct(reader.on(topics.OPERATIONS))
    assert all(len(versions) == 1 for versions in ops.values()), differences(ops)
    by_request = {v[0].request_id: v[0] for v in ops.values()}
    assert set(by_request) == {req[k] for k in "ABCDEF"}  # G is still open
    assert by_request[req["A"]].outcome is Outcome.SUCCEEDED
    assert by_request[req["A"]].duration_seconds == 20
    assert by_request[req["A"]].resource_id == inst and by_request[req["A"]].flavor_id == "7"
    assert by_request[req["B"]].outcome is Outcome.FAILED
    assert by_request[req["C"]].outcome is Outcome.SUCCEEDED
    assert by_request[req["C"]].size_gb == 2.5
    assert by_request[req["D"]].outcome is Outcome.SUCCEEDED
    assert by_request[req["E"]].outcome is Outcome.ABANDONED
    assert by_request[req["E"]].ended_at is None
    orphan = by_request[req["F"]]
    assert orphan.outcome is Outcome.SUCCEEDED and orphan.started_at is None
    assert orphan.duration_seconds is None

    [error] = [v[0] for v in distinct(reader.on(topics.ERRORS)).values()]
    assert isinstance(error, OperationError)
    assert error.record_id == by_request[req["B"]].record_id
    assert error.exception_class == "trove.common.exception.TroveError"
    assert error.exception_last_line == ("trove.common.exception.TroveError: Server creation "
                                         "failed: No valid host was found.")

    states = [r for r in reader.on(topics.RESOURCES) if isinstance(r, ResourceState)]
    latest = {s.resource_id: s for s in states}  # the last written per key, as compaction keeps
    # The audit (newest) reports the instance active with the resized flavor; an audit is not
    # the last event of an instance that other notifications describe.
    assert latest[inst].status is ResourceStatus.ACTIVE
    assert latest[inst].flavor_id == "8" and latest[inst].volume_size_gb == 10
    assert latest[inst].last_message_id == restart_start.message_id
    assert latest[backup].resource_type is ResourceType.BACKUP and latest[backup].size_gb == 2.5

    # --- the web views of this worker
    code, recent = worker.get(f"/operations/recent/?tenant={tenant}")
    assert code == 200 and recent["count"] == 6 and not recent["partial"]
    assert {op["request_id"] for op in recent["operations"]} == {req[k] for k in "ABCDEF"}
    times = [op.get("ended_at") or op.get("started_at") for op in recent["operations"]]
    assert times == sorted(times, reverse=True)
    code, failed = worker.get(f"/operations/recent/?tenant={tenant}&outcome=failed")
    assert [op["request_id"] for op in failed["operations"]] == [req["B"]]
    code, resizes = worker.get(f"/operations/recent/?tenant={tenant}&operation=resize_flavor")
    assert [op["request_id"] for op in resizes["operations"]] == [req["D"]]
    code, open_ops = worker.get(f"/operations/open/?tenant={tenant}")
    assert [(op["request_id"], op["operation"], op["has_start"], op["has_end"])
            for op in open_ops["operations"]] == [(req["G"], "restart", True, False)]
    errors = view_until(worker, f"/errors/?tenant={tenant}", lambda body: body["count"] == 1)
    [count] = errors["errors"]
    assert (count["resource_type"], count["operation"], count["exception_class"],
            count["total"]) == ("instance", "create", "trove.common.exception.TroveError", 1)
    assert sum(count["hourly"].values()) == 1
    code, resource = worker.get(f"/resources/{inst}/")
    assert code == 200 and resource["resource"]["status"] == "active"
    assert resource["resource"]["flavor_id"] == "8"
    assert resource["resource"]["created_at"].startswith(create_end.occurred_at.isoformat()[:19])
    code, missing = worker.get(f"/resources/{uuid.uuid4()}/")
    assert code == 404
    code, listed = worker.get(f"/tenants/{tenant}/resources/")
    assert sorted((r["resource_type"], r["resource_id"]) for r in listed["resources"]) == \
        sorted([("instance", inst), ("backup", backup)])
    body = json.dumps([recent, open_ops, errors, resource, listed])
    assert "Traceback" not in body and "auth_token" not in body  # nothing raw is served
    reader.close()
    assert worker.stop() == 0


# ------------------------------------------------------------------ restarts


def scenario_ops(tenant: str, n: int) -> list[tuple[Any, Any]]:
    """n create operations: (start keyed by request id, end keyed by the new instance id)."""
    base = utcnow() - timedelta(minutes=30)
    ops = []
    for i in range(n):
        request, instance = str(uuid.uuid4()), str(uuid.uuid4())
        at = base + timedelta(milliseconds=10 * i)
        ops.append((note(Phase.START, at, tenant=tenant, request_id=request),
                    note(Phase.END, at + timedelta(seconds=30), tenant=tenant,
                         request_id=request, resource_id=instance)))
    return ops


def test_kill_9_mid_scenario_loses_no_operation_and_never_changes_one(
        kafka_bootstrap: str, unique_name: str, own_topics: dict[str, str],
        workers: list[WorkerProcess], tmp_path: Path) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    app_id = f"{unique_name}-w"
    env = {**FAST, **topic_env(own_topics)}
    first = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "worker-1.log", env=env).start()
    workers.append(first)
    first.wait_ready(own_topics["notifications"])
    reader = OutputReader(kafka_bootstrap, end_offsets(kafka_bootstrap, [own_topics["operations"]]))
    ops = scenario_ops(tenant, 1500)
    producer = shovel_producer(kafka_bootstrap)
    # Phase 1: every start, and the ends of the first 1000 operations.
    produce(producer, own_topics["notifications"], [start for start, _ in ops])
    produce(producer, own_topics["notifications"], [end for _, end in ops[:1000]])
    reader.wait(lambda outputs: len(outputs) >= 300, timeout=90)
    first.kill()  # mid-stream: no flush, no commit, no goodbye
    killed_at = len(reader.outputs)

    second = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "worker-2.log", env=env).start()
    workers.append(second)
    second.wait_ready(own_topics["notifications"], timeout=120)
    # Phase 2: the remaining ends, and copies of 100 ends already paired (redelivery upstream).
    produce(producer, own_topics["notifications"], [end for _, end in ops[1000:]])
    produce(producer, own_topics["notifications"], [end for _, end in ops[:100]])

    expected = {start.request_id for start, _ in ops}
    reader.wait(lambda outputs: {o.record.request_id for o in outputs} >= expected, timeout=120)
    reader.poll(2.0)
    records = [o.record for o in reader.outputs]
    versions = distinct(records)
    assert {v[0].request_id for v in versions.values()} == expected  # none lost
    assert all(len(v) == 1 for v in versions.values())  # none reported two ways
    assert all(v[0].outcome is Outcome.SUCCEEDED and v[0].duration_seconds == 30
               for v in versions.values())
    repeats = len(records) - len(versions)
    print(f"\nkill -9 after {killed_at} of {len(ops)} records: {repeats} identical repeats "
          "(at-least-once replay of the records written since the last checkpoint)")

    # A graceful restart repeats nothing: tombstones and offsets are all durable by then.
    assert second.stop() == 0
    before = len(reader.outputs)
    third = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "worker-3.log", env=env).start()
    workers.append(third)
    third.wait_ready(own_topics["notifications"], timeout=120)
    produce(producer, own_topics["notifications"], [end for _, end in ops[-50:]])  # copies
    probe = note(Phase.POINT, utcnow() - timedelta(minutes=20), tenant=tenant,
                 operation="exists", resource_id=ops[0][1].resource_id,
                 payload={"state": "active"})
    produce(producer, own_topics["notifications"], [probe])
    wait_until(lambda: (third.status() or {}).get("source_event_time") ==
               probe.occurred_at.isoformat(), 60, "the third worker read past the copies")
    reader.poll(2.0)
    assert len(reader.outputs) == before
    reader.close()


# ------------------------------------------------------------------ two workers


def test_two_workers_split_the_partitions_and_still_pair(
        kafka_bootstrap: str, unique_name: str, own_topics: dict[str, str],
        workers: list[WorkerProcess], tmp_path: Path) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    app_id = f"{unique_name}-w"
    env = {**FAST, **topic_env(own_topics)}
    source = own_topics["notifications"]
    pair = [WorkerProcess(kafka_bootstrap, app_id, tmp_path / f"worker-{i}.log", env=env).start()
            for i in range(2)]
    workers.extend(pair)

    def split() -> list[dict[str, Any]] | None:
        statuses = [w.status() for w in pair]
        if not all(s and s["recovered"] for s in statuses):
            return None
        owned = [set(s["assignment"].get(source, [])) for s in statuses]  # type: ignore[index]
        return statuses if all(owned) and owned[0] | owned[1] == {0, 1, 2, 3} and \
            not owned[0] & owned[1] else None  # type: ignore[return-value]

    statuses = wait_until(split, 120, "two workers splitting the partitions")
    for status in statuses:  # one co-partitioned group: partition p of every topic together
        own = status["assignment"][source]
        assert status["assignment"][f"{app_id}-pairing"] == own
        assert status["assignment"][f"{app_id}-open_operations-changelog"] == own

    reader = OutputReader(kafka_bootstrap, end_offsets(
        kafka_bootstrap, [own_topics["operations"], own_topics["errors"]]))
    ops = scenario_ops(tenant, 400)
    failing = ops[:20]
    errors = [note(Phase.ERROR, start.occurred_at + timedelta(seconds=3), tenant=tenant,
                   request_id=start.request_id) for start, _ in failing]
    producer = shovel_producer(kafka_bootstrap)
    events = [e for start, end in ops[20:] for e in (end, start)] + \
        [e for (start, _), error in zip(failing, errors, strict=True) for e in (start, error)]
    produce(producer, source, events)

    expected = {start.request_id for start, _ in ops}

    def complete(outputs: list[Any]) -> bool:
        return {o.record.request_id for o in outputs
                if isinstance(o.record, OperationCompleted)} >= expected
    reader.wait(complete, timeout=90)
    reader.poll(1.0)
    versions = distinct([o.record for o in reader.outputs
                         if isinstance(o.record, OperationCompleted)])
    assert len(versions) == len(ops) and all(len(v) == 1 for v in versions.values())
    outcomes = Counter(v[0].outcome for v in versions.values())
    assert outcomes == {Outcome.SUCCEEDED: 380, Outcome.FAILED: 20}
    assert len(distinct([o.record for o in reader.outputs
                         if isinstance(o.record, OperationError)])) == 20
    # Starts (keyed by request id) and ends (keyed by instance id) were on different workers
    # for about half the operations: both workers forwarded through the pairing topic.
    outbox = [w.status()["outbox"] for w in pair]  # type: ignore[index]
    assert all(box.get("forwarded", 0) > 0 for box in outbox), outbox

    # Every view answers on either worker for keys the other one owns.
    instance_of = {end.resource_id: end for _, end in ops[20:]}
    served_by: Counter[str] = Counter()
    for resource_id in list(instance_of)[:40]:
        for worker in pair:
            code, body = worker.get(f"/resources/{resource_id}/")
            assert code == 200 and body["resource"]["resource_id"] == resource_id
            served_by[body["served_by"]] += 1
    assert set(served_by) == {w.url for w in pair}  # each owner answered for the other
    for worker in pair:
        code, recent = worker.get(f"/operations/recent/?tenant={tenant}&limit=1000")
        assert recent["count"] == 400 and set(recent["workers"]) == {w.url for w in pair}
        code, listed = worker.get(f"/tenants/{tenant}/resources/")
        assert listed["count"] == 380
        view_until(worker, f"/errors/?tenant={tenant}",
                   lambda body: body["count"] == 1 and body["errors"][0]["total"] == 20)
    reader.close()


# ------------------------------------------------------------------ RabbitMQ -> shovel -> worker


def test_rabbitmq_through_the_shovel_to_the_worker(
        kafka_bootstrap: str, rabbit_url: str, unique_name: str, own_topics: dict[str, str],
        workers: list[WorkerProcess], tmp_path: Path) -> None:
    from tests.integration.conftest import free_port
    from tests.integration.shovel_harness import Rabbit, ShovelProcess, load_fixtures

    fixtures = {f.name: f for f in load_fixtures()}
    request_id = f"req-{uuid.uuid4()}"  # the fixtures' request id has the same length
    old_request = "req-3f9a1c2e-7b4d-4e8a-9c1f-2d3e4f5a6b7c"
    bodies = []
    for name in ("dbaas.instance_create.end.v2", "dbaas.instance_create.start.v2",
                 "dbaas.backup_create.start.v2", "dbaas.backup_create.end.v2",
                 "trove.instance.exists.v2"):
        body = fixtures[name].with_message_id(str(uuid.uuid4())).replace(
            old_request.encode(), request_id.encode())
        bodies.append((fixtures[name], body))

    dlq = f"{unique_name}.dlq"
    create_topics(kafka_bootstrap, [dlq], 1)
    queue, exchange = f"{unique_name}.q", f"{unique_name}.trove"
    env = {**topic_env(own_topics)}
    worker = WorkerProcess(kafka_bootstrap, f"{unique_name}-w", tmp_path / "worker.log",
                           env=env).start()
    workers.append(worker)
    reader = OutputReader(kafka_bootstrap, end_offsets(
        kafka_bootstrap, [own_topics["operations"], own_topics["resources"]]))
    with Rabbit(rabbit_url) as rabbit:
        rabbit.prepare(queue, [exchange])
        shovel = ShovelProcess(queue, [exchange], free_port(), tmp_path / "shovel.log",
                               extra_args=["--topic", own_topics["notifications"],
                                           "--dlq-topic", dlq])
        try:
            shovel.start()
            shovel.wait_healthy()
            worker.wait_ready(own_topics["notifications"])
            for fixture, body in bodies:
                rabbit.publish(exchange, fixture.routing_key, body,
                               fixture.pika_properties())
            reader.wait(lambda outputs: len([o for o in outputs
                                             if o.topic == own_topics["operations"]]) >= 2,
                        timeout=60)
        finally:
            shovel.stop()
            rabbit.delete_queue(queue)
            rabbit.delete_exchange(exchange)
    ops = {op.resource_type: op for op in reader.on(own_topics["operations"])}
    assert set(ops) == {ResourceType.INSTANCE, ResourceType.BACKUP}
    assert all(op.outcome is Outcome.SUCCEEDED and op.request_id == request_id
               for op in ops.values())
    assert ops[ResourceType.INSTANCE].resource_id == "0b1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
    code, body = worker.get("/resources/0b1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f/")
    assert code == 200 and body["resource"]["status"] == "active"
    reader.close()
    delete_topics(kafka_bootstrap, dlq)
