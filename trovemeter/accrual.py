"""Usage accrual: billing facts of one resource -> hourly usage records (issue #6).

Pure: no Faust, no Kafka, no clock. The caller owns event time: it passes the stream's
*watermark* (the newest ``occurred_at`` seen on the partition) into every call.

How the Faust agent uses it
---------------------------
One ``MeteredResource`` per resource id (instances and backups), kept in an ordinary table as
``encode_state(state)`` (compact JSON bytes of ``to_row``, a positional list; ``decode_state``
also reads the older ``to_dict`` JSON):

- for each notification of a resource: ``step = apply(state, notification, watermark, policy)``;
- when the watermark crosses ``hour + allowed_lateness``: ``advance(state, watermark, policy)``
  for every key of the partition, so that hours without any event still get their usage;
- after either call: send ``step.records`` to trove.usage (key: record_id) and
  ``step.discrepancies`` to trove.usage.discrepancies; write the table key only when
  ``step.state is not state`` (nothing changed otherwise), and delete it when ``step.state`` is
  None (the resource is finished and beyond the correction retention).

Facts, not events
-----------------
A notification contributes *facts*: the resource started (instance launched, backup completed),
ended (deleted), its flavor or size changed, its flavor's name, an exists audit. Each fact is
kept with its source rank and message id, and every quantity is a pure function of the set of
facts, so duplicated, reordered or replayed notifications give the same usage. Precedence,
identical whatever the arrival order:

- launch: the create end's timestamp (``dbaas.instance_create.end``, design-note
  ``instance.create.end``; rank 0) before ``trove.instance.create``'s ``launched_at`` (rank 1);
  the earliest within a rank. ``launched_at`` of other usage notifications does not launch:
  Trove sets it to the modify time on ``modify_*``, and an exists audit of an instance that no
  create event announced is a *missed create* (reported, not billed).
- delete: the delete end's timestamp (rank 0) before ``trove.instance.delete``'s ``deleted_at``
  (rank 1); the earliest within a rank. Backups: create end to delete end (either family).
- flavor and volume size: the initial value comes from the create events (rank 0 before 1);
  a change applies from its end's timestamp (``dbaas.instance_resize_*.end``, rank 0) or, for
  a change no end reported, from ``modify_at`` of ``trove.instance.modify_*`` (rank 1: ignored
  when a rank-0 change to the same value lies within ``SAME_CHANGE_WINDOW_US`` of it, as both
  report one resize). At equal times rank 0 wins.
- sizes are kept as decimal text and integrated as exact fractions; times as integer
  microseconds. Quantities become floats only in the emitted record.

The simulator (``trovemeter.simulation``) stamps a create end, ``trove.instance.create`` and its
``launched_at`` with the same second (likewise resize ends / ``modify_at`` and delete ends /
``deleted_at``), so these rules give exactly its ``ExpectedTotals``.

Meters (Ceilometer sample vocabulary: meter, type, unit, quantity = volume)
---------------------------------------------------------------------------
- ``instance.seconds`` (delta, s): seconds alive in the hour, **one record per flavor**: the
  flavor id is part of the record id, so a billing team sums records per flavor directly.
- ``volume.gb_seconds`` (delta, GB*s): volume size x seconds; ``size_gb`` = size at the end of
  the accrued part of the hour.
- ``backup.gb_seconds`` (delta, GB*s): backup size x seconds from create end to delete end.
- ``instance.exists.seconds`` (cumulative, s): Ceilometer's ``trove.instance.exists``: each
  audit counts ``audit_period_ending - audit_period_beginning``, whole, in the hour in which its
  period ends (its last microsecond), so a sum over any set of hours equals Ceilometer's.

Windows and corrections
-----------------------
Hour ``[h, h+1)`` closes once ``h + 1 + allowed_lateness <= watermark``; ``advance`` then emits
its records (version 1). A fact that changes a closed hour re-emits each changed record as
``version + 1`` of the same record id (a record whose usage vanished is re-emitted with
quantity 0). Record id = uuid5 over (tenant, resource, meter, window start[, flavor]).
Hours older than ``emitted_through - correction_retention`` are frozen: facts about them only
shape later hours (a delete older than that stops accrual from the frozen boundary on), audits
ending in them are dropped, and a fact that old does not bring a forgotten resource back.

Verification (StackTach's usage audit)
--------------------------------------
When the hour in which an exists audit's period ends closes (or at once, for an audit that
arrives after that), ``verify_exists`` compares the seconds the lifecycle facts give within the
audit period with the seconds the audit states (its period, clamped to the audit's own
``launched_at`` and ``deleted_at``: Trove audits a fresh instance for the whole interval).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NamedTuple

from trovemeter.ids import replacer, uuid5
from trovemeter.model import (
    DiscrepancyCause,
    MeterType,
    Notification,
    Phase,
    ResourceType,
    UsageDiscrepancy,
    UsageRecord,
)
from trovemeter.payload_values import as_float, as_text, as_utc, first_present

if TYPE_CHECKING:
    from trovemeter.settings import WorkerSettings

US_PER_SECOND = 1_000_000
HOUR_US = 3600 * US_PER_SECOND
# A dbaas resize end and Trove's trove.instance.modify_* report the same resize moments apart.
SAME_CHANGE_WINDOW_US = 15 * 60 * US_PER_SECOND
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)  # built once: to_us runs ~8 times per audit
# Record and discrepancy ids are uuid5 names under these namespaces.
USAGE_ID_NAMESPACE = uuid.UUID("5b0a3f0e-2d4c-4e59-9a57-1f4c1f1b6e01")
DISCREPANCY_ID_NAMESPACE = uuid.UUID("5b0a3f0e-2d4c-4e59-9a57-1f4c1f1b6e02")

INSTANCE_SECONDS = "instance.seconds"
VOLUME_GB_SECONDS = "volume.gb_seconds"
BACKUP_GB_SECONDS = "backup.gb_seconds"
EXISTS_SECONDS = "instance.exists.seconds"
# meter -> (Ceilometer type, unit)
METERS: Mapping[str, tuple[MeterType, str]] = {
    INSTANCE_SECONDS: (MeterType.DELTA, "s"),
    VOLUME_GB_SECONDS: (MeterType.DELTA, "GB*s"),
    BACKUP_GB_SECONDS: (MeterType.DELTA, "GB*s"),
    EXISTS_SECONDS: (MeterType.CUMULATIVE, "s"),
}
METERED_TYPES = frozenset({ResourceType.INSTANCE, ResourceType.BACKUP})

# `_with_facts` results: the facts may change any hour / changed, but no hour's usage.
_EVERY_HOUR = -(2**62)
_NO_HOUR = 2**62
# Source ranks: lower wins.
_END_EVENT = 0  # a family-1 or design-note `.end`
_USAGE_EVENT = 1  # a family-2 trove.instance.* usage notification, or a backup delete's size


@dataclass(frozen=True, slots=True)
class AccrualPolicy:
    """The knobs of accrual and verification."""

    allowed_lateness: timedelta = timedelta(minutes=10)
    # How long closed hours stay correctable; also bounds the per-resource state.
    correction_retention: timedelta = timedelta(hours=6)
    exists_tolerance: timedelta = timedelta(seconds=60)

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> AccrualPolicy:
        return cls(timedelta(seconds=settings.usage_allowed_lateness_seconds),
                   timedelta(hours=settings.usage_correction_retention_hours),
                   timedelta(seconds=settings.usage_exists_tolerance_seconds))

    # Derived in microseconds once (read several times per notification).
    lateness_us: int = field(init=False, repr=False, compare=False)
    retention_us: int = field(init=False, repr=False, compare=False)
    tolerance_us: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.allowed_lateness < timedelta(0) or self.exists_tolerance < timedelta(0):
            raise ValueError("allowed_lateness and exists_tolerance must not be negative")
        if self.correction_retention < timedelta(hours=1):
            raise ValueError("correction_retention must be at least one hour")
        derived = {
            "lateness_us": self.allowed_lateness // timedelta(microseconds=1),
            # Whole hours, so that the frozen boundary is an hour boundary.
            "retention_us": self.correction_retention // timedelta(hours=1) * HOUR_US,
            "tolerance_us": self.exists_tolerance // timedelta(microseconds=1),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


class Claim(NamedTuple):
    """A report that the resource started or ended at ``at_us``."""

    rank: int
    at_us: int
    message_id: str


class Change(NamedTuple):
    """A flavor id or size (GB, decimal text) in force from ``at_us``; None: from the start."""

    at_us: int | None
    rank: int
    value: str
    message_id: str


class Audit(NamedTuple):
    """One trove.instance.exists: the instance lived in [begin_us, end_us) with ``flavor_id``."""

    end_us: int
    begin_us: int
    flavor_id: str | None
    message_id: str

    @property
    def window_start(self) -> int:
        return _hour_floor(self.end_us - 1)


@dataclass(frozen=True, slots=True)
class MeteredResource:
    """The billing facts of one instance or backup, and what was emitted for it. Immutable:
    ``apply``/``advance`` return a new object when anything changed."""

    resource_type: ResourceType
    resource_id: str
    tenant_id: str | None = None
    user_id: str | None = None
    started: Claim | None = None  # instance launched / backup completed
    ended: Claim | None = None  # deleted
    flavors: tuple[Change, ...] = ()  # instances only
    sizes: tuple[Change, ...] = ()  # volume GB of an instance, size GB of a backup
    flavor_names: tuple[tuple[str, str], ...] = ()  # (flavor id, name), sorted
    audits: tuple[Audit, ...] = ()  # sorted
    # What the audits say about the launch and the delete (Trove's `launched_at`, and a
    # `deleted_at` some exists payloads carry): the earliest of each, for verification.
    audited_launch_us: int | None = None
    audited_delete_us: int | None = None
    # Every hour starting before this has been emitted; None: nothing emitted yet.
    emitted_through: int | None = None
    # Version of records corrected at least once (absent: version 1 if emitted), by RecordKey.
    versions: tuple[tuple[RecordKey, int], ...] = ()


_replace_state = replacer(MeteredResource)


class RecordKey(NamedTuple):
    tenant_id: str
    meter: str
    window_start: int
    flavor_id: str  # "" for meters not split by flavor


class UsageFields(NamedTuple):
    """A usage record as its field values in order, ``resource_metadata`` left out (empty):
    ``UsageRecord(*fields)`` is the record, ``codec.usage_encoder()(fields)`` its bytes. What
    ``advance_fields`` gives: the worker's sweep only encodes and totals its records (~3 per
    resource and hour), and building each (~1.8 us) cost two thirds of encoding it."""

    record_id: str
    version: int
    tenant_id: str
    resource_type: ResourceType
    resource_id: str
    meter: str
    meter_type: MeterType
    unit: str
    quantity: float
    window_start: datetime
    window_end: datetime
    derived_from: list[str]
    user_id: str | None
    flavor_id: str | None
    flavor_name: str | None
    size_gb: float | None


_new_fields = functools.partial(tuple.__new__, UsageFields)  # NamedTuple's __new__, no call


class Step(NamedTuple):
    """What ``apply`` and ``advance`` return (``advance_fields``: records as ``UsageFields``)."""

    state: MeteredResource | None  # None: finished, delete the table key
    records: tuple[UsageRecord, ...] | tuple[UsageFields, ...] = ()
    discrepancies: tuple[UsageDiscrepancy, ...] = ()


class _Usage(NamedTuple):
    """A record's content before it gets a version (a tuple: built ~3 times per resource and
    hour, a third of a frozen dataclass's cost)."""

    quantity: Fraction
    user_id: str | None
    flavor_name: str | None
    size_gb: str | None
    derived_from: tuple[str, ...]


