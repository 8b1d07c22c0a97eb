"""Secrets planted in notifications and in the RabbitMQ URL never appear anywhere the pipeline
writes or serves (issue #9): not in any Kafka topic (every record of every trove.* topic and of
the worker's internal topics, raw bytes: key, value, headers; compressed dead-letter bodies
decompressed), not in the shovel's or the worker's log output, not in the shovel's /metrics or
/healthz, not in any of the worker's web views (every route it serves, dashboard included).

Planted: a token in ``_context_auth_token`` and in payload fields named like secrets
(``password``, ``admin_password``, ``secret_key``, ``token``, ``credentials.password``, Trove's
``users[].password``), a password in transport/connection URLs inside payload strings, and the
password of the RabbitMQ user the shovel and the worker are configured with (a throwaway user).
Parseable bodies and broken ones (dead letters), v1 and v2, plain and compressed.
"""

from __future__ import annotations

import bz2
import copy
import gzip
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from confluent_kafka.admin import AdminClient

from connectors.topic_reader import commit_group_offsets
from tests.integration.conftest import free_port
from tests.integration.shovel_harness import (
    RABBIT_PORT,
    ROOT,
    Rabbit,
    ShovelProcess,
    by_message_id,
    end_offsets,
    load_fixtures,
    oslo_properties,
    rabbitmqctl,
    read_records,
)
from tests.integration.test_shovel import wait_for
from trovemeter import codec, topics
from trovemeter.model import DeadLetter

pytestmark = pytest.mark.integration

# The worker with everything streams/ registers (agents, views, the dashboard), however the
# package wires its modules together, started as `faust -A streams.app worker` does; plus one
# test-only page listing every route the web server has, the tables and the agents.
WORKER_SHIM = """
import importlib, pkgutil, sys
import streams
from streams.app import app
for module in pkgutil.iter_modules(streams.__path__):
    if module.name != "worker_command":
        importlib.import_module(f"streams.{module.name}")

@app.page("/__test_routes__/")
async def _routes(self, request):
    router = app.web.web_app.router
    return self.json({"routes": sorted({r.canonical for r in router.resources()}),
                      "tables": sorted(app.tables.keys()),
                      "agents": sorted(app.agents.keys())})

sys.argv = ["faust", "worker", *sys.argv[1:]]
app.main()
"""


class WorkerProcess:
    def __init__(self, app_id: str, port: int, log_path: Path, env: dict[str, str]) -> None:
        self.app_id, self.port, self.log_path = app_id, port, log_path
        self.env = dict(os.environ, **env, TROVEMETER_APP_ID=app_id, TROVEMETER_WEB_PORT=str(port),
                        TROVEMETER_DATA_DIR=str(log_path.parent / "faust"), PYTHONUNBUFFERED="1")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", WORKER_SHIM, "-l", "debug", "--web-port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited {self.process.returncode}:\n{self.logs()[-4000:]}")
            try:
                if self.get("/__test_routes__/")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"worker web server not up:\n{self.logs()[-4000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _v2(inner: dict[str, Any]) -> bytes:
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()


