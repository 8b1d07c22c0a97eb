"""The worker's agents without a broker: Faust's ``agent.test_context()``, the memory store, and
the outbox's producer replaced by a fake that records what would be produced.

What is checked here is the shell: that each agent decodes, calls the pure core, writes its
tables and emits what the core returns, to the right topic, key, partition and headers, and that
the outbox writes table changes only after the outputs they caused are confirmed. The pure core
itself is tested in test_pairing.py / test_resource_state.py.
"""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from streams import web
from streams.agents import count_errors, notifications, pairing
from streams.app import app, settings
from streams.outbox import Outbox, OutboxError
from streams.pairing_agent import RECORD_ID_HEADER, forwarder, policy, recent, shell
from streams.resource_agent import ReadProgress, read_progress, resource_state, source_clock
from streams.tables import STAGED_TABLES, error_counts, open_operations, outbox, resources
from streams.topics import (
    PAIRING_TOPIC,
    pack_batch,
    pack_tick,
    pairing_partition,
    tick_reports,
    unpack_batch,
)
from trovemeter.codec import SCHEMA_NAME_HEADER, decode, encode
from trovemeter.watermark import SourceProgress
from trovemeter.model import (
    Notification,
    OperationError,
    Outcome,
    Phase,
    ResourceState,
    ResourceStatus,
    ResourceType,
)
from trovemeter.pairing import join_key

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/dist-packages/trove/taskmanager/models.py", line 790, in _create\n'
    "    raise TroveError(msg)\n"
    "trove.common.exception.TroveError: Server creation failed: No valid host was found.\n"
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def note(phase: Phase, seconds: float, *, request_id: str | None = None,
         resource_id: str | None = None, operation: str = "create", tenant: str = "tenant-1",
         resource_type: ResourceType = ResourceType.INSTANCE, message_id: str | None = None,
         payload: dict[str, Any] | None = None) -> Notification:
    error = phase is Phase.ERROR
    body = {"exception": TRACEBACK} if error else {}
    body.update(payload or {})
    return Notification(
        message_id=message_id or str(uuid.uuid4()),
        event_type=(f"trove.{resource_type.value}.{operation}" if phase is Phase.POINT
                    else f"dbaas.{resource_type.value}_{operation}.{phase.value}"),
        resource_type=resource_type, operation=operation, phase=phase,
        publisher_id="api.host1" if phase is Phase.START else "taskmanager.host2",
        priority="INFO", occurred_at=at(seconds), request_id=request_id,
        resource_id=resource_id, tenant_id=tenant, user_id="user-1",
        error_message="Server creation failed: No valid host was found." if error else None,
        exception_class="trove.common.exception.TroveError" if error else None,
        payload=body,
    )


@dataclass
class Produced:
    topic: str
    value: bytes | None
    key: bytes | None
    partition: int
    headers: list[tuple[str, bytes]] | None
    on_delivery: Callable[[Any, Any], None] | None
    delivered: bool = False


@dataclass
class FakeProducer:
    """confluent_kafka.Producer as the outbox uses it. Deliveries happen on ``poll``/``flush``
    unless ``hold`` is set; ``fail_topics`` makes those deliveries fail."""

    records: list[Produced] = field(default_factory=list)
    hold: bool = False
    fail_topics: set[str] = field(default_factory=set)

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, *,
                partition: int = -1, headers: Any = None, on_delivery: Any = None) -> None:
        self.records.append(Produced(topic, value, key, partition, headers, on_delivery))

    def _deliver(self) -> None:
        for record in self.records:
            if not record.delivered:
                record.delivered = True
                if record.on_delivery is not None:
                    err = "broker down" if record.topic in self.fail_topics else None
                    record.on_delivery(err, _Msg(record.topic))

    def poll(self, timeout: float = 0) -> int:
        if not self.hold:
            self._deliver()
        return 0

    def flush(self, timeout: float = 0) -> int:
        self._deliver()
        return 0

    def on(self, topic: str) -> list[Produced]:
        return [r for r in self.records if r.topic == topic]

    def decoded(self, topic: str) -> list[Any]:
        return [decode(r.value) for r in self.on(topic)]


@dataclass
class _Msg:
    name: str

    def topic(self) -> str:
        return self.name


