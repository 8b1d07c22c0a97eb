"""Usage metering in the worker without a broker: the source agent through Faust's
``agent.test_context()`` (memory store), ticks through the pairing agent, the outbox's producer
replaced by the fake of test_agents.py that records what would be produced.

Checked here is the shell around ``trovemeter.accrual`` (tested itself in test_accrual.py): what
reaches trove.usage / trove.usage.discrepancies (key, headers), when table ``metering`` is
written or deleted, the per-partition watermark, the sweep of a partition's keys, ticks for
quiet partitions only, the ledger behind the usage view and the view's answer.
"""

from __future__ import annotations

import asyncio
import functools
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streams import usage_web
from streams.agents import notifications, usage
from streams.app import settings as worker_settings
from streams.resource_agent import process, read_progress
from streams.tables import STAGED_TABLES, metering, outbox, usage_clock, usage_ledger
from streams.usage_agent import dump_state, load_state, mark_key, records_between
from tests.unit.test_agents import (
    FakeProducer,
    Produced,
    feed_pairing,
    feed_source,
    fresh_worker,
    run,
    tick_at,
)
from trovemeter.accrual import (
    EXISTS_SECONDS,
    INSTANCE_SECONDS,
    VOLUME_GB_SECONDS,
    decode_state,
    encode_state,
    latest_versions,
)
from trovemeter.codec import SCHEMA_NAME_HEADER, decode, encode
from trovemeter.model import (
    DiscrepancyCause,
    Notification,
    Phase,
    ResourceType,
    UsageDiscrepancy,
    UsageRecord,
)
from trovemeter.usage_ledger import TenantLedger, line_of, merge_parts, to_us, view_part

# Two days ago, on an hour: event time is capped near the wall clock.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
HOUR = 3600
USAGE = worker_settings.usage_topic
DISCREPANCIES = worker_settings.usage_discrepancies_topic


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def note(event_type: str, phase: Phase, seconds: float, resource_id: str, *,
         operation: str, tenant: str = "tenant-a",
         resource_type: ResourceType = ResourceType.INSTANCE, **payload: Any) -> Notification:
    return Notification(
        message_id=str(uuid.uuid4()), event_type=event_type, resource_type=resource_type,
        operation=operation, phase=phase, publisher_id="taskmanager.host2", priority="INFO",
        occurred_at=at(seconds), request_id=f"req-{uuid.uuid4()}", resource_id=resource_id,
        tenant_id=tenant, user_id="user-1", payload={"tenant_id": tenant, **payload})


def create_end(iid: str, seconds: float, flavor: str = "2", volume: int = 10,
               tenant: str = "tenant-a") -> Notification:
    return note("dbaas.instance_create.end", Phase.END, seconds, iid, operation="create",
                tenant=tenant, instance_id=iid, instance_type_id=flavor,
                instance_type=f"m1.f{flavor}", volume_size=volume)


def resize_end(iid: str, seconds: float, flavor: str) -> Notification:
    return note("dbaas.instance_resize_instance.end", Phase.END, seconds, iid,
                operation="resize_flavor", instance_id=iid, new_flavor_id=flavor)


def delete_end(iid: str, seconds: float) -> Notification:
    return note("dbaas.instance_delete.end", Phase.END, seconds, iid, operation="delete",
                instance_id=iid)


def restart_start(iid: str, seconds: float) -> Notification:
    """No billing facts: moves event time only."""
    return note("dbaas.instance_restart.start", Phase.START, seconds, iid, operation="restart",
                instance_id=iid)


def audit(iid: str, ending: float, flavor: str = "2") -> Notification:
    return note("trove.instance.exists", Phase.POINT, ending + 60, iid, operation="exists",
                instance_id=iid, instance_type_id=flavor, instance_type=f"m1.f{flavor}",
                volume_size=10, launched_at=at(0).isoformat(),
                audit_period_beginning=at(ending - HOUR).isoformat(),
                audit_period_ending=at(ending).isoformat())


@pytest.fixture()
def producer() -> Iterator[FakeProducer]:
    """A fresh worker: empty tables, no staged changes, no usage clock, a fake producer."""
    fake = fresh_worker()
    usage.forget()
    usage.stats.update(dict.fromkeys(usage.stats, 0))
    idle = usage.idle_seconds
    yield fake
    usage.idle_seconds = idle


def records(fake: FakeProducer) -> list[UsageRecord]:
    return [decode(r.value) for r in fake.on(USAGE)]


