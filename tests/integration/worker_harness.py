"""Helpers to drive `trovemeter worker` as real subprocesses against the real Kafka: notifications
built with the model and produced as the shovel produces them, worker processes with their own
app id (consumer group, internal topics), web port and data directory, and readers of the
output topics that keep only one test's records.

Shared by tests/integration/test_streams.py and bench/bench_pairing.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from trovemeter.codec import decode, encode, header_for
from trovemeter.model import Notification, Phase, ResourceType

ROOT = Path(__file__).resolve().parents[2]
TROVEMETER = ROOT / ".venv" / "bin" / "trovemeter"
RUN_DIR = ROOT / ".stack" / "run"
HEADER_MESSAGE_ID = "trovemeter.message_id"
APP_ID_HEADER = "trovemeter.app_id"

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/dist-packages/trove/taskmanager/models.py", line 790, in _create\n'
    "    raise TroveError(msg)\n"
    "trove.common.exception.TroveError: Server creation failed: No valid host was found.\n"
)
ERROR_CLASS = "trove.common.exception.TroveError"
ERROR_LAST_LINE = "trove.common.exception.TroveError: Server creation failed: No valid host was found."


def free_port() -> int:
    from tests.integration.conftest import free_port as port

    return port()


# ------------------------------------------------------------------ notifications


def note(
    phase: Phase,
    at: datetime,
    *,
    tenant: str,
    operation: str = "create",
    resource_type: ResourceType = ResourceType.INSTANCE,
    request_id: str | None = None,
    resource_id: str | None = None,
    message_id: str | None = None,
    payload: dict[str, Any] | None = None,
    event_type: str | None = None,
) -> Notification:
    """A normalised notification (what the shovel puts on trove.notifications)."""
    error = phase is Phase.ERROR
    body = {"tenant_id": tenant, "server_type": "api" if phase is Phase.START else "taskmanager"}
    if request_id:
        body["request_id"] = request_id
    if error:
        body.update(message="Server creation failed: No valid host was found.",
                    exception=TRACEBACK)
    body.update(payload or {})
    if event_type is None:
        if phase is Phase.POINT:
            event_type = f"trove.{resource_type.value}.{operation}"
        else:
            event_type = f"dbaas.{resource_type.value}_{operation}.{phase.value}"
    return Notification(
        message_id=message_id or str(uuid.uuid4()),
        event_type=event_type,
        resource_type=resource_type,
        operation=operation,
        phase=phase,
        publisher_id="api.host1" if phase is Phase.START else "taskmanager.host2",
        priority="INFO",
        occurred_at=at,
        request_id=request_id,
        resource_id=resource_id,
        tenant_id=tenant,
        user_id="user-1",
        error_message="Server creation failed: No valid host was found." if error else None,
        exception_class=ERROR_CLASS if error else None,
        payload=body,
    )


def exists(at: datetime, *, tenant: str, instance_id: str, flavor_id: str = "7",
           volume_size: int = 10) -> Notification:
    """A trove.instance.exists audit of a live instance."""
    return note(Phase.POINT, at, tenant=tenant, operation="exists", resource_id=instance_id,
                payload={"instance_id": instance_id, "instance_type_id": flavor_id,
                         "instance_type": "m1.small", "volume_size": volume_size,
                         "state": "active", "display_name": "db-1",
                         "audit_period_beginning": (at - timedelta(hours=1)).isoformat(),
                         "audit_period_ending": at.isoformat()})


def shovel_producer(bootstrap: str, **overrides: Any) -> Producer:
    """A producer configured like the shovel's (connectors/shovel.py ``producer_config``)."""
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                     "linger.ms": 5, "compression.type": "lz4",
                     "partitioner": "murmur2_random", **overrides})


def produce(producer: Producer, topic: str, notifications: Iterable[Notification],
            flush: bool = True) -> int:
    """Produce as the shovel does: key = resource id (else request id), schema and message id
    headers. Returns the number of records."""
    schema_header = header_for(Notification)
    count = 0
    for n in notifications:
        key = n.kafka_key
        while True:
            try:
                producer.produce(topic, encode(n), key.encode() if key else None,
                                 headers=[schema_header, (HEADER_MESSAGE_ID, n.message_id)])
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
        if count % 1000 == 0:
            producer.poll(0)
    if flush:
        remaining = producer.flush(60)
        assert remaining == 0, f"{remaining} notifications not delivered"
    return count


