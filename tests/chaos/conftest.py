"""The chaos suite (`make chaos`): long fault-injection runs on the real local stack.

It stops and restarts the shared Kafka and RabbitMQ, so it runs only when asked to
(``TROVEMETER_CHAOS=1``, which `make chaos` sets) and never as part of `make test`. The summary
table is printed at the end of the session and saved to ``.stack/chaos/summary.txt``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.summary import RunCounts, render
from tests.integration.conftest import kafka_bootstrap, rabbit_url, settings, unique_name

__all__ = ["kafka_bootstrap", "rabbit_url", "settings", "unique_name"]

RESULTS: list[RunCounts] = []
SUMMARY_FILE = Path(__file__).resolve().parents[2] / ".stack" / "chaos" / "summary.txt"


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "chaos: fault injection on the shared stack (make chaos)")


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    if os.environ.get("TROVEMETER_CHAOS") == "1":
        return
    skip = pytest.mark.skip(reason="stops and restarts the shared brokers: run `make chaos` "
                                   "(TROVEMETER_CHAOS=1)")
    for item in items:
        if "tests/chaos/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not RESULTS:
        return
    text = render(RESULTS)
    SUMMARY_FILE.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY_FILE.write_text(text + "\n")
    terminalreporter.write_line("")
    for line in text.splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(saved to {SUMMARY_FILE})")