def latest(fake: FakeProducer) -> dict[tuple[str, str, str, datetime], UsageRecord]:
    """(resource, meter, flavor, window) -> the latest version written."""
    return {(r.resource_id, r.meter, r.flavor_id or "", r.window_start): r
            for r in latest_versions(records(fake)).values()}


def headers(record: Produced) -> dict[str, bytes]:
    return dict(record.headers or [])


# ------------------------------------------------------------------ per notification


def test_records_go_to_trove_usage_keyed_by_record_id_with_the_schema_header(
        producer: FakeProducer) -> None:
    run(lambda: feed_source(create_end("inst-1", 600), restart_start("inst-1", HOUR + 601),
                            partition=1))

    out = producer.on(USAGE)
    assert {(decode(r.value).meter, decode(r.value).quantity) for r in out} == {
        (INSTANCE_SECONDS, 3000.0), (VOLUME_GB_SECONDS, 30000.0)}
    for produced in out:
        record = decode(produced.value)
        assert produced.key == record.record_id.encode()
        assert headers(produced)[SCHEMA_NAME_HEADER].endswith(b"UsageRecord")
        assert headers(produced)["trovemeter.record_id"] == record.record_id.encode()
        assert (record.version, record.tenant_id, record.window_start) == (1, "tenant-a", T0)
    # The table holds the accrual state as compact JSON bytes, on the event's partition.
    raw = metering.get("inst-1")
    assert isinstance(raw, bytes) and metering.partition_of("inst-1") == 1
    assert decode_state(raw) == load_state(raw)
    # The sweep emitted the hour without writing the state: the partition's mark says so.
    assert load_state(raw).emitted_through == to_us(at(0))
    assert usage_clock.get(mark_key(1)) == to_us(at(HOUR))
    assert usage._load(1, "inst-1", raw).emitted_through == to_us(at(HOUR))
    # The partition's watermark: the newest occurred_at, persisted per partition.
    assert usage_clock.get("1") == to_us(at(HOUR + 601))
    assert usage_clock.partition_of("1") == 1


def test_state_bytes_are_the_accrual_encoding() -> None:
    state = decode_state(encode_state(load_state(dump_state(
        decode_state(b'{"t":"instance","id":"i","tenant":"t","start":[0,5,"m"],'
                     b'"flavors":[[null,0,"2","m"]],"through":3600000000}')))))
    assert dump_state(state) == encode_state(state)


def test_stored_states_take_their_size_in_memory() -> None:
    """orjson 3.x returns bytes with a 4 KB allocation whatever their length: kept per resource
    in a table that is 8x the memory of the state itself (100k instances: ~400 MB)."""
    import tracemalloc

    state = decode_state(b'{"t":"instance","id":"i","tenant":"t","start":[0,5,"m"],'
                         b'"flavors":[[null,0,"2","m"]],"through":3600000000}')
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [dump_state(state) for _ in range(1000)]
        per_state = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_state < len(kept[0]) + 200


def test_a_notification_without_billing_facts_writes_no_state(producer: FakeProducer) -> None:
    run(lambda: feed_source(create_end("inst-2", 60), partition=0))
    outbox.checkpoint_sync()
    written = len(producer.on(metering.changelog_topic_name))
    run(lambda: feed_source(restart_start("inst-2", 120), partition=0))
    outbox.checkpoint_sync()
    assert len(producer.on(metering.changelog_topic_name)) == written  # no change, no record
    assert usage_clock.get("0") == to_us(at(120))  # event time moved all the same
    assert producer.on(USAGE) == []  # the hour is still open


def test_the_sweep_closes_hours_of_every_key_of_the_partition_and_only_that(
        producer: FakeProducer) -> None:
    async def scenario() -> None:
        await feed_source(create_end("inst-a", 600), create_end("inst-b", 1200, flavor="3"),
                          partition=1)
        await feed_source(create_end("inst-c", 300), partition=2)
        # Only inst-a's partition moves past the hour's end + allowed lateness (600 s).
        await feed_source(restart_start("inst-a", HOUR + 600), partition=1)

    run(scenario)
    got = latest(producer)
    assert got[("inst-a", INSTANCE_SECONDS, "2", T0)].quantity == 3000.0
    assert got[("inst-b", INSTANCE_SECONDS, "3", T0)].quantity == 2400.0  # no event of its own
    assert got[("inst-b", VOLUME_GB_SECONDS, "", T0)].quantity == 24000.0
    assert not [k for k in got if k[0] == "inst-c"]  # partition 2 is still in that hour
    assert usage.stats["sweeps"] >= 1


