"""Fault injection on the real local stack (issue #9): SIGKILL of the shovel and the worker (and
their supervised restart), Kafka stopped and restarted, Kafka frozen (SIGSTOP/SIGCONT),
RabbitMQ stopped and restarted, and a publisher that keeps publishing across a RabbitMQ restart
with publisher confirms, so "published" means "confirmed by RabbitMQ".

Brokers are stopped the way `stack/stack.sh down` stops them and brought back with
`stack/stack.sh up` (idempotent: it starts only what is down). Everything here acts on the
processes this suite started or on the stack's own pid files; never by process name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from tests.integration.shovel_harness import RABBIT_NODE, RABBITMQCTL, ROOT, TROVEMETER
from trovemeter.simulation import WireMessage

STACK = ROOT / "stack" / "stack.sh"
STACK_DIR = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
KAFKA_PID = STACK_DIR / "kafka" / "kafka.pid"
RABBIT_DIR = STACK_DIR / "rabbitmq"
RABBIT_SERVER_PID = RABBIT_DIR / "server.pid"


# ------------------------------------------------------------------ processes


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class Supervised:
    """A child process restarted whenever it is down (as systemd would), killed on request.

    ``kill9()`` is an injected fault; an exit nobody asked for is counted in
    ``unexpected_exits`` (with its code) and restarted too.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str],
                 ready: Callable[[], bool] | None = None) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
        self.ready = ready
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.starts = 0
        self.unexpected_exits: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Supervised:
        with self._lock:
            self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.starts + 1} of {self.name} at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, cwd=ROOT)
        self.starts += 1

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                if self.process is not None and self.process.poll() is not None:
                    self.unexpected_exits.append(self.process.returncode)
                    time.sleep(2.0)  # as systemd's RestartSec: no tight crash loop
                    self._spawn()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill9(self, restart_after: float = 1.0) -> None:
        """SIGKILL (no goodbye), then a restart after ``restart_after`` seconds."""
        with self._lock:
            assert self.process is not None
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
            self.kills += 1
            time.sleep(restart_after)
            self._spawn()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready is None or self.ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout}s; log {self.log_path}")

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait (no restart afterwards)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            if self.process is None:
                return None
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            return self.process.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def shovel_command(queue: str, exchange: str, metrics_port: int, *extra: str) -> list[str]:
    return [str(TROVEMETER), "shovel", "--queue", queue, "--exchanges", exchange,
            "--metrics-port", str(metrics_port), *extra]


def worker_command(web_port: int, loglevel: str = "info") -> list[str]:
    """`trovemeter worker` (Faust, every agent and view of streams/ autodiscovered)."""
    return [str(TROVEMETER), "worker", "-l", loglevel, "--web-port", str(web_port)]


# ------------------------------------------------------------------ Kafka


def kafka_pid() -> int:
    return int(KAFKA_PID.read_text().strip())


@contextlib.contextmanager
def kafka_frozen(seconds: float) -> Iterator[float]:
    """Kafka unreachable: the broker JVM stopped with SIGSTOP for ``seconds`` (connections stay
    open, nothing answers), then SIGCONT, always."""
    pid = kafka_pid()
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        yield started
        left = seconds - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)
    finally:
        os.kill(pid, signal.SIGCONT)


def stack_up(timeout: float = 240) -> None:
    """`stack/stack.sh up`: starts whichever broker is down, returns when both accept clients."""
    run = subprocess.run([str(STACK), "up"], cwd=ROOT, timeout=timeout, capture_output=True,
                         text=True)
    if run.returncode != 0:
        raise RuntimeError(f"stack/stack.sh up failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")


def kafka_stop(timeout: float = 60) -> float:
    """Stop the broker as `stack.sh down` does (SIGTERM: controlled shutdown); seconds taken."""
    started = time.monotonic()
    pid = kafka_pid()
    os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 30)
    return time.monotonic() - started


def kafka_restart(down_for: float = 5.0) -> float:
    """Stopped, down for ``down_for`` seconds, started again; returns the seconds it was down."""
    started = time.monotonic()
    kafka_stop()
    time.sleep(down_for)
    stack_up()
    while not port_open(9092):
        time.sleep(0.5)
    return time.monotonic() - started


# ------------------------------------------------------------------ RabbitMQ


