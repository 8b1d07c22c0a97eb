"""`trovemeter demo`: trovemeter at work on simulated Trove traffic, in one command.

1. plans a scenario (a few tenants, ~30 instances, 24 simulated hours) and writes its expected
   totals to ``.stack/run/expected.json``;
2. starts the shovel and one Faust worker in the background (logs and pid files in
   ``.stack/run/``; a fresh worker app id per run whose consumer group starts at the current end
   of every topic, so a run sees only its own traffic), waits until both are healthy;
3. publishes the scenario to RabbitMQ with a compressed clock (``trovemeter simulate --speed``,
   about 75 s) while a live view shows progress, rates, operations by outcome with p50/p95
   durations, the top errors and usage per tenant, read from the output topics;
4. waits until the pipeline has caught up, then prints a summary comparing what came out with
   the expected totals, each line ✓/✗/–, and exits 1 if a compared total differs.

The shovel and the worker keep running afterwards, for the dashboard and `trovemeter tail`;
`make down` (or `stack/stack.sh down`) stops them with the brokers, and so does the next demo.
Ctrl-C stops the simulator and prints the partial summary (exit 130).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from trovemeter import topics

ROOT = Path(__file__).resolve().parent.parent
HEADER_MESSAGE_ID = "trovemeter.message_id"
# The worker's app id on its output records, when the worker sets it: outputs of other workers
# reading the same topics (tests, benchmarks) are then told apart from this run's worker's.
APP_ID_HEADER = "trovemeter.app_id"
OUTPUT_TOPICS = (topics.OPERATIONS, topics.ERRORS, topics.RESOURCES, topics.USAGE)
WATCHED_TOPICS = (topics.NOTIFICATIONS, topics.NOTIFICATIONS_DLQ, *OUTPUT_TOPICS)


@dataclass(frozen=True)
class DemoTopics:
    """The topics of one run: trovemeter's own, or copies under a prefix (``--topic-prefix``)
    that no other shovel or worker reads or writes: tests run isolated from a demo or another
    worker on the same brokers."""

    prefix: str = ""

    def name(self, topic: str) -> str:
        return f"{self.prefix}{topic}"

    @property
    def notifications(self) -> str:
        return self.name(topics.NOTIFICATIONS)

    @property
    def dlq(self) -> str:
        return self.name(topics.NOTIFICATIONS_DLQ)

    @property
    def watched(self) -> tuple[str, ...]:
        return tuple(self.name(t) for t in WATCHED_TOPICS)

    def specs(self) -> list[Any]:
        import dataclasses

        return [dataclasses.replace(spec, name=self.name(spec.name))
                for spec in topics.topic_specs()]

    def worker_env(self) -> dict[str, str]:
        """The worker's TROVEMETER_*_TOPIC settings (the dashboard derives the DLQ's name)."""
        if not self.prefix:
            return {}
        return {"TROVEMETER_SOURCE_TOPIC": self.notifications,
                "TROVEMETER_OPERATIONS_TOPIC": self.name(topics.OPERATIONS),
                "TROVEMETER_ERRORS_TOPIC": self.name(topics.ERRORS),
                "TROVEMETER_RESOURCES_TOPIC": self.name(topics.RESOURCES),
                "TROVEMETER_USAGE_TOPIC": self.name(topics.USAGE),
                "TROVEMETER_USAGE_DISCREPANCIES_TOPIC": self.name(topics.USAGE_DISCREPANCIES)}


DEMO_APP_PREFIX = "trovemeter-demo-"


def worker_argv(web_port: int) -> list[str]:
    """`trovemeter worker`, as a user starts it: the dashboard comes with it (streams/app.py
    autodiscovers every module of the streams package, streams/dashboard.py included)."""
    return [str(Path(sys.executable).with_name("trovemeter")), "worker", "--web-port",
            str(web_port)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scenario = parser.add_argument_group("scenario")
    scenario.add_argument("--seed", type=int, default=None,
                          help="scenario seed (default: a new one per run, printed; give it to "
                          "replay a run)")
    scenario.add_argument("--tenants", type=int, default=4, help="projects (default 4)")
    scenario.add_argument("--instances", type=int, default=30,
                          help="instance lifecycles (default 30)")
    scenario.add_argument("--hours", type=int, default=24, help="simulated hours (default 24)")
    scenario.add_argument("--start", default=None, metavar="ISO",
                          help="simulated start, an hour boundary in UTC (default: so that the "
                          "scenario ends an hour before now)")
    pace = scenario.add_mutually_exclusive_group()
    pace.add_argument("--duration", type=float, default=75.0, metavar="SECONDS",
                      help="wall seconds to publish the whole scenario in (default 75)")
    pace.add_argument("--speed", type=float, default=None, metavar="X",
                      help="simulated seconds per wall second (instead of --duration)")
    scenario.add_argument("--failure-rate", type=float, default=0.08,
                          help="share of operations that fail (default 0.08)")
    scenario.add_argument("--abandon-rate", type=float, default=0.02,
                          help="share of operations never finished (default 0.02)")
    scenario.add_argument("--garbage-rate", type=float, default=0.01,
                          help="chance of an unparseable body before a message (default 0.01)")
    scenario.add_argument("--duplicate-rate", type=float, default=0.02,
                          help="share of messages published twice (default 0.02)")

    where = parser.add_argument_group("processes")
    where.add_argument("--exchange", default="trove", help="RabbitMQ exchange (default trove)")
    where.add_argument("--queue", default="trovemeter.demo",
                       help="the shovel's queue, emptied at start (default trovemeter.demo)")
    where.add_argument("--web-port", type=int, default=None,
                       help="worker web port: dashboard and views (default TROVEMETER_WEB_PORT, "
                       "6066)")
    where.add_argument("--metrics-port", type=int, default=9464,
                       help="shovel /metrics and /healthz port (default 9464)")
    where.add_argument("--run-dir", type=Path, default=ROOT / ".stack" / "run",
                       help="logs, pid files, expected.json, summary (default .stack/run)")
    where.add_argument("--app-id", default=None,
                       help=f"worker app id (default {DEMO_APP_PREFIX}<run id>)")
    where.add_argument("--topic-prefix", default="", metavar="PREFIX",
                       help="run on copies of trovemeter's topics named PREFIX<topic>, which "
                       "nothing else reads or writes (isolated runs, tests); default: the real "
                       "topics")

    output = parser.add_argument_group("output")
    output.add_argument("--plain", action="store_true",
                        help="periodic progress lines instead of the live view (the default "
                        "when stdout is not a terminal)")
    output.add_argument("--settle-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="after publishing, how long to wait for the pipeline to catch up "
                        "(default 60)")
    output.add_argument("--stop-at-end", action="store_true",
                        help="stop the shovel and the worker at the end instead of leaving "
                        "them running")


# ---------------------------------------------------------------------------- the run's ledger


@dataclass
class RunLedger:
    """What this run publishes: its message ids, tenants and garbage bodies, so the demo can
    tell its own records from anyone else's on shared topics."""

    message_ids: set[str] = field(default_factory=set)
    tenants: set[str] = field(default_factory=set)
    garbage_shas: Counter[str] = field(default_factory=Counter)
    sent_offsets: list[float] = field(default_factory=list)  # per message, simulated seconds
    exchange: str | None = None  # where the garbage goes (other tests send the same bodies)

    @classmethod
    def of(cls, scenario: Any) -> RunLedger:
        import hashlib

        from trovemeter.envelope import BadNotification, parse_body

        ledger = cls(exchange=scenario.config.exchange)
        for message in scenario.messages():
            ledger.sent_offsets.append(message.sent_offset)
            if message.kind == "garbage":
                ledger.garbage_shas[hashlib.sha256(message.body).hexdigest()] += 1
                continue
            try:
                notification = parse_body(message.body, max_bytes=1 << 30,
                                          content_type=message.properties.get("content_type"),
                                          content_encoding=message.properties.get(
                                              "content_encoding"))
            except BadNotification:
                continue
            ledger.message_ids.add(notification.message_id)
            if notification.tenant_id:
                ledger.tenants.add(notification.tenant_id)
        return ledger

    def owns(self, record: Any) -> bool:
        """Whether an output record comes from this run's notifications."""
        tenant = getattr(record, "tenant_id", None)
        if tenant is not None and tenant in self.tenants:
            return True
        for name in ("start_message_id", "end_message_id", "message_id", "last_message_id"):
            value = getattr(record, name, None)
            if value is not None and value in self.message_ids:
                return True
        sha = getattr(record, "body_sha256", None)
        return (sha is not None and sha in self.garbage_shas
                and getattr(record, "exchange", self.exchange) == self.exchange)


