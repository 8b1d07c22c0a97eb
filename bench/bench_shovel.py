"""Throughput of `trovemeter shovel` (RabbitMQ -> Kafka, ack after Kafka confirmed) beside a bare
loop measured in the same run.

    .venv/bin/python -m bench.bench_shovel [--messages 100000] [--prefetch 2000]

Both drain their own copy of the same N messages: the real fixture bodies (v1 and v2, ~1.5 KB)
with unique message ids, published once to a bench exchange bound to two durable queues.

(a) bare loop: pika BlockingConnection + confluent-kafka Producer, the same delivery guarantee
    and batching as the shovel (track tags, ack multiple=True up to the highest contiguous tag
    whose delivery report succeeded), same producer settings, no parsing, no Avro, no key.
(b) shovel: `trovemeter shovel` as a subprocess, into its own bench topics; timed from its first
    consumed delivery to its last ack (read from its /metrics), start-up excluded.

Both results are verified complete (every message id counted on Kafka) before they are reported.
``main(argv)`` prints a table and returns the figures as a dict (for an aggregated `make bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from tests.integration.shovel_harness import (  # noqa: E402
    Rabbit,
    ShovelProcess,
    end_offsets,
    load_fixtures,
    message_id_of,
    read_records,
)

BARE_TOPIC = "trovemeter.bench.bare"
SHOVEL_TOPIC = "trovemeter.bench.notifications"
SHOVEL_DLQ = "trovemeter.bench.dlq"


def ensure_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if name in admin.list_topics(timeout=30).topics:
        return
    future = admin.create_topics([NewTopic(name, partitions, 1,
                                           config={"retention.ms": str(3600 * 1000)})])[name]
    try:
        future.result(timeout=30)
    except Exception as exc:  # noqa: BLE001 - a concurrent creator won
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise


def make_messages(n: int) -> tuple[list[tuple[str, bytes, Any]], int]:
    """n (routing key, body, properties) in the fixtures' mix, each with a fresh message id."""
    fixtures = load_fixtures()
    out, total = [], 0
    for i in range(n):
        fixture = fixtures[i % len(fixtures)]
        body = fixture.with_message_id(str(uuid.uuid4()))
        out.append((fixture.routing_key, body, fixture.pika_properties()))
        total += len(body)
    return out, total


# ------------------------------------------------------------------ (a) the bare loop


def bare_loop(rabbit_url: str, bootstrap: str, queue: str, n: int, prefetch: int,
              producer_settings: dict[str, Any]) -> dict[str, Any]:
    """What an operator would wire by hand: consume, produce the body as is, ack after the
    delivery report (batched like the shovel). Returns timing from first delivery to last ack."""
    import pika
    from confluent_kafka import Producer

    from connectors.ack_window import AckWindow

    producer = Producer(producer_settings)
    connection = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    window = AckWindow()
    state = {"first": 0.0, "acked": 0}

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        tag = method.delivery_tag
        window.track(tag)
        if not state["first"]:
            state["first"] = time.perf_counter()

        def report(err: Any, msg: Any) -> None:
            if err is None:
                window.confirm(tag)

        while True:
            try:
                producer.produce(BARE_TOPIC, body, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)

    channel.basic_consume(queue, on_message)
    deadline = time.monotonic() + 600
    while state["acked"] < n and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.002 if len(window) else 0.1)
        producer.poll(0)
        before = len(window)
        top = window.pop_ackable()
        if top is not None:
            channel.basic_ack(top, multiple=True)
            state["acked"] += before - len(window)
    elapsed = time.perf_counter() - state["first"]
    connection.close()
    producer.flush(30)
    return {"messages": state["acked"], "seconds": elapsed, "rate": state["acked"] / elapsed}


def _bare_worker(argv: list[str]) -> None:
    """Run the bare loop in its own process (like the shovel), print its result as JSON."""
    spec = json.loads(argv[0])
    print(json.dumps(bare_loop(**spec)))


# ------------------------------------------------------------------ (b) the shovel