# ------------------------------------------------------------------------------ public API


def apply(state: MeteredResource | None, notification: Notification, watermark: datetime,
          policy: AccrualPolicy) -> Step:
    """Add the facts of ``notification`` to ``state`` (None: no state yet), re-emit the closed
    hours they change, then ``advance`` to ``watermark``. A notification without billing facts
    (starts, errors, restarts, clusters, ...) leaves the state as it is."""
    if notification.resource_type not in METERED_TYPES or not notification.resource_id:
        return Step(state)
    if state is not None and (state.resource_type is not notification.resource_type
                              or state.resource_id != notification.resource_id):
        raise ValueError(f"notification for {notification.resource_type.value} "
                         f"{notification.resource_id} applied to {state.resource_id}")
    watermark_us = to_us(watermark)
    if state is None:
        # A fact older than the correction retention must not bring back a forgotten resource.
        frozen_before = _closed_through(watermark_us, policy) - policy.retention_us
        if _fact_time(notification) < frozen_before:
            return Step(None)
        before = MeteredResource(notification.resource_type, notification.resource_id)
    else:
        before = state
    after, affected_from = _with_facts(before, notification, policy)
    if affected_from is None:
        return Step(state)
    after, corrected = _corrections(before, after, affected_from, policy)
    discrepancies = _late_audit_discrepancies(before, after, policy)
    advanced = advance(after, watermark, policy)
    return Step(advanced.state, corrected + advanced.records,
                discrepancies + advanced.discrepancies)


def advance(state: MeteredResource, watermark: datetime, policy: AccrualPolicy) -> Step:
    """Emit every hour that closed since the last call (hours without events included), verify
    the audits ending in them, and forget what fell out of the correction retention."""
    return _advance(state, watermark, policy, _record)


def advance_fields(state: MeteredResource, watermark: datetime, policy: AccrualPolicy) -> Step:
    """``advance`` with each record as its ``UsageFields`` (``UsageRecord(*fields)`` is the
    record ``advance`` gives)."""
    return _advance(state, watermark, policy, _record_fields)


def _advance(state: MeteredResource, watermark: datetime, policy: AccrualPolicy,
             make: Callable[[MeteredResource, RecordKey, _Usage, int], Any]) -> Step:
    closed_through = _closed_through(to_us(watermark), policy)
    emitted_through = state.emitted_through
    if emitted_through is not None and closed_through <= emitted_through:
        return Step(state)
    # A new resource starts within the retention; a known one resumes where it stopped.
    first = closed_through - policy.retention_us if emitted_through is None else emitted_through
    records: list[Any] = []
    discrepancies: list[UsageDiscrepancy] = []
    # A sweep closes one hour: trying it costs less than finding the hours with usage, and an
    # hour without any gives no record.
    windows = (first,) if closed_through - first == HOUR_US \
        else _windows_with_usage(state, first, closed_through)
    for window_start in windows:
        for key, usage in _window_usage(state, window_start).items():
            records.append(make(state, key, usage, 1))
        for audit in state.audits:
            if audit.window_start == window_start:
                found = _verify(state, audit, policy)
                if found is not None:
                    discrepancies.append(found)
    advanced = _forget_frozen(state, closed_through, policy)
    return Step(advanced, tuple(records), tuple(discrepancies))


