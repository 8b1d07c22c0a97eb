"""Throughput of the worker's full pairing path per worker, beside two baselines from the same run.

    .venv/bin/python -m bench.bench_pairing [--events 100000] [--point-share 0.5] [--workers 1,2]

Inputs: N notifications built with the model and Avro-encoded once, keyed as the shovel keys
them (resource id, else request id): start/end pairs (60% instance creates -- the start keyed by
request id, the end by the new instance id, so the pair crosses partitions --, 20% flavor
resizes, 20% backup creates; 2% of the operations fail with an error instead of an end), each
end a few events after its start, plus ``--point-share`` trove.instance.exists audits of live
instances (the events that need no pairing; a real Trove sends one per instance per hour, far
more than operations). ``--point-share 0`` gives the pairs-only worst case.

Runs, each on a fresh 4-partition topic holding the same records:

(a) bare loop: confluent-kafka consume -> produce (the same bytes to a sink), one process;
(b) Faust agent that only counts (bench/faust_count_app.py): Faust's own per-event ceiling;
(c) `trovemeter worker` with one worker, then with two workers of one app id on the same topic:
    the whole source path (decode, resource state + table + trove.resources, usage metering
    since issue #6 added it to the same agent, pairing + tables + trove.operations/errors,
    error counts), as deployed.

(b) and (c) are started on an empty topic and timed from their first event to their last,
worker-side (the count agent's own clock; the worker's output records' timestamps), so that
start-up and rebalancing are left out; the records are produced when the workers are ready
(pre-encoded: ~0.3 s). (c) is checked complete before its rate is reported: every record id
the pure pairing core predicts for these inputs must be on the operations topic. CPU per event
is the worker processes' user+system time over the run.

(d) End-to-end latency (RabbitMQ publish -> trove.operations through the shovel, p50/p99 at
1,000 msg/s) is bench/bench_latency.py; ``--latency SECONDS`` runs it here too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from bench import not_run_row, row  # noqa: E402
from tests.integration.worker_harness import (  # noqa: E402
    RUN_DIR,
    WorkerProcess,
    create_topics,
    delete_topics,
    end_offsets,
    exists,
    free_port,
    note,
)
from trovemeter.codec import decode, encode, header_for  # noqa: E402
from trovemeter.model import Notification, OperationCompleted, Phase, ResourceType  # noqa: E402
from trovemeter.pairing import join_key, step  # noqa: E402

FULL_ARGV = ["--events", "100000"]
QUICK_ARGV = ["--events", "10000"]
PARTITIONS = 4
TARGET_RATE = 5000
TARGET_VS_COUNT = 0.5
TARGET_SCALE = 1.6


# ------------------------------------------------------------------ inputs


def workload(n: int, point_share: float, seed: int = 7) -> tuple[list[tuple[bytes | None, bytes]],
                                                                   set[str], int]:
    """(records as (key, value), expected operation record ids, number of operations)."""
    rng = random.Random(seed)
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    t0 = datetime.now(UTC) - timedelta(hours=1)
    events: list[Notification] = []
    live: list[str] = []
    pending: list[tuple[int, Notification]] = []  # (due slot, end) of started operations
    slot = 0
    # An operation is two events, an audit one: audits make `point_share` of the events.
    point_decision = 2 * point_share / (1 + point_share)

    def at() -> datetime:
        return t0 + timedelta(milliseconds=slot)

    while len(events) < n:
        due = [item for item in pending if item[0] <= slot]
        if due:
            pending[:] = [item for item in pending if item[0] > slot]
            events.extend(end for _, end in due)
        elif live and rng.random() < point_decision:
            events.append(exists(at(), tenant=tenant, instance_id=rng.choice(live)))
        else:
            request = str(uuid.uuid4())
            kind = rng.random()
            fails = rng.random() < 0.02
            terminal = Phase.ERROR if fails else Phase.END
            if kind < 0.6 or not live:
                instance = str(uuid.uuid4())
                start = note(Phase.START, at(), tenant=tenant, request_id=request,
                             payload={"flavor_id": "7", "name": "db", "datastore": "mysql",
                                      "datastore_version": "8.0"})
                end = note(terminal, at() + timedelta(seconds=30), tenant=tenant,
                           request_id=request, resource_id=None if fails else instance,
                           payload={"instance_id": instance})
                if not fails:
                    live.append(instance)
            elif kind < 0.8:
                instance = rng.choice(live)
                start = note(Phase.START, at(), tenant=tenant, request_id=request,
                             operation="resize_flavor", resource_id=instance,
                             payload={"instance_id": instance, "new_flavor_id": "8"})
                end = note(terminal, at() + timedelta(seconds=20), tenant=tenant,
                           request_id=request, operation="resize_flavor", resource_id=instance,
                           payload={"instance_id": instance})
            else:
                backup, instance = str(uuid.uuid4()), rng.choice(live)
                start = note(Phase.START, at(), tenant=tenant, request_id=request,
                             resource_type=ResourceType.BACKUP,
                             payload={"instance_id": instance, "name": "nightly"})
                end = note(terminal, at() + timedelta(seconds=60), tenant=tenant,
                           request_id=request, resource_type=ResourceType.BACKUP,
                           resource_id=None if fails else backup,
                           payload={"backup_id": backup, "size": 1.5})
            events.append(start)
            pending.append((slot + rng.randint(1, 12), end))
        slot += 1
    events = events[:n]
    expected: set[str] = set()
    states: dict[str, Any] = {}
    for n_ in events:
        key = join_key(n_)
        if key is None:
            continue
        states[key], outputs = step(states.get(key), n_)
        expected.update(o.record_id for o in outputs if isinstance(o, OperationCompleted))
    records = [(n_.kafka_key.encode() if n_.kafka_key else None, encode(n_)) for n_ in events]
    return records, expected, sum(1 for n_ in events if n_.phase is Phase.START)


def produce_all(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> float:
    """Produce pre-encoded records as the shovel would (murmur2 partitioner); seconds taken."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "compression.type": "lz4", "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    header = [header_for(Notification)]
    started = time.monotonic()
    for i, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(topic, value, key, headers=header)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    return time.monotonic() - started


