"""What the pipeline has produced, tallied from its output records: the numbers behind the
demo's live terminal view and the worker's dashboard.

Pure: feed it decoded records (``OperationCompleted``, ``OperationError``, ``ResourceState``,
``UsageRecord``, ``DeadLetter``; anything else is ignored) with ``add`` and read ``snapshot()``,
a JSON-ready dict. Outputs are at-least-once with deterministic ids, so repeats are dropped by
record id; usage keeps the highest version per record id, resources the newest state per id.

Percentiles are nearest-rank, as in the simulator's expected ``operation_durations``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trovemeter.model import (
    DeadLetter,
    OperationCompleted,
    OperationError,
    ResourceState,
    UsageRecord,
)
from trovemeter.resource_state import EXISTS_EVENT

INSTANCE_SECONDS = "instance.seconds"
VOLUME_GB_SECONDS = "volume.gb_seconds"
BACKUP_GB_SECONDS = "backup.gb_seconds"
EXISTS_SECONDS = "instance.exists.seconds"
OUTCOMES = ("succeeded", "failed", "abandoned")


def percentile(ordered: list[float], q: int) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[rank - 1]


def operation_name(resource_type: Any, operation: str) -> str:
    """``instance.create``: the simulator's key for an operation."""
    return f"{getattr(resource_type, 'value', resource_type)}.{operation}"


@dataclass
class UsageTotals:
    """One tenant's usage: seconds per flavor id and the other meters' sums."""

    instance_seconds: dict[str, float] = field(default_factory=dict)
    volume_gb_seconds: float = 0.0
    backup_gb_seconds: float = 0.0
    exists_seconds: float = 0.0
    flavor_names: dict[str, str] = field(default_factory=dict)

    def add(self, record: UsageRecord) -> None:
        if record.meter == INSTANCE_SECONDS:
            flavor = record.flavor_id or "?"
            self.instance_seconds[flavor] = self.instance_seconds.get(flavor, 0.0) + record.quantity
            if record.flavor_name:
                self.flavor_names[flavor] = record.flavor_name
        elif record.meter == VOLUME_GB_SECONDS:
            self.volume_gb_seconds += record.quantity
        elif record.meter == BACKUP_GB_SECONDS:
            self.backup_gb_seconds += record.quantity
        elif record.meter == EXISTS_SECONDS:
            self.exists_seconds += record.quantity


def usage_totals(records: Iterable[UsageRecord], window_from: datetime | None = None,
                 window_to: datetime | None = None) -> dict[str, UsageTotals]:
    """Per tenant: sums over ``records`` (one version per record id) whose window starts in
    ``[window_from, window_to)`` (either bound optional)."""
    totals: dict[str, UsageTotals] = {}
    for record in records:
        if window_from is not None and record.window_start < window_from:
            continue
        if window_to is not None and record.window_start >= window_to:
            continue
        totals.setdefault(record.tenant_id, UsageTotals()).add(record)
    return totals


