"""``/usage/tenants/{tenant_id}/?start=ISO&end=ISO``: a tenant's usage over a period (issue #6).

Covers the hours that *start* within [start, end) (default: the last 24 hours) and have closed
(their records are on trove.usage). The answer::

    {"tenant_id": "...", "start": "...", "end": "...",
     "meters": [{"meter": "instance.seconds", "unit": "s", "flavor_id": "2",
                 "flavor_name": "m1.small", "quantity": 86400.0}, ...],
     "resources": [{"resource_id": "...", "resource_type": "instance",
                    "meter": "instance.seconds", "unit": "s", "flavor_id": "2",
                    "flavor_name": "m1.small", "quantity": 43200.0, "hours": 12}, ...],
     "unattributed": [], "complete_from": "...", "closed_through": "...",
     "workers": ["http://127.0.0.1:6066"], "partial": false, "unreachable": []}

- ``meters``: the sum of the latest version of every record of the tenant, per meter (and
  flavor, for instance.seconds), from table ``usage_ledger`` (``trovemeter/usage_ledger.py``),
  which keeps the newest ``usage_view_hours`` hours: ``complete_from`` says from which hour on
  it holds every hour.
- ``resources``: per resource, meter and flavor, computed from the accrual states the workers
  hold (``streams/usage_agent.records_between``): live resources, and finished ones within the
  correction retention. ``unattributed``: what the meters hold beyond the resource lines
  (resources forgotten since, audits of frozen hours).
- ``closed_through``: hours starting at or after it are not closed on every partition yet.

A tenant's resources are spread over every partition, so the view asks every worker for its
part (``?scope=local``) and sums, as the other list views do (``streams/web.py``). The ledger
is at-least-once: a worker killed while writing a checkpoint may count a record twice in it
after the replay (trove.usage itself is exact: same record id and version).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.app import app
from streams.usage_agent import policy, records_between, usage
from streams.web import _gather, _json
from trovemeter.usage_ledger import HOUR_US, UNITS, merge_parts, to_us, view_part

MAX_PERIOD = timedelta(days=31)
DEFAULT_PERIOD = timedelta(hours=24)


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text.strip().replace(" ", "+"))  # '+' arrives as ' '
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _hour_ceil(us: int) -> int:
    return -(-us // HOUR_US) * HOUR_US


def period(query: dict[str, str], now: datetime | None = None) -> tuple[int, int]:
    """(first hour, end) in microseconds: the hours starting within [start, end). ValueError
    for an unreadable or inverted period, or one longer than ``MAX_PERIOD``."""
    end = _moment(query["end"]) if query.get("end") else (now or datetime.now(UTC))
    start = _moment(query["start"]) if query.get("start") else end - DEFAULT_PERIOD
    if end < start:
        raise ValueError("end is before start")
    if end - start > MAX_PERIOD:
        raise ValueError(f"the period is longer than {MAX_PERIOD.days} days")
    return _hour_ceil(to_us(start)), _hour_ceil(to_us(end))


async def local_usage(tenant_id: str, start_us: int, end_us: int) -> dict[str, Any]:
    """This worker's part: its ledgers' totals and its resources' lines."""
    lines: dict[tuple[str, str, str], dict[str, Any]] = {}
    for count, (key, state) in enumerate(usage.tenant_resources(tenant_id), 1):
        through = min(end_us, state.emitted_through or start_us)
        for record in records_between(state, start_us, through, policy):
            flavor = record.flavor_id or ""
            line = lines.get((key, record.meter, flavor))
            if line is None:
                line = lines[(key, record.meter, flavor)] = {
                    "resource_id": key, "resource_type": record.resource_type.value,
                    "meter": record.meter, "unit": UNITS.get(record.meter, record.unit),
                    "quantity": 0.0, "hours": 0}
                if flavor:
                    line.update(flavor_id=flavor, flavor_name=record.flavor_name)
            line["quantity"] += record.quantity
            line["hours"] += 1
        if count % 200 == 0:
            await asyncio.sleep(0)  # a large tenant: let the agents run meanwhile
    closed = usage.closed_through()
    return view_part(usage.ledgers(tenant_id), [v for v in lines.values() if v["quantity"]],
                     start_us, end_us, min(closed.values()) if closed else None,
                     usage.view_hours)


@app.page("/usage/tenants/{tenant_id}/")
async def tenant_usage_view(self: Any, request: Any, tenant_id: str) -> Any:
    query = dict(request.query)
    try:
        start_us, end_us = period(query)
    except (ValueError, TypeError) as exc:
        return _json(self, {"error": f"bad period: {exc}", "expected":
                            "?start=<ISO 8601>&end=<ISO 8601>"}, status=400)
    mine = await local_usage(tenant_id, start_us, end_us)
    if query.get("scope") == "local":
        return _json(self, mine)
    parts, answered, failed = await _gather(request.path, query, mine)
    answer = merge_parts(tenant_id, start_us, end_us, parts)
    answer.update(workers=answered, partial=bool(failed), unreachable=failed)
    return _json(self, answer)
