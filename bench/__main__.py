"""`make bench`: run every benchmark under bench/ on the local stack and print one table.

    .venv/bin/python -m bench                 # everything (the stack must be up: `make up`)
    .venv/bin/python -m bench --quick         # smaller N: a smoke run of the same code paths
    .venv/bin/python -m bench --only shovel   # one benchmark (repeatable)
    .venv/bin/python -m bench --list          # the benchmarks and their arguments
    .venv/bin/python -m bench --render        # print the table of bench/results/latest.json
    .venv/bin/python -m bench --render --docs # ... and write it into docs/benchmarks.md

Each benchmark module's ``main(argv)`` runs in its own process (a crash or a hang costs one
row, not the table), one after the other: they share two cores and the brokers, so running them
side by side would measure the contention. Each figure is printed beside a baseline measured in
the same run, with the ratio, because the machines are shared and absolute numbers drift; the
ratio is the figure to compare between runs. A benchmark that fails, times out, or cannot run
yet (a component not built) is a "not run: <reason>" row, and a figure whose output was
incomplete or wrong is marked INCOMPLETE (it does not count); `make bench` exits 0 either way:
benchmarks report, they do not assert.

A full run writes ``bench/results/latest.json`` (committed: the latest figures) and refreshes the
table in ``docs/benchmarks.md``; ``--quick`` and ``--only`` runs write ``.stack/run/bench-*.json``
instead, so a smoke run never replaces the real figures.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import not_run_row, row  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LATEST = RESULTS / "latest.json"
RUN_DIR = ROOT / ".stack" / "run"
DOCS = ROOT / "docs" / "benchmarks.md"
TABLE_BEGIN = "<!-- bench:table:begin (written by `make bench`) -->"
TABLE_END = "<!-- bench:table:end -->"
FORMAT = "trovemeter.bench/1"
PYTHON = sys.executable

Adapter = Callable[[dict[str, Any]], list[dict[str, Any]]]


# ------------------------------------------------------------------ adapters for modules
# that return their own dicts (written before the rows contract in bench/__init__.py)


def _codec_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    full = result["parse_normalise_encode"]["msgs_per_s"]
    base = result["baseline_stdlib_double_json_loads"]["msgs_per_s"]
    note = (f"{result['fixtures']} fixtures, body {result['mean_body_bytes']} B -> record "
            f"{result['mean_record_bytes']} B; CPU time, best of repeats")
    return [
        row("codec", "parse+normalise+encode per core", full, "msg/s",
            baseline="stdlib json.loads x2 (decode only)", baseline_value=base,
            complete=bool(result.get("validated")), note=note),
        row("codec", "parse+normalise per core", result["parse_normalise"]["msgs_per_s"],
            "msg/s", baseline="stdlib json.loads x2 (decode only)", baseline_value=base,
            complete=bool(result.get("validated"))),
    ]


def _shovel_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    shovel, bare = result["shovel"], result["bare"]
    rate, base = shovel["median_msgs_per_s"], bare["median_msgs_per_s"]
    ratio = result.get("ratio_of_medians")
    note = (f"{result['rounds']} rounds x {result['messages_per_round']:,} msgs, body "
            f"{result['mean_body_bytes']} B, prefetch {result['prefetch']}; per-round ratios "
            f"{result.get('ratio_per_round')}")
    rows = [row("shovel", "RabbitMQ->Kafka msgs/s (ack after confirm, Avro)", rate, "msg/s",
                baseline="bare pika+confluent loop", baseline_value=base, ratio=ratio,
                target=">= 20,000/s and >= 0.7x bare",
                met=bool(rate >= 20_000 and (ratio or 0) >= 0.7),
                complete=bool(result.get("complete")), note=note)]
    cpu_s, cpu_b = shovel.get("median_cpu_us_per_msg", {}), bare.get("median_cpu_us_per_msg", {})
    if cpu_s.get("loop") is not None and cpu_b.get("loop"):
        own = cpu_s["loop"] + cpu_s.get("helpers", 0.0)
        rows.append(row("shovel", "CPU per message (shovel processes)", round(own, 1), "us",
                        baseline="bare loop process", baseline_value=cpu_b["loop"],
                        complete=bool(result.get("complete")),
                        note=f"rabbitmq {cpu_s.get('rabbitmq')} us vs {cpu_b.get('rabbitmq')}, "
                             f"kafka {cpu_s.get('kafka')} us vs {cpu_b.get('kafka')}"))
    return rows


# ------------------------------------------------------------------ the registry


@dataclass
class Bench:
    name: str  # --only NAME
    module: str
    full: list[str]
    quick: list[str]
    timeout: float  # seconds, full run (a quick run gets a third, at least 120 s)
    placeholders: list[tuple[str, str, str | None]]  # (benchmark, figure, target) if not run
    adapter: Adapter | None = None
    env: dict[str, str] = field(default_factory=dict)
    reserve: float = 0.0  # seconds of the run's budget kept for it while earlier ones run

    @property
    def path(self) -> Path:
        return ROOT / (self.module.replace(".", "/") + ".py")


BENCHMARKS: list[Bench] = [
    Bench("codec", "bench.bench_codec", ["--seconds", "2", "--repeats", "5", "--output", "/dev/null"],
          ["--seconds", "0.3", "--repeats", "2", "--output", "/dev/null"], 240,
          [("codec", "parse+normalise+encode per core", None)], _codec_rows),
    Bench("shovel", "bench.bench_shovel", ["--messages", "100000", "--rounds", "4"],
          ["--messages", "10000", "--rounds", "1"], 600,
          [("shovel", "RabbitMQ->Kafka msgs/s (ack after confirm, Avro)",
            ">= 20,000/s and >= 0.7x bare")], _shovel_rows),
    Bench("benthos", "bench.bench_benthos", ["--messages", "100000", "--rounds", "3"],
          ["--messages", "10000", "--rounds", "1"], 900,
          [("shovel", "msgs/s (rounds with Benthos)", ">= 1.0x Benthos")]),
    Bench("memory", "bench.bench_memory", ["--messages", "100000", "--instances", "100000"],
          ["--messages", "10000", "--instances", "5000"], 480,
          [("memory", "shovel RSS under load (peak, with helpers)", None)], reserve=40),
    Bench("pairing", "bench.bench_pairing", [], [], 480,
          [("pairing", "events/s per worker", ">= 5,000/s and >= 0.5x counting Faust agent"),
           ("scale", "2 workers / 1 worker, 4 partitions", None)]),
    Bench("latency", "bench.bench_latency", ["--seconds", "20"], ["--seconds", "5"], 360,
          [("latency", "p99 publish->trove.operations at 1,000 msg/s", "< 50 ms"),
           ("latency", "p99 publish->trove.operations at 5,000 msg/s", None)], reserve=120),
    Bench("audit_burst", "bench.bench_audit_burst", ["--instances", "100000"],
          ["--instances", "5000"], 600,
          [("audit burst", "100k trove.instance.exists -> trove.usage", "<= 20 s"),
           ("memory", "worker RSS, 100k live instances", "<= 300 MB")], reserve=180),
]
# Figures the issue asks for: a benchmark name missing from the table gets a not-run row.
REQUIRED = ("shovel", "codec", "pairing", "latency", "audit burst", "memory", "scale")


# ------------------------------------------------------------------ running one benchmark


def _child(module_name: str, out_path: str, argv: list[str]) -> int:
    """Inside the benchmark's own process: run ``main(argv)``, write its dict as JSON."""
    try:
        module = importlib.import_module(module_name)
        result = module.main(argv)
        if not isinstance(result, dict):
            result = {"error": f"main() returned {type(result).__name__}, not a dict"}
    except SystemExit as exc:  # argparse errors and explicit exits
        result = {"error": f"exited with {exc.code}"}
    except BaseException as exc:  # noqa: BLE001 - reported as a row, not raised
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {str(exc) or repr(exc)}".strip()[:500]}
    Path(out_path).write_text(json.dumps(result, default=str, indent=1))
    return 0


