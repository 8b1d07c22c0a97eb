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
    child_pids,
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


# ------------------------------------------------------------------ CPU accounting


def _cpu_seconds(pid: int) -> float:
    """user + system CPU of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_pids() -> dict[str, int]:
    pids = {}
    for name, path in (("rabbitmq", ROOT / ".stack" / "rabbitmq" / "rabbitmq.pid"),
                       ("kafka", ROOT / ".stack" / "kafka" / "kafka.pid")):
        try:
            pids[name] = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return pids


class CpuMeter:
    """CPU the loop's process and the two brokers spent between start() and stop()."""

    def __init__(self, pid: int | None = None) -> None:
        self.pids = _broker_pids()
        if pid is not None:
            self.pids["loop"] = pid
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        if "loop" in self.pids:  # the shovel's parser helpers
            for i, pid in enumerate(child_pids(self.pids["loop"])):
                self.pids[f"helper{i}"] = pid
        self.before = {k: _cpu_seconds(p) for k, p in self.pids.items()}

    def stop(self) -> dict[str, float]:
        used = {k: _cpu_seconds(p) - self.before[k] for k, p in self.pids.items()}
        helpers = [v for k, v in used.items() if k.startswith("helper")]
        self.used = {k: v for k, v in used.items() if not k.startswith("helper")}
        self.used["helpers"] = sum(helpers)
        return self.used


def _cpu_us_per_message(used: dict[str, float], n: int) -> dict[str, float]:
    return {k: round(v / n * 1e6, 1) for k, v in used.items()}


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
    meter = CpuMeter()
    state: dict[str, Any] = {"first": 0.0, "acked": 0, "cpu": 0.0}

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        tag = method.delivery_tag
        window.track(tag)
        if not state["first"]:
            state["first"] = time.perf_counter()
            state["cpu"] = time.process_time()
            meter.start()

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
    used = meter.stop()
    used["loop"] = time.process_time() - state["cpu"]
    connection.close()
    producer.flush(30)
    return {"messages": state["acked"], "seconds": elapsed, "rate": state["acked"] / elapsed,
            "cpu_us_per_msg": _cpu_us_per_message(used, state["acked"])}


def _bare_worker(argv: list[str]) -> None:
    """Run the bare loop in its own process (like the shovel), print its result as JSON."""
    spec = json.loads(argv[0])
    print(json.dumps(bare_loop(**spec)))


# ------------------------------------------------------------------ (b) the shovel


def shovel_run(queue: str, exchange: str, n: int, prefetch: int, log_path: Path,
               metrics_port: int, parse_workers: int = 1) -> dict[str, Any]:
    shovel = ShovelProcess(queue, [exchange], metrics_port, log_path,
                           extra_args=["--prefetch", str(prefetch), "--topic", SHOVEL_TOPIC,
                                       "--dlq-topic", SHOVEL_DLQ,
                                       "--parse-workers", str(parse_workers)])
    shovel.start()
    meter = CpuMeter(shovel.pid)
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
                meter.start()
            acked = samples.get("trovemeter_shovel_acked_total", 0)
            if acked >= n:
                break
            if first is None:
                time.sleep(0.01)
                continue
            # Each scrape costs the shovel ~1 ms of CPU that the bare loop never pays: scrape
            # rarely while much is left, every 50 ms near the end (the figure's resolution).
            rate = acked / max(now - first, 1e-3)
            time.sleep(min(0.5, max(0.05, (n - acked) / max(rate, 1.0) / 2)))
        elapsed = time.perf_counter() - (first or time.perf_counter())
        used = meter.stop()
        samples = shovel.metrics()
        rc = shovel.stop()
        latency_n = samples.get("trovemeter_shovel_produce_latency_seconds_count", 0)
        return {"messages": int(acked), "seconds": elapsed, "rate": acked / elapsed if elapsed else 0,
                "cpu_us_per_msg": _cpu_us_per_message(used, int(acked) or 1),
                "exit_code": rc,
                "dead_lettered": sum(v for k, v in samples.items()
                                     if k.startswith("trovemeter_shovel_dead_lettered_total")),
                "mean_produce_latency_ms": round(
                    samples.get("trovemeter_shovel_produce_latency_seconds_sum", 0)
                    / latency_n * 1000, 2) if latency_n else None}
    finally:
        if shovel.process is not None and shovel.process.poll() is None:
            shovel.kill()


