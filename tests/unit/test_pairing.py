"""Pairing: starts joined to ends and errors, in any order, with any duplication."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trovemeter.model import (
    Notification,
    OperationCompleted,
    OperationError,
    Outcome,
    Phase,
    ResourceType,
)
from trovemeter.pairing import (
    DEFAULT_POLICY,
    ErrorCounts,
    FailureKey,
    OpenOperation,
    Output,
    PairingPolicy,
    count_failure,
    deadline,
    exception_last_line,
    expire,
    failure_key,
    join_key,
    step,
)

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
FAR_FUTURE = T0 + timedelta(days=30)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/dist-packages/trove/taskmanager/models.py", line 790, in _create\n'
    "    raise TroveError(msg)\n"
    "trove.common.exception.TroveError: Server creation failed: No valid host was found.\n"
)
LAST_LINE = "trove.common.exception.TroveError: Server creation failed: No valid host was found."
ERROR_CLASS = "trove.common.exception.TroveError"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def note(
    message_id: str,
    phase: Phase,
    seconds: float,
    *,
    resource_type: ResourceType = ResourceType.INSTANCE,
    operation: str = "create",
    request_id: str | None = None,
    resource_id: str | None = None,
    publisher_id: str | None = None,
    payload: dict | None = None,
) -> Notification:
    """A normalised notification, built directly (the parser is tested elsewhere)."""
    error = phase is Phase.ERROR
    return Notification(
        message_id=message_id,
        event_type=f"dbaas.{resource_type.value}_{operation}.{phase.value}",
        resource_type=resource_type,
        operation=operation,
        phase=phase,
        publisher_id=publisher_id or ("api.host1" if phase is Phase.START else "taskmanager.host2"),
        priority="INFO",
        occurred_at=at(seconds),
        request_id=request_id,
        resource_id=resource_id,
        tenant_id="tenant-1",
        user_id="user-1",
        error_message="Server creation failed: No valid host was found." if error else None,
        exception_class=ERROR_CLASS if error else None,
        payload=payload if payload is not None else ({"exception": TRACEBACK} if error else {}),
    )


def run(
    events: list[Notification], policy: PairingPolicy = DEFAULT_POLICY
) -> list[Output]:
    """What the agent does: step each event on its key, advance event time to the greatest
    occurred_at seen, expire the keys it has passed, and finally expire everything. The state
    goes through its dict form each time, as in a Faust table."""
    table: dict[str, dict] = {}
    outputs: list[Output] = []
    watermark = T0 - timedelta(days=1)

    def store(key: str, state: OpenOperation | None) -> None:
        if state is None:
            table.pop(key, None)
        else:
            table[key] = state.to_dict()

    def expire_due(now: datetime) -> None:
        for key in list(table):
            state = OpenOperation.from_dict(table[key])
            if now > deadline(state, policy):
                new, records = expire(state, now, policy)
                assert new is not state
                outputs.extend(records)
                store(key, new)
            else:
                assert expire(state, now, policy) == (state, [])

    for n in events:
        key = join_key(n)
        if key is not None:
            old = OpenOperation.from_dict(table[key]) if key in table else None
            new, records = step(old, n, policy)
            outputs.extend(records)
            if new is not old:
                store(key, new)
        watermark = max(watermark, n.occurred_at)
        expire_due(watermark)
    expire_due(FAR_FUTURE)
    assert not table, "every key is forgotten once event time has passed its retention"
    return outputs


def by_id(outputs: list[Output]) -> tuple[dict[str, OperationCompleted], dict[str, OperationError]]:
    completed = [o for o in outputs if isinstance(o, OperationCompleted)]
    errors = [o for o in outputs if isinstance(o, OperationError)]
    completed_ids = [o.record_id for o in completed]
    error_ids = [o.record_id for o in errors]
    assert len(set(completed_ids)) == len(completed_ids), "each operation is reported once"
    assert len(set(error_ids)) == len(error_ids), "each failure is reported once"
    return {o.record_id: o for o in completed}, {o.record_id: o for o in errors}


# --- scenarios -----------------------------------------------------------------------------

KINDS = ("succeeded", "failed", "abandoned", "end_only", "error_only")
WITH_START = ("succeeded", "failed", "abandoned")
REQUEST_KEYED = (
    (ResourceType.INSTANCE, "create"),
    (ResourceType.BACKUP, "create"),
    (ResourceType.INSTANCE, "resize_flavor"),
    (ResourceType.INSTANCE, "delete"),
    (ResourceType.CLUSTER, "grow"),
)
RESOURCE_KEYED = (
    (ResourceType.INSTANCE, "reboot"),
    (ResourceType.INSTANCE, "resize_flavor"),
    (ResourceType.BACKUP, "create"),
)
SKEW_S = int(DEFAULT_POLICY.max_clock_skew.total_seconds())


@dataclass(frozen=True)
class PlannedOperation:
    index: int
    resource_type: ResourceType
    operation: str
    by_request: bool
    resource_id: str
    kind: str
    start_s: int
    duration_s: int

    @property
    def request_id(self) -> str | None:
        return f"req-{self.index}" if self.by_request else None

    @property
    def has_start(self) -> bool:
        return self.kind in WITH_START

    @property
    def has_end(self) -> bool:
        return self.kind != "abandoned"

    @property
    def failed(self) -> bool:
        return self.kind in ("failed", "error_only")

    @property
    def start_resource_id(self) -> str | None:
        """A create's start has no resource id yet, unless there is no request id to join by."""
        return None if self.operation == "create" and self.by_request else self.resource_id

    @property
    def started_at(self) -> datetime | None:
        return at(self.start_s) if self.has_start else None

    @property
    def ended_at(self) -> datetime | None:
        return at(self.start_s + self.duration_s) if self.has_end else None

    def events(self) -> list[Notification]:
        common = dict(
            resource_type=self.resource_type, operation=self.operation, request_id=self.request_id
        )
        start = note(
            f"m{self.index}-start", Phase.START, self.start_s, resource_id=self.start_resource_id,
            payload={"new_flavor_id": "7"} if self.operation == "resize_flavor" else {}, **common,
        )
        end_s = self.start_s + self.duration_s
        end = note(f"m{self.index}-end", Phase.END, end_s, resource_id=self.resource_id, **common)
        error = note(f"m{self.index}-error", Phase.ERROR, end_s, resource_id=self.resource_id,
                     **common)
        return {
            "succeeded": [start, end],
            "failed": [start, error],
            "abandoned": [start],
            "end_only": [end],
            "error_only": [error],
        }[self.kind]

    def check(self, record: OperationCompleted, errors: dict[str, OperationError]) -> None:
        """The record this operation must produce, whatever the arrival order."""
        assert record.outcome is (
            Outcome.ABANDONED if not self.has_end
            else Outcome.FAILED if self.failed else Outcome.SUCCEEDED
        )
        assert record.resource_id == (self.resource_id if self.has_end else self.start_resource_id)
        assert record.duration_seconds == (
            float(self.duration_s) if self.has_start and self.has_end else None)
        assert record.start_publisher == ("api.host1" if self.has_start else None)
        assert record.end_publisher == ("taskmanager.host2" if self.has_end else None)
        assert (record.start_message_id is not None) is self.has_start
        assert (record.end_message_id is not None) is self.has_end
        assert record.tenant_id == "tenant-1" and record.user_id == "user-1"
        if self.operation == "resize_flavor" and self.has_start:
            assert record.flavor_id == "7"
        if self.failed:
            assert record.exception_class == ERROR_CLASS
            error = errors[record.record_id]
            assert error.exception_last_line == LAST_LINE
            assert error.occurred_at == record.ended_at
            assert error.resource_id == self.resource_id
        else:
            assert record.exception_class is None
            assert record.record_id not in errors

    @property
    def subject(self) -> tuple:
        return (self.request_id, self.resource_type, self.operation,
                self.resource_id if self.has_end else self.start_resource_id,
                self.started_at, self.ended_at)


