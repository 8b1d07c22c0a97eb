"""The scenario generator: deterministic, byte-exact oslo.messaging wire format, and expected
totals that an independent brute-force reading of the generated messages reproduces."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.simulator import Pacing
from trovemeter import simulate_command
from trovemeter.simulation import (
    AMQP_PROPERTIES,
    Scenario,
    ScenarioConfig,
    WireMessage,
    _caller,
    _Event,
    _Host,
    _json_members,
    _RequestPayload,
    _SplicedPayload,
    _render_body,
    build_scenario,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
INPUTS = {row["name"]: row for row in map(json.loads, (FIXTURES / "inputs.jsonl").open())}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Noisy enough to exercise every path, small enough for a second-by-second recomputation.
SMALL = ScenarioConfig(seed=7, tenants=3, instances=24, hours=6, failure_rate=0.15,
                       abandon_rate=0.08, duplicate_rate=0.05, reorder_rate=0.1,
                       garbage_rate=0.03, v1_share=0.2)

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
HEX32 = re.compile(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}\Z")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?\Z")

# dbaas.<wire operation> and design-note prefixes -> (resource type, canonical operation)
OPERATIONS = {
    "instance_create": ("instance", "create"),
    "instance_resize_instance": ("instance", "resize_flavor"),
    "instance_resize_volume": ("instance", "resize_volume"),
    "instance_restart": ("instance", "restart"),
    "instance_delete": ("instance", "delete"),
    "backup_create": ("backup", "create"),
    "backup_delete": ("backup", "delete"),
    "cluster_create": ("cluster", "create"),
    "cluster_grow": ("cluster", "grow"),
    "cluster_delete": ("cluster", "delete"),
    "instance.reboot": ("instance", "reboot"),
    "backup.delete": ("backup", "delete"),
}


def fixture(name: str) -> tuple[bytes, dict[str, Any]]:
    meta = json.loads((FIXTURES / f"{name}.meta.json").read_text())
    return (FIXTURES / f"{name}.body").read_bytes(), meta


def notification(body: bytes) -> dict[str, Any] | None:
    """The inner notification of a well-formed v1 or v2 body, else None (garbage)."""
    try:
        outer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(outer, dict):
        return None
    inner: Any = outer
    if "oslo.version" in outer:
        if outer["oslo.version"] != "2.0" or not isinstance(outer.get("oslo.message"), str):
            return None
        try:
            inner = json.loads(outer["oslo.message"])
        except ValueError:
            return None
    if not isinstance(inner, dict) or "event_type" not in inner or "message_id" not in inner:
        return None
    return inner


def event_time(inner: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(inner["timestamp"]).replace(tzinfo=UTC)


def payload_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def small() -> tuple[Scenario, list[WireMessage]]:
    scenario = build_scenario(SMALL)
    return scenario, list(scenario.messages())


def first_occurrences(messages: list[WireMessage]) -> list[tuple[int, dict[str, Any]]]:
    """(publication position, notification) of each distinct valid message."""
    seen: set[str] = set()
    result = []
    for position, message in enumerate(messages):
        inner = notification(message.body)
        if inner is not None and inner["message_id"] not in seen:
            seen.add(inner["message_id"])
            result.append((position, inner))
    return result


# ------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_messages_and_totals() -> None:
    first, second = build_scenario(SMALL), build_scenario(SMALL)
    assert list(first.messages()) == list(second.messages())
    assert first.expected.to_json() == second.expected.to_json()


def test_another_seed_gives_other_messages() -> None:
    first = build_scenario(SMALL)
    other = build_scenario(replace(SMALL, seed=8))
    first_ids = {m["message_id"] for _, m in first_occurrences(list(first.messages()))}
    other_ids = {m["message_id"] for _, m in first_occurrences(list(other.messages()))}
    assert first_ids and other_ids and not first_ids & other_ids
    assert first.expected.instance_seconds != other.expected.instance_seconds


def test_noise_settings_leave_lifecycles_and_billing_alone() -> None:
    quiet = build_scenario(replace(SMALL, duplicate_rate=0, reorder_rate=0, garbage_rate=0,
                                   v1_share=0)).expected
    noisy = build_scenario(replace(SMALL, duplicate_rate=0.3, reorder_rate=0.4,
                                   garbage_rate=0.2, v1_share=0.7)).expected
    assert noisy.message_id_sha256 == quiet.message_id_sha256
    assert noisy.operations == quiet.operations
    assert noisy.failures == quiet.failures
    assert (noisy.instance_seconds, noisy.volume_gb_seconds, noisy.backup_gb_seconds,
            noisy.exists_seconds) == (quiet.instance_seconds, quiet.volume_gb_seconds,
                                      quiet.backup_gb_seconds, quiet.exists_seconds)


# ------------------------------------------------------------------------- wire format


def _fixture_event(name: str) -> _Event:
    """The fixture's notification as a planned event (same ids, time, payload, context)."""
    body, _ = fixture(name)
    inner = notification(body)
    assert inner is not None
    record = INPUTS[name]
    payload = inner["payload"]
    moment = event_time(inner)
    t_us = (moment - EPOCH) // timedelta(microseconds=1)
    if record["context_class"] == "RequestContext":
        context = record["context"]
        caller = _caller(context["project_id"], context["user_id"], payload["client_ip"])
        host = _Host(record["publisher_id"], payload["server_ip"], payload["server_type"])
        base = ("tenant_id", "client_ip", "server_ip", "server_type", "request_id")
        fields = {k: v for k, v in payload.items() if k not in base}
        return _Event(t_us, 0, inner["event_type"], inner["priority"], host,
                      _RequestPayload(caller, host, payload["request_id"], _json_members(fields)),
                      caller, context["request_id"], inner["message_id"], inner["_unique_id"],
                      record.get("driver") == "messaging", (t_us, 0, 0))
    host = _Host(record["publisher_id"], "", "taskmanager")
    return _Event(t_us, 0, inner["event_type"], inner["priority"], host,
                  _SplicedPayload(json.dumps(payload)), None, None, inner["message_id"],
                  inner["_unique_id"], record.get("driver") == "messaging", (t_us, 0, 0))


