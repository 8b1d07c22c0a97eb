"""Hourly audit burst: N `trove.instance.exists` (one per live instance, N = 100k) published at
once -> all reflected in `trove.usage`; seconds, beside the shovel's share from the same run.

    .venv/bin/python -m bench.bench_audit_burst [--instances 100000] [--preload created|lifecycle]

Inputs: one seeded simulator scenario (``ScenarioConfig``: 1 hour, no failures, no noise, no
backups or clusters, 64 tenants, exists audits on), with enough instance lifecycles that N
instances are live at the horizon. Its messages are split:

1. *preload*: the messages that make the first N live instances what the worker holds at the
   hourly audit -- ``settled`` (the default): each instance's ``trove.instance.create`` (its
   launch, flavor, volume size, tenant and owner: an instance created before the pairing
   retention, whose create start and end left nothing behind in the worker but what this
   message gives too) and the ``trove.instance.modify_flavor``/``modify_volume`` of its
   resizes (~1.5 messages per instance: without them a resized instance keeps its create's
   flavor, and its audit is reported as a flavor mismatch); ``created``: its create start and
   end as well (the create's pairing tombstone is held for the retention, 1 h);
   ``lifecycle``: the resizes' starts and ends too (~5 per instance; every
   instance of the scenario was created within the hour, and ~43% resized: the worst case,
   ~250-420 s of preload at 100k). Restarts, reboots, unknown events and the
   instances deleted within the hour are left out, so the worker holds exactly N live
   instances. The preload is not what is measured, so it skips RabbitMQ and the shovel: each
   message is parsed and encoded by the shovel's own ``Transformer`` and written, with the
   shovel's key, headers and partitioner, straight to `trove.notifications`; the bench then
   waits until the worker has consumed all of it (its consumer group's lag is 0). The worker's
   RSS then is the memory figure "worker RSS with N live instances" (handed to bench_memory in
   the same `make bench`).
2. *burst*: the hour's N audits (period [start, start + 1 h]), followed by the scenario's
   closing ``dbaas.quota`` messages (900 s of event time after the horizon), which move the
   worker's event time past the hour's end + allowed lateness so the hour closes. They go the
   whole way: RabbitMQ, the shovel, the worker.

"Published at once": the shovel is stopped while one publisher here puts the burst on its
(durable) queue -- a single Python publisher needs ~15-20 s for 100k messages on this machine,
a rate that is the bench's, not Trove's -- and the clock starts when the shovel is started
again with all N audits waiting. Timed until the receipt (by a reader here) of the last of the
N ``instance.exists.seconds`` records of those instances on `trove.usage`; the shovel's start-up
is inside the time. Checked before it counts: every one of the N instances has its record
(latest version per record id) and each is 3600 s, the audit period, as the simulator's
``ExpectedTotals.exists_seconds`` says. Baseline: the same burst's time to
`trove.notifications` (the shovel's share).

Shovel and worker run on the bench copies of the topics (``bench_latency.E2E_TOPICS``), as in
bench_latency. The inputs (a scenario of ~150k instances: ~2 minutes to build) are cached under
.stack/run/, keyed by the sources that shape them (trovemeter/, avro/, this file).

"not run" while the worker has no usage agent (nothing under streams/ uses trovemeter.accrual).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import not_run_row, row  # noqa: E402
from bench.bench_latency import (  # noqa: E402
    DEFAULT_BOOTSTRAP,
    DEFAULT_RABBIT,
    E2E_TOPICS,
    RUN_DIR,
    PacedPublisher,
    Pipeline,
    TopicCollector,
    WorkerUnavailable,
    tree_rss_kb,
    worker_available,
)

EXISTS_METER = "instance.exists.seconds"
EXISTS_BYTES = EXISTS_METER.encode()  # in every encoded record of the meter (an Avro string)
FIGURE = "{n} trove.instance.exists -> trove.usage"
RATE_WINDOW = 30.0  # seconds: the worker's preload rate is judged over this
LIVE_SHARE = 0.66  # instances live at the horizon of a 1-hour scenario (measured: 0.67)
_INSTANCE_ID = re.compile(rb'instance_id\\?": \\?"([0-9a-f-]{36})')
_REQUEST_ID = re.compile(rb'request_id\\?": \\?"(req-[0-9a-f-]{36})')
_CREATE_EVENTS = frozenset({
    "dbaas.instance_create.start", "dbaas.instance_create.end", "trove.instance.create"})
# --preload: which of a live instance's messages shape the worker's state before the burst.
# Trove's usage notifications of a resize (point events: nothing to pair). Without them a
# resized instance's state keeps its create's flavor, and its audit is a flavor mismatch.
_MODIFY_EVENTS = frozenset({"trove.instance.modify_flavor", "trove.instance.modify_volume"})
PRELOAD_EVENTS = {
    "settled": frozenset({"trove.instance.create"}) | _MODIFY_EVENTS,
    "created": _CREATE_EVENTS | _MODIFY_EVENTS,
    "lifecycle": _CREATE_EVENTS | _MODIFY_EVENTS | {
        "dbaas.instance_resize_instance.start", "dbaas.instance_resize_instance.end",
        "dbaas.instance_resize_volume.start", "dbaas.instance_resize_volume.end"},
}


def shared_path(run_id: str) -> Path:
    """Where this run's memory figures go for bench_memory (same `make bench` run id)."""
    return RUN_DIR / f"bench-shared-{run_id}.json"