def subject_of(record: OperationCompleted) -> tuple:
    return (record.request_id, record.resource_type, record.operation, record.resource_id,
            record.started_at, record.ended_at)


def durations(draw: st.DrawFn, resource_type: ResourceType, operation: str) -> int:
    """Any duration up to the operation's timeout, the bound included."""
    timeout_s = int(DEFAULT_POLICY.timeout(resource_type, operation).total_seconds())
    return draw(st.one_of(st.integers(0, timeout_s), st.just(timeout_s)))


@st.composite
def planned_operations(draw: st.DrawFn) -> list[PlannedOperation]:
    """Independent operations joined by request id, and on a few resources without request ids
    a sequence of operations of one kind, each beginning after the previous one ended."""
    planned: list[PlannedOperation] = []
    for _ in range(draw(st.integers(0, 5))):
        resource_type, operation = draw(st.sampled_from(REQUEST_KEYED))
        index = len(planned)
        planned.append(PlannedOperation(
            index, resource_type, operation, True, f"res-{index}",
            kind=draw(st.sampled_from(KINDS)),
            start_s=draw(st.integers(0, 8 * 3600)),
            duration_s=durations(draw, resource_type, operation),
        ))
    for sequence in range(draw(st.integers(0 if planned else 1, 2))):
        resource_type, operation = draw(st.sampled_from(RESOURCE_KEYED))
        start_s = draw(st.integers(0, 3600))
        previous = None
        for _ in range(draw(st.integers(1, 3))):
            # After an abandoned start, an end without start would be its end.
            kind = draw(st.sampled_from(WITH_START if previous == "abandoned" else KINDS))
            duration_s = durations(draw, resource_type, operation)
            planned.append(PlannedOperation(
                len(planned), resource_type, operation, False, f"seq-{sequence}",
                kind, start_s, duration_s,
            ))
            last_s = start_s + (duration_s if kind != "abandoned" else 0)
            start_s = last_s + SKEW_S + draw(st.integers(1, 3600))
            previous = kind
    return planned


