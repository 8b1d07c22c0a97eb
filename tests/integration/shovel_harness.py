"""Helpers to drive `trovemeter shovel` as a real subprocess against the real brokers: the wire
fixtures, publishing with their AMQP properties, reading Kafka from given offsets, queue depths.

Shared by tests/integration/test_shovel.py and bench/bench_shovel.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parents[2]
# The captured oslo.messaging wire bodies, copied into the repository (tests/fixtures/wire).
FIXTURES = Path(os.environ.get("TROVEMETER_FIXTURES", ROOT / "tests" / "fixtures" / "wire"))
TROVEMETER = ROOT / ".venv" / "bin" / "trovemeter"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
# The node stack/stack.sh started and its AMQP port (moved aside with TROVEMETER_STACK_*).
RABBIT_NODE = os.environ.get("TROVEMETER_STACK_RABBIT_NODE", "trovemeter@localhost")
RABBIT_PORT = int(os.environ.get("TROVEMETER_STACK_RABBIT_PORT", "5672"))

_MESSAGE_ID = re.compile(rb'"message_id\\?": \\?"([0-9a-f-]{36})')


@dataclass(frozen=True)
class Fixture:
    name: str
    body: bytes
    exchange: str
    routing_key: str
    properties: dict[str, Any]

    @property
    def message_id(self) -> str:
        return message_id_of(self.body)

    def pika_properties(self) -> pika.BasicProperties:
        return pika_properties(self.properties)

    def with_message_id(self, new_id: str) -> bytes:
        """The same bytes with another message_id (same length, same escaping)."""
        return self.body.replace(self.message_id.encode(), new_id.encode())


def load_fixtures(directory: Path = FIXTURES) -> list[Fixture]:
    fixtures = []
    for body_path in sorted(directory.glob("*.body")):
        meta = json.loads(body_path.with_suffix(".meta.json").read_text())
        fixtures.append(Fixture(body_path.name.removesuffix(".body"), body_path.read_bytes(),
                                meta["exchange"], meta["routing_key"], meta["properties"]))
    if not fixtures:
        raise FileNotFoundError(f"no *.body fixtures under {directory}")
    return fixtures


def message_id_of(body: bytes) -> str:
    match = _MESSAGE_ID.search(body)
    if not match:
        raise ValueError("no message_id in body")
    return match.group(1).decode()


def pika_properties(props: dict[str, Any]) -> pika.BasicProperties:
    return pika.BasicProperties(**{k: v for k, v in props.items() if v is not None})


def oslo_properties() -> pika.BasicProperties:
    """What oslo.messaging sets on every notification (fixtures/README.md)."""
    return pika.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                delivery_mode=2, priority=0, headers={})


# ------------------------------------------------------------------ RabbitMQ


class Rabbit:
    """A publishing/admin connection to the local RabbitMQ."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def __enter__(self) -> Rabbit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, queue: str, exchanges: Iterable[str],
                routing_keys: Iterable[str] = ("notifications.*",), durable: bool = False) -> None:
        """Declare exchanges, queue and bindings as the shovel does, so messages published before
        the shovel starts are not unroutable."""
        for exchange in exchanges:
            self.channel.exchange_declare(exchange, "topic", durable=durable)
            for key in routing_keys:
                self.channel.queue_declare(queue, durable=True)
                self.channel.queue_bind(queue, exchange, key)

    def publish(self, exchange: str, routing_key: str, body: bytes,
                properties: pika.BasicProperties | None = None) -> None:
        self.channel.basic_publish(exchange, routing_key, body, properties or oslo_properties())

    def publish_many(self, items: Iterable[tuple[str, str, bytes, pika.BasicProperties]],
                     confirm: bool = False) -> int:
        if confirm:
            self.channel.confirm_delivery()
        n = 0
        for exchange, routing_key, body, props in items:
            self.channel.basic_publish(exchange, routing_key, body, props)
            n += 1
            if n % 2000 == 0:
                self.connection.process_data_events(0)
        return n

    def ready(self, queue: str) -> int:
        """Ready (not delivered) messages in ``queue`` (passive declare)."""
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def wait_ready(self, queue: str, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.ready(queue) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue}: {self.ready(queue)} of {count} messages after {timeout}s")
            time.sleep(0.05)

    def delete_queue(self, queue: str) -> None:
        try:
            self.channel.queue_delete(queue)
        except pika.exceptions.AMQPError:
            pass

    def delete_exchange(self, exchange: str) -> None:
        try:
            self.channel.exchange_delete(exchange)
        except pika.exceptions.AMQPError:
            pass