def fresh_worker() -> FakeProducer:
    """Reset the worker's module-level state: empty tables, no staged changes, no event time,
    a fake producer behind the outbox."""
    fake = FakeProducer()
    outbox.__init__(  # type: ignore[misc]
        {}, pairing_topic=PAIRING_TOPIC, forward_linger_ms=settings.forward_linger_ms,
        forward_max_batch=settings.forward_max_batch, pack=pack_batch)
    outbox.use_producer(fake)
    for table in STAGED_TABLES:
        table._data.clear()
        table._partition_of.clear()
    shell.event_time.clear()
    shell.watermarks.clear()
    shell._heaps.clear()
    recent.forget()
    resource_state.forget_index()
    forwarder.owned = set()
    read_progress.forget(range(settings.topic_partitions))
    source_clock.now = None
    return fake


@pytest.fixture()
def producer() -> FakeProducer:
    """A fresh worker state: empty tables, no staged changes, a fake producer."""
    return fresh_worker()


def run(scenario: Callable[[], Any]) -> Any:
    async def main() -> Any:
        app.loop = asyncio.get_running_loop()
        app.flow_control.resume()
        return await scenario()

    return asyncio.run(main())


async def feed_source(*events: Notification, partition: int = 0) -> None:
    async with notifications.test_context() as agent:
        for n in events:
            await agent.put(encode(n), key=(n.kafka_key or "").encode(), partition=partition)
            await asyncio.sleep(0)


async def feed_pairing(*values: tuple[int, bytes]) -> None:
    async with pairing.test_context() as agent:
        for partition, value in values:
            await agent.put(value, partition=partition)
            await asyncio.sleep(0)


def tick_at(moment: datetime) -> bytes:
    """A tick saying every source partition has been read through ``moment``."""
    return pack_tick([SourceProgress(p, moment, False) for p in range(settings.topic_partitions)])


def batch_for(*events: Notification) -> list[tuple[int, bytes]]:
    """Pairing records as the forwarder would send them, one per notification."""
    return [(pairing_partition(join_key(n) or ""), pack_batch([encode(n)])) for n in events]


def headers(record: Produced) -> dict[str, bytes]:
    return dict(record.headers or [])


# ------------------------------------------------------------------ wire format


def test_batches_and_ticks_round_trip() -> None:
    values = [b"\xc3\x01" + bytes(range(20)), b"", b"x" * 70_000]
    assert list(unpack_batch(pack_batch(values))) == values
    moment = datetime(2026, 11, 25, 8, 0, 0, 123456, tzinfo=UTC)
    reports = [SourceProgress(0, moment, False), SourceProgress(3, None, True)]
    assert tick_reports(pack_tick(reports)) == reports
    assert tick_reports(pack_tick([])) == []
    assert tick_reports(pack_batch(values)) is None
    with pytest.raises(ValueError):
        list(unpack_batch(b"TMB1\x00\x00\x00\x09abc"))
    with pytest.raises(ValueError):
        list(unpack_batch(b"garbage"))


PINNED = [3, 0, 0, 3, 0, 3, 3, 0]


def test_pairing_partition_is_stable() -> None:
    # Fixed forever (CRC-32): a change would move every open operation to another partition
    # while its changelog stays where it was.
    assert [pairing_partition(f"req:r-{i}:instance:create", 4) for i in range(8)] == PINNED
    assert {pairing_partition(f"k{i}", 4) for i in range(100)} == {0, 1, 2, 3}


# ------------------------------------------------------------------ source agent