def test_a_late_fact_corrects_with_the_next_version_and_the_ledger_keeps_the_latest(
        producer: FakeProducer) -> None:
    async def scenario() -> None:
        await feed_source(create_end("inst-a", 600), create_end("inst-b", 1200),
                          restart_start("inst-a", HOUR + 600), partition=1)
        # inst-b was resized to flavor 3 half-way through the closed hour; reported late.
        await feed_source(resize_end("inst-b", 1800, "3"), partition=1)

    run(scenario)
    written = records(producer)
    corrected = [r for r in written if r.resource_id == "inst-b" and r.flavor_id == "2"]
    assert [(r.version, r.quantity) for r in corrected] == [(1, 2400.0), (2, 600.0)]
    assert len({r.record_id for r in corrected}) == 1
    assert latest(producer)[("inst-b", INSTANCE_SECONDS, "3", T0)].quantity == 1800.0
    # The ledger: sum of the latest versions per meter/flavor, not of every version.
    ledger = usage_ledger.get("tenant-a|1")
    assert isinstance(ledger, TenantLedger)
    sums: Counter[str] = Counter()
    for record in latest_versions(written).values():
        sums[line_of(record.meter, record.flavor_id)] += record.quantity
    assert ledger.totals(to_us(T0), to_us(at(HOUR))) == dict(sums)
    assert ledger.totals(to_us(T0), to_us(at(HOUR)))["instance.seconds|2"] == 3600.0
    assert ledger.names == {"2": "m1.f2"}


def test_a_finished_resource_is_forgotten_after_the_correction_retention(
        producer: FakeProducer) -> None:
    retention = worker_settings.usage_correction_retention_hours

    async def scenario() -> None:
        await feed_source(create_end("inst-d", 60), delete_end("inst-d", 1800), partition=3)
        await feed_source(create_end("inst-e", 60), partition=3)
        await feed_source(restart_start("inst-e", (retention + 3) * HOUR), partition=3)

    run(scenario)
    assert metering.get("inst-d") is None and metering.get("inst-e") is not None
    outbox.checkpoint_sync()
    changes = {(c.key, c.value is None) for c in producer.on(metering.changelog_topic_name)}
    assert (b'"inst-d"', True) in changes  # a tombstone
    got = latest(producer)
    assert got[("inst-d", INSTANCE_SECONDS, "2", T0)].quantity == 1740.0


def test_an_audit_without_a_create_is_reported_as_a_discrepancy(producer: FakeProducer) -> None:
    run(lambda: feed_source(audit("inst-z", HOUR), restart_start("inst-z", 2 * HOUR + 601),
                            partition=0))
    [produced] = producer.on(DISCREPANCIES)
    found = decode(produced.value)
    assert isinstance(found, UsageDiscrepancy)
    assert found.likely_cause is DiscrepancyCause.MISSED_CREATE
    assert produced.key == found.discrepancy_id.encode()
    assert headers(produced)[SCHEMA_NAME_HEADER].endswith(b"UsageDiscrepancy")
    # The audit is billed (Ceilometer's meter) in the hour its period ends in.
    assert latest(producer)[("inst-z", EXISTS_SECONDS, "", T0)].quantity == 3600.0


# ------------------------------------------------------------------ ticks


def test_a_tick_leaves_open_a_partition_with_records_the_broker_has_but_the_worker_has_not_read(
        producer: FakeProducer) -> None:
    """Idle means read to the log end the broker gave when the tick was sent, not to the end the
    consumer knew at its last fetch (stale under another partition's backlog)."""
    usage.idle_seconds = 0.0
    run(lambda: feed_source(create_end("inst-q", 600), partition=2))
    read = read_progress.last_offset(2)
    assert read is not None

    def tick_with_log_end(end: int) -> None:
        owned = read_progress.owned
        read_progress.owned = {2}
        try:
            read_progress.reports(lambda p: end, lambda p: None, lambda p: read)
        finally:
            read_progress.owned = owned
        run(lambda: feed_pairing((2, tick_at(at(HOUR + 700)))))

    tick_with_log_end(read + 5)  # four records past what the worker has read
    assert producer.on(USAGE) == []
    assert usage.wants_tick()

    tick_with_log_end(read + 1)  # read to the end: the tick closes the hour
    assert latest(producer)[("inst-q", INSTANCE_SECONDS, "2", T0)].quantity == 3000.0
    assert not usage.wants_tick()