def swept_hour_fields(row: list[Any], swept_through: int | None, closed_through: int,
                      policy: AccrualPolicy) -> tuple[UsageFields, ...] | None:
    """The records ``advance_fields`` gives for ``from_row(row, swept_through, policy)`` at a
    watermark that closes every hour before ``closed_through``, read straight off the row, for
    the sweep's common state: a resource that started and has not ended, owes exactly the hour
    before ``closed_through``, and whose audits ending in that hour agree with its lifecycle
    (no discrepancy). Such a state stays (it is still accruing) and ``advance`` only moves its
    ``emitted_through``. None for every other state: the caller takes ``advance_fields``. The
    worker's hourly sweep reads every state of a partition, and ~40% of its work went to
    building objects this case does not need; a test compares both ways on random states."""
    size = len(row)
    if size < 5 or size > len(_ROW_FIELDS):
        return None
    start = row[4]
    if start is None or (size > 5 and row[5] is not None):
        return None  # not started, or ended: it may finish (the general path drops it)
    through = row[12] if size > 12 else None
    if swept_through is not None and (through is None or through < swept_through):
        through = swept_through
    window = closed_through - HOUR_US
    if through != window:
        return None
    start_at, start_id = start[1], start[2]
    flavors = row[6] if size > 6 else None
    audits = row[9] if size > 9 else None
    audited = [a for a in audits if 0 < a[0] - window <= HOUR_US] if audits else None
    if audited:
        launch = row[10] if size > 10 else None
        delete = row[11] if size > 11 else None
        for audit in audited:
            if not _row_audit_agrees(audit, start_at, flavors, launch, delete, policy):
                return None
    resource_type = _RESOURCE_TYPES[row[0]]
    resource_id, user = row[1], row[3]
    tenant = row[2] or ""
    fields: list[UsageFields] = []
    low = start_at if start_at > window else window
    if low < closed_through:  # alive in the hour: ``_pieced_usage``
        if resource_type is ResourceType.INSTANCE:
            names = row[8] if size > 8 else None
            per_flavor: dict[str, tuple[int, set[str]]] = {}
            for piece_from, piece_to, value, message_id in _row_pieces(
                    flavors, low, closed_through, start_id):
                flavor_id = value or ""
                micros, messages = per_flavor.get(flavor_id, (0, {start_id}))
                if message_id is not None:
                    messages = messages | {message_id}
                per_flavor[flavor_id] = (micros + piece_to - piece_from, messages)
            for flavor_id, (micros, messages) in per_flavor.items():
                fields.append(_usage_fields(
                    RecordKey(tenant, INSTANCE_SECONDS, window, flavor_id), resource_type,
                    resource_id, 1, micros / US_PER_SECOND, sorted(messages), user,
                    flavor_id or None, names.get(flavor_id) if names else None, None))
            meter = VOLUME_GB_SECONDS
        else:
            meter = BACKUP_GB_SECONDS
        gb_micros: int | Fraction = 0
        last_size: str | None = None
        size_messages = {start_id}
        for piece_from, piece_to, value, message_id in _row_pieces(
                row[7] if size > 7 else None, low, closed_through, start_id):
            if value is not None and message_id is not None:
                gb = _size(value)
                span = piece_to - piece_from
                gb_micros += gb.numerator * span if gb.denominator == 1 else gb * span
                last_size = value
                size_messages.add(message_id)
        if gb_micros:
            fields.append(_usage_fields(
                RecordKey(tenant, meter, window, ""), resource_type, resource_id, 1,
                gb_micros / US_PER_SECOND if type(gb_micros) is int else float(
                    Fraction(gb_micros, US_PER_SECOND)),
                sorted(size_messages), user, None, None,
                None if last_size is None else float(_size(last_size))))
    if audited:
        micros = sum(a[0] - a[1] for a in audited)
        ids = [start_id if a[3] == _SAME_AS_START else a[3] for a in audited]
        fields.append(_usage_fields(
            RecordKey(tenant, EXISTS_SECONDS, window, ""), resource_type, resource_id, 1,
            micros / US_PER_SECOND, ids if len(ids) == 1 else sorted(ids), user, None, None,
            None))
    return tuple(fields)


def _row_pieces(changes: list[list[Any]] | None, from_us: int, to_us: int,
                start_id: str) -> list[tuple[int, int, str | None, str | None]]:
    """``_pieces`` over a row's changes (``[at_us, rank, value, message id]``, 0: the start's
    message id)."""
    value: str | None = None
    message: str | None = None
    pieces: list[tuple[int, int, str | None, str | None]] = []
    start = from_us
    for at, _, new_value, new_message in changes or ():
        if at is None or at <= from_us:
            value, message = new_value, new_message
        elif at < to_us:
            if at > start:
                pieces.append((start, at, value, start_id if message == _SAME_AS_START
                               else message))
                start = at
            value, message = new_value, new_message
    pieces.append((start, to_us, value, start_id if message == _SAME_AS_START else message))
    return pieces


def _row_audit_agrees(audit: list[Any], start_at: int, flavors: list[list[Any]] | None,
                      launch: int | None, delete: int | None, policy: AccrualPolicy) -> bool:
    """``_verify`` finds nothing for a row's audit (``[end_us, begin_us, flavor id, message
    id]``) of a resource that started at ``start_at`` and has not ended."""
    end, begin, audit_flavor = audit[0], audit[1], audit[2]
    audited_from = max(begin, launch or begin)
    audited_to = min(end, delete or end)
    audited = max(0, audited_to - audited_from)
    low = max(begin, start_at)
    if low >= end:
        lifecycle, lifecycle_flavor = 0, None
    else:
        lifecycle = end - low
        lifecycle_flavor = None  # ``_pieces(flavors, low, end)[-1].value``
        for change in flavors or ():
            at = change[0]
            if at is None or at < end:
                lifecycle_flavor = change[2]
    if audit_flavor is not None and lifecycle_flavor is not None and \
            audit_flavor != lifecycle_flavor:
        return False
    return abs(audited - lifecycle) <= policy.tolerance_us


def _usage_fields(key: RecordKey, resource_type: ResourceType, resource_id: str,
                  version: int, quantity: float, derived_from: list[str], user_id: str | None,
                  flavor_id: str | None, flavor_name: str | None,
                  size_gb: float | None) -> UsageFields:
    """A record's field values from what ``_record_fields`` and ``swept_hour_fields`` compute:
    the meter's type and unit, the window's datetimes and the record id added. Positional, in
    the fields' order: ~3 records per resource and hour."""
    meter = key.meter
    meter_type, unit = METERS[meter]
    window_start, window_end, _ = _window(key.window_start)
    return _new_fields((
        record_id(key, resource_type, resource_id), version, key.tenant_id, resource_type,
        resource_id, meter, meter_type, unit, quantity, window_start, window_end, derived_from,
        user_id, flavor_id, flavor_name, size_gb))


