"""Throughput of Benthos v4 (``amqp_0_9`` input -> ``kafka_franz`` output, RabbitMQ acked after
Kafka confirmed) beside the bare Python loop and `trovemeter shovel`, all in the same rounds.

    .venv/bin/python -m bench.bench_benthos [--messages 100000] [--rounds 3] [--prefetch 2000]

Each round publishes N messages of the fixtures' mix (``bench_shovel.make_messages``: the real
v1/v2 bodies, ~1.5 KB, fresh message ids) once to a bench exchange bound to three durable queues,
and drains one queue with each contender, in an order that rotates from round to round (the
machine is shared):

- bare: ``bench_shovel.bare_loop`` in its own process (pika + confluent-kafka, same producer
  settings as the shovel, batched acks after delivery reports, no parsing, no Avro);
- shovel: `trovemeter shovel` (``bench_shovel.shovel_run``), parsing, normalising, Avro;
- benthos: the binary ``bench/benthos.py`` builds (v4.27.0), configured in ``.stack/run/``:
  ``amqp_0_9`` (prefetch as above, ``auto_ack: false``: a message is acked once its record is
  written) -> ``kafka_franz`` (``idempotent_write: true``, so acks=all; lz4; batches of up to
  100 messages or 5 ms, ``max_in_flight`` 32 batches, so RabbitMQ's prefetch is the window).
  That was the best of the configurations tried here (30k messages, two rounds each; all within
  the noise of each other): 500 / 20 ms / 10 in flight (like the shovel's ``linger.ms`` 20),
  no batching / 64 in flight, 100 / 5 ms / 32, and the Sarama output 500 / 20 ms / 10 (slowest).
  ``--benthos-output kafka`` uses the Sarama ``kafka`` output instead (``ack_replicas: true``;
  its idempotent mode needs one request in flight, which Benthos does not set, so it is off).
  Timed from its first received message (``input_received`` on its /metrics) to the last
  written one (``output_sent``); start-up excluded, as for the shovel.

Every contender is verified before its figure counts: all N message ids on its Kafka topic, and
for Benthos also its queue empty (nothing left unacked) after it stopped.
``main(argv)`` returns the figures as a dict with ``rows`` for the aggregated `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_shovel import (  # noqa: E402
    BARE_TOPIC,
    SHOVEL_DLQ,
    SHOVEL_TOPIC,
    CpuMeter,
    _cpu_us_per_message,
    _median,
    ensure_topic,
    make_messages,
    shovel_run,
)
from tests.integration.shovel_harness import (  # noqa: E402
    Rabbit,
    end_offsets,
    message_id_of,
    queue_counts,
    read_records,
)

BENTHOS_TOPIC = "trovemeter.bench.benthos"
RUN_DIR = ROOT / ".stack" / "run"
CONTENDERS = ("bare", "shovel", "benthos")


# ------------------------------------------------------------------ Benthos


def benthos_config(*, rabbit_url: str, queue: str, bootstrap: str, topic: str, prefetch: int,
                   http_port: int, output: str = "kafka_franz", batch_count: int = 500,
                   batch_period: str = "20ms", max_in_flight: int = 10) -> dict[str, Any]:
    """Benthos's config as a dict (written as YAML). The queue exists already (declared and
    bound by the bench), so Benthos declares nothing."""
    batching = {"count": batch_count, "period": batch_period} if batch_count > 1 else {}
    if output == "kafka_franz":
        out: dict[str, Any] = {"kafka_franz": {
            "seed_brokers": bootstrap.split(","), "topic": topic, "client_id": "benthos-bench",
            "idempotent_write": True,  # franz-go: acks=all with idempotence
            "compression": "lz4", "max_in_flight": max_in_flight,
            "max_message_bytes": "4MB", "timeout": "60s", "batching": batching}}
    elif output == "kafka":
        out = {"kafka": {
            "addresses": bootstrap.split(","), "topic": topic, "client_id": "benthos-bench",
            "target_version": "3.0.0", "ack_replicas": True, "idempotent_write": False,
            "compression": "lz4", "max_in_flight": max_in_flight,
            "max_msg_bytes": 4_000_000, "timeout": "60s", "partitioner": "murmur2_hash",
            "batching": batching}}
    else:
        raise ValueError(f"unknown Benthos output {output!r}")
    return {
        "http": {"enabled": True, "address": f"127.0.0.1:{http_port}"},
        "input": {"amqp_0_9": {"urls": [rabbit_url], "queue": queue, "auto_ack": False,
                               "prefetch_count": prefetch,
                               "queue_declare": {"enabled": False}}},
        "output": out,
        "metrics": {"json_api": {}},  # the prometheus component is not built in
        "logger": {"level": "WARN", "format": "logfmt"},
        "shutdown_timeout": "20s",
    }


def _benthos_samples(port: int) -> dict[str, float]:
    """input_received / output_sent / output_error from Benthos's ``json_api`` metrics
    (``{"output_sent{label=\"\",path=\"root.output\"}": 20, ...}``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        data = json.loads(response.read())
    out: dict[str, float] = {}
    for key, value in data.items():
        name = key.split("{", 1)[0]
        if name in ("input_received", "output_sent", "output_error") and \
                isinstance(value, (int, float)):
            out[name] = out.get(name, 0.0) + float(value)
    return out


def benthos_run(binary: str, config: dict[str, Any], n: int, log_path: Path,
                http_port: int, timeout: float = 600) -> dict[str, Any]:
    """Run Benthos on ``config`` until it has written ``n`` records; stop it; return timing."""
    import yaml

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    config_path = RUN_DIR / f"benthos-{uuid.uuid4().hex[:8]}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    with log_path.open("ab") as log:
        process = subprocess.Popen([binary, "-c", str(config_path)], stdout=log,
                                   stderr=subprocess.STDOUT, cwd=ROOT)
    meter = CpuMeter(process.pid)
    try:
        first: float | None = None
        sent = 0.0
        samples: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                samples = _benthos_samples(http_port)
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"benthos exited with {process.returncode}:\n"
                                       f"{log_path.read_text(errors='replace')[-3000:]}") from None
                time.sleep(0.01)
                continue
            now = time.perf_counter()
            if first is None and samples.get("input_received", 0) > 0:
                first = now
                meter.start()
            sent = samples.get("output_sent", 0)
            if sent >= n:
                break
            time.sleep(0.01 if first is None else 0.05)
        elapsed = time.perf_counter() - (first or time.perf_counter())
        used = meter.stop() if first is not None else {}
        process.send_signal(signal.SIGTERM)
        rc = process.wait(60)
        return {"messages": int(sent), "seconds": elapsed, "rate": sent / elapsed if elapsed else 0,
                "cpu_us_per_msg": _cpu_us_per_message(used, int(sent) or 1), "exit_code": rc,
                "output_errors": int(samples.get("output_error", 0)),
                "config": str(config_path), "log": str(log_path)}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