def _label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


# ------------------------------------------------------------------ inputs


def build_inputs(instances: int, seed: int, preload_kind: str = "created") -> dict[str, Any]:
    """Preload, burst and closing messages for ``instances`` live instances (cached)."""
    name = f"audit-burst-inputs-{instances}-{seed}-{preload_kind}"
    cache = RUN_DIR / f"{name}-{_sources_digest()}.pkl"
    if cache.exists():
        try:
            inputs = pickle.loads(cache.read_bytes())
            inputs["build_seconds"] = 0.0
            return inputs
        except Exception:  # noqa: BLE001 - a truncated cache: build again
            pass
    inputs = _build_inputs(instances, seed, preload_kind)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    for old in RUN_DIR.glob(f"{name}-*.pkl"):
        old.unlink()  # built from older sources
    partial = cache.with_suffix(".tmp")
    partial.write_bytes(pickle.dumps(inputs, protocol=pickle.HIGHEST_PROTOCOL))
    partial.replace(cache)
    return inputs


def _sources_digest() -> str:
    """What the cached inputs depend on: the simulator, parser and codec (trovemeter/), the
    schemas, this file."""
    digest = hashlib.sha256()
    files = sorted([*(ROOT / "trovemeter").rglob("*.py"), *(ROOT / "trovemeter").rglob("*.yaml"),
                    *(ROOT / "avro").glob("*.avsc"), Path(__file__)])
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _build_inputs(instances: int, seed: int, preload_kind: str) -> dict[str, Any]:
    from trovemeter import topics
    from trovemeter.simulation import ScenarioConfig, build_scenario

    t = time.monotonic()
    preload_events = PRELOAD_EVENTS[preload_kind]
    planned = int(instances / LIVE_SHARE) + 50
    while True:
        config = ScenarioConfig(seed=seed, tenants=64, instances=planned, hours=1,
                                failure_rate=0.0, abandon_rate=0.0, duplicate_rate=0.0,
                                reorder_rate=0.0, garbage_rate=0.0, backups=False,
                                clusters=False, exists_audits=True)
        scenario = build_scenario(config)
        if scenario.expected.resources["instances_live_at_horizon"] >= instances:
            break
        planned = int(planned * 1.1) + 10
    # One pass (the bodies are rendered while iterating): keep only what may be needed, note
    # the live instances (the first N audited) and which instance each request is about.
    live: dict[str, int] = {}
    request_instance: dict[bytes, bytes] = {}
    candidates: list[tuple[Any, bytes | None]] = []  # (message, instance id if known)
    closing = []
    for message in scenario.messages():
        event_type = message.event_type
        if event_type == "trove.instance.exists":
            if len(live) < instances:
                found = _INSTANCE_ID.search(message.body)
                assert found, "an exists audit without instance_id"
                live[found.group(1).decode()] = len(candidates)
                candidates.append((message, found.group(1)))
        elif event_type == "dbaas.quota":
            closing.append(message)
        elif event_type in preload_events:
            found = _INSTANCE_ID.search(message.body)
            instance = found.group(1) if found else None
            if instance is not None and event_type.endswith(".end"):
                request = _REQUEST_ID.search(message.body)
                if request:
                    request_instance[request.group(1)] = instance
            candidates.append((message, instance))
    live_ids = {k.encode() for k in live}
    preload, burst = [], []
    for message, instance in candidates:
        if message.event_type == "trove.instance.exists":
            burst.append(message)
            continue
        if instance is None:  # a create start: its instance is named by its end
            request = _REQUEST_ID.search(message.body)
            instance = request_instance.get(request.group(1)) if request else None
        if instance in live_ids:
            preload.append(message)
    del candidates
    # Picklable for the cache (the simulator's properties are read-only mappings).
    burst = [m._replace(properties=dict(m.properties)) for m in burst]
    closing = [m._replace(properties=dict(m.properties)) for m in closing]
    return {"preload": shovel_records(preload, topics.NOTIFICATIONS),
            "burst": burst, "closing": closing, "live": set(live),
            "planned_instances": planned, "build_seconds": round(time.monotonic() - t, 1)}