def queue_counts(queue: str) -> tuple[int, int]:
    """(ready, unacked) of ``queue`` from rabbitmqctl: a passive declare sees only ready ones."""
    env = dict(os.environ, HOME=str(ROOT / ".stack" / "rabbitmq"))
    out = subprocess.run(
        [RABBITMQCTL, "-q", "-n", RABBIT_NODE, "list_queues", "name", "messages_ready",
         "messages_unacknowledged", "--no-table-headers"],
        capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    for line in out.splitlines():
        parts = line.split("\t")
        if parts[0] == queue:
            return int(parts[1]), int(parts[2])
    raise KeyError(f"queue {queue} not found")


# ------------------------------------------------------------------ Kafka


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)


def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """High watermarks of every partition of ``topics``: read from here to see only new records."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        marks = {}
        metadata = consumer.list_topics(timeout=30)
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                marks[(topic, partition)] = high
        return marks
    finally:
        consumer.close()


def read_records(bootstrap: str, start: dict[tuple[str, int], int],
                 until: Callable[[list[Record]], bool], timeout: float = 60,
                 keep: Callable[[Record], bool] = lambda r: True) -> list[Record]:
    """Records after ``start`` (kept when ``keep(record)``) until ``until(records)`` or timeout."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(records):
            for message in consumer.consume(num_messages=5000, timeout=0.2):
                if message.error():
                    continue
                record = Record(message.topic(), message.partition(), message.offset(),
                                message.key(), message.value(),
                                {k: v for k, v in (message.headers() or [])})
                if keep(record):
                    records.append(record)
        return records
    finally:
        consumer.close()


def by_message_id(records: Iterable[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for record in records:
        mid = record.headers.get("trovemeter.message_id")
        if mid is not None:
            out.setdefault(mid.decode(), []).append(record)
    return out


# ------------------------------------------------------------------ the shovel process


class ShovelProcess:
    """`trovemeter shovel` as a subprocess with its own queue and metrics port; logs to a file."""

    def __init__(self, queue: str, exchanges: Iterable[str], metrics_port: int, log_path: Path,
                 extra_args: Iterable[str] = (), env: dict[str, str] | None = None) -> None:
        self.queue, self.metrics_port, self.log_path = queue, metrics_port, log_path
        self.args = [str(TROVEMETER), "shovel", "--queue", queue, "--exchanges", ",".join(exchanges),
                     "--metrics-port", str(metrics_port), *extra_args]
        self.env = dict(os.environ, **(env or {}))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ShovelProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                        env=self.env, cwd=ROOT)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            # 15 s, not 5: on this shared 2-core machine at load 12+ a busy shovel's HTTP thread
            # was seen to answer after more than 5 s; these tests check content, not latency.
            with urllib.request.urlopen(self.url(path), timeout=15) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def health(self) -> dict[str, Any]:
        return json.loads(self.get("/healthz")[1])

    def wait_healthy(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"shovel exited with {self.process.returncode}:\n{self.logs()}")
            try:
                state = self.health()
                if state.get("healthy"):
                    return state
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"shovel not healthy after {timeout}s:\n{self.logs()}")

    def metrics(self) -> dict[str, float]:
        """Prometheus samples as {'name{labels}': value}."""
        status, text = self.get("/metrics")
        assert status == 200
        samples = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL: no goodbye
        self.process.wait(30)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_events(self) -> Iterator[dict[str, Any]]:
        for line in self.logs().splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                yield {"event": "<not json>", "line": line}

    def __enter__(self) -> ShovelProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    env = dict(os.environ, HOME=str(ROOT / ".stack" / "rabbitmq"))
    return subprocess.run([RABBITMQCTL, "-q", "-n", RABBIT_NODE, *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=True).stdout


def close_connections_named(fragment: str, reason: str = "closed by test") -> int:
    """Force-close (server side) every connection whose client properties mention ``fragment``."""
    closed = 0
    for line in rabbitmqctl("list_connections", "pid", "client_properties",
                            "--no-table-headers").splitlines():
        if fragment in line:
            rabbitmqctl("close_connection", line.split("\t")[0], reason)
            closed += 1
    return closed


def drain(url: str, queue: str, idle: float = 1.0) -> list[bytes]:
    """Consume (auto-ack) everything left in ``queue``; returns the bodies."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    bodies = []
    try:
        for method, _props, body in channel.consume(queue, auto_ack=True, inactivity_timeout=idle):
            if method is None:
                break
            bodies.append(body)
        channel.cancel()
    finally:
        connection.close()
    return bodies


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the shovel's parser helpers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