def test_source_agent_keeps_resource_state_and_emits_changes(producer: FakeProducer) -> None:
    end = note(Phase.END, 30, request_id="r-1", resource_id="inst-1",
               payload={"flavor_id": "7", "volume_size": 10, "name": "db1"})
    audit = note(Phase.POINT, 3600, operation="exists", resource_id="inst-1",
                 payload={"instance_type_id": "7", "volume_size": 10, "state": "active"})
    grown = note(Phase.POINT, 7200, operation="exists", resource_id="inst-1",
                 payload={"instance_type_id": "7", "volume_size": 20, "state": "active"})

    run(lambda: feed_source(end, end, audit, partition=2))

    tracked = resources.get("inst-1")
    assert tracked is not None and tracked.state.status is ResourceStatus.ACTIVE
    assert tracked.state.last_message_id == end.message_id  # an audit is not the last event
    assert tracked.reported_at["volume_size_gb"] == audit.occurred_at  # but its reports count
    assert resources.partition_of("inst-1") == 2
    out = producer.on(settings.resources_topic)
    assert len(out) == 1  # neither the repeated end nor the confirming audit changed the row
    run(lambda: feed_source(grown, partition=2))
    out = producer.on(settings.resources_topic)
    assert len(out) == 2  # an audit that reports something new does
    assert {r.key for r in out} == {b"inst-1"}
    assert all(headers(r)[SCHEMA_NAME_HEADER].endswith(b"ResourceState") for r in out)
    states = producer.decoded(settings.resources_topic)
    assert isinstance(states[-1], ResourceState) and states[-1].flavor_id == "7"
    assert states[-1].volume_size_gb == 20 and states[-1].last_message_id == end.message_id


def test_compact_tables_keep_their_changelog_bytes_and_read_older_forms(
        producer: FakeProducer) -> None:
    end = note(Phase.END, 60, request_id="r-1", resource_id="inst-1",
               payload={"instance_type_id": "7", "volume_size": 10, "name": "db-1"})
    run(lambda: feed_source(end))
    tracked = resources.get("inst-1")
    assert tracked is not None and resources._data["inst-1"] is tracked  # until the checkpoint

    outbox.checkpoint_sync()

    kept = resources._data["inst-1"]
    changelog = [r for r in producer.records if r.topic == resources.changelog_topic_name]
    assert isinstance(kept, bytes) and kept == changelog[-1].value
    assert resources.get("inst-1") == tracked
    assert isinstance(resources._data["inst-1"], bytes)  # reads decode, never keep the object
    # Changelogs written before the row form still load (recovery after an upgrade).
    for older in (orjson.dumps(tracked), orjson.dumps(tracked.to_dict())):
        resources._data["inst-1"] = older
        assert resources.get("inst-1") == tracked


def test_source_agent_forwards_only_phased_events(producer: FakeProducer) -> None:
    start = note(Phase.START, 0, request_id="r-2")
    audit = note(Phase.POINT, 10, operation="exists", resource_id="inst-9",
                 payload={"state": "active"})

    async def scenario() -> None:
        await feed_source(start, audit)
        outbox.flush_forwards()

    run(scenario)
    batches = producer.on(PAIRING_TOPIC)
    assert len(batches) == 1
    assert batches[0].partition == pairing_partition(join_key(start) or "")
    assert list(unpack_batch(batches[0].value or b"")) == [encode(start)]
    assert source_clock.now == audit.occurred_at


def test_source_agent_skips_undecodable_records(producer: FakeProducer) -> None:
    good = note(Phase.POINT, 5, operation="exists", resource_id="inst-3",
                payload={"state": "active"})

    async def scenario() -> None:
        async with notifications.test_context() as agent:
            await agent.put(b"not avro at all", key=b"x")
            await agent.put(encode(good), key=b"inst-3")
            await asyncio.sleep(0)

    run(scenario)
    assert outbox.stats["undecodable"] == 1
    assert resources.get("inst-3") is not None


def test_a_failing_handler_does_not_stop_the_others(producer: FakeProducer) -> None:
    from streams.resource_agent import source_handlers

    class Broken:
        def handle(self, n: Notification, raw: bytes, partition: int) -> None:
            raise RuntimeError("bug")

    audit = note(Phase.POINT, 5, operation="exists", resource_id="inst-5",
                 payload={"state": "active"})
    source_handlers.insert(0, Broken())
    try:
        run(lambda: feed_source(audit, audit))
    finally:
        source_handlers.pop(0)
    assert outbox.stats["handler_errors"] == 2
    assert resources.get("inst-5") is not None


def test_owned_pairing_partition_is_paired_without_the_topic(producer: FakeProducer) -> None:
    forwarder.owned = {0, 1, 2, 3}
    start = note(Phase.START, 0, request_id="r-3", payload={"flavor_id": "7"})
    end = note(Phase.END, 30, request_id="r-3", resource_id="inst-3")

    run(lambda: feed_source(end, start))  # end first: order does not matter

    assert producer.on(PAIRING_TOPIC) == []
    ops = producer.on(settings.operations_topic)
    assert len(ops) == 1
    record = decode(ops[0].value or b"")
    assert record.outcome is Outcome.SUCCEEDED and record.duration_seconds == 30
    assert ops[0].key == b"inst-3"
    assert headers(ops[0])[RECORD_ID_HEADER] == record.record_id.encode()
    state = open_operations.get(join_key(start) or "")
    assert state is not None and state.is_closed  # the tombstone absorbs late copies