def _module_argv(bench: Bench, quick: bool) -> list[str]:
    """The module's own FULL_ARGV / QUICK_ARGV if it defines them, else the registry's."""
    name = "QUICK_ARGV" if quick else "FULL_ARGV"
    try:
        text = bench.path.read_text()
    except OSError:
        return bench.quick if quick else bench.full
    if f"\n{name}" in text:  # read without importing (imports may be heavy)
        code = subprocess.run([PYTHON, "-c", f"import json, {bench.module} as m; "
                               f"print(json.dumps(list(m.{name})))"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        if code.returncode == 0:
            return json.loads(code.stdout.strip().splitlines()[-1])
    return bench.quick if quick else bench.full


def run_bench(bench: Bench, quick: bool, extra_env: dict[str, str],
              remaining: float = float("inf")) -> dict[str, Any]:
    """Run one benchmark in a subprocess; returns {status, reason, seconds, result, argv}.
    ``remaining``: seconds left of the whole run's budget (caps the benchmark's own limit)."""
    if importlib.util.find_spec(bench.module) is None or not bench.path.exists():
        return {"status": "not run", "reason": f"{bench.path.relative_to(ROOT)} is not written yet",
                "seconds": 0.0}
    if remaining < 30:
        return {"status": "not run", "reason": "the run's time budget was used up",
                "seconds": 0.0}
    argv = _module_argv(bench, quick)
    timeout = min(max(120.0, bench.timeout / 3) if quick else bench.timeout, remaining)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    out_path = RUN_DIR / f"bench-{bench.name}-{os.getpid()}.json"
    out_path.unlink(missing_ok=True)
    print(f"\n=== {bench.name}: {bench.module} {' '.join(argv)} (limit {timeout:.0f}s)",
          file=sys.stderr, flush=True)
    started = time.monotonic()
    env = dict(os.environ, **bench.env, **extra_env)
    process = subprocess.Popen([PYTHON, "-m", "bench", "--child", bench.module, str(out_path),
                                "--", *argv], cwd=ROOT, env=env, start_new_session=True)
    try:
        rc = process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # the group we started: the bench and its children
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        return {"status": "not run", "reason": f"timed out after {timeout:.0f}s",
                "seconds": round(time.monotonic() - started, 1), "argv": argv}
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        raise
    seconds = round(time.monotonic() - started, 1)
    try:
        result = json.loads(out_path.read_text())
    except (OSError, ValueError):
        return {"status": "failed", "reason": f"crashed (exit {rc}) before reporting",
                "seconds": seconds, "argv": argv}
    finally:
        out_path.unlink(missing_ok=True)
    if "error" in result:
        return {"status": "failed", "reason": result["error"], "seconds": seconds, "argv": argv}
    if result.get("not_run") and not result.get("rows"):
        return {"status": "not run", "reason": result["not_run"], "seconds": seconds,
                "argv": argv, "result": result}
    return {"status": "ok", "seconds": seconds, "argv": argv, "result": result}


def rows_of(bench: Bench, outcome: dict[str, Any]) -> list[dict[str, Any]]:
    if outcome["status"] != "ok":
        reason = outcome["reason"] if outcome["status"] == "not run" else \
            f"failed: {outcome['reason']}"
        return [not_run_row(b, f, reason, t) for b, f, t in bench.placeholders]
    result = outcome["result"]
    if result.get("rows"):
        rows = list(result["rows"])
    elif bench.adapter is not None:
        try:
            rows = bench.adapter(result)
        except (KeyError, TypeError, ValueError) as exc:
            rows = [not_run_row(b, f, f"result not understood ({type(exc).__name__}: {exc})", t)
                    for b, f, t in bench.placeholders]
    else:
        rows = [not_run_row(b, f, "the benchmark returned no rows", t)
                for b, f, t in bench.placeholders]
    for r in rows:
        r.setdefault("source", bench.name)
    return rows


# ------------------------------------------------------------------ the table


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if abs(value) >= 1000:
            text = f"{value:,.0f}"
        elif abs(value) >= 100:
            text = f"{value:.0f}"
        elif abs(value) >= 10:
            text = f"{value:.1f}"
        else:
            text = f"{value:.2f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def _met(r: dict[str, Any]) -> str:
    if r.get("not_run"):
        return "-"
    if r.get("complete") is False:
        return "INCOMPLETE"
    if r.get("met") is None:
        return "-" if not r.get("target") else "?"
    return "yes" if r["met"] else "NO"


def table_cells(r: dict[str, Any]) -> list[str]:
    if r.get("not_run"):
        return [r["benchmark"], r["figure"], f"not run: {r['not_run']}", "", "", "",
                r.get("target") or "", "-"]
    unit = r.get("unit", "")
    return [r["benchmark"], r["figure"], _num(r.get("value"), unit), r.get("baseline") or "-",
            _num(r.get("baseline_value"), unit if r.get("baseline_value") is not None else ""),
            "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x", r.get("target") or "-",
            _met(r)]


HEADERS = ["benchmark", "figure", "value", "baseline", "baseline value", "ratio", "target", "met?"]


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [table_cells(r) for r in rows]
    # not-run reasons may be long: they do not widen the value column
    widths = [max([len(h)] + [len(c[i]) for c, r in zip(cells, rows)
                              if not (i == 2 and r.get("not_run"))]) for i, h in enumerate(HEADERS)]
    widths = [min(w, 48) for w in widths]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths)),
             "  ".join("-" * w for w in widths)]
    for c, r in zip(cells, rows):
        if r.get("not_run"):
            lines.append("  ".join([c[0].ljust(widths[0]), c[1].ljust(widths[1]), c[2]]))
        else:
            lines.append("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip())
    notes = [f"  {r['benchmark']} / {r['figure']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        lines.append("| " + " | ".join(esc(c) for c in table_cells(r)) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ machine and stack


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    try:
        import confluent_kafka
        import pika

        info["librdkafka"] = confluent_kafka.libversion()[0]
        info["pika"] = pika.__version__
        from importlib.metadata import version

        info["faust"] = version("faust-streaming")
    except Exception:  # noqa: BLE001 - descriptive only
        pass
    jars = sorted((ROOT / ".stack" / "kafka" / "libs").glob("kafka-server-*.jar"))
    if jars:
        info["kafka"] = jars[-1].stem.removeprefix("kafka-server-")
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            info["rabbitmq"] = out.stdout.strip()
    except OSError:
        pass
    return info


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of the machine's CPU (all cores) busy over ``seconds``, from /proc/stat: what other
    work takes while nothing of this run is running (steal counts as busy)."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return idle, sum(fields[:8])

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return round(1 - (idle1 - idle0) / total, 2) if total > 0 else None


def stack_problem() -> str | None:
    """Why the brokers cannot be used, or None."""
    import socket

    from urllib.parse import urlsplit

    rabbit_url = urlsplit(os.environ.get("TROVEMETER_RABBIT_URL") or "amqp://127.0.0.1:5672/")
    rabbit = f"{rabbit_url.hostname or '127.0.0.1'}:{rabbit_url.port or 5672}"
    for what, hostport in (
            ("Kafka", os.environ.get("TROVEMETER_KAFKA_BOOTSTRAP") or "127.0.0.1:9092"),
            ("RabbitMQ", rabbit)):  # the benchmarks' own defaults, which honour both variables
        host, _, port = hostport.split(",")[0].rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=3):
                pass
        except OSError as exc:
            return f"{what} is not reachable at {hostport} ({exc}): run `make up`"
    return None


# A benchmark that failed with one of these lost the brokers (the shared stack was restarted).
BROKER_LOST = re.compile(r"AMQPConnectionError|StreamLostError|ConnectionRefused|"
                         r"ConnectionReset|ChannelClosedByBroker.*(?:320|CONNECTION_FORCED)|"
                         r"_TRANSPORT|BrokerTransportFailure|ALL_BROKERS_DOWN|NOT_LEADER|"
                         r"LEADER_NOT_AVAILABLE|NOT_COORDINATOR|COORDINATOR_NOT_AVAILABLE")


def wait_for_stack(timeout: float) -> float:
    """Seconds waited until Kafka and RabbitMQ accept connections again (at most ``timeout``),
    plus a few seconds for them to settle."""
    started = time.monotonic()
    while stack_problem() and time.monotonic() - started < timeout:
        time.sleep(2)
    time.sleep(5)
    return round(time.monotonic() - started, 1)


def git_commit() -> str | None:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True)
    return out.stdout.strip() or None


