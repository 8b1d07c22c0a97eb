"""Accrual: random lifecycles against a second-by-second reference, corrections, idle hours,
retention, verification, and a simulated day against the simulator's billing truth."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trovemeter.accrual import (
    BACKUP_GB_SECONDS,
    EXISTS_SECONDS,
    INSTANCE_SECONDS,
    VOLUME_GB_SECONDS,
    AccrualPolicy,
    Audit,
    Change,
    Claim,
    MeteredResource,
    Step,
    advance,
    advance_fields,
    apply,
    audited_row,
    decode_state,
    encode_state,
    from_json_value,
    from_us,
    latest_versions,
    swept_hour_fields,
    swept_to,
    to_dict,
    to_row,
    verify_exists,
)
from trovemeter.accrual import (
    RecordKey,
    _alive,
    _audit_of,
    _audit_order,
    _forget_frozen,
    _frozen,
    _merge_change,
    _one_piece_usage,
    _payload_us,
    _pieced_usage,
    _with_facts,
    to_us,
)
from trovemeter.codec import encode, usage_encoder
from trovemeter.payload_values import as_text
from trovemeter.model import (
    DiscrepancyCause,
    Notification,
    Phase,
    ResourceType,
    UsageDiscrepancy,
    UsageRecord,
)

T0 = datetime(2026, 11, 2, tzinfo=UTC)
encode_usage = usage_encoder()
HOUR = timedelta(hours=1)
FLAVOR_NAMES = {"1": "m1.tiny", "2": "m1.small", "3": "m1.medium"}
ROOMY = AccrualPolicy(allowed_lateness=timedelta(minutes=10),
                      correction_retention=timedelta(hours=48))
_ids = itertools.count()


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(seconds: int) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%S")


def note(event_type: str, resource_type: ResourceType, operation: str, phase: Phase,
         when: int, resource_id: str, tenant: str = "tenant-a", user: str | None = "owner",
         **payload: Any) -> Notification:
    return Notification(
        message_id=f"msg-{next(_ids):06d}", event_type=event_type, resource_type=resource_type,
        operation=operation, phase=phase, publisher_id="taskmanager.tm-1", priority="INFO",
        occurred_at=at(when), resource_id=resource_id, tenant_id=tenant, user_id=user,
        payload={"tenant_id": tenant, **payload})


def instance_note(event_type: str, operation: str, phase: Phase, when: int, instance: str,
                  tenant: str = "tenant-a", **payload: Any) -> Notification:
    return note(event_type, ResourceType.INSTANCE, operation, phase, when, instance, tenant,
                instance_id=instance, **payload)


def usage_payload(flavor: str, volume: int | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"instance_type_id": flavor, "instance_type": FLAVOR_NAMES[flavor]}
    if volume is not None:
        payload["volume_size"] = volume
    return payload


def create_end(instance: str, when: int, flavor: str, volume: int | None = None,
               tenant: str = "tenant-a") -> Notification:
    extra = {} if volume is None else {"volume_size": volume}
    return instance_note("dbaas.instance_create.end", "create", Phase.END, when, instance,
                         tenant, flavor_id=flavor, **extra)


def exists(instance: str, hour_end: int, flavor: str, launched: int, sent_after: int = 30,
           tenant: str = "tenant-a", **extra: Any) -> Notification:
    return instance_note("trove.instance.exists", "exists", Phase.POINT, hour_end + sent_after,
                         instance, tenant, audit_period_beginning=iso(hour_end - 3600),
                         audit_period_ending=iso(hour_end), launched_at=iso(launched),
                         **usage_payload(flavor, None), **extra)


def run(notifications: list[Notification], policy: AccrualPolicy = ROOMY,
        final: datetime | None = None,
        ) -> tuple[list[UsageRecord], list[UsageDiscrepancy], dict[str, MeteredResource]]:
    """Feed notifications in the given order, the watermark being the newest occurred_at seen;
    each state goes through its serialised form between calls, as in the Faust table."""
    states: dict[str, bytes] = {}
    records: list[UsageRecord] = []
    discrepancies: list[UsageDiscrepancy] = []
    watermark = datetime.min.replace(tzinfo=UTC)

    def collect(key: str, step: Step) -> None:
        records.extend(step.records)
        discrepancies.extend(step.discrepancies)
        if step.state is None:
            states.pop(key, None)
        else:
            states[key] = encode_state(step.state)
            assert decode_state(states[key]) == step.state
            # Changelogs written before the row form hold to_dict's JSON: still read.
            assert decode_state(json.dumps(to_dict(step.state)).encode()) == step.state

    def load(key: str) -> MeteredResource | None:
        value = states.get(key)
        return None if value is None else decode_state(value)

    def sweep(until: datetime) -> None:  # the agent's timer: every key, once an hour closes
        for key in list(states):
            state = load(key)
            assert state is not None
            step = advance(state, until, policy)
            # The worker's sweep takes the records as their fields, encoded without them.
            fields = advance_fields(state, until, policy)
            assert [UsageRecord(*f) for f in fields.records] == list(step.records)
            assert [encode_usage(f) for f in fields.records] == [encode(r) for r in step.records]
            assert (fields.state, fields.discrepancies) == (step.state, step.discrepancies)
            collect(key, step)

    swept_hour = None
    for notification in notifications:
        watermark = max(watermark, notification.occurred_at)
        key = notification.resource_id or ""
        collect(key, apply(load(key), notification, watermark, policy))
        closed_hour = (watermark - policy.allowed_lateness).replace(minute=0, second=0,
                                                                     microsecond=0)
        if closed_hour != swept_hour:
            swept_hour = closed_hour
            sweep(watermark)
    if final is not None:
        sweep(final)
    return records, discrepancies, {k: decode_state(v) for k, v in states.items()}


def totals(records: list[UsageRecord], before: datetime) -> dict[tuple[Any, ...], Fraction]:
    """Latest version of each record id, per (tenant, resource, meter, window, flavor)."""
    summed: dict[tuple[Any, ...], Fraction] = defaultdict(Fraction)
    for record in latest_versions(records).values():
        if record.window_start < before and record.quantity:
            key = (record.tenant_id, record.resource_id, record.meter, record.window_start,
                   record.flavor_id)
            summed[key] += Fraction(record.quantity)
    return dict(summed)


# ---------------------------------------------------------------------- random lifecycles


@dataclass
class Lifecycle:
    """One resource's truth (whole seconds from T0) and the notifications reporting it."""

    resource_id: str
    tenant: str
    kind: ResourceType
    start: int
    end: int | None
    flavors: list[tuple[int, str]] = field(default_factory=list)  # (from, flavor id)
    volumes: list[tuple[int, int]] = field(default_factory=list)  # (from, GB)
    backup_size: str | None = None
    audit_ends: list[int] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)

    def value_at(self, steps: list[tuple[int, Any]], second: int) -> Any:
        value = None
        for since, stepped in steps:
            if since <= second:
                value = stepped
        return value