# ------------------------------------------------------------------ (a) bare loop


def bare_loop(bootstrap: str, source: str, sink: str, n: int) -> dict[str, Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "enable.idempotence": True})
    consumer.subscribe([source])
    seen, first = 0, None
    deadline = time.monotonic() + 300
    cpu0 = time.process_time()
    while seen < n and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=1000, timeout=0.5):
            if message.error():
                continue
            if first is None:
                first = time.monotonic()
                cpu0 = time.process_time()
            while True:
                try:
                    producer.produce(sink, message.value(), message.key())
                    break
                except BufferError:
                    producer.poll(0.05)
            seen += 1
        producer.poll(0)
    producer.flush(60)
    elapsed = time.monotonic() - (first or time.monotonic())
    cpu = time.process_time() - cpu0
    consumer.close()
    return {"events": seen, "seconds": round(elapsed, 3),
            "events_per_s": round(seen / elapsed) if elapsed else None,
            "cpu_us_per_event": round(cpu / max(seen, 1) * 1e6, 1), "complete": seen >= n}


# ------------------------------------------------------------------ (b) counting agent


def count_agent(bootstrap: str, records: list[tuple[bytes | None, bytes]], run: str,
                log_dir: Path) -> dict[str, Any]:
    source, out = f"{run}.count-src", f"{run}.count-out"
    create_topics(bootstrap, [source, out], PARTITIONS)
    app_id = f"{run}-count"
    port = free_port()
    log_path = log_dir / f"{app_id}.log"
    env = dict(os.environ, COUNT_APP_ID=app_id, COUNT_SOURCE=source, COUNT_OUT=out,
               COUNT_N=str(len(records)), COUNT_WEB_PORT=str(port), PYTHONPATH=str(ROOT),
               TROVEMETER_KAFKA_BOOTSTRAP=bootstrap)
    with log_path.open("ab") as log:
        process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "faust"), "-A",
                                    "bench.faust_count_app", "worker", "-l", "info",
                                    "--web-port", str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        _wait_log(log_path, "[^Worker]: Ready", process, 120)
        time.sleep(2)  # the consumer's assignment settles after "Ready"
        produce_all(bootstrap, source, records)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([out])
        deadline = time.monotonic() + 300
        result = None
        while result is None and time.monotonic() < deadline and process.poll() is None:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                result = json.loads(message.value())
        consumer.close()
        if result is None:
            return {"complete": False, "log": str(log_path)}
        seconds = result["last"] - result["first"]
        return {"events": result["n"], "seconds": round(seconds, 3),
                "events_per_s": round((result["n"] - 1) / seconds),
                "cpu_us_per_event": round(result["cpu"] / result["n"] * 1e6, 1),
                "complete": True}
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        delete_topics(bootstrap, f"{app_id}-")