def busy_line(report: dict[str, Any]) -> str:
    """'CPU busy with other work before each benchmark: codec 48%, shovel 50%, ...'"""
    parts = [f"{name} {o['cpu_busy_before']:.0%}" for name, o in report["benchmarks"].items()
             if o.get("cpu_busy_before") is not None]
    return "CPU busy with other work before each benchmark: " + (", ".join(parts) or "?")


def write_docs_table(report: dict[str, Any]) -> bool:
    """Replace the table between the markers in docs/benchmarks.md; False if no markers."""
    try:
        text = DOCS.read_text()
    except OSError:
        return False
    if TABLE_BEGIN not in text or TABLE_END not in text:
        return False
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    m = report["machine"]
    body = (f"Run of {report['started_at']} at commit {report.get('git_commit')}, "
            f"{report['seconds']:.0f} s in all; {m.get('cores')} cores ({m.get('cpu', '?')}), "
            f"{m.get('memory_gb', '?')} GB, shared; load average {report['load_average_start']} "
            f"at the start, {report['load_average_end']} at the end; {busy_line(report)}.\n\n"
            + markdown_table(report["rows"]))
    notes = [f"- {r['benchmark']} / {r['figure']}: {r['note']}" for r in report["rows"]
             if r.get("note")]
    if notes:
        body += "\n\nNotes (N, rounds, CPU per message in µs: process / RabbitMQ / Kafka):\n\n" \
            + "\n".join(notes)
    DOCS.write_text(f"{head}{TABLE_BEGIN}\n{body}\n{TABLE_END}{tail}")
    return True


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        rest = argv[3:]
        return _child(argv[1], argv[2], rest[1:] if rest[:1] == ["--"] else rest)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME",
                        choices=[b.name for b in BENCHMARKS], help="run only this benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller N: a smoke run")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--render", action="store_true",
                        help="print the table of bench/results/latest.json and exit")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--docs", action="store_true",
                        help="with --render: rewrite the table in docs/benchmarks.md")
    parser.add_argument("--budget", type=float, default=14 * 60,
                        help="seconds for the whole run (default 840: `make bench` stays under "
                        "15 minutes); each benchmark's limit is capped by what is left")
    parser.add_argument("--output", type=Path, help="write the JSON here (default: "
                        "bench/results/latest.json for a full run, .stack/run/ otherwise)")
    args = parser.parse_args(argv)

    if args.list:
        for b in BENCHMARKS:
            print(f"{b.name:<12} {b.module:<26} full: {' '.join(b.full) or '-'}   "
                  f"quick: {' '.join(b.quick) or '-'}   limit {b.timeout:.0f}s")
        return 0
    if args.render:
        report = json.loads(LATEST.read_text())
        print(markdown_table(report["rows"]) if args.markdown else format_table(report["rows"]))
        if args.docs:
            print(f"docs table {'written' if write_docs_table(report) else 'NOT written'}: {DOCS}")
        return 0

    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    started = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    run_id = f"{int(time.time())}-{os.getpid()}"
    run_env = {"TROVEMETER_BENCH_RUN_ID": run_id}
    problem = stack_problem()
    outcomes: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    if any(b.name == "audit_burst" for b in chosen):
        run_env["TROVEMETER_BENCH_AUDIT_IN_RUN"] = "1"  # it reports the worker's RSS
    for i, bench in enumerate(chosen):
        busy = cpu_busy()
        if problem and bench.name != "codec":
            outcome = {"status": "not run", "reason": problem, "seconds": 0.0}
        else:
            # Benchmarks of one run may share work (bench_memory reads the worker RSS that
            # bench_audit_burst measured with the same 100k instances) through this id.
            # Later benchmarks keep their reserve: an overrunning one cannot starve them all.
            reserved = sum(b.reserve for b in chosen[i + 1:] if b.path.exists())
            outcome = run_bench(bench, args.quick, run_env,
                                remaining=args.budget - (time.monotonic() - started) - reserved)
            if outcome["status"] == "failed" and BROKER_LOST.search(outcome["reason"]):
                # The shared stack was restarted under it: once more, when the brokers are back.
                waited = wait_for_stack(120)
                first = outcome
                outcome = run_bench(bench, args.quick, run_env, remaining=args.budget
                                    - (time.monotonic() - started) - reserved)
                outcome["retried_after"] = {"reason": first["reason"], "seconds": first["seconds"],
                                            "waited_for_brokers_s": waited}
                print(f"=== {bench.name}: retried after a lost broker connection "
                      f"({first['reason'][:120]})", file=sys.stderr, flush=True)
        outcome["cpu_busy_before"] = busy
        outcomes[bench.name] = outcome
        rows.extend(rows_of(bench, outcome))
        print(f"=== {bench.name}: {outcome['status']}"
              f"{': ' + outcome['reason'] if outcome.get('reason') else ''} "
              f"({outcome['seconds']:.0f}s; CPU busy with other work before it: "
              f"{'?' if busy is None else f'{busy:.0%}'})", file=sys.stderr, flush=True)
    if not args.only:
        present = {r["benchmark"] for r in rows}
        for name in REQUIRED:
            if name not in present:
                rows.append(not_run_row(name, "-", "no benchmark reported it"))

    report = {
        "format": FORMAT, "started_at": started_at,
        "seconds": round(time.monotonic() - started, 1), "quick": args.quick,
        "only": args.only, "git_commit": git_commit(), "machine": machine(),
        "load_average_start": load_start,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "benchmarks": outcomes,
    }
    full_run = not args.quick and not args.only
    out = args.output or (LATEST if full_run else
                          RUN_DIR / f"bench-{'quick' if args.quick else 'only'}-{run_id}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    tmp.replace(out)
    docs = write_docs_table(report) if full_run and out == LATEST else False

    print(f"\ntrovemeter benchmarks ({'quick' if args.quick else 'full'} run, "
          f"{report['seconds']:.0f}s, load average {load_start} -> {report['load_average_end']}, "
          f"{report['machine'].get('cores')} cores; {busy_line(report)}):\n")
    print(markdown_table(rows) if args.markdown else format_table(rows))
    print(f"\nwritten: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}"
          + (f", table in {DOCS.relative_to(ROOT)}" if docs else ""))
    incomplete = [r for r in rows if r.get("complete") is False]
    if incomplete:
        print("output incomplete (not all expected records arrived in time) or wrong in: "
              + ", ".join(f"{r['benchmark']} / {r['figure']}" for r in incomplete)
              + ": those figures do not count", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