# ------------------------------------------------------------------ Kafka admin


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 4,
                  config: dict[str, str] | None = None) -> None:
    names = list(names)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})
                                   for name in names])
    for future in futures.values():
        future.result(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until every partition has a leader
        metadata = admin.list_topics(timeout=10).topics
        if all(name in metadata and len(metadata[name].partitions) == partitions and
               all(p.leader >= 0 for p in metadata[name].partitions.values()) for name in names):
            return
        time.sleep(0.1)


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Best effort: every topic whose name starts with ``prefix``."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                try:
                    future.result(timeout=60)
                except Exception:  # noqa: BLE001 - clean-up
                    pass
    except Exception:  # noqa: BLE001
        pass


def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=30)
        marks = {}
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                for attempt in range(50):  # a topic just created may not have a leader yet
                    try:
                        _, high = consumer.get_watermark_offsets(
                            TopicPartition(topic, partition), timeout=30)
                        break
                    except KafkaException:
                        if attempt == 49:
                            raise
                        time.sleep(0.2)
                marks[(topic, partition)] = high
        return marks
    finally:
        consumer.close()


def commit_group_at_end(bootstrap: str, group: str, topics: Sequence[str]) -> None:
    """A new worker of ``group`` starts at the current end of ``topics``, not at whatever other
    runs left there."""
    marks = end_offsets(bootstrap, topics)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in marks.items()],
                        asynchronous=False)
    finally:
        consumer.close()


# ------------------------------------------------------------------ outputs


@dataclass
class Output:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    record: Any
    headers: dict[str, bytes] = field(default_factory=dict)
    received: float = 0.0  # time.monotonic() when read


class OutputReader:
    """Reads topics from given offsets in a background-free loop; keeps decoded records that
    ``keep`` accepts."""

    def __init__(self, bootstrap: str, start: dict[tuple[str, int], int],
                 keep: Callable[[Any], bool] = lambda record: True,
                 app_id: str | None = None) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"reader-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 20})
        self.consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
        self.keep = keep
        # Only records this app wrote (other pipelines on the stack may write the same ids).
        self.app_id = app_id.encode() if app_id else None
        self.outputs: list[Output] = []

    def poll(self, seconds: float = 0.2) -> int:
        added = 0
        deadline = time.monotonic() + seconds
        while True:
            for message in self.consumer.consume(num_messages=5000, timeout=0.05):
                if message.error():
                    continue
                headers = dict(message.headers() or [])
                if self.app_id is not None and headers.get(APP_ID_HEADER) != self.app_id:
                    continue
                record = decode(message.value()) if message.value() else None
                if record is None or not self.keep(record):
                    continue
                self.outputs.append(Output(message.topic(), message.partition(),
                                           message.offset(), message.key(), record,
                                           headers, time.monotonic()))
                added += 1
            if time.monotonic() >= deadline:
                return added

    def wait(self, until: Callable[[list[Output]], bool], timeout: float = 60) -> list[Output]:
        deadline = time.monotonic() + timeout
        while not until(self.outputs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"outputs incomplete after {timeout}s: {len(self.outputs)} "
                                   f"records read")
            self.poll(0.2)
        return self.outputs

    def on(self, topic: str) -> list[Any]:
        return [o.record for o in self.outputs if o.topic == topic]

    def close(self) -> None:
        self.consumer.close()


# ------------------------------------------------------------------ the worker process


class WorkerProcess:
    """`trovemeter worker` as a subprocess; logs to a file. Workers of one test share an app id
    (same consumer group: they split the partitions)."""

    def __init__(self, bootstrap: str, app_id: str, log_path: Path,
                 env: dict[str, str] | None = None, web_port: int | None = None) -> None:
        self.bootstrap = bootstrap
        self.app_id = app_id
        self.web_port = web_port or free_port()
        self.log_path = log_path
        self.data_dir = RUN_DIR / f"faust-{app_id}-{self.web_port}"
        self.env = dict(os.environ, TROVEMETER_APP_ID=app_id,
                        TROVEMETER_DATA_DIR=str(self.data_dir),
                        TROVEMETER_WEB_PORT=str(self.web_port),
                        TROVEMETER_WEB_HOST="127.0.0.1",
                        TROVEMETER_KAFKA_BOOTSTRAP=bootstrap, **(env or {}))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([str(TROVEMETER), "worker", "-l", "info"],
                                            stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=ROOT)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 10) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body)
            except ValueError:
                return exc.code, body.decode(errors="replace")

    def status(self) -> dict[str, Any] | None:
        try:
            code, body = self.get("/status/", timeout=3)
        except OSError:
            return None
        return body if code == 200 else None

    def wait_ready(self, topic: str, timeout: float = 90) -> dict[str, Any]:
        """Until the worker owns partitions of ``topic`` and has recovered its tables."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker exited with {self.process and self.process.returncode}"
                                   f":\n{self.logs()[-4000:]}")
            status = self.status()
            if status and status["recovered"] and status["assignment"].get(topic):
                return status
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.logs()[-4000:]}")

    def stop(self, timeout: float = 60) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(30)

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(30)

    def remove_data_dir(self) -> None:
        """After the process ended: its data directory (Faust's, per app id and port)."""
        import shutil

        shutil.rmtree(self.data_dir, ignore_errors=True)


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s")
        time.sleep(interval)


def utcnow() -> datetime:
    return datetime.now(UTC)