def test_a_tick_closes_the_hours_of_a_quiet_partition(producer: FakeProducer) -> None:
    usage.idle_seconds = 0.0

    async def scenario() -> None:
        await feed_source(create_end("inst-q", 600), partition=2)
        await feed_pairing((2, tick_at(at(HOUR + 700))))

    run(scenario)
    assert latest(producer)[("inst-q", INSTANCE_SECONDS, "2", T0)].quantity == 3000.0
    assert usage_clock.get("2") == to_us(at(HOUR + 700))


def test_a_tick_waits_while_the_partition_is_busy_and_a_later_one_closes_the_hour(
        producer: FakeProducer) -> None:
    usage.idle_seconds = 3600.0  # the partition had an event just now: busy

    async def scenario() -> None:
        await feed_source(create_end("inst-q", 600), partition=2)
        await feed_pairing((2, tick_at(at(HOUR + 700))))

    run(scenario)
    assert producer.on(USAGE) == []  # not closed by another partition's event time
    assert usage_clock.get("2") == to_us(at(600))
    assert usage.wants_tick()  # the worker keeps sending ticks although nothing moved

    usage.idle_seconds = 0.0  # idle now: the next tick closes the hour
    run(lambda: feed_pairing((2, tick_at(at(HOUR + 700)))))
    assert latest(producer)[("inst-q", INSTANCE_SECONDS, "2", T0)].quantity == 3000.0
    assert not usage.wants_tick()


# ------------------------------------------------------------------ the view


def test_the_usage_view_sums_latest_versions_and_lists_resources(producer: FakeProducer) -> None:
    async def scenario() -> dict[str, Any]:
        await feed_source(create_end("inst-a", 600), create_end("inst-b", 1200),
                          restart_start("inst-a", 2 * HOUR + 600), partition=1)
        await feed_source(resize_end("inst-b", 1800, "3"), partition=1)
        await feed_source(create_end("inst-x", 0, tenant="tenant-b"), partition=1)
        return await usage_web.local_usage("tenant-a", to_us(T0), to_us(at(2 * HOUR)))

    part = run(scenario)
    answer = merge_parts("tenant-a", to_us(T0), to_us(at(2 * HOUR)), [part])
    meters = {(m["meter"], m.get("flavor_id")): m["quantity"] for m in answer["meters"]}
    assert meters == {(INSTANCE_SECONDS, "2"): 3000.0 + 3600.0 + 600.0,
                      (INSTANCE_SECONDS, "3"): 1800.0 + 3600.0,
                      (VOLUME_GB_SECONDS, None): 10 * (3000.0 + 3600.0 + 2400.0 + 3600.0)}
    lines = {(r["resource_id"], r["meter"], r.get("flavor_id")): (r["quantity"], r["hours"])
             for r in answer["resources"]}
    assert lines[("inst-b", INSTANCE_SECONDS, "3")] == (5400.0, 2)
    assert lines[("inst-a", INSTANCE_SECONDS, "2")] == (6600.0, 2)
    assert not [k for k in lines if k[0] == "inst-x"]  # another tenant
    assert answer["unattributed"] == []
    assert answer["closed_through"] == at(2 * HOUR).isoformat()
    # The same as what trove.usage holds (latest version per record id).
    written: Counter[tuple[str, str | None]] = Counter()
    for record in latest_versions(records(producer)).values():
        if record.tenant_id == "tenant-a":
            written[(record.meter, record.flavor_id)] += record.quantity
    assert meters == dict(written)
    # Only the first hour.
    first = run(lambda: usage_web.local_usage("tenant-a", to_us(T0), to_us(at(HOUR))))
    assert first["totals"]["instance.seconds|3"] == 1800.0


def test_records_between_gives_what_was_emitted(producer: FakeProducer) -> None:
    run(lambda: feed_source(create_end("inst-a", 600), resize_end("inst-a", 5000, "3"),
                            restart_start("inst-a", 4 * HOUR + 600), partition=1))
    state = load_state(metering.get("inst-a") or b"")
    again = {r.record_id: r.quantity
             for r in records_between(state, to_us(T0), to_us(at(4 * HOUR)), usage.policy)}
    assert again == {r.record_id: r.quantity for r in latest_versions(records(producer)).values()}