@pytest.mark.parametrize("name", [
    "dbaas.instance_create.start.v2", "dbaas.instance_create.end.v2",
    "dbaas.instance_create.error.v2", "dbaas.backup_create.end.v2", "priority-error.v2",
    "trove.instance.exists.v2", "trove.instance.delete.v2", "dbaas.instance_create.start.v1",
    "trove.instance.exists.v1", "nonascii.v2", "nonascii.v1",
])
def test_renderer_reproduces_captured_oslo_messaging_bodies(name: str) -> None:
    body, meta = fixture(name)
    assert _render_body(_fixture_event(name)) == body
    assert hashlib.sha256(body).hexdigest() == meta["body_sha256"]


def test_amqp_properties_are_the_captured_ones() -> None:
    _, meta = fixture("dbaas.instance_create.start.v2")
    assert dict(AMQP_PROPERTIES) == {k: v for k, v in meta["properties"].items() if v is not None}


def test_every_valid_body_has_the_fixture_shape(small: tuple[Scenario, list[WireMessage]]) -> None:
    _, messages = small
    v2_fixture = notification(fixture("dbaas.instance_create.start.v2")[0])
    assert v2_fixture is not None
    head = list(v2_fixture)[:7]
    context_keys = list(v2_fixture)[7:]
    valid = [m for m in messages if m.kind != "garbage"]
    assert valid
    for message in valid:
        body = message.body
        assert body.isascii()
        outer = json.loads(body)
        assert json.dumps(outer).encode() == body  # default separators, insertion order
        if "oslo.version" in outer:
            assert list(outer) == ["oslo.version", "oslo.message"]
            assert outer["oslo.version"] == "2.0"
            assert json.dumps(json.loads(outer["oslo.message"])) == outer["oslo.message"]
            inner = json.loads(outer["oslo.message"])
        else:
            inner = outer
        assert list(inner)[:7] == head
        event_type = inner["event_type"]
        if event_type.startswith("dbaas."):
            assert list(inner)[7:] == context_keys
            assert inner["_context_auth_token"] is None
            assert inner["_context_request_id"] == inner["payload"]["request_id"]
            assert inner["_context_project_id"] == inner["payload"]["tenant_id"]
            assert inner["publisher_id"].split(".")[0] == inner["payload"]["server_type"]
        else:  # usage and design-note events: plain-dict context, dropped by oslo.messaging
            assert list(inner)[7:] == []
        assert UUID4.match(inner["message_id"]) and HEX32.match(inner["_unique_id"])
        assert TIMESTAMP.match(inner["timestamp"])
        assert message.event_type == event_type
        assert message.routing_key == f"notifications.{inner['priority'].lower()}"
        assert inner["priority"] in ("INFO", "ERROR")
        assert message.exchange == "trove"
        assert message.properties == AMQP_PROPERTIES