def audited_row(row: list[Any], notification: Notification, swept_through: int | None,
                closed_through: int, policy: AccrualPolicy) -> list[Any] | None:
    """For a trove.instance.exists audit: ``to_row(apply(from_row(row, swept_through, policy),
    notification, <a watermark closing closed_through>, policy).state)`` read straight off the
    row, when the audit adds only itself and what it says of the launch and the delete: its
    hour not emitted yet and no hour left to emit, the flavor's name, tenant and owner as the
    row has them. ``row`` itself when the state does not change (and so is not written), else
    the new row. None for any other case: the caller takes ``apply``. Every live instance gets
    an audit an hour; building its state around that cost most of the audit's work."""
    audit = _audit_of(notification)
    size = len(row)
    if audit is None or size < 2 or size > len(_ROW_FIELDS) or row[0] != "instance" or \
            row[1] != notification.resource_id:
        return None
    values = [*row, *_ROW_EMPTY[size:]]
    (_, _, tenant_id, user_id, start, _, _, _, names, audits, launch, delete, through,
     versions) = values
    if swept_through is not None and (through is None or through < swept_through):
        # ``from_row``'s lazy forgetting, as ``to_row`` would write it.
        through, audits, versions = _row_swept_to(swept_through, audits, versions, policy)
    window_start = audit.window_start
    if through is None or closed_through > through or window_start < through:
        return None  # hours to emit, or a late audit to verify and correct: ``apply``
    tenant, user = notification.tenant_id, notification.user_id
    if (tenant and (tenant_id is None or tenant < tenant_id)) or (
            user and notification.phase is Phase.POINT and (user_id is None or user < user_id)):
        return None  # a new tenant or owner: every hour's records change
    name, named_id = as_text(notification.payload.get("instance_type")), audit.flavor_id
    if name is not None and named_id is not None and (
            named_id not in names or name > names[named_id]):
        return None  # a flavor's name (or a greater one): every hour's records change
    start_id = start[2] if start else None
    changed = False
    entry = [audit.end_us, audit.begin_us, audit.flavor_id,
             _SAME_AS_START if audit.message_id == start_id else audit.message_id]
    if entry not in audits:  # not frozen either: the audit's hour is not before ``through``
        key = _audit_order(audit)
        position = len(audits)
        while position and _audit_order(Audit(*audits[position - 1][:3], start_id if audits[
                position - 1][3] == _SAME_AS_START else audits[position - 1][3])) > key:
            position -= 1
        audits = [*audits[:position], entry, *audits[position:]]
        changed = True
    payload = notification.payload
    reported = _payload_us(payload, "launched_at")
    if reported is not None and (launch is None or reported < launch):
        launch, changed = reported, True
    reported = _payload_us(payload, "deleted_at")
    if reported is not None and (delete is None or reported < delete):
        delete, changed = reported, True
    if not changed:
        return row
    new = [*values[:9], audits, launch, delete, through, versions]
    while new[-1] in (None, [], {}):
        new.pop()
    return new


# ``to_row``'s value of each position when the state has nothing there.
_ROW_EMPTY: tuple[Any, ...] = (None, None, None, None, None, None, [], [], {}, [], None, None,
                               None, [])


def verify_exists(state: MeteredResource | None, exists: Notification,
                  policy: AccrualPolicy) -> UsageDiscrepancy | None:
    """Compare an exists audit with the lifecycle of its instance (None: no lifecycle known).
    ``apply``/``advance`` call this for every audit once its hour has closed."""
    audit = _audit_of(exists)
    if audit is None or exists.resource_id is None:
        raise ValueError("not a trove.instance.exists audit with a period and an instance id")
    base = state or MeteredResource(ResourceType.INSTANCE, exists.resource_id)
    with_audit, _ = _with_facts(base, exists, policy)
    return _verify(with_audit, audit, policy)