# ------------------------------------------------------------------ pairing agent


def test_pairing_agent_joins_in_any_order_and_drops_repeats(producer: FakeProducer) -> None:
    start = note(Phase.START, 0, request_id="r-4", operation="resize_flavor",
                 resource_id="inst-4", payload={"new_flavor_id": "8"})
    end = note(Phase.END, 20, request_id="r-4", operation="resize_flavor", resource_id="inst-4")

    run(lambda: feed_pairing(*batch_for(end, end, start, start, end)))

    records = producer.decoded(settings.operations_topic)
    assert len(records) == 1
    assert records[0].outcome is Outcome.SUCCEEDED and records[0].flavor_id == "8"
    partition = pairing_partition(join_key(start) or "")
    assert open_operations.partition_of(join_key(start) or "") == partition
    recent_ops = web.local_recent({})
    assert [op["record_id"] for op in recent_ops] == [records[0].record_id]


def test_pairing_agent_reports_failures_to_both_topics(producer: FakeProducer) -> None:
    start = note(Phase.START, 0, request_id="r-5", tenant="tenant-5")
    error = note(Phase.ERROR, 12, request_id="r-5", tenant="tenant-5")

    run(lambda: feed_pairing(*batch_for(start, error)))

    [completed] = producer.decoded(settings.operations_topic)
    [failure] = producer.on(settings.errors_topic)
    error_record = decode(failure.value or b"")
    assert completed.outcome is Outcome.FAILED
    assert isinstance(error_record, OperationError)
    assert error_record.record_id == completed.record_id
    assert error_record.exception_class == "trove.common.exception.TroveError"
    assert error_record.exception_last_line.startswith("trove.common.exception.TroveError: ")
    assert failure.key == b"tenant-5"  # all of a tenant's failures on one partition
    order = [r.topic for r in producer.records]
    assert order.index(settings.operations_topic) < order.index(settings.errors_topic)


def test_ticks_abandon_starts_and_forget_tombstones(producer: FakeProducer) -> None:
    start = note(Phase.START, 0, request_id="r-6")  # create: 2 h timeout
    key = join_key(start) or ""
    partition = pairing_partition(key)
    timeout = policy.timeout(ResourceType.INSTANCE, "create")
    lateness, retention = policy.allowed_lateness, policy.retention

    async def scenario() -> None:
        await feed_pairing((partition, pack_batch([encode(start)])),
                           (partition, tick_at(at(60))))
        assert producer.on(settings.operations_topic) == []
        assert [op["join_key"] for op in web.local_open({})] == [key]
        passed = start.occurred_at + timeout + lateness + timedelta(seconds=1)
        await feed_pairing((partition, tick_at(passed)))
        assert len(producer.on(settings.operations_topic)) == 1
        assert web.local_open({}) == []  # only the tombstone is left
        later = passed + retention + timedelta(seconds=1)
        await feed_pairing((partition, tick_at(later)))

    run(scenario)
    [record] = producer.decoded(settings.operations_topic)
    assert record.outcome is Outcome.ABANDONED and record.ended_at is None
    assert open_operations.get(key) is None  # the tombstone is gone
    assert shell.event_time[partition] > start.occurred_at + timeout


def test_a_source_partition_behind_holds_expiry_back(producer: FakeProducer) -> None:
    """Fast source partitions must not abandon a start whose end is still unread on a slow one
    (a worker restarting): event time is the slowest partition's progress."""
    start = note(Phase.START, 0, request_id="r-9")
    end = note(Phase.END, 600, request_id="r-9")
    partition = pairing_partition(join_key(start) or "")
    far = start.occurred_at + policy.timeout(ResourceType.INSTANCE, "create") \
        + policy.allowed_lateness + timedelta(hours=1)
    slow = [SourceProgress(p, far if p else start.occurred_at, False)
            for p in range(settings.topic_partitions)]

    async def scenario() -> None:
        await feed_pairing((partition, pack_batch([encode(start)])),
                           (partition, pack_tick(slow)))
        assert producer.on(settings.operations_topic) == []  # partition 0 is still behind
        await feed_pairing((partition, pack_batch([encode(end)])),
                           (partition, tick_at(far)))

    run(scenario)
    [record] = producer.decoded(settings.operations_topic)
    assert record.outcome is Outcome.SUCCEEDED and record.duration_seconds == 600.0


