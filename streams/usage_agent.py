"""Usage metering (issue #6): ``trovemeter.accrual`` inside the source agent -> trove.usage
(``topics.USAGE``, setting ``usage_topic``) and trove.usage.discrepancies (setting
``usage_discrepancies_topic``).

``UsageMeter`` is a source handler (``streams/resource_agent.py``): the source agent decodes each
notification once and hands it to resource state, the pairing forwarder and this, on the
partition of trove.notifications it arrived on. trove.notifications is keyed by resource id, so
a resource's state is read and written on that partition, with no repartition.

Tables (``streams/tables.py``, written through the outbox with explicit partitions)
-----------------------------------------------------------------------------------
| table | key | value |
|---|---|---|
| ``metering`` | resource id (instances, backups) | ``MeteredResource`` as compact JSON bytes (``accrual.to_row``: the same JSON as ``encode_state``) |
| ``usage_clock`` | source partition (``"0"``, ``"1"``, ...); ``<partition>/swept`` | the partition's watermark, microseconds since the epoch; its sweep mark (below) |
| ``usage_ledger`` | ``<tenant id>|<source partition>`` | hourly totals of the latest record versions per meter and flavor, the last ``usage_view_hours`` hours |

Values are kept as bytes (~0.3 KB per live instance; the decoded object is ~5x larger), decoded
for each event of their resource and encoded again only when ``accrual`` returns a new state.
Notifications that carry no billing facts (starts and errors: see the accrual docstring) are
not even decoded against the state.

Per notification
----------------
1. the partition's watermark moves to ``occurred_at`` if later (monotonic, capped at the wall
   clock + ``pairing_max_clock_skew_seconds`` like the source clock; persisted in
   ``usage_clock``);
2. ``step = accrual.apply(state, notification, watermark, policy)`` for instances and backups;
   ``step.records`` -> trove.usage keyed by ``record_id``, ``step.discrepancies`` ->
   trove.usage.discrepancies keyed by ``discrepancy_id`` (codec schema-name header and a
   ``trovemeter.record_id`` header); the key is written when ``step.state is not state`` and
   deleted when ``step.state`` is None;
3. the sweep: when ``floor_hour(watermark - allowed_lateness)`` moved, ``accrual.advance`` for
   every key of the partition, so that hours without events get their usage too; also the
   first time this worker sees a partition (start-up, rebalance, or a tick after either), which
   finishes a sweep that a crash cut short.

The sweep in slices
-------------------
A sweep costs ~0.1-0.3 ms per key here (most of it ``advance`` and the records' Avro encoding):
run inside the event that closed the hour, every event behind it waited for the whole
partition (bench_latency: hundreds of ms at every hour's close). In the worker the task
``sweep_in_slices`` runs it instead, in slices of ``usage_sweep_slice_ms`` of work (at least one
key), yielding to the event loop between slices, so events are handled in between, and the
sweep goes on when no event comes. Without that task (unit tests, bench/profile_worker.py) the
sweep runs to the end inside the event, as before.

- Same records as the whole sweep first: an event for a key the pending sweep has not reached
  yet advances that key to the sweep's watermark before ``apply`` (``_catch_up``). ``apply``
  alone would fold the event's facts into the hours the sweep closes (one version), where the
  sweep first emits them and the event then corrects them (two versions).
  tests/unit/test_usage_agent.py checks that slicing changes no key's records.
- An hour closing while a sweep is pending restarts it with the later watermark: keys not
  reached yet go straight there (``advance`` over two hours gives what two calls give).
- Checkpoints: a slice's writes are staged and emitted like an event's and join the current
  epoch. An event is acknowledged before the sweep it started has finished, so after a crash
  the partition's keys may be partly swept: the first sight of the partition sweeps it again.
- Rebalances: a revoked partition's pending sweep is dropped and the partition counts as not
  seen, so the first event or tick after the assignment sweeps it again.

The sweep mark
--------------
A sweep changes a state only to move its ``emitted_through`` (and to drop the audits and
versions of hours that froze, which nothing reads again): writing every state back cost a
changelog record and a JSON dump per resource and hour. So a state the sweep only advances is
not written; once the partition's sweep has gone through every key without an error, its hour
is staged as the partition's *mark* (``usage_clock`` key ``<partition>/swept``): every state of
the partition was emitted through it. Every reader takes a state as ``accrual.swept_to(state,
mark)`` -- what the sweep would have written (``_load``); a key the pending sweep has reached
reads as that sweep's hour (``_Sweep.reached``, in memory until the mark is staged). A state
written for any other reason (an event) is written as ``swept_to`` gave it, so it carries the
mark itself, and finished states are still deleted by the sweep.

- Durability: the mark is staged after the sweep's outputs, so the outbox writes it only once
  they are confirmed. A crash before that re-reads from the first event not acknowledged, and
  the first sight of the partition sweeps it again *before* that event (``handle``) from the
  older mark: the same records again (version 1, same content), then the event as the first
  time (a late fact corrects the hour: version 2). tests/unit/test_usage_agent.py crashes the
  worker at random points, with sweeps whole and in slices, and compares the records and
  states with a run without crashes.
- A key whose ``advance`` failed leaves the mark where it was: the next sweep emits its hours
  (and the other keys' last hour again, the same records).
- A revoked partition's pending sweep is dropped with what it reached: the next first sight
  sweeps those keys again (the same records).

Writes to other keys than the event's during the sweep are safe because every write names its
partition explicitly (``StagedTable.put(partition, ...)``, the outbox); Faust's own table
writes would go to the *current event's* partition (``Collection.partition_for_key``), which
for a sweep over one partition's keys is the same partition anyway.

Quiet partitions: ticks
-----------------------
A partition that receives no events does not move its watermark by itself. The pairing agent
calls ``on_tick(partition, event_time)`` for every tick it receives (``streams/pairing_agent.py``:
every ``tick_interval_seconds`` each worker sends every pairing partition its progress on the
source partitions, and the pairing partition's event time is their low watermark; the same
worker owns partition *p* of the pairing and the source topic). A tick moves the watermark only
of a source partition that is **idle**: no event for ``usage_idle_partition_seconds`` and
nothing left to read (the last offset processed here + 1 >= the partition's log end as the
broker gave it when the tick was sent; the consumer's highwater when that is unknown). A
partition that is merely behind -- a worker catching up, a
replay, Kafka handing out another partition's backlog first -- closes its hours with its own
events, never with the event time of faster partitions: otherwise its events would arrive
"late" and become corrections, or, beyond the correction retention, be dropped. A tick that
finds its partition busy is remembered (``wants_tick``): the worker then sends ticks every
``tick_interval_seconds`` even if nothing moved, until one finds the partition idle.

Usage view
----------
``usage_ledger`` holds, per tenant and source partition, the sum of the latest version of each
record per hour, meter and flavor (a correction replaces its predecessor's quantity: the delta
is computed from the state before the correction). ``streams/usage_web.py`` serves it with the
per-resource lines computed from the ``metering`` states this worker holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
from faust.types import TP

from streams.app import app, settings
from streams.resource_agent import read_progress, source_clock, source_handlers
from streams.tables import metering, outbox, table_json, usage_clock, usage_ledger
from trovemeter.accrual import (
    HOUR_US,
    METERED_TYPES,
    AccrualPolicy,
    MeteredResource,
    Step,
    UsageFields,
    advance,
    advance_fields,
    apply,
    audited_row,
    from_json_value,
    from_us,
    swept_hour_fields,
    to_row,
    to_us,
)
from trovemeter.codec import encode, header_for, usage_encoder
from trovemeter.model import Notification, Phase, UsageDiscrepancy, UsageRecord
from trovemeter.usage_ledger import TenantLedger, line_of

log = logging.getLogger("trovemeter.streams")

RECORD_ID_HEADER = "trovemeter.record_id"
USAGE_HEADER = header_for(UsageRecord)
DISCREPANCY_HEADER = header_for(UsageDiscrepancy)
_encode_usage = usage_encoder()
# Starts and errors never carry billing facts (accrual: facts come from ends and usage
# notifications); exists audits are point events, named here as well to be safe.
_NO_FACTS = frozenset({Phase.START, Phase.ERROR})


def load_state(raw: bytes, swept_through: int | None = None,
               policy: AccrualPolicy | None = None) -> MeteredResource:
    """``accrual.decode_state`` with orjson (several times faster than json, same JSON): the
    row form, or the older ``to_dict`` form a changelog may still hold; ``swept_through``: as
    ``accrual.swept_to`` gives it."""
    return from_json_value(orjson.loads(raw), swept_through, policy)


def dump_state(state: MeteredResource) -> bytes:
    """``accrual.encode_state`` with orjson: the same compact JSON, as a table keeps it."""
    return table_json(to_row(state))


def hour_floor(us: int) -> int:
    return us - us % HOUR_US


def mark_key(partition: int) -> str:
    """``usage_clock``'s key of ``partition``'s sweep mark."""
    return f"{partition}/swept"


def records_between(state: MeteredResource, start_us: int, end_us: int,
                    policy: AccrualPolicy) -> tuple[UsageRecord, ...]:
    """The records of ``state`` for the hours starting in [start_us, end_us) (hour-aligned), as
    ``accrual`` emits them (latest content; every version numbered 1). Only ``advance``, the
    public API: a copy of the state that has emitted nothing after ``start_us`` is advanced to a
    watermark that closes exactly ``end_us``."""
    if end_us <= start_us:
        return ()
    probe = replace(state, emitted_through=start_us, versions=())
    return advance(probe, from_us(end_us + policy.lateness_us), policy).records


class _Sweep:
    """A partition's sweep in progress (see "The sweep in slices")."""

    __slots__ = ("watermark", "closed", "keys", "since", "count", "work", "slices", "started",
                 "reached", "errors")

    def __init__(self, watermark: datetime, closed: int, keys: Iterator[str], since: int | None,
                 earlier: _Sweep | None) -> None:
        self.watermark = watermark
        self.closed = closed  # every hour before this is closed at ``watermark``
        self.keys = keys
        # Keys advanced (to ``closed``, or to an earlier sweep's hour that this one replaces)
        # whose states were not written: "The sweep mark".
        self.reached: dict[str, int] = {} if earlier is None else earlier.reached
        # Keys whose ``advance`` failed (those of an earlier sweep are tried again here).
        self.errors = 0
        # Hours before ``since`` were closed for every key when this sweep began (None: not
        # known, a first sight). What an earlier sweep it replaces had done counts here too:
        # one sweep, one log line.
        self.since = since if earlier is None else earlier.since
        self.count = 0 if earlier is None else earlier.count
        self.work = 0.0 if earlier is None else earlier.work
        self.slices = 0 if earlier is None else earlier.slices
        self.started = time.monotonic() if earlier is None else earlier.started