def _wait_log(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited: {path}")
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{text!r} not in {path} after {timeout}s")


# ------------------------------------------------------------------ (c) the worker


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_run(bootstrap: str, records: list[tuple[bytes | None, bytes]], expected: set[str],
               run: str, workers: int, log_dir: Path,
               extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    tag = f"{run}.w{workers}"
    topics = {name: f"{tag}.{name}" for name in ("notifications", "operations", "errors",
                                                 "resources")}
    create_topics(bootstrap, topics.values(), PARTITIONS)
    app_id = f"{run}-w{workers}"
    env = {"TROVEMETER_SOURCE_TOPIC": topics["notifications"],
           "TROVEMETER_OPERATIONS_TOPIC": topics["operations"],
           "TROVEMETER_ERRORS_TOPIC": topics["errors"],
           "TROVEMETER_RESOURCES_TOPIC": topics["resources"], **(extra_env or {})}
    procs = [WorkerProcess(bootstrap, app_id, log_dir / f"{app_id}-{i}.log", env=env).start()
             for i in range(workers)]
    try:
        _wait_split(procs, topics["notifications"], workers)
        start = end_offsets(bootstrap, [topics["operations"], topics["resources"],
                                        topics["errors"]])
        cpu0 = {p.process.pid: _cpu_seconds(p.process.pid) for p in procs if p.process}
        produce_all(bootstrap, topics["notifications"], records)
        seen, first_ts, last_ts, extra = _read_operations(bootstrap, start, expected,
                                                          topics["operations"], procs)
        cpu = sum(_cpu_seconds(pid) - used for pid, used in cpu0.items())
        complete = expected <= seen
        seconds = (last_ts - first_ts) / 1000 if first_ts and last_ts else None
        status = [p.status() or {} for p in procs]
        return {
            "workers": workers, "events": len(records), "operations": len(expected),
            "complete": complete, "missing": len(expected - seen), "unexpected": extra,
            "seconds": seconds,
            "events_per_s": round(len(records) / seconds) if seconds else None,
            "cpu_us_per_event": round(cpu / len(records) * 1e6, 1),
            "outbox": [s.get("outbox") for s in status],
        }
    finally:
        for p in procs:
            p.stop()
            p.remove_data_dir()
        delete_topics(bootstrap, f"{app_id}-")
        delete_topics(bootstrap, f"{tag}.")


def _wait_split(procs: list[WorkerProcess], topic: str, workers: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = []
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"worker exited:\n{proc.logs()[-3000:]}")
            statuses.append(proc.status())
        if all(s and s["recovered"] for s in statuses):
            owned = [set(s["assignment"].get(topic, [])) for s in statuses if s]
            if all(owned) and len(set().union(*owned)) == PARTITIONS and \
                    sum(len(o) for o in owned) == PARTITIONS and len(owned) == workers:
                time.sleep(1)
                return
        time.sleep(0.3)
    raise TimeoutError(f"{workers} worker(s) did not split {topic} within {timeout}s")


def _read_operations(bootstrap: str, start: dict[tuple[str, int], int], expected: set[str],
                     operations_topic: str, procs: list[WorkerProcess],
                     timeout: float = 300) -> tuple[set[str], int | None, int | None, int]:
    """(record ids seen, first output timestamp, last operation timestamp, unexpected ids)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
    seen: set[str] = set()
    first_ts = last_ts = None
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline and not expected <= seen:
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            if not batch:
                if time.monotonic() - idle_since > 60 or not all(p.alive() for p in procs):
                    break
                continue
            idle_since = time.monotonic()
            for message in batch:
                if message.error():
                    continue
                _, ts = message.timestamp()
                first_ts = ts if first_ts is None else min(first_ts, ts)
                if message.topic() == operations_topic:
                    record = decode(message.value())
                    seen.add(record.record_id)
                    last_ts = ts if last_ts is None else max(last_ts, ts)
        return seen, first_ts, last_ts, len(seen - expected)
    finally:
        consumer.close()


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--point-share", type=float, default=0.5,
                        help="share of point events (usage audits) among the inputs")
    parser.add_argument("--workers", default="1,2", help="worker counts to run")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--latency", type=float, default=0, metavar="SECONDS",
                        help="also run bench/bench_latency.py at 1,000 msg/s for SECONDS "
                        "(`make bench` runs it as a benchmark of its own)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra worker setting, e.g. TROVEMETER_PRODUCER_LINGER_MS=5")
    parser.add_argument("--bootstrap", default=os.environ.get("TROVEMETER_KAFKA_BOOTSTRAP",
                                                              "127.0.0.1:9092"))
    args = parser.parse_args(argv)
    run = f"bench-pairing-{uuid.uuid4().hex[:6]}"
    log_dir = RUN_DIR / run
    log_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = args.bootstrap

    print(f"building {args.events:,} notifications (point share {args.point_share}) ...",
          flush=True)
    records, expected, operations = workload(args.events, args.point_share)
    result: dict[str, Any] = {"events": len(records), "operations": len(expected),
                              "point_share": args.point_share, "partitions": PARTITIONS,
                              "logs": str(log_dir)}
    try:
        if not args.skip_baselines:
            source = f"{run}.bare-src"
            create_topics(bootstrap, [source, f"{run}.bare-out"], PARTITIONS)
            produce_all(bootstrap, source, records)
            print("(a) bare confluent-kafka loop ...", flush=True)
            result["bare"] = bare_loop(bootstrap, source, f"{run}.bare-out", len(records))
            print(f"    {result['bare']}", flush=True)
            print("(b) Faust counting agent ...", flush=True)
            result["count"] = count_agent(bootstrap, records, run, log_dir)
            print(f"    {result['count']}", flush=True)
        for workers in [int(w) for w in args.workers.split(",") if w]:
            print(f"(c) trovemeter worker x{workers} ...", flush=True)
            extra = dict(item.split("=", 1) for item in args.env)
            result[f"worker{workers}"] = worker_run(bootstrap, records, expected, run, workers,
                                                    log_dir, extra)
            print(f"    {result[f'worker{workers}']}", flush=True)
        if args.latency:
            from bench import bench_latency

            print("(d) end-to-end latency at 1,000 msg/s (bench/bench_latency.py) ...", flush=True)
            result["latency"] = bench_latency.main(["--seconds", str(args.latency),
                                                    "--rates", "1000"])
    finally:
        delete_topics(bootstrap, f"{run}.")
    result["rows"] = rows(result) + list((result.get("latency") or {}).get("rows", []))
    print_table(result)
    return result


def _rate(result: dict[str, Any], name: str) -> float | None:
    part = result.get(name) or {}
    return part.get("events_per_s") if part.get("complete") else None


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    one, two = _rate(result, "worker1"), _rate(result, "worker2")
    count, bare = _rate(result, "count"), _rate(result, "bare")
    mix = f"{result['events']:,} events, {result['point_share']:.0%} usage audits, " \
          f"{result['operations']:,} operations, {result['partitions']} partitions"
    out = []
    if one is not None:
        ratio = round(one / count, 3) if count else None
        out.append(row("pairing", "events/s per worker", one, "events/s",
                       baseline="Faust counting agent", baseline_value=count, ratio=ratio,
                       target=">= 5,000/s and >= 0.5x counting Faust agent",
                       met=bool(one >= TARGET_RATE and (ratio or 0) >= TARGET_VS_COUNT),
                       note=f"{mix}; bare confluent loop {bare}/s (worker = "
                            f"{one / bare:.3f}x bare); per CPU-second: worker "
                            f"{_capacity(result, 'worker1')}, counting agent "
                            f"{_capacity(result, 'count')}" if bare else mix))
    else:
        out.append(not_run_row("pairing", "events/s per worker", "worker run incomplete",
                               ">= 5,000/s and >= 0.5x counting Faust agent"))
    if one is not None and two is not None:
        out.append(row("scale", "2 workers / 1 worker, 4 partitions", two, "events/s",
                       baseline="1 worker", baseline_value=one, ratio=round(two / one, 3),
                       target=">= 1.6x", met=two / one >= TARGET_SCALE,
                       note="two worker processes of one app id on the same topic, "
                            "sharing the machine's two cores with the broker"))
    return out


def _capacity(result: dict[str, Any], name: str) -> float | None:
    """Events per CPU-second of the process (1e6 / CPU us per event): what one worker does on a
    core of its own, whatever else the machine was doing."""
    part = result.get(name) or {}
    cpu = part.get("cpu_us_per_event")
    return round(1e6 / cpu) if cpu and part.get("complete") else None


def print_table(result: dict[str, Any]) -> None:
    count, bare = _rate(result, "count"), _rate(result, "bare")
    count_cap = _capacity(result, "count")
    print()
    print(f"{'run':30} {'events/s':>10} {'vs count':>9} {'vs bare':>8} {'cpu us/ev':>10} "
          f"{'ev/cpu-s':>9} {'vs count':>9}")
    for name, label in (("bare", "(a) bare confluent loop"), ("count", "(b) Faust counting agent"),
                        ("worker1", "(c) trovemeter worker x1"),
                        ("worker2", "(c) trovemeter worker x2")):
        part = result.get(name)
        if not part:
            continue
        rate = part.get("events_per_s") if part.get("complete") else None
        vs_count = f"{rate / count:.3f}" if rate and count else "-"
        vs_bare = f"{rate / bare:.3f}" if rate and bare else "-"
        cpu = part.get("cpu_us_per_event", "-")
        capacity = _capacity(result, name)
        cap_vs = f"{capacity / count_cap:.3f}" if capacity and count_cap and name != "worker2" \
            else "-"
        shown = f"{rate:,}" if rate else "INCOMPLETE"
        print(f"{label:30} {shown:>10} {vs_count:>9} {vs_bare:>8} {cpu!s:>10} "
              f"{capacity or '-':>9} {cap_vs:>9}")
    one, two = _rate(result, "worker1"), _rate(result, "worker2")
    if one and two:
        print(f"two workers / one worker: {two / one:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