def check_truth(planned: list[PlannedOperation], outputs: list[Output]) -> None:
    completed, errors = by_id(outputs)
    assert len(completed) == len(planned)
    assert len(errors) == sum(p.failed for p in planned)
    by_subject = {subject_of(r): r for r in completed.values()}
    for p in planned:
        p.check(by_subject[p.subject], errors)


def lateness_bounded(events: list[Notification], delays: list[int]) -> list[Notification]:
    """Arrival order when each event arrives ``delay`` seconds after it occurred."""
    order = sorted(range(len(events)),
                   key=lambda i: (events[i].occurred_at + timedelta(seconds=delays[i]), i))
    return [events[i] for i in order]


LATENESS = DEFAULT_POLICY.allowed_lateness


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planned=planned_operations(), data=st.data())
def test_any_arrival_within_the_lateness_gives_the_in_order_records(planned, data):
    events = [n for p in planned for n in p.events()]
    copies = data.draw(st.lists(st.sampled_from(events), max_size=len(events)), label="copies")
    arriving = events + copies
    max_delay = int(LATENESS.total_seconds()) - 1
    delays = data.draw(
        st.lists(st.integers(0, max_delay), min_size=len(arriving), max_size=len(arriving)),
        label="delays",
    )
    in_order = run(sorted(events, key=lambda n: n.occurred_at))
    shuffled = run(lateness_bounded(arriving, delays))
    assert by_id(shuffled) == by_id(in_order)
    check_truth(planned, shuffled)


