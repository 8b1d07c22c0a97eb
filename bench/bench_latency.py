"""End-to-end latency: RabbitMQ publish -> `trove.operations`, p50/p95/p99 at 1k and 5k msg/s,
beside the shovel's own share (RabbitMQ publish -> `trove.notifications`) from the same run.

    .venv/bin/python -m bench.bench_latency [--seconds 20] [--rates 1000,5000] [--hours 24]

The whole pipeline runs as it does in production, as subprocesses started here: `trovemeter
shovel` (its own queue bound to a bench exchange) and `trovemeter worker` (its own Faust app id,
so its own consumer group and tables). They use bench copies of the topics
(``E2E_TOPICS``: `trovemeter.bench.e2e.notifications`, `.operations`, `.usage`, ...; the worker is
pointed at them with its TROVEMETER_*_TOPIC settings), so nothing else moves the worker's event
time and the dashboard never shows benchmark records; the worker's group offsets are committed
at the end of its source topic before it starts, so it reads only this run's messages. Below,
`trove.notifications` / `trove.operations` mean those bench copies.

Inputs: a seeded simulator scenario per rate (``ScenarioConfig`` with the default noise: v2
bodies, duplicates, reordering, garbage), sized to rate x seconds messages, published at that
fixed rate by a paced pika publisher that notes the time of every publish. The second scenario
starts after the first one's horizon, so event time never goes backwards for the worker.

What is expected: the pure pairing core (``trovemeter.pairing.step``) is run here over the same
messages in publish order; every ``OperationCompleted`` it emits *on arrival* (request-id
operations: `dbaas.*` start + end/error) is a record the worker must write, and the message that
completed it is its trigger. Design-note operations (no request id) are emitted only after the
allowed lateness by design and are not latency figures. Latency of a record = the time this
process received it from `trove.operations` - the publish time of its trigger; matched by the
deterministic ``record_id``. Every expected record must arrive (else the figure is "incomplete",
not a number); records of the first second of each phase are left out of the percentiles
(connections and caches warming up).

``--hours`` is the event time each rate's messages span (24: a simulated day in 20 s, so an
hour closes -- and the usage sweep runs -- every ~0.8 s of wall time, a stress a real region
at 1k msg/s never sees; 1: one closing per run). Under each rate the worst e2e latency per
second of publishing is printed too: a stall (a GC pause, a sweep) shows as a high second.

Baseline: the same messages' latency to `trove.notifications` (matched by the shovel's
``trovemeter.message_id`` header), i.e. the share of the shovel; worker = the rest.

Hops (``phase["hops"]``, printed under each rate), per expected record, from the Kafka
timestamps (CreateTime: when the writer called produce) of its trigger on trove.notifications
and of the record itself: publish -> the shovel's produce; -> readable (this process read the
trigger: the shovel's linger, the broker, a consumer's fetch); -> the worker's produce (the
worker's fetch, its queue and processing; for an operation whose start and end lie on different
partitions, also until the other one is read); -> read here (the worker's linger, the broker).

This module also holds the process helpers the other end-to-end benchmarks use
(``WorkerProcess``, ``Pipeline``, ``PacedPublisher``, ``TopicCollector``, ``agent_writes``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import not_run_row, row  # noqa: E402

TROVEMETER = ROOT / ".venv" / "bin" / "trovemeter"
RUN_DIR = ROOT / ".stack" / "run"
STREAMS = ROOT / "streams"
DEFAULT_RABBIT = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


# ------------------------------------------------------------------ is the agent there?


# An agent writing a topic uses the pure core that computes its records: pairing for
# trove.operations, accrual for trove.usage (the dashboard, say, only names the topics).
_AGENT_PATTERNS = {
    "trove.operations": re.compile(r"trovemeter\.pairing\b|from trovemeter import [^\n]*\bpairing\b"),
    "trove.usage": re.compile(r"trovemeter\.accrual\b|from trovemeter import [^\n]*\baccrual\b"),
}


def agent_writes(topic: str) -> bool:
    """Whether a module under streams/ uses the pure core behind ``topic`` (pairing for
    trove.operations, accrual for trove.usage): a cheap check that the agent exists before
    processes are started for nothing. The run itself then checks that it writes."""
    pattern = _AGENT_PATTERNS[topic]
    for path in STREAMS.rglob("*.py"):
        try:
            if pattern.search(path.read_text(errors="replace")):
                return True
        except OSError:
            continue
    return False


# ------------------------------------------------------------------ bench topics

# The end-to-end benchmarks run the shovel and the worker on topics of their own (the worker's
# settings name its source and output topics), so other traffic on trove.* cannot move the
# worker's event time and the dashboard never shows benchmark records. Readers also watch the
# real output topics, filtered by what the run expects, in case a worker ignores a setting.
E2E_TOPICS = {
    "source": "trovemeter.bench.e2e.notifications",
    "dlq": "trovemeter.bench.e2e.dlq",
    "operations": "trovemeter.bench.e2e.operations",
    "errors": "trovemeter.bench.e2e.errors",
    "resources": "trovemeter.bench.e2e.resources",
    "usage": "trovemeter.bench.e2e.usage",
    "usage_discrepancies": "trovemeter.bench.e2e.usage-discrepancies",
}


def ensure_e2e_topics(bootstrap: str) -> None:
    from bench.bench_shovel import ensure_topic

    for name, topic in E2E_TOPICS.items():
        ensure_topic(bootstrap, topic, 1 if name == "dlq" else 4)


def worker_topic_env() -> dict[str, str]:
    """TROVEMETER_<NAME>_TOPIC for the worker (settings it does not have are ignored)."""
    return {f"TROVEMETER_{name.upper()}_TOPIC": topic for name, topic in E2E_TOPICS.items()
            if name != "dlq"}


# ------------------------------------------------------------------ processes


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in kB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(pid: int) -> int:
    """RSS of ``pid`` and its children (the shovel's parser helpers)."""
    from tests.integration.shovel_harness import child_pids

    return rss_kb(pid) + sum(rss_kb(child) for child in child_pids(pid))


def commit_group_at_end(bootstrap: str, group: str, topics: Sequence[str]) -> None:
    """Commit ``group``'s offsets at the end of ``topics``: a new worker starts from now, not
    from whatever other runs left in the topic."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=30)
        offsets = []
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                         timeout=30)
                offsets.append(TopicPartition(topic, partition, high))
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int | None:
    """Messages of ``topics`` not yet committed by ``group`` (None if it committed nothing)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=30)
        parts = [TopicPartition(t, p) for t in topics for p in metadata.topics[t].partitions]
        committed = consumer.committed(parts, timeout=30)
        lag, any_committed = 0, False
        for tp in committed:
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                     timeout=30)
            if tp.offset >= 0:
                any_committed = True
                lag += max(0, high - tp.offset)
            else:
                lag += high
        return lag if any_committed else None
    finally:
        consumer.close()


