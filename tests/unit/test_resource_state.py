"""Resource state: any order and any duplication of a resource's events gives the same state."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trovemeter.model import Notification, Phase, ResourceState, ResourceStatus, ResourceType
from trovemeter.resource_state import TrackedResource, apply, confirmed_row

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
INSTANCE = "inst-1"
S = ResourceStatus


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(minutes: float) -> str:
    """A payload time as Trove writes it: UTC, no zone, whole seconds."""
    return at(minutes).replace(tzinfo=None).isoformat(timespec="seconds")


def note(
    message_id: str,
    event_type: str,
    operation: str,
    phase: Phase,
    minutes: float,
    payload: dict[str, Any] | None = None,
    *,
    resource_type: ResourceType = ResourceType.INSTANCE,
    resource_id: str | None = INSTANCE,
) -> Notification:
    """A normalised notification, built directly (the parser is tested elsewhere)."""
    return Notification(
        message_id=message_id,
        event_type=event_type,
        resource_type=resource_type,
        operation=operation,
        phase=phase,
        publisher_id="taskmanager.host1",
        priority="INFO",
        occurred_at=at(minutes),
        request_id=None if phase is Phase.POINT else f"req-{operation}",
        resource_id=resource_id,
        tenant_id="tenant-1",
        user_id="user-1",
        payload=payload or {},
    )


def usage(message_id: str, action: str, operation: str, minutes: float, state: str,
          flavor: tuple[str, str], volume: int, **extra: Any) -> Notification:
    payload = {
        "created_at": iso(0), "launched_at": iso(4), "instance_id": INSTANCE,
        "instance_name": "db-prod-1", "instance_type_id": flavor[0], "instance_type": flavor[1],
        "state": state, "tenant_id": "tenant-1", "volume_size": volume, **extra,
    }
    return note(message_id, f"trove.instance.{action}", operation, Phase.POINT, minutes, payload)


def dbaas(message_id: str, wire_name: str, operation: str, phase: Phase, minutes: float,
          **payload: Any) -> Notification:
    return note(message_id, f"dbaas.instance_{wire_name}.{phase.value}", operation, phase,
                minutes, {"instance_id": INSTANCE, **payload})


SMALL, MEDIUM = ("2", "m1.small"), ("3", "m1.medium")
CREATED = {"name": "db-prod-1", "flavor_id": "2", "datastore": "mysql",
           "datastore_version": "8.0", "volume_size": 2}

# One instance's life, in the order it happened.
LIFECYCLE = [
    note("create-start", "dbaas.instance_create.start", "create", Phase.START, 0,
         dict(CREATED), resource_id=None),
    dbaas("create-end", "create", "create", Phase.END, 4, **CREATED),
    usage("usage-create", "create", "create", 4, "active", SMALL, 2),
    usage("exists-1", "exists", "exists", 60, "active", SMALL, 2),
    dbaas("resize-start", "resize_instance", "resize_flavor", Phase.START, 70, new_flavor_id="3"),
    dbaas("resize-end", "resize_instance", "resize_flavor", Phase.END, 75),
    usage("modify-flavor", "modify_flavor", "resize_flavor", 75, "active", MEDIUM, 2),
    dbaas("volume-start", "resize_volume", "resize_volume", Phase.START, 80, new_size=5),
    dbaas("volume-end", "resize_volume", "resize_volume", Phase.END, 82),
    usage("modify-volume", "modify_volume", "resize_volume", 82, "active", MEDIUM, 5),
    dbaas("restart-start", "restart", "restart", Phase.START, 90),
    dbaas("restart-end", "restart", "restart", Phase.END, 91),
    usage("exists-2", "exists", "exists", 120, "active", MEDIUM, 5),
    dbaas("delete-start", "delete", "delete", Phase.START, 130),
    dbaas("delete-end", "delete", "delete", Phase.END, 131),
    usage("usage-delete", "delete", "delete", 131, "deleted", MEDIUM, 5, deleted_at=iso(131)),
    # An audit of the last period, stamped after the delete: it must not revive the instance.
    usage("exists-3", "exists", "exists", 135, "active", MEDIUM, 5),
]


def fold(events: list[Notification]) -> TrackedResource | None:
    """What the agent does, the state going through its dict form as in a Faust table."""
    stored: dict | None = None
    for n in events:
        tracked = TrackedResource.from_dict(stored) if stored is not None else None
        new = apply(tracked, n)
        if new is not tracked:
            assert new is not None
            stored = new.to_dict()
    return TrackedResource.from_dict(stored) if stored is not None else None


def test_lifecycle_in_order():
    tracked = fold(LIFECYCLE)
    assert tracked is not None
    assert tracked.state == ResourceState(
        resource_id=INSTANCE,
        resource_type=ResourceType.INSTANCE,
        last_event_type="trove.instance.delete",  # the audits stamped later do not count
        last_event_at=at(131),
        last_message_id="usage-delete",
        tenant_id="tenant-1",
        status=S.DELETED,
        flavor_id="3",
        flavor_name="m1.medium",
        volume_size_gb=5,
        name="db-prod-1",
        datastore="mysql",
        datastore_version="8.0",
        created_at=at(0),
        launched_at=at(4),
        deleted_at=at(131),
    )


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_order_and_duplication_of_a_lifecycle_gives_the_same_state(data):
    kept = data.draw(
        st.lists(st.sampled_from(LIFECYCLE), min_size=1, unique_by=lambda n: n.message_id)
    )
    in_order = sorted(kept, key=LIFECYCLE.index)
    copies = data.draw(st.lists(st.sampled_from(kept), max_size=len(kept)))
    shuffled = data.draw(st.permutations(kept + copies))
    assert fold(shuffled) == fold(in_order)


# Fuzz: arbitrary reports about one instance at arbitrary (often equal) times.
@st.composite
def instance_events(draw: st.DrawFn) -> list[Notification]:
    events = []
    for index in range(draw(st.integers(1, 8))):
        minutes = draw(st.integers(0, 5))  # few distinct times: ties are common
        kind = draw(st.sampled_from(["usage", "start", "end", "error"]))
        operation = draw(
            st.sampled_from(["create", "delete", "resize_flavor", "restart", "exists"])
        )
        payload = {
            key: draw(st.sampled_from(values))
            for key, values in (("instance_type_id", ["2", "3"]), ("volume_size", [1, 5]),
                                ("state", ["active", "error", "build"]),
                                ("created_at", [iso(-5), iso(-3)]), ("name", ["a", "b"]))
            if draw(st.booleans())
        }
        if kind == "usage":
            events.append(note(f"m{index}", f"trove.instance.{operation}", operation,
                               Phase.POINT, minutes, payload))
        else:
            phase = Phase(kind)
            events.append(note(f"m{index}", f"instance.{operation}.{kind}", operation, phase,
                               minutes, payload))
    return events


@settings(max_examples=200, deadline=None)
@given(events=instance_events(), data=st.data())
def test_any_order_of_arbitrary_reports_gives_the_same_state(events, data):
    shuffled = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events)))))
    assert fold(shuffled) == fold(events)


# --- single behaviours -----------------------------------------------------------------------

def by_id(message_id: str) -> Notification:
    return next(n for n in LIFECYCLE if n.message_id == message_id)


def test_create_start_without_resource_id_creates_nothing():
    assert apply(None, by_id("create-start")) is None


def test_statuses_through_the_life():
    expected = {
        "create-end": S.ACTIVE, "resize-start": S.RESIZING, "resize-end": S.ACTIVE,
        "volume-start": S.RESIZING, "restart-start": S.REBOOTING, "restart-end": S.ACTIVE,
        "delete-start": S.DELETING, "delete-end": S.DELETED,
    }
    tracked = None
    for n in LIFECYCLE:
        tracked = apply(tracked, n)
        if n.message_id in expected:
            assert tracked.state.status is expected[n.message_id], n.message_id


def test_resize_start_does_not_change_the_flavor_before_it_is_done():
    tracked = fold([by_id("create-end"), by_id("resize-start")])
    assert (tracked.state.status, tracked.state.flavor_id) == (S.RESIZING, "2")
    tracked = fold([by_id("create-end"), by_id("resize-start"), by_id("modify-flavor")])
    assert (tracked.state.status, tracked.state.flavor_id) == (S.ACTIVE, "3")


def test_an_older_event_does_not_overwrite_a_newer_status():
    tracked = fold([by_id("resize-start"), by_id("exists-1")])
    assert tracked.state.status is S.RESIZING
    assert tracked.state.last_message_id == "resize-start"


def test_errors():
    create_error = dbaas("create-error", "create", "create", Phase.ERROR, 5, **CREATED)
    assert apply(None, create_error).state.status is S.ERROR
    resize_error = dbaas("resize-error", "resize_instance", "resize_flavor", Phase.ERROR, 76)
    tracked = fold([by_id("create-end"), by_id("resize-start"), resize_error])
    assert tracked.state.status is S.ACTIVE


def test_a_repeat_or_another_kind_of_resource_changes_nothing():
    tracked = apply(None, by_id("create-end"))
    assert apply(tracked, by_id("create-end")) is tracked
    backup_event = note("b", "backup.create.end", "create", Phase.END, 10,
                        resource_type=ResourceType.BACKUP)
    assert apply(tracked, backup_event) is tracked
    database_event = note("d", "dbaas.database_create.end", "create", Phase.END, 10,
                          resource_type=ResourceType.DATABASE)
    assert apply(tracked, database_event) is tracked


def test_a_newer_report_of_the_same_values_only_moves_the_report_time():
    tracked = fold(LIFECYCLE[:4])
    again = apply(tracked, usage("exists-1b", "exists", "exists", 61, "active", SMALL, 2))
    assert again is not tracked
    assert again.state.flavor_id == tracked.state.flavor_id
    assert again.reported_at["flavor_id"] == at(61)


def test_an_audit_confirming_the_state_leaves_the_row_as_it_is():
    tracked = fold(LIFECYCLE[:4])
    assert tracked.state.last_message_id == "usage-create"
    audit = usage("exists-1b", "exists", "exists", 61, "active", SMALL, 2)
    again = apply(tracked, audit)
    assert again.state is tracked.state  # the same row: nothing for trove.resources
    # ... which the worker reads straight off the row: the report times moved, nothing else.
    row = json.loads(json.dumps(tracked.to_row()))
    assert confirmed_row(row, audit) == again.to_row()
    assert confirmed_row(row, usage("exists-1", "exists", "exists", 60, "active", SMALL, 2)) \
        is row  # a repeat: nothing moves
    assert confirmed_row(row, usage("exists-1c", "exists", "exists", 61, "active", MEDIUM,
                                    2)) is None  # a new flavor: apply decides


_STATUS_TEXT = {ResourceStatus.ACTIVE: "active", ResourceStatus.BUILDING: "build",
                ResourceStatus.ERROR: "error", ResourceStatus.DELETED: "deleted",
                ResourceStatus.RESIZING: "resize", ResourceStatus.REBOOTING: "reboot"}


@settings(max_examples=1500, deadline=None)
@given(events=instance_events(), data=st.data())
def test_an_audit_read_off_the_row_gives_what_apply_gives(events, data):
    """``confirmed_row`` (the worker's way for an audit that confirms the state) against
    ``apply`` on the state read from the same row, for audits that mostly repeat the state's
    values at one of the few times the events use."""
    if data.draw(st.integers(0, 3)) == 0:  # a resource known only from its audits
        events = [n for n in events if n.event_type == "trove.instance.exists"] or [
            usage("exists-0", "exists", "exists", 2, "active", SMALL, 2)]
    tracked = None
    for n in events:
        new = apply(tracked, n)
        tracked = tracked if new is tracked else through_row(new)
    if tracked is None:
        return
    state = tracked.state
    payload: dict[str, Any] = {}
    for key, current, others in (
            ("instance_type_id", state.flavor_id, ["2", "3"]),
            ("volume_size", state.volume_size_gb, [1, 5]),
            ("state", _STATUS_TEXT.get(state.status), ["active", "error", "deleted"]),
            ("name", state.name, ["a", "b"]),
            ("created_at", None if state.created_at is None else iso(
                (state.created_at - T0) / timedelta(minutes=1)), [iso(-5), iso(-3)]),
            ("deleted_at", None, [iso(3)])):
        value = data.draw(st.sampled_from([current, current, None, *others]))
        if value is not None:
            payload[key] = value
    audit = note("audit", "trove.instance.exists", "exists", Phase.POINT,
                 data.draw(st.integers(0, 6)), payload)
    row = json.loads(json.dumps(tracked.to_row()))
    loaded = TrackedResource.from_row(row)
    general = apply(loaded, audit)
    fast = confirmed_row(row, audit)
    if fast is row:
        assert general is loaded
    elif fast is not None:
        assert general is not loaded and general.state == loaded.state
        assert json.dumps(fast) == json.dumps(general.to_row())


def test_audits_are_the_last_event_only_of_a_resource_known_from_nothing_else():
    first = usage("exists-1", "exists", "exists", 60, "active", SMALL, 2)
    newer = usage("exists-2", "exists", "exists", 120, "active", SMALL, 2)
    only_audits = fold([newer, first])
    assert (only_audits.state.last_event_type, only_audits.state.last_message_id) == (
        "trove.instance.exists", "exists-2")
    # Any other event replaces them, however old; a newer audit does not replace it.
    with_create = fold([newer, by_id("create-end"), first])
    assert with_create.state.last_message_id == "create-end"
    assert with_create.state.last_event_at == at(4)
    # ... while the audits' reports still count: the newest status, flavor, volume size.
    resized = fold([by_id("create-end"), usage("exists-x", "exists", "exists", 60, "active",
                                                MEDIUM, 5)])
    assert (resized.state.flavor_id, resized.state.volume_size_gb) == ("3", 5)
    assert resized.state.last_message_id == "create-end"


def test_backup_life():
    backup = dict(resource_type=ResourceType.BACKUP, resource_id="bk-1")
    payload = {"id": "bk-1", "name": "nightly", "instance_id": INSTANCE,
               "created": iso(10), "size": None, "status": "NEW", "tenant_id": "tenant-1"}
    events = [
        note("b1", "backup.create.start", "create", Phase.START, 10, payload, **backup),
        note("b2", "backup.create.end", "create", Phase.END, 14,
             {**payload, "size": 0.25, "status": "COMPLETED"}, **backup),
        note("b3", "backup.delete.end", "delete", Phase.END, 100, payload, **backup),
    ]
    tracked = fold(events)
    state = tracked.state
    assert (state.status, state.size_gb, state.name) == (S.DELETED, 0.25, "nightly")
    assert (state.created_at, state.launched_at, state.deleted_at) == (at(10), None, at(100))
    assert fold(events[:2]).state.status is S.ACTIVE


def test_cluster_from_design_note_payload():
    payload = {
        "id": "cl-1", "name": "big", "cluster_size": 2, "created": iso(0),
        "datastore": {"type": "mongodb", "version": "4.0"},
        "instances": [{"instance_id": "i-b", "name": "x"}, {"instance_id": "i-a", "name": "y"}],
    }
    event = note("c1", "cluster.create.end", "create", Phase.END, 20, payload,
                 resource_type=ResourceType.CLUSTER, resource_id="cl-1")
    state = apply(None, event).state
    assert (state.status, state.cluster_size, state.instance_ids) == (S.ACTIVE, 2, ["i-a", "i-b"])
    assert (state.datastore, state.datastore_version, state.name) == ("mongodb", "4.0", "big")
    assert (state.created_at, state.launched_at) == (at(0), at(20))


def test_round_trip_through_the_dict_form():
    tracked = None
    for n in LIFECYCLE[1:]:
        tracked = apply(tracked, n)
        assert TrackedResource.from_dict(tracked.to_dict()) == tracked


def through_row(tracked: TrackedResource) -> TrackedResource:
    """The row form as a compact table keeps it: JSON text and back."""
    return TrackedResource.from_row(json.loads(json.dumps(tracked.to_row())))


def test_round_trip_through_the_row_form():
    tracked = None
    for n in LIFECYCLE[1:]:
        tracked = apply(tracked, n)
        assert through_row(tracked) == tracked
    cluster = apply(None, note("c1", "cluster.create.end", "create", Phase.END, 20,
                               {"id": "cl-1", "cluster_size": 2, "instances": [
                                   {"instance_id": "i-b"}, {"instance_id": "i-a"}]},
                               resource_type=ResourceType.CLUSTER, resource_id="cl-1"))
    backup = apply(None, note("b2", "backup.create.end", "create", Phase.END, 14,
                              {"id": "bk-1", "size": 0.25, "tenant_id": "tenant-1"},
                              resource_type=ResourceType.BACKUP, resource_id="bk-1"))
    for tracked in (cluster, backup):
        assert through_row(tracked) == tracked


@settings(max_examples=100, deadline=None)
@given(events=instance_events(), data=st.data())
def test_folding_through_the_row_form_gives_the_same_state(events, data):
    shuffled = data.draw(st.permutations(events))
    tracked = None
    for n in shuffled:
        new = apply(tracked, n)
        tracked = tracked if new is tracked else through_row(new)
    assert tracked == fold(events)


@settings(max_examples=200, deadline=None)
@given(events=instance_events(), data=st.data())
def test_a_row_read_state_writes_the_row_it_would_write_without_its_loaded_row(events, data):
    """``to_row`` reuses the row a state was read from while ``apply`` keeps the state: the
    same row as converting the state's fields, after any event (audits keep the state, other
    events change it)."""
    tracked = None
    for n in data.draw(st.permutations(events)):
        read = None if tracked is None else through_row(tracked)
        tracked = apply(read, n)
        if tracked is not None:
            assert tracked.to_row() == TrackedResource(tracked.state, tracked.reported_at).to_row()