@settings(max_examples=100, deadline=None)
@given(planned=planned_operations(), data=st.data())
def test_any_permutation_and_duplication_gives_the_same_records(planned, data):
    """With the lateness wider than the whole scenario, every order is in time."""
    policy = PairingPolicy(allowed_lateness=timedelta(days=2), retention=timedelta(days=2))
    events = [n for p in planned for n in p.events()]
    arriving = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events)))))
    in_order = run(sorted(events, key=lambda n: n.occurred_at), policy)
    assert by_id(run(arriving, policy)) == by_id(in_order)
    check_truth(planned, in_order)


# --- single behaviours -----------------------------------------------------------------------

BY_REQUEST = dict(request_id="req-1")


def create_events(duration_s: float = 600) -> tuple[Notification, Notification]:
    start = note("s", Phase.START, 0, payload={"flavor_id": "2", "volume_size": 2,
                                               "datastore": "mysql", "datastore_version": "8.0"},
                 **BY_REQUEST)
    end = note("e", Phase.END, duration_s, resource_id="inst-1",
               payload={"flavor_id": "2", "instance_id": "inst-1"}, **BY_REQUEST)
    return start, end


def test_start_then_end_is_reported_at_once_with_the_end_resource_id():
    start, end = create_events()
    state, records = step(None, start)
    assert records == []
    state, records = step(state, end)
    [record] = records
    assert record.outcome is Outcome.SUCCEEDED
    assert record.resource_id == "inst-1" and record.request_id == "req-1"
    assert record.duration_seconds == 600.0
    assert (record.flavor_id, record.volume_size_gb, record.datastore, record.datastore_version) \
        == ("2", 2, "mysql", "8.0")
    assert (record.start_message_id, record.end_message_id) == ("s", "e")
    assert state is not None and state.is_closed


def test_end_before_start_waits_for_the_start():
    start, end = create_events()
    state, records = step(None, end)
    assert records == []
    # Event time moves on, but not past the end's wait for its start.
    state, records = expire(state, end.occurred_at + DEFAULT_POLICY.max_clock_skew + LATENESS)
    assert records == []
    state, records = step(state, start)
    [record] = records
    assert record.started_at == start.occurred_at and record.duration_seconds == 600.0


def test_end_whose_start_never_comes_is_reported_with_duration_unknown():
    _, end = create_events()
    state, _ = step(None, end)
    assert state is not None
    due = deadline(state)
    assert due == end.occurred_at + DEFAULT_POLICY.max_clock_skew + LATENESS
    assert expire(state, due) == (state, [])
    state, [record] = expire(state, due + timedelta(microseconds=1))
    assert record.outcome is Outcome.SUCCEEDED
    assert record.started_at is None and record.duration_seconds is None
    assert record.ended_at == end.occurred_at and record.resource_id == "inst-1"
    # The start arriving afterwards is too late: absorbed, nothing re-emitted.
    start, _ = create_events()
    assert step(state, start) == (state, [])


def test_start_without_end_is_abandoned_after_the_operation_timeout():
    start, _ = create_events()
    state, _ = step(None, start)
    timeout = DEFAULT_POLICY.timeout(ResourceType.INSTANCE, "create")
    assert timeout == timedelta(hours=2)
    assert deadline(state) == start.occurred_at + timeout + LATENESS
    assert expire(state, deadline(state))[1] == []
    state, [record] = expire(state, deadline(state) + timedelta(seconds=1))
    assert record.outcome is Outcome.ABANDONED
    assert record.ended_at is None and record.duration_seconds is None
    assert record.resource_id is None  # a create's start does not know it yet


def test_end_later_than_the_timeout_does_not_rescue_an_abandoned_start():
    start, end = create_events(duration_s=2 * 3600 + 1)
    for events in ([start, end], [end, start]):
        assert [r.outcome for r in run(events)] == [Outcome.ABANDONED]


def test_error_is_reported_as_failed_and_on_trove_errors():
    start, _ = create_events()
    error = note("x", Phase.ERROR, 30, resource_id="inst-1", **BY_REQUEST)
    _, records = step(step(None, start)[0], error)
    completed, failure = records
    assert isinstance(completed, OperationCompleted) and isinstance(failure, OperationError)
    assert completed.outcome is Outcome.FAILED and completed.exception_class == ERROR_CLASS
    assert failure.record_id == completed.record_id
    assert failure.exception_last_line == LAST_LINE
    assert (failure.message_id, failure.publisher_id) == ("x", "taskmanager.host2")