@st.composite
def instance_lifecycle(draw: st.DrawFn, index: int, hours: int) -> Lifecycle:
    horizon = hours * 3600
    instance = f"inst-{index}"
    tenant = draw(st.sampled_from(["tenant-a", "tenant-b"]))
    launch = draw(st.integers(0, horizon - 1200))
    flavor = draw(st.sampled_from(sorted(FLAVOR_NAMES)))
    volume = draw(st.one_of(st.none(), st.integers(1, 50)))
    life = Lifecycle(instance, tenant, ResourceType.INSTANCE, launch, None,
                     [(launch, flavor)], [] if volume is None else [(launch, volume)])
    # Launch: the create end, trove.instance.create, or both (its launched_at may be earlier,
    # like Trove's; the end wins).
    sources = draw(st.sampled_from(["end", "usage", "both"]))
    if sources in ("end", "both"):
        life.notifications.append(create_end(instance, launch, flavor, volume, tenant))
    if sources in ("usage", "both"):
        launched_at = launch - (draw(st.integers(0, 90)) if sources == "both" else 0)
        life.notifications.append(instance_note(
            "trove.instance.create", "create", Phase.POINT, launch, instance, tenant,
            launched_at=iso(launched_at), **usage_payload(flavor, volume)))
    moment = launch
    for _ in range(draw(st.integers(0, 3))):
        moment += draw(st.integers(1200, 5400))  # resizes of one kind >= 20 minutes apart
        if moment >= horizon:
            break
        reporters = draw(st.sampled_from(["end", "usage", "both"]))
        if draw(st.booleans()):
            old = life.flavors[-1][1]
            flavor = draw(st.sampled_from([f for f in sorted(FLAVOR_NAMES) if f != old]))
            life.flavors.append((moment, flavor))
            if reporters != "usage":
                life.notifications.append(instance_note(
                    "dbaas.instance_resize_instance.end", "resize_flavor", Phase.END, moment,
                    instance, tenant, new_flavor_id=flavor))
            if reporters != "end":  # modify_at a little before the end, as in Trove
                modify_at = moment - (draw(st.integers(0, 60)) if reporters == "both" else 0)
                life.notifications.append(instance_note(
                    "trove.instance.modify_flavor", "resize_flavor", Phase.POINT, moment,
                    instance, tenant, modify_at=iso(modify_at),
                    **usage_payload(flavor, life.volumes[-1][1] if life.volumes else None)))
        elif life.volumes:
            size = life.volumes[-1][1] + draw(st.integers(1, 10))
            life.volumes.append((moment, size))
            if reporters != "usage":
                life.notifications.append(instance_note(
                    "dbaas.instance_resize_volume.end", "resize_volume", Phase.END, moment,
                    instance, tenant, new_size=size))
            if reporters != "end":
                modify_at = moment - (draw(st.integers(0, 60)) if reporters == "both" else 0)
                life.notifications.append(instance_note(
                    "trove.instance.modify_volume", "resize_volume", Phase.POINT, moment,
                    instance, tenant, modify_at=iso(modify_at), volume_size=size))
    if draw(st.booleans()):
        delete = draw(st.integers(moment + 1, moment + 3 * 3600))
        if delete < horizon:
            life.end = delete
            reporters = draw(st.sampled_from(["end", "usage", "both"]))
            if reporters != "usage":
                life.notifications.append(instance_note(
                    "dbaas.instance_delete.end", "delete", Phase.END, delete, instance, tenant))
            if reporters != "end":
                life.notifications.append(instance_note(
                    "trove.instance.delete", "delete", Phase.POINT, delete, instance, tenant,
                    deleted_at=iso(delete)))
    # Trove audits every instance alive at each hour boundary (the simulator's rule).
    for boundary in range(3600, horizon + 1, 3600):
        if launch < boundary and (life.end is None or life.end > boundary):
            life.audit_ends.append(boundary)
            life.notifications.append(exists(
                instance, boundary, life.value_at(life.flavors, boundary), launch,
                sent_after=draw(st.integers(5, 300)), tenant=tenant))
    return life


