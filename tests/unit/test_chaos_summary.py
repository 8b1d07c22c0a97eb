"""The chaos suite's summary table (tests/chaos/summary.py) from counts."""

from __future__ import annotations

from tests.chaos.summary import FAIL, PASS, SKIP, RunCounts, render


def long_run(**changes: object) -> RunCounts:
    base = dict(
        name="100k, kills + restarts",
        faults=[("shovel SIGKILL", 5), ("worker SIGKILL", 5), ("Kafka stop/restart", 1),
                ("RabbitMQ stop/restart", 1)],
        published={"valid": 98546, "duplicate": 979, "garbage": 515},
        expected_ids=98546, delivered_ids=98546, notification_records=101300,
        dead_letters={"not_json": 157, "unsupported_version": 98, "missing_field": 87},
        dead_letter_records=350, garbage_published=342,
        operation_records=12010, operations_distinct=12000,
        usage_records=5000, usage_latest=4800,
        checks=[("operations succeeded", True), ("instance seconds per tenant and flavor", True),
                ("abandoned (open ones not visible)", None)],
    )
    base.update(changes)
    return RunCounts(**base)  # type: ignore[arg-type]


def test_counts_derived_from_the_run() -> None:
    run = long_run()
    assert run.lost == 0 and run.dead_letters_missing == 0 and run.ok
    assert run.duplicates_dropped == {"trove.notifications": 101300 - 98546,
                                      "dead letters": 350 - 342, "trove.operations": 10,
                                      "trove.usage (older versions)": 200}


def test_the_table_has_every_row_the_issue_asks_for() -> None:
    text = render([long_run(), RunCounts(
        name="Kafka unreachable 60 s", faults=[("Kafka SIGSTOP 60 s", 1)],
        published={"valid": 20000, "duplicate": 0, "garbage": 0}, expected_ids=20000,
        delivered_ids=20000, notification_records=20000, dead_letters={},
        dead_letter_records=0, garbage_published=0,
        checks=[("nothing acked while Kafka was down", True)])])
    lines = text.splitlines()
    assert lines[0] == "chaos summary"
    for label in ("faults injected", "messages published", "delivered", "duplicates dropped",
                  "lost", "dead-lettered", "checks"):
        assert any(line.startswith(f"| {label}") for line in lines), label
    assert "shovel SIGKILL ×5" in text and "Kafka SIGSTOP 60 s ×1" in text
    assert "100040 confirmed by RabbitMQ" in text
    assert "(valid 98546, duplicate 979, garbage 515)" in text
    assert "98546 of 98546 message ids in trove.notifications" in text
    assert "342 of 342 garbage bodies" in text and "  not_json 157" in text
    assert f"{PASS} operations succeeded" in text and f"{SKIP} abandoned" in text
    assert lines[-1] == "PASS: lost = 0 in 120040 messages published"
    # a table: every row has the same width, columns line up
    body = [line for line in lines[1:-1]]
    assert len({len(line) for line in body}) == 1
    assert all(line.startswith(("|", "+")) for line in body)
    # the second run has no operations/usage rows: they are not shown for it
    assert "trove.operations" in text


def test_loss_missing_dead_letters_and_failed_checks_fail_the_verdict() -> None:
    lost = long_run(delivered_ids=98540)
    assert lost.lost == 6 and not lost.ok
    assert "6  ✗ LOST" in render([lost]) and render([lost]).splitlines()[-1].startswith("FAIL")
    missing = long_run(dead_letters={"not_json": 300})
    assert missing.dead_letters_missing == 42 and not missing.ok
    assert "✗ 42 missing" in render([missing])
    failed = long_run(checks=[("billing", False)])
    assert not failed.ok and f"{FAIL} billing" in render([failed])


def test_no_runs() -> None:
    assert render([]) == "chaos summary: no run finished"