def worker_command(web_port: int) -> list[str]:
    """`trovemeter worker`, or the command in TROVEMETER_BENCH_WORKER_CMD (split on spaces; the
    app id, data directory and web port come from the environment as for the real one)."""
    custom = os.environ.get("TROVEMETER_BENCH_WORKER_CMD")
    if custom:
        return custom.split()
    return [str(TROVEMETER), "worker", "--web-port", str(web_port), "-l", "info"]


def worker_available(topic: str) -> bool:
    """A worker whose agent writes ``topic`` exists (or one was named explicitly)."""
    return bool(os.environ.get("TROVEMETER_BENCH_WORKER_CMD")) or agent_writes(topic)


class WorkerUnavailable(RuntimeError):
    """The worker could not be started or did not do its job: the message says why."""


class WorkerProcess:
    """`trovemeter worker` as a subprocess with its own app id (consumer group, table and
    changelog topics), data directory and web port; logs to a file."""

    def __init__(self, bootstrap: str, log_path: Path, app_id: str | None = None,
                 web_port: int | None = None, env: dict[str, str] | None = None) -> None:
        from tests.integration.conftest import free_port

        self.bootstrap = bootstrap
        self.app_id = app_id or f"bench-{uuid.uuid4().hex[:8]}"
        self.web_port = web_port or free_port()
        self.log_path = log_path
        self.data_dir = RUN_DIR / f"faust-{self.app_id}"
        self.env = dict(os.environ, TROVEMETER_APP_ID=self.app_id,
                        TROVEMETER_DATA_DIR=str(self.data_dir),
                        TROVEMETER_WEB_PORT=str(self.web_port),
                        TROVEMETER_KAFKA_BOOTSTRAP=bootstrap, **(env or {}))
        self.process: subprocess.Popen[bytes] | None = None
        self.source_topics: list[str] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, source_topics: Sequence[str] = ("trove.notifications",)) -> WorkerProcess:
        self.source_topics = list(source_topics)
        commit_group_at_end(self.bootstrap, self.app_id, self.source_topics)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(worker_command(self.web_port), stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        return self

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def exited(self) -> str | None:
        """Why the worker is gone (exit code and its first logged error), or None if running."""
        if self.process is None or self.process.poll() is None:
            return None
        lines = [line for line in self.logs().splitlines() if line.strip()]
        errors = [line for line in lines if "[ERROR]" in line or "[CRITICAL]" in line]
        detail = errors[0] if errors else " | ".join(lines[-3:])
        return f"`trovemeter worker` exited with {self.process.returncode}: {detail[-400:]}"

    def check_alive(self) -> None:
        reason = self.exited()
        if reason:
            raise WorkerUnavailable(f"{reason} (log {self.log_path})")

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until Faust logged that the worker is ready."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            self.check_alive()
            if "[^Worker]: Ready" in self.logs():
                return time.monotonic() - started
            time.sleep(0.2)
        raise WorkerUnavailable(f"`trovemeter worker` not ready after {timeout:.0f}s "
                                f"(log {self.log_path})")

    def rss_kb(self) -> int:
        return rss_kb(self.pid) if self.process is not None else 0

    def lag(self) -> int | None:
        return group_lag(self.bootstrap, self.app_id, self.source_topics)

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

    def delete_topics(self) -> None:
        """The app's own topics (changelogs, repartitions): `<app id>-...`."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        try:
            names = [t for t in admin.list_topics(timeout=30).topics
                     if t.startswith(f"{self.app_id}-")]
            if names:
                for future in admin.delete_topics(names, operation_timeout=30).values():
                    try:
                        future.result(timeout=60)
                    except Exception:  # noqa: BLE001 - best effort clean-up
                        pass
        except Exception:  # noqa: BLE001
            pass


class Pipeline:
    """Shovel + worker, each in its own process, on a bench exchange and queue of their own.
    ``with Pipeline(...) as p:`` starts both and waits until both are ready."""

    def __init__(self, rabbit_url: str, bootstrap: str, label: str = "bench",
                 worker: bool = True, shovel_args: Iterable[str] = ()) -> None:
        self.rabbit_url, self.bootstrap = rabbit_url, bootstrap
        run_id = uuid.uuid4().hex[:8]
        self.exchange = f"{label}-{run_id}.trove"
        self.queue = f"{label}-{run_id}.shovel"
        self.shovel_args = list(shovel_args)
        self.with_worker = worker
        self.logs: dict[str, Path] = {}
        self.shovel: Any = None
        self.worker: WorkerProcess | None = None
        self.startup_s: dict[str, float] = {}

    def _log(self, name: str) -> Path:
        with tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log",
                                         delete=False) as handle:
            self.logs[name] = Path(handle.name)
        return self.logs[name]

    def __enter__(self) -> Pipeline:
        from tests.integration.conftest import free_port
        from tests.integration.shovel_harness import Rabbit, ShovelProcess

        try:
            with Rabbit(self.rabbit_url) as rabbit:
                rabbit.prepare(self.queue, [self.exchange])
            ensure_e2e_topics(self.bootstrap)
            if self.with_worker:
                t = time.monotonic()
                self.worker = WorkerProcess(self.bootstrap, self._log("worker"),
                                            env=worker_topic_env()
                                            ).start([E2E_TOPICS["source"], E2E_TOPICS["errors"]])
                self.worker.wait_ready()
                self.startup_s["worker"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            self.shovel = ShovelProcess(self.queue, [self.exchange], free_port(),
                                        self._log("shovel"),
                                        extra_args=["--prefetch", "2000", "--topic",
                                                    E2E_TOPICS["source"], "--dlq-topic",
                                                    E2E_TOPICS["dlq"], *self.shovel_args],
                                        env={"TROVEMETER_KAFKA_BOOTSTRAP": self.bootstrap})
            self.shovel.start()
            self.shovel.wait_healthy(60)
            self.startup_s["shovel"] = round(time.monotonic() - t, 1)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        from tests.integration.shovel_harness import Rabbit

        if self.shovel is not None and self.shovel.process is not None:
            try:
                self.shovel.stop(30)
            except Exception:  # noqa: BLE001
                self.shovel.kill()
        if self.worker is not None:
            self.worker.stop()
            self.worker.delete_topics()
        try:
            with Rabbit(self.rabbit_url) as rabbit:
                rabbit.delete_queue(self.queue)
                rabbit.delete_exchange(self.exchange)
        except Exception:  # noqa: BLE001 - best effort
            pass


# ------------------------------------------------------------------ publishing and reading


class PacedPublisher:
    """Publishes bodies to one exchange at a fixed rate (or as fast as it can: rate None) and
    notes the ``time.perf_counter()`` right after each publish."""

    def __init__(self, rabbit_url: str) -> None:
        import pika

        self.connection = pika.BlockingConnection(pika.URLParameters(rabbit_url))
        self.channel = self.connection.channel()

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def publish(self, exchange: str, messages: Sequence[Any], rate: float | None,
                stop: threading.Event | None = None) -> list[float]:
        """``messages``: WireMessage-likes (body, routing_key, properties). Returns the publish
        times, one per message (0.0 for those not published because ``stop`` was set)."""
        import pika

        properties_cache: dict[int, Any] = {}
        times = [0.0] * len(messages)
        channel, clock = self.channel, time.perf_counter
        started = clock()
        for i, message in enumerate(messages):
            if rate:
                ahead = started + i / rate - clock()
                if ahead > 0.0005:
                    time.sleep(ahead)
            props = properties_cache.get(id(message.properties))
            if props is None:
                props = properties_cache[id(message.properties)] = \
                    pika.BasicProperties(**message.properties)
            channel.basic_publish(exchange, message.routing_key, message.body, props)
            times[i] = clock()
            if i % 1000 == 999:
                self.connection.process_data_events(0)
                if stop is not None and stop.is_set():
                    break
        return times


class TopicCollector(threading.Thread):
    """Reads ``topics`` from their current end in a thread and keeps (receive time, value,
    headers) of every record; ``stop()`` ends it."""

    def __init__(self, bootstrap: str, topics: Sequence[str], keep_values: bool = True) -> None:
        super().__init__(daemon=True)
        from tests.integration.shovel_harness import end_offsets

        self.bootstrap = bootstrap
        self.marks = end_offsets(bootstrap, topics)
        self.keep_values = keep_values
        self.records: list[tuple[float, str, bytes | None, Any]] = []
        # Kafka timestamp (CreateTime: when the writer called produce, epoch ms) of each record.
        self.timestamps: list[int] = []
        self.keys: list[bytes | None] = []  # the Kafka key of each record
        self._stop_event = threading.Event()
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        try:
            consumer = Consumer({"bootstrap.servers": self.bootstrap,
                                 "group.id": f"bench-reader-{uuid.uuid4().hex}",
                                 "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                                 "fetch.error.backoff.ms": 10})
            consumer.assign([TopicPartition(t, p, o) for (t, p), o in self.marks.items()])
            self.ready.set()
            append, clock, keep = self.records.append, time.perf_counter, self.keep_values
            stamp, key = self.timestamps.append, self.keys.append
            # In batches: the reader shares the machine with what it measures (one poll() per
            # record cost the audit burst's reader several seconds of CPU in its timed window).
            # consume() waits its whole timeout unless the batch fills, which would delay the
            # receive times: it takes only what is there; poll() waits for the next record.
            while not self._stop_event.is_set():
                batch = consumer.consume(1000, 0)
                if not batch:
                    message = consumer.poll(0.05)
                    if message is None:
                        continue
                    batch = [message]
                received = clock()  # what one call returns was there at once
                for message in batch:
                    if message.error():
                        continue
                    stamp(message.timestamp()[1])
                    key(message.key())
                    append((received, message.topic(), message.value() if keep else None,
                            message.headers()))
            consumer.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc
            self.ready.set()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


# ------------------------------------------------------------------ expectations


def parse_all(messages: Sequence[Any]) -> list[Any]:
    """The Notification of each message (None for garbage), parsed as the shovel parses it."""
    from trovemeter.envelope import BadNotification, parse_body
    from trovemeter.mapping import load_mapping
    from trovemeter.normalise import Normaliser

    normaliser = Normaliser(load_mapping())
    out = []
    for message in messages:
        props = message.properties
        try:
            out.append(parse_body(message.body, max_bytes=1_048_576,
                                  content_type=props.get("content_type"),
                                  content_encoding=props.get("content_encoding"),
                                  normaliser=normaliser))
        except BadNotification:
            out.append(None)
    return out


def expected_on_arrival(notifications: Sequence[Any]) -> dict[str, int]:
    """record_id -> index of the message whose arrival completes it, for every
    OperationCompleted the pairing core emits on arrival (not on expiry)."""
    from trovemeter import pairing
    from trovemeter.model import OperationCompleted

    states: dict[str, Any] = {}
    expected: dict[str, int] = {}
    for i, notification in enumerate(notifications):
        if notification is None:
            continue
        key = pairing.join_key(notification)
        if key is None:
            continue
        state, outputs = pairing.step(states.get(key), notification)
        if state is None:
            states.pop(key, None)
        else:
            states[key] = state
        for output in outputs:
            if isinstance(output, OperationCompleted):
                expected.setdefault(output.record_id, i)
    return expected


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def rank(q: float) -> float:
        return ordered[max(0, min(len(ordered) - 1, int(-(-len(ordered) * q // 100)) - 1))]

    return {"p50_ms": round(rank(50) * 1000, 2), "p95_ms": round(rank(95) * 1000, 2),
            "p99_ms": round(rank(99) * 1000, 2), "max_ms": round(ordered[-1] * 1000, 2),
            "count": len(ordered)}


# ------------------------------------------------------------------ one phase


def scenario_messages(rate: float, seconds: float, seed: int, start: Any,
                      hours: int = 24) -> tuple[list[Any], Any]:
    from trovemeter.simulation import ScenarioConfig, build_scenario

    budget = max(200, int(rate * seconds))
    config = ScenarioConfig(seed=seed, tenants=20, instances=20, hours=hours, start=start,
                            message_budget=budget)
    scenario = build_scenario(config)
    return list(scenario.messages())[:budget], config


def run_phase(pipeline: Pipeline, rate: float, seconds: float, seed: int, start: Any,
              drain_timeout: float, warmup_s: float = 1.0, hours: int = 24) -> dict[str, Any]:
    from trovemeter import topics
    from trovemeter.codec import default_codec

    messages, config = scenario_messages(rate, seconds, seed, start, hours)
    notifications = parse_all(messages)
    expected = expected_on_arrival(notifications)
    index_of_id = {n.message_id: i for i, n in enumerate(notifications) if n is not None}

    collector = TopicCollector(pipeline.bootstrap, [E2E_TOPICS["operations"], topics.OPERATIONS,
                                                    E2E_TOPICS["source"]])
    collector.start()
    collector.ready.wait(30)
    publisher = PacedPublisher(pipeline.rabbit_url)
    try:
        published = publisher.publish(pipeline.exchange, messages, rate)
    finally:
        publisher.close()
    publish_seconds = published[-1] - published[0] if len(published) > 1 else 0.0

    codec = default_codec()
    first_seen: dict[str, float] = {}
    notif_seen: dict[int, float] = {}
    # Kafka CreateTime of those records, on the perf_counter clock (ms resolution).
    epoch_offset = time.time() - time.perf_counter()
    written: dict[str, float] = {}
    notif_written: dict[int, float] = {}
    scanned = 0
    deadline = time.monotonic() + drain_timeout
    while True:
        records = collector.records
        end = len(records)  # the collector keeps appending meanwhile
        for n, (received, topic, value, headers) in enumerate(records[scanned:end], scanned):
            if topic != E2E_TOPICS["source"]:  # an operations topic
                try:
                    record = codec.decode(value)
                except Exception:  # noqa: BLE001 - other writers' records
                    continue
                record_id = getattr(record, "record_id", None)
                if record_id in expected and record_id not in first_seen:
                    first_seen[record_id] = received
                    written[record_id] = collector.timestamps[n] / 1000 - epoch_offset
            else:
                for key, header in headers or ():
                    if key == "trovemeter.message_id":
                        index = index_of_id.get(header.decode())
                        if index is not None and index not in notif_seen:
                            notif_seen[index] = received
                            notif_written[index] = \
                                collector.timestamps[n] / 1000 - epoch_offset
        scanned = end
        if len(first_seen) >= len(expected) or time.monotonic() > deadline:
            break
        if pipeline.worker is not None and pipeline.worker.exited():
            collector.stop()
            pipeline.worker.check_alive()
        time.sleep(0.2)
    collector.stop()
    if collector.error is not None:
        raise collector.error

    t0 = published[0] + warmup_s
    e2e = [first_seen[rid] - published[i] for rid, i in expected.items()
           if rid in first_seen and published[i] >= t0]
    shovel_only = [seen - published[i] for i, seen in notif_seen.items() if published[i] >= t0]
    # Where the time goes, per expected record, from the Kafka timestamps of its trigger on
    # trove.notifications (the shovel's produce) and of the record (the worker's produce).
    hops: dict[str, list[float]] = {"publish->shovel produce": [],
                                    "shovel produce->readable": [],
                                    "readable->worker produce": [], "worker produce->read": []}
    trace: list[dict[str, Any]] = []
    for rid, i in expected.items():
        if rid in first_seen and i in notif_seen and published[i] >= t0:
            splits = (notif_written[i] - published[i], notif_seen[i] - notif_written[i],
                      written[rid] - notif_seen[i], first_seen[rid] - written[rid])
            for name, value in zip(hops, splits):
                hops[name].append(value)
            trace.append({"published_s": round(published[i] - published[0], 4),
                          "e2e_ms": round((first_seen[rid] - published[i]) * 1000, 2),
                          **{name: round(v * 1000, 2) for name, v in zip(hops, splits)}})
    # The worst e2e latency per second of publishing: a stall shows as a run of high seconds.
    worst: dict[int, float] = {}
    for rid, i in expected.items():
        if rid in first_seen:
            second = int(published[i] - published[0])
            worst[second] = max(worst.get(second, 0.0), first_seen[rid] - published[i])
    valid = len(index_of_id)  # distinct message ids (duplicates share one)
    return {
        "rate_target": rate, "messages": len(messages),
        "rate_achieved": round(len(messages) / publish_seconds, 1) if publish_seconds else None,
        "publish_seconds": round(publish_seconds, 2), "scenario_seed": config.seed,
        "expected_records": len(expected), "records_seen": len(first_seen),
        "complete": len(first_seen) == len(expected) and len(expected) > 0,
        "notifications_expected": valid, "notifications_seen": len(notif_seen),
        "e2e": percentiles(e2e), "shovel_only": percentiles(shovel_only),
        "hops": {name: percentiles(values) for name, values in hops.items()},
        "warmup_excluded_s": warmup_s, "trace": trace,
        "worst_ms_by_second": [round(worst.get(k, 0.0) * 1000) for k in range(max(worst) + 1)]
        if worst else [],
    }


# ------------------------------------------------------------------ main


FIGURE = "p99 publish->trove.operations at {rate:,} msg/s"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time per rate")
    parser.add_argument("--rates", default="1000,5000", help="messages per second, comma-separated")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--hours", type=int, default=24,
                        help="simulated hours each rate's messages span")
    parser.add_argument("--drain-timeout", type=float,
                        help="seconds to wait for the last records after publishing "
                        "(default: 3 x --seconds, at least 30)")
    parser.add_argument("--rabbit-url", default=os.environ.get("TROVEMETER_RABBIT_URL",
                                                               DEFAULT_RABBIT))
    parser.add_argument("--bootstrap", default=os.environ.get("TROVEMETER_KAFKA_BOOTSTRAP",
                                                              DEFAULT_BOOTSTRAP))
    parser.add_argument("--trace", type=Path,
                        help="write every measured record's publish time and hops (ms) as JSON "
                        "lines to this file")
    args = parser.parse_args(argv)
    rates = [int(float(x)) for x in args.rates.split(",") if x.strip()]
    if args.drain_timeout is None:
        args.drain_timeout = max(30.0, 3 * args.seconds)

    def not_run(reason: str) -> dict[str, Any]:
        print(f"bench_latency: not run: {reason}", file=sys.stderr)
        return {"benchmark": "latency", "not_run": reason,
                "rows": [not_run_row("latency", FIGURE.format(rate=r), reason,
                                     "< 50 ms" if r == 1000 else None) for r in rates]}

    if not worker_available("trove.operations"):
        return not_run("the worker has no pairing agent yet (nothing under streams/ uses "
                       "trovemeter.pairing)")
    from trovemeter.simulation import DEFAULT_START

    phases: list[dict[str, Any]] = []
    try:
        with Pipeline(args.rabbit_url, args.bootstrap, label="bench-latency") as pipeline:
            start = DEFAULT_START
            for k, rate in enumerate(rates):
                phase = run_phase(pipeline, rate, args.seconds, args.seed + k, start,
                                  args.drain_timeout, hours=args.hours)
                trace = phase.pop("trace")
                phases.append(phase)
                if args.trace is not None:
                    with args.trace.open("a") as out:
                        out.writelines(json.dumps({"rate": rate, **row}) + "\n" for row in trace)
                e2e, base = phase["e2e"], phase["shovel_only"]
                print(f"latency at {rate:,}/s: e2e {e2e} shovel-only {base} complete "
                      f"{phase['complete']} ({phase['records_seen']}/{phase['expected_records']})",
                      file=sys.stderr, flush=True)
                print(f"  worst e2e ms per second of publishing: {phase['worst_ms_by_second']}",
                      file=sys.stderr, flush=True)
                for name, figures in phase["hops"].items():
                    print(f"  {name:26} p50 {figures.get('p50_ms')} p95 {figures.get('p95_ms')} "
                          f"p99 {figures.get('p99_ms')} ms", file=sys.stderr, flush=True)
                if k == 0 and phase["records_seen"] == 0:
                    return not_run("the worker wrote none of the expected trove.operations "
                                   f"records within {args.drain_timeout:.0f}s of publishing "
                                   f"(log {pipeline.logs.get('worker')})")
                # past the scenario's horizon + closing
                start = start + timedelta(hours=args.hours + 2)
            startup = pipeline.startup_s
    except WorkerUnavailable as exc:
        return not_run(str(exc))

    rows = []
    for phase in phases:
        rate = int(phase["rate_target"])
        e2e, base = phase["e2e"], phase["shovel_only"]
        note = (f"{phase['messages']:,} msgs at {phase['rate_achieved']}/s achieved; "
                f"{phase['records_seen']}/{phase['expected_records']} operations; e2e p50 "
                f"{e2e.get('p50_ms')} p95 {e2e.get('p95_ms')} max {e2e.get('max_ms')} ms; "
                f"shovel-only p50 {base.get('p50_ms')} p95 {base.get('p95_ms')} ms")
        for q in ("p50", "p95", "p99"):
            is_p99 = q == "p99"
            target = "< 50 ms" if rate == 1000 and is_p99 else None
            value = e2e.get(f"{q}_ms")
            rows.append(row(
                "latency", FIGURE.format(rate=rate).replace("p99", q), value, "ms",
                baseline="publish->trove.notifications (shovel only)",
                baseline_value=base.get(f"{q}_ms"),
                target=target, met=(value is not None and value < 50) if target else None,
                complete=phase["complete"], note=note if is_p99 else ""))
    return {"benchmark": "latency", "phases": phases, "startup_s": startup,
            "complete": all(p["complete"] for p in phases), "rows": rows}


if __name__ == "__main__":
    figures = main(sys.argv[1:])
    sys.exit(0 if figures.get("complete") or figures.get("not_run") else 1)