@st.composite
def backup_lifecycle(draw: st.DrawFn, index: int, hours: int) -> Lifecycle:
    horizon = hours * 3600
    backup = f"backup-{index}"
    tenant = draw(st.sampled_from(["tenant-a", "tenant-b"]))
    start = draw(st.integers(0, horizon - 60))
    size = f"{draw(st.integers(1, 5000)) / 100}"
    life = Lifecycle(backup, tenant, ResourceType.BACKUP, start, None, backup_size=size)
    life.notifications.append(note("dbaas.backup_create.end", ResourceType.BACKUP, "create",
                                   Phase.END, start, backup, tenant, backup_id=backup,
                                   size=float(size)))
    if draw(st.booleans()):
        end = draw(st.integers(start + 1, horizon))
        if end < horizon:
            life.end = end
            design_note = draw(st.booleans())
            life.notifications.append(note(
                "backup.delete.end" if design_note else "dbaas.backup_delete.end",
                ResourceType.BACKUP, "delete", Phase.END, end, backup, tenant, backup_id=backup,
                **({"size": float(size)} if design_note else {})))
    return life


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[Lifecycle], list[Notification]]:
    hours = draw(st.integers(1, 4))
    lives = [draw(instance_lifecycle(i, hours)) for i in range(draw(st.integers(1, 3)))]
    lives += [draw(backup_lifecycle(i, hours)) for i in range(draw(st.integers(0, 2)))]
    stream = [n for life in lives for n in life.notifications]
    stream += draw(st.lists(st.sampled_from(stream), max_size=6))  # redelivered duplicates
    return hours, lives, draw(st.permutations(stream))


def reference(lives: list[Lifecycle], hours: int) -> dict[tuple[Any, ...], Fraction]:
    """Second by second: what every hour of every resource must bill."""
    expected: dict[tuple[Any, ...], Fraction] = defaultdict(Fraction)
    for life in lives:
        for second in range(life.start, life.end if life.end is not None else hours * 3600):
            window = T0 + timedelta(hours=second // 3600)
            if life.kind is ResourceType.BACKUP:
                expected[(life.tenant, life.resource_id, BACKUP_GB_SECONDS, window, None)] += \
                    Fraction(life.backup_size)  # type: ignore[arg-type]
                continue
            flavor = life.value_at(life.flavors, second)
            expected[(life.tenant, life.resource_id, INSTANCE_SECONDS, window, flavor)] += 1
            volume = life.value_at(life.volumes, second)
            if volume is not None:
                expected[(life.tenant, life.resource_id, VOLUME_GB_SECONDS, window, None)] += volume
        for end in life.audit_ends:
            window = T0 + timedelta(seconds=end - 3600)
            expected[(life.tenant, life.resource_id, EXISTS_SECONDS, window, None)] += 3600
    return dict(expected)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), lateness_minutes=st.sampled_from([0, 10]))
def test_any_order_and_duplication_bills_exactly_the_reference(
        scenario: tuple[int, list[Lifecycle], list[Notification]], lateness_minutes: int) -> None:
    hours, lives, stream = scenario
    policy = AccrualPolicy(allowed_lateness=timedelta(minutes=lateness_minutes),
                           correction_retention=timedelta(hours=48))
    horizon = T0 + timedelta(hours=hours)
    records, _, _ = run(stream, policy, final=horizon + timedelta(hours=2))

    # Every latest record is the float of the exact reference (seconds and volume GB-seconds
    # are whole numbers, so exact; backup sizes have two decimals).
    expected = {key: float(value) for key, value in reference(lives, hours).items()}
    assert {key: float(value) for key, value in totals(records, horizon).items()} == expected

    identities: dict[str, tuple[Any, ...]] = {}
    versions: dict[str, list[int]] = defaultdict(list)
    for record in records:
        identity = (record.tenant_id, record.resource_id, record.meter, record.window_start,
                    record.flavor_id)
        assert identities.setdefault(record.record_id, identity) == identity
        versions[record.record_id].append(record.version)
    assert len(set(identities.values())) == len(identities)  # one id per identity
    for seen in versions.values():  # corrections are version + 1 of the same id, never repeats
        assert sorted(seen) == list(range(1, len(seen) + 1))


@settings(max_examples=30, deadline=None)
@given(scenario=scenarios(), seed=st.integers(0, 2**16))
def test_replaying_gives_the_same_latest_records(
        scenario: tuple[int, list[Lifecycle], list[Notification]], seed: int) -> None:
    hours, _, stream = scenario
    final = T0 + timedelta(hours=hours + 2)
    first, _, _ = run(stream, final=final)
    replayed = stream + random.Random(seed).sample(stream, len(stream))
    second, _, _ = run(replayed, final=final)

    def content(records: list[UsageRecord]) -> dict[str, tuple[Any, ...]]:
        return {rid: (r.quantity, r.tenant_id, r.flavor_id, r.flavor_name, r.size_gb,
                      r.user_id, tuple(r.derived_from))
                for rid, r in latest_versions(records).items()}

    assert content(first) == content(second)


# --------------------------------------------------------------------------- examples


