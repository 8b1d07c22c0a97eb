"""trovemeter's benchmarks: `make bench` (``python -m bench``) runs every ``bench/bench_*.py``
on the local stack and prints one table, each figure beside a baseline measured in the same run.

The contract between a benchmark module and the aggregator (``bench/__main__.py``):

- ``main(argv: list[str]) -> dict`` runs the benchmark and returns its figures. It checks that
  its output is complete and correct before it reports a number, runs in bounded time and never
  asserts a timing: targets are reported as met or not, not enforced.
- The dict may carry ``rows``: a list of table rows built with ``row()`` / ``not_run_row()``
  below. Rows name the figure, its value, the baseline's name and value from the same run, the
  ratio, the target and whether it is met. Modules written before this contract
  (``bench_codec``, ``bench_shovel``) are turned into rows by adapters in ``__main__``.
- ``{"not_run": "<reason>"}`` (with or without rows) says the benchmark could not measure here,
  e.g. because the component it measures is not built yet; that is not a failure of `make bench`.
- A module may define ``FULL_ARGV`` and ``QUICK_ARGV`` (lists of arguments for a full run and
  for ``--quick``); otherwise the aggregator's own table of arguments, or none, is used.
"""

from __future__ import annotations

from typing import Any


def row(benchmark: str, figure: str, value: float | None, unit: str, *,
        baseline: str | None = None, baseline_value: float | None = None,
        ratio: float | None = None, target: str | None = None, met: bool | None = None,
        complete: bool = True, note: str = "") -> dict[str, Any]:
    """One line of the table. ``ratio`` defaults to value / baseline_value."""
    if ratio is None and value is not None and baseline_value:
        ratio = round(value / baseline_value, 3)
    return {"benchmark": benchmark, "figure": figure, "value": value, "unit": unit,
            "baseline": baseline, "baseline_value": baseline_value, "ratio": ratio,
            "target": target, "met": met, "complete": complete, "note": note}


def not_run_row(benchmark: str, figure: str, reason: str, target: str | None = None) -> dict[str, Any]:
    """A line for a figure that could not be measured, with the reason."""
    return {"benchmark": benchmark, "figure": figure, "not_run": reason, "target": target}
