"""The worker's per-event CPU without brokers: where the source agent's time goes.

    .venv/bin/python -m bench.profile_worker [--events 20000] [--input bench|scenario]
        [--mode handlers|agent] [--profile cprofile|pyinstrument] [--top 40]

Drives the source agent as tests/unit/test_agents.py does: the outbox's producer replaced by a
fake that delivers on ``poll``/``flush`` (and hashes what it is given), every pairing partition
owned (one worker: phased events are paired inline), a synchronous checkpoint every
``--checkpoint-every`` events (as the 0.5 s timer does at ~5k events/s), so that changelog
serialisation is counted too. Inputs:

- ``bench``: ``bench.bench_pairing.workload`` -- the exact records bench_pairing produces;
- ``scenario``: ``trovemeter.simulation.build_scenario`` parsed as the shovel parses it (a
  simulated day: usage notifications, resizes, deletes, backups, clusters, audits).

Both are built once and cached under .stack/run/ (bench's inputs hold uuid4s and the wall
clock), so successive runs see the same bytes and ``digest`` (a SHA-256 over every produced
record, per topic, in order) says whether a change kept the outputs byte-identical.

Modes: ``handlers`` runs the agent's per-event function (``streams.resource_agent.process``)
in a plain loop: the part trovemeter controls. ``agent`` puts every record through
``notifications.test_context()``, so Faust's per-event machinery (in its test form) is in too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import pickle
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".stack" / "run"


class HashingProducer:
    """confluent_kafka.Producer as the outbox uses it: delivers on poll/flush, keeps a digest
    per topic of (key, partition, headers, value) in produce order."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.digests: dict[str, Any] = defaultdict(hashlib.sha256)
        self.counts: dict[str, int] = defaultdict(int)

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, *,
                partition: int = -1, headers: Any = None, on_delivery: Any = None) -> None:
        digest = self.digests[topic]
        digest.update(repr((key, partition, headers)).encode())
        digest.update(value if value is not None else b"<tombstone>")
        self.counts[topic] += 1
        if on_delivery is not None:
            self.pending.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        pending, self.pending = self.pending, []
        for callback in pending:
            callback(None, None)
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


def bench_inputs(events: int, point_share: float) -> list[tuple[bytes | None, bytes]]:
    path = CACHE / f"profile-bench-{events}-{point_share}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    from bench.bench_pairing import workload

    records, _, _ = workload(events, point_share)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(records))
    return records


def scenario_inputs(events: int, seed: int) -> list[tuple[bytes | None, bytes]]:
    path = CACHE / f"profile-scenario-{events}-{seed}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    from trovemeter.codec import encode
    from trovemeter.envelope import BadNotification, parse_body
    from trovemeter.simulation import ScenarioConfig, build_scenario

    scenario = build_scenario(ScenarioConfig(seed=seed, tenants=10, instances=200,
                                             message_budget=events, garbage_rate=0.0))
    records = []
    for message in scenario.messages():
        try:
            n = parse_body(message.body, max_bytes=1 << 20)
        except BadNotification:
            continue
        records.append((n.kafka_key.encode() if n.kafka_key else None, encode(n)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(records))
    return records


def partition_of(key: bytes | None, partitions: int) -> int:
    """The shovel's murmur2 partitioner (Java's), so that keys spread as on the real topic."""
    if key is None:
        return 0
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def offline_worker() -> HashingProducer:
    """The worker's outbox writing to a ``HashingProducer``, every pairing and source partition
    owned (one worker: phased events are paired inline)."""
    from streams.app import settings
    from streams.pairing_agent import forwarder
    from streams.resource_agent import read_progress
    from streams.tables import outbox
    from streams.topics import PAIRING_TOPIC, pack_batch

    producer = HashingProducer()
    outbox.__init__(  # type: ignore[misc]
        {}, pairing_topic=PAIRING_TOPIC, forward_linger_ms=settings.forward_linger_ms,
        forward_max_batch=settings.forward_max_batch, pack=pack_batch)
    outbox.use_producer(producer)
    forwarder.owned = set(range(settings.topic_partitions))
    read_progress.owned = set(range(settings.topic_partitions))
    return producer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--input", choices=("bench", "scenario"), default="bench")
    parser.add_argument("--point-share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mode", choices=("handlers", "agent"), default="handlers")
    parser.add_argument("--profile", choices=("none", "cprofile", "pyinstrument"),
                        default="none")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=2500)
    args = parser.parse_args(argv)

    records = (bench_inputs(args.events, args.point_share) if args.input == "bench"
               else scenario_inputs(args.events, args.seed))

    from streams.agents import notifications
    from streams.app import app, settings
    from streams.resource_agent import process
    from streams.tables import outbox

    partitions = settings.topic_partitions
    placed = [(partition_of(key, partitions), key, value) for key, value in records]
    producer = offline_worker()
    every = args.checkpoint_every

    def run_handlers() -> None:
        offsets = [0] * partitions
        for i, (partition, _, value) in enumerate(placed):
            process(value, partition, offsets[partition])
            offsets[partition] += 1
            if i % every == every - 1:
                outbox.checkpoint_sync()
        outbox.checkpoint_sync()

    async def feed() -> None:
        app.loop = asyncio.get_running_loop()
        app.flow_control.resume()
        async with notifications.test_context() as agent:
            for i, (partition, key, value) in enumerate(placed):
                await agent.put(value, key=key, partition=partition)
                if i % every == every - 1:
                    outbox.checkpoint_sync()
        outbox.checkpoint_sync()

    def run_agent() -> None:
        asyncio.run(feed())

    body = run_handlers if args.mode == "handlers" else run_agent
    profiler: Any = None
    if args.profile == "cprofile":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    elif args.profile == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    body()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if args.profile == "cprofile":
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
    elif args.profile == "pyinstrument":
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))

    n = len(placed)
    print(f"{n:,} events ({args.input}, {args.mode}): {cpu / n * 1e6:.1f} us/event CPU, "
          f"{wall / n * 1e6:.1f} us/event wall, {n / wall:,.0f} events/s")
    for topic in sorted(producer.digests):
        print(f"  {topic:45} {producer.counts[topic]:7,}  "
              f"{producer.digests[topic].hexdigest()[:16]}")
    print(f"  outbox: {dict(outbox.stats)}")


if __name__ == "__main__":
    main(sys.argv[1:])