def test_hours_without_any_event_still_get_usage() -> None:
    records, _, _ = run([create_end("i-1", 600, "2", volume=10)], final=at(5 * 3600 + 600))
    seconds = {r.window_start: r.quantity for r in records if r.meter == INSTANCE_SECONDS}
    assert seconds == {T0: 3000.0, **{T0 + h * HOUR: 3600.0 for h in range(1, 5)}}
    volume = {r.window_start: r.quantity for r in records if r.meter == VOLUME_GB_SECONDS}
    assert volume[T0 + 3 * HOUR] == 36000.0
    record = next(r for r in records if r.meter == INSTANCE_SECONDS)
    assert (record.flavor_id, record.version, record.unit, record.meter_type.value) == \
        ("2", 1, "s", "delta")


def test_a_window_is_emitted_only_after_its_end_plus_the_allowed_lateness() -> None:
    state = apply(None, create_end("i-1", 600, "2"), at(600), ROOMY).state
    assert state is not None
    assert advance(state, at(3600 + 599), ROOMY).records == ()
    emitted = advance(state, at(3600 + 600), ROOMY)
    assert [(r.window_start, r.quantity) for r in emitted.records] == [(T0, 3000.0)]
    assert advance(emitted.state, at(3600 + 900), ROOMY).state is emitted.state  # type: ignore[arg-type]


def test_a_late_delete_corrects_emitted_windows_as_new_versions_of_the_same_ids() -> None:
    create = create_end("i-1", 0, "2", volume=5)
    records, _, _ = run([create, instance_note("dbaas.instance_restart.end", "restart",
                                               Phase.END, 3 * 3600, "i-1")],
                        final=at(3 * 3600 + 700))
    assert [r.version for r in records] == [1, 1, 1, 1, 1, 1]  # 3 hours x 2 meters
    delete = instance_note("dbaas.instance_delete.end", "delete", Phase.END, 5400, "i-1")
    later, _, _ = run([create, delete, instance_note(
        "dbaas.instance_restart.end", "restart", Phase.END, 3 * 3600, "i-1")],
        final=at(3 * 3600 + 700))
    assert sum(r.quantity for r in later if r.meter == INSTANCE_SECONDS) == 5400

    late, _, _ = run([create, instance_note("dbaas.instance_restart.end", "restart",
                                            Phase.END, 3 * 3600 + 700, "i-1"), delete])
    corrected = [r for r in late if r.version > 1]
    by_id = {r.record_id: r for r in late if r.version == 1}
    assert {(r.meter, r.window_start, r.quantity, r.version) for r in corrected} == {
        (INSTANCE_SECONDS, T0 + HOUR, 1800.0, 2), (VOLUME_GB_SECONDS, T0 + HOUR, 9000.0, 2),
        (INSTANCE_SECONDS, T0 + 2 * HOUR, 0.0, 2), (VOLUME_GB_SECONDS, T0 + 2 * HOUR, 0.0, 2)}
    assert all(r.record_id in by_id for r in corrected)
    assert totals(late, T0 + 3 * HOUR) == totals(later, T0 + 3 * HOUR)


def test_a_flavor_resize_splits_the_hour_and_names_both_flavors() -> None:
    records, _, _ = run([
        create_end("i-1", 0, "1"),
        instance_note("dbaas.instance_resize_instance.end", "resize_flavor", Phase.END, 1800,
                      "i-1", new_flavor_id="3"),
        instance_note("trove.instance.modify_flavor", "resize_flavor", Phase.POINT, 1800, "i-1",
                      modify_at=iso(1790), **usage_payload("3", None)),
        exists("i-1", 3600, "3", launched=0),
    ], final=at(3600 + 600))
    seconds = {(r.flavor_id, r.flavor_name): r.quantity
               for r in records if r.meter == INSTANCE_SECONDS}
    # the resize end's moment counts, not modify_at; a name learned for 3 only
    assert seconds == {("1", None): 1800.0, ("3", "m1.medium"): 1800.0}
    audit = next(r for r in records if r.meter == EXISTS_SECONDS)
    assert (audit.quantity, audit.meter_type.value, audit.window_start) == (3600.0, "cumulative", T0)


def test_exists_meter_counts_each_audit_once_in_the_hour_its_period_ends() -> None:
    audits = [exists("i-1", h * 3600, "2", launched=0) for h in (1, 2, 3)]
    records, _, _ = run([create_end("i-1", 0, "2"), *audits, *audits[:2]],
                        final=at(4 * 3600 + 600))
    latest = latest_versions(records).values()
    assert sorted((r.window_start, r.quantity) for r in latest if r.meter == EXISTS_SECONDS) == [
        (T0 + h * HOUR, 3600.0) for h in range(3)]


def test_a_fact_older_than_the_retention_does_not_revive_a_forgotten_resource() -> None:
    policy = AccrualPolicy(correction_retention=timedelta(hours=2))
    create = create_end("i-1", 0, "2")
    delete = instance_note("dbaas.instance_delete.end", "delete", Phase.END, 1800, "i-1")
    ticker = instance_note("dbaas.instance_restart.end", "restart", Phase.END, 6 * 3600, "i-2")
    records, _, states = run([create, delete, ticker, create, delete], policy,
                             final=at(10 * 3600))
    assert states == {}  # finished and forgotten; the replayed create did not come back
    assert [r.quantity for r in records if r.meter == INSTANCE_SECONDS] == [1800.0]


def test_state_bytes_name_no_fields_and_the_create_message_once() -> None:
    created = create_end("i-1", 0, "2", volume=20)
    _, _, states = run([created, exists("i-1", 3600, "2", launched=0)], final=at(2 * 3600))
    state = states["i-1"]
    raw = encode_state(state)
    # The create end set the launch, the flavor and the size: its id is written once.
    assert raw.count(created.message_id.encode()) == 1
    assert b'"tenant"' not in raw and b'"flavors"' not in raw
    assert len(raw) < len(json.dumps(to_dict(state), separators=(",", ":")))
    assert decode_state(raw) == state