def test_publishers_follow_the_spec(small: tuple[Scenario, list[WireMessage]]) -> None:
    _, messages = small
    for _, inner in first_occurrences(messages):
        event_type, service = inner["event_type"], inner["publisher_id"].split(".")[0]
        if event_type.startswith("dbaas.") and event_type.endswith(".start"):
            assert service == "api", event_type
        elif event_type.startswith("dbaas.backup_create."):
            assert service == "conductor", event_type  # end and error come from the conductor
        elif event_type != "dbaas.quota":
            assert service == "taskmanager", event_type


def test_payload_fields_follow_the_fixtures(small: tuple[Scenario, list[WireMessage]]) -> None:
    _, messages = small
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, inner in first_occurrences(messages):
        by_type[inner["event_type"]].append(inner["payload"])

    def fixture_keys(name: str) -> list[str]:
        inner = notification(fixture(name)[0])
        assert inner is not None
        return list(inner["payload"])

    def generated_keys(event_type: str) -> list[str]:
        with_volume = [p for p in by_type[event_type] if "volume_size" in p]
        assert with_volume, event_type
        return list(with_volume[0])

    for name in ("dbaas.instance_create.start.v2", "dbaas.instance_create.end.v2",
                 "dbaas.instance_create.error.v2", "trove.instance.exists.v2"):
        assert generated_keys(name.rsplit(".", 1)[0]) == fixture_keys(name)
    assert list(by_type["dbaas.backup_create.start"][0]) == \
        fixture_keys("dbaas.backup_create.start.v2")
    # the conductor's end also reports the backup's size: what backup GB-seconds are billed on
    assert list(by_type["dbaas.backup_create.end"][0]) == \
        fixture_keys("dbaas.backup_create.end.v2") + ["size"]
    # Trove's delete usage event has no audit period (the fixture's payload was made up)
    assert generated_keys("trove.instance.delete") == [
        k for k in fixture_keys("trove.instance.delete.v2") if not k.startswith("audit_period")]


def test_failures_carry_a_python_traceback(small: tuple[Scenario, list[WireMessage]]) -> None:
    _, messages = small
    errors = [m for _, m in first_occurrences(messages) if m["event_type"].endswith(".error")]
    assert errors
    for inner in errors:
        exception = inner["payload"]["exception"]
        assert exception.startswith("Traceback (most recent call last):\n  File \"")
        assert exception.endswith("\n") and exception.count("\n") >= 4
        last = exception.rstrip("\n").rsplit("\n", 1)[-1]
        assert re.match(r"[a-z_]+(\.[a-z_]+)+\.[A-Z]\w+: ", last), last
        if inner["event_type"].startswith("dbaas."):
            assert last.endswith(inner["payload"]["message"])


# ---------------------------------------------------------------------- expected totals