def test_ticks_vouch_only_for_events_whose_effects_are_durable() -> None:
    """A crash re-reads what is not durable: a tick must not have moved event time past it."""
    progress = ReadProgress()
    progress.owned = {0, 1}
    durable: dict[int, int] = {}

    def reports() -> list[SourceProgress]:
        return progress.reports(lambda p: 100, lambda p: None, durable.get)

    progress.read(0, 10, at(60))
    assert reports() == [SourceProgress(0, None, False), SourceProgress(1, None, False)]
    progress.read(0, 11, at(600))  # read, not yet durable
    progress.read(1, 99, at(30))
    durable.update({0: 10, 1: 99})
    assert reports() == [SourceProgress(0, at(60), False), SourceProgress(1, at(30), True)]
    durable[0] = 11
    assert reports()[0] == SourceProgress(0, at(600), False)


def test_ticks_of_another_partition_change_nothing(producer: FakeProducer) -> None:
    start = note(Phase.START, 0, request_id="r-7")
    partition = pairing_partition(join_key(start) or "")
    other = (partition + 1) % settings.topic_partitions

    run(lambda: feed_pairing((partition, pack_batch([encode(start)])),
                             (other, tick_at(at(86_000)))))

    assert producer.on(settings.operations_topic) == []


def test_event_time_is_capped_near_the_wall_clock(producer: FakeProducer) -> None:
    start = note(Phase.START, 0, request_id="r-8")
    partition = pairing_partition(join_key(start) or "")
    far_future = datetime.now(UTC) + timedelta(days=365)

    run(lambda: feed_pairing((partition, pack_batch([encode(start)])),
                             (partition, tick_at(far_future))))

    assert shell.event_time[partition] < datetime.now(UTC) + timedelta(hours=1)


def test_pairing_agent_skips_corrupt_records(producer: FakeProducer) -> None:
    run(lambda: feed_pairing((0, b"TMB1\x00\x00\x00\x10short"), (0, pack_batch([b"junk"]))))
    assert outbox.stats["bad_pairing_records"] == 1
    assert outbox.stats["undecodable"] == 1


# ------------------------------------------------------------------ error agent


def failure(record_id: str, *, tenant: str = "tenant-1", hour: int = 0) -> OperationError:
    return OperationError(
        record_id=record_id, resource_type=ResourceType.INSTANCE, operation="create",
        occurred_at=at(hour * 3600 + 5), message_id=str(uuid.uuid4()),
        publisher_id="taskmanager.host2", tenant_id=tenant,
        exception_class="trove.common.exception.TroveError")


def test_error_agent_counts_per_key_hourly_and_once_per_record(producer: FakeProducer) -> None:
    records = [failure("op-1"), failure("op-1"), failure("op-2"), failure("op-3", hour=1),
               failure("op-4", tenant="tenant-2")]

    async def scenario() -> None:
        async with count_errors.test_context() as agent:
            for record in records:
                await agent.put(encode(record), partition=1)
                await asyncio.sleep(0)

    run(scenario)
    key = "tenant-1|instance|create|trove.common.exception.TroveError"
    counts = error_counts.get(key)
    assert counts is not None and counts.total == 3
    assert sorted(counts.hourly.values()) == [1, 2]
    assert error_counts.partition_of(key) == 1
    views = {(e["tenant_id"], e["total"]) for e in web.local_errors({})}
    assert views == {("tenant-1", 3), ("tenant-2", 1)}
    assert [e["tenant_id"] for e in web.local_errors({"tenant": "tenant-2"})] == ["tenant-2"]


# ------------------------------------------------------------------ outbox ordering


class _Table:
    changelog_topic_name = "app-t-changelog"

    def changelog_key(self, key: str) -> bytes:
        return orjson.dumps(key)

    def changelog_value(self, value: Any) -> bytes | None:
        return None if value is None else orjson.dumps(value)

    def written(self, key: str, value: Any, raw: bytes | None) -> None:
        pass


