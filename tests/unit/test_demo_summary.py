"""The demo's expected-vs-pipeline comparison (pure), on a real scenario's expected totals."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from trovemeter.demo_summary import (
    FAIL,
    PASS,
    SKIP,
    Observed,
    compare,
    exit_code,
    horizon_of,
    render,
)
from trovemeter.pipeline_tally import UsageTotals, counts_by
from trovemeter.simulation import ScenarioConfig, build_scenario


@pytest.fixture(scope="module")
def expected() -> dict:
    scenario = build_scenario(ScenarioConfig(seed=11, tenants=3, instances=12, hours=8,
                                             failure_rate=0.1, abandon_rate=0.05,
                                             garbage_rate=0.02))
    # Through JSON, as the demo reads .stack/run/expected.json.
    return json.loads(json.dumps(scenario.expected.to_json()))


@pytest.fixture(scope="module")
def message_ids(expected: dict) -> set[str]:
    # The expected file only has the count and digest; rebuild the id set from the scenario.
    from trovemeter.demo_command import RunLedger

    scenario = build_scenario(ScenarioConfig(seed=11, tenants=3, instances=12, hours=8,
                                             failure_rate=0.1, abandon_rate=0.05,
                                             garbage_rate=0.02))
    return RunLedger.of(scenario).message_ids


def perfect(expected: dict, ids: set[str], **overrides: object) -> Observed:
    """What a correct pipeline that has seen everything reports."""
    operations = counts_by(expected["operations"], "resource_type", "operation", "outcome")
    failures = counts_by(expected["failures"], "tenant_id", "resource_type", "operation",
                         "exception_class")
    durations = {}
    for name, stats in expected["operation_durations"].items():
        # A distribution with the expected count and nearest-rank p50/p95.
        n = stats["count"]
        values = [stats["p50_s"]] * n
        for i in range(n):
            if i + 1 > -(-n * 95 // 100):
                values[i] = stats["max_s"]
            elif i + 1 > -(-n * 50 // 100):
                values[i] = stats["p95_s"]
        durations[name] = values
    billing = expected["billing"]
    usage = {}
    tenants = {*billing["instance_seconds"], *billing["volume_gb_seconds"],
               *billing["backup_gb_seconds"], *billing["exists_seconds"]}
    for tenant in tenants:
        usage[tenant] = UsageTotals(
            instance_seconds={f: float(s) for f, s in
                              billing["instance_seconds"].get(tenant, {}).items()},
            volume_gb_seconds=float(billing["volume_gb_seconds"].get(tenant, 0)),
            backup_gb_seconds=float(billing["backup_gb_seconds"].get(tenant, 0)) + 0.001,
            exists_seconds=float(billing["exists_seconds"].get(tenant, 0)))
    fields: dict = dict(operations=operations, failures=failures,
                        dead_letters=expected["messages"]["garbage"],
                        message_ids=set(ids), durations=durations, usage=usage,
                        usage_agent_present=True, open_operations=Counter())
    fields.update(overrides)
    return Observed(**fields)  # type: ignore[arg-type]


def by_label(checks: list) -> dict:
    return {c.label: c for c in checks}


def test_scenario_exercises_every_section(expected: dict) -> None:
    assert expected["messages"]["garbage"] > 0
    assert any(r["outcome"] == "abandoned" and r["count"] for r in expected["operations"])
    assert expected["failures"]
    assert expected["billing"]["instance_seconds"]


def test_a_correct_pipeline_passes_every_compared_line(expected: dict, message_ids: set[str]
                                                       ) -> None:
    checks = compare(expected, perfect(expected, message_ids))
    failed = [c for c in checks if c.ok is False]
    assert not failed, render(failed)
    assert exit_code(checks) == 0
    labels = by_label(checks)
    assert labels["operations succeeded"].ok is True
    assert labels["distinct message ids in trove.notifications"].actual.endswith(
        "(sha256 matches)")
    assert any(c.section == "usage" and "instance s, " in c.label for c in checks)
    # Resources are informational only.
    assert all(c.ok is None for c in checks if c.section == "resources")


def test_a_missing_operation_is_a_failure_with_the_detail(expected: dict,
                                                          message_ids: set[str]) -> None:
    observed = perfect(expected, message_ids)
    key = next(k for k, n in observed.operations.items() if k[2] == "succeeded" and n)
    operations = Counter(observed.operations)
    operations[key] -= 1
    checks = compare(expected, perfect(expected, message_ids, operations=operations))
    line = by_label(checks)["operations succeeded"]
    assert line.ok is False and line.mark == FAIL
    assert any(f"{key[0]}.{key[1]}" in d for d in line.details)
    assert exit_code(checks) == 1


def test_abandoned_counts_reported_plus_still_open(expected: dict, message_ids: set[str]
                                                   ) -> None:
    observed = perfect(expected, message_ids)
    key = next(k for k, n in observed.operations.items() if k[2] == "abandoned" and n)
    operations = Counter(observed.operations)
    operations[key] -= 1
    still_open = Counter({(key[0], key[1]): 1})
    line = by_label(compare(expected, perfect(expected, message_ids, operations=operations,
                                              open_operations=still_open)))[
        "operations abandoned"]
    assert line.ok is True
    assert "1 still open" in line.actual
    # Without the worker's open operations the line is not judged, and says why.
    unknown = by_label(compare(expected, perfect(expected, message_ids, operations=operations,
                                                 open_operations=None)))["operations abandoned"]
    assert unknown.ok is None and unknown.mark == SKIP
    assert any("not reported yet" in d for d in unknown.details)
    # Open operations that do not make up the difference: a failure.
    wrong = by_label(compare(expected, perfect(expected, message_ids, operations=operations,
                                               open_operations=Counter())))["operations abandoned"]
    assert wrong.ok is False


def test_reporting_more_abandoned_than_expected_fails(expected: dict, message_ids: set[str]
                                                      ) -> None:
    observed = perfect(expected, message_ids)
    operations = Counter(observed.operations)
    operations[("instance", "restart", "abandoned")] += 1
    line = by_label(compare(expected, perfect(expected, message_ids, operations=operations,
                                              open_operations=None)))["operations abandoned"]
    assert line.ok is False


def test_message_ids_missing_and_foreign(expected: dict, message_ids: set[str]) -> None:
    some = set(sorted(message_ids)[1:])
    line = by_label(compare(expected, perfect(expected, message_ids, message_ids=some)))[
        "distinct message ids in trove.notifications"]
    assert line.ok is False and "1 of" in line.details[0]
    swapped = some | {"not-one-of-ours"}
    line = by_label(compare(expected, perfect(expected, message_ids, message_ids=swapped)))[
        "distinct message ids in trove.notifications"]
    assert line.ok is False and "sha256" in line.details[0]


def test_dead_letters_and_failures(expected: dict, message_ids: set[str]) -> None:
    checks = by_label(compare(expected, perfect(expected, message_ids, dead_letters=0)))
    assert checks["dead letters = garbage bodies published"].ok is False
    observed = perfect(expected, message_ids)
    failures = Counter(observed.failures)
    key = next(iter(failures))
    failures[key] += 1
    checks = by_label(compare(expected, perfect(expected, message_ids, failures=failures)))
    line = checks["errors by tenant, operation and exception"]
    assert line.ok is False and key[3] in line.details[0]


def test_usage_not_built_yet_is_said_not_faked(expected: dict, message_ids: set[str]) -> None:
    checks = compare(expected, perfect(expected, message_ids, usage=None,
                                       usage_agent_present=False))
    usage = [c for c in checks if c.section == "usage"]
    assert len(usage) == 1 and usage[0].ok is None
    assert usage[0].actual == "usage metering not built yet"
    assert exit_code(checks) == 0
    # With a usage stage in the worker, no record at all is a failure.
    checks = compare(expected, perfect(expected, message_ids, usage=None,
                                       usage_agent_present=True))
    assert [c.ok for c in checks if c.section == "usage"] == [False]


def test_usage_per_tenant_and_flavor(expected: dict, message_ids: set[str]) -> None:
    observed = perfect(expected, message_ids)
    assert observed.usage is not None
    tenant = sorted(expected["billing"]["instance_seconds"])[0]
    flavor = sorted(expected["billing"]["instance_seconds"][tenant])[0]
    usage = dict(observed.usage)
    totals = usage[tenant]
    usage[tenant] = UsageTotals(instance_seconds={**totals.instance_seconds,
                                                  flavor: totals.instance_seconds[flavor] + 1},
                                volume_gb_seconds=totals.volume_gb_seconds,
                                backup_gb_seconds=totals.backup_gb_seconds,
                                exists_seconds=totals.exists_seconds)
    checks = compare(expected, perfect(expected, message_ids, usage=usage))
    bad = [c for c in checks if c.ok is False]
    assert len(bad) == 1
    assert tenant[:8] in bad[0].label and f"flavor {flavor}" in bad[0].label


def test_durations_compare_nearest_rank(expected: dict, message_ids: set[str]) -> None:
    observed = perfect(expected, message_ids)
    name = max(expected["operation_durations"],
               key=lambda n: expected["operation_durations"][n]["count"])
    durations = dict(observed.durations)
    durations[name] = [d + 1.0 for d in durations[name]]
    line = by_label(compare(expected, perfect(expected, message_ids, durations=durations)))[
        f"duration {name}"]
    assert line.ok is False


def test_render_marks_and_verdict(expected: dict, message_ids: set[str]) -> None:
    text = render(compare(expected, perfect(expected, message_ids, usage=None,
                                            usage_agent_present=False)), title="summary")
    assert text.splitlines()[0] == "summary"
    assert "expected" in text.splitlines()[1] and "pipeline" in text.splitlines()[1]
    assert PASS in text and SKIP in text and FAIL not in text.split("✗")[0]
    assert "all compared totals match" in text
    colored = render(compare(expected, perfect(expected, message_ids, dead_letters=0)),
                     color=True)
    assert "\x1b[31;1m✗\x1b[0m" in colored and "differ" in colored


def test_horizon_of(expected: dict) -> None:
    start, horizon = horizon_of(expected)
    assert start.tzinfo is not None and horizon - start == timedelta(hours=8)
    assert start == datetime(2026, 11, 2, tzinfo=UTC)


def test_message_id_digest_matches_the_simulator(expected: dict, message_ids: set[str]) -> None:
    digest = hashlib.sha256("\n".join(sorted(message_ids)).encode()).hexdigest()
    assert digest == expected["message_ids"]["sha256"]


def test_conflicting_repeats_of_a_record_id_fail(expected: dict, message_ids: set[str]) -> None:
    checks = by_label(compare(expected, perfect(expected, message_ids,
                                                conflicts=["r1 instance.reboot succeeded then "
                                                           "abandoned"])))
    line = checks["one content per operation record id"]
    assert line.ok is False and line.details == ("r1 instance.reboot succeeded then abandoned",)


def test_dead_letters_of_another_exchange_are_not_this_runs() -> None:
    from trovemeter.demo_command import RunLedger
    from trovemeter.model import DeadLetter, RejectReason

    ledger = RunLedger(garbage_shas=Counter({"s": 1}), exchange="trove")

    def letter(exchange: str) -> DeadLetter:
        return DeadLetter(reason=RejectReason.NOT_JSON, detail="d", body=b"", body_length=0,
                          body_sha256="s", body_redacted=False, exchange=exchange,
                          routing_key="notifications.info", received_at=datetime.now(UTC))

    assert ledger.owns(letter("trove")) and not ledger.owns(letter("chaos.trove"))
