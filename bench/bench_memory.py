"""Memory: the shovel's RSS under load and the worker's RSS with 100k live instances in state,
each beside the same process's RSS when idle, from the same run.

    .venv/bin/python -m bench.bench_memory [--messages 100000] [--instances 100000]

Shovel: `trovemeter shovel` (with its parser helper processes: RSS is summed over the process
and its children, from /proc/<pid>/status VmRSS) on a bench queue, writing the bench topic
(``bench_shovel.SHOVEL_TOPIC``). Its idle RSS is sampled once it is healthy; then N messages of
the fixtures' mix (``bench_shovel.make_messages``) are published as fast as one publisher goes
while it drains them, RSS sampled every 20 ms until it acked all N; every message id is then
checked on the topic. Reported: the peak (and the median in the note).

Worker: RSS once it has consumed the lifecycles of N live instances (the preload of
``bench_audit_burst``). In `make bench` bench_audit_burst reports that row itself, from the same
preload (the aggregator says so with TROVEMETER_BENCH_AUDIT_IN_RUN=1); run alone, this module
uses the figures an audit burst of the same run left under .stack/run/, or runs the preload
itself. Baseline: the worker's RSS when ready, with empty tables. "not run" while the worker has
no usage agent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import not_run_row, row  # noqa: E402
from bench.bench_latency import (  # noqa: E402
    DEFAULT_BOOTSTRAP,
    DEFAULT_RABBIT,
    WorkerUnavailable,
    tree_rss_kb,
    worker_available,
)

SHOVEL_FIGURE = "shovel RSS under load (peak, with helpers)"
WORKER_FIGURE = "worker RSS, {n} live instances"


class RssSampler(threading.Thread):
    """Samples the RSS of a process tree every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.samples.append(tree_rss_kb(self.pid))

    def stop(self) -> list[int]:
        self._stop_event.set()
        self.join(10)
        return self.samples


def shovel_memory(args: argparse.Namespace) -> dict[str, Any]:
    from bench.bench_benthos import _ids_on
    from bench.bench_shovel import SHOVEL_DLQ, SHOVEL_TOPIC, ensure_topic, make_messages
    from tests.integration.conftest import free_port
    from tests.integration.shovel_harness import Rabbit, ShovelProcess, end_offsets, message_id_of

    for topic, partitions in ((SHOVEL_TOPIC, 4), (SHOVEL_DLQ, 1)):
        ensure_topic(args.bootstrap, topic, partitions)
    n = args.messages
    messages, total_bytes = make_messages(n)
    ids = {message_id_of(body) for _, body, _ in messages}
    run_id = uuid.uuid4().hex[:8]
    exchange, queue = f"bench-{run_id}.trove", f"bench-{run_id}.memory"
    with tempfile.NamedTemporaryFile(prefix="bench-memory-shovel-", suffix=".log",
                                     delete=False) as handle:
        log_path = Path(handle.name)
    rabbit = Rabbit(args.rabbit_url)
    shovel = ShovelProcess(queue, [exchange], free_port(), log_path,
                           extra_args=["--prefetch", "2000", "--topic", SHOVEL_TOPIC,
                                       "--dlq-topic", SHOVEL_DLQ])
    try:
        rabbit.prepare(queue, [exchange])
        marks = end_offsets(args.bootstrap, [SHOVEL_TOPIC, SHOVEL_DLQ])
        shovel.start()
        shovel.wait_healthy(60)
        time.sleep(1.0)
        idle = [tree_rss_kb(shovel.pid) for _ in range(5)]
        sampler = RssSampler(shovel.pid)
        sampler.start()
        started = time.monotonic()
        rabbit.publish_many((exchange, rk, body, props) for rk, body, props in messages)
        del messages
        deadline = time.monotonic() + 300
        acked = 0.0
        while time.monotonic() < deadline:
            acked = shovel.metrics().get("trovemeter_shovel_acked_total", 0)
            if acked >= n:
                break
            time.sleep(0.05)
        seconds = time.monotonic() - started
        samples = sampler.stop() or [tree_rss_kb(shovel.pid)]
        shovel.stop(30)
        complete, records = _ids_on(args.bootstrap, marks, (SHOVEL_TOPIC, SHOVEL_DLQ), ids,
                                    from_header=True)
    finally:
        if shovel.process is not None and shovel.process.poll() is None:
            shovel.kill()
        rabbit.delete_queue(queue)
        rabbit.delete_exchange(exchange)
        rabbit.close()
    return {"messages": n, "acked": int(acked), "records": records, "complete": complete,
            "mean_body_bytes": round(total_bytes / n), "seconds": round(seconds, 1),
            "idle_rss_mb": round(statistics.median(idle) / 1024, 1),
            "peak_rss_mb": round(max(samples) / 1024, 1),
            "median_rss_mb": round(statistics.median(samples) / 1024, 1),
            "samples": len(samples), "log": str(log_path)}


