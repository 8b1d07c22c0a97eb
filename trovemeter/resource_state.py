"""Resource state: the latest known status and attributes of each instance, cluster and backup.

Pure: no Faust, no Kafka, no clock. The agent keeps one ``TrackedResource`` per resource id in
a table (as ``to_dict()``), calls ``apply`` for each notification of that resource, writes the
table when ``apply`` returns a different object, and sends ``tracked.state`` to the compacted
trove.resources when the state differs from the previous one.

Order independence: notifications of one resource arrive in any order and any number of times,
and the state must not depend on it. So:

- each attribute (status, flavor, volume size, name, ...) keeps the value reported by the newest
  event that reported it (by occurred_at; at equal times the greater value, an arbitrary but
  fixed choice), which is why ``TrackedResource`` remembers, per attribute, when its value was
  reported;
- deletion is terminal: once any event says the resource is deleted, its status stays
  ``deleted``, however new the other events are (an exists audit may be stamped after the
  delete: it describes an earlier period);
- created_at, launched_at and deleted_at keep the earliest report;
- last_event_* describe the newest event (ties broken by message id) other than the hourly
  ``trove.instance.exists`` audits; a resource known only from audits has the newest audit as
  its last event. Otherwise every audit would be a new row on trove.resources though it only
  confirms what the row says: at 100k instances, 100k records an hour. The audit's reports of
  the attributes count as any other event's (so its report times still move).

Which events say what:

- starts report only the status and the tenant (a start states an intent: a dbaas resize
  start names the *target* flavor, which is not the flavor until the resize is done);
- ends, errors and usage notifications (trove.instance.*, phase point) also report attributes;
- a dbaas resize end carries no flavor or size: Trove's taskmanager follows it with
  trove.instance.modify_flavor / modify_volume, which report the new ones;
- an error leaves a failed create or delete in ``error``; after a failed restart, resize, ...
  the resource is ``active`` again (it usually survives them, and the hourly
  trove.instance.exists audit reports the actual state);
- the create start of the dbaas family has no resource id and creates nothing: the resource
  appears with its create end, whose payload repeats the start's fields.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from trovemeter.ids import replacer
from trovemeter.model import Notification, Phase, ResourceState, ResourceStatus, ResourceType
from trovemeter.payload_values import (
    as_float,
    as_int,
    as_text,
    as_utc,
    datastore_of,
    first_present,
)

TRACKED_TYPES = frozenset({ResourceType.INSTANCE, ResourceType.CLUSTER, ResourceType.BACKUP})
EXISTS_EVENT = "trove.instance.exists"  # Trove's hourly audit: see last_event_* above

_S = ResourceStatus
# operation -> (status while it runs, status once it ended)
_STATUS_BY_OPERATION: Mapping[str, tuple[ResourceStatus, ResourceStatus]] = {
    "create": (_S.BUILDING, _S.ACTIVE),
    "delete": (_S.DELETING, _S.DELETED),
    "resize_flavor": (_S.RESIZING, _S.ACTIVE),
    "resize_volume": (_S.RESIZING, _S.ACTIVE),
    "resize": (_S.RESIZING, _S.ACTIVE),
    "grow": (_S.RESIZING, _S.ACTIVE),
    "shrink": (_S.RESIZING, _S.ACTIVE),
    "restart": (_S.REBOOTING, _S.ACTIVE),
    "reboot": (_S.REBOOTING, _S.ACTIVE),
}
_ERROR_LEAVES_ERROR = frozenset({"create", "delete"})

# The `state` of usage payloads (Trove's instance status, lower case) -> status. States that say
# nothing about the lifecycle (backup, restart_required, blocked, ...) are left out.
_USAGE_STATES: Mapping[str, ResourceStatus] = {
    "active": _S.ACTIVE,
    "healthy": _S.ACTIVE,
    "build": _S.BUILDING,
    "build_pending": _S.BUILDING,
    "reboot": _S.REBOOTING,
    "resize": _S.RESIZING,
    "error": _S.ERROR,
    "failed": _S.ERROR,
    "deleted": _S.DELETED,
}


@dataclass(frozen=True, slots=True)
class TrackedResource:
    """A resource's state and, per attribute, the event time of the report it holds."""

    state: ResourceState
    reported_at: Mapping[str, datetime]
    # The row this state was read from (``from_row``), kept while ``apply`` keeps the state
    # object (a confirming audit moves only report times): ``to_row`` reuses its fields
    # instead of converting all 19 again. Not part of the value.
    loaded_row: list[Any] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": {
                name: _plain(value)
                for name in _STATE_FIELDS
                if (value := getattr(self.state, name)) is not None
            },
            "reported_at": {name: moment.isoformat() for name, moment in self.reported_at.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackedResource:
        values = dict(data["state"])
        values["resource_type"] = ResourceType(values["resource_type"])
        if "status" in values:
            values["status"] = ResourceStatus(values["status"])
        for name in _STATE_TIMES:
            if name in values:
                values[name] = datetime.fromisoformat(values[name])
        reported_at = {name: datetime.fromisoformat(v) for name, v in data["reported_at"].items()}
        return cls(ResourceState(**values), reported_at)

    def to_row(self) -> list[Any]:
        """The compact form (a worker holds one per resource, as JSON bytes: ~0.4 KB against
        ~0.9 KB for ``to_dict``'s): ``[1, <the state's fields in ROW_FIELDS order>,
        [<field index>, <last_event_at - reported at>, ...]]``, times in microseconds since the
        epoch, enums as their values."""
        loaded = self.loaded_row
        row = loaded[:-1] if loaded is not None else self._state_row()
        last_us = row[1 + _LAST_EVENT_AT]
        # An event reports several attributes at its one moment: converted once per moment.
        offsets: dict[datetime, int] = {}
        reported: list[int] = []
        for name, moment in self.reported_at.items():
            offset = offsets.get(moment)
            if offset is None:
                offset = offsets[moment] = last_us - (moment - _EPOCH) // _MICROSECOND
            reported += (_ROW_INDEX[name], offset)
        row.append(reported)
        return row

    def _state_row(self) -> list[Any]:
        """``to_row`` without the report times: the version and the state's fields."""
        row: list[Any] = [ROW_VERSION, *_row_values(self.state)]
        for index in _ROW_TIMES:
            moment = row[1 + index]
            if moment is not None:
                row[1 + index] = (moment - _EPOCH) // _MICROSECOND
        row[1 + _ROW_TYPE] = row[1 + _ROW_TYPE].value
        if row[1 + _ROW_STATUS] is not None:
            row[1 + _ROW_STATUS] = row[1 + _ROW_STATUS].value
        return row

    @classmethod
    def from_row(cls, row: list[Any]) -> TrackedResource:
        if row[0] != ROW_VERSION:
            raise ValueError(f"unknown resource row version {row[0]!r}")
        values = row[1:-1]
        for index in _ROW_TIMES:
            if values[index] is not None:
                values[index] = _EPOCH + timedelta(microseconds=values[index])
        values[_ROW_TYPE] = _TYPES[values[_ROW_TYPE]]
        if values[_ROW_STATUS] is not None:
            values[_ROW_STATUS] = _STATUSES[values[_ROW_STATUS]]
        last_us = row[1 + _LAST_EVENT_AT]
        reported = row[-1]
        moments: dict[int, datetime] = {}  # offset -> moment: one datetime per moment
        reported_at = {}
        for i in range(0, len(reported), 2):
            offset = reported[i + 1]
            moment = moments.get(offset)
            if moment is None:
                moment = moments[offset] = _EPOCH + timedelta(microseconds=last_us - offset)
            reported_at[ROW_FIELDS[reported[i]]] = moment
        return cls(ResourceState(*values), reported_at, row)


_STATE_FIELDS = tuple(f.name for f in fields(ResourceState))
_replace_state = replacer(ResourceState)
_STATE_TIMES = ("last_event_at", "created_at", "launched_at", "deleted_at")

# Row form (``TrackedResource.to_row``), version 1: the positions are part of the format, so
# they are spelled out; a field added to ResourceState needs a new version.
ROW_VERSION = 1
ROW_FIELDS = ("resource_id", "resource_type", "last_event_type", "last_event_at",
              "last_message_id", "tenant_id", "status", "flavor_id", "flavor_name",
              "volume_size_gb", "size_gb", "cluster_size", "instance_ids", "name", "datastore",
              "datastore_version", "created_at", "launched_at", "deleted_at")
assert set(ROW_FIELDS) == set(_STATE_FIELDS), "ResourceState changed: new row version needed"
_ROW_INDEX = {name: i for i, name in enumerate(ROW_FIELDS)}
assert ROW_FIELDS == _STATE_FIELDS, "from_row builds ResourceState positionally"
_row_values = operator.attrgetter(*ROW_FIELDS)
_ROW_TIMES = tuple(_ROW_INDEX[name] for name in _STATE_TIMES)
_ROW_TYPE, _ROW_STATUS = _ROW_INDEX["resource_type"], _ROW_INDEX["status"]
_LAST_EVENT_AT = _ROW_INDEX["last_event_at"]
_LAST_EVENT_TYPE = _ROW_INDEX["last_event_type"]
# Lookups: an Enum call costs ~0.4 us, and every event reads its resource's row.
_TYPES = {t.value: t for t in ResourceType}
_STATUSES = {s.value: s for s in ResourceStatus}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def apply(tracked: TrackedResource | None, n: Notification) -> TrackedResource | None:
    """Fold one notification into its resource's state.

    Returns ``tracked`` itself when nothing changes (a repeat, an event older than everything it
    reports, an event of another kind of resource), else the new state.
    """
    if n.resource_id is None or n.resource_type not in TRACKED_TYPES:
        return tracked
    if tracked is not None and tracked.state.resource_type is not n.resource_type:
        return tracked  # another kind of resource claims the id: not this resource's event
    state = tracked.state if tracked is not None else None
    reported_at = tracked.reported_at if tracked is not None else {}
    at = n.occurred_at
    changes: dict[str, Any] = {}
    new_reported_at: dict[str, datetime] = {}

    for name, value in _latest_reports(n):
        current = getattr(state, name) if state is not None else None
        if name == "status":
            if current is _S.DELETED:
                continue
            if value is _S.DELETED:
                changes[name] = value  # terminal, whatever the time of the other reports
                continue
        previous_at = reported_at.get(name)
        if previous_at is not None and (at < previous_at or (
                at == previous_at and _tie(value) <= _tie(current))):
            continue
        if value != current:
            changes[name] = value
        new_reported_at[name] = at

    for name, moment in _earliest_reports(n):
        current = changes.get(name, getattr(state, name) if state is not None else None)
        if current is None or moment < current:
            changes[name] = moment

    if _is_last_event(state, n):
        changes.update(last_event_type=n.event_type, last_event_at=at, last_message_id=n.message_id)

    if not changes and not new_reported_at:
        return tracked
    if state is None:
        new_state = ResourceState(
            resource_id=n.resource_id, resource_type=n.resource_type, **changes
        )
    else:
        new_state = _replace_state(state, **changes) if changes else state
    merged = {**reported_at, **new_reported_at}
    if new_state.status is _S.DELETED:
        merged.pop("status", None)  # never compared again; dropped so the entry is order-free
    # The state object kept: so is the row it was read from (``TrackedResource.loaded_row``).
    return TrackedResource(new_state, merged, tracked.loaded_row
                           if tracked is not None and new_state is state else None)


def confirmed_row(row: list[Any], n: Notification) -> list[Any] | None:
    """For a trove.instance.exists audit ``n``: ``apply(TrackedResource.from_row(row),
    n).to_row()`` read straight off the row when the audit only confirms the state (every
    value it reports is the row's, none of its launch/create/delete times is earlier, the
    resource has a last event other than audits, it is not deleted): ``row`` itself when no
    report time moves either, else a new row whose report times moved. None for any other
    event or row: the caller takes ``apply``. Every live instance gets an audit an hour, and
    for nearly all of them this is all that happens; building the state and its report times
    cost more than the rest of the audit."""
    if n.event_type != EXISTS_EVENT or row[0] != ROW_VERSION:
        return None
    if row[1 + _ROW_TYPE] != n.resource_type.value or row[1 + _ROW_STATUS] == "deleted" or \
            row[1 + _LAST_EVENT_TYPE] == EXISTS_EVENT:
        return None
    for name, moment in _earliest_reports(n):
        current = row[1 + _ROW_INDEX[name]]
        if current is None or (moment - _EPOCH) // _MICROSECOND < current:
            return None
    at_us = (n.occurred_at - _EPOCH) // _MICROSECOND
    last_us = row[1 + _LAST_EVENT_AT]
    reported: list[Any] = row[-1]
    positions = {reported[i]: i for i in range(0, len(reported), 2)}
    moved: list[Any] | None = None
    for name, value in _latest_reports(n):
        index = _ROW_INDEX[name]
        if (value.value if type(value) is ResourceStatus else value) != row[1 + index]:
            return None  # a change: ``apply`` decides
        position = positions.get(index)
        if position is None:
            return None  # a value without a report time: not a row ``apply`` wrote
        if at_us <= last_us - reported[position + 1]:
            continue  # not newer than the report the row holds
        if moved is None:
            moved = list(reported)
        moved[position + 1] = last_us - at_us
    if moved is None:
        return row
    return [*row[:-1], moved]


def _is_last_event(state: ResourceState | None, n: Notification) -> bool:
    """Whether ``n`` becomes the state's last event: the newest of the non-audit events if
    there is any, else the newest audit (a function of the set of events, as the rest)."""
    if state is None:
        return True
    audit, audits_only = n.event_type == EXISTS_EVENT, state.last_event_type == EXISTS_EVENT
    if audit != audits_only:
        return not audit  # the first other event replaces the audits; audits never replace it
    return (n.occurred_at, n.message_id) > (state.last_event_at, state.last_message_id)


def _latest_reports(n: Notification) -> list[tuple[str, Any]]:
    """(attribute, value) pairs this event reports, to be kept if it is the newest report."""
    reports: list[tuple[str, Any]] = []
    status = _status(n)
    if status is not None:
        reports.append(("status", status))
    if n.tenant_id:
        reports.append(("tenant_id", n.tenant_id))
    if n.phase is Phase.START:
        return reports
    payload = n.payload
    if n.resource_type is ResourceType.INSTANCE:
        reports += [
            ("flavor_id", as_text(first_present(payload, "instance_type_id", "flavor_id"))),
            ("flavor_name", as_text(payload.get("instance_type"))),
            ("volume_size_gb", as_int(payload.get("volume_size"))),
        ]
    elif n.resource_type is ResourceType.BACKUP:
        reports.append(("size_gb", as_float(payload.get("size"))))
    else:
        reports += [
            ("cluster_size", as_int(payload.get("cluster_size"))),
            ("instance_ids", _member_ids(payload.get("instances"))),
        ]
    datastore, datastore_version = datastore_of(payload)
    name = as_text(first_present(payload, "name", "instance_name", "display_name"))
    reports += [("datastore", datastore), ("datastore_version", datastore_version), ("name", name)]
    return [(attribute, value) for attribute, value in reports if value is not None]


def _earliest_reports(n: Notification) -> list[tuple[str, datetime]]:
    """(time attribute, moment) pairs this event reports, to be kept if it is the earliest."""
    payload = n.payload
    reports = [
        ("created_at", as_utc(first_present(payload, "created_at", "created"))),
        ("launched_at", as_utc(payload.get("launched_at"))),
        ("deleted_at", as_utc(payload.get("deleted_at"))),
    ]
    if n.operation == "create" and n.phase is not Phase.POINT:
        reports.append(("created_at", n.occurred_at))
        if n.phase is Phase.END and n.resource_type is not ResourceType.BACKUP:
            reports.append(("launched_at", n.occurred_at))
    if n.operation == "delete" and n.phase in (Phase.END, Phase.POINT):
        reports.append(("deleted_at", n.occurred_at))
    return [(attribute, moment) for attribute, moment in reports if moment is not None]


def _member_ids(instances: Any) -> list[str] | None:
    """Member ids of a design-note cluster payload's ``instances`` list, sorted."""
    if not isinstance(instances, list):
        return None
    ids = [
        as_text(first_present(member, "instance_id", "id"))
        for member in instances
        if isinstance(member, Mapping)
    ]
    return sorted(i for i in ids if i is not None) or None


def _status(n: Notification) -> ResourceStatus | None:
    if n.phase is Phase.POINT:
        if n.operation == "delete":
            return _S.DELETED
        return _USAGE_STATES.get(str(n.payload.get("state", "")).lower())
    statuses = _STATUS_BY_OPERATION.get(n.operation)
    if statuses is None:
        return None
    running, ended = statuses
    if n.phase is Phase.START:
        return running
    if n.phase is Phase.END:
        return ended
    return _S.ERROR if n.operation in _ERROR_LEAVES_ERROR else _S.ACTIVE


def _tie(value: Any) -> str:
    """A fixed order between different values reported at the same moment."""
    return "" if value is None else value.value if isinstance(value, enum.Enum) else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value