def test_error_wins_over_an_end_when_both_wait_for_the_start():
    start, end = create_events()
    error = note("x", Phase.ERROR, 30, resource_id="inst-1", **BY_REQUEST)
    records = run([end, error, start])
    assert [type(r) for r in records] == [OperationCompleted, OperationError]
    assert records[0].outcome is Outcome.FAILED


def test_duplicates_and_late_copies_change_nothing():
    start, end = create_events()
    state, _ = step(None, start)
    assert step(state, start) == (state, [])
    closed, [_] = step(state, end)
    for copy in (start, end, replace(end, message_id="another-copy")):
        assert step(closed, copy) == (closed, [])


def test_tombstone_is_forgotten_after_the_retention():
    start, end = create_events()
    closed, _ = step(step(None, start)[0], end)
    assert closed.closed_at == end.occurred_at
    assert deadline(closed) == end.occurred_at + DEFAULT_POLICY.retention
    assert expire(closed, deadline(closed)) == (closed, [])
    assert expire(closed, deadline(closed) + timedelta(seconds=1)) == (None, [])


def test_record_id_is_uuid5_of_the_join_key_whichever_events_arrived():
    start, end = create_events()
    namespace = uuid.UUID("6f0d3c1e-8a51-5b5e-9a7c-2f1d0c9b8e41")
    expected = str(uuid.uuid5(namespace, "req:req-1:instance:create"))
    paired = run([start, end])
    abandoned = run([start])
    orphan = run([end])
    assert {r.record_id for r in paired + abandoned + orphan} == {expected}


def test_point_and_unkeyed_events_are_not_paired():
    exists = note("p", Phase.POINT, 0, operation="exists", resource_id="inst-1")
    unkeyed = note("u", Phase.START, 0, operation="restart")
    for n in (exists, unkeyed):
        assert join_key(n) is None
        assert step(None, n) == (None, [])


def test_join_keys():
    assert join_key(note("a", Phase.START, 0, request_id="r", resource_id="i")) \
        == "req:r:instance:create"
    assert join_key(note("a", Phase.END, 0, operation="reboot", resource_id="i")) \
        == "res:instance:i:reboot"


# --- resource keys: the same operation of one resource, again and again -----------------------

def reboot(message_id: str, phase: Phase, seconds: float) -> Notification:
    return note(message_id, phase, seconds, operation="reboot", resource_id="inst-9")


def test_resource_key_records_go_out_once_event_time_has_passed_them():
    start, end = reboot("s1", Phase.START, 0), reboot("e1", Phase.END, 60)
    state, records = step(step(None, end)[0], start)
    assert records == [] and [s.message_id for s in state.pending] == ["s1", "e1"]
    assert deadline(state) == start.occurred_at + LATENESS
    state, [record] = expire(state, end.occurred_at + LATENESS + timedelta(seconds=1))
    assert (record.outcome, record.duration_seconds) == (Outcome.SUCCEEDED, 60.0)
    assert state.is_closed and state.floor == end.occurred_at
    assert step(state, end) == (state, [])  # a copy of what was reported


def test_successive_operations_on_a_resource_key_get_their_own_records():
    events = [reboot("s1", Phase.START, 0), reboot("e1", Phase.END, 60),
              reboot("s2", Phase.START, 3600), reboot("e2", Phase.END, 3700)]
    for arriving in (events, [events[1], events[0], events[3], events[2]],
                     [events[0], events[1], events[3], events[2]]):
        records = run(arriving + events)
        assert [(r.outcome, r.started_at, r.duration_seconds) for r in records] == [
            (Outcome.SUCCEEDED, at(0), 60.0), (Outcome.SUCCEEDED, at(3600), 100.0)]
        assert len({r.record_id for r in records}) == 2