# ------------------------------------------------------------------ one round


def _ids_on(bootstrap: str, marks: dict[tuple[str, int], int], topics: tuple[str, ...],
            ids: set[str], from_header: bool) -> tuple[bool, int]:
    """(all ``ids`` found, records read) on ``topics`` after ``marks``."""
    seen: set[str] = set()
    count = 0

    def keep(record: Any) -> bool:
        nonlocal count
        count += 1
        if from_header:
            mid = record.headers.get("trovemeter.message_id")
            if mid:
                seen.add(mid.decode())
        else:
            try:
                seen.add(message_id_of(record.value))
            except ValueError:
                pass
        return False

    read_records(bootstrap, {k: v for k, v in marks.items() if k[0] in topics},
                 lambda _records: ids <= seen, timeout=120, keep=keep)
    return ids <= seen, count


def run_round(args: argparse.Namespace, round_no: int, order: tuple[str, ...],
              binary: str) -> dict[str, Any]:
    from connectors.shovel import producer_config
    from tests.integration.conftest import free_port
    from trovemeter.settings import ShovelSettings

    n = args.messages
    run_id = uuid.uuid4().hex[:8]
    exchange = f"bench-{run_id}.trove"
    queues = {name: f"bench-{run_id}.{name}" for name in CONTENDERS}
    messages, total_bytes = make_messages(n)
    ids = {message_id_of(body) for _, body, _ in messages}
    result: dict[str, Any] = {"round": round_no, "order": list(order),
                              "mean_body_bytes": round(total_bytes / n)}
    rabbit = Rabbit(args.rabbit_url)
    try:
        for queue in queues.values():
            rabbit.prepare(queue, [exchange])
        t = time.perf_counter()
        rabbit.publish_many((exchange, rk, body, props) for rk, body, props in messages)
        for queue in queues.values():
            rabbit.wait_ready(queue, n, timeout=300)
        result["publish_seconds"] = round(time.perf_counter() - t, 2)
        del messages
        marks = end_offsets(args.bootstrap, [BARE_TOPIC, SHOVEL_TOPIC, SHOVEL_DLQ, BENTHOS_TOPIC])

        def run_bare() -> dict[str, Any]:
            spec = {"rabbit_url": args.rabbit_url, "bootstrap": args.bootstrap,
                    "queue": queues["bare"], "n": n, "prefetch": args.prefetch,
                    "producer_settings": producer_config(ShovelSettings(),
                                                         {"bootstrap.servers": args.bootstrap})}
            out = subprocess.run([sys.executable, "-m", "bench.bench_shovel", "--bare-worker",
                                  json.dumps(spec)], cwd=ROOT, capture_output=True, text=True,
                                 check=True, timeout=900)
            bare = json.loads(out.stdout.strip().splitlines()[-1])
            bare["complete"], bare["records"] = _ids_on(args.bootstrap, marks, (BARE_TOPIC,),
                                                        ids, from_header=False)
            return bare

        def run_shovel() -> dict[str, Any]:
            with tempfile.NamedTemporaryFile(prefix="bench-shovel-", suffix=".log",
                                             delete=False) as log_file:
                log_path = Path(log_file.name)
            shovel = shovel_run(queues["shovel"], exchange, n, args.prefetch, log_path,
                                free_port())
            shovel["complete"], shovel["records"] = _ids_on(
                args.bootstrap, marks, (SHOVEL_TOPIC, SHOVEL_DLQ), ids, from_header=True)
            shovel["log"] = str(log_path)
            return shovel

        def run_benthos() -> dict[str, Any]:
            with tempfile.NamedTemporaryFile(prefix="bench-benthos-", suffix=".log",
                                             delete=False) as log_file:
                log_path = Path(log_file.name)
            port = free_port()
            config = benthos_config(rabbit_url=args.rabbit_url, queue=queues["benthos"],
                                    bootstrap=args.bootstrap, topic=BENTHOS_TOPIC,
                                    prefetch=args.prefetch, http_port=port,
                                    output=args.benthos_output, batch_count=args.batch_count,
                                    batch_period=args.batch_period,
                                    max_in_flight=args.max_in_flight)
            benthos = benthos_run(binary, config, n, log_path, port)
            benthos["complete"], benthos["records"] = _ids_on(
                args.bootstrap, marks, (BENTHOS_TOPIC,), ids, from_header=False)
            ready, unacked = queue_counts(queues["benthos"])
            benthos["left_in_queue"] = ready + unacked
            benthos["complete"] = benthos["complete"] and ready + unacked == 0
            return benthos

        steps = {"bare": run_bare, "shovel": run_shovel, "benthos": run_benthos}
        for name in order:
            result[name] = steps[name]()
            print(f"round {round_no}: {name} {result[name]['rate']:,.0f}/s "
                  f"complete={result[name]['complete']} cpu us/msg "
                  f"{result[name]['cpu_us_per_msg']}", file=sys.stderr, flush=True)
    finally:
        for queue in queues.values():
            rabbit.delete_queue(queue)
        rabbit.delete_exchange(exchange)
        rabbit.close()
    return result


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench_benthos", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="per round and contender")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; the contenders' order rotates from round to round")
    parser.add_argument("--prefetch", type=int, default=2000)
    parser.add_argument("--benthos-output", choices=("kafka_franz", "kafka"),
                        default="kafka_franz")
    parser.add_argument("--batch-count", type=int, default=100,
                        help="Benthos output batching: messages per batch (1 = no batching)")
    parser.add_argument("--batch-period", default="5ms")
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--rabbit-url", default=os.environ.get(
        "TROVEMETER_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--bootstrap", default=os.environ.get(
        "TROVEMETER_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--output", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)

    from bench.benthos import BenthosUnavailable, ensure_benthos

    try:
        build = ensure_benthos()
    except BenthosUnavailable as exc:
        result = {"benchmark": "benthos", "not_run": f"Benthos unavailable: {exc}",
                  "rows": [{"benchmark": "shovel", "figure": "msgs/s vs Benthos",
                            "not_run": f"Benthos unavailable: {exc}"}]}
        print(result["not_run"], file=sys.stderr)
        return result
    for topic, partitions in ((BARE_TOPIC, 4), (SHOVEL_TOPIC, 4), (SHOVEL_DLQ, 1),
                              (BENTHOS_TOPIC, 4)):
        ensure_topic(args.bootstrap, topic, partitions)
    rounds = []
    for i in range(args.rounds):
        order = CONTENDERS[i % 3:] + CONTENDERS[:i % 3]
        rounds.append(run_round(args, i + 1, order, build["path"]))
    result = summarise(rounds, args, build)
    print_table(result)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