def test_view_parts_of_several_workers_are_summed() -> None:
    hour = to_us(T0)
    one, two = TenantLedger(), TenantLedger()
    one.add(hour, "instance.seconds|2", 100.0, keep_hours=48)
    two.add(hour, "instance.seconds|2", 50.0, keep_hours=48)
    two.add(hour, "backup.gb_seconds|", 7.5, keep_hours=48)
    line = {"resource_id": "i-1", "resource_type": "instance", "meter": "instance.seconds",
            "flavor_id": "2", "quantity": 100.0, "hours": 1}
    parts = [view_part([one], [line], hour, hour + 3600_000_000, hour, 48),
             view_part([two], [], hour, hour + 3600_000_000, hour + 3600_000_000, 48)]
    answer = merge_parts("t", hour, hour + 3600_000_000, parts)
    assert [(m["meter"], m["quantity"]) for m in answer["meters"]] == [
        ("backup.gb_seconds", 7.5), ("instance.seconds", 150.0)]
    assert [(u["meter"], u["quantity"]) for u in answer["unattributed"]] == [
        ("backup.gb_seconds", 7.5), ("instance.seconds", 50.0)]
    assert answer["closed_through"] == T0.isoformat()  # the slowest worker


def test_the_ledger_keeps_only_the_newest_hours() -> None:
    ledger = TenantLedger()
    base = to_us(T0)
    for h in range(5):
        assert ledger.add(base + h * 3600_000_000, "m|", 1.0, keep_hours=3)
    assert sorted(ledger.hours) == [base + h * 3600_000_000 for h in (2, 3, 4)]
    assert not ledger.add(base, "m|", 1.0, keep_hours=3)  # too old: ignored
    assert TenantLedger.from_bytes(ledger.to_bytes()) == ledger


def test_the_period_is_read_as_iso_and_bounded() -> None:
    start, end = usage_web.period({"start": "2026-11-02T00:30:00Z", "end": "2026-11-03T00:00"})
    assert (start, end) == (to_us(datetime(2026, 11, 2, 1, tzinfo=UTC)),
                            to_us(datetime(2026, 11, 3, tzinfo=UTC)))
    with pytest.raises(ValueError):
        usage_web.period({"start": "2026-11-03T00:00Z", "end": "2026-11-02T00:00Z"})
    with pytest.raises(ValueError):
        usage_web.period({"start": "yesterday"})
    with pytest.raises(ValueError):
        usage_web.period({"start": "2026-01-01T00:00Z", "end": "2026-11-02T00:00Z"})


def test_usage_topic_names_are_settings() -> None:
    from trovemeter.settings import WorkerSettings

    moved = WorkerSettings(usage_topic="x.usage", usage_discrepancies_topic="x.disc")
    assert (moved.usage_topic, moved.usage_discrepancies_topic) == ("x.usage", "x.disc")
    assert (WorkerSettings().usage_topic, WorkerSettings().usage_discrepancies_topic) == (
        "trove.usage", "trove.usage.discrepancies")


# ------------------------------------------------------------------ the sweep in slices


def _scenario_records(seed: int) -> list[tuple[int, bytes, bytes]]:
    """A simulated day as the shovel writes it: (partition, key, Avro value), in order."""
    from aiokafka.partitioner import murmur2

    from trovemeter.envelope import BadNotification, parse_body
    from trovemeter.simulation import ScenarioConfig, build_scenario

    scenario = build_scenario(ScenarioConfig(seed=seed, tenants=3, instances=24, hours=12,
                                             message_budget=1500, garbage_rate=0.0))
    placed = []
    for message in scenario.messages():
        try:
            n = parse_body(message.body, max_bytes=1 << 20)
        except BadNotification:
            continue
        key = (n.kafka_key or "").encode()
        partition = (murmur2(key) & 0x7FFFFFFF) % worker_settings.topic_partitions
        placed.append((partition, key, encode(n)))
    return placed


def _usage_outputs(fake: FakeProducer) -> dict[str, Any]:
    """Per output key, its values in the order written; the final metering states."""
    per_key: dict[tuple[str, bytes | None], list[bytes | None]] = {}
    for record in fake.records:
        if record.topic in (USAGE, DISCREPANCIES):
            per_key.setdefault((record.topic, record.key), []).append(record.value)
    return {"records": per_key, "states": dict(metering._data),
            "clock": {k: usage_clock.get(k) for k in usage_clock.keys()}}