def test_a_newer_start_on_a_resource_key_abandons_the_open_one():
    s1, s2, e2 = (reboot("s1", Phase.START, 0), reboot("s2", Phase.START, 500),
                  reboot("e2", Phase.END, 560))
    for arriving in ([s1, s2, e2], [e2, s2, s1], [s2, e2, s1, s2]):
        records = run(arriving)
        assert [(r.outcome, r.started_at, r.ended_at) for r in records] == [
            (Outcome.ABANDONED, at(0), None), (Outcome.SUCCEEDED, at(500), at(560))]


# --- policy, state form, helpers ---------------------------------------------------------------

def test_timeouts_by_resource_type_then_operation_then_default():
    policy = PairingPolicy(timeouts={"backup.create": timedelta(hours=6),
                                     "create": timedelta(hours=2)},
                           default_timeout=timedelta(minutes=30))
    assert policy.timeout(ResourceType.BACKUP, "create") == timedelta(hours=6)
    assert policy.timeout(ResourceType.CLUSTER, "create") == timedelta(hours=2)
    assert policy.timeout(ResourceType.INSTANCE, "restart") == timedelta(minutes=30)
    with pytest.raises(ValueError):
        PairingPolicy(allowed_lateness=timedelta(hours=2), retention=timedelta(hours=1))


def test_state_round_trips_through_its_dict_form():
    start, end = create_events()
    error = note("x", Phase.ERROR, 30, resource_id="inst-1", **BY_REQUEST)
    states = [
        step(None, start)[0],
        step(step(None, end)[0], error)[0],
        step(step(None, start)[0], end)[0],
        step(step(None, reboot("s1", Phase.START, 0))[0], reboot("e1", Phase.END, 5))[0],
    ]
    for state in states:
        assert OpenOperation.from_dict(state.to_dict()) == state


@pytest.mark.parametrize("text, expected", [
    (TRACEBACK, LAST_LINE),
    (TRACEBACK.replace("No valid host was found.", "first\nsecond"),
     "trove.common.exception.TroveError: Server creation failed: first"),
    ("Swift is unreachable\n", "Swift is unreachable"),
    ("", None),
    (None, None),
])
def test_exception_last_line(text, expected):
    assert exception_last_line(text) == expected


# --- failure counts ---------------------------------------------------------------------------

def failure(record_id: str, hour: int, tenant: str | None = "tenant-1") -> OperationError:
    return OperationError(
        record_id=record_id, resource_type=ResourceType.INSTANCE, operation="create",
        occurred_at=at(hour * 3600 + 120), message_id=f"m-{record_id}", publisher_id="tm",
        tenant_id=tenant, exception_class=ERROR_CLASS,
    )


def test_failure_key():
    assert failure_key(failure("a", 0)) == FailureKey("tenant-1", "instance", "create", ERROR_CLASS)
    assert failure_key(failure("a", 0, tenant=None)).table_key \
        == f"unknown|instance|create|{ERROR_CLASS}"


def test_error_counts_per_hour_and_in_total_without_repeats():
    counts = None
    for record_id, hour in (("a", 0), ("b", 0), ("c", 1), ("a", 0)):
        new = count_failure(counts, failure(record_id, hour))
        if record_id == "a" and counts is not None:
            assert new is counts  # a redelivered record is not counted twice
        counts = new
    assert counts.total == 3
    assert counts.hourly == {at(0).isoformat(): 2, at(3600).isoformat(): 1}
    assert ErrorCounts.from_dict(counts.to_dict()) == counts


def test_error_counts_keep_only_recent_hours():
    counts = None
    for hour in range(5):
        counts = count_failure(counts, failure(f"r{hour}", hour), keep_hours=2)
    counts = count_failure(counts, failure("old", 0), keep_hours=2)
    assert counts.total == 6
    assert counts.hourly == {at(3 * 3600).isoformat(): 1, at(4 * 3600).isoformat(): 1}