def shovel_run(queue: str, exchange: str, n: int, prefetch: int, log_path: Path,
               metrics_port: int) -> dict[str, Any]:
    shovel = ShovelProcess(queue, [exchange], metrics_port, log_path,
                           extra_args=["--prefetch", str(prefetch), "--topic", SHOVEL_TOPIC,
                                       "--dlq-topic", SHOVEL_DLQ])
    shovel.start()
    try:
        first = None
        deadline = time.monotonic() + 600
        acked = 0.0
        while time.monotonic() < deadline:
            try:
                samples = shovel.metrics()
            except OSError:
                if shovel.process is not None and shovel.process.poll() is not None:
                    raise RuntimeError(f"shovel exited:\n{shovel.logs()}") from None
                time.sleep(0.01)
                continue
            now = time.perf_counter()
            if first is None and samples.get("trovemeter_shovel_consumed_total", 0) > 0:
                first = now
            acked = samples.get("trovemeter_shovel_acked_total", 0)
            if acked >= n:
                break
            time.sleep(0.01 if first is None else 0.05)
        elapsed = time.perf_counter() - (first or time.perf_counter())
        samples = shovel.metrics()
        rc = shovel.stop()
        return {"messages": int(acked), "seconds": elapsed, "rate": acked / elapsed if elapsed else 0,
                "exit_code": rc,
                "dead_lettered": sum(v for k, v in samples.items()
                                     if k.startswith("trovemeter_shovel_dead_lettered_total")),
                "latency_p_sum": samples.get("trovemeter_shovel_produce_latency_seconds_sum", 0),
                "latency_count": samples.get("trovemeter_shovel_produce_latency_seconds_count", 0)}
    finally:
        if shovel.process is not None and shovel.process.poll() is None:
            shovel.kill()


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench_shovel", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--prefetch", type=int, default=2000)
    parser.add_argument("--rabbit-url", default=os.environ.get(
        "TROVEMETER_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--bootstrap", default=os.environ.get(
        "TROVEMETER_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--skip-shovel", action="store_true")
    args = parser.parse_args(argv)
    n = args.messages

    from connectors.shovel import producer_config
    from tests.integration.conftest import free_port
    from trovemeter.settings import ShovelSettings

    for topic, partitions in ((BARE_TOPIC, 4), (SHOVEL_TOPIC, 4), (SHOVEL_DLQ, 1)):
        ensure_topic(args.bootstrap, topic, partitions)

    run_id = uuid.uuid4().hex[:8]
    exchange = f"bench-{run_id}.trove"
    bare_queue, shovel_queue = f"bench-{run_id}.bare", f"bench-{run_id}.shovel"
    messages, total_bytes = make_messages(n)
    ids = {message_id_of(body) for _, body, _ in messages}
    result: dict[str, Any] = {"benchmark": "shovel", "messages": n, "prefetch": args.prefetch,
                              "mean_body_bytes": round(total_bytes / n)}
    rabbit = Rabbit(args.rabbit_url)
    try:
        for queue in (bare_queue, shovel_queue):
            rabbit.prepare(queue, [exchange])
        t = time.perf_counter()
        rabbit.publish_many((exchange, rk, body, props) for rk, body, props in messages)
        for queue in (bare_queue, shovel_queue):
            rabbit.wait_ready(queue, n, timeout=300)
        result["publish_seconds"] = round(time.perf_counter() - t, 2)
        del messages

        marks = end_offsets(args.bootstrap, [BARE_TOPIC, SHOVEL_TOPIC, SHOVEL_DLQ])
        settings = ShovelSettings()
        if not args.skip_bare:
            spec = {"rabbit_url": args.rabbit_url, "bootstrap": args.bootstrap, "queue": bare_queue,
                    "n": n, "prefetch": args.prefetch,
                    "producer_settings": producer_config(settings, {"bootstrap.servers": args.bootstrap})}
            out = subprocess.run([sys.executable, "-m", "bench.bench_shovel", "--bare-worker",
                                  json.dumps(spec)], cwd=ROOT, capture_output=True, text=True,
                                 check=True, timeout=900)
            bare = json.loads(out.stdout.strip().splitlines()[-1])
            start = {k: v for k, v in marks.items() if k[0] == BARE_TOPIC}
            seen: set[str] = set()

            def bare_done(records: list[Any]) -> bool:
                for record in records[len(seen_count):]:
                    seen.add(message_id_of(record.value))
                seen_count.extend(range(len(records) - len(seen_count)))
                return ids <= seen

            seen_count: list[int] = []
            read_records(args.bootstrap, start, bare_done, timeout=120)
            bare["complete"] = ids <= seen
            result["bare"] = bare
        if not args.skip_shovel:
            with tempfile.NamedTemporaryFile(prefix="bench-shovel-", suffix=".log",
                                             delete=False) as log_file:
                log_path = Path(log_file.name)
            shovel = shovel_run(shovel_queue, exchange, n, args.prefetch, log_path, free_port())
            start = {k: v for k, v in marks.items() if k[0] in (SHOVEL_TOPIC, SHOVEL_DLQ)}
            got: set[str] = set()
            counted: list[int] = []

            def shovel_done(records: list[Any]) -> bool:
                for record in records[len(counted):]:
                    mid = record.headers.get("trovemeter.message_id")
                    if mid:
                        got.add(mid.decode())
                counted.extend(range(len(records) - len(counted)))
                return ids <= got

            records = read_records(args.bootstrap, start, shovel_done, timeout=120)
            shovel["complete"] = ids <= got
            shovel["records"] = len(records)
            shovel["mean_record_bytes"] = round(
                sum(len(r.value) for r in records) / max(1, len(records)))
            shovel["log"] = str(log_path)
            result["shovel"] = shovel
    finally:
        for queue in (bare_queue, shovel_queue):
            rabbit.delete_queue(queue)
        rabbit.delete_exchange(exchange)
        rabbit.close()

    if "bare" in result and "shovel" in result:
        result["ratio"] = round(result["shovel"]["rate"] / result["bare"]["rate"], 3)
    print_table(result)
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"\nshovel benchmark: {result['messages']} messages, mean body {result['mean_body_bytes']} B,"
          f" prefetch {result['prefetch']}, published in {result['publish_seconds']} s")
    print(f"{'loop':<10} {'msgs/s':>10} {'seconds':>9} {'complete':>9}")
    for name in ("bare", "shovel"):
        if name in result:
            row = result[name]
            print(f"{name:<10} {row['rate']:>10,.0f} {row['seconds']:>9.2f} {str(row['complete']):>9}")
    if "ratio" in result:
        print(f"ratio shovel/bare: {result['ratio']:.2f}  (target >= 0.70 and >= 20,000 msgs/s)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-worker":
        _bare_worker(sys.argv[2:])
    else:
        figures = main(sys.argv[1:])
        sys.exit(0 if all(figures.get(k, {}).get("complete", True) for k in ("bare", "shovel")) else 1)