def worker_memory(args: argparse.Namespace) -> dict[str, Any]:
    """The figures bench_audit_burst left for this run, or its preload run here."""
    from bench.bench_audit_burst import parser as burst_parser
    from bench.bench_audit_burst import run as burst_run
    from bench.bench_audit_burst import shared_path

    run_id = os.environ.get("TROVEMETER_BENCH_RUN_ID")
    if run_id:
        try:
            shared = json.loads(shared_path(run_id).read_text())
            if shared.get("instances") == args.instances:
                if shared.get("not_run"):  # the same preload failed there: not again here
                    raise TimeoutError(f"(bench_audit_burst, same run) {shared['not_run']}")
                shared["source"] = "bench_audit_burst, same run"
                return shared
        except (OSError, ValueError):
            pass
    burst_args = burst_parser().parse_args(["--instances", str(args.instances),
                                            "--rabbit-url", args.rabbit_url,
                                            "--bootstrap", args.bootstrap])
    result = burst_run(burst_args, burst=False)
    result["source"] = "preload run by bench_memory"
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="shovel load")
    parser.add_argument("--instances", type=int, default=100_000, help="worker's live instances")
    parser.add_argument("--rabbit-url", default=os.environ.get("TROVEMETER_RABBIT_URL",
                                                               DEFAULT_RABBIT))
    parser.add_argument("--bootstrap", default=os.environ.get("TROVEMETER_KAFKA_BOOTSTRAP",
                                                              DEFAULT_BOOTSTRAP))
    args = parser.parse_args(argv)
    label = f"{args.instances // 1000}k" if args.instances % 1000 == 0 else f"{args.instances:,}"
    worker_figure = WORKER_FIGURE.format(n=label)
    worker_target = "<= 300 MB" if args.instances >= 100_000 else None

    result: dict[str, Any] = {"benchmark": "memory", "rows": []}
    shovel = shovel_memory(args)
    result["shovel"] = shovel
    print(f"memory: shovel idle {shovel['idle_rss_mb']} MB, peak {shovel['peak_rss_mb']} MB "
          f"under {args.messages:,} msgs, complete {shovel['complete']}", file=sys.stderr)
    result["rows"].append(row(
        "memory", SHOVEL_FIGURE, shovel["peak_rss_mb"], "MB", baseline="the same shovel idle",
        baseline_value=shovel["idle_rss_mb"], complete=shovel["complete"],
        note=f"{args.messages:,} msgs published while it drained them ({shovel['seconds']}s); "
             f"median under load {shovel['median_rss_mb']} MB over {shovel['samples']} samples"))

    if os.environ.get("TROVEMETER_BENCH_AUDIT_IN_RUN") == "1":
        # `make bench` runs bench_audit_burst too: it reports the worker's RSS from its preload.
        result["complete"] = shovel["complete"]
        return result
    reason = None
    if not worker_available("trove.usage"):
        reason = "usage agent not built (nothing under streams/ uses trovemeter.accrual)"
    else:
        try:
            worker = worker_memory(args)
            result["worker"] = worker
        except (WorkerUnavailable, TimeoutError) as exc:
            reason = str(exc)
    if reason:
        result["rows"].append(not_run_row("memory", worker_figure, reason, "<= 300 MB"))
        result["worker_not_run"] = reason
    else:
        value = worker["worker_rss_mb"]
        result["rows"].append(row(
            "memory", worker_figure, value, "MB", baseline="the same worker idle (empty tables)",
            baseline_value=worker["worker_idle_rss_mb"], target=worker_target,
            met=value <= 300 if worker_target else None,
            note=f"after consuming {worker.get('preload_messages', 0):,} lifecycle msgs; peak "
                 f"{worker.get('worker_peak_rss_mb')} MB; {worker.get('source')}"))
    result["complete"] = shovel["complete"]
    return result


if __name__ == "__main__":
    figures = main(sys.argv[1:])
    sys.exit(0 if figures.get("complete") else 1)
