"""Per-tenant usage totals for the worker's ``/usage/tenants/{tenant_id}/`` view (issue #6).

Pure: no Faust, no Kafka. The worker (``streams/usage_agent.py``) keeps one ``TenantLedger`` per
tenant and source partition in table ``usage_ledger``: for each hour, the sum of the *latest
version* of every usage record of that tenant per meter and flavor (``line_of``). A record's
first version adds its quantity; a correction adds the difference to the version it replaces.
Only the last ``keep_hours`` hours are kept, so a ledger is bounded by hours x meters x flavors,
whatever the number of resources (per-resource lines come from the accrual states instead).

``view_part`` builds one worker's part of the view; ``merge_parts`` sums the parts of every
worker into the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

HOUR_US = 3600 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# meter -> unit (trovemeter.accrual.METERS), for the answer
UNITS = {"instance.seconds": "s", "volume.gb_seconds": "GB*s", "backup.gb_seconds": "GB*s",
         "instance.exists.seconds": "s"}


def line_of(meter: str, flavor_id: str | None) -> str:
    """A ledger line: ``meter|flavor`` (the flavor only splits instance.seconds)."""
    return f"{meter}|{flavor_id or ''}"


def iso(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).isoformat()


def to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


class TenantLedger:
    """One tenant's hourly totals on one source partition: ``hours`` {hour start (us):
    {line: quantity}} and the flavor names seen (``names``). Mutable: the worker updates it in
    place and stages it; it is serialised when its changelog record is written."""

    __slots__ = ("hours", "names")

    def __init__(self, hours: dict[int, dict[str, float]] | None = None,
                 names: dict[str, str] | None = None) -> None:
        self.hours: dict[int, dict[str, float]] = hours if hours is not None else {}
        self.names: dict[str, str] = names if names is not None else {}

    def to_bytes(self) -> bytes:
        return orjson.dumps({"h": self.hours, "n": self.names}, option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> TenantLedger:
        data = orjson.loads(raw)
        return cls({int(h): lines for h, lines in data.get("h", {}).items()},
                   data.get("n", {}))

    def add(self, hour: int, line: str, delta: float, keep_hours: int) -> bool:
        """Add ``delta`` to ``line`` of ``hour``; False (nothing done) when the hour is older
        than the ``keep_hours`` newest ones. A new hour pushes out those beyond ``keep_hours``."""
        lines = self.hours.get(hour)
        if lines is None:
            newest = max(self.hours, default=hour)
            horizon = max(newest, hour) - keep_hours * HOUR_US
            if hour <= horizon:
                return False
            for old in [h for h in self.hours if h <= horizon]:
                del self.hours[old]
            lines = self.hours[hour] = {}
        lines[line] = lines.get(line, 0.0) + delta
        return True

    def totals(self, start_us: int, end_us: int) -> dict[str, float]:
        """Sum of each line over the hours starting in [start_us, end_us)."""
        out: dict[str, float] = {}
        for hour, lines in self.hours.items():
            if start_us <= hour < end_us:
                for line, quantity in lines.items():
                    out[line] = out.get(line, 0.0) + quantity
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TenantLedger) and (self.hours, self.names) == (
            other.hours, other.names)

    def __repr__(self) -> str:
        return f"TenantLedger(hours={self.hours!r}, names={self.names!r})"


def view_part(ledgers: Iterable[TenantLedger], lines: Iterable[Mapping[str, Any]],
              start_us: int, end_us: int, closed_through: int | None,
              keep_hours: int) -> dict[str, Any]:
    """One worker's part of a tenant's usage in [start_us, end_us): totals by line from its
    ledgers, the per-resource lines it computed, and from which hour on its ledgers hold every
    hour (a ledger keeps the ``keep_hours`` hours up to its newest)."""
    totals: dict[str, float] = {}
    names: dict[str, str] = {}
    complete_from: int | None = None
    for ledger in ledgers:
        for line, quantity in ledger.totals(start_us, end_us).items():
            totals[line] = totals.get(line, 0.0) + quantity
        names.update(ledger.names)
        if ledger.hours:
            bound = max(ledger.hours) - (keep_hours - 1) * HOUR_US
            complete_from = bound if complete_from is None else max(complete_from, bound)
    return {"totals": totals, "names": names, "resources": list(lines),
            "complete_from": None if complete_from is None else iso(complete_from),
            "closed_through": None if closed_through is None else iso(closed_through)}


def merge_parts(tenant_id: str, start_us: int, end_us: int,
                parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The view's answer from every worker's ``view_part``: meters summed, resources listed
    once (a resource lives on one worker), ``unattributed`` = totals the per-resource lines do
    not account for (resources whose state is gone: finished beyond the correction retention,
    or audits of hours frozen since)."""
    totals: dict[str, float] = {}
    names: dict[str, str] = {}
    resources: dict[tuple[str, str, str], dict[str, Any]] = {}
    complete_from: list[str] = []
    closed: list[str] = []
    for part in parts:
        if not part:
            continue
        for line, quantity in part.get("totals", {}).items():
            totals[line] = totals.get(line, 0.0) + quantity
        names.update(part.get("names", {}))
        for item in part.get("resources", []):
            resources.setdefault((item["resource_id"], item["meter"], item.get("flavor_id") or ""),
                                 item)
        if part.get("complete_from"):
            complete_from.append(part["complete_from"])
        if part.get("closed_through"):
            closed.append(part["closed_through"])
    meters = []
    attributed: dict[str, float] = {}
    for item in resources.values():
        line = line_of(item["meter"], item.get("flavor_id"))
        attributed[line] = attributed.get(line, 0.0) + item["quantity"]
    unattributed = []
    for line in sorted(totals):
        meter, _, flavor = line.partition("|")
        row: dict[str, Any] = {"meter": meter, "unit": UNITS.get(meter, "")}
        if flavor:
            row.update(flavor_id=flavor, flavor_name=names.get(flavor))
        quantity = totals[line]
        if not quantity:
            continue
        meters.append({**row, "quantity": quantity})
        missing = quantity - attributed.get(line, 0.0)
        if abs(missing) > 1e-6 * max(1.0, abs(quantity)):
            unattributed.append({**row, "quantity": missing})
    return {
        "tenant_id": tenant_id,
        "start": iso(start_us),
        "end": iso(end_us),
        "meters": meters,
        "resources": sorted(resources.values(), key=lambda i: (
            i["resource_type"], i["resource_id"], i["meter"], i.get("flavor_id") or "")),
        "unattributed": unattributed,
        # The totals hold every hour from here on; earlier ones may have been dropped (the
        # ledgers keep the newest usage_view_hours hours). ISO strings of one format: max works.
        "complete_from": max(complete_from) if complete_from else None,
        # Hours starting at or after this have not closed on every partition yet.
        "closed_through": min(closed) if closed else None,
    }
