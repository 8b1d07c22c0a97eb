"""The demo's closing summary: what the pipeline produced vs the simulator's expected totals.

Pure: ``compare(expected, observed)`` takes the expected-totals JSON (``trovemeter simulate
--expected``, format ``trovemeter.expected/1``) and what the demo read back from the output
topics (``Observed``), and returns ``Check`` lines; ``render`` prints them, ``exit_code`` says
whether a compared total differs.

A check is ✓ (equal), ✗ (differs) or – (not compared: informational, or the stage that would
produce the number does not exist yet). Abandoned operations need care: the pipeline reports a
start as abandoned only once *event time* passes its timeout (up to hours after the start), and a
scenario's stream ends 15 simulated minutes after its horizon, so starts abandoned late in the
scenario are still open in the worker at the end. They are counted from the worker's open
operations when the worker shows them, and never guessed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trovemeter.pipeline_tally import OUTCOMES, UsageTotals, counts_by, percentile

PASS, FAIL, SKIP = "✓", "✗", "–"
_DURATION_TOLERANCE_S = 0.0015  # expected durations are rounded to milliseconds
_SECONDS_TOLERANCE = 0.01  # backup GB-seconds are rounded to 2 decimals in the expectation


@dataclass(frozen=True)
class Check:
    section: str
    label: str
    expected: str
    actual: str
    ok: bool | None  # None: not compared
    details: tuple[str, ...] = ()

    @property
    def mark(self) -> str:
        return SKIP if self.ok is None else PASS if self.ok else FAIL


@dataclass
class Observed:
    """What came out of the pipeline for one run (already filtered to that run)."""

    operations: Mapping[tuple[str, str, str], int]  # (resource_type, operation, outcome)
    failures: Mapping[tuple[str, str, str, str], int]  # (tenant, resource_type, op, class)
    dead_letters: int  # dead letters of this run's garbage bodies
    message_ids: set[str]  # distinct message ids of this run seen in trove.notifications
    durations: Mapping[str, list[float]]  # "instance.create" -> durations (any order)
    # (resource_type, operation) -> starts the worker still holds open; None: not visible
    open_operations: Mapping[tuple[str, str], int] | None = None
    # tenant -> usage within the horizon; None: no usage record from this run
    usage: Mapping[str, UsageTotals] | None = None
    usage_agent_present: bool = False  # the worker has a usage stage (so None is a failure)
    resources: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # type -> status
    # operation record ids seen again with another content (outcome or times)
    conflicts: list[str] = field(default_factory=list)
    interrupted: bool = False


def compare(expected: Mapping[str, Any], observed: Observed) -> list[Check]:
    checks: list[Check] = []
    checks += _operations(expected, observed)
    checks.append(Check("operations", "one content per operation record id", "0 conflicting",
                        str(len(observed.conflicts)), not observed.conflicts,
                        tuple(observed.conflicts[:6])))
    checks.append(_failures(expected, observed))
    checks.append(_dead_letters(expected, observed))
    checks.append(_message_ids(expected, observed))
    checks += _durations(expected, observed)
    checks += _usage(expected, observed)
    checks.append(_resources(expected, observed))
    return checks


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(c.ok is False for c in checks) else 0


# ------------------------------------------------------------------------------ sections


def _operations(expected: Mapping[str, Any], observed: Observed) -> list[Check]:
    want = counts_by(expected.get("operations", []), "resource_type", "operation", "outcome")
    got = Counter(observed.operations)
    opened = Counter(observed.open_operations or {})
    checks = []
    for outcome in OUTCOMES:
        keys = sorted({k for k in (*want, *got) if k[2] == outcome})
        exp_total = sum(want[k] for k in keys)
        got_total = sum(got[k] for k in keys)
        details = []
        if outcome != "abandoned":
            for k in keys:
                if want[k] != got[k]:
                    details.append(f"{k[0]}.{k[1]}: expected {want[k]}, pipeline {got[k]}")
            checks.append(Check("operations", f"operations {outcome}", str(exp_total),
                                str(got_total), got_total == exp_total and not details,
                                tuple(details)))
            continue
        # Abandoned: reported + still open must make the expected count.
        ok: bool | None = True
        for k in keys:
            held = opened.get((k[0], k[1]), 0)
            if got[k] > want[k]:
                ok = False
                details.append(f"{k[0]}.{k[1]}: expected {want[k]}, pipeline reported {got[k]}")
            elif got[k] + held != want[k]:
                if observed.open_operations is None:
                    ok = None if ok is not False else ok
                    details.append(f"{k[0]}.{k[1]}: expected {want[k]}, reported {got[k]}, "
                                   f"{want[k] - got[k]} not reported yet (event time has not "
                                   "passed their timeout; open operations not visible)")
                else:
                    ok = False
                    details.append(f"{k[0]}.{k[1]}: expected {want[k]}, reported {got[k]} "
                                   f"+ {held} still open")
        held_total = sum(opened.get((k[0], k[1]), 0) for k in keys)
        actual = str(got_total) if not held_total else \
            f"{got_total} reported + {held_total} still open"
        checks.append(Check("operations", "operations abandoned", str(exp_total), actual, ok,
                            tuple(details)))
    return checks


def _failures(expected: Mapping[str, Any], observed: Observed) -> Check:
    want = counts_by(expected.get("failures", []), "tenant_id", "resource_type", "operation",
                     "exception_class")
    got = Counter(observed.failures)
    details = [f"{_short(k[0])} {k[1]}.{k[2]} {k[3]}: expected {want[k]}, pipeline {got[k]}"
               for k in sorted({*want, *got}) if want[k] != got[k]]
    return Check("failures", "errors by tenant, operation and exception",
                 f"{sum(want.values())} in {len(want)} groups",
                 f"{sum(got.values())} in {len(+got)} groups", not details, tuple(details[:12]))


def _dead_letters(expected: Mapping[str, Any], observed: Observed) -> Check:
    garbage = int(expected.get("messages", {}).get("garbage", 0))
    return Check("dead letters", "dead letters = garbage bodies published", str(garbage),
                 str(observed.dead_letters), observed.dead_letters == garbage)


def _message_ids(expected: Mapping[str, Any], observed: Observed) -> Check:
    ids = expected.get("message_ids", {})
    count, digest = int(ids.get("count", 0)), ids.get("sha256")
    seen = sorted(observed.message_ids)
    got_digest = hashlib.sha256("\n".join(seen).encode("ascii", "replace")).hexdigest()
    ok = len(seen) == count and (digest is None or got_digest == digest)
    details = () if ok else (f"{count - len(seen)} of {count} message ids not in "
                             "trove.notifications" if len(seen) < count else
                             "the set of message ids differs from the expected one (sha256)",)
    actual = f"{len(seen)}" + (" (sha256 matches)" if ok and digest else "")
    return Check("message ids", "distinct message ids in trove.notifications", str(count),
                 actual, ok, details)


def _durations(expected: Mapping[str, Any], observed: Observed) -> list[Check]:
    checks = []
    for name, stats in sorted(expected.get("operation_durations", {}).items()):
        values = sorted(observed.durations.get(name, []))
        p50, p95 = percentile(values, 50), percentile(values, 95)
        ok = (len(values) == stats["count"] and p50 is not None and p95 is not None
              and abs(p50 - stats["p50_s"]) <= _DURATION_TOLERANCE_S
              and abs(p95 - stats["p95_s"]) <= _DURATION_TOLERANCE_S)
        checks.append(Check(
            "durations", f"duration {name}",
            f"n={stats['count']} p50={fmt_duration(stats['p50_s'])} "
            f"p95={fmt_duration(stats['p95_s'])}",
            f"n={len(values)} p50={fmt_duration(p50)} p95={fmt_duration(p95)}", ok))
    return checks


def _usage(expected: Mapping[str, Any], observed: Observed) -> list[Check]:
    billing = expected.get("billing", {})
    if observed.usage is None:
        if observed.usage_agent_present:
            return [Check("usage", "usage per tenant", "records in trove.usage",
                          "none from this run", False,
                          ("the worker has a usage stage, but it wrote no trove.usage record "
                           "for this run's tenants",))]
        return [Check("usage", "usage per tenant and flavor", "billed seconds",
                      "usage metering not built yet", None,
                      ("no usage stage in the worker yet: nothing in trove.usage to compare",))]
    checks = []
    want_instances: Mapping[str, Mapping[str, float]] = billing.get("instance_seconds", {})
    tenants = sorted({*want_instances, *observed.usage, *billing.get("volume_gb_seconds", {}),
                      *billing.get("backup_gb_seconds", {}), *billing.get("exists_seconds", {})})
    for tenant in tenants:
        got = observed.usage.get(tenant, UsageTotals())
        want_flavors = want_instances.get(tenant, {})
        for flavor in sorted({*want_flavors, *got.instance_seconds}, key=_flavor_order):
            exp, act = float(want_flavors.get(flavor, 0)), got.instance_seconds.get(flavor, 0.0)
            name = got.flavor_names.get(flavor)
            label = f"{_short(tenant)} instance s, " + \
                (f"{name} ({flavor})" if name else f"flavor {flavor}")
            checks.append(Check("usage", label, _num(exp), _num(act), _close(exp, act)))
        for meter, key, attr in (("volume GB·s", "volume_gb_seconds", "volume_gb_seconds"),
                                 ("backup GB·s", "backup_gb_seconds", "backup_gb_seconds"),
                                 ("exists s", "exists_seconds", "exists_seconds")):
            exp = float(billing.get(key, {}).get(tenant, 0))
            act = float(getattr(got, attr))
            if exp or act:
                checks.append(Check("usage", f"{_short(tenant)} {meter}", _num(exp), _num(act),
                                    _close(exp, act)))
    return checks


def _resources(expected: Mapping[str, Any], observed: Observed) -> Check:
    want = expected.get("resources", {})
    inst = observed.resources.get("instance", {})
    exp = (f"launched {want.get('instances_launched', 0)}, deleted "
           f"{want.get('instances_deleted', 0)}, live {want.get('instances_live_at_horizon', 0)}")
    if not observed.resources:
        return Check("resources", "instances (informational)", exp,
                     "no trove.resources records", None)
    states = ", ".join(f"{status} {n}" for status, n in sorted(inst.items())) or "none"
    return Check("resources", "instances (informational)", exp, states, None)


# ------------------------------------------------------------------------------ rendering


def render(checks: Iterable[Check], *, color: bool = False, title: str = "") -> str:
    checks = list(checks)
    paint = _painter(color)
    width = min(48, max((len(c.label) for c in checks), default=10))
    exp_width = min(30, max((len(c.expected) for c in checks), default=10))
    lines = [title] if title else []
    lines.append(paint(f"    {'':<{width}}  {'expected':<{exp_width}}  pipeline", "2"))
    for check in checks:
        mark = paint(check.mark, {PASS: "32", FAIL: "31;1", SKIP: "33"}[check.mark])
        lines.append(f"  {mark} {check.label:<{width}}  {check.expected:<{exp_width}}  "
                     f"{check.actual}")
        lines.extend(f"      {detail}" for detail in check.details)
    passed = sum(c.ok is True for c in checks)
    failed = sum(c.ok is False for c in checks)
    skipped = sum(c.ok is None for c in checks)
    verdict = paint("all compared totals match", "32;1") if not failed else \
        paint(f"{failed} compared total(s) differ", "31;1")
    lines.append(f"  {passed} ✓  {failed} ✗  {skipped} –   {verdict}")
    return "\n".join(lines)


def _painter(color: bool) -> Any:
    if not color:
        return lambda text, _code: text
    return lambda text, code: f"\x1b[{code}m{text}\x1b[0m"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _num(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _close(expected: float, actual: float) -> bool:
    return abs(expected - actual) <= max(_SECONDS_TOLERANCE, 1e-9 * abs(expected))


def _short(tenant: str) -> str:
    return f"tenant {tenant[:8]}" if tenant and tenant != "?" else "tenant ?"


def _flavor_order(flavor: str) -> tuple[int, str]:
    return (int(flavor), flavor) if flavor.isdigit() else (1 << 30, flavor)


def horizon_of(expected: Mapping[str, Any]) -> tuple[datetime, datetime]:
    """The billed window ``[start, horizon)`` of an expected-totals document."""
    scenario = expected["scenario"]
    return (datetime.fromisoformat(scenario["start"].replace("Z", "+00:00")),
            datetime.fromisoformat(scenario["horizon"].replace("Z", "+00:00")))