def _feed(placed: list[tuple[int, bytes, bytes]], slice_seconds: float | None) -> None:
    """Every record through the source agent; with ``slice_seconds``, the sweeper runs beside
    it as in the worker, and the feed waits until it has finished every sweep."""
    async def scenario() -> None:
        sweeper = None
        if slice_seconds is not None:
            sweeper = asyncio.ensure_future(usage.run_sweeps(slice_seconds))
            await asyncio.sleep(0)
        try:
            async with notifications.test_context() as agent:
                for partition, key, value in placed:
                    await agent.put(value, key=key, partition=partition)
                    await asyncio.sleep(0)
            while usage.pending_sweeps():
                await asyncio.sleep(0)
        finally:
            if sweeper is not None:
                sweeper.cancel()

    run(scenario)


def test_a_sweep_in_slices_writes_what_the_whole_sweep_in_the_event_writes() -> None:
    """Events handled between the slices of a sweep -- for keys it has reached or not yet --
    give every key the records (same versions, same order) and states of a sweep run to its
    end inside the event that closed the hour."""
    placed = _scenario_records(seed=3)
    outputs = []
    for slice_seconds in (None, 0.0):  # 0: one key per slice, an event between slices
        fake = fresh_worker()
        usage.forget()
        usage.stats.update(dict.fromkeys(usage.stats, 0))
        _feed(placed, slice_seconds)
        outputs.append(_usage_outputs(fake))
        stats = dict(usage.stats)
    whole, sliced = outputs
    assert sum(len(v) for v in whole["records"].values()) > 500  # the day has usage
    assert sliced == whole
    # Slicing did happen, and events for keys not reached yet were caught up first.
    assert stats["sweep_slices"] > 2 * stats["sweeps"] > 0
    assert stats["caught_up"] > 0


def test_an_event_for_a_key_the_sweep_has_not_reached_is_advanced_first(
        producer: FakeProducer) -> None:
    """``apply`` alone would fold the late resize into the closed hour (one version); caught
    up first, the hour is emitted as the sweep emits it, then corrected (two versions)."""
    async def scenario() -> None:
        sweeper = asyncio.ensure_future(usage.run_sweeps(0.0))
        await asyncio.sleep(0)
        async with notifications.test_context() as agent:
            for n in (create_end("inst-a", 600), create_end("inst-b", 1200),
                      restart_start("inst-a", HOUR + 600)):  # closes the hour: a sweep begins
                await agent.put(encode(n), key=n.resource_id.encode(), partition=1)
            # No turn of the loop for the sweeper yet: inst-b has not been reached.
            assert usage.pending_sweeps() == [1]
            n = resize_end("inst-b", 1800, "3")
            await agent.put(encode(n), key=b"inst-b", partition=1)
        while usage.pending_sweeps():
            await asyncio.sleep(0)
        sweeper.cancel()

    run(scenario)
    corrected = [r for r in records(producer) if r.resource_id == "inst-b" and r.flavor_id == "2"]
    assert [(r.version, r.quantity) for r in corrected] == [(1, 2400.0), (2, 600.0)]
    assert usage.stats["caught_up"] == 1


def test_a_revoked_partition_drops_its_pending_sweep_and_is_swept_on_first_sight(
        producer: FakeProducer) -> None:
    async def scenario() -> None:
        await feed_source(create_end("inst-a", 600), create_end("inst-b", 1200), partition=1)
        usage._wake = asyncio.Event()  # a sweeper is running (it gets no turn here)
        try:
            await feed_source(restart_start("inst-a", HOUR + 600), partition=1)
            assert usage.pending_sweeps() == [1]
            usage.drop_sweeps({1})  # revoked
            assert usage.pending_sweeps() == []
        finally:
            usage._wake = None
        # The partition comes back: its first event sweeps it (inst-b has no event).
        await feed_source(restart_start("inst-a", HOUR + 700), partition=1)

    run(scenario)
    got = latest(producer)
    assert got[("inst-b", INSTANCE_SECONDS, "2", T0)].quantity == 2400.0


def test_a_tick_sweeps_a_partition_first_seen_although_its_watermark_does_not_move(
        producer: FakeProducer) -> None:
    """A restart after a crash cut a sweep short: no event comes on the partition, and the
    ticks carry no later event time; the first tick that finds it idle finishes the sweep."""
    usage.idle_seconds = 0.0

    async def scenario() -> None:
        await feed_source(create_end("inst-q", 600), partition=2)
        usage._wake = asyncio.Event()  # the sweep is cut short: never gets a turn
        try:
            await feed_source(restart_start("inst-q", HOUR + 700), partition=2)
        finally:
            usage._wake = None
        usage.forget()  # the restart: the clock is read back from usage_clock
        await feed_pairing((2, tick_at(at(HOUR + 700))))

    run(scenario)
    assert latest(producer)[("inst-q", INSTANCE_SECONDS, "2", T0)].quantity == 3000.0