def shovel_records(messages: list[Any], topic: str) -> list[tuple[bytes | None, bytes, list[Any],
                                                               str]]:
    """(key, value, headers, routing key) of each message as the shovel writes it: its own
    ``Transformer`` (parse, normalise, encode), its headers but the exchange's (added when
    written: the bench's exchange is per run)."""
    from connectors.parse_pool import Transformer
    from connectors.shovel import HEADER_MESSAGE_ID, HEADER_ROUTING_KEY
    from trovemeter.settings import CommonSettings

    transform = Transformer.from_config({"max_bytes": CommonSettings().max_message_bytes,
                                         "topic": topic})
    records = []
    for message in messages:
        properties = message.properties
        message_id, key, value, headers = transform(
            message.body, properties.get("content_type"), properties.get("content_encoding"))
        if message_id is None:
            raise ValueError(f"a preload message the shovel would dead-letter: {key}: {value}")
        headers.append((HEADER_ROUTING_KEY, message.routing_key))
        headers.append((HEADER_MESSAGE_ID, message_id))
        records.append((key, value, headers, message.routing_key))
    return records


# ------------------------------------------------------------------ the run


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (/proc/<pid>/stat), 0.0 when it is gone:
    the worker's CPU per event is steadier than wall time on a shared machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_preload(bootstrap: str, topic: str, exchange: str,
                  records: list[tuple[bytes | None, bytes, list[Any], str]]) -> float:
    """Produce the preload to ``topic`` with the shovel's partitioner; seconds until every
    record is acknowledged."""
    from confluent_kafka import Producer

    from connectors.shovel import HEADER_EXCHANGE

    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "linger.ms": 20, "compression.type": "lz4", "acks": "all",
                         "enable.idempotence": True})
    failed: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failed.append(str(error))

    started = time.monotonic()
    exchange_header = (HEADER_EXCHANGE, exchange)
    for key, value, headers, _ in records:
        while True:
            try:
                producer.produce(topic, value, key, headers=[*headers[:1], exchange_header,
                                                             *headers[1:]],
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left or failed:
        raise RuntimeError(f"preload: {left} records not delivered, {len(failed)} failed "
                           f"({failed[:1]})")
    return time.monotonic() - started


def wait_consumed(pipeline: Pipeline, produced: int, timeout: float,
                  samples: dict[str, list[int]]) -> float:
    """Seconds until the worker's lag on its source topics is 0 (twice in a row); samples its
    RSS meanwhile. Gives up (TimeoutError) as soon as its rate over the last ``RATE_WINDOW``
    seconds says it cannot finish within ``timeout``."""
    assert pipeline.worker is not None
    started = time.monotonic()
    zero_seen = 0
    last_progress = started
    consumed_at: deque[tuple[float, float]] = deque()  # (time, events consumed), last window
    while time.monotonic() - started < timeout:
        samples["worker"].append(pipeline.worker.rss_kb())
        pipeline.worker.check_alive()  # raises WorkerUnavailable with its first error
        lag = pipeline.worker.lag()
        zero_seen = zero_seen + 1 if lag == 0 else 0
        if zero_seen >= 2:
            return time.monotonic() - started
        now = time.monotonic()
        elapsed = now - started
        if now - last_progress >= 15:
            last_progress = now
            print(f"audit burst: preload {elapsed:.0f}s: worker lag {lag}, worker RSS "
                  f"{pipeline.worker.rss_kb() / 1024:.0f} MB", file=sys.stderr, flush=True)
        if lag is not None:
            consumed = produced - lag
            consumed_at.append((now, consumed))
            while now - consumed_at[0][0] > RATE_WINDOW:
                consumed_at.popleft()
            if now - consumed_at[0][0] >= RATE_WINDOW * 0.9:
                # Give up early (and keep the run's time for the rest) when the worker is too
                # slow.
                rate = max(1.0, (consumed - consumed_at[0][1]) / (now - consumed_at[0][0]))
                left = lag / rate
                if elapsed + left > timeout * 1.1:
                    raise TimeoutError(
                        f"the worker consumes the preload at ~{rate:,.0f} events/s (last "
                        f"{RATE_WINDOW:.0f}s): the {lag:,} events left of {produced:,} would "
                        f"take ~{left:,.0f}s more, over the {timeout:.0f}s limit (worker RSS "
                        f"{pipeline.worker.rss_kb() / 1024:.0f} MB after {consumed:,} of them)")
        time.sleep(0.5)
    raise TimeoutError(f"the worker had not consumed the preload after {timeout:.0f}s")


def queue_burst(pipeline: Pipeline, rabbit_url: str, messages: list[Any]) -> float:
    """Stop the shovel, publish ``messages`` onto its queue, wait until RabbitMQ holds them all;
    returns the publishing seconds. The shovel is started again by the caller."""
    from tests.integration.shovel_harness import Rabbit

    pipeline.shovel.stop(30)
    publisher = PacedPublisher(rabbit_url)
    try:
        t = time.perf_counter()
        publisher.publish(pipeline.exchange, messages, None)
        with Rabbit(rabbit_url) as rabbit:
            rabbit.wait_ready(pipeline.queue, len(messages), timeout=300)
        return time.perf_counter() - t
    finally:
        publisher.close()


def run(args: argparse.Namespace, burst: bool = True) -> dict[str, Any]:
    """Preload N live instances into a fresh worker; with ``burst``, time the audit burst."""
    from trovemeter import topics
    from trovemeter.codec import default_codec

    inputs = build_inputs(args.instances, args.seed, args.preload)
    live = inputs["live"]
    n = len(live)
    print(f"audit burst: {len(inputs['preload']):,} preload messages ({args.preload}) for "
          f"{n:,} live instances ({inputs['planned_instances']:,} planned), "
          f"{len(inputs['burst']):,} audits, {len(inputs['closing'])} closing; built in "
          f"{inputs['build_seconds']}s", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"instances": n, "preload": args.preload,
                              "preload_messages": len(inputs["preload"]),
                              "burst_messages": len(inputs["burst"]),
                              "closing_messages": len(inputs["closing"]),
                              "scenario_seed": args.seed,
                              "build_seconds": inputs["build_seconds"]}
    samples: dict[str, list[int]] = {"worker": []}
    with Pipeline(args.rabbit_url, args.bootstrap, label="bench-audit") as pipeline:
        assert pipeline.worker is not None
        result["startup_s"] = pipeline.startup_s
        result["worker_idle_rss_mb"] = round(pipeline.worker.rss_kb() / 1024, 1)
        result["shovel_idle_rss_mb"] = round(tree_rss_kb(pipeline.shovel.pid) / 1024, 1)
        collector = TopicCollector(args.bootstrap, [E2E_TOPICS["usage"], topics.USAGE,
                                                    E2E_TOPICS["source"]])
        collector.start()
        collector.ready.wait(30)
        try:
            published = len(inputs["preload"])
            cpu0 = cpu_seconds(pipeline.worker.pid)
            result["preload_write_seconds"] = round(write_preload(
                args.bootstrap, E2E_TOPICS["source"], pipeline.exchange, inputs["preload"]), 1)
            del inputs["preload"]
            result["preload_seconds"] = round(
                result["preload_write_seconds"] +
                wait_consumed(pipeline, published, args.preload_timeout, samples), 1)
            result["worker_rss_mb"] = round(pipeline.worker.rss_kb() / 1024, 1)
            result["worker_peak_rss_mb"] = round(max(samples["worker"]) / 1024, 1)
            result["preload_rate"] = round(published / result["preload_seconds"])
            result["preload_worker_cpu_us_per_event"] = round(
                (cpu_seconds(pipeline.worker.pid) - cpu0) / published * 1e6)
            print(f"audit burst: preload consumed in {result['preload_seconds']}s; worker RSS "
                  f"{result['worker_rss_mb']} MB (idle {result['worker_idle_rss_mb']} MB)",
                  file=sys.stderr, flush=True)
            if not burst:
                collector.stop()
                return result
            source_topic = E2E_TOPICS["source"]
            burst_ids = set()
            for message in inputs["burst"]:
                found = re.search(rb'message_id\\?": \\?"([0-9a-f-]{36})', message.body)
                if found:
                    burst_ids.add(found.group(1).decode())
            result["burst_publish_seconds"] = round(
                queue_burst(pipeline, args.rabbit_url, inputs["burst"] + inputs["closing"]), 2)
            scanned = len(collector.records)
            t0 = time.perf_counter()
            cpu0 = cpu_seconds(pipeline.worker.pid)
            reader_cpu0 = time.process_time()
            pipeline.shovel.start()
            # Inside the timed window the reader only spots the exists records (their meter's
            # name in the bytes) and notes the first receipt of each record id; decoding and
            # checking them waits until the window closed: this process shares the two cores
            # with the pipeline it measures.
            first_seen: dict[bytes | None, float] = {}
            exists_values: list[bytes] = []
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                end = len(collector.records)
                keys = collector.keys
                for i in range(scanned, end):
                    received, topic, value, _ = collector.records[i]
                    if topic != source_topic and value is not None and EXISTS_BYTES in value:
                        exists_values.append(value)
                        first_seen.setdefault(keys[i], received)
                scanned = end
                if len(first_seen) >= n:
                    break
                pipeline.worker.check_alive()
                time.sleep(0.2)
            burst_cpu = cpu_seconds(pipeline.worker.pid) - cpu0
            result["burst_reader_cpu_seconds"] = round(time.process_time() - reader_cpu0, 1)
            collector.stop()
            result["burst_worker_cpu_seconds"] = round(burst_cpu, 1)
            result["burst_worker_cpu_us_per_audit"] = round(burst_cpu / n * 1e6)
            result["worker_rss_after_burst_mb"] = round(pipeline.worker.rss_kb() / 1024, 1)
        finally:
            if collector.is_alive():
                collector.stop()
    # The window closed: decode and check what it saw.
    codec = default_codec()
    latest: dict[str, Any] = {}
    last_exists: dict[str, float] = {}
    for value in exists_values:
        record = codec.decode(value)
        if getattr(record, "meter", None) != EXISTS_METER or record.resource_id not in live:
            continue
        old = latest.get(record.record_id)
        if old is None or record.version > old.version:
            latest[record.record_id] = record
        last_exists.setdefault(record.resource_id, first_seen[record.record_id.encode()])
    on_kafka: dict[str, float] = {}
    for received, topic, _, headers in collector.records:
        if topic == source_topic:
            for key, header in headers or ():
                if key == "trovemeter.message_id" and header.decode() in burst_ids:
                    on_kafka.setdefault(header.decode(), received)
    per_instance: dict[str, float] = {}
    for record in latest.values():
        per_instance[record.resource_id] = per_instance.get(record.resource_id, 0.0) + \
            float(record.quantity)
    wrong = sum(1 for q in per_instance.values() if abs(q - 3600.0) > 1e-6)
    result.update({
        "records_seen": len(last_exists), "wrong_quantity": wrong,
        "complete": len(last_exists) == n and wrong == 0,
        "seconds": round(max(last_exists.values()) - t0, 2) if last_exists else None,
        "shovel_seconds": round(max(on_kafka.values()) - t0, 2)
        if len(on_kafka) == len(burst_ids) and on_kafka else None,
        "burst_on_kafka": len(on_kafka),
    })
    return result


def share_memory(result: dict[str, Any]) -> None:
    """Leave the worker's memory figures (or why there are none) for bench_memory."""
    run_id = os.environ.get("TROVEMETER_BENCH_RUN_ID")
    if not run_id or ("worker_rss_mb" not in result and "not_run" not in result):
        return
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    keys = ("instances", "worker_rss_mb", "worker_idle_rss_mb", "worker_peak_rss_mb",
            "shovel_peak_rss_mb", "shovel_idle_rss_mb", "preload_messages", "preload_rate",
            "not_run")
    shared_path(run_id).write_text(json.dumps({k: result.get(k) for k in keys if k in result}))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_audit_burst", description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=100_000, help="live instances (= audits)")
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds to wait for the burst's usage records")
    p.add_argument("--preload", choices=sorted(PRELOAD_EVENTS), default="settled",
                   help="a live instance's messages in the preload (see the module docstring)")
    p.add_argument("--preload-timeout", type=float, default=300.0)
    p.add_argument("--rabbit-url", default=os.environ.get("TROVEMETER_RABBIT_URL", DEFAULT_RABBIT))
    p.add_argument("--bootstrap", default=os.environ.get("TROVEMETER_KAFKA_BOOTSTRAP",
                                                         DEFAULT_BOOTSTRAP))
    return p


MEMORY_FIGURE = "worker RSS, {n} live instances"


def memory_row(result: dict[str, Any], instances: int) -> dict[str, Any]:
    """The worker's RSS once it holds the live instances (the memory benchmark's figure)."""
    value = result["worker_rss_mb"]
    target = "<= 300 MB" if instances >= 100_000 else None
    per_instance = (value - result["worker_idle_rss_mb"]) * 1024 / max(1, result["instances"])
    return row("memory", MEMORY_FIGURE.format(n=_label(instances)), value, "MB",
               baseline="the same worker idle (empty tables)",
               baseline_value=result["worker_idle_rss_mb"], target=target,
               met=value <= 300 if target else None,
               note=f"after consuming {result['preload_messages']:,} msgs "
                    f"({result.get('preload')} preload) of {result['instances']:,} live "
                    f"instances (~{per_instance:.1f} KB each); peak "
                    f"{result.get('worker_peak_rss_mb')} MB; measured by bench_audit_burst")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    figure = FIGURE.format(n=_label(args.instances))
    target = "<= 20 s" if args.instances >= 100_000 else None
    memory_figure = MEMORY_FIGURE.format(n=_label(args.instances))

    def not_run(reason: str, result: dict[str, Any] | None = None) -> dict[str, Any]:
        print(f"bench_audit_burst: not run: {reason}", file=sys.stderr)
        rows = [not_run_row("audit burst", figure, reason, "<= 20 s")]
        if result and "worker_rss_mb" in result:
            rows.append(memory_row(result, args.instances))
        else:
            rows.append(not_run_row("memory", memory_figure, reason, "<= 300 MB"))
        return {**(result or {}), "benchmark": "audit burst", "not_run": reason, "rows": rows}

    if not worker_available("trove.usage"):
        return not_run("usage agent not built (nothing under streams/ uses trovemeter.accrual)")
    try:
        result = run(args)
    except (WorkerUnavailable, TimeoutError) as exc:
        share_memory({"instances": args.instances, "not_run": str(exc)})
        return not_run(str(exc))
    share_memory(result)
    if result["records_seen"] == 0:
        return not_run(f"the worker wrote no {EXISTS_METER} records within {args.timeout:.0f}s "
                       "of the burst", result)
    seconds, base = result["seconds"], result["shovel_seconds"]
    note = (f"{result['records_seen']:,}/{result['instances']:,} instances' records, "
            f"{result['wrong_quantity']} wrong; burst queued on RabbitMQ in "
            f"{result['burst_publish_seconds']}s, timed from the shovel's start; worker CPU "
            f"{result['burst_worker_cpu_us_per_audit']:,} us per audit (sweep included); "
            f"preload ({result['preload']}) {result['preload_messages']:,} msgs at "
            f"{result['preload_rate']:,}/s")
    result["rows"] = [row("audit burst", figure, seconds, "s",
                          baseline="same burst -> trove.notifications (shovel only)",
                          baseline_value=base, target=target,
                          met=(seconds is not None and seconds <= 20) if target else None,
                          complete=result["complete"], note=note),
                      memory_row(result, args.instances)]
    result["benchmark"] = "audit burst"
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), file=sys.stderr)
    return result


if __name__ == "__main__":
    figures = main(sys.argv[1:])
    sys.exit(0 if figures.get("complete") or figures.get("not_run") else 1)