# ---------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(pid: int) -> bool:
    """The pid still runs one of trovemeter's processes (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"trovemeter" in cmdline or b"streams" in cmdline


def stop_pid_file(pid_file: Path, timeout: float = 20.0) -> bool:
    """SIGTERM the process of ``pid_file`` (if it is still ours), wait, SIGKILL if needed."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
    stopped = False
    if _pid_alive(pid) and _ours(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)
        stopped = True
    pid_file.unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class Background:
    """A long-running child (shovel, worker) in its own session, so that Ctrl-C in the
    terminal leaves it running; stdout+stderr to ``<run dir>/<name>.log``."""

    def __init__(self, name: str, argv: list[str], run_dir: Path, env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = run_dir / f"{name}.log"
        self.pid_file = run_dir / f"{name}.pid"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Background:
        with self.log_path.open("ab") as log:
            log.write(f"\n--- {datetime.now(UTC).isoformat()} {' '.join(self.argv)}\n".encode())
            log.flush()
            self.log_offset = log.tell()
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=ROOT, env=self.env,
                                            start_new_session=True)
        self.pid_file.write_text(f"{self.process.pid}\n")
        return self

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_since_start(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(getattr(self, "log_offset", 0))
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_pid_file(self.pid_file)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _port_taken(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class StartupFailed(RuntimeError):
    pass


def wait_until(check: Any, what: str, process: Background, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.exited()
        if code is not None:
            raise StartupFailed(f"the {process.name} exited with {code} while starting; "
                                f"{process.log_path}:\n{process.log_tail()}")
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise StartupFailed(f"{what} not ready within {timeout:.0f}s; see {process.log_path}:\n"
                        f"{process.log_tail()}")


_WORKER_READY = "[^Worker]: Ready"
_MISSING_TOPIC = "Ignoring missing topic"


def ensure_worker_subscribed(worker: Background, timeout: float = 90.0) -> Background:
    """Wait until the worker says it is ready; if it started without some of its own topics
    (Faust logs "Ignoring missing topic" when a topic it has just created is not in the cluster
    metadata yet, seen on the first start against a brand-new Kafka: its agents then never get
    those partitions), restart it once, with the same app id: the topics exist by then."""
    for attempt in (1, 2):
        wait_until(lambda: _WORKER_READY in worker.log_since_start(), "the worker (Faust ready)",
                   worker, timeout)
        missing = sorted({line.split(_MISSING_TOPIC, 1)[1].strip(" :'\"")
                          for line in worker.log_since_start().splitlines()
                          if _MISSING_TOPIC in line})
        if not missing:
            return worker
        if attempt == 2:
            raise StartupFailed(f"the worker started twice without its topics {missing}; see "
                                f"{worker.log_path}")
        _say(f"the worker started without its topics {', '.join(missing)} (not in Kafka's "
             "metadata yet, right after it created them); restarting it once")
        worker.stop()
        worker = Background(worker.name, worker.argv, worker.log_path.parent, worker.env).start()
    return worker


# ---------------------------------------------------------------------------- Kafka side


class OutputWatcher:
    """Reads this run's records from the watched topics (from the offsets at demo start) into
    a ``PipelineTally``; counts this run's message ids in trove.notifications."""

    def __init__(self, bootstrap: Any, start: Mapping[tuple[str, int], int], ledger: RunLedger,
                 serde: Any, app_id: str | None = None, names: DemoTopics = DemoTopics()
                 ) -> None:
        from connectors.topic_reader import TopicReader
        from trovemeter.pipeline_tally import PipelineTally

        self.ledger = ledger
        self.app_id = app_id.encode() if app_id else None
        self.foreign_outputs = 0  # written by another worker (their app id header says so)
        # Notifications other producers wrote during the run: the worker reads them too, and
        # their event times move its watermark (this run's events can become late).
        self.foreign_notifications = 0
        self.serde = serde
        self.tally = PipelineTally(accept=ledger.owns)
        self.seen_ids: set[str] = set()
        self.notification_records = 0
        self.undecodable = 0
        self.last_output_at = time.monotonic()
        self.names = names
        self._reader = TopicReader(bootstrap, names.watched, start=dict(start))

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for message in self._reader.poll(timeout=min(0.2, remaining), max_records=2000):
                self._handle(message)

    def _handle(self, message: Any) -> None:
        topic = message.topic()
        if topic == self.names.notifications:
            message_id = dict(message.headers() or ()).get(HEADER_MESSAGE_ID)
            if message_id is not None and message_id.decode("utf-8", "replace") in \
                    self.ledger.message_ids:
                self.notification_records += 1
                self.seen_ids.add(message_id.decode())
            else:
                self.foreign_notifications += 1
            return
        data = message.value()
        if data is None:
            return
        if self.app_id is not None and topic != self.names.dlq:
            producer = dict(message.headers() or ()).get(APP_ID_HEADER)
            if producer is not None and producer != self.app_id:
                self.foreign_outputs += 1  # another worker on the same topics (tests, benches)
                return
        try:
            record = self.serde.decode(data, topic)
        except Exception:  # noqa: BLE001 - a foreign producer's record is not ours to count
            self.undecodable += 1
            return
        if self.ledger.owns(record) and topic != self.names.dlq:
            self.last_output_at = time.monotonic()
        self.tally.add(record)

    def close(self) -> None:
        self._reader.close()


class GroupLag:
    """Records of trove.notifications the worker's consumer group has not committed yet."""

    def __init__(self, bootstrap: Any, group_id: str, topic: str = topics.NOTIFICATIONS) -> None:
        from confluent_kafka import Consumer

        from trovemeter.security import client_config

        self._consumer = Consumer({**client_config(bootstrap), "group.id": group_id,
                                   "enable.auto.commit": False, "log_level": 0})
        self._partitions: list[Any] | None = None
        self._topic = topic

    def lag(self) -> int | None:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            if self._partitions is None:
                metadata = self._consumer.list_topics(self._topic, timeout=5)
                self._partitions = [TopicPartition(self._topic, p)
                                    for p in metadata.topics[self._topic].partitions]
            committed = self._consumer.committed(self._partitions, timeout=5)
            total = 0
            for tp in committed:
                _, high = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                total += max(0, high - max(tp.offset, 0))
            return total
        except KafkaException:
            return None

    def close(self) -> None:
        self._consumer.close()


def delete_old_demo_state(bootstrap: Any, keep: str, data_dir: Path) -> list[str]:
    """Internal topics and consumer groups of earlier demo workers (their worker is stopped):
    without this every run would leave its changelog and repartition topics behind."""
    import shutil

    from confluent_kafka.admin import AdminClient

    from trovemeter.security import client_config

    admin = AdminClient({**client_config(bootstrap), "log_level": 0})
    doomed = [t for t in admin.list_topics(timeout=10).topics
              if t.startswith(DEMO_APP_PREFIX) and not t.startswith(keep)]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result()
    with contextlib.suppress(Exception):
        groups = [g.group_id for g in admin.list_consumer_groups().result(10).valid
                  if g.group_id.startswith(DEMO_APP_PREFIX) and g.group_id != keep]
        if groups:
            for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
                with contextlib.suppress(Exception):
                    future.result()
    if data_dir.is_dir():
        for path in data_dir.glob(f"{DEMO_APP_PREFIX}*"):
            if not path.name.startswith(keep):
                shutil.rmtree(path, ignore_errors=True)
    return doomed


def delete_queue(url: Any, queue: str) -> None:
    """Empty the demo's queue: messages left from an interrupted run are not this run's."""
    import pika
    import pika.exceptions

    try:
        connection = pika.BlockingConnection(
            pika.URLParameters(url) if isinstance(url, str) else url)
    except pika.exceptions.AMQPError as exc:
        raise StartupFailed(f"RabbitMQ is not reachable ({exc!r}); is the stack up? "
                            "(make up)") from exc
    try:
        connection.channel().queue_delete(queue)
    except pika.exceptions.AMQPError:
        pass
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def usage_stage_present(streams_dir: Path = ROOT / "streams") -> bool:
    """Whether the worker has a stage that writes trove.usage (its source names the topic)."""
    pattern = re.compile(r"topics\.USAGE\b|[\"']trove\.usage[\"']")
    for path in streams_dir.glob("**/*.py"):
        if path.name == "dashboard.py":
            continue
        with contextlib.suppress(OSError):
            if pattern.search(path.read_text(encoding="utf-8", errors="replace")):
                return True
    return False


def open_operations(base_url: str, ledger: RunLedger) -> Counter[tuple[str, str]] | None:
    """(resource_type, operation) -> starts the worker holds open for this run, from its
    ``/operations/open/`` view; None when the view is missing or unreadable."""
    try:
        status, body = _http_get(f"{base_url}/operations/open/?limit=5000", timeout=10)
        if status != 200:
            return None
        document = json.loads(body)
    except (OSError, ValueError):
        return None
    rows = _rows_of(document)
    if rows is None or (isinstance(document, Mapping) and document.get("partial")):
        return None  # a worker did not answer: the count would be short
    counts: Counter[tuple[str, str]] = Counter()
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        if "has_start" in row and not (row["has_start"] and not row.get("has_end")
                                       and not row.get("has_error")):
            continue  # not a start waiting for its end (an orphan end, held events)
        rtype, op = row.get("resource_type"), row.get("operation")
        if not rtype or not op:
            continue
        ids = {row.get(k) for k in ("message_id", "start_message_id", "last_message_id")}
        if row.get("tenant_id") in ledger.tenants or ids & ledger.message_ids:
            counts[(str(rtype), str(op))] += 1
    return counts


def _rows_of(document: Any) -> list[Any] | None:
    if isinstance(document, list):
        return document
    if isinstance(document, Mapping):
        for key in ("operations", "open", "items", "results", "records"):
            if isinstance(document.get(key), list):
                return document[key]
    return None


# ---------------------------------------------------------------------------- simulator


class Simulator:
    """`trovemeter simulate` as a child in its own session (so that Ctrl-C reaches it once, from
    us); its JSON progress lines are parsed, everything is copied to simulator.log."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.published = 0
        self.summary_line = ""
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
                                        start_new_session=True)
        self._thread = threading.Thread(target=self._read, name="simulator-output", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self._log.write(raw)
            self._log.flush()
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("event") == "simulator.progress":
                        self.published = max(self.published, int(entry.get("published", 0)))
            elif line.startswith("simulate"):
                self.summary_line = line
                match = re.search(r"published (\d+)/", line)
                if match:
                    self.published = int(match.group(1))

    def poll(self) -> int | None:
        return self.process.poll()

    def interrupt(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(5)
        self._thread.join(2)
        self._log.close()
        return code


# ---------------------------------------------------------------------------- the command


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def _rate(samples: deque[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    (t0, v0), (t1, v1) = samples[0], samples[-1]
    return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0


def simulate_argv(args: argparse.Namespace, seed: int, start: datetime, speed: float | None
                  ) -> list[str]:
    argv = ["--seed", str(seed), "--tenants", str(args.tenants), "--instances",
            str(args.instances), "--hours", str(args.hours),
            "--start", start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "--failure-rate", str(args.failure_rate), "--abandon-rate", str(args.abandon_rate),
            "--garbage-rate", str(args.garbage_rate), "--duplicate-rate", str(args.duplicate_rate),
            "--exchange", args.exchange, "--progress-interval", "0.5"]
    if speed is not None:
        argv += ["--speed", f"{speed:.6g}"]
    return argv


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:  # before the simulator runs (it has its own handling)
        print("\ndemo: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:  # noqa: C901, PLR0912, PLR0915 - one story, in order
    from trovemeter import simulate_command
    from trovemeter.codec import serde_for
    from trovemeter.settings import CommonSettings
    from trovemeter.simulation import build_scenario

    settings = CommonSettings()
    web_port = args.web_port or settings.web_port
    run_dir: Path = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    if args.start:
        start = simulate_command._utc_hour(args.start)
    else:
        start = _floor_hour(datetime.now(UTC)) - timedelta(hours=args.hours + 1)
    live = not args.plain and sys.stdout.isatty()
    color = live and os.environ.get("NO_COLOR") is None

    # -- plan: the same arguments the simulator child parses, so both build the same scenario
    sim_parser = argparse.ArgumentParser()
    simulate_command.add_arguments(sim_parser)
    planned = time.monotonic()
    try:
        config = simulate_command.config_from_args(
            sim_parser.parse_args(simulate_argv(args, seed, start, None)))
    except ValueError as exc:
        print(f"trovemeter demo: {exc}", file=sys.stderr)
        return 2
    scenario = build_scenario(config)
    ledger = RunLedger.of(scenario)
    expected = scenario.expected.to_json()
    expected_path = run_dir / "expected.json"
    simulate_command.write_expected(expected_path, scenario.expected)
    span = (ledger.sent_offsets[-1] - ledger.sent_offsets[0]) if ledger.sent_offsets else 0.0
    speed = args.speed if args.speed else max(1.0, span / max(1.0, args.duration))
    _say(f"run {run_id}: seed {seed}, {config.tenants} tenants, {config.instances} instances, "
         f"{config.hours} h from {start:%Y-%m-%d %H:%M} UTC -> {len(scenario)} messages "
         f"at {speed:,.0f}x (~{span / speed:.0f} s); expected totals in "
         f"{_rel(expected_path)} (planned in {time.monotonic() - planned:.1f} s)")

    # -- processes
    for pid_file in sorted(run_dir.glob("*.pid")):
        if stop_pid_file(pid_file):
            _say(f"stopped the previous demo's {pid_file.stem}")
    for port, what in ((web_port, "the worker's web server (--web-port)"),
                       (args.metrics_port, "the shovel's metrics (--metrics-port)")):
        if _port_taken(port):
            print(f"trovemeter demo: port {port} for {what} is taken by another process; "
                  "stop it or choose another port", file=sys.stderr)
            return 2
    app_id = args.app_id or f"{DEMO_APP_PREFIX}{run_id}"
    names = DemoTopics(args.topic_prefix)
    try:
        from connectors.kafka_admin import KafkaUnavailable, ensure_topics
        from connectors.topic_reader import commit_group_offsets, end_offsets

        kafka = settings.kafka_client_config()  # bootstrap + TLS/SASL (trovemeter.security)
        # log_level 0: librdkafka's goodbye lines would otherwise end up under the summary.
        ensure_topics({**kafka, "log_level": 0}, names.specs())
        delete_queue(settings.rabbit_parameters(), args.queue)
        start_offsets = end_offsets(kafka, names.watched)
        commit_group_offsets(kafka, app_id, start_offsets)
        if args.app_id is None:
            delete_old_demo_state(kafka, app_id, ROOT / ".stack" / "faust")
    except (KafkaUnavailable, StartupFailed, Exception) as exc:  # noqa: BLE001
        print(f"trovemeter demo: cannot prepare Kafka/RabbitMQ at {settings.kafka_bootstrap} / "
              f"{settings.rabbit_url_masked}: {exc}\n  is the stack up? (make up)",
              file=sys.stderr)
        return 1

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    trovemeter_bin = str(Path(sys.executable).with_name("trovemeter"))
    shovel = Background("shovel", [trovemeter_bin, "shovel", "--queue", args.queue,
                                   "--exchanges", args.exchange,
                                   "--metrics-port", str(args.metrics_port),
                                   "--topic", names.notifications, "--dlq-topic", names.dlq],
                        run_dir, env)
    worker = Background("worker", worker_argv(web_port),
                        run_dir, dict(env, TROVEMETER_APP_ID=app_id,
                                      TROVEMETER_WEB_PORT=str(web_port), **names.worker_env()))
    base_url = f"http://127.0.0.1:{web_port}"
    started = time.monotonic()
    shovel.start()
    worker.start()
    (run_dir / "demo.json").write_text(json.dumps({
        "run_id": run_id, "seed": seed, "app_id": app_id, "exchange": args.exchange,
        "queue": args.queue, "dashboard": f"{base_url}/dashboard/",
        "shovel_metrics": f"http://127.0.0.1:{args.metrics_port}/metrics",
        "pids": {"shovel": shovel.process.pid if shovel.process else None,
                 "worker": worker.process.pid if worker.process else None},
        "topics": list(names.watched),
        "start_offsets": {f"{t}:{p}": o for (t, p), o in sorted(start_offsets.items())},
    }, indent=2) + "\n")
    try:
        _say(f"starting the shovel (queue {args.queue}) and a worker (app id {app_id}) ...")
        wait_until(lambda: json.loads(_http_get(
            f"http://127.0.0.1:{args.metrics_port}/healthz")[1]).get("healthy"),
            "the shovel (/healthz)", shovel, 60)
        wait_until(lambda: _http_get(f"{base_url}/")[0] < 500, "the worker's web server",
                   worker, 90)
    except (StartupFailed, KeyboardInterrupt) as exc:
        print(f"trovemeter demo: {exc or 'interrupted'}", file=sys.stderr)
        shovel.stop()
        worker.stop()
        return 1 if isinstance(exc, StartupFailed) else 130
    try:
        worker = ensure_worker_subscribed(worker)
    except (StartupFailed, KeyboardInterrupt) as exc:
        print(f"trovemeter demo: {exc or 'interrupted'}", file=sys.stderr)
        shovel.stop()
        worker.stop()
        return 1 if isinstance(exc, StartupFailed) else 130
    dashboard = f"{base_url}/dashboard/" if _http_get(f"{base_url}/dashboard/summary/")[0] == 200 \
        else None
    _say(f"shovel and worker up in {time.monotonic() - started:.1f} s; dashboard "
         f"{dashboard or '(not served by this worker)'}")

    # -- publish and watch
    from trovemeter.demo_summary import Observed, compare, exit_code, horizon_of, render
    from trovemeter.demo_view import LiveState, Screen, progress_line, render_frame

    serde = serde_for(settings)
    watcher = OutputWatcher(settings.kafka_client_config(), start_offsets, ledger, serde,
                            app_id, names)
    lag = GroupLag(settings.kafka_client_config(), app_id, names.notifications)
    usage_present = usage_stage_present()
    state = LiveState(run_id=run_id, seed=seed, tenants=config.tenants,
                      instances=config.instances, hours=config.hours, speed=speed,
                      dashboard_url=dashboard, run_dir=_rel(run_dir), total=len(scenario),
                      expected_ids=len(ledger.message_ids),
                      garbage=int(expected["messages"]["garbage"]),
                      usage_note="no usage yet" if usage_present else
                      "no usage yet: usage metering not built yet")
    simulator = Simulator([trovemeter_bin, "simulate", *simulate_argv(args, seed, start, speed)],
                          run_dir / "simulator.log", env)
    screen = Screen() if live else None
    samples: dict[str, deque[tuple[float, float]]] = {k: deque(maxlen=6) for k in
                                                      ("published", "topic", "ops")}
    t0 = time.monotonic()
    last_plain = 0.0
    finished_at: float | None = None
    interrupted = False
    sim_code: int | None = None
    settle_note = ""
    try:
        while True:
            watcher.pump(0.8 if live else 1.0)
            now = time.monotonic()
            state.elapsed_s = now - t0
            state.published = simulator.published
            if state.published and ledger.sent_offsets:
                index = min(state.published, len(ledger.sent_offsets)) - 1
                state.sim_now = start + timedelta(seconds=ledger.sent_offsets[index])
            state.in_topic = len(watcher.seen_ids)
            state.dead_letters = watcher.tally.dead_letters
            state.snapshot = watcher.tally.snapshot()
            state.worker_lag = lag.lag()
            for key, value in (("published", state.published), ("topic", state.in_topic),
                               ("ops", len(watcher.tally.operations))):
                samples[key].append((now, value))
            state.publish_rate = _rate(samples["published"])
            state.topic_rate = _rate(samples["topic"])
            state.ops_rate = _rate(samples["ops"])
            sim_code = simulator.poll()
            if sim_code is None:
                state.phase = "publishing"
            else:
                if finished_at is None:
                    finished_at = now
                    if sim_code != 0:
                        state.note = (f"the simulator exited with {sim_code}: see "
                                      f"{_rel(simulator.log_path)}")
                state.phase = "settling"
                settled, settle_note = _settled(state, watcher, now, finished_at, names)
                if not sim_code:
                    state.note = "" if settled else settle_note
                if settled or now - finished_at > args.settle_timeout:
                    if not settled:
                        settle_note = (f"gave up waiting after {args.settle_timeout:.0f} s: "
                                       f"{settle_note}")
                    break
            if worker.exited() is not None:
                state.note = f"the worker exited with {worker.exited()}: see {_rel(worker.log_path)}"
            elif watcher.foreign_notifications and not state.note:
                state.note = _foreign_note(watcher.foreign_notifications, names)
            if screen is not None:
                screen.draw(render_frame(state, color=color, width=_columns()))
            elif now - last_plain >= 5:
                last_plain = now
                print(progress_line(state), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        state.phase = "interrupted"
        simulator.interrupt()
        try:
            sim_code = simulator.wait(10)
            watcher.pump(2.0)
        except KeyboardInterrupt:
            pass
    if not interrupted:
        sim_code = simulator.wait(10)
    state.snapshot = watcher.tally.snapshot()
    state.in_topic = len(watcher.seen_ids)
    state.dead_letters = watcher.tally.dead_letters
    state.published = simulator.published
    if state.phase != "interrupted":
        state.phase = "done"
    if screen is not None:
        screen.draw(render_frame(state, color=color, width=_columns()))
        screen.release()
    else:
        print(progress_line(state), flush=True)
    if simulator.summary_line:
        _say(simulator.summary_line)

    # -- summary
    window = horizon_of(expected)
    tally = watcher.tally
    usage = tally.usage_by_tenant(*window) if tally.usage else None
    observed = Observed(
        operations=tally.operation_counts(), failures=tally.failure_counts(),
        dead_letters=sum(n for sha, n in tally.dead_letter_shas.items()
                         if sha in ledger.garbage_shas),
        message_ids=set(watcher.seen_ids),
        durations={row["name"]: tally.durations(row["name"])
                   for row in state.snapshot["operations"]["by_operation"]},
        open_operations=open_operations(base_url, ledger), usage=usage,
        usage_agent_present=usage_present,
        resources=state.snapshot["resources"]["by_type"], conflicts=list(tally.conflicts),
        interrupted=interrupted)
    checks = compare(expected, observed)
    shown = checks
    if interrupted:  # the outline only: most totals cannot match a scenario cut short
        shown = [replace(c, details=()) for c in checks if c.section != "durations"]
    title = (f"summary: pipeline vs the simulator's expected totals ({_rel(expected_path)})"
             if not interrupted else
             f"PARTIAL summary (interrupted after {state.published}/{state.total} messages: "
             "the expected totals are the whole scenario's)")
    if settle_note and not interrupted and not settle_note.startswith("caught up"):
        title += f"\n  note: {settle_note}"
    if watcher.foreign_notifications:
        title += f"\n  note: {_foreign_note(watcher.foreign_notifications, names)}"
    print()
    print(render(shown, color=color, title=title))
    (run_dir / "summary.txt").write_text(render(checks, color=False, title=title) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({
        "run_id": run_id, "seed": seed, "interrupted": interrupted, "simulator_exit": sim_code,
        "checks": [{"section": c.section, "label": c.label, "expected": c.expected,
                    "actual": c.actual, "ok": c.ok, "details": list(c.details)}
                   for c in checks]}, indent=2) + "\n")
    watcher.close()
    lag.close()

    print()
    if args.stop_at_end:
        shovel.stop()
        worker.stop()
        _say("stopped the shovel and the worker (--stop-at-end)")
    else:
        _say("the stack, the shovel and the worker keep running for you to explore:")
        if dashboard:
            print(f"  dashboard      {dashboard}")
        print(f"  topics         .venv/bin/trovemeter tail {names.name(topics.OPERATIONS)}   "
              f"(also {names.name(topics.ERRORS)}, {names.name(topics.RESOURCES)}, "
              f"{names.name(topics.USAGE)}, {names.notifications}, --follow, --key K)")
        print(f"  more traffic   .venv/bin/trovemeter simulate --exchange {args.exchange} "
              "--speed 600")
        print(f"  logs           {_rel(run_dir)}/{{shovel,worker,simulator}}.log    "
              f"summary {_rel(run_dir / 'summary.txt')}")
        print("  stop all       make down")
    if interrupted:
        return 130
    if sim_code not in (0, None):
        return 1
    return exit_code(checks)


def _settled(state: Any, watcher: OutputWatcher, now: float, finished_at: float,
             names: DemoTopics) -> tuple[bool, str]:
    """Whether the pipeline has caught up with everything published, and what it waits for."""
    waiting = []
    if state.in_topic < state.expected_ids:
        waiting.append(f"{state.expected_ids - state.in_topic} message ids not in "
                       f"{names.notifications} yet")
    if state.dead_letters < state.garbage:
        waiting.append(f"{state.garbage - state.dead_letters} dead letters")
    if state.worker_lag is None or state.worker_lag > 0:
        waiting.append(f"worker lag {state.worker_lag if state.worker_lag is not None else '?'}")
    idle = now - max(watcher.last_output_at, finished_at)
    if idle < 4.0:
        waiting.append("outputs still arriving")
    if waiting:
        return False, "settling: waiting for " + ", ".join(waiting)
    return True, "caught up"


def _foreign_note(count: int, names: DemoTopics) -> str:
    return (f"{count} notifications from other producers arrived on {names.notifications} "
            "during this run; the worker reads them too and their event times can make this "
            "run's events late (abandoned starts, orphan ends). To isolate a run: "
            'make demo DEMO_ARGS="--topic-prefix demo."')


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((100, 40)).columns


def _rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)