# ------------------------------------------------------------------ crashes and the sweep mark


class _SlicesByHand:
    """Stands in for ``run_sweeps``' wake-up event: sweeps stay pending, the test runs their
    slices between events."""

    def set(self) -> None:
        pass


def _recover(changelog: list[Produced]) -> None:
    """The tables a restarted worker recovers: every changelog record written, in order."""
    tables = {table.changelog_topic_name: table for table in STAGED_TABLES}
    for table in STAGED_TABLES:
        table._data.clear()
        table._partition_of.clear()
    for record in changelog:
        table = tables[record.topic]
        key = orjson.loads(record.key or b"null")
        if record.value is None:
            table._data.pop(key, None)
            table._partition_of.pop(key, None)
        else:
            table._data[key] = record.value
            table._partition_of[key] = record.partition


def _run_crashing(placed: list[tuple[int, bytes, bytes]], crashes: set[int], every: int,
                  slices: random.Random | None) -> tuple[list[Produced], dict[str, Any]]:
    """Every record through the source agent's function, a checkpoint every ``every`` events;
    after event number ``n`` in ``crashes`` the worker dies: what was not checkpointed is lost,
    and a new worker recovers the changelogs and reads on from the first event not
    acknowledged. ``slices``: sweeps run one key at a time, at random moments between events.
    Returns every usage output produced, and the final metering states as the worker reads
    them."""
    changelogs = {table.changelog_topic_name for table in STAGED_TABLES}
    outputs: list[Produced] = []
    changelog: list[Produced] = []
    fake = fresh_worker()
    usage.forget()

    def die() -> FakeProducer:
        outputs.extend(r for r in fake.records if r.topic in (USAGE, DISCREPANCIES))
        changelog.extend(r for r in fake.records if r.topic in changelogs and r.delivered)
        new = fresh_worker()
        _recover(changelog)
        usage.forget()
        return new

    usage._wake = _SlicesByHand() if slices is not None else None  # type: ignore[assignment]
    try:
        position = acknowledged = 0
        while position < len(placed):
            partition, _, value = placed[position]
            process(value, partition, position)
            position += 1
            while slices is not None and usage.pending_sweeps() and slices.random() < 0.7:
                usage._sweep_slice(0.0)
            if position % every == 0:
                outbox.checkpoint_sync()
                acknowledged = position
            if position in crashes:
                crashes = crashes - {position}
                fake = die()
                position = acknowledged
        # The input ends and every partition goes quiet: the worker's ticks reach each one, and
        # one not seen since the last restart gets its first-sight sweep from its tick (the
        # sweep the crash cut short, with no event coming to start it again).
        usage._idle = lambda partition: True  # type: ignore[method-assign]
        for partition in sorted({partition for partition, _, _ in placed}):
            usage.on_tick(partition, datetime.fromtimestamp(0, UTC))
        while usage.pending_sweeps():
            usage._sweep_slice(float("inf"))
        outbox.checkpoint_sync()
    finally:
        usage._wake = None
        del usage._idle
    outputs.extend(r for r in fake.records if r.topic in (USAGE, DISCREPANCIES))
    states = {key: usage._load(metering.partition_of(key), key, metering._data[key])
              for key in metering._data}
    return outputs, states


def _versions(outputs: list[Produced]) -> dict[tuple[bytes | None, int], set[bytes | None]]:
    """(record id, version) -> every value written for it (a discrepancy's version: 0)."""
    seen: dict[tuple[bytes | None, int], set[bytes | None]] = {}
    for r in outputs:
        version = decode(r.value).version if r.topic == USAGE else 0
        seen.setdefault((r.key, version), set()).add(r.value)
    return seen


def _latest(outputs: list[Produced]) -> dict[bytes | None, bytes | None]:
    """What a consumer of the topics keeps: the highest version of each record id."""
    return {key: max(values)[1] for key, values in _by_key(outputs).items()}


def _by_key(outputs: list[Produced]) -> dict[bytes | None, set[tuple[int, bytes | None]]]:
    found: dict[bytes | None, set[tuple[int, bytes | None]]] = {}
    for r in outputs:
        version = decode(r.value).version if r.topic == USAGE else 0
        found.setdefault(r.key, set()).add((version, r.value))
    return found


