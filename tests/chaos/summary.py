"""The chaos suite's summary table (pure: counts in, text out; tests/unit/test_chaos_summary.py).

One column per run, one row per question the issue asks: which faults were injected, how many
messages RabbitMQ confirmed, how many of them reached Kafka (distinct message ids), how many
repeats the consumers drop, how many were lost (must be 0), what was dead-lettered and why,
and the end-to-end checks (operations, billing) with ✓ / ✗ / –.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PASS, FAIL, SKIP = "✓", "✗", "–"


@dataclass
class RunCounts:
    name: str
    faults: Sequence[tuple[str, int]]  # (fault, times injected)
    published: Mapping[str, int]  # kind (valid/duplicate/garbage) -> confirmed by RabbitMQ
    expected_ids: int  # distinct message ids of the valid messages confirmed
    delivered_ids: int  # of those, found in trove.notifications
    notification_records: int  # records of the run in trove.notifications (repeats included)
    dead_letters: Mapping[str, int]  # reason -> distinct garbage bodies dead-lettered
    dead_letter_records: int  # records of the run in the DLQ (repeats included)
    garbage_published: int  # distinct garbage deliveries confirmed (what the DLQ must hold)
    operation_records: int | None = None  # records on trove.operations (None: not read)
    operations_distinct: int | None = None  # after dropping repeats by record id
    usage_records: int | None = None  # records on trove.usage
    usage_latest: int | None = None  # record ids (latest version kept)
    checks: Sequence[tuple[str, bool | None]] = field(default_factory=tuple)
    notes: Sequence[str] = field(default_factory=tuple)

    @property
    def lost(self) -> int:
        return self.expected_ids - self.delivered_ids

    @property
    def dead_letters_missing(self) -> int:
        return max(0, self.garbage_published - sum(self.dead_letters.values()))

    @property
    def duplicates_dropped(self) -> dict[str, int]:
        """Repeats a consumer drops, per topic (by message id / body / record id)."""
        out = {"trove.notifications": self.notification_records - self.delivered_ids,
               "dead letters": self.dead_letter_records - sum(self.dead_letters.values())}
        if self.operation_records is not None and self.operations_distinct is not None:
            out["trove.operations"] = self.operation_records - self.operations_distinct
        if self.usage_records is not None and self.usage_latest is not None:
            out["trove.usage (older versions)"] = self.usage_records - self.usage_latest
        return out

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.dead_letters_missing == 0
                and all(result is not False for _, result in self.checks))


def _mark(result: bool | None) -> str:
    return SKIP if result is None else PASS if result else FAIL


def _cells(run: RunCounts) -> list[tuple[str, list[str]]]:
    published = sum(run.published.values())
    kinds = ", ".join(f"{kind} {n}" for kind, n in run.published.items() if n)
    dropped = run.duplicates_dropped
    rows = [
        ("faults injected", [f"{fault} ×{times}" for fault, times in run.faults] or ["none"]),
        ("messages published", [f"{published} confirmed by RabbitMQ", f"({kinds})"]),
        ("delivered", [f"{run.delivered_ids} of {run.expected_ids} message ids in "
                       "trove.notifications"]),
        ("duplicates dropped", [f"{sum(dropped.values())}"]
         + [f"  {topic} {n}" for topic, n in dropped.items()]),
        ("lost", [f"{run.lost}" + ("" if run.lost == 0 else "  ✗ LOST")]),
        ("dead-lettered", [f"{sum(run.dead_letters.values())} of {run.garbage_published} "
                           "garbage bodies"
                           + ("" if not run.dead_letters_missing else
                              f"  ✗ {run.dead_letters_missing} missing")]
         + [f"  {reason} {n}" for reason, n in sorted(run.dead_letters.items(),
                                                       key=lambda kv: (-kv[1], kv[0]))]),
    ]
    if run.checks:
        rows.append(("checks", [f"{_mark(result)} {label}" for label, result in run.checks]))
    if run.notes:
        rows.append(("notes", list(run.notes)))
    return rows


def render(runs: Sequence[RunCounts], title: str = "chaos summary") -> str:
    """A plain-text table: row labels down the left, one column per run."""
    if not runs:
        return f"{title}: no run finished"
    columns = [_cells(run) for run in runs]
    labels: list[str] = []
    for cells in columns:
        for label, _ in cells:
            if label not in labels:
                labels.append(label)
    by_label = [{label: lines for label, lines in cells} for cells in columns]
    label_width = max(len(label) for label in labels)
    widths = [max(len(run.name), *(len(line) for lines in cells.values() for line in lines))
              for run, cells in zip(runs, by_label, strict=True)]
    rule = "+" + "+".join("-" * (w + 2) for w in [label_width, *widths]) + "+"

    def row(first: str, values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(
            [first, *values], [label_width, *widths], strict=True)) + " |"

    out = [title, rule, row("", [run.name for run in runs]), rule]
    for label in labels:
        height = max(len(cells.get(label, [])) for cells in by_label)
        for i in range(height):
            out.append(row(label if i == 0 else "",
                           [cells.get(label, [])[i] if i < len(cells.get(label, [])) else ""
                            for cells in by_label]))
        out.append(rule)
    verdict = "PASS" if all(run.ok for run in runs) else "FAIL"
    out.append(f"{verdict}: lost = {sum(run.lost for run in runs)} in "
               f"{sum(sum(run.published.values()) for run in runs)} messages published")
    return "\n".join(out)