def test_state_of_a_live_instance_stays_small() -> None:
    stream = [create_end("i-1", 0, "2", volume=20)]
    stream += [exists("i-1", h * 3600, "2", launched=0) for h in range(1, 49)]
    _, _, states = run(stream, AccrualPolicy(), final=at(49 * 3600))
    state = states["i-1"]
    assert len(state.audits) <= 7  # the 6-hour retention, plus the open hour
    assert len(encode_state(state)) < 1200


# ------------------------------------------------------------------------ verification


def causes(discrepancies: list[UsageDiscrepancy]) -> list[DiscrepancyCause]:
    return [d.likely_cause for d in discrepancies]


def test_a_complete_lifecycle_verifies_cleanly_even_for_a_fresh_instance() -> None:
    # Launched mid-hour, yet audited for the whole hour as Trove does: launched_at clamps it.
    _, found, _ = run([create_end("i-1", 1200, "2"), exists("i-1", 3600, "2", launched=1200),
                       exists("i-1", 7200, "2", launched=1200)], final=at(4 * 3600))
    assert found == []


def test_verification_reports_a_missed_create() -> None:
    _, found, _ = run([exists("i-1", 3600, "2", launched=0)], final=at(3 * 3600))
    assert causes(found) == [DiscrepancyCause.MISSED_CREATE]
    assert (found[0].audited_seconds, found[0].lifecycle_seconds) == (3600.0, 0.0)


def test_verification_reports_a_flavor_mismatch() -> None:
    _, found, _ = run([create_end("i-1", 0, "1"), exists("i-1", 3600, "3", launched=0)],
                      final=at(3 * 3600))
    assert causes(found) == [DiscrepancyCause.FLAVOR_MISMATCH]
    assert (found[0].audited_flavor_id, found[0].lifecycle_flavor_id) == ("3", "1")


def test_verification_reports_a_missed_delete() -> None:
    _, found, _ = run([create_end("i-1", 0, "2"),
                       exists("i-1", 3600, "2", launched=0, deleted_at=iso(1800))],
                      final=at(3 * 3600))
    assert causes(found) == [DiscrepancyCause.MISSED_DELETE]
    assert (found[0].audited_seconds, found[0].lifecycle_seconds) == (1800.0, 3600.0)


def test_verification_reports_a_delete_inside_an_audited_period() -> None:
    _, found, _ = run([create_end("i-1", 0, "2"), instance_note(
        "dbaas.instance_delete.end", "delete", Phase.END, 1800, "i-1"),
        exists("i-1", 3600, "2", launched=0)], final=at(3 * 3600))
    assert causes(found) == [DiscrepancyCause.UNEXPECTED_DELETE]


def test_verification_waits_for_the_window_to_close_and_tolerates_small_differences() -> None:
    audit = exists("i-1", 3600, "2", launched=0)
    # The create end arrives after the audit but before the hour closes: no discrepancy.
    _, found, _ = run([audit, create_end("i-1", 30, "2")], final=at(3 * 3600))
    assert found == []
    assert verify_exists(None, audit, ROOMY) is not None  # alone, it is a missed create


# ---------------------------------------------------------------- simulated day (pure)


@pytest.mark.parametrize(("seed", "noise"), [(7, 0.05), (11, 0.3)])
def test_a_simulated_day_bills_exactly_the_simulators_truth(seed: int, noise: float) -> None:
    from trovemeter.envelope import parse_body
    from trovemeter.simulation import ScenarioConfig, build_scenario

    config = ScenarioConfig(seed=seed, tenants=4, instances=40, hours=24, duplicate_rate=noise,
                            reorder_rate=noise, garbage_rate=0.0, v1_share=noise,
                            clusters=False)
    scenario = build_scenario(config)
    notifications = [parse_body(m.body, max_bytes=1 << 20)
                     for m in scenario.messages() if m.kind != "garbage"]
    records, found, _ = run(notifications, AccrualPolicy(), final=config.horizon + 2 * HOUR)

    expected = scenario.expected
    per_flavor: dict[str, Counter[str]] = defaultdict(Counter)
    volume: Counter[str] = Counter()
    backup: dict[str, Fraction] = defaultdict(Fraction)
    audited: Counter[str] = Counter()
    for record in latest_versions(records).values():
        if record.window_start >= config.horizon:
            continue
        if record.meter == INSTANCE_SECONDS:
            per_flavor[record.tenant_id][record.flavor_id or ""] += int(record.quantity)
        elif record.meter == VOLUME_GB_SECONDS:
            volume[record.tenant_id] += int(record.quantity)
        elif record.meter == BACKUP_GB_SECONDS:
            backup[record.tenant_id] += Fraction(record.quantity)
        else:
            audited[record.tenant_id] += int(record.quantity)
    assert {t: dict(c) for t, c in per_flavor.items() if c} == expected.instance_seconds
    assert dict(volume) == expected.volume_gb_seconds
    assert {t: round(float(v), 2) for t, v in backup.items()} == expected.backup_gb_seconds
    assert dict(audited) == expected.exists_seconds
    assert found == []


# ------------------------------------------------------- the one-piece hour (sweep fast path)