class PipelineTally:
    """Running totals of the pipeline's outputs, deduplicated by record id."""

    def __init__(self, recent: int = 150, top_errors: int = 8,
                 accept: Any = None) -> None:
        # accept(record) -> bool: keep only some records (the demo keeps its own run's).
        self._accept = accept
        self.operations: dict[str, OperationCompleted] = {}
        self.errors: dict[str, OperationError] = {}
        self.resources: dict[str, ResourceState] = {}
        self.usage: dict[str, UsageRecord] = {}
        self.conflicts: list[str] = []  # repeated operation record ids with another content
        self.dead_letters = 0
        self.dead_letter_reasons: Counter[str] = Counter()
        self.dead_letter_shas: Counter[str] = Counter()
        self._durations: dict[str, list[float]] = {}
        self._sorted: set[str] = set()
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self._recent_errors: deque[OperationError] = deque(maxlen=50)
        self._top_errors = top_errors
        self.records_seen = 0

    # -- input

    def add(self, record: Any) -> None:
        self.records_seen += 1
        if self._accept is not None and not self._accept(record):
            return
        if isinstance(record, OperationCompleted):
            self._add_operation(record)
        elif isinstance(record, OperationError):
            if record.record_id not in self.errors:
                self.errors[record.record_id] = record
                self._recent_errors.append(record)
        elif isinstance(record, ResourceState):
            known = self.resources.get(record.resource_id)
            if known is None or _state_order(record) >= _state_order(known):
                self.resources[record.resource_id] = record
        elif isinstance(record, UsageRecord):
            known_usage = self.usage.get(record.record_id)
            if known_usage is None or record.version >= known_usage.version:
                self.usage[record.record_id] = record
        elif isinstance(record, DeadLetter):
            self.dead_letters += 1
            self.dead_letter_reasons[getattr(record.reason, "value", str(record.reason))] += 1
            self.dead_letter_shas[record.body_sha256] += 1

    def add_all(self, records: Iterable[Any]) -> None:
        for record in records:
            self.add(record)

    def _add_operation(self, record: OperationCompleted) -> None:
        known = self.operations.get(record.record_id)
        if known is not None:
            if (known.outcome, known.started_at, known.ended_at) != \
                    (record.outcome, record.started_at, record.ended_at):
                # One record id, two contents: consumers that drop repeats keep either.
                self.conflicts.append(
                    f"{record.record_id} {operation_name(record.resource_type, record.operation)}"
                    f" {known.outcome.value} then {record.outcome.value}")
            return
        self.operations[record.record_id] = record
        name = operation_name(record.resource_type, record.operation)
        if record.duration_seconds is not None:
            self._durations.setdefault(name, []).append(record.duration_seconds)
            self._sorted.discard(name)
        self._recent.append({
            "name": name,
            "outcome": record.outcome.value,
            "duration_s": record.duration_seconds,
            "ended_at": _iso(record.ended_at or record.started_at),
            "tenant_id": record.tenant_id,
            "resource_id": record.resource_id,
        })

    # -- aggregates

    def durations(self, name: str) -> list[float]:
        """Ascending durations of ``name`` (``instance.create``)."""
        values = self._durations.get(name, [])
        if name not in self._sorted:
            values.sort()
            self._sorted.add(name)
        return values

    def operation_counts(self) -> Counter[tuple[str, str, str]]:
        """(resource_type, operation, outcome) -> operations."""
        return Counter((r.resource_type.value, r.operation, r.outcome.value)
                       for r in self.operations.values())

    def failure_counts(self) -> Counter[tuple[str, str, str, str]]:
        """(tenant, resource_type, operation, exception_class) -> failed operations."""
        return Counter((r.tenant_id or "?", r.resource_type.value, r.operation,
                        r.exception_class or "?") for r in self.errors.values())

    def usage_by_tenant(self, window_from: datetime | None = None,
                        window_to: datetime | None = None) -> dict[str, UsageTotals]:
        return usage_totals(self.usage.values(), window_from, window_to)

    def snapshot(self) -> dict[str, Any]:
        """Everything the live view and the dashboard show, as plain JSON values."""
        by_outcome = Counter(r.outcome.value for r in self.operations.values())
        per_op: dict[str, Counter[str]] = {}
        for (rtype, op, outcome), n in self.operation_counts().items():
            per_op.setdefault(f"{rtype}.{op}", Counter())[outcome] += n
        operations = []
        for name in sorted(per_op):
            counts = per_op[name]
            values = self.durations(name)
            operations.append({
                "name": name, "count": sum(counts.values()),
                **{o: counts.get(o, 0) for o in OUTCOMES},
                "p50_s": percentile(values, 50), "p95_s": percentile(values, 95),
                "max_s": values[-1] if values else None,
            })
        resources: dict[str, Counter[str]] = {}
        for state in self.resources.values():
            status = state.status.value if state.status is not None else "unknown"
            resources.setdefault(state.resource_type.value, Counter())[status] += 1
        usage = self.usage_by_tenant()
        return {
            "operations": {
                "total": len(self.operations),
                "by_outcome": {o: by_outcome.get(o, 0) for o in OUTCOMES},
                "by_operation": operations,
                "recent": list(self._recent),
            },
            "errors": {
                "total": len(self.errors),
                "top": self._top_error_groups(),
                "recent": [_error_row(e) for e in reversed(self._recent_errors)][:20],
            },
            "resources": {
                "total": len(self.resources),
                "by_type": {t: dict(sorted(c.items())) for t, c in sorted(resources.items())},
            },
            "usage": None if not self.usage else {
                "records": len(self.usage),
                "tenants": [_usage_row(t, usage[t]) for t in sorted(usage)],
            },
            "dead_letters": {"total": self.dead_letters,
                             "by_reason": dict(sorted(self.dead_letter_reasons.items()))},
        }

    def _top_error_groups(self) -> list[dict[str, Any]]:
        groups: dict[tuple[str, str], list[OperationError]] = {}
        for error in self.errors.values():
            key = (operation_name(error.resource_type, error.operation),
                   error.exception_class or "?")
            groups.setdefault(key, []).append(error)
        rows = []
        for (name, exception_class), members in groups.items():
            last = max(members, key=lambda e: e.occurred_at)
            rows.append({"operation": name, "exception_class": exception_class,
                         "count": len(members), "last_at": _iso(last.occurred_at),
                         "last_message": last.error_message or last.exception_last_line or "",
                         "tenants": len({e.tenant_id for e in members})})
        rows.sort(key=lambda r: (-r["count"], r["operation"], r["exception_class"]))
        return rows[: self._top_errors]


def _state_order(state: ResourceState) -> tuple[bool, datetime]:
    """Grows with each row of one resource: ``last_event_at`` does, but for the one step from
    a row known only from exists audits to the first row with another event, which may be
    older (resource_state: audits are the last event only while nothing else is known)."""
    return state.last_event_type != EXISTS_EVENT, state.last_event_at


def _error_row(error: OperationError) -> dict[str, Any]:
    return {"occurred_at": _iso(error.occurred_at),
            "operation": operation_name(error.resource_type, error.operation),
            "tenant_id": error.tenant_id, "resource_id": error.resource_id,
            "exception_class": error.exception_class, "error_message": error.error_message}


def _usage_row(tenant: str, totals: UsageTotals) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "instance_hours": round(sum(totals.instance_seconds.values()) / 3600, 3),
        "instance_hours_by_flavor": {
            totals.flavor_names.get(f, f): round(s / 3600, 3)
            for f, s in sorted(totals.instance_seconds.items())},
        "volume_gb_hours": round(totals.volume_gb_seconds / 3600, 3),
        "backup_gb_hours": round(totals.backup_gb_seconds / 3600, 3),
        "exists_hours": round(totals.exists_seconds / 3600, 3),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def counts_by(rows: Iterable[Mapping[str, Any]], *keys: str) -> Counter[tuple[Any, ...]]:
    """Count rows of the expected-totals JSON by some of their fields (weighted by count)."""
    out: Counter[tuple[Any, ...]] = Counter()
    for row in rows:
        out[tuple(row[k] for k in keys)] += int(row.get("count", 1))
    return out