def test_table_changes_reach_the_changelog_only_after_their_outputs() -> None:
    fake = FakeProducer(hold=True)
    box = Outbox({}, pairing_topic="p", producer_factory=lambda config: fake)
    table = _Table()

    async def scenario() -> None:
        box.emit("out", b"record-1", "k")
        box.stage(table, 3, "key", {"v": 1})
        box.stage(table, 3, "key", {"v": 2})  # coalesced: one changelog record
        checkpoint = asyncio.create_task(box.checkpoint(max_wait=0.2))
        await asyncio.sleep(0.05)
        assert fake.on(table.changelog_topic_name) == []  # the output is not confirmed yet
        await checkpoint
        assert fake.on(table.changelog_topic_name) == []  # still not: left for later
        fake.hold = False
        await box.checkpoint()
        [change] = fake.on(table.changelog_topic_name)
        assert (change.key, change.value, change.partition) == (b'"key"', b'{"v":2}', 3)

    asyncio.run(scenario())


@dataclass
class _Event:
    name: str
    acked: list[str]
    offset: int = 0

    @property
    def message(self) -> Any:
        return SimpleNamespace(topic="source", partition=0, offset=self.offset)

    def ack(self) -> bool:
        self.acked.append(self.name)
        return True


def test_events_are_acknowledged_only_once_their_effects_are_durable() -> None:
    fake = FakeProducer(hold=True)
    box = Outbox({}, pairing_topic="p", producer_factory=lambda config: fake)
    table, acked = _Table(), []

    async def scenario() -> None:
        box.processed(_Event("e1", acked, offset=7))
        box.emit("out", b"record-1", "k")
        box.stage(table, 0, "key", {"v": 1})
        box.processed(_Event("e2", acked, offset=8))  # no effects of its own, same epoch
        await box.checkpoint(max_wait=0.05)
        assert acked == [] and fake.on(table.changelog_topic_name) == []
        assert box.durable_offsets == {}
        fake.hold = False
        await box.checkpoint(max_wait=0.05)
        assert acked == ["e1", "e2"]  # output, then changelog, confirmed
        assert box.durable_offsets == {("source", 0): 8}
        assert len(fake.on(table.changelog_topic_name)) == 1
        box.processed(_Event("e3", acked))
        box.stage(table, 0, "key", {"v": 2})
        fake.fail_topics.add(table.changelog_topic_name)
        with pytest.raises(OutboxError):
            await box.checkpoint(max_wait=0.05)
        assert acked == ["e1", "e2"]  # e3's change was not confirmed: never acknowledged

    asyncio.run(scenario())


def test_sync_checkpoint_writes_everything_and_deletes_with_tombstones() -> None:
    fake = FakeProducer(hold=True)
    box = Outbox({}, pairing_topic="p", producer_factory=lambda config: fake)
    table = _Table()
    acked: list[str] = []
    box.processed(_Event("e", acked))
    box.emit("out", b"record", None)
    box.stage(table, 0, "gone", None)
    box.checkpoint_sync()
    [change] = fake.on(table.changelog_topic_name)
    assert change.value is None and change.key == b'"gone"'
    assert box.staged == 0 and acked == ["e"]


def test_a_failed_delivery_stops_the_checkpoint() -> None:
    fake = FakeProducer(fail_topics={"out"})
    box = Outbox({}, pairing_topic="p", producer_factory=lambda config: fake)
    table = _Table()
    box.emit("out", b"record", None)
    box.stage(table, 0, "k", {"v": 1})
    with pytest.raises(OutboxError):
        box.checkpoint_sync()
    assert fake.on(table.changelog_topic_name) == []  # state not written past a lost output


