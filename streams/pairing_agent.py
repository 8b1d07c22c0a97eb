"""The pairing agent: starts joined to their ends and errors (``trovemeter.pairing``), in a table.

Path of a start/end/error notification: source agent -> ``PairingForwarder`` -> the internal
topic ``<app id>-pairing``, partition ``pairing_partition(join_key)`` (in batches, see
``streams/topics.py``) -> this agent, which calls ``pairing.step`` with the key's state from
table ``open_operations``, writes the table when the state changed and emits what ``step``
returns: ``OperationCompleted`` to trove.operations, ``OperationError`` to trove.errors (after
its ``OperationCompleted``). The shovel keys records by resource id, so a create's start (no
resource id yet: keyed by request id) and its end (keyed by the new instance id) arrive on
different source partitions; the repartition by join key brings them to one partition, on one
worker, however many workers there are. When the worker that reads the notification owns its
pairing partition, it pairs it at once instead (``PairingForwarder``): same partition, same
state, same records; with one worker nothing takes the topic.

Why an explicit topic and not ``group_by``: ``group_by`` sends one record per event through
Faust's producer (~150-200 us each here) and makes the second agent pay Faust's per-event cost
per notification; batches through the outbox cost a few microseconds per notification and one
Faust event per batch. Only phased events take the hop; point events (usage audits) do not.

Event time and expiry
---------------------
``pairing.expire`` abandons starts whose end did not come, reports ends whose start did not
come and forgets tombstones, once *event time* passes a key's ``deadline``. A pairing
partition's event time is the low watermark of the source partitions (``trovemeter.watermark``):
every ``tick_interval_seconds`` each worker sends every pairing partition a tick saying, for each
source partition it reads, how far it has read in event time and whether it has caught up with
the partition's end -- counting only events whose effects are durable, so that a replay after a
crash never finds event time already past the events it reads again (``ReadProgress``). Event
time is the least progress among the source partitions still behind (the greatest when none
is), capped at the wall clock + ``pairing_max_clock_skew_seconds``.
The events themselves do not move it: a source partition far behind the others (a worker
restarting, a partition fetched late) would otherwise see its starts' ends arrive after those
starts were abandoned -- which `make chaos` did, thousands of times, before ticks carried
per-partition progress. A tick is sent after the forwards read before it, so it never vouches
for events still in the outbox.

Table writes happen only while processing a record of the partition concerned (a batch or a
tick), never from a timer. Keys are found by deadline without scanning the table: a min-heap of
(deadline, key) per partition, pushed on every state change (a stale entry is recognised when
popped: the key's current deadline is later) and rebuilt from the table after every recovery.

Also here: ``recent_operations``, a ring of the last ``recent_operations_per_partition``
finished operations per partition (the ``/operations/recent/`` view), and the tick timer.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import sys
from datetime import datetime, timedelta
from typing import Any

import orjson
from faust.types import TP

from streams.app import app, settings
from streams.consumer import lean_events
from streams.resource_agent import EventClock, read_progress, source_handlers
from streams.tables import open_operations, outbox, recent_operations
from streams.topics import (
    APP_ID_HEADER,
    PAIRING_TOPIC,
    PARTITIONS,
    is_old_tick,
    pack_tick,
    pairing_partition,
    pairing_topic,
    tick_reports,
    unpack_batch,
)
from trovemeter.codec import CodecError, decode, encode, header_for
from trovemeter.model import Notification, OperationCompleted, OperationError
from trovemeter.pairing import (
    DEFAULT_TIMEOUTS,
    OpenOperation,
    PairingPolicy,
    deadline,
    expire,
    join_key,
    step,
)
from trovemeter.watermark import LowWatermark, SourceProgress

log = logging.getLogger("trovemeter.streams")

RECORD_ID_HEADER = "trovemeter.record_id"
OPERATION_HEADER = header_for(OperationCompleted)
ERROR_HEADER = header_for(OperationError)


def policy_from_settings() -> PairingPolicy:
    timeouts = dict(DEFAULT_TIMEOUTS)
    timeouts.update({name: timedelta(seconds=s) for name, s in settings.timeouts().items()})
    return PairingPolicy(
        timeouts=timeouts,
        default_timeout=timedelta(seconds=settings.operation_default_timeout_seconds),
        max_clock_skew=timedelta(seconds=settings.pairing_max_clock_skew_seconds),
        allowed_lateness=timedelta(seconds=settings.pairing_allowed_lateness_seconds),
        retention=timedelta(seconds=settings.pairing_retention_seconds),
    )


class PairingForwarder:
    """Source handler: start/end/error events to the owner of their pairing partition.

    When this worker owns the partition (always with one worker; with *n* workers, 1/*n* of the
    keys) the notification is paired right here, already decoded, instead of taking the topic:
    the pairing partition's state, changelog partition and event time are the same either way,
    and the pure core gives the same records whichever path an event took and in whatever
    order. Saved per event: a second decode and a Faust event of the pairing agent (~100 us).
    """

    def __init__(self) -> None:
        self.owned: set[int] = set()  # pairing partitions this worker owns (streams/agents.py)

    def handle(self, n: Notification, raw: bytes, partition: int) -> None:
        key = join_key(n)
        if key is None:
            return
        target = pairing_partition(key)
        if target in self.owned:
            shell.on_notification(n, target)
            shell.sweep(target)
        else:
            outbox.forward(target, raw)


class RecentRing:
    """The last ``size`` finished operations of each partition, in table ``recent_operations``
    as chunks of ``CHUNK`` (one changelog record per chunk and checkpoint, not per operation)."""

    CHUNK = 25

    def __init__(self, size: int) -> None:
        self.chunks = max(1, -(-size // self.CHUNK))
        self._next: dict[int, int] = {}  # partition -> next sequence number

    def add(self, partition: int, record: OperationCompleted) -> None:
        seq = self._next.get(partition)
        if seq is None:
            seq = self._recover_next(partition)
        self._next[partition] = seq + 1
        key = f"{partition}:{(seq // self.CHUNK) % self.chunks}"
        first = seq - seq % self.CHUNK
        chunk = recent_operations.get(key)
        ops = list(chunk["ops"]) if chunk is not None and chunk["first"] == first else []
        ops.append(orjson.loads(orjson.dumps(record)))  # JSON-ready: ISO times, enum values
        recent_operations.put(partition, key, {"first": first, "ops": ops})

    def _recover_next(self, partition: int) -> int:
        prefix = f"{partition}:"
        ends = [chunk["first"] + len(chunk["ops"])
                for key, chunk in recent_operations.local_items() if key.startswith(prefix)]
        return max(ends, default=0)

    def forget(self, partitions: set[int] | None = None) -> None:
        if partitions is None:
            self._next.clear()
        for partition in partitions or ():
            self._next.pop(partition, None)


class PairingShell:
    """What the pairing agent keeps besides the table: event time and deadlines per partition."""

    def __init__(self, policy: PairingPolicy, ring: RecentRing) -> None:
        self.policy = policy
        self.ring = ring
        self.clock = EventClock(policy.max_clock_skew)  # only for its cap
        self.event_time: dict[int, datetime] = {}
        self.watermarks: dict[int, LowWatermark] = {}  # pairing partition -> its sources' progress
        self._heaps: dict[int, list[tuple[datetime, str]]] = {}
        self.operations_topic = settings.operations_topic
        self.errors_topic = settings.errors_topic

    # --- events
    def on_notification(self, n: Notification, partition: int) -> None:
        key = join_key(n)
        if key is None:  # not forwarded by us; nothing to pair
            return
        # One string per key for the table and every deadline entry of it (a start's, then its
        # tombstone's), instead of one per entry: ~0.25 KB less per operation held.
        key = sys.intern(key)
        old = open_operations.get(key)
        new, records = step(old, n, self.policy)
        if new is not old and new is not None:
            open_operations.put(partition, key, new)
            self._push(partition, key, new)
        self._emit(partition, records)

    def advance(self, partition: int, reports: list[SourceProgress]) -> None:
        """A tick: the sources' progress moves event time of ``partition`` (never back)."""
        watermark = self.watermarks.get(partition)
        if watermark is None:
            watermark = self.watermarks[partition] = LowWatermark(PARTITIONS)
        moment = watermark.update(reports)
        if moment is None:
            return
        current = self.event_time.get(partition)
        if current is None or moment > current:
            self.event_time[partition] = self.clock.capped(moment)
        self.sweep(partition)

    def sweep(self, partition: int) -> None:
        """Expire the keys of ``partition`` whose deadline event time has passed."""
        now = self.event_time.get(partition)
        heap = self._heaps.get(partition)
        if now is None or not heap:
            return
        policy = self.policy
        while heap and heap[0][0] < now:
            _, key = heapq.heappop(heap)
            state = open_operations.get(key)
            if state is None:
                continue
            due = _deadline(state, policy)
            if due is None or not now > due:
                continue  # a stale entry: the key's current deadline is pushed too
            new, records = expire(state, now, policy)
            if new is None:
                open_operations.delete(partition, key)
            elif new is not state:
                open_operations.put(partition, key, new)
                self._push(partition, key, new)
            self._emit(partition, records)

    def _push(self, partition: int, key: str, state: OpenOperation) -> None:
        due = _deadline(state, self.policy)
        if due is not None:
            heapq.heappush(self._heaps.setdefault(partition, []), (due, key))

    def _emit(self, partition: int, records: list[OperationCompleted | OperationError]) -> None:
        for record in records:
            headers = [(RECORD_ID_HEADER, record.record_id.encode()), APP_ID_HEADER]
            if isinstance(record, OperationCompleted):
                key = record.resource_id or record.request_id or record.record_id
                outbox.emit(self.operations_topic, encode(record), key,
                            headers=[OPERATION_HEADER, *headers])
                self.ring.add(partition, record)
            else:
                outbox.emit(self.errors_topic, encode(record), record.tenant_id or "unknown",
                            headers=[ERROR_HEADER, *headers])

    # --- rebalances
    def rebuild(self) -> None:
        """After recovery: deadlines of every key held here, from the table."""
        self._heaps = {}
        for key, state in open_operations.local_items():
            partition = open_operations.partition_of(key)
            if partition is None:
                partition = pairing_partition(key)
            due = _deadline(state, self.policy)
            if due is not None:
                self._heaps.setdefault(partition, []).append((due, key))
        for heap in self._heaps.values():
            heapq.heapify(heap)

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._heaps.pop(partition, None)
            self.event_time.pop(partition, None)
            self.watermarks.pop(partition, None)

    def open_count(self) -> int:
        return sum(len(heap) for heap in self._heaps.values())


def _deadline(state: OpenOperation, policy: PairingPolicy) -> datetime | None:
    try:
        return deadline(state, policy)
    except ValueError:  # nothing held that could ever be decided
        return None


policy = policy_from_settings()
recent = RecentRing(settings.recent_operations_per_partition)
shell = PairingShell(policy, recent)
forwarder = PairingForwarder()
source_handlers.append(forwarder)


@app.agent(pairing_topic, concurrency=1)
async def pairing(stream: Any) -> None:
    """<app id>-pairing (batches and ticks) -> open_operations, trove.operations, trove.errors."""
    # Acknowledged by the outbox (outbox.py); lean_events: see the source agent.
    async for event in lean_events(stream):
        outbox.processed(event)
        value = event.value
        partition = event.message.partition
        reports = tick_reports(value)
        if reports is not None:
            shell.advance(partition, reports)
            moment = shell.event_time.get(partition)
            if moment is not None:
                # Source handlers with an ``on_tick`` (see streams/resource_agent.py).
                for handler in source_handlers:
                    on_tick = getattr(handler, "on_tick", None)
                    if on_tick is not None:
                        on_tick(partition, moment)
            continue
        if is_old_tick(value):
            continue
        try:
            raws = list(unpack_batch(value))
        except ValueError as exc:
            outbox.stats["bad_pairing_records"] += 1
            log.warning("skipping %s[%s]@%s: %s", event.message.topic, partition,
                        event.message.offset, exc)
            continue
        for raw in raws:
            try:
                n = decode(raw)
            except CodecError as exc:
                outbox.stats["undecodable"] += 1
                log.warning("skipping undecodable forwarded record: %s", exc)
                continue
            try:
                shell.on_notification(n, partition)
            except Exception:  # noqa: BLE001 - see streams/resource_agent.py
                outbox.stats["handler_errors"] += 1
                log.exception("pairing failed on %s (message %s)", n.event_type, n.message_id)
        shell.sweep(partition)


class LogEnds:
    """The source partitions' log-end offsets, asked of the broker at each tick. Not the Faust
    consumer's ``highwater``: that is the end known at the partition's last fetch, which can be
    seconds old when fetching favours other partitions (a restart's backlog), and a partition
    that looks caught up by it stops holding event time back while older events wait unread."""

    def __init__(self) -> None:
        self._consumer: Any = None

    def query(self, partitions: list[int]) -> dict[int, int]:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        if self._consumer is None:
            # Never subscribes or commits: the group id is only what the client requires.
            self._consumer = Consumer({**settings.kafka_client_config(),
                                       "group.id": f"{settings.app_id}-log-ends",
                                       "enable.auto.commit": False, "log_level": 0})
        ends = {}
        for partition in partitions:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(settings.source_topic, partition), timeout=2, cached=False)
            except KafkaException:
                continue  # unknown: the partition counts as behind
            ends[partition] = high
        return ends


log_ends = LogEnds()


def _committed(partition: int) -> int | None:
    consumer = getattr(app, "_consumer", None)
    if consumer is None:
        return None
    return consumer._committed_offset.get(TP(settings.source_topic, partition))


def _durable(partition: int) -> int | None:
    return outbox.durable_offsets.get((settings.source_topic, partition))


_last_reports: list[list[SourceProgress]] = [[]]


@app.timer(interval=settings.tick_interval_seconds)
async def send_ticks() -> None:
    """This worker's progress on its source partitions, to every pairing partition: when it
    changed, or when a source handler waits for another tick (usage: a partition that was busy
    when the last one came). An idle worker sends nothing, so its consumer lag can reach 0."""
    owned = sorted(read_progress.owned)
    if not owned:
        return
    ends = await asyncio.get_running_loop().run_in_executor(None, log_ends.query, owned)
    reports = read_progress.reports(ends.get, _committed, _durable)
    waiting = any(getattr(handler, "wants_tick", lambda: False)() for handler in source_handlers)
    if reports == _last_reports[0] and not waiting:
        return
    _last_reports[0] = reports
    outbox.flush_forwards()  # the tick must not overtake the events it vouches for
    tick = pack_tick(reports)
    for partition in range(PARTITIONS):
        outbox.emit(PAIRING_TOPIC, tick, partition=partition)