def _recompute(config: ScenarioConfig, messages: list[WireMessage]) -> dict[str, Any]:
    """Everything ExpectedTotals states, recomputed from the wire messages alone: billing
    second by second, operations by joining starts to ends/errors, counts by parsing."""
    start = config.start
    horizon = config.horizon
    occurrences = first_occurrences(messages)
    inners = [inner for _, inner in occurrences]
    position = {inner["message_id"]: pos for pos, inner in occurrences}

    # -- messages
    parsed = [notification(m.body) for m in messages]
    originals: dict[str, bytes] = {}
    duplicates = 0
    for message, inner in zip(messages, parsed):
        if inner is not None:
            if inner["message_id"] in originals:
                assert originals[inner["message_id"]] == message.body
                duplicates += 1
            else:
                originals[inner["message_id"]] = message.body
    ids = sorted(originals)

    # -- billing, second by second
    instances: dict[str, dict[str, Any]] = {}
    backups: dict[str, dict[str, Any]] = {}
    exists: Counter[str] = Counter()
    deleted_backups: dict[str, datetime] = {}
    for inner in inners:
        event_type, payload = inner["event_type"], inner["payload"]
        if event_type == "trove.instance.create":
            launched = payload_time(payload["launched_at"])
            assert launched == event_time(inner)
            instances[payload["instance_id"]] = {
                "tenant": payload["tenant_id"], "launched": launched, "deleted": None,
                "flavors": [(launched, payload["instance_type_id"])],
                "volumes": [(launched, payload.get("volume_size", 0))]}
    for inner in inners:
        event_type, payload = inner["event_type"], inner["payload"]
        if event_type == "trove.instance.modify_flavor":
            instances[payload["instance_id"]]["flavors"].append(
                (payload_time(payload["modify_at"]), payload["instance_type_id"]))
        elif event_type == "trove.instance.modify_volume":
            instances[payload["instance_id"]]["volumes"].append(
                (payload_time(payload["modify_at"]), payload["volume_size"]))
        elif event_type == "trove.instance.delete":
            instances[payload["instance_id"]]["deleted"] = payload_time(payload["deleted_at"])
        elif event_type == "trove.instance.exists":
            period = (payload_time(payload["audit_period_ending"])
                      - payload_time(payload["audit_period_beginning"]))
            exists[payload["tenant_id"]] += int(period.total_seconds())
        elif event_type == "dbaas.backup_create.end":
            backups[payload["backup_id"]] = {"tenant": payload["tenant_id"],
                                             "centi_gb": round(payload["size"] * 100),
                                             "completed": event_time(inner)}
        elif event_type == "dbaas.backup_delete.end":
            deleted_backups[payload["backup_id"]] = event_time(inner)
        elif event_type == "backup.delete.end":
            deleted_backups[payload["id"]] = event_time(inner)
    instance_seconds: dict[str, Counter[str]] = defaultdict(Counter)
    volume_gb_seconds: Counter[str] = Counter()
    backup_centi_gb_seconds: Counter[str] = Counter()
    for instance in instances.values():
        instance["flavors"].sort()
        instance["volumes"].sort()
    total_seconds = int((horizon - start).total_seconds())
    for offset in range(total_seconds):
        second = start + timedelta(seconds=offset)
        for instance in instances.values():
            if instance["launched"] <= second < (instance["deleted"] or horizon):
                flavor = [f for t, f in instance["flavors"] if t <= second][-1]
                volume = [v for t, v in instance["volumes"] if t <= second][-1]
                instance_seconds[instance["tenant"]][flavor] += 1
                volume_gb_seconds[instance["tenant"]] += volume
        for backup_id, backup in backups.items():
            if backup["completed"] <= second < deleted_backups.get(backup_id, horizon):
                backup_centi_gb_seconds[backup["tenant"]] += backup["centi_gb"]

    # -- operations: starts joined to their end or error
    starts: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    finishes: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for inner in inners:
        name, _, phase = inner["event_type"].rpartition(".")
        payload = inner["payload"]
        if name.startswith("dbaas."):
            operation, key = name[len("dbaas."):], payload.get("request_id")
        else:
            operation = name
            key = payload.get("instance_id") if name == "instance.reboot" else payload.get("id")
        if operation not in OPERATIONS:
            continue
        (starts if phase == "start" else finishes)[(operation, key)].append(inner)
    operations: Counter[tuple[str, str, str]] = Counter()
    failures: Counter[tuple[str, str, str, str]] = Counter()
    durations: dict[str, list[float]] = defaultdict(list)
    ends_before_starts = 0
    for (operation, key), opened in starts.items():
        resource_type, canonical = OPERATIONS[operation]
        closed = sorted(finishes.get((operation, key), []), key=event_time)
        for begin in sorted(opened, key=event_time):
            # a design-note resource may repeat an operation: the next finish after this start
            finish = next((f for f in closed if event_time(f) >= event_time(begin)), None)
            if finish is None:
                operations[(resource_type, canonical, "abandoned")] += 1
                continue
            closed.remove(finish)
            failed = finish["event_type"].endswith(".error")
            operations[(resource_type, canonical, "failed" if failed else "succeeded")] += 1
            durations[f"{resource_type}.{canonical}"].append(
                (event_time(finish) - event_time(begin)).total_seconds())
            if position[finish["message_id"]] < position[begin["message_id"]]:
                ends_before_starts += 1
            if failed:
                last_line = finish["payload"]["exception"].rstrip("\n").rsplit("\n", 1)[-1]
                failures[(finish["payload"]["tenant_id"], resource_type, canonical,
                          last_line.split(":", 1)[0])] += 1
    return {
        "valid": len(ids), "duplicate": duplicates,
        "garbage": sum(1 for inner in parsed if inner is None),
        "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "instance_seconds": {t: dict(f) for t, f in instance_seconds.items()},
        "volume_gb_seconds": {t: v for t, v in volume_gb_seconds.items() if v},
        "backup_gb_seconds": {t: round(v / 100, 2) for t, v in backup_centi_gb_seconds.items()},
        "exists_seconds": dict(exists),
        "operations": operations, "failures": failures, "durations": durations,
        "ends_before_starts": ends_before_starts,
    }