def test_prompt_topics_and_the_rest_go_through_two_producers_with_their_own_linger() -> None:
    made: list[tuple[dict[str, Any], FakeProducer]] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        made.append((config, FakeProducer(hold=True)))
        return made[-1][1]

    box = Outbox({"linger.ms": 2, "client.id": "w"}, pairing_topic="p", producer_factory=factory,
                 prompt_topics=frozenset({"ops"}), bulk_linger_ms=25)
    table, acked = _Table(), []
    box.processed(_Event("e", acked))
    box.emit("ops", b"operation", "k")
    box.emit("res", b"resource", "k")
    box.stage(table, 0, "key", {"v": 1})
    [(prompt_config, prompt), (bulk_config, bulk)] = made
    assert (prompt_config["linger.ms"], bulk_config["linger.ms"]) == (2, 25)
    assert bulk_config["client.id"] == "w-bulk"
    assert [r.value for r in prompt.records] == [b"operation"]
    assert [r.value for r in bulk.records] == [b"resource"]

    async def scenario() -> None:
        bulk.hold = False
        await box.checkpoint(max_wait=0.05)
        # The bulk lane's output is confirmed, the prompt lane's is not: nothing written yet.
        assert bulk.on(table.changelog_topic_name) == [] and acked == []
        prompt.hold = False
        await box.checkpoint(max_wait=0.05)
        assert len(bulk.on(table.changelog_topic_name)) == 1 and acked == ["e"]

    asyncio.run(scenario())
    made.clear()
    one = Outbox({"linger.ms": 5}, pairing_topic="p", prompt_topics=frozenset({"ops"}),
                 bulk_linger_ms=5, producer_factory=factory)
    one.emit("ops", b"a")
    one.emit("res", b"b")
    assert len(made) == 1 and len(made[0][1].records) == 2  # equal lingers: one producer


def test_a_checkpoint_serves_the_bulk_producer_its_own_changelog_writes_created() -> None:
    made: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer())
        return made[-1]

    box = Outbox({"linger.ms": 2}, pairing_topic="p", producer_factory=factory,
                 prompt_topics=frozenset({"ops"}), bulk_linger_ms=25)
    table, acked = _Table(), []
    box.processed(_Event("e", acked))
    box.emit("ops", b"operation", "k")  # only the prompt producer exists so far
    box.stage(table, 0, "key", {"v": 1})
    asyncio.run(box.checkpoint(max_wait=0.2))
    assert len(made) == 2 and len(made[1].on(table.changelog_topic_name)) == 1
    assert acked == ["e"]  # the changelog record's delivery was served in the same checkpoint


def test_forwards_are_batched_per_partition() -> None:
    fake = FakeProducer()
    box = Outbox({}, pairing_topic="pairing", forward_max_batch=3, pack=pack_batch,
                 producer_factory=lambda config: fake)
    for i in range(7):
        box.forward(i % 2, f"n{i}".encode())
    # Each partition's batch went out when it reached 3 notifications; n6 waits.
    assert [(r.partition, list(unpack_batch(r.value or b""))) for r in fake.records] == \
        [(0, [b"n0", b"n2", b"n4"]), (1, [b"n1", b"n3", b"n5"])]
    box.flush_forwards()
    assert (fake.records[-1].partition, list(unpack_batch(fake.records[-1].value or b""))) == \
        (0, [b"n6"])
    assert box.stats["forwarded"] == 7 and box.stats["forward_batches"] == 3


# ------------------------------------------------------------------ views


def test_tenant_view_and_resource_lookup(producer: FakeProducer) -> None:
    mine = note(Phase.END, 30, request_id="r-9", resource_id="inst-a", tenant="tenant-a")
    theirs = note(Phase.END, 30, request_id="r-10", resource_id="inst-b", tenant="tenant-b")
    backup = note(Phase.END, 40, request_id="r-11", resource_id="bk-a", tenant="tenant-a",
                  resource_type=ResourceType.BACKUP, payload={"size": 2.5})

    run(lambda: feed_source(mine, theirs, backup))

    listed = web.local_tenant_resources("tenant-a")
    assert sorted((r["resource_id"], r["resource_type"], r["status"]) for r in listed) == \
        [("bk-a", "backup", "active"), ("inst-a", "instance", "active")]
    assert web.local_resource("bk-a")["size_gb"] == 2.5
    assert web.local_resource("nope") is None


def test_settings_timeouts_reach_the_policy() -> None:
    from trovemeter.settings import WorkerSettings

    parsed = WorkerSettings(operation_timeouts="create=7200, backup.create=60").timeouts()
    assert parsed == {"create": 7200.0, "backup.create": 60.0}
    with pytest.raises(ValueError):
        WorkerSettings(operation_timeouts="create")
    with pytest.raises(ValueError):
        WorkerSettings(operation_timeouts="create=-1")