def rabbit_env() -> dict[str, str]:
    """What `stack.sh`'s rabbit_env exports (the Erlang cookie lives under HOME)."""
    return dict(os.environ, HOME=str(RABBIT_DIR), RABBITMQ_NODENAME=RABBIT_NODE,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT="5672",
                RABBITMQ_DIST_PORT="25672", RABBITMQ_MNESIA_BASE=str(RABBIT_DIR / "mnesia"),
                RABBITMQ_LOG_BASE=str(RABBIT_DIR / "log"),
                RABBITMQ_PID_FILE=str(RABBIT_DIR / "rabbitmq.pid"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(RABBIT_DIR / "enabled_plugins"),
                RABBITMQ_CONFIG_FILE=str(RABBIT_DIR / "rabbitmq"),
                RABBITMQ_CONF_ENV_FILE=str(RABBIT_DIR / "rabbitmq-env.conf"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(RABBIT_DIR / "advanced.config"),
                ERL_EPMD_ADDRESS="127.0.0.1")


def rabbit_stop(timeout: float = 90) -> None:
    """Stop the node as `stack.sh down` does: `rabbitmqctl stop <pidfile>`, then its process."""
    subprocess.run([RABBITMQCTL, "-q", "-n", RABBIT_NODE, "stop", str(RABBIT_DIR / "rabbitmq.pid")],
                   env=rabbit_env(), timeout=timeout, capture_output=True)
    if RABBIT_SERVER_PID.exists():
        pid = int(RABBIT_SERVER_PID.read_text().strip())
        if not wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 30)


def rabbit_restart(down_for: float = 3.0) -> float:
    started = time.monotonic()
    rabbit_stop()
    time.sleep(down_for)
    stack_up()
    return time.monotonic() - started


def queue_counts(queue: str) -> tuple[int, int]:
    """(ready, unacked) from rabbitmqctl; (−1, −1) while the node does not answer."""
    try:
        out = subprocess.run([RABBITMQCTL, "-q", "-n", RABBIT_NODE, "list_queues", "name",
                              "messages_ready", "messages_unacknowledged", "--no-table-headers"],
                             capture_output=True, text=True, env=rabbit_env(), timeout=60,
                             check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return -1, -1
    for line in out.splitlines():
        parts = line.split("\t")
        if parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return -1, -1


# ------------------------------------------------------------------ publishing


@dataclass
class PublishStats:
    confirmed: Counter[str] = field(default_factory=Counter)  # kind -> confirmed by RabbitMQ
    confirmed_garbage: Counter[bytes] = field(default_factory=Counter)  # garbage body -> times
    unconfirmed_retries: Counter[str] = field(default_factory=Counter)  # kind -> resent
    unroutable: int = 0  # returned by RabbitMQ (no binding yet, e.g. after its restart)
    reconnects: int = 0
    confirmed_ids: set[str] = field(default_factory=set)  # of valid + duplicate messages
    done: bool = False
    elapsed_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.confirmed.values())


class ConfirmedPublisher:
    """Publishes in small AMQP transactions with ``mandatory``: a message counts as published
    only once RabbitMQ committed it into a queue (``tx.commit-ok``, not returned). A lost
    connection (a RabbitMQ restart) leaves the open transaction uncommitted, so the whole batch
    is sent again; a batch whose commit was in flight when the connection died may reach the
    queue twice (at least once, like any retrying publisher). A returned message (no binding:
    after a RabbitMQ restart the non-durable exchange's bindings are gone until the shovel
    re-binds) is sent again after a backoff. Paced at ``rate`` messages per second.

    (Transactions, not publisher confirms: pika's blocking channel waits for each confirm,
    which is too slow on a busy machine; a committed transaction says the same for a batch.)"""

    def __init__(self, url: str, exchange: str, rate: float,
                 message_id_of: Callable[[WireMessage], str | None], batch: int = 100) -> None:
        self.url, self.exchange, self.rate, self.batch = url, exchange, rate, batch
        self.message_id_of = message_id_of
        self.stats = PublishStats()
        self.stop = threading.Event()
        self._connection: Any = None
        self._channel: Any = None
        self._returned: Counter[bytes] = Counter()
        self._connected_once = False
        self._props: dict[int, pika.BasicProperties] = {}

    def _connect(self) -> None:
        self._close()
        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 30
        params.client_properties = {"connection_name": f"trovemeter-chaos-publisher {self.exchange}"}
        self._connection = pika.BlockingConnection(params)
        self._channel = self._connection.channel()
        # as oslo.messaging declares its control exchange
        self._channel.exchange_declare(self.exchange, "topic", durable=False, auto_delete=False)
        self._channel.add_on_return_callback(
            lambda _ch, _method, _props, body: self._returned.update([body]))
        self._channel.tx_select()
        self.stats.reconnects += self._connected_once
        self._connected_once = True

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = self._channel = None

    def _properties(self, message: WireMessage) -> pika.BasicProperties:
        props = self._props.get(id(message.properties))
        if props is None:
            props = self._props[id(message.properties)] = pika.BasicProperties(
                **message.properties)
        return props

    def _send(self, batch: list[WireMessage]) -> None:
        stats, pending, attempt = self.stats, batch, 0
        while pending and not self.stop.is_set():
            if attempt:
                time.sleep(min(5.0, 0.2 * 2 ** min(attempt, 5)))
            attempt += 1
            try:
                if self._channel is None:
                    self._connect()
                self._returned.clear()
                for message in pending:
                    self._channel.basic_publish(message.exchange, message.routing_key,
                                                message.body, self._properties(message),
                                                mandatory=True)
                self._channel.tx_commit()
                self._connection.process_data_events(0)  # dispatch the returns, if any
            except (pika.exceptions.AMQPError, OSError):
                stats.unconfirmed_retries.update(m.kind for m in pending)
                self._close()
                continue
            retry = []
            for message in pending:
                if self._returned[message.body] > 0:
                    self._returned[message.body] -= 1
                    retry.append(message)
                    continue
                stats.confirmed[message.kind] += 1
                if message.kind == "garbage":
                    stats.confirmed_garbage[message.body] += 1
                else:
                    message_id = self.message_id_of(message)
                    if message_id:
                        stats.confirmed_ids.add(message_id)
            stats.unroutable += len(retry)
            pending = retry

    def run(self, messages: Iterable[WireMessage]) -> PublishStats:
        started = time.monotonic()
        batch: list[WireMessage] = []
        for index, message in enumerate(messages, 1):
            batch.append(message)
            if len(batch) >= self.batch:
                wait = started + index / self.rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self._send(batch)
                batch = []
            if self.stop.is_set():
                break
        if batch:
            self._send(batch)
        self._close()
        self.stats.done = not self.stop.is_set()
        self.stats.elapsed_s = time.monotonic() - started
        return self.stats
