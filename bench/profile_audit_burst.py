"""The audit burst without brokers: CPU of the worker's handlers per preload event, per exists
audit and for the closing sweep, and the memory the tables hold after the preload.

    .venv/bin/python -m bench.profile_audit_burst [--instances 20000] [--profile cprofile]
        [--phase preload|burst|closing] [--memory]

bench_audit_burst's inputs (``build_inputs``: N live instances as its ``--preload`` makes
them, their hour's N audits, the closing messages), parsed as the shovel parses them, are fed
to the source agent's per-event function as ``bench.profile_worker`` does (fake producer, one
worker owning every partition, a synchronous checkpoint every 2,500 events). Prints CPU
microseconds per event of each phase, with ``--memory`` the traced bytes per instance after
the preload (tracemalloc), and a SHA-256 per output topic over everything produced (preload,
burst and closing) -- equal digests: the outputs and changelog values are byte-identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.profile_worker import offline_worker, partition_of  # noqa: E402

PHASES = ("preload", "burst", "closing")


def burst_inputs(instances: int, seed: int,
                 preload: str) -> dict[str, list[tuple[bytes | None, bytes]]]:
    """{phase: [(key, Avro value)]}: bench_audit_burst's inputs (cached there), as the shovel
    writes them."""
    from bench.bench_audit_burst import build_inputs, shovel_records
    from trovemeter import topics

    inputs = build_inputs(instances, seed, preload)
    phases = {"preload": inputs["preload"]}
    for phase in ("burst", "closing"):
        phases[phase] = shovel_records(inputs[phase], topics.NOTIFICATIONS)
    return {phase: [(key, value) for key, value, *_ in records]
            for phase, records in phases.items()}


def table_sizes() -> dict[str, int]:
    """Keys per staged table."""
    from streams.tables import STAGED_TABLES

    return {t.name: len(t) for t in STAGED_TABLES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--preload", default="settled", help="bench_audit_burst's --preload")
    parser.add_argument("--profile", choices=("none", "cprofile"), default="none")
    parser.add_argument("--phase", choices=PHASES, default="burst",
                        help="the phase profiled with --profile")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--memory", action="store_true",
                        help="tracemalloc over the preload (slows it down)")
    parser.add_argument("--checkpoint-every", type=int, default=2500)
    args = parser.parse_args(argv)

    phases = burst_inputs(args.instances, args.seed, args.preload)

    import streams.agents  # noqa: F401 - registers every source handler (usage metering too)
    from streams.app import settings
    from streams.resource_agent import process
    from streams.tables import outbox

    partitions = settings.topic_partitions
    producer = offline_worker()
    every = args.checkpoint_every
    offsets = [0] * partitions

    def run(records: list[tuple[bytes | None, bytes]]) -> None:
        for i, (key, value) in enumerate(records):
            partition = partition_of(key, partitions)
            process(value, partition, offsets[partition])
            offsets[partition] += 1
            if i % every == every - 1:
                outbox.checkpoint_sync()
        outbox.checkpoint_sync()

    import gc
    import tracemalloc

    for phase in PHASES:
        records = phases[phase]
        profiler: Any = None
        if args.profile == "cprofile" and phase == args.phase:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        if args.memory and phase == "preload":
            tracemalloc.start()
        cpu0 = time.process_time()
        run(records)
        cpu = time.process_time() - cpu0
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
        print(f"{phase:8} {len(records):8,} events: {cpu:7.2f} s CPU, "
              f"{cpu / max(1, len(records)) * 1e6:7.1f} us/event")
        if args.memory and phase == "preload":
            gc.collect()
            traced, _ = tracemalloc.get_traced_memory()
            snapshot = tracemalloc.take_snapshot()
            tracemalloc.stop()
            print(f"  traced after the preload: {traced / args.instances:,.0f} B per instance")
            for stat in snapshot.statistics("lineno")[:15]:
                print(f"    {stat.size / args.instances:7.0f} B/inst  {stat.traceback}")
            print(f"  keys per table: {table_sizes()}")
    for topic in sorted(producer.digests):
        print(f"  {topic:45} {producer.counts[topic]:7,}  "
              f"{producer.digests[topic].hexdigest()[:16]}")


if __name__ == "__main__":
    main(sys.argv[1:])
