"""The dashboard in a real headless Chromium: a worker (unique app id, web port and copies of
trovemeter's topics) processes a small scenario produced straight to its notifications topic;
the page loads, shows the operations, and logs no console error. The screenshot lands in
.stack/screenshots/dashboard-test.png."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.integration.conftest import free_port
from trovemeter import codec, topics
from trovemeter.simulation import ScenarioConfig, build_scenario

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / ".stack" / "screenshots" / "dashboard-test.png"


@pytest.fixture(scope="module")
def browser() -> None:
    from tests.integration.dashboard_browser import BrowserUnavailable, ensure_browser

    try:
        ensure_browser()
    except BrowserUnavailable as exc:
        pytest.fail(str(exc))


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Worker:
    """`trovemeter worker` (with the dashboard) as a subprocess whose consumer group starts at
    the current end of every topic: it sees only what is produced after it started."""

    def __init__(self, bootstrap: str, log_path: Path) -> None:
        from connectors.kafka_admin import ensure_topics
        from trovemeter.demo_command import DemoTopics, worker_argv

        self.app_id = f"test-dashboard-{uuid.uuid4().hex[:8]}"
        # Own copies of trovemeter's topics: nothing else feeds this worker or its dashboard.
        self.topics = DemoTopics(f"{self.app_id}.")
        ensure_topics(bootstrap, self.topics.specs())
        self.port = free_port()
        self.log_path = log_path
        env = dict(os.environ, TROVEMETER_APP_ID=self.app_id, TROVEMETER_WEB_PORT=str(self.port),
                   PYTHONUNBUFFERED="1", **self.topics.worker_env())
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(worker_argv(self.port), stdout=log,
                                            stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dashboard/"

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the worker exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if _get(self.url + "summary/")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the worker's dashboard did not answer within {timeout}s:\n{self.logs()}")

    def summary(self) -> dict:
        return json.loads(_get(self.url + "summary/")[1])

    def logs(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def worker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Worker]:
    from tests.integration.test_demo import delete_topics_of

    running = Worker(kafka_bootstrap, tmp_path / "worker.log")
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()
        delete_topics_of(kafka_bootstrap, running.app_id)  # internal topics and trove.* copies


def produce_scenario(bootstrap: str, topic: str = topics.NOTIFICATIONS) -> int:
    """A small scenario's notifications, parsed and encoded as the shovel would, straight to
    ``topic``. Returns the number of operations it has."""
    from trovemeter.envelope import BadNotification, parse_body

    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    scenario = build_scenario(ScenarioConfig(seed=uuid.uuid4().int % 100_000, tenants=2,
                                             instances=5, hours=4, start=start,
                                             failure_rate=0.15, garbage_rate=0.0))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for message in scenario.messages():
        try:
            notification = parse_body(message.body, max_bytes=1 << 24,
                                      content_type="application/json",
                                      content_encoding="utf-8")
        except BadNotification:
            continue
        key = notification.kafka_key
        producer.produce(topic, codec.encode(notification),
                         key=key.encode() if key else None,
                         headers=[codec.header_for(notification),
                                  ("trovemeter.message_id", notification.message_id.encode())])
    assert producer.flush(30) == 0
    return sum(scenario.expected.operations.values())


def test_dashboard_shows_a_scenario_without_console_errors(browser: None, worker: Worker,
                                                           kafka_bootstrap: str) -> None:
    from tests.integration.dashboard_browser import capture

    operations = produce_scenario(kafka_bootstrap, worker.topics.notifications)
    assert operations > 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.summary()["operations"]["total"] == 0:
        time.sleep(0.5)
    summary = worker.summary()
    assert summary["operations"]["total"] > 0, (
        "the worker wrote no operation to trove.operations within 120 s (are the streams "
        f"agents registered in the worker?)\n{worker.logs()}")

    report = capture(worker.url, SCREENSHOT, min_operations=1, timeout=60)
    assert report.operations > 0, report.text
    assert not report.console_errors, report.console_errors
    assert "live" in report.status_text and worker.app_id in report.status_text
    # What the panels show: operations by name with p50/p95, the chart, resources, errors.
    assert "instance.create" in report.text
    assert report.screenshot is not None and report.screenshot.stat().st_size > 10_000