# ------------------------------------------------------------------------ time helpers


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    return (moment - _EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _hour_floor(us: int) -> int:
    return us - us % HOUR_US


def _closed_through(watermark_us: int, policy: AccrualPolicy) -> int:
    """Every hour starting before this has closed at ``watermark_us``."""
    return _hour_floor(watermark_us - policy.lateness_us)


def _frozen_before(state: MeteredResource, policy: AccrualPolicy) -> int | None:
    if state.emitted_through is None:
        return None
    return state.emitted_through - policy.retention_us


# ---------------------------------------------------------------------- facts from events


def _fact_time(notification: Notification) -> int:
    """The newest moment a notification's facts are about (for the retention rule)."""
    audit = _audit_of(notification)
    return audit.end_us if audit is not None else to_us(notification.occurred_at)


def _payload_us(payload: Mapping[str, Any], name: str) -> int | None:
    moment = as_utc(payload.get(name))
    return None if moment is None else to_us(moment)


def _size_text(value: Any) -> str | None:
    """A size as exact decimal text ("5", "0.14"), or None when absent or not a size."""
    number = as_float(value)
    if number is None or number < 0:
        return None
    return str(int(number)) if number.is_integer() else repr(number)


def _audit_of(notification: Notification) -> Audit | None:
    if notification.operation != "exists" or notification.resource_type is not ResourceType.INSTANCE:
        return None
    payload = notification.payload
    begin = _payload_us(payload, "audit_period_beginning")
    end = _payload_us(payload, "audit_period_ending")
    if begin is None or end is None or end <= begin:
        return None
    return Audit(end, begin, as_text(payload.get("instance_type_id")), notification.message_id)


def _with_facts(state: MeteredResource, notification: Notification,
                policy: AccrualPolicy) -> tuple[MeteredResource, int | None]:
    """``state`` with the notification's facts, and the earliest moment whose usage they may
    change (None: nothing changed; ``_EVERY_HOUR``: possibly every hour; ``_NO_HOUR``: changed,
    but no usage)."""
    audit = _audit_of(notification)
    if audit is not None:
        return _with_audit(state, notification, audit, policy)
    payload = notification.payload
    occurred = to_us(notification.occurred_at)
    message_id = notification.message_id
    is_end = notification.phase is Phase.END
    is_usage = notification.phase is Phase.POINT
    operation = notification.operation
    changes: dict[str, Any] = {}
    affected: list[int] = []
    if notification.resource_type is ResourceType.INSTANCE:
        relevant = ((is_end or is_usage) and operation in (
            "create", "resize_flavor", "resize_volume", "delete"))
    else:
        relevant = is_end and operation in ("create", "delete")
    if not relevant:
        return state, None
    # Create events and usage notifications name the owner; other events name whoever acted.
    names_owner = operation == "create" or is_usage

    def claim(attribute: str, new: Claim) -> None:
        old = getattr(state, attribute)
        if old is None or new < old:
            changes[attribute] = new
            affected.append(new.at_us if old is None else min(old.at_us, new.at_us))

    def change(attribute: str, new: Change) -> None:
        existing: tuple[Change, ...] = getattr(state, attribute)
        merged = _merge_change(existing, new)
        if merged != existing:
            changes[attribute] = merged
            affected.append(_EVERY_HOUR if new.at_us is None else
                            new.at_us - SAME_CHANGE_WINDOW_US)  # its partner's moment, at worst

    flavor_id = as_text(first_present(payload, "new_flavor_id", "instance_type_id", "flavor_id"))
    if notification.resource_type is ResourceType.INSTANCE:
        if operation == "create" and (is_end or is_usage):
            rank = _END_EVENT if is_end else _USAGE_EVENT
            launched = occurred if is_end else (_payload_us(payload, "launched_at") or occurred)
            claim("started", Claim(rank, launched, message_id))
            if flavor_id is not None:
                change("flavors", Change(None, rank, flavor_id, message_id))
            size = _size_text(payload.get("volume_size"))
            if size is not None:
                change("sizes", Change(None, rank, size, message_id))
        elif operation in ("resize_flavor", "resize_volume") and (is_end or is_usage):
            rank = _END_EVENT if is_end else _USAGE_EVENT
            at = occurred if is_end else (_payload_us(payload, "modify_at") or occurred)
            if operation == "resize_flavor" and flavor_id is not None:
                change("flavors", Change(at, rank, flavor_id, message_id))
            size = _size_text(first_present(payload, "new_size", "volume_size"))
            if operation == "resize_volume" and size is not None:
                change("sizes", Change(at, rank, size, message_id))
        elif operation == "delete" and (is_end or is_usage):
            deleted = occurred if is_end else (_payload_us(payload, "deleted_at") or occurred)
            claim("ended", Claim(_END_EVENT if is_end else _USAGE_EVENT, deleted, message_id))
        names = _flavor_names_with(state, payload)
        if names is not None:
            changes["flavor_names"] = names
            affected.append(_EVERY_HOUR)
    else:  # a backup's create or delete end
        size = _size_text(payload.get("size"))
        if operation == "create":
            claim("started", Claim(_END_EVENT, occurred, message_id))
        else:
            claim("ended", Claim(_END_EVENT, occurred, message_id))
        if size is not None:
            rank = _END_EVENT if operation == "create" else _USAGE_EVENT
            change("sizes", Change(None, rank, size, message_id))

    # Tenant and owner: the least id wins, so that conflicting reports resolve identically in
    # any order (they do not conflict in Trove; the record id includes the tenant).
    for attribute, reported in (("tenant_id", notification.tenant_id),
                                ("user_id", notification.user_id if names_owner else None)):
        current = getattr(state, attribute)
        if reported and (current is None or reported < current):
            changes[attribute] = reported
            affected.append(_EVERY_HOUR)
    if not changes:
        return state, None
    return _replace_state(state, **changes), min(affected, default=_NO_HOUR)


def _with_audit(state: MeteredResource, notification: Notification, audit: Audit,
                policy: AccrualPolicy) -> tuple[MeteredResource, int | None]:
    """``_with_facts`` for an exists audit (the hourly burst's event: one per live instance),
    without the lifecycle branches and their closures: the audit, the audited launch and
    delete, the flavor's name, the tenant and owner."""
    payload = notification.payload
    changes: dict[str, Any] = {}
    affected = _NO_HOUR  # the least moment whose usage may change
    if audit not in state.audits and not _frozen(state, audit.window_start, policy):
        changes["audits"] = tuple(sorted((*state.audits, audit), key=_audit_order))
        affected = audit.window_start
    reported = _payload_us(payload, "launched_at")
    if reported is not None and (state.audited_launch_us is None
                                 or reported < state.audited_launch_us):
        changes["audited_launch_us"] = reported  # verification input only: no usage changes
    reported = _payload_us(payload, "deleted_at")
    if reported is not None and (state.audited_delete_us is None
                                 or reported < state.audited_delete_us):
        changes["audited_delete_us"] = reported
    names = _flavor_names_with(state, payload)
    if names is not None:
        changes["flavor_names"] = names
        affected = _EVERY_HOUR
    # An audit is a usage notification: it names the owner (see ``_with_facts``).
    tenant = notification.tenant_id
    if tenant and (state.tenant_id is None or tenant < state.tenant_id):
        changes["tenant_id"] = tenant
        affected = _EVERY_HOUR
    user = notification.user_id if notification.phase is Phase.POINT else None
    if user and (state.user_id is None or user < state.user_id):
        changes["user_id"] = user
        affected = _EVERY_HOUR
    if not changes:
        return state, None
    return _replace_state(state, **changes), affected


def _flavor_names_with(state: MeteredResource,
                       payload: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """``state.flavor_names`` with the flavor name ``payload`` reports, or None when that
    changes nothing. Nova flavors cannot be renamed; should two names meet, the greater one is
    kept."""
    name = as_text(payload.get("instance_type"))
    named_id = as_text(payload.get("instance_type_id"))
    if name is None or named_id is None:
        return None
    names = dict(state.flavor_names)
    if named_id in names and name <= names[named_id]:
        return None
    names[named_id] = name
    return tuple(sorted(names.items()))


def _audit_order(audit: Audit) -> tuple[int, int, str, str]:
    return audit.end_us, audit.begin_us, audit.flavor_id or "", audit.message_id


def _frozen(state: MeteredResource, window_start: int, policy: AccrualPolicy) -> bool:
    frozen_before = _frozen_before(state, policy)
    return frozen_before is not None and window_start < frozen_before


def _merge_change(changes: tuple[Change, ...], new: Change) -> tuple[Change, ...]:
    """``changes`` with ``new``, keeping only the changes that count, so that the state stays
    small and the result is the same in any order:

    - one initial value: the best ranked (then the least value and message id);
    - a rank-1 change is dropped when a rank-0 change to the same value lies within
      ``SAME_CHANGE_WINDOW_US``: both report one resize, and the end's moment counts.
    """
    if new.at_us is None:
        initial = next((c for c in changes if c.at_us is None), None)
        if initial is not None and _initial_order(initial) <= _initial_order(new):
            return changes
        kept = [c for c in changes if c.at_us is not None]
    elif new.rank != _END_EVENT:
        if new in changes or any(_same_change(c, new) for c in changes if c.rank == _END_EVENT):
            return changes
        kept = list(changes)
    else:
        if new in changes:
            return changes
        kept = [c for c in changes if c.rank == _END_EVENT or not _same_change(new, c)]
    return tuple(sorted((*kept, new), key=_change_order))


def _same_change(end: Change, usage: Change) -> bool:
    return (end.at_us is not None and usage.at_us is not None and end.value == usage.value
            and abs(end.at_us - usage.at_us) <= SAME_CHANGE_WINDOW_US)


def _initial_order(change: Change) -> tuple[int, str, str]:
    return change.rank, change.value, change.message_id


def _change_order(change: Change) -> tuple[int, int, str, str]:
    # Initial values first; at equal times rank 0 sorts last, so it is the one in force.
    at = _EVERY_HOUR if change.at_us is None else change.at_us
    return at, -change.rank, change.value, change.message_id


# ------------------------------------------------------------------------- integration


class _Piece(NamedTuple):
    """A value in force over [from_us, to_us), and the message that set it."""

    from_us: int
    to_us: int
    value: str | None
    message_id: str | None


def _pieces(changes: tuple[Change, ...], from_us: int, to_us: int) -> list[_Piece]:
    """Split [from_us, to_us) where the value changes."""
    value: str | None = None
    message: str | None = None
    cuts: list[tuple[int, str, str]] = []
    for change in changes:  # sorted, initial value first (see _merge_change)
        if change.at_us is None or change.at_us <= from_us:
            value, message = change.value, change.message_id
        elif change.at_us < to_us:
            cuts.append((change.at_us, change.value, change.message_id))
    pieces: list[_Piece] = []
    start = from_us
    for at, new_value, new_message in cuts:
        if at > start:
            pieces.append(_Piece(start, at, value, message))
            start = at
        value, message = new_value, new_message
    pieces.append(_Piece(start, to_us, value, message))
    return pieces


def _alive(state: MeteredResource, from_us: int, to_us: int) -> tuple[int, int] | None:
    """The part of [from_us, to_us) between the start and the end facts."""
    if state.started is None:
        return None
    low = max(from_us, state.started.at_us)
    high = to_us if state.ended is None else min(to_us, state.ended.at_us)
    return (low, high) if low < high else None


def _window_usage(state: MeteredResource, window_start: int) -> dict[RecordKey, _Usage]:
    """Every non-zero record of one hour, by key."""
    usage = _one_piece_usage(state, window_start)
    if usage is None:
        usage = _pieced_usage(state, window_start)
    # ``Audit.window_start`` written out: this runs for every audit of every swept state.
    audited = [a for a in state.audits if 0 < a.end_us - window_start <= HOUR_US]
    if audited:
        micros = sum(a.end_us - a.begin_us for a in audited)
        usage[RecordKey(state.tenant_id or "", EXISTS_SECONDS, window_start, "")] = _Usage(
            _HOUR_SECONDS if micros == HOUR_US else Fraction(micros, US_PER_SECOND),
            state.user_id, None, None,
            (audited[0].message_id,) if len(audited) == 1 else
            tuple(sorted(a.message_id for a in audited)))
    return usage


def _pieced_usage(state: MeteredResource, window_start: int) -> dict[RecordKey, _Usage]:
    """The lifecycle records of one hour (every meter but the audits'), integrated piecewise."""
    window_end = window_start + HOUR_US
    tenant = state.tenant_id or ""
    usage: dict[RecordKey, _Usage] = {}
    alive = _alive(state, window_start, window_end)
    if alive is None:
        return usage
    assert state.started is not None
    lifecycle = [state.started.message_id]
    if state.ended is not None and state.ended.at_us < window_end:
        lifecycle.append(state.ended.message_id)
    if state.resource_type is ResourceType.INSTANCE:
        names = dict(state.flavor_names)
        per_flavor: dict[str, tuple[int, set[str]]] = {}
        for piece in _pieces(state.flavors, *alive):
            seconds, messages = per_flavor.get(piece.value or "", (0, set()))
            if piece.message_id is not None:
                messages = messages | {piece.message_id}
            per_flavor[piece.value or ""] = (seconds + piece.to_us - piece.from_us, messages)
        for flavor, (micros, messages) in per_flavor.items():
            usage[RecordKey(tenant, INSTANCE_SECONDS, window_start, flavor)] = _Usage(
                Fraction(micros, US_PER_SECOND), state.user_id, names.get(flavor),
                None, tuple(sorted({*lifecycle, *messages})))
    meter = VOLUME_GB_SECONDS if state.resource_type is ResourceType.INSTANCE \
        else BACKUP_GB_SECONDS
    # GB x microseconds: one division at the end, not per piece; whole sizes summed as ints.
    gb_micros: int | Fraction = 0
    last_size: str | None = None
    size_messages = set(lifecycle)
    for piece in _pieces(state.sizes, *alive):
        if piece.value is not None and piece.message_id is not None:
            size = _size(piece.value)
            span = piece.to_us - piece.from_us
            gb_micros += size.numerator * span if size.denominator == 1 else size * span
            last_size = piece.value
            size_messages.add(piece.message_id)
    if gb_micros:
        usage[RecordKey(tenant, meter, window_start, "")] = _Usage(
            Fraction(gb_micros, US_PER_SECOND), state.user_id, None, last_size,
            tuple(sorted(size_messages)))
    return usage


# ``_in_force``'s answer for a span that a change splits.
_SPLIT = Change(None, -1, "", "")
_HOUR_SECONDS = Fraction(HOUR_US, US_PER_SECOND)


def _one_piece_usage(state: MeteredResource, window_start: int) -> dict[RecordKey, _Usage] | None:
    """``_pieced_usage`` of an hour in which the resource's flavor and size did not change
    while it lived (the common hour: every hour of a sweep but a resize's), without
    integrating; None for any other hour."""
    window_end = window_start + HOUR_US
    alive = _alive(state, window_start, window_end)
    if alive is None:
        return None
    low, high = alive
    sizes = _in_force(state.sizes, low, high)
    if sizes is _SPLIT:
        return None
    started, ended = state.started, state.ended
    assert started is not None
    whole = high - low == HOUR_US
    lifecycle = {started.message_id}
    if ended is not None and ended.at_us < window_end:
        lifecycle.add(ended.message_id)
    tenant = state.tenant_id or ""
    usage: dict[RecordKey, _Usage] = {}
    if state.resource_type is ResourceType.INSTANCE:
        flavor = _in_force(state.flavors, low, high)
        if flavor is _SPLIT:
            return None
        flavor_id = "" if flavor is None else flavor.value
        usage[RecordKey(tenant, INSTANCE_SECONDS, window_start, flavor_id)] = _Usage(
            _HOUR_SECONDS if whole else Fraction(high - low, US_PER_SECOND), state.user_id,
            _flavor_name(state.flavor_names, flavor_id), None,
            _message_ids(lifecycle, flavor))
        meter = VOLUME_GB_SECONDS
    else:
        meter = BACKUP_GB_SECONDS
    size = None if sizes is None else _size(sizes.value)
    if size:  # a size of 0 gives no record, as in _pieced_usage
        assert sizes is not None
        usage[RecordKey(tenant, meter, window_start, "")] = _Usage(
            _size_hour(sizes.value) if whole else Fraction(
                size.numerator * (high - low), size.denominator * US_PER_SECOND),
            state.user_id, None, sizes.value, _message_ids(lifecycle, sizes))
    return usage


def _in_force(changes: tuple[Change, ...], from_us: int, to_us: int) -> Change | None:
    """The change in force over all of [from_us, to_us) (None: no value), ``_SPLIT`` if a
    change falls inside it (``_pieces``' rule: sorted, the last one at or before ``from_us``)."""
    in_force = None
    for change in changes:
        at = change.at_us
        if at is None or at <= from_us:
            in_force = change
        elif at < to_us:
            return _SPLIT
        else:
            break
    return in_force


def _flavor_name(names: tuple[tuple[str, str], ...], flavor_id: str) -> str | None:
    """``dict(names).get(flavor_id)`` without building the dict (names are few)."""
    for named_id, name in names:
        if named_id == flavor_id:
            return name
    return None


def _message_ids(lifecycle: set[str], change: Change | None) -> tuple[str, ...]:
    """The sorted ids of the lifecycle's messages and the change's."""
    if change is None:
        return tuple(sorted(lifecycle))
    return tuple(sorted({*lifecycle, change.message_id}))


def _windows_with_usage(state: MeteredResource, first: int, through: int) -> list[int]:
    """The hours in [first, through) that may hold usage: while alive, and audited hours."""
    hours = {a.window_start for a in state.audits if first <= a.window_start < through}
    if state.started is not None:
        low = max(first, _hour_floor(state.started.at_us))
        high = through if state.ended is None else min(through, state.ended.at_us)
        hours.update(range(low, high, HOUR_US))
    return sorted(hours)


# -------------------------------------------------------------------------- emission


def record_id(key: RecordKey, resource_type: ResourceType, resource_id: str) -> str:
    """Deterministic id of a usage record: the compacted topic's key."""
    name = "|".join((key.tenant_id, resource_type.value, resource_id, key.meter,
                     _window(key.window_start)[2], key.flavor_id))
    return uuid5(USAGE_ID_NAMESPACE, name)


@functools.lru_cache(maxsize=64)
def _window(window_start: int) -> tuple[datetime, datetime, str]:
    """Start, end and the start's ISO text of an hour: the same few hours recur in every record
    of a sweep (100k resources: 300k records of one hour)."""
    start = from_us(window_start)
    return start, from_us(window_start + HOUR_US), start.isoformat()


@functools.lru_cache(maxsize=1024)
def _size(text: str) -> Fraction:
    """A size's decimal text as a fraction (parsed from text: ~4 us; a handful of sizes recur)."""
    return Fraction(text)


@functools.lru_cache(maxsize=1024)
def _size_hour(text: str) -> Fraction:
    """GB-seconds of a size over a whole hour."""
    return _size(text) * (HOUR_US // US_PER_SECOND)


def _record(state: MeteredResource, key: RecordKey, usage: _Usage | None, version: int,
            previous: _Usage | None = None) -> UsageRecord:
    """The record for ``key``; ``usage`` None re-emits ``previous`` with quantity 0."""
    return UsageRecord(*_record_fields(state, key, usage, version, previous))


def _record_fields(state: MeteredResource, key: RecordKey, usage: _Usage | None, version: int,
                   previous: _Usage | None = None) -> UsageFields:
    """``_record``'s field values."""
    content = usage if usage is not None else previous._replace(  # type: ignore[union-attr]
        quantity=Fraction(0))
    quantity, size_gb = content.quantity, content.size_gb
    return _usage_fields(
        key, state.resource_type, state.resource_id, version,
        quantity.numerator / quantity.denominator,  # float(quantity), as Fraction computes it
        list(content.derived_from), content.user_id,
        (key.flavor_id or None) if key.meter == INSTANCE_SECONDS else None,
        content.flavor_name, None if size_gb is None else float(_size(size_gb)))


def _corrections(before: MeteredResource, after: MeteredResource, affected_from: int,
                 policy: AccrualPolicy) -> tuple[MeteredResource, tuple[UsageRecord, ...]]:
    """Re-emit every record of an already emitted hour that the new facts changed."""
    emitted_through = before.emitted_through
    if emitted_through is None or affected_from >= emitted_through:
        return after, ()
    first = max(_hour_floor(affected_from), emitted_through - policy.retention_us)
    versions = dict(before.versions)
    records: list[UsageRecord] = []
    hours = sorted({*_windows_with_usage(before, first, emitted_through),
                    *_windows_with_usage(after, first, emitted_through)})
    for window_start in hours:
        old = _window_usage(before, window_start)
        new = _window_usage(after, window_start)
        for key in sorted(old.keys() | new.keys()):
            if old.get(key) == new.get(key):
                continue
            emitted = versions.get(key, 1 if key in old else 0)
            versions[key] = emitted + 1
            records.append(_record(after, key, new.get(key), emitted + 1, old.get(key)))
    kept = tuple(sorted((k, v) for k, v in versions.items() if v > 1))
    return _replace_state(after, versions=kept), tuple(records)


def _late_audit_discrepancies(before: MeteredResource, after: MeteredResource,
                              policy: AccrualPolicy) -> tuple[UsageDiscrepancy, ...]:
    """Audits that arrived after their hour closed are verified at once."""
    emitted_through = before.emitted_through
    if emitted_through is None or after.audits is before.audits:
        return ()
    # ``after.audits`` is sorted by ``_audit_order``; the hour test first, as late audits are rare.
    found = (_verify(after, audit, policy) for audit in after.audits
             if audit.window_start < emitted_through and audit not in before.audits)
    return tuple(d for d in found if d is not None)


def swept_to(state: MeteredResource, through: int | None,
             policy: AccrualPolicy) -> MeteredResource:
    """``state`` as ``advance`` leaves it once every hour before ``through`` is emitted
    (``through`` None or not past the state's own: ``state`` itself): for a state the caller
    knows to be emitted further than it says (the worker's sweep mark). Its records are not
    emitted here, and a finished state is not dropped: ``advance`` does both."""
    if through is None or (state.emitted_through is not None
                           and through <= state.emitted_through):
        return state
    return _emitted_through(state, through, policy)


def _emitted_through(state: MeteredResource, through: int,
                     policy: AccrualPolicy) -> MeteredResource:
    """``state`` emitted through ``through``, without the audits and versions of the hours
    that froze (inert: no hour before the frozen boundary is emitted, verified or corrected
    again)."""
    frozen_before = through - policy.retention_us
    audits = tuple(a for a in state.audits if a.window_start >= frozen_before)
    versions = tuple(kv for kv in state.versions if kv[0].window_start >= frozen_before)
    # One copy of the state, whatever changed (~2 us a copy).
    if audits != state.audits or versions != state.versions:
        return _replace_state(state, emitted_through=through, audits=audits, versions=versions)
    return _replace_state(state, emitted_through=through)


def _forget_frozen(state: MeteredResource, emitted_through: int,
                   policy: AccrualPolicy) -> MeteredResource | None:
    """``state`` emitted through ``emitted_through``, without the audits and versions of the
    hours that froze; None once nothing can change any more."""
    frozen_before = emitted_through - policy.retention_us
    state = _emitted_through(state, emitted_through, policy)
    if state.started is not None and state.ended is None:
        return state  # still accruing
    fact_times = [c.at_us for c in (state.started, state.ended) if c is not None]
    fact_times += [c.at_us for c in (*state.flavors, *state.sizes) if c.at_us is not None]
    if state.audits or any(at >= frozen_before for at in fact_times):
        return state  # facts that a late create or delete may still need
    return None


# ------------------------------------------------------------------------- verification


def _verify(state: MeteredResource, audit: Audit, policy: AccrualPolicy) -> UsageDiscrepancy | None:
    # What the audit itself says the instance lived within its period.
    audited_from = max(audit.begin_us, state.audited_launch_us or audit.begin_us)
    audited_to = min(audit.end_us, state.audited_delete_us or audit.end_us)
    audited = max(0, audited_to - audited_from)
    alive = _alive(state, audit.begin_us, audit.end_us)
    lifecycle = 0 if alive is None else alive[1] - alive[0]
    lifecycle_flavor = None
    if alive is not None and alive[1] == audit.end_us:  # alive when the audit was taken
        lifecycle_flavor = _pieces(state.flavors, *alive)[-1].value
    flavor_differs = (audit.flavor_id is not None and lifecycle_flavor is not None
                      and audit.flavor_id != lifecycle_flavor)
    difference = audited - lifecycle
    if abs(difference) <= policy.tolerance_us and not flavor_differs:
        return None
    started = state.started.at_us if state.started is not None else None
    ended = state.ended.at_us if state.ended is not None else None
    if abs(difference) <= policy.tolerance_us:
        cause = DiscrepancyCause.FLAVOR_MISMATCH
    elif difference > 0 and (started is None or started > audited_from + policy.tolerance_us):
        cause = DiscrepancyCause.MISSED_CREATE
    elif difference > 0 and ended is not None and ended < audited_to:
        cause = DiscrepancyCause.UNEXPECTED_DELETE
    elif difference < 0 and state.audited_delete_us is not None and (
            ended is None or ended > state.audited_delete_us + policy.tolerance_us):
        cause = DiscrepancyCause.MISSED_DELETE
    else:
        cause = DiscrepancyCause.UNEXPLAINED
    return UsageDiscrepancy(
        discrepancy_id=uuid5(DISCREPANCY_ID_NAMESPACE, "|".join(
            (state.resource_id, str(audit.begin_us), str(audit.end_us)))),
        tenant_id=state.tenant_id or "",
        resource_id=state.resource_id,
        audit_message_id=audit.message_id,
        audit_period_beginning=from_us(audit.begin_us),
        audit_period_ending=from_us(audit.end_us),
        audited_seconds=audited / US_PER_SECOND,
        lifecycle_seconds=lifecycle / US_PER_SECOND,
        difference_seconds=difference / US_PER_SECOND,
        likely_cause=cause,
        audited_flavor_id=audit.flavor_id,
        lifecycle_flavor_id=lifecycle_flavor,
        user_id=state.user_id,
    )


# ------------------------------------------------------------------------ serialisation


def to_dict(state: MeteredResource) -> dict[str, Any]:
    """A plain, JSON-compatible dict; short keys, because a worker holds one per resource."""
    data: dict[str, Any] = {"t": state.resource_type.value, "id": state.resource_id}
    optional: dict[str, Any] = {
        "tenant": state.tenant_id,
        "user": state.user_id,
        "start": list(state.started) if state.started else None,
        "end": list(state.ended) if state.ended else None,
        "flavors": [list(c) for c in state.flavors],
        "sizes": [list(c) for c in state.sizes],
        "names": dict(state.flavor_names),
        "audits": [list(a) for a in state.audits],
        "alaunch": state.audited_launch_us,
        "adelete": state.audited_delete_us,
        "through": state.emitted_through,
        "versions": [[*k, v] for k, v in state.versions],
    }
    data.update((k, v) for k, v in optional.items() if v not in (None, [], {}))
    return data


def from_dict(data: Mapping[str, Any]) -> MeteredResource:
    def claim(value: list[Any] | None) -> Claim | None:
        return None if value is None else Claim(*value)

    return MeteredResource(
        resource_type=ResourceType(data["t"]),
        resource_id=data["id"],
        tenant_id=data.get("tenant"),
        user_id=data.get("user"),
        started=claim(data.get("start")),
        ended=claim(data.get("end")),
        flavors=tuple(Change(*c) for c in data.get("flavors", ())),
        sizes=tuple(Change(*c) for c in data.get("sizes", ())),
        flavor_names=tuple(sorted(data.get("names", {}).items())),
        audits=tuple(Audit(*a) for a in data.get("audits", ())),
        audited_launch_us=data.get("alaunch"),
        audited_delete_us=data.get("adelete"),
        emitted_through=data.get("through"),
        versions=tuple((RecordKey(*kv[:4]), kv[4]) for kv in data.get("versions", ())),
    )


# The row form: ``to_row``'s positions. A message id that is the start claim's (a create's
# facts: launch, initial flavor and size all come from one message) is written as 0.
_ROW_FIELDS = ("resource_type", "resource_id", "tenant_id", "user_id", "started", "ended",
               "flavors", "sizes", "flavor_names", "audits", "audited_launch_us",
               "audited_delete_us", "emitted_through", "versions")
_SAME_AS_START = 0
_RESOURCE_TYPES = {t.value: t for t in ResourceType}  # a lookup: an Enum call costs ~0.4 us


def to_row(state: MeteredResource) -> list[Any]:
    """A JSON-compatible list: ``to_dict`` without field names, the start's message id once,
    trailing empty positions left out (a live instance: ~270 B of JSON against ~380 B)."""
    start_id = state.started.message_id if state.started is not None else None

    def mid(message_id: str) -> str | int:
        return _SAME_AS_START if message_id == start_id else message_id

    row: list[Any] = [
        state.resource_type.value,
        state.resource_id,
        state.tenant_id,
        state.user_id,
        list(state.started) if state.started else None,
        [*state.ended[:2], mid(state.ended.message_id)] if state.ended else None,
        [[*c[:3], mid(c.message_id)] for c in state.flavors],
        [[*c[:3], mid(c.message_id)] for c in state.sizes],
        dict(state.flavor_names),
        [[*a[:3], mid(a.message_id)] for a in state.audits],
        state.audited_launch_us,
        state.audited_delete_us,
        state.emitted_through,
        [[*k, v] for k, v in state.versions],
    ]
    while row[-1] in (None, [], {}):
        row.pop()
    return row


def from_row(row: list[Any], swept_through: int | None = None,
             policy: AccrualPolicy | None = None) -> MeteredResource:
    """``to_row``'s state; with ``swept_through``: ``swept_to(state, swept_through, policy)``
    without a second copy (the worker reads every state so)."""
    values = row + [None] * (len(_ROW_FIELDS) - len(row))
    (kind, resource_id, tenant, user, start, end, flavors, sizes, names, audits, launch,
     delete, through, versions) = values
    if swept_through is not None and (through is None or through < swept_through):
        assert policy is not None, "swept_through needs the policy (its retention)"
        through, audits, versions = _row_swept_to(swept_through, audits, versions, policy)
    start_id = start[2] if start else None
    same = _SAME_AS_START
    # The message ids written out rather than through a helper: every sweep loads every state.
    return MeteredResource(
        _RESOURCE_TYPES[kind], resource_id, tenant, user,
        Claim(*start) if start else None,
        Claim(end[0], end[1], start_id if end[2] == same else end[2]) if end else None,
        tuple([Change(c[0], c[1], c[2], start_id if c[3] == same else c[3])
               for c in flavors or ()]),
        tuple([Change(c[0], c[1], c[2], start_id if c[3] == same else c[3])
               for c in sizes or ()]),
        tuple(sorted(names.items())) if names else (),
        tuple([Audit(a[0], a[1], a[2], start_id if a[3] == same else a[3])
               for a in audits or ()]),
        launch, delete, through,
        tuple([(RecordKey(*kv[:4]), kv[4]) for kv in versions or ()]),
    )


def _row_swept_to(swept_through: int, audits: list[list[Any]] | None,
                  versions: list[list[Any]] | None,
                  policy: AccrualPolicy) -> tuple[int, Any, Any]:
    """A row's ``emitted_through``, audits and versions as ``swept_to(state, swept_through)``
    leaves them (``swept_through`` past the row's own): what froze is dropped."""
    frozen_before = swept_through - policy.retention_us
    # ``Audit.window_start`` and ``RecordKey.window_start`` of the row's lists.
    if audits:
        audits = [a for a in audits if _hour_floor(a[0] - 1) >= frozen_before]
    if versions:
        versions = [kv for kv in versions if kv[2] >= frozen_before]
    return swept_through, audits, versions


def from_json_value(data: Any, swept_through: int | None = None,
                    policy: AccrualPolicy | None = None) -> MeteredResource:
    """A state as JSON gave it: the row form, or ``to_dict``'s (written before the row form);
    ``swept_through``: as ``swept_to`` gives it."""
    if isinstance(data, list):
        return from_row(data, swept_through, policy)
    state = from_dict(data)
    return state if swept_through is None else swept_to(state, swept_through, policy)


def encode_state(state: MeteredResource) -> bytes:
    """Compact JSON of the row form: the recommended table value (far smaller in memory than
    the decoded state)."""
    return json.dumps(to_row(state), separators=(",", ":")).encode()


def decode_state(data: bytes) -> MeteredResource:
    """``encode_state``'s bytes, or the older ``to_dict`` JSON."""
    return from_json_value(json.loads(data))


def latest_versions(records: Iterable[UsageRecord]) -> dict[str, UsageRecord]:
    """The highest version of each record id: what a consumer of trove.usage keeps."""
    latest: dict[str, UsageRecord] = {}
    for record in records:
        kept = latest.get(record.record_id)
        if kept is None or record.version > kept.version:
            latest[record.record_id] = record
    return latest
