"""The tally behind the demo's live view and the dashboard, and the live view's frame."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from trovemeter.demo_view import LiveState, clip, progress_line, render_frame
from trovemeter.model import (
    DeadLetter,
    MeterType,
    OperationCompleted,
    OperationError,
    Outcome,
    RejectReason,
    ResourceState,
    ResourceStatus,
    ResourceType,
    UsageRecord,
)
from trovemeter.pipeline_tally import PipelineTally, percentile, usage_totals

T0 = datetime(2026, 11, 2, tzinfo=UTC)


def op(record_id: str, outcome: Outcome, duration: float | None, operation: str = "create",
       tenant: str = "t1") -> OperationCompleted:
    return OperationCompleted(record_id=record_id, outcome=outcome,
                              resource_type=ResourceType.INSTANCE, operation=operation,
                              tenant_id=tenant, started_at=T0,
                              ended_at=None if duration is None else T0 + timedelta(seconds=duration),
                              duration_seconds=duration)


def error(record_id: str, exception_class: str, at: int = 0) -> OperationError:
    return OperationError(record_id=record_id, resource_type=ResourceType.INSTANCE,
                          operation="create", occurred_at=T0 + timedelta(seconds=at),
                          message_id=f"m-{record_id}", publisher_id="tm", tenant_id="t1",
                          exception_class=exception_class, error_message=f"boom {record_id}")


def usage(record_id: str, version: int, quantity: float, hour: int = 0,
          meter: str = "instance.seconds", flavor: str | None = "2") -> UsageRecord:
    start = T0 + timedelta(hours=hour)
    return UsageRecord(record_id=record_id, version=version, tenant_id="t1",
                       resource_type=ResourceType.INSTANCE, resource_id="i1", meter=meter,
                       meter_type=MeterType.DELTA, unit="s", quantity=quantity,
                       window_start=start, window_end=start + timedelta(hours=1),
                       derived_from="m", flavor_id=flavor, flavor_name="m1.small")


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0], 95) == 1.0
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 50) == 10.0 and percentile(values, 95) == 19.0


def test_operations_are_counted_once_per_record_id() -> None:
    tally = PipelineTally()
    tally.add_all([op("a", Outcome.SUCCEEDED, 10.0), op("a", Outcome.SUCCEEDED, 10.0),
                   op("b", Outcome.FAILED, 30.0), op("c", Outcome.ABANDONED, None),
                   op("d", Outcome.SUCCEEDED, 20.0, operation="delete")])
    snap = tally.snapshot()
    assert snap["operations"]["total"] == 4
    assert snap["operations"]["by_outcome"] == {"succeeded": 2, "failed": 1, "abandoned": 1}
    create = next(r for r in snap["operations"]["by_operation"] if r["name"] == "instance.create")
    assert (create["count"], create["succeeded"], create["failed"], create["abandoned"]) == \
        (3, 1, 1, 1)
    assert create["p50_s"] == 10.0 and create["p95_s"] == 30.0
    assert [r["outcome"] for r in snap["operations"]["recent"]] == \
        ["succeeded", "failed", "abandoned", "succeeded"]
    assert tally.operation_counts()[("instance", "create", "failed")] == 1


def test_errors_group_by_operation_and_exception() -> None:
    tally = PipelineTally()
    tally.add_all([error("a", "X", 1), error("b", "X", 5), error("b", "X", 5), error("c", "Y")])
    snap = tally.snapshot()["errors"]
    assert snap["total"] == 3
    assert snap["top"][0] == {"operation": "instance.create", "exception_class": "X", "count": 2,
                              "last_at": (T0 + timedelta(seconds=5)).isoformat(),
                              "last_message": "boom b", "tenants": 1}
    assert tally.failure_counts()[("t1", "instance", "create", "X")] == 2


def test_resources_keep_the_newest_state() -> None:
    def state(status: ResourceStatus, at: int) -> ResourceState:
        return ResourceState(resource_id="i1", resource_type=ResourceType.INSTANCE,
                             last_event_type="x", last_event_at=T0 + timedelta(seconds=at),
                             last_message_id="m", status=status)

    tally = PipelineTally()
    tally.add_all([state(ResourceStatus.ACTIVE, 10), state(ResourceStatus.BUILDING, 5)])
    assert tally.snapshot()["resources"] == {"total": 1, "by_type": {"instance": {"active": 1}}}
    # A resource known only from audits: the first row with another event wins, though older.
    audited = replace(state(ResourceStatus.ACTIVE, 20), last_event_type="trove.instance.exists")
    tally = PipelineTally()
    tally.add_all([audited, state(ResourceStatus.DELETED, 15), audited])
    assert tally.snapshot()["resources"] == {"total": 1, "by_type": {"instance": {"deleted": 1}}}


def test_usage_keeps_the_highest_version_and_sums_per_flavor() -> None:
    tally = PipelineTally()
    assert tally.snapshot()["usage"] is None
    tally.add_all([usage("u1", 2, 1800.0), usage("u1", 1, 3600.0), usage("u2", 1, 3600.0, 1),
                   usage("u3", 1, 7200.0, 2, meter="volume.gb_seconds", flavor=None)])
    totals = tally.usage_by_tenant()["t1"]
    assert totals.instance_seconds == {"2": 5400.0} and totals.volume_gb_seconds == 7200.0
    # The window filter keeps records whose window starts in [from, to).
    within = usage_totals(tally.usage.values(), T0, T0 + timedelta(hours=1))["t1"]
    assert within.instance_seconds == {"2": 1800.0} and within.volume_gb_seconds == 0
    row = tally.snapshot()["usage"]["tenants"][0]
    assert row["instance_hours"] == 1.5 and row["instance_hours_by_flavor"] == {"m1.small": 1.5}


def test_accept_filters_and_dead_letters_count_by_reason() -> None:
    tally = PipelineTally(accept=lambda r: getattr(r, "tenant_id", "t1") == "t1")
    letter = DeadLetter(reason=RejectReason.NOT_JSON, detail="d", body=b"x", body_length=1,
                        body_sha256="s1", body_redacted=False, exchange="e", routing_key="k",
                        received_at=T0)
    tally.add_all([op("a", Outcome.SUCCEEDED, 1.0, tenant="other"), letter, letter])
    snap = tally.snapshot()
    assert snap["operations"]["total"] == 0
    assert snap["dead_letters"] == {"total": 2, "by_reason": {"not_json": 2}}
    assert tally.dead_letter_shas["s1"] == 2


def test_live_frame_renders_with_and_without_data() -> None:
    state = LiveState(run_id="r", seed=1, tenants=2, instances=3, hours=4, speed=1000.0,
                      dashboard_url=None, total=10, expected_ids=9, garbage=1)
    plain = "\n".join(render_frame(state, color=False))
    assert "no operation out of the worker yet" in plain and "not served" in plain
    tally = PipelineTally()
    tally.add_all([op("a", Outcome.SUCCEEDED, 75.0), op("b", Outcome.FAILED, 5.0),
                   error("b", "novaclient.exceptions.Forbidden"),
                   usage("u1", 1, 3600.0)])
    state.snapshot = tally.snapshot()
    state.published, state.sim_now = 5, T0
    lines = render_frame(state, color=True)
    text = "\n".join(lines)
    assert "instance.create" in text and "1m15s" in text
    assert "novaclient.exceptions.Forbidden" in text and "\x1b[" in text
    assert "t1" in text and "50%" in text
    assert "published 5/10" in progress_line(state)


def test_clip_counts_visible_characters_only() -> None:
    assert clip("abcdef", 3) == "abc\x1b[0m"
    assert clip("\x1b[32mabcdef\x1b[0m", 4) == "\x1b[32mabcd\x1b[0m"
    assert clip("\x1b[32mab\x1b[0m", 10) == "\x1b[32mab\x1b[0m"


def test_a_repeated_record_id_with_another_outcome_is_a_conflict() -> None:
    tally = PipelineTally()
    tally.add_all([op("a", Outcome.SUCCEEDED, 10.0), op("a", Outcome.SUCCEEDED, 10.0),
                   op("a", Outcome.ABANDONED, None)])
    assert tally.snapshot()["operations"]["by_outcome"]["succeeded"] == 1
    assert tally.conflicts == ["a instance.create succeeded then abandoned"]