# Moments around three hours, hour boundaries and their neighbours included.
MOMENTS = st.one_of(st.sampled_from([h * 3_600_000_000 + d for h in range(-1, 4)
                                     for d in (-1, 0, 1)]),
                    st.integers(-3_600_000_000, 4 * 3_600_000_000))


@st.composite
def metered_states(draw: st.DrawFn) -> MeteredResource:
    """Any state ``apply`` can build: changes merged by its own rule (``_merge_change``)."""
    kind = draw(st.sampled_from([ResourceType.INSTANCE, ResourceType.BACKUP]))
    message = st.sampled_from(["m-a", "m-b", "m-c", "m-d"])

    def changes(values: st.SearchStrategy[str]) -> tuple[Change, ...]:
        merged: tuple[Change, ...] = ()
        for change in draw(st.lists(st.builds(Change, st.one_of(st.none(), MOMENTS),
                                              st.sampled_from([0, 1]), values, message),
                                    max_size=4)):
            merged = _merge_change(merged, change)
        return merged

    started = draw(st.one_of(st.none(), st.builds(Claim, st.sampled_from([0, 1]), MOMENTS,
                                                    message)))
    ended = draw(st.one_of(st.none(), st.builds(Claim, st.sampled_from([0, 1]), MOMENTS,
                                                  message)))
    return MeteredResource(
        kind, "r-1", draw(st.sampled_from([None, "tenant-a"])), draw(st.sampled_from([None, "u"])),
        started, ended,
        flavors=changes(st.sampled_from(["", "1", "2"])) if kind is ResourceType.INSTANCE else (),
        sizes=changes(st.sampled_from(["0", "1", "5", "0.14", "12.5"])),
        flavor_names=(("", "unnamed"), ("1", "m1.tiny")) if draw(st.booleans()) else ())


@settings(max_examples=1000, deadline=None)
@given(state=metered_states(), hour=st.integers(-1, 3))
def test_the_one_piece_hour_gives_what_piecewise_integration_gives(
        state: MeteredResource, hour: int) -> None:
    window_start = hour * 3_600_000_000
    fast = _one_piece_usage(state, window_start)
    assert fast is None or fast == _pieced_usage(state, window_start)
    alive = _alive(state, window_start, window_start + 3_600_000_000)
    if alive is not None and not any(alive[0] < c.at_us < alive[1] for c in state.flavors
                                     + state.sizes if c.at_us is not None):
        assert fast is not None  # every hour without a change while alive takes it


@st.composite
def swept_states(draw: st.DrawFn) -> MeteredResource:
    """``metered_states`` with audits, corrected versions and an ``emitted_through``."""
    state = draw(metered_states())
    hours = st.integers(-8, 4).map(lambda h: h * 3_600_000_000)
    audits = sorted({Audit(end, end - 3_600_000_000, draw(st.sampled_from([None, "1"])),
                           draw(st.sampled_from(["m-a", "m-e"])))
                     for end in draw(st.lists(st.one_of(hours, MOMENTS), max_size=4))},
                    key=lambda a: (a.end_us, a.begin_us, a.flavor_id or "", a.message_id))
    versions = sorted({(RecordKey("tenant-a", INSTANCE_SECONDS, hour, "1"),
                        draw(st.integers(2, 4))) for hour in draw(st.lists(hours, max_size=3))})
    return replace(state, audits=tuple(audits), versions=tuple(versions),
                   emitted_through=draw(st.one_of(st.none(), hours)))


# A short retention: the hours drawn above freeze and thaw.
SWEPT = AccrualPolicy(correction_retention=timedelta(hours=2))


@settings(max_examples=500, deadline=None)
@given(state=swept_states(), through=st.one_of(st.none(), st.integers(-8, 6).map(
    lambda h: h * 3_600_000_000)))
def test_a_state_read_as_swept_is_swept_to_of_the_state(
        state: MeteredResource, through: int | None) -> None:
    """The worker reads a state with its partition's sweep mark in one step (``from_row``);
    ``swept_to`` says what that must give, and ``advance``'s own copy agrees with it."""
    for row in (to_row(state), json.loads(json.dumps(to_dict(state)))):
        assert from_json_value(row, through, SWEPT) == swept_to(state, through, SWEPT)
    if through is not None and (state.emitted_through is None or through > state.emitted_through):
        advanced = _forget_frozen(state, through, SWEPT)
        assert advanced is None or advanced == swept_to(state, through, SWEPT)


H_US = 3_600_000_000