def test_expected_totals_equal_a_brute_force_recomputation(
        small: tuple[Scenario, list[WireMessage]]) -> None:
    scenario, messages = small
    expected = scenario.expected
    truth = _recompute(SMALL, messages)

    assert expected.messages["total"] == len(messages)
    assert (expected.messages["valid"], expected.messages["duplicate"],
            expected.messages["garbage"]) == (truth["valid"], truth["duplicate"], truth["garbage"])
    assert expected.message_id_count == truth["valid"]
    assert expected.message_id_sha256 == truth["ids_sha256"]

    assert expected.instance_seconds == truth["instance_seconds"]
    assert expected.volume_gb_seconds == truth["volume_gb_seconds"]
    assert expected.backup_gb_seconds == truth["backup_gb_seconds"]
    assert expected.exists_seconds == truth["exists_seconds"]

    assert {k: v for k, v in expected.operations.items() if v} == dict(truth["operations"])
    assert expected.failures == dict(truth["failures"])
    assert expected.messages["ends_before_starts"] == truth["ends_before_starts"]
    for name, values in truth["durations"].items():
        values.sort()
        stats = expected.operation_durations[name]
        assert stats.count == len(values)
        assert stats.max_s == round(values[-1], 3)
        assert stats.p50_s == round(values[-(-len(values) * 50 // 100) - 1], 3)

    # the scenario exercises what it promises
    outcomes = {outcome for (_, _, outcome), n in expected.operations.items() if n}
    assert outcomes == {"succeeded", "failed", "abandoned"}
    assert truth["ends_before_starts"] > 0
    assert expected.unknown_event_types
    assert {"instance.reboot.start", "backup.delete.start", "dbaas.cluster_create.end",
            "dbaas.quota"} <= set(expected.messages["by_event_type"])


def test_time_stops_at_the_horizon_and_stream_time_passes_it(
        small: tuple[Scenario, list[WireMessage]]) -> None:
    scenario, messages = small
    horizon = SMALL.horizon
    last_audit_end = horizon.strftime("%Y-%m-%dT%H:%M:%S")
    inners = [inner for _, inner in first_occurrences(messages)]
    for inner in inners:
        if event_time(inner) >= horizon:
            assert inner["event_type"] in ("trove.instance.exists", "dbaas.quota")
            if inner["event_type"] == "trove.instance.exists":
                assert inner["payload"]["audit_period_ending"] == last_audit_end
    assert max(map(event_time, inners)) >= horizon + timedelta(seconds=SMALL.closing_delay_s)
    offsets = [m.sent_offset for m in messages]
    assert offsets == sorted(offsets)
    assert scenario.expected.to_json()["billing"]["horizon"] == "2026-11-02T06:00:00Z"


def test_duplicates_repeat_the_message_shortly_after(
        small: tuple[Scenario, list[WireMessage]]) -> None:
    _, messages = small
    first_seen: dict[bytes, int] = {}
    duplicates = 0
    for position, message in enumerate(messages):
        if message.kind == "duplicate":
            duplicates += 1
            assert message.body in first_seen
            assert 0 < position - first_seen[message.body] <= 20
        elif message.kind == "valid":
            first_seen[message.body] = position
    assert duplicates > 0


def test_garbage_share_and_kinds() -> None:
    config = replace(SMALL, instances=60, hours=24, garbage_rate=0.05)
    scenario = build_scenario(config)
    messages = list(scenario.messages())
    garbage = [m for m in messages if m.kind == "garbage"]
    assert 0.035 < len(garbage) / len(messages) < 0.065
    assert all(notification(m.body) is None and m.event_type is None for m in garbage)
    assert set(scenario.expected.messages["garbage_by_reason"]) == {
        "not_json", "truncated", "no_message", "wrong_version", "missing_event_type",
        "inner_not_json"}


def test_v1_share_sends_bodies_without_envelope() -> None:
    scenario = build_scenario(replace(SMALL, instances=40, v1_share=0.5, garbage_rate=0))
    bodies = [m.body for m in scenario.messages()]
    v1 = sum(1 for body in bodies if not body.startswith(b'{"oslo.version"'))
    assert 0.4 < v1 / len(bodies) < 0.6
    assert scenario.expected.messages["v1"] + scenario.expected.messages["v2"] == \
        scenario.expected.messages["valid"]


def test_message_budget_sizes_the_scenario() -> None:
    scenario = build_scenario(ScenarioConfig(instances=0, hours=3, message_budget=4000))
    assert abs(len(scenario) - 4000) / 4000 < 0.05


@pytest.mark.parametrize("change", [
    {"start": datetime(2026, 11, 2, 0, 30, tzinfo=UTC)},
    {"start": datetime(2026, 11, 2)},
    {"failure_rate": 0.7, "abandon_rate": 0.4},
    {"garbage_rate": 1.5},
    {"hours": 0},
])
def test_invalid_configs_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(SMALL, **change)


def test_expected_json_format() -> None:
    document = build_scenario(SMALL).expected.to_json()
    assert json.loads(json.dumps(document)) == document
    assert set(document) == {"format", "scenario", "messages", "message_ids", "operations",
                             "failures", "unknown_event_types", "resources", "billing",
                             "operation_durations"}
    assert document["format"] == "trovemeter.expected/1"
    assert set(document["billing"]) == {"horizon", "instance_seconds", "volume_gb_seconds",
                                        "backup_gb_seconds", "exists_seconds"}
    assert set(document["operations"][0]) == {"resource_type", "operation", "outcome", "count"}
    assert set(document["failures"][0]) == {"tenant_id", "resource_type", "operation",
                                            "exception_class", "count"}


def test_dry_run_writes_expected_totals(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trovemeter.logs.configure_logging", lambda level: None)
    parser = argparse.ArgumentParser()
    simulate_command.add_arguments(parser)
    path = tmp_path / "out" / "expected.json"
    args = parser.parse_args(["--dry-run", "--seed", "7", "--tenants", "3", "--instances", "24",
                              "--hours", "6", "--failure-rate", "0.15", "--abandon-rate", "0.08",
                              "--duplicate-rate", "0.05", "--reorder-rate", "0.1",
                              "--garbage-rate", "0.03", "--v1-share", "0.2",
                              "--expected", str(path)])
    assert simulate_command.run(args) == 0
    assert json.loads(path.read_text()) == build_scenario(SMALL).expected.to_json()
    assert "messages total=" in capsys.readouterr().out


def test_pacing() -> None:
    assert Pacing().due_after(1000, 5000.0) == 0.0
    assert Pacing(rate=200).due_after(100, 5000.0) == 0.5
    assert Pacing(speed=3600).due_after(100, 7200.0) == 2.0
    with pytest.raises(ValueError):
        Pacing(rate=1, speed=1)