def planted_bodies(token: str, url_password: str) -> tuple[list[tuple[str, bytes, pika.BasicProperties]],
                                                          dict[str, str]]:
    """(name, body, properties) with the token and URL password planted; and the ids to expect."""
    fixtures = {f.name: f for f in load_fixtures()}
    transport_url = (f"rabbit://trove:{url_password}@rabbit-1.example:5672,"
                     f"trove:{url_password}@rabbit-2.example:5672/trove")
    connection = f"mysql+pymysql://root:{url_password}@db.example/trove?charset=utf8"

    def plant(inner: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(inner)
        out["message_id"] = str(uuid.uuid4())
        out["_context_auth_token"] = token
        out["payload"].update(
            password=token, admin_password=token, secret_key=token, token=token,
            credentials={"password": token, "user": "admin"},
            users=[{"name": "app", "password": token, "databases": [{"name": "db1"}]}],
            transport_url=transport_url, note=f"connect with {connection} please")
        return out

    v2_inner = json.loads(json.loads(fixtures["dbaas.instance_create.start.v2"].body)["oslo.message"])
    end_inner = json.loads(json.loads(fixtures["dbaas.instance_create.end.v2"].body)["oslo.message"])
    v1_inner = json.loads(fixtures["trove.instance.exists.v1"].body)
    good_v2, good_end, good_v1 = plant(v2_inner), plant(end_inner), plant(v1_inner)
    good_end["payload"]["request_id"] = good_v2["payload"]["request_id"]  # a pair for the worker
    broken_v2 = {k: v for k, v in plant(v2_inner).items() if k != "event_type"}
    broken_v1 = {k: v for k, v in plant(v1_inner).items() if k != "timestamp"}
    plain = oslo_properties()
    gz = oslo_properties()
    gz.content_encoding = "gzip"
    bodies = [
        ("good_v2", _v2(good_v2), plain),
        ("good_end_v2", _v2(good_end), plain),
        ("good_v1", json.dumps(good_v1).encode(), plain),
        ("broken_v2", _v2(broken_v2), plain),
        ("broken_v1", json.dumps(broken_v1).encode(), plain),
        ("gzip_v2", gzip.compress(_v2(plant(v2_inner))), gz),
        ("bz2_v1", bz2.compress(json.dumps(plant(v1_inner)).encode()), plain),
        ("truncated_v2", _v2(plant(v2_inner))[:-40], plain),
        ("bad_encoding_v1", json.dumps(plant(v1_inner)).encode(),
         pika.BasicProperties(content_type="application/json", content_encoding="latin-1",
                              delivery_mode=2, headers={"x-token": token})),
    ]
    ids = {"v2": good_v2["message_id"], "end": good_end["message_id"], "v1": good_v1["message_id"],
           "instance_id": end_inner["payload"].get("instance_id", ""),
           "request_id": good_v2["payload"]["request_id"],
           "tenant_id": good_v2["payload"]["tenant_id"]}
    return bodies, ids


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (/proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, port_hex = local.partition(":")
            if state == "0A" and int(port_hex, 16) == port:
                if len(address) == 8:
                    found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
                else:
                    found.add("::" if set(address) == {"0"} else address)
    return found


def _decompressed(body: bytes) -> bytes:
    for opener in (gzip.decompress, bz2.decompress):
        try:
            return opener(body)
        except Exception:  # noqa: BLE001
            continue
    return b""


def _worker_paths(routes: dict[str, Any], ids: dict[str, str]) -> list[str]:
    """Every route, with path variables filled with the tables' names and the planted ids."""
    keys = [v for v in ids.values() if v]
    paths: list[str] = []
    for route in routes["routes"]:
        if "{" not in route:
            paths.append(route)
            continue
        candidates = [route]
        for name in ("name", "table"):
            if "{" + name + "}" in route:
                candidates = [c.replace("{" + name + "}", t) for c in candidates
                              for t in routes["tables"] or ["none"]]
        for name in ("key", "tenant", "tenant_id", "id", "resource_id", "instance_id"):
            if "{" + name + "}" in route:
                candidates = [c.replace("{" + name + "}", k) for c in candidates for k in keys]
        paths.extend(c for c in candidates if "{" not in c)
    return sorted(set(paths))


@pytest.fixture
def rabbit(rabbit_url: str) -> Iterator[Rabbit]:
    with Rabbit(rabbit_url) as connection:
        yield connection


def test_planted_secrets_appear_in_no_topic_log_metric_or_web_view(
        rabbit: Rabbit, unique_name: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    token = "gAAAAAB" + secrets.token_hex(20)
    url_password = "Url" + secrets.token_hex(10)
    rabbit_password = "Rab" + secrets.token_hex(10)
    secrets_ = {"token": token, "url_password": url_password, "rabbit_password": rabbit_password}
    user = f"trovemeter-secrets-{secrets.token_hex(4)}"
    bodies, ids = planted_bodies(token, url_password)
    raw = b"".join(b for _, b, _ in bodies if not b.startswith((b"\x1f\x8b", b"BZh")))
    assert token.encode() in raw and url_password.encode() in raw

    queue, exchange = f"{unique_name}.q", f"{unique_name}.trove"
    app_id = f"trovemeter-secrets-{unique_name}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    trove_topics = sorted(t for t in admin.list_topics(timeout=10).topics if t.startswith("trove."))
    start = end_offsets(kafka_bootstrap, trove_topics)
    commit_group_offsets(kafka_bootstrap, app_id, {k: v for k, v in start.items()
                                                   if k[0] == topics.NOTIFICATIONS})
    url = f"amqp://{user}:{rabbit_password}@127.0.0.1:{RABBIT_PORT}/%2F"
    env = {"TROVEMETER_RABBIT_URL": url, "TROVEMETER_LOG_LEVEL": "DEBUG"}
    rabbitmqctl("add_user", user, rabbit_password)
    shovel = worker = None
    served: dict[str, tuple[int, bytes]] = {}
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        shovel = ShovelProcess(queue, [exchange], free_port(), tmp_path / "shovel.log",
                               env=env).start()
        worker = WorkerProcess(app_id, free_port(), tmp_path / "worker.log", env).start()
        shovel.wait_healthy()
        worker.wait_up()
        # Both servers on the loopback interface only (TROVEMETER_WEB_HOST's default).
        assert listening_addresses(shovel.metrics_port) == {"127.0.0.1"}
        assert listening_addresses(worker.port) == {"127.0.0.1"}
        for _, body, props in bodies:
            rabbit.publish(exchange, "notifications.info", body, props)
        wait_for(lambda: shovel.metrics().get("trovemeter_shovel_acked_total", 0) == len(bodies),
                 30, "every planted body acked")
        on_kafka = by_message_id(read_records(
            kafka_bootstrap, {k: v for k, v in start.items() if k[0] == topics.NOTIFICATIONS},
            lambda rs: {ids["v2"], ids["end"], ids["v1"]} <= by_message_id(rs).keys(),
            timeout=30))
        assert {ids["v2"], ids["end"], ids["v1"]} <= on_kafka.keys()

        routes = json.loads(worker.get("/__test_routes__/")[1])
        if routes["agents"]:  # give the agents time to process and publish
            time.sleep(10)
        worker.get("/dashboard/summary/")  # starts the dashboard's feed
        time.sleep(5)
        for path in _worker_paths(routes, ids):
            if path != "/__test_routes__/":
                served[path] = worker.get(path)
        assert any(p.startswith("/dashboard/") for p in served), sorted(served)
        assert served["/dashboard/summary/"][0] == 200
        served["shovel /metrics"] = shovel.get("/metrics")
        served["shovel /healthz"] = shovel.get("/healthz")
        assert served["shovel /metrics"][0] == 200
    finally:
        if worker is not None:
            worker.stop()
        if shovel is not None:
            shovel.stop()
        rabbitmqctl("delete_user", user)
        rabbit.delete_queue(queue)
        rabbit.delete_exchange(exchange)

    # -- every record written since the test started, in every trove.* topic and in the
    #    worker's internal topics (changelogs, repartitions)
    all_topics = admin.list_topics(timeout=10).topics
    internal = sorted(t for t in all_topics if t.startswith(app_id))
    now_trove = sorted(t for t in all_topics if t.startswith("trove."))
    marks = dict(start)
    for t in now_trove + internal:
        for p in all_topics[t].partitions:
            marks.setdefault((t, p), 0)
    ends = end_offsets(kafka_bootstrap, now_trove + internal)
    wanted = {k: e for k, e in ends.items() if e > marks[k]}
    reached: dict[tuple[str, int], int] = {}

    def caught_up(rs: list[Any]) -> bool:
        for r in rs[caught_up.seen:]:  # type: ignore[attr-defined]
            reached[(r.topic, r.partition)] = max(reached.get((r.topic, r.partition), -1), r.offset)
        caught_up.seen = len(rs)  # type: ignore[attr-defined]
        return all(reached.get(k, -1) >= e - 1 for k, e in wanted.items())

    caught_up.seen = 0  # type: ignore[attr-defined]
    records = read_records(kafka_bootstrap, {k: marks[k] for k in ends}, caught_up, timeout=120)
    assert caught_up(records), "not every partition was read to its end"
    assert len(records) >= len(bodies)
    letters = 0
    for record in records:
        blob = (record.key or b"") + (record.value or b"") + b"".join(
            k.encode() + (v or b"") for k, v in record.headers.items())
        if record.topic == topics.NOTIFICATIONS_DLQ and record.headers.get(
                "trovemeter.exchange") == exchange.encode():
            letter = codec.decode(record.value)
            assert isinstance(letter, DeadLetter)
            letters += 1
            blob += _decompressed(letter.body)  # a compressed body must not hide a secret
        for name, secret in secrets_.items():
            assert secret.encode() not in blob, f"{name} leaked into {record.topic}"
    assert letters == 6, letters  # broken v1/v2, gzip, bz2, truncated, latin-1
    by_topic = Counter(r.topic for r in records)
    print(f"\nrecords greped: {dict(sorted(by_topic.items()))}\nworker routes: {sorted(served)}"
          f"\nagents: {routes['agents']}")
    if routes["agents"]:  # the worker's outputs were exercised with the planted notifications
        planted = (ids["request_id"].encode(), ids["instance_id"].encode())
        assert any(r.topic.startswith("trove.") and r.topic not in (
            topics.NOTIFICATIONS, topics.NOTIFICATIONS_DLQ) and any(p in r.value for p in planted)
            for r in records), "no worker output record about the planted notifications"

    # -- logs, metrics, health, web views
    logs = {"shovel log": shovel.logs(), "worker log": worker.logs()}
    assert "rabbitmq.connected" in logs["shovel log"]
    assert f"{user}:***@127.0.0.1" in logs["shovel log"]  # the URL is logged, masked
    for where, text in logs.items():
        for name, secret in secrets_.items():
            assert secret not in text, f"{name} leaked into the {where}"
    for path, (status, body) in served.items():
        for name, secret in secrets_.items():
            assert secret.encode() not in body, f"{name} leaked into {path} (HTTP {status})"

    # cleanup: the worker's internal topics and group
    if internal:
        for future in admin.delete_topics(internal, operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001
                pass
    try:
        for future in admin.delete_consumer_groups([app_id], request_timeout=10).values():
            future.result()
    except Exception:  # noqa: BLE001
        pass
