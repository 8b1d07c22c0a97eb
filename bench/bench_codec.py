"""Parse + normalise + encode throughput on one core, on the captured fixture mix, beside a
baseline measured in the same run: the standard library's double ``json.loads`` of the same
bodies (what decoding a messagingv2 body costs at the least).

    .venv/bin/python bench/bench_codec.py [--seconds 2] [--repeats 5] [--output figures.json]

Rates use process CPU time (best of the repeats), so they are per core and hold on a machine
shared with other work; wall-clock rates are reported beside them. The encoded records are
decoded back and compared with what was parsed before anything is reported.
``main(argv)`` returns the figures as a dict (for an aggregated `make bench`); the script prints
a summary to stderr and the JSON to stdout, or to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from trovemeter.codec import default_codec
from trovemeter.envelope import parse_body
from trovemeter.mapping import load_mapping
from trovemeter.normalise import Normaliser

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "wire"
MAX_BYTES = 1_048_576


def load_mix() -> list[tuple[bytes, str | None, str | None]]:
    """(body, content_type, content_encoding) of every captured delivery."""
    mix = []
    for body_path in sorted(FIXTURES.glob("*.body")):
        meta = json.loads(body_path.with_suffix(".meta.json").read_text())
        props = meta["properties"]
        mix.append((body_path.read_bytes(), props["content_type"], props["content_encoding"]))
    return mix


def stdlib_double_decode(body: bytes) -> dict[str, Any]:
    outer = json.loads(body)
    inner = outer.get("oslo.message")
    return json.loads(inner) if isinstance(inner, str) else outer


def measure(step: Callable[[], object], batch: int, seconds: float,
            repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` rate of ``step`` (which handles ``batch`` messages per call)."""
    best_cpu = best_wall = float("inf")
    per_repeat = max(1, int(seconds / repeats / max(_one_call(step), 1e-7)))
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(per_repeat):
            step()
        best_cpu = min(best_cpu, (time.process_time() - cpu) / per_repeat)
        best_wall = min(best_wall, (time.perf_counter() - wall) / per_repeat)
    return {"msgs_per_s": round(batch / best_cpu), "wall_msgs_per_s": round(batch / best_wall),
            "messages_per_repeat": batch * per_repeat}


def _one_call(step: Callable[[], object]) -> float:
    step()  # warm caches (event-type classification, schema lookup) before timing
    start = time.process_time()
    step()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench_codec", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, help="write the JSON figures here")
    args = parser.parse_args(argv)

    mix = load_mix()
    codec = default_codec()
    normaliser = Normaliser(load_mapping())

    def parse_all() -> list[Any]:
        return [parse_body(body, max_bytes=MAX_BYTES, content_type=ctype,
                           content_encoding=cenc, normaliser=normaliser)
                for body, ctype, cenc in mix]

    parsed = parse_all()

    def pipeline() -> list[bytes]:
        return [codec.encode(parse_body(body, max_bytes=MAX_BYTES, content_type=ctype,
                                        content_encoding=cenc, normaliser=normaliser))
                for body, ctype, cenc in mix]

    def encode_only() -> list[bytes]:
        return [codec.encode(notification) for notification in parsed]

    def baseline() -> list[dict[str, Any]]:
        return [stdlib_double_decode(body) for body, _, _ in mix]

    # Validate before reporting: what was encoded decodes back to what was parsed.
    encoded = pipeline()
    if [codec.decode(data) for data in encoded] != parsed:
        raise SystemExit("bench_codec: decoded records differ from the parsed ones")

    batch = len(mix)
    figures = {name: measure(step, batch, args.seconds, args.repeats)
               for name, step in (("parse_normalise_encode", pipeline),
                                  ("parse_normalise", parse_all),
                                  ("encode", encode_only),
                                  ("baseline_stdlib_double_json_loads", baseline))}
    result: dict[str, Any] = {
        "benchmark": "codec",
        "fixtures": batch,
        "mean_body_bytes": round(sum(len(body) for body, _, _ in mix) / batch),
        "mean_record_bytes": round(sum(map(len, encoded)) / batch),
        "validated": True,
        **figures,
        "ratio_vs_baseline": round(figures["parse_normalise_encode"]["msgs_per_s"]
                                   / figures["baseline_stdlib_double_json_loads"]["msgs_per_s"], 2),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("fastavro", "orjson")},
    }
    for name in figures:
        print(f"{name:36s} {figures[name]['msgs_per_s']:>9,} msg/s per core "
              f"({figures[name]['wall_msgs_per_s']:,} wall)", file=sys.stderr)
    print(f"{'ratio vs stdlib double json.loads':36s} {result['ratio_vs_baseline']:>9}",
          file=sys.stderr)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        print(text)
    return result


if __name__ == "__main__":
    main()