@st.composite
def sweep_cases(draw: st.DrawFn) -> tuple[MeteredResource, int | None, int]:
    """A state, a sweep mark and the hour a sweep closes (its end), mostly such that the state
    owes exactly that hour: ``swept_states`` with audits of any period ending in it, what the
    audits say of the launch and the delete near it (every input ``_verify`` reads), and
    flavor changes at its edges."""
    state = draw(swept_states())
    closed = draw(st.integers(-7, 5)) * H_US
    window = closed - H_US
    near = st.one_of(MOMENTS, st.sampled_from([window, closed]).flatmap(
        lambda edge: st.integers(edge - 60_000_000, edge + 60_000_000)))
    extra = [Audit(end, end - draw(st.sampled_from([H_US, H_US // 2, 1, 2 * H_US])),
                   draw(st.sampled_from([None, "", "1", "2"])),
                   draw(st.sampled_from(["m-a", "m-f"])))
             for end in draw(st.lists(st.one_of(st.just(closed), near), max_size=3))]
    audits = tuple(sorted({*state.audits, *extra}, key=_audit_order))
    flavors = state.flavors
    if state.resource_type is ResourceType.INSTANCE:
        for at in draw(st.lists(st.one_of(st.just(closed), st.just(window), near), max_size=2)):
            flavors = _merge_change(flavors, Change(at, draw(st.sampled_from([0, 1])),
                                                    draw(st.sampled_from(["1", "2"])), "m-g"))
    state = replace(state, audits=audits, flavors=flavors,
                    audited_launch_us=draw(st.one_of(st.none(), near)),
                    audited_delete_us=draw(st.one_of(st.none(), near)))
    if draw(st.integers(0, 3)):  # mostly live through the hour: the shortcut's own case
        state = replace(state, ended=None, started=Claim(
            draw(st.sampled_from([0, 1])), draw(st.one_of(near, st.integers(
                window - 2 * H_US, closed))), draw(st.sampled_from(["m-a", "m-s"]))))
    mark = draw(st.one_of(st.just(window), st.just(window), st.none(), st.integers(-8, 6).map(
        lambda h: h * H_US)))
    return state, mark, closed


@settings(max_examples=3000, deadline=None)
@given(case=sweep_cases())
def test_the_sweeps_shortcut_gives_the_records_advance_gives(
        case: tuple[MeteredResource, int | None, int]) -> None:
    """The worker's sweep reads a live resource's hour straight off its row
    (``swept_hour_fields``): the same records, in the same order, as ``advance_fields`` on
    the state read with the sweep mark, and only where ``advance`` keeps the state with no
    discrepancy."""
    state, mark, closed = case
    row = json.loads(json.dumps(to_row(state)))  # as the table holds it
    loaded = from_json_value(row, mark, SWEPT)
    general = advance_fields(loaded, from_us(closed + SWEPT.lateness_us), SWEPT)
    fast = swept_hour_fields(row, mark, closed, SWEPT)
    if fast is not None:
        assert fast == general.records
        assert [type(r) for r in fast] == [type(r) for r in general.records]
        assert not general.discrepancies
        assert general.state is not None and general.state.emitted_through == closed
    elif loaded.started is not None and loaded.ended is None and \
            loaded.emitted_through == closed - H_US:
        assert general.discrepancies  # the only live state owing one hour left to advance


def _iso_us(us: int) -> str:
    return from_us(us).replace(tzinfo=None).isoformat()


@st.composite
def audit_cases(draw: st.DrawFn) -> tuple[MeteredResource, Notification, int | None, int]:
    """A state, an exists audit, a sweep mark and the hour the watermark closes, mostly such
    that the audit's hour is not emitted yet and no hour is left to emit (the audit's fast
    case), with every input ``_with_audit`` reads drawn near what the state holds."""
    state = draw(swept_states())
    if draw(st.integers(0, 3)):
        state = replace(state, resource_type=ResourceType.INSTANCE)
    through = draw(st.integers(-6, 4)) * H_US
    moment = st.one_of(st.none(), MOMENTS, st.integers(through - 90_000_000, through))
    state = replace(state, audited_launch_us=draw(moment), audited_delete_us=draw(moment))
    if draw(st.booleans()):
        state = replace(state, emitted_through=through)
    mark = draw(st.one_of(st.just(through), st.just(through), st.none(),
                          st.integers(-8, 6).map(lambda h: h * H_US)))
    closed = through + draw(st.sampled_from([0, 0, 0, -H_US, H_US]))
    near = st.one_of(MOMENTS, st.integers(through - 90_000_000, through + H_US + 90_000_000))
    end = draw(st.one_of(st.just(through + H_US), st.just(through + H_US), near))
    begin = end - draw(st.sampled_from([H_US, H_US, H_US // 2, 1, 0]))
    flavor = draw(st.sampled_from([None, "1", "2", ""]))
    message_id = draw(st.sampled_from(["m-a", "m-e", "m-x"]))
    if state.started is not None and draw(st.booleans()):
        message_id = state.started.message_id  # the row writes it as the start's (0)
    if state.audits and draw(st.booleans()):  # one it has, or that with "" for no flavor
        end, begin, flavor, message_id = draw(st.sampled_from(state.audits))
        if not flavor and draw(st.booleans()):
            flavor = "" if flavor is None else None
    payload: dict[str, Any] = {"audit_period_beginning": _iso_us(begin),
                               "audit_period_ending": _iso_us(end)}
    if flavor is not None:
        payload["instance_type_id"] = flavor
    named = dict(state.flavor_names)
    for key, values in (("instance_type", [*named.values(), "m1.tiny", "zz", "a"]),
                        ("launched_at", [_iso_us(draw(near))] + (
                            [] if state.audited_launch_us is None
                            else [_iso_us(state.audited_launch_us)])),
                        ("deleted_at", [_iso_us(draw(near))] + (
                            [] if state.audited_delete_us is None
                            else [_iso_us(state.audited_delete_us)]))):
        value = draw(st.sampled_from([None, None, *values]))
        if value is not None:
            payload[key] = value
    audit = Notification(
        message_id=message_id, event_type="trove.instance.exists",
        resource_type=ResourceType.INSTANCE, operation="exists", phase=Phase.POINT,
        publisher_id="taskmanager.tm-1", priority="INFO", occurred_at=from_us(end + 30),
        resource_id=draw(st.sampled_from(["r-1", "r-1", "r-1", "r-2"])),
        tenant_id=draw(st.sampled_from([state.tenant_id, state.tenant_id, None, "tenant-0",
                                        "tenant-b"])),
        user_id=draw(st.sampled_from([state.user_id, state.user_id, None, "t", "v"])),
        payload=payload)
    return state, audit, mark, closed


@settings(max_examples=3000, deadline=None)
@given(case=audit_cases())
def test_an_audit_folded_into_the_row_gives_what_apply_gives(
        case: tuple[MeteredResource, Notification, int | None, int]) -> None:
    """The worker folds an audit straight into its state's row (``audited_row``): the row
    ``apply`` writes on the state read from it with the sweep mark, no record, no discrepancy
    (``row`` itself: ``apply`` keeps the state, nothing is written)."""
    state, audit, mark, closed = case
    row = json.loads(json.dumps(to_row(state)))  # as the table holds it
    loaded = from_json_value(row, mark, SWEPT)
    fast = audited_row(row, audit, mark, closed, SWEPT)
    try:
        step = apply(loaded, audit, from_us(closed + SWEPT.lateness_us), SWEPT)
    except ValueError:
        assert fast is None
        return
    if fast is row:
        assert step.state is loaded and not step.records and not step.discrepancies
    elif fast is not None:
        assert step.state is not loaded and step.state is not None
        assert not step.records and not step.discrepancies
        assert json.dumps(fast) == json.dumps(to_row(step.state))


def _audit_facts_as_before(state: MeteredResource, n: Notification,
                           policy: AccrualPolicy) -> tuple[MeteredResource, int | None]:
    """The oracle: an audit through ``_with_facts``'s general path as it was before
    ``_with_audit`` (the closures' claims and the lifecycle branches left out: none applies
    to an exists audit)."""
    payload = n.payload
    changes: dict[str, Any] = {}
    affected: list[int] = []
    audit = _audit_of(n)
    assert audit is not None
    if audit not in state.audits and not _frozen(state, audit.window_start, policy):
        changes["audits"] = tuple(sorted((*state.audits, audit), key=_audit_order))
        affected.append(audit.window_start)
    for attribute, name in (("audited_launch_us", "launched_at"),
                            ("audited_delete_us", "deleted_at")):
        reported = _payload_us(payload, name)
        current = getattr(state, attribute)
        if reported is not None and (current is None or reported < current):
            changes[attribute] = reported
    name = as_text(payload.get("instance_type"))
    named_id = as_text(payload.get("instance_type_id"))
    if name is not None and named_id is not None:
        names = dict(state.flavor_names)
        if named_id not in names or name > names[named_id]:
            names[named_id] = name
            changes["flavor_names"] = tuple(sorted(names.items()))
            affected.append(-(2**62))
    names_owner = n.operation == "create" or n.phase is Phase.POINT
    for attribute, reported in (("tenant_id", n.tenant_id),
                                ("user_id", n.user_id if names_owner else None)):
        current = getattr(state, attribute)
        if reported and (current is None or reported < current):
            changes[attribute] = reported
            affected.append(-(2**62))
    if not changes:
        return state, None
    return replace(state, **changes), min(affected, default=2**62)


@st.composite
def audited_states(draw: st.DrawFn) -> tuple[MeteredResource, Notification]:
    """An instance's state (with audits, audited times, a sweep position) and an exists audit
    that may repeat one of its audits, name its flavor or owner anew, or be frozen."""
    state = replace(draw(metered_states()), resource_type=ResourceType.INSTANCE)
    hour_end = draw(st.integers(1, 6)) * 3600
    flavor = draw(st.sampled_from(["1", "2", "3"]))
    extra: dict[str, Any] = {}
    if draw(st.booleans()):
        extra["deleted_at"] = iso(hour_end - draw(st.integers(1, 7200)))
    if draw(st.booleans()):
        extra["instance_type"] = draw(st.sampled_from(["m1.tiny", "m1.zzz", "", "a"]))
    n = exists("r-1", hour_end, flavor, launched=draw(st.integers(-7200, hour_end)),
               tenant=draw(st.sampled_from(["tenant-a", "tenant-0", "tenant-b", ""])))
    n = replace(n, payload={**n.payload, **extra},
                user_id=draw(st.sampled_from([None, "", "owner", "a", "u"])),
                phase=draw(st.sampled_from([Phase.POINT, Phase.END])))
    audit = _audit_of(n)
    others = draw(st.lists(st.builds(Audit, st.integers(1, 6).map(lambda h: h * 3600 * 10**6),
                                     st.just(0), st.sampled_from(["1", "2"]),
                                     st.sampled_from(["m-a", "m-b"])), max_size=3))
    audits = [*others, audit] if draw(st.booleans()) else others
    swept = draw(st.one_of(st.none(), st.integers(-2, 8).map(
        lambda h: to_us(T0) + h * 3600 * 10**6)))
    return replace(
        state, audits=tuple(sorted(set(audits), key=_audit_order)),
        audited_launch_us=draw(st.one_of(st.none(), st.just(to_us(at(0))))),
        audited_delete_us=draw(st.one_of(st.none(), st.just(to_us(at(3600))))),
        emitted_through=swept), n


@settings(max_examples=1500, deadline=None)
@given(case=audited_states(), short=st.booleans())
def test_an_audit_takes_the_facts_the_general_path_took(
        case: tuple[MeteredResource, Notification], short: bool) -> None:
    state, n = case
    policy = AccrualPolicy(allowed_lateness=timedelta(minutes=10),
                           correction_retention=timedelta(hours=1 if short else 48))
    assert _with_facts(state, n, policy) == _audit_facts_as_before(state, n, policy)