_CRASH_SCENARIO = _scenario_records(seed=5)


@functools.cache
def _crash_reference() -> tuple[list[Produced], dict[str, Any]]:
    """The scenario without crashes, each event checkpointed, every sweep whole."""
    return _run_crashing(_CRASH_SCENARIO, set(), 1, None)


@pytest.mark.parametrize("sliced", [False, True])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crashes=st.sets(st.integers(1, len(_CRASH_SCENARIO)), max_size=3),
       every=st.integers(1, 60), seed=st.integers(0, 2**16))
@example(crashes={len(_CRASH_SCENARIO) - 1}, every=1, seed=0)  # a partition seen no more
def test_crashes_anywhere_give_the_records_and_states_of_a_run_without_any(
        sliced: bool, crashes: set[int], every: int, seed: int) -> None:
    """Whatever was durable when the worker died -- states written or only advanced by a sweep,
    the partition's sweep mark or not -- the records written again after the restart are the
    same records (same id, version and content), and nothing is missing at the end."""
    reference, states = _crash_reference()
    assert len(reference) > 500  # the day has usage
    got, got_states = _run_crashing(_CRASH_SCENARIO, crashes, every,
                                    random.Random(seed) if sliced else None)
    versions = _versions(got)
    assert all(len(values) == 1 for values in versions.values())  # one content per version
    assert _latest(got) == _latest(reference)
    assert got_states == states


def test_a_restart_finishes_the_sweep_a_crash_cut_short_before_the_first_event() -> None:
    """The event that closed the hour was acknowledged, its sweep emitted inst-b's hour, and
    the worker died before inst-b's state (or the partition's mark) was durable. The late
    resize read after the restart must correct that hour (version 2), not fold into a second,
    different version 1 of it."""
    placed = [(1, b"", encode(n)) for n in (
        create_end("inst-a", 600), create_end("inst-b", 1200),
        restart_start("inst-a", HOUR + 600),  # closes the hour: a sweep begins
        resize_end("inst-b", 1800, "3"))]
    fake = fresh_worker()
    usage.forget()
    usage._wake = _SlicesByHand()  # type: ignore[assignment]
    try:
        for offset, (partition, _, value) in enumerate(placed[:3]):
            process(value, partition, offset)
        outbox.checkpoint_sync()  # the three events are acknowledged; the sweep is pending
        while usage.pending_sweeps():
            usage._sweep_slice(0.0)
        before = [r for r in fake.records if r.topic == USAGE]
        changelog = [r for r in fake.records if r.delivered and r.topic in
                     {table.changelog_topic_name for table in STAGED_TABLES}]
        fake = fresh_worker()  # the crash: what was not checkpointed is lost
        _recover(changelog)
        usage.forget()
        process(placed[3][2], 1, 3)
        while usage.pending_sweeps():
            usage._sweep_slice(0.0)
    finally:
        usage._wake = None
    written = [decode(r.value) for r in before + fake.on(USAGE)]
    inst_b = sorted({(r.version, r.quantity) for r in written
                     if r.resource_id == "inst-b" and r.meter == INSTANCE_SECONDS
                     and r.flavor_id == "2"})
    assert inst_b == [(1, 2400.0), (2, 600.0)]


def test_a_sweep_that_failed_for_a_key_leaves_the_mark_and_the_next_one_emits_the_key(
        producer: FakeProducer, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams import usage_agent

    advance_fields = usage_agent.advance_fields

    def failing(state: Any, watermark: datetime, policy: Any) -> Any:
        if state.resource_id == "inst-b" and watermark < at(2 * HOUR):
            raise RuntimeError("a bug")
        return advance_fields(state, watermark, policy)

    monkeypatch.setattr(usage_agent, "advance_fields", failing)
    monkeypatch.setattr(usage_agent, "swept_hour_fields", lambda *args: None)  # no shortcut
    run(lambda: feed_source(create_end("inst-a", 600), create_end("inst-b", 1200),
                            restart_start("inst-a", HOUR + 600), partition=1))
    assert usage.stats["sweep_errors"] == 1
    assert usage_clock.get(mark_key(1)) == to_us(at(0))  # not moved: inst-b's hour is due
    run(lambda: feed_source(restart_start("inst-a", 2 * HOUR + 600), partition=1))
    got = latest(producer)
    assert got[("inst-b", INSTANCE_SECONDS, "2", T0)].quantity == 2400.0
    assert usage_clock.get(mark_key(1)) == to_us(at(2 * HOUR))
