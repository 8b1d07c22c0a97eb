"""`trovemeter demo` end to end on a small, fast scenario: shovel + worker + simulator on the
real brokers, isolated from a demo the developer may have running (own run dir, exchange, queue,
ports and copies of the topics), and the summary says the pipeline's totals equal the simulator's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TROVEMETER = ROOT / ".venv" / "bin" / "trovemeter"


def delete_topics_of(bootstrap: str, prefix: str) -> None:
    """The worker's internal topics (changelogs, repartitions) of a test app id."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    doomed = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if doomed:
        for future in admin.delete_topics(doomed).values():
            future.result(30)


def test_demo_runs_to_a_summary_where_every_compared_total_matches(
        kafka_bootstrap: str, rabbit_url: str, unique_name: str, tmp_path: Path) -> None:
    try:
        run_demo(kafka_bootstrap, unique_name, tmp_path)
    finally:
        delete_topics_of(kafka_bootstrap, f"{unique_name}-demo")  # the worker's internal ones
        delete_topics_of(kafka_bootstrap, f"{unique_name}.")  # the run's copies of trove.*


def run_demo(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = [str(TROVEMETER), "demo", "--seed", "5", "--tenants", "2", "--instances", "6",
            "--hours", "6", "--duration", "20", "--settle-timeout", "90",
            "--exchange", f"{unique_name}.trove", "--queue", f"{unique_name}.demo",
            "--web-port", str(free_port()), "--metrics-port", str(free_port()),
            "--run-dir", str(run_dir), "--app-id", f"{unique_name}-demo", "--stop-at-end",
            # Own copies of the topics: a demo or another worker running on the real ones (a
            # developer's `make demo` left running) would also process this run's traffic.
            "--topic-prefix", f"{unique_name}."]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=420, cwd=ROOT)
    output = result.stdout + result.stderr
    summary = json.loads((run_dir / "summary.json").read_text()) \
        if (run_dir / "summary.json").exists() else None
    assert summary is not None, output
    failed = [c for c in summary["checks"] if c["ok"] is False]
    assert not failed, output
    assert result.returncode == 0, output

    labels = {c["label"]: c for c in summary["checks"]}
    for label in ("operations succeeded", "operations failed",
                  "distinct message ids in trove.notifications",
                  "dead letters = garbage bodies published",
                  "errors by tenant, operation and exception"):
        assert labels[label]["ok"] is True, output
    assert "✓ operations succeeded" in output and "all compared totals match" in output
    # Usage is compared once the usage stage exists, and only said to be missing before.
    usage = [c for c in summary["checks"] if c["section"] == "usage"]
    assert usage and all(c["ok"] is True for c in usage) or \
        [c["actual"] for c in usage] == ["usage metering not built yet"]
    # Nothing left running: --stop-at-end.
    assert not list(run_dir.glob("*.pid"))
    expected = json.loads((run_dir / "expected.json").read_text())
    assert expected["format"] == "trovemeter.expected/1"