def summarise(rounds: list[dict[str, Any]], args: argparse.Namespace,
              build: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "benthos", "messages_per_round": args.messages, "rounds": len(rounds),
        "prefetch": args.prefetch, "mean_body_bytes": rounds[0]["mean_body_bytes"],
        "benthos_version": build.get("version"), "benthos_build_seconds": build.get("build_seconds"),
        "benthos_output": args.benthos_output,
        "benthos_batching": {"count": args.batch_count, "period": args.batch_period,
                             "max_in_flight": args.max_in_flight},
        "complete": all(r[k]["complete"] for r in rounds for k in CONTENDERS),
        "load_average": os.getloadavg(),
    }
    for name in CONTENDERS:
        rates = [r[name]["rate"] for r in rounds]
        cpu_keys = rounds[0][name]["cpu_us_per_msg"].keys()
        out[name] = {"median_msgs_per_s": round(_median(rates)), "rates": [round(x) for x in rates],
                     "median_cpu_us_per_msg": {k: _median([r[name]["cpu_us_per_msg"].get(k, 0)
                                                           for r in rounds]) for k in cpu_keys},
                     "complete": all(r[name]["complete"] for r in rounds)}
    bare, shovel, benthos = (out[k]["median_msgs_per_s"] for k in CONTENDERS)
    out["shovel_vs_benthos"] = round(shovel / benthos, 3) if benthos else None
    out["shovel_vs_bare"] = round(shovel / bare, 3) if bare else None
    out["benthos_vs_bare"] = round(benthos / bare, 3) if bare else None
    def cpu(name: str) -> str:
        c = out[name]["median_cpu_us_per_msg"]
        return (f"{name} {c.get('loop', 0) + c.get('helpers', 0):.1f}/"
                f"{c.get('rabbitmq', 0):.1f}/{c.get('kafka', 0):.1f}")

    note = (f"{args.rounds} rounds x {args.messages:,} msgs, order rotated; Benthos "
            f"{build.get('version')} {args.benthos_output} (batch {args.batch_count}/"
            f"{args.batch_period}, {args.max_in_flight} in flight); CPU us/msg process/"
            f"rabbitmq/kafka: {cpu('shovel')}, {cpu('benthos')}, {cpu('bare')}")
    out["rows"] = [
        {"benchmark": "shovel", "figure": "msgs/s (rounds with Benthos)", "value": shovel,
         "unit": "msg/s", "baseline": f"Benthos {build.get('version')} amqp_0_9->"
         f"{args.benthos_output}", "baseline_value": benthos, "ratio": out["shovel_vs_benthos"],
         "target": ">= 1.0x Benthos",
         "met": bool(out["shovel_vs_benthos"] is not None and out["shovel_vs_benthos"] >= 1.0),
         "complete": out["complete"], "note": note},
        {"benchmark": "shovel", "figure": "bare loop msgs/s (rounds with Benthos)", "value": bare,
         "unit": "msg/s", "baseline": "Benthos", "baseline_value": benthos,
         "ratio": round(bare / benthos, 3) if benthos else None, "target": None, "met": None,
         "complete": out["complete"], "note": "the bare Python loop beside Benthos"},
    ]
    return out


def print_table(result: dict[str, Any]) -> None:
    print(f"\nbenthos benchmark: {result['rounds']} rounds x {result['messages_per_round']:,} "
          f"messages, mean body {result['mean_body_bytes']} B, prefetch {result['prefetch']}, "
          f"Benthos {result['benthos_version']} ({result['benthos_output']})")
    print(f"{'contender':<9} {'median/s':>10}  rates           cpu us/msg (process, rabbitmq, kafka)")
    for name in CONTENDERS:
        row = result[name]
        cpu = row["median_cpu_us_per_msg"]
        process = round(cpu.get("loop", 0) + cpu.get("helpers", 0), 1)
        print(f"{name:<9} {row['median_msgs_per_s']:>10,}  {str(row['rates']):<15} "
              f"{process}, {cpu.get('rabbitmq')}, {cpu.get('kafka')}")
    print(f"shovel/benthos {result['shovel_vs_benthos']}  shovel/bare {result['shovel_vs_bare']}  "
          f"benthos/bare {result['benthos_vs_bare']}  complete {result['complete']}")


if __name__ == "__main__":
    figures = main(sys.argv[1:])
    sys.exit(0 if figures.get("complete") else 1)