# ------------------------------------------------------------------ main


def run_round(args: argparse.Namespace, round_no: int, bare_first: bool) -> dict[str, Any]:
    """Publish N fresh messages to two queues, drain one with each loop, verify both."""
    from connectors.shovel import producer_config
    from tests.integration.conftest import free_port
    from trovemeter.settings import ShovelSettings

    n = args.messages
    run_id = uuid.uuid4().hex[:8]
    exchange = f"bench-{run_id}.trove"
    bare_queue, shovel_queue = f"bench-{run_id}.bare", f"bench-{run_id}.shovel"
    messages, total_bytes = make_messages(n)
    ids = {message_id_of(body) for _, body, _ in messages}
    result: dict[str, Any] = {"round": round_no, "first": "bare" if bare_first else "shovel",
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

        def run_bare() -> None:
            spec = {"rabbit_url": args.rabbit_url, "bootstrap": args.bootstrap, "queue": bare_queue,
                    "n": n, "prefetch": args.prefetch,
                    "producer_settings": producer_config(ShovelSettings(),
                                                         {"bootstrap.servers": args.bootstrap})}
            out = subprocess.run([sys.executable, "-m", "bench.bench_shovel", "--bare-worker",
                                  json.dumps(spec)], cwd=ROOT, capture_output=True, text=True,
                                 check=True, timeout=900)
            bare = json.loads(out.stdout.strip().splitlines()[-1])
            seen: set[str] = set()

            def keep(record: Any) -> bool:
                seen.add(message_id_of(record.value))
                return False

            read_records(args.bootstrap, {k: v for k, v in marks.items() if k[0] == BARE_TOPIC},
                         lambda _records: ids <= seen, timeout=120, keep=keep)
            bare["complete"] = ids <= seen
            result["bare"] = bare

        def run_shovel() -> None:
            with tempfile.NamedTemporaryFile(prefix="bench-shovel-", suffix=".log",
                                             delete=False) as log_file:
                log_path = Path(log_file.name)
            shovel = shovel_run(shovel_queue, exchange, n, args.prefetch, log_path, free_port(),
                                args.parse_workers)
            got: set[str] = set()
            sizes: list[int] = []

            def keep(record: Any) -> bool:
                mid = record.headers.get("trovemeter.message_id")
                if mid:
                    got.add(mid.decode())
                sizes.append(len(record.value))
                return False

            read_records(args.bootstrap,
                         {k: v for k, v in marks.items() if k[0] in (SHOVEL_TOPIC, SHOVEL_DLQ)},
                         lambda _records: ids <= got, timeout=120, keep=keep)
            shovel["complete"] = ids <= got
            shovel["records"] = len(sizes)
            shovel["mean_record_bytes"] = round(sum(sizes) / max(1, len(sizes)))
            shovel["log"] = str(log_path)
            result["shovel"] = shovel

        for step in ((run_bare, run_shovel) if bare_first else (run_shovel, run_bare)):
            step()
    finally:
        for queue in (bare_queue, shovel_queue):
            rabbit.delete_queue(queue)
        rabbit.delete_exchange(exchange)
        rabbit.close()
    result["ratio"] = round(result["shovel"]["rate"] / result["bare"]["rate"], 3)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench_shovel", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="per round and loop")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds, alternating which loop goes first (the machine is shared); "
                             "an even number gives each order as many rounds")
    parser.add_argument("--prefetch", type=int, default=2000)
    parser.add_argument("--parse-workers", type=int, default=1,
                        help="the shovel's --parse-workers (0 = parse in its main process)")
    parser.add_argument("--rabbit-url", default=os.environ.get(
        "TROVEMETER_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--bootstrap", default=os.environ.get(
        "TROVEMETER_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--output", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)

    for topic, partitions in ((BARE_TOPIC, 4), (SHOVEL_TOPIC, 4), (SHOVEL_DLQ, 1)):
        ensure_topic(args.bootstrap, topic, partitions)
    rounds = []
    for i in range(args.rounds):
        rounds.append(run_round(args, i + 1, bare_first=i % 2 == 0))
        print_round(rounds[-1], args.messages)
    result = summarise(rounds, args)
    print_table(result)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarise(rounds: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "shovel", "messages_per_round": args.messages,
                           "rounds": len(rounds), "prefetch": args.prefetch,
                           "parse_workers": args.parse_workers, "cpus": os.cpu_count(),
                           "mean_body_bytes": rounds[0]["mean_body_bytes"],
                           "mean_record_bytes": rounds[0]["shovel"]["mean_record_bytes"],
                           "complete": all(r[k]["complete"] for r in rounds for k in ("bare", "shovel"))}
    for loop in ("bare", "shovel"):
        rates = [r[loop]["rate"] for r in rounds]
        cpu = {key: round(_median([r[loop]["cpu_us_per_msg"].get(key, 0) for r in rounds]), 1)
               for key in rounds[0][loop]["cpu_us_per_msg"]}
        out[loop] = {"median_msgs_per_s": round(_median(rates)), "best_msgs_per_s": round(max(rates)),
                     "rates": [round(x) for x in rates], "median_cpu_us_per_msg": cpu}
    out["ratio_of_medians"] = round(out["shovel"]["median_msgs_per_s"]
                                    / out["bare"]["median_msgs_per_s"], 3)
    out["ratio_per_round"] = [r["ratio"] for r in rounds]
    # The loop that drains first after publishing pays ~15 us/msg more in RabbitMQ (its
    # post-publish work): each order's figures on their own show how much that moved the ratio.
    out["by_first_loop"] = {}
    for first in ("bare", "shovel"):
        ordered = [r for r in rounds if r["first"] == first]
        if ordered:
            out["by_first_loop"][first] = {
                "rounds": len(ordered),
                "median_ratio": round(_median([r["ratio"] for r in ordered]), 3),
                **{f"median_{loop}_msgs_per_s": round(_median([r[loop]["rate"] for r in ordered]))
                   for loop in ("bare", "shovel")}}
    out["target_met"] = bool(out["shovel"]["median_msgs_per_s"] >= 20_000
                             and out["ratio_of_medians"] >= 0.7)
    out["load_average"] = os.getloadavg()
    return out


def print_round(r: dict[str, Any], n: int) -> None:
    print(f"round {r['round']} ({r['first']} first): bare {r['bare']['rate']:,.0f}/s "
          f"shovel {r['shovel']['rate']:,.0f}/s "
          f"ratio {r['ratio']:.2f}  cpu us/msg bare {r['bare']['cpu_us_per_msg']} "
          f"shovel {r['shovel']['cpu_us_per_msg']}", file=sys.stderr)


def print_table(result: dict[str, Any]) -> None:
    print(f"\nshovel benchmark: {result['rounds']} rounds x {result['messages_per_round']} messages, "
          f"mean body {result['mean_body_bytes']} B -> record {result['mean_record_bytes']} B, "
          f"prefetch {result['prefetch']}, parse workers {result['parse_workers']}, "
          f"{result['cpus']} CPUs")
    print(f"{'loop':<8} {'median/s':>10} {'best/s':>10}  "
          f"cpu us/msg: main process + parser helpers, rabbitmq, kafka")
    for name in ("bare", "shovel"):
        row = result[name]
        cpu = row["median_cpu_us_per_msg"]
        print(f"{name:<8} {row['median_msgs_per_s']:>10,} {row['best_msgs_per_s']:>10,}  "
              f"{cpu.get('loop')} + {cpu.get('helpers', 0)}, {cpu.get('rabbitmq')}, {cpu.get('kafka')}")
    print(f"ratio shovel/bare (medians): {result['ratio_of_medians']:.2f}   per round: "
          f"{result['ratio_per_round']}   complete: {result['complete']}   "
          f"target (>= 20,000/s and >= 0.7x) met: {result['target_met']}")
    for first, row in result["by_first_loop"].items():
        print(f"{first} first ({row['rounds']} rounds): median ratio {row['median_ratio']:.2f}, "
              f"bare {row['median_bare_msgs_per_s']:,}/s, "
              f"shovel {row['median_shovel_msgs_per_s']:,}/s")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in result['load_average'])}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-worker":
        _bare_worker(sys.argv[2:])
    else:
        figures = main(sys.argv[1:])
        sys.exit(0 if figures["complete"] else 1)
