"""Pairing: join each operation's start to its end or error, whatever order they arrive in.

Pure: no Faust, no Kafka, no clock, no I/O. The agent keeps one ``OpenOperation`` per join key
in a table (as ``to_dict()``), calls ``step`` for each notification routed to that key and
``expire`` once the stream's event time has passed the key's ``deadline``.

Order independence
------------------
Every decision depends on event times (``occurred_at``), never on arrival order:

- a start S and an end or error T belong together when
  ``T.occurred_at <= S.occurred_at + timeout(operation)`` and
  ``S.occurred_at <= T.occurred_at + max_clock_skew`` (the start is sent by the API host, the end
  by the taskmanager or conductor: their clocks may disagree a little);
- a start with no such end or error is ``abandoned`` once event time passes
  ``S.occurred_at + timeout``;
- an end or error with no such start (an orphan) waits until event time passes
  ``T.occurred_at + max_clock_skew``, then goes out with the start unknown;
- "event time passes X" means the watermark (the greatest occurred_at the agent has seen) is
  beyond ``X + allowed_lateness``.

So as long as every event arrives less than ``allowed_lateness`` behind the newest one, any
order and any duplication of a key's events gives the same records. Later events may be dropped
or reported as if their partner were missing.

Join keys
---------
``dbaas.*`` events carry a request id, which joins a start to its end although the start of a
create has no resource id yet: key ``req:<request_id>:<resource_type>:<operation>``. One request
is one operation, so its record goes out as soon as the start and its end or error are both in.
Two cases are then decided by arrival, because Trove never produces them: an end *and* an error
for one request (Trove sends one or the other; if both wait for the start the error wins,
otherwise the first to meet the start wins), and two starts with different message ids (the
earliest counts until the record is out).

The design note's events have no request id and are joined by resource:
``res:<resource_type>:<resource_id>:<operation>``. Such a key sees the same operation of the
same resource again and again, and which start an end belongs to depends on the starts that
came between them, so these events are held (``pending``) and replayed in occurred_at order
once event time has passed them: their records go out ``allowed_lateness`` later, identical
whatever the arrival order. Replayed in order, a start that finds an older one still open
abandons it (the resource began the operation again), and events at or before ``floor`` (the
newest event of an operation already reported) are stale copies.

Record ids
----------
``record_id`` is a UUID5 of the join key for a request key (one request, one operation, one
id, whichever of its events arrived), and of the join key plus the operation's start time (its
end time when the start is unknown) for a resource key, so successive operations get their own
ids. The ``OperationError`` of a failed operation carries the id of its ``OperationCompleted``.

Tombstones
----------
Once reported, an operation's state shrinks to a tombstone (``closed_at`` set, nothing held)
that absorbs late copies of its events, so a redelivery never re-emits; ``expire`` deletes it
(returns None) once event time passes ``closed_at + retention``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from trovemeter.model import (
    Notification,
    OperationCompleted,
    OperationError,
    Outcome,
    Phase,
    ResourceType,
)
from trovemeter.ids import replacer, uuid5
from trovemeter.payload_values import as_float, as_int, as_text, datastore_of, first_present

Output = OperationCompleted | OperationError

# Keys are "<resource_type>.<operation>" or "<operation>" (any resource type); the first match wins.
DEFAULT_TIMEOUTS: Mapping[str, timedelta] = {
    "create": timedelta(hours=2),
    "backup.create": timedelta(hours=6),
    "cluster.create": timedelta(hours=4),
    "resize_flavor": timedelta(hours=2),
    "resize_volume": timedelta(hours=2),
    "delete": timedelta(hours=1),
}


@dataclass(frozen=True, slots=True)
class PairingPolicy:
    """How long pairing waits for what, in event time."""

    timeouts: Mapping[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    default_timeout: timedelta = timedelta(hours=1)
    max_clock_skew: timedelta = timedelta(minutes=5)
    # How far behind the newest event another may arrive and still be treated as in order:
    # covers RabbitMQ and partition interleaving, and the lag between source partitions.
    allowed_lateness: timedelta = timedelta(minutes=10)
    # How long a reported operation's tombstone absorbs redelivered copies of its events.
    retention: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.retention < self.allowed_lateness:
            # A copy arriving within the lateness must still find the tombstone.
            raise ValueError("retention must be at least allowed_lateness")
        if min([self.default_timeout, self.max_clock_skew, *self.timeouts.values()]) < timedelta(0):
            raise ValueError("timeouts and max_clock_skew must not be negative")

    def timeout(self, resource_type: ResourceType, operation: str) -> timedelta:
        specific = self.timeouts.get(f"{resource_type.value}.{operation}")
        if specific is not None:
            return specific
        return self.timeouts.get(operation, self.default_timeout)


DEFAULT_POLICY = PairingPolicy()


@dataclass(frozen=True, slots=True)
class Sighting:
    """What the operation record needs from one start, end or error (the payload is not kept)."""

    message_id: str
    phase: Phase  # start, end or error
    occurred_at: datetime
    publisher_id: str
    resource_id: str | None = None
    tenant_id: str | None = None
    user_id: str | None = None
    flavor_id: str | None = None
    volume_size_gb: int | None = None
    size_gb: float | None = None
    datastore: str | None = None
    datastore_version: str | None = None
    error_message: str | None = None
    exception_class: str | None = None
    exception_last_line: str | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in _SIGHTING_FIELDS}
        values["phase"] = self.phase.value
        values["occurred_at"] = self.occurred_at.isoformat()
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sighting:
        return cls(**{
            **data,
            "phase": Phase(data["phase"]),
            "occurred_at": datetime.fromisoformat(data["occurred_at"]),
        })


_SIGHTING_FIELDS = Sighting.__dataclass_fields__.keys()


@dataclass(frozen=True, slots=True)
class OpenOperation:
    """Pairing state of one join key: what is held of its current operation, or, once the
    record is out (``closed_at`` set), a tombstone; on a resource key also the events not yet
    replayed (``pending``)."""

    join_key: str
    resource_type: ResourceType
    operation: str
    request_id: str | None = None  # None: a resource key
    start: Sighting | None = None
    end: Sighting | None = None
    error: Sighting | None = None
    closed_at: datetime | None = None  # event time the record went out
    # Resource keys only: occurred_at of the newest event of an operation already reported;
    # anything at or before it is stale.
    floor: datetime | None = None
    # Resource keys only: events waiting for event time to pass them, in replay order.
    pending: tuple[Sighting, ...] = ()

    @property
    def is_closed(self) -> bool:
        return self.closed_at is not None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "join_key": self.join_key,
            "resource_type": self.resource_type.value,
            "operation": self.operation,
        }
        if self.request_id is not None:
            data["request_id"] = self.request_id
        for slot in ("start", "end", "error"):
            sighting = getattr(self, slot)
            if sighting is not None:
                data[slot] = sighting.to_dict()
        if self.closed_at is not None:
            data["closed_at"] = self.closed_at.isoformat()
        if self.floor is not None:
            data["floor"] = self.floor.isoformat()
        if self.pending:
            data["pending"] = [sighting.to_dict() for sighting in self.pending]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpenOperation:
        def sighting(slot: str) -> Sighting | None:
            return Sighting.from_dict(data[slot]) if slot in data else None

        def moment(name: str) -> datetime | None:
            return datetime.fromisoformat(data[name]) if name in data else None

        return cls(
            join_key=data["join_key"],
            resource_type=ResourceType(data["resource_type"]),
            operation=data["operation"],
            request_id=data.get("request_id"),
            start=sighting("start"),
            end=sighting("end"),
            error=sighting("error"),
            closed_at=moment("closed_at"),
            floor=moment("floor"),
            pending=tuple(Sighting.from_dict(item) for item in data.get("pending", ())),
        )


_replace = replacer(OpenOperation)


def join_key(n: Notification) -> str | None:
    """The key a start and its end or error share; None for events that are not paired (point
    events, and starts/ends with neither a request id nor a resource id)."""
    if n.phase is Phase.POINT:
        return None
    if n.request_id:
        return f"req:{n.request_id}:{n.resource_type.value}:{n.operation}"
    if n.resource_id:
        return f"res:{n.resource_type.value}:{n.resource_id}:{n.operation}"
    return None


def step(
    state: OpenOperation | None, n: Notification, policy: PairingPolicy = DEFAULT_POLICY
) -> tuple[OpenOperation | None, list[Output]]:
    """Fold one notification into the state of its join key.

    Returns the new state and the records to send. The state is returned as the very same
    object when nothing changed (a copy, a stale or unpaired event): write the table only when
    ``new_state is not state``.
    """
    key = join_key(n)
    if key is None:
        return state, []
    if n.request_id:
        if state is None:  # one event alone never completes an operation
            sighting = _sighting(n)
            phase = sighting.phase
            return OpenOperation(
                key, n.resource_type, n.operation, n.request_id,
                start=sighting if phase is Phase.START else None,
                end=sighting if phase is Phase.END else None,
                error=sighting if phase is Phase.ERROR else None,
            ), []
        if state.is_closed:
            return state, []
        return _take(state, _sighting(n), policy)
    if state is None:
        return OpenOperation(key, n.resource_type, n.operation, pending=(_sighting(n),)), []
    if _already_seen(state, n):
        return state, []
    pending = tuple(sorted((*state.pending, _sighting(n)), key=_replay_order))
    return _replace(state, pending=pending), []


def deadline(state: OpenOperation, policy: PairingPolicy = DEFAULT_POLICY) -> datetime:
    """The event time after which ``expire`` has something to do for this key: the agent can
    index keys by it instead of calling ``expire`` on every key."""
    if state.pending:
        moments = [state.pending[0].occurred_at + policy.allowed_lateness]
    elif state.closed_at is not None:
        moments = [state.closed_at + policy.retention]
    else:
        moments = []
    decision = _next_decision(state, policy)
    if decision is not None:
        moments.append(decision[0] + policy.allowed_lateness)
    return min(moments)


def expire(
    state: OpenOperation, now: datetime, policy: PairingPolicy = DEFAULT_POLICY
) -> tuple[OpenOperation | None, list[Output]]:
    """Settle what event time ``now`` (the watermark: the greatest occurred_at seen) decides:
    replay pending events it has passed, abandon starts, report orphan ends and errors, forget
    tombstones. Returns the new state (None: delete the key; the same object: nothing changed)
    and the records to send."""
    horizon = now - policy.allowed_lateness  # every event up to here has arrived
    outputs: list[Output] = []
    pending = state.pending
    while pending and pending[0].occurred_at < horizon:
        sighting, pending = pending[0], pending[1:]
        state = _decide_before(state, sighting.occurred_at, policy, outputs)
        state = _replay(state, sighting, policy, outputs)
    state = _decide_before(state, horizon, policy, outputs)
    if pending is not state.pending:
        state = _replace(state, pending=pending)
    if state.closed_at is not None and not pending and now > state.closed_at + policy.retention:
        return None, outputs
    return state, outputs


def _already_seen(state: OpenOperation, n: Notification) -> bool:
    """On a resource key: a copy of an event it holds, or one older than what was reported."""
    if state.floor is not None and n.occurred_at <= state.floor:
        return True
    held = (state.start, state.end, state.error, *state.pending)
    return any(s is not None and s.message_id == n.message_id for s in held)


def _replay(
    state: OpenOperation, sighting: Sighting, policy: PairingPolicy, outputs: list[Output]
) -> OpenOperation:
    """Feed one pending event of a resource key, in occurred_at order."""
    if state.floor is not None and sighting.occurred_at <= state.floor:
        return state
    if state.is_closed:  # the next operation of the same kind on the same resource
        state = OpenOperation(
            state.join_key, state.resource_type, state.operation, floor=state.floor
        )
    state, records = _take(state, sighting, policy)
    outputs.extend(records)
    return state


def _decide_before(
    state: OpenOperation, horizon: datetime, policy: PairingPolicy, outputs: list[Output]
) -> OpenOperation:
    """Make every decision due before event time ``horizon``: abandon a start past its timeout,
    report an end or error whose start did not come."""
    while (decision := _next_decision(state, policy)) is not None and decision[0] < horizon:
        decided_at, sighting = decision
        if sighting is state.start:
            state, records = _close(state, sighting, None, decided_at)
        else:
            state, records = _close(state, None, _orphan_terminal(state, decided_at), decided_at)
        outputs.extend(records)
    return state


def _take(
    state: OpenOperation, sighting: Sighting, policy: PairingPolicy
) -> tuple[OpenOperation, list[Output]]:
    if sighting.phase is Phase.START:
        return _on_start(state, sighting, policy)
    return _on_terminal(state, sighting, policy)


def _on_start(
    state: OpenOperation, start: Sighting, policy: PairingPolicy
) -> tuple[OpenOperation, list[Output]]:
    current = state.start
    if current is None:
        return _settle(_replace(state, start=start), policy)
    if start.message_id == current.message_id:
        return state, []
    if state.request_id is not None:
        # One request is one operation: another start is a re-sent copy; the earliest counts.
        if _order(current) <= _order(start):
            return state, []
        return _settle(_replace(state, start=start), policy)
    # A resource key, replayed in order: the resource began the same operation again, so the
    # open one was abandoned.
    state, records = _close(state, current, None, start.occurred_at)
    state, more = _settle(_replace(state, start=start, closed_at=None), policy)
    return state, records + more


def _on_terminal(
    state: OpenOperation, terminal: Sighting, policy: PairingPolicy
) -> tuple[OpenOperation, list[Output]]:
    is_error = terminal.phase is Phase.ERROR
    current = state.error if is_error else state.end
    if current is not None and (
        terminal.message_id == current.message_id or _order(current) < _order(terminal)
    ):
        return state, []  # a copy, or a second one of the same kind: the earliest counts
    held = _replace(state, error=terminal) if is_error else _replace(state, end=terminal)
    return _settle(held, policy)


def _settle(state: OpenOperation, policy: PairingPolicy) -> tuple[OpenOperation, list[Output]]:
    """Close the operation if its start and an end or error belong together (error first)."""
    start = state.start
    if start is None:
        return state, []
    for terminal in (state.error, state.end):
        if terminal is not None and _belong(start, terminal, state, policy):
            return _close(state, start, terminal, max(start.occurred_at, terminal.occurred_at))
    return state, []


def _belong(
    start: Sighting, terminal: Sighting, state: OpenOperation, policy: PairingPolicy
) -> bool:
    timeout = policy.timeout(state.resource_type, state.operation)
    return (
        terminal.occurred_at <= start.occurred_at + timeout
        and start.occurred_at <= terminal.occurred_at + policy.max_clock_skew
    )


def _next_decision(state: OpenOperation, policy: PairingPolicy) -> tuple[datetime, Sighting] | None:
    """The earliest event time at which something held must be decided, and what: the start's
    timeout, or an end's or error's wait for its start. None when nothing is held."""
    candidates = []
    if state.start is not None:
        timeout = policy.timeout(state.resource_type, state.operation)
        candidates.append((state.start.occurred_at + timeout, 0, state.start))
    for rank, terminal in ((1, state.error), (2, state.end)):
        if terminal is not None:
            candidates.append((terminal.occurred_at + policy.max_clock_skew, rank, terminal))
    if not candidates:
        return None
    decided_at, _, sighting = min(candidates, key=lambda c: (c[0], c[1]))
    return decided_at, sighting


def _orphan_terminal(state: OpenOperation, decided_at: datetime) -> Sighting:
    """The end or error reported without a start: the error wins if it was there by then."""
    if state.error is not None and state.error.occurred_at <= decided_at:
        return state.error
    assert state.end is not None  # _next_decision chose a terminal
    return state.end


def _close(
    state: OpenOperation, start: Sighting | None, terminal: Sighting | None, closed_at: datetime
) -> tuple[OpenOperation, list[Output]]:
    """Report the operation made of ``start`` and ``terminal``; leave a tombstone, or, on a
    resource key, what is held of the next operation."""
    records = _records(state, start, terminal)
    if state.request_id is not None:
        tombstone = OpenOperation(
            state.join_key, state.resource_type, state.operation, state.request_id,
            closed_at=closed_at,
        )
        return tombstone, records
    used = [s.occurred_at for s in (start, terminal) if s is not None]
    floor = max(used if state.floor is None else [*used, state.floor])

    def keep(s: Sighting | None) -> Sighting | None:
        if s is None or s is start or s is terminal or s.occurred_at <= floor:
            return None
        return s

    rest = _replace(state, start=keep(state.start), end=keep(state.end), error=keep(state.error),
                   floor=floor)
    if rest.start is None and rest.end is None and rest.error is None:
        rest = _replace(rest, closed_at=closed_at)
    return rest, records


def _records(
    state: OpenOperation, start: Sighting | None, terminal: Sighting | None
) -> list[Output]:
    error = terminal if terminal is not None and terminal is state.error else None
    if terminal is None:
        outcome = Outcome.ABANDONED
    else:
        outcome = Outcome.SUCCEEDED if error is None else Outcome.FAILED
    # Attributes from the end (a create's end names the new resource), else from the start.
    sources = [s for s in (terminal, start) if s is not None]

    def pick(name: str) -> Any:
        return next((v for s in sources if (v := getattr(s, name)) is not None), None)

    duration = None
    if start is not None and terminal is not None:
        # Hosts' clocks may disagree by up to max_clock_skew: a negative span is skew, not time.
        duration = max(0.0, (terminal.occurred_at - start.occurred_at).total_seconds())
    completed = OperationCompleted(
        record_id=_record_id(state, start, terminal),
        outcome=outcome,
        resource_type=state.resource_type,
        operation=state.operation,
        request_id=state.request_id,
        resource_id=pick("resource_id"),
        tenant_id=pick("tenant_id"),
        # Who asked for it: the start's user, whose request the end merely finishes.
        user_id=(start.user_id if start is not None else None) or pick("user_id"),
        started_at=start.occurred_at if start is not None else None,
        ended_at=terminal.occurred_at if terminal is not None else None,
        duration_seconds=duration,
        start_publisher=start.publisher_id if start is not None else None,
        end_publisher=terminal.publisher_id if terminal is not None else None,
        start_message_id=start.message_id if start is not None else None,
        end_message_id=terminal.message_id if terminal is not None else None,
        flavor_id=pick("flavor_id"),
        volume_size_gb=pick("volume_size_gb"),
        size_gb=pick("size_gb"),
        datastore=pick("datastore"),
        datastore_version=pick("datastore_version"),
        error_message=error.error_message if error is not None else None,
        exception_class=error.exception_class if error is not None else None,
    )
    if error is None:
        return [completed]
    return [
        completed,
        OperationError(
            record_id=completed.record_id,
            resource_type=state.resource_type,
            operation=state.operation,
            occurred_at=error.occurred_at,
            message_id=error.message_id,
            publisher_id=error.publisher_id,
            request_id=state.request_id,
            resource_id=completed.resource_id,
            tenant_id=completed.tenant_id,
            user_id=completed.user_id,
            error_message=error.error_message,
            exception_class=error.exception_class,
            exception_last_line=error.exception_last_line,
        ),
    ]


# Fixed forever: changing it changes every record id.
_RECORD_NAMESPACE = uuid.UUID("6f0d3c1e-8a51-5b5e-9a7c-2f1d0c9b8e41")


def _record_id(state: OpenOperation, start: Sighting | None, terminal: Sighting | None) -> str:
    if state.request_id is not None:
        return uuid5(_RECORD_NAMESPACE, state.join_key)
    anchor = start if start is not None else terminal
    assert anchor is not None
    return uuid5(_RECORD_NAMESPACE, f"{state.join_key}@{anchor.occurred_at.isoformat()}")


def _order(s: Sighting) -> tuple[datetime, str]:
    return s.occurred_at, s.message_id


def _replay_order(s: Sighting) -> tuple[datetime, bool, str]:
    """occurred_at order; at the same moment a start first, as an operation of no duration."""
    return s.occurred_at, s.phase is not Phase.START, s.message_id


def _sighting(n: Notification) -> Sighting:
    payload = n.payload
    datastore, datastore_version = datastore_of(payload)
    is_error = n.phase is Phase.ERROR
    last_line = exception_last_line(payload.get("exception")) if is_error else None
    return Sighting(
        message_id=n.message_id,
        phase=n.phase,
        occurred_at=n.occurred_at,
        publisher_id=n.publisher_id,
        resource_id=n.resource_id,
        tenant_id=n.tenant_id,
        user_id=n.user_id,
        # A resize's start names the target; design-note payloads use Nova's instance_type_id.
        flavor_id=as_text(first_present(payload, "new_flavor_id", "flavor_id", "instance_type_id")),
        volume_size_gb=as_int(first_present(payload, "new_size", "volume_size")),
        size_gb=as_float(payload.get("size")) if n.resource_type is ResourceType.BACKUP else None,
        datastore=datastore,
        datastore_version=datastore_version,
        error_message=n.error_message if is_error else None,
        exception_class=n.exception_class if is_error else None,
        exception_last_line=last_line,
    )


def exception_last_line(traceback: Any) -> str | None:
    """The line naming the exception at the end of a formatted traceback
    (``module.Class: message``): the first unindented line after the last frame, so a message
    that continues over several lines still yields its first line. For a plain ``str(exc)`` (the
    design note's payloads), its last line."""
    text = as_text(traceback)
    if text is None:
        return None
    lines = [line for line in text.rstrip().splitlines() if line.strip()]
    if not lines:
        return None
    final = len(lines) - 1
    if "Traceback (" not in text:
        return lines[final].strip()
    while final > 0 and not lines[final - 1].startswith((" ", "\t", "Traceback (")):
        final -= 1
    return lines[final].strip()


# --- failure counts ---------------------------------------------------------------------------


class FailureKey(NamedTuple):
    """What failures are counted by."""

    tenant_id: str
    resource_type: str
    operation: str
    exception_class: str

    @property
    def table_key(self) -> str:
        return "|".join(self)


_UNKNOWN = "unknown"


def failure_key(error: OperationError) -> FailureKey:
    return FailureKey(
        error.tenant_id or _UNKNOWN,
        error.resource_type.value,
        error.operation,
        error.exception_class or _UNKNOWN,
    )


@dataclass(frozen=True, slots=True)
class ErrorCounts:
    """Failures of one ``FailureKey``: in total and per hour (event time, UTC).

    ``recent_ids`` remembers the last few counted record ids, because trove.errors is delivered
    at least once and a replay resends a burst of recent records.
    """

    total: int = 0
    hourly: Mapping[str, int] = field(default_factory=dict)  # hour start (ISO 8601) -> failures
    recent_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "hourly": dict(self.hourly),
            "recent_ids": list(self.recent_ids),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorCounts:
        return cls(data["total"], dict(data["hourly"]), tuple(data["recent_ids"]))


def hour_of(moment: datetime) -> str:
    """The hourly window a moment falls in, as the ISO 8601 UTC start of the hour."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0).isoformat()


def count_failure(
    counts: ErrorCounts | None,
    error: OperationError,
    *,
    keep_hours: int = 48,
    remember: int = 64,
) -> ErrorCounts:
    """Add one failure. Keeps the ``keep_hours`` hourly windows up to the newest one counted; a
    failure older than those still counts in the total. Returns ``counts`` itself for a repeat."""
    counts = counts or ErrorCounts()
    if error.record_id in counts.recent_ids:
        return counts
    hour = hour_of(error.occurred_at)
    hourly = dict(counts.hourly)
    newest = max([hour, *hourly])
    cutoff = hour_of(datetime.fromisoformat(newest) - timedelta(hours=keep_hours - 1))
    if hour >= cutoff:
        hourly[hour] = hourly.get(hour, 0) + 1
    hourly = {h: n for h, n in hourly.items() if h >= cutoff}
    return ErrorCounts(counts.total + 1, hourly, (*counts.recent_ids, error.record_id)[-remember:])