class UsageMeter:
    """Source handler: accrual per notification, the watermark and sweep of each partition."""

    def __init__(self, policy: AccrualPolicy, usage_topic: str, discrepancies_topic: str, *,
                 idle_seconds: float, view_hours: int) -> None:
        self.policy = policy
        self.usage_topic = usage_topic
        self.discrepancies_topic = discrepancies_topic
        self.idle_seconds = idle_seconds
        self.view_hours = view_hours
        self._lateness = policy.lateness_us
        self._watermarks: dict[int, int] = {}  # partition -> watermark (us), cached
        self._swept: dict[int, int] = {}  # partition -> closed_through of its last sweep
        self._marks: dict[int, int | None] = {}  # partition -> its sweep mark, cached
        self._last_event: dict[int, float] = {}  # partition -> time.monotonic() of last event
        self._waiting: set[int] = set()  # partitions a tick found busy
        self._tenants: dict[str, set[str]] | None = None  # tenant -> resource ids (lazy)
        self._pending: dict[int, _Sweep] = {}  # partition -> its sweep not finished yet
        self._wake: asyncio.Event | None = None  # set by run_sweeps: sweep in slices
        self.stats: dict[str, int] = {"applied": 0, "sweeps": 0, "swept_keys": 0,
                                      "sweep_slices": 0, "sweep_errors": 0, "caught_up": 0,
                                      "records": 0, "corrections": 0, "discrepancies": 0,
                                      "rejected": 0}

    # ------------------------------------------------------------- per notification
    def handle(self, n: Notification, raw: bytes, partition: int) -> None:
        self._last_event[partition] = time.monotonic()
        if partition not in self._swept:
            # First sight (start-up, rebalance): the sweep a crash may have cut short goes
            # first, as it went before this event the first time (see "The sweep mark").
            current = self._watermark(partition)
            if current is not None:
                self._maybe_sweep(partition, current)
        watermark = self._observe(partition, to_us(source_clock.capped(n.occurred_at)))
        rid = n.resource_id
        if rid and n.resource_type in METERED_TYPES and (
                n.phase not in _NO_FACTS or n.operation == "exists"):
            raw_state = metering.get(rid)
            if raw_state is not None and n.operation == "exists" and \
                    partition not in self._pending and self._audited(
                        partition, rid, raw_state, n, watermark):
                self.stats["applied"] += 1
                self._maybe_sweep(partition, watermark)
                return
            state = None if raw_state is None else self._load(partition, rid, raw_state)
            if state is not None and partition in self._pending:
                state = self._catch_up(partition, rid, state)
            try:
                step = apply(state, n, from_us(watermark), self.policy)
            except ValueError as exc:  # e.g. one id used by an instance and a backup
                self.stats["rejected"] += 1
                log.warning("usage: notification %s not applied: %s", n.message_id, exc)
                step = Step(state)
            self.stats["applied"] += 1
            self._commit(partition, rid, state, step)
        self._maybe_sweep(partition, watermark)

    def _audited(self, partition: int, key: str, raw: bytes, n: Notification,
                 watermark: int) -> bool:
        """An audit folded straight into its state's row (``audited_row``); False: ``apply``
        decides (another case, an unreadable row)."""
        try:
            row = orjson.loads(raw)
            new = audited_row(row, n, self._swept_through(partition, key),
                              hour_floor(watermark - self._lateness), self.policy) \
                if type(row) is list else None
        except Exception:  # noqa: BLE001 - the general path reports what is wrong
            return False
        if new is None:
            return False
        if new is not row:
            metering.put(partition, key, table_json(new))
        return True

    # ------------------------------------------------------------- ticks
    def on_tick(self, partition: int, event_time: datetime) -> None:
        """A pairing tick for pairing partition ``partition`` = source partition ``partition``."""
        moment = to_us(event_time)
        current = self._watermark(partition)
        # Not seen since a start-up or rebalance: an idle partition gets its first-sight sweep
        # from a tick too (a sweep a crash cut short, with no event coming to start it again).
        if current is not None and moment <= current and partition in self._swept:
            self._waiting.discard(partition)
            return
        if not self._idle(partition):
            self._waiting.add(partition)
            return
        self._waiting.discard(partition)
        self._maybe_sweep(partition, self._observe(partition, moment))

    def wants_tick(self) -> bool:
        """A tick found a partition busy: the next one may find it idle (``send_ticks``)."""
        return bool(self._waiting)

    def _idle(self, partition: int) -> bool:
        now = time.monotonic()
        last = self._last_event.setdefault(partition, now)  # a new partition: wait first
        if now - last < self.idle_seconds:
            return False
        offset = read_progress.last_offset(partition)
        if offset is None:
            return True
        # The log end the broker gave for the tick being handled; the consumer's highwater is
        # the end known at the partition's last fetch, seconds stale under another partition's
        # backlog, and a partition that looks read to the end by it would be closed by the
        # other partitions' event time while its own events wait unread (they would arrive late).
        end = read_progress.log_end(partition)
        if end is not None:
            return offset + 1 >= end
        consumer = getattr(app, "_consumer", None)  # not ``app.consumer``: that creates one
        if consumer is None:
            return True
        try:
            highwater = consumer.highwater(TP(settings.source_topic, partition))
        except Exception:  # noqa: BLE001 - consumer not started, partition not fetched yet
            return True
        return highwater is None or offset + 1 >= highwater

    # ------------------------------------------------------------- watermark and sweep
    def _watermark(self, partition: int) -> int | None:
        watermark = self._watermarks.get(partition)
        if watermark is None:
            watermark = usage_clock.get(str(partition))
            if watermark is not None:
                self._watermarks[partition] = watermark
        return watermark

    def _observe(self, partition: int, moment: int) -> int:
        current = self._watermark(partition)
        if current is not None and moment <= current:
            return current
        self._watermarks[partition] = moment
        usage_clock.put(partition, str(partition), moment)
        return moment

    def _maybe_sweep(self, partition: int, watermark: int) -> None:
        closed = hour_floor(watermark - self._lateness)
        swept = self._swept.get(partition)
        if swept is not None and closed <= swept:
            return
        # First sight of the partition here (start-up, rebalance): sweep once, so that a sweep
        # cut short by a crash (states not all advanced) is finished.
        self._swept[partition] = closed
        self.sweep(partition, from_us(watermark), since=swept)

    def sweep(self, partition: int, watermark: datetime, since: int | None = None) -> None:
        """``advance`` every key of ``partition`` to ``watermark``: in slices when
        ``run_sweeps`` runs, else now (see "The sweep in slices")."""
        earlier = self._pending.pop(partition, None)
        job = _Sweep(watermark, hour_floor(to_us(watermark) - self._lateness),
                     self._keys_of(partition), since, earlier)
        self._pending[partition] = job
        if self._wake is None:
            while partition in self._pending:
                self._sweep_slice(float("inf"))
        else:
            self._wake.set()

    def _keys_of(self, partition: int) -> Iterator[str]:
        # A snapshot of the keys: a key added later was applied with a later watermark.
        keys, partition_of = metering.keys(), metering.partition_of
        return (key for key in keys if partition_of(key) == partition)

    def _sweep_slice(self, seconds: float) -> None:
        """Advance keys of the oldest pending sweep for ``seconds`` (at least one key); then
        the next partition's sweep has its turn."""
        partition, job = next(iter(self._pending.items()))
        started = time.perf_counter()
        deadline = started + seconds
        done = True
        closed = job.closed
        for key in job.keys:
            raw = metering.get(key)
            # A live resource's plain hour straight from its row (``swept_hour_fields``);
            # every other state through ``advance_fields``.
            fields = None if raw is None else self._swept_hour(partition, key, raw, closed)
            state = None if raw is None or fields is not None else self._load(partition, key,
                                                                                raw)
            if fields is not None or state is not None:
                try:
                    if fields is not None:
                        job.reached[key] = closed
                        if fields:
                            self._emit(partition, None, fields)
                    else:
                        self._commit(partition, key, state,
                                     advance_fields(state, job.watermark, self.policy), job)
                except Exception:  # noqa: BLE001 - one bad state must not stop every sweep
                    self.stats["sweep_errors"] += 1
                    job.errors += 1
                    log.exception("usage: sweep of %s (partition %d) failed", key, partition)
                job.count += 1
            if time.perf_counter() >= deadline:
                done = False
                break
        job.work += time.perf_counter() - started
        job.slices += 1
        self.stats["sweep_slices"] += 1
        del self._pending[partition]
        if not done:
            self._pending[partition] = job  # to the back of the queue
            return
        self.stats["sweeps"] += 1
        self.stats["swept_keys"] += job.count
        if not job.errors:  # a key not advanced keeps the mark where it is (it is swept again)
            self._marks[partition] = job.closed
            usage_clock.put(partition, mark_key(partition), job.closed)
        if job.count:
            log.info("usage: partition %d swept to %s: %d keys in %.2fs (%.1f ms of work in "
                     "%d slices)", partition, job.watermark.isoformat(), job.count,
                     time.monotonic() - job.started, job.work * 1000, job.slices)

    def _swept_hour(self, partition: int, key: str, raw: bytes,
                    closed: int) -> tuple[UsageFields, ...] | None:
        """The sweep's records for ``key`` straight from its row, or None: ``advance_fields``
        decides (a state of another shape, an unreadable one)."""
        try:
            row = orjson.loads(raw)
            if type(row) is not list:
                return None
            return swept_hour_fields(row, self._swept_through(partition, key), closed,
                                     self.policy)
        except Exception:  # noqa: BLE001 - the general path reports what is wrong
            return None

    def _catch_up(self, partition: int, key: str,
                  state: MeteredResource) -> MeteredResource | None:
        """``state`` advanced to the pending sweep's watermark, as if the sweep had reached
        it before this event (a no-op for a key it has reached)."""
        job = self._pending[partition]
        step = advance_fields(state, job.watermark, self.policy)
        if step.state is state:
            return state
        self.stats["caught_up"] += 1
        self._commit(partition, key, state, step, job)
        return step.state

    async def run_sweeps(self, slice_seconds: float) -> None:
        """From now on (until cancelled) sweeps run here in slices of ``slice_seconds`` of
        work, with a turn of the event loop between slices: the source agent handles the events
        that came meanwhile (it yields when its queue is empty or every 100 events)."""
        wake = self._wake = asyncio.Event()
        try:
            while True:
                await wake.wait()
                wake.clear()
                while self._pending:
                    self._sweep_slice(slice_seconds)
                    await asyncio.sleep(0)
        finally:
            self._wake = None

    def pending_sweeps(self) -> list[int]:
        """Partitions whose sweep has not finished."""
        return sorted(self._pending)

    # ------------------------------------------------------------- effects
    def _load(self, partition: int | None, key: str, raw: bytes) -> MeteredResource | None:
        """The state of ``key`` as its last sweep left it (``_swept_through``)."""
        try:
            return load_state(raw, self._swept_through(partition, key), self.policy)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("usage: state of %s unreadable, starting over: %s", key, exc)
            return None

    def _swept_through(self, partition: int | None, key: str) -> int | None:
        """How far the sweeps emitted ``key``'s hours without writing its state: the pending
        sweep's hour if it reached the key, else the partition's mark (None: no more than the
        state says)."""
        if partition is None or metering.partition_of(key) != partition:
            return None  # not a key the sweeps of ``partition`` went through
        job = self._pending.get(partition)
        if job is not None:
            reached = job.reached.get(key)
            if reached is not None:
                return reached
        if partition not in self._marks:
            self._marks[partition] = usage_clock.get(mark_key(partition))
        return self._marks[partition]

    def _commit(self, partition: int, key: str, state: MeteredResource | None,
                step: Step, sweep: _Sweep | None = None) -> None:
        """Write what ``step`` changed and emit its outputs; ``sweep``: ``step`` is ``advance``
        within that sweep, and a state it only advanced is not written ("The sweep mark")."""
        new = step.state
        if new is None:
            if state is not None:
                metering.delete(partition, key)
        elif sweep is not None:
            if new is not state:
                sweep.reached[key] = sweep.closed
        elif new is not state:
            metering.put(partition, key, dump_state(new))
            if self._tenants is not None and new.tenant_id and (
                    state is None or state.tenant_id != new.tenant_id):
                self._tenants.setdefault(new.tenant_id, set()).add(key)
        if step.records:
            self._emit(partition, state, step.records)
        for found in step.discrepancies:
            outbox.emit(self.discrepancies_topic, encode(found), found.discrepancy_id,
                        headers=[DISCREPANCY_HEADER,
                                 (RECORD_ID_HEADER, found.discrepancy_id.encode())])
            self.stats["discrepancies"] += 1

    def _emit(self, partition: int, before: MeteredResource | None,
              records: tuple[UsageRecord, ...] | tuple[UsageFields, ...]) -> None:
        emitted_through = None if before is None else before.emitted_through
        previous: dict[int, dict[str, float]] = {}  # corrected hour -> record id -> quantity
        ledger_tenant = ledger_key = ledger = None
        changed = False
        emit, topic, header, view_hours = outbox.emit, self.usage_topic, USAGE_HEADER, \
            self.view_hours
        # A state's records share their tenant, and an hour's records its datetime objects:
        # the ledger key and the hour are derived once per change.
        window, hour = None, 0
        for record in records:
            record_id = record.record_id
            key_bytes = record_id.encode()
            # The sweep's records come as their fields (``advance_fields``), the rest as records.
            value = _encode_usage(record) if type(record) is UsageFields else encode(record)
            emit(topic, value, key_bytes, headers=[header, (RECORD_ID_HEADER, key_bytes)])
            if record.window_start is not window:
                window = record.window_start
                hour = to_us(window)
            delta = record.quantity
            if emitted_through is not None and hour < emitted_through:
                # A correction: the ledger holds what ``before`` gives for this record's hour.
                assert before is not None
                self.stats["corrections"] += 1
                quantities = previous.get(hour)
                if quantities is None:
                    quantities = previous[hour] = {
                        r.record_id: r.quantity
                        for r in records_between(before, hour, hour + HOUR_US, self.policy)}
                delta -= quantities.get(record_id, 0.0)
            if record.tenant_id != ledger_tenant:
                if ledger is not None and changed:
                    usage_ledger.put(partition, ledger_key, ledger)  # type: ignore[arg-type]
                ledger_tenant, changed = record.tenant_id, False
                ledger_key = f"{ledger_tenant}|{partition}"
                ledger = usage_ledger.get(ledger_key) or TenantLedger()
            assert ledger is not None
            if delta and ledger.add(hour, line_of(record.meter, record.flavor_id), delta,
                                    view_hours):
                changed = True
            flavor = record.flavor_id
            if flavor and record.flavor_name and ledger.names.get(flavor) != record.flavor_name:
                ledger.names[flavor] = record.flavor_name
                changed = True
        if ledger is not None and changed:
            # Updated in place and staged: the changelog record is serialised at the
            # checkpoint, so it may already hold deltas of outputs of a later epoch. After a
            # crash in between, the replay adds those deltas again: the ledger (the view) is
            # at-least-once, trove.usage is exact (usage_web.py says so).
            usage_ledger.put(partition, ledger_key, ledger)  # type: ignore[arg-type]
        self.stats["records"] += len(records)

    # ------------------------------------------------------------- views
    def closed_through(self) -> dict[int, int]:
        """Per source partition held here: every hour starting before this is closed (and
        emitted: while a sweep is pending, the hours its earlier sweep closed)."""
        closed = {p: hour_floor(w - self._lateness) for p, w in self._watermarks.items()}
        for partition, job in self._pending.items():
            if job.since is not None and partition in closed:
                closed[partition] = min(closed[partition], job.since)
        return closed

    def tenant_resources(self, tenant_id: str) -> Iterator[tuple[str, MeteredResource]]:
        """The metering states of ``tenant_id``'s resources held here (index built on use)."""
        if self._tenants is None:
            index: dict[str, set[str]] = {}
            for key, raw in metering.local_items():
                state = self._load(metering.partition_of(key), key, raw)
                tenant = state.tenant_id if state is not None else None
                if tenant:
                    index.setdefault(tenant, set()).add(key)
            self._tenants = index
        for key in sorted(self._tenants.get(tenant_id, ())):
            raw = metering.get(key)
            state = None if raw is None else self._load(metering.partition_of(key), key, raw)
            if state is not None and state.tenant_id == tenant_id:
                yield key, state

    def ledgers(self, tenant_id: str) -> Iterator[TenantLedger]:
        prefix = f"{tenant_id}|"
        for key, ledger in usage_ledger.local_items():
            if key.startswith(prefix):
                yield ledger

    # ------------------------------------------------------------- rebalances
    def forget(self, partitions: Iterable[int] | None = None) -> None:
        """Partitions that left this worker (None: all): their cached clock and sweep marks."""
        for cache in (self._watermarks, self._swept, self._last_event, self._marks):
            if partitions is None:
                cache.clear()
            else:
                for partition in partitions:
                    cache.pop(partition, None)
        if partitions is None:
            self._waiting.clear()
            self._pending.clear()
        else:
            self._waiting.difference_update(partitions)
            for partition in partitions:
                self._pending.pop(partition, None)
        self._tenants = None

    def drop_sweeps(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their pending sweeps stop, and a partition that comes back is
        swept again on first sight (its keys may be partly swept)."""
        for partition in partitions:
            if self._pending.pop(partition, None) is not None:
                self._swept.pop(partition, None)

    def forget_index(self) -> None:
        """After recovery: rebuild the tenant index on next use."""
        self._tenants = None

    def snapshot(self) -> dict[str, Any]:
        return {**self.stats, "pending_sweeps": self.pending_sweeps(),
                "watermarks": {str(p): from_us(w).isoformat()
                               for p, w in sorted(self._watermarks.items())}}


policy = AccrualPolicy.from_settings(settings)
usage = UsageMeter(policy, settings.usage_topic, settings.usage_discrepancies_topic,
                   idle_seconds=settings.usage_idle_partition_seconds,
                   view_hours=settings.usage_view_hours)
source_handlers.append(usage)


@app.task
async def sweep_in_slices() -> None:
    """The worker's sweeps, in slices between events (``UsageMeter.run_sweeps``)."""
    await usage.run_sweeps(settings.usage_sweep_slice_ms / 1000)
