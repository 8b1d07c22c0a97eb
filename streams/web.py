"""JSON views on the worker's web server (``web_host``:``web_port``, 127.0.0.1:6066 by default).

| path | answers |
|---|---|
| ``/operations/open/?tenant=&operation=&resource_type=&limit=`` | operations started (or ended) and not yet reported |
| ``/operations/recent/?tenant=&operation=&outcome=&resource_type=&limit=`` | the last finished operations, newest first |
| ``/errors/?tenant=&operation=&resource_type=&exception_class=`` | failure counts: total and per hour |
| ``/resources/{resource_id}/`` | one resource's state (404 if unknown) |
| ``/tenants/{tenant_id}/resources/`` | a tenant's resources |
| ``/status/`` | this worker: assignment, recovery, event time, outbox counters |
| ``/usage/tenants/{tenant_id}/?start=&end=`` | a tenant's usage over a period (streams/usage_web.py) |

Datetimes are ISO 8601 (UTC). Nothing from notification payloads is served beyond the fields of
the output records (payloads are redacted anyway).

Several workers
---------------
Each worker holds the partitions it owns. A list view asks every worker of the group for its
part (``?scope=local``, over HTTP, concurrently, ``web_fanout_timeout_seconds``) and merges; an
answer with ``"partial": true`` names the workers that did not reply. The workers' URLs come
from Faust's assignment (``app.assignor.tables_metadata()``: each member's ``canonical_url``,
which ``streams/app.py`` sets to the address the web server binds).

Keyed lookups are routed explicitly rather than with ``@app.table_route``, which derives the
owner from Faust's partitioner over the table's JSON-serialised key: it can disagree with where
the key really is (trove.notifications is partitioned by the shovel's producer, over the raw key)
and then answers from the wrong worker -- one way to get the defaults of faust #187/#514. Here:

``/resources/{id}/`` answers from the local table if the key is here, else asks every other
worker's ``?scope=local`` part: only the owner holds the key (revoked partitions' keys are
dropped at each rebalance, ``streams/agents.py``), so the answer always comes from the owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

from streams.agents import resource_state, shell, usage
from streams.app import app, settings
from streams.pairing_agent import policy
from streams.resource_agent import source_clock
from streams.tables import (
    STAGED_TABLES,
    error_counts,
    open_operations,
    outbox,
    recent_operations,
    resources,
)
from trovemeter.pairing import OpenOperation, deadline

log = logging.getLogger("trovemeter.web")

DEFAULT_LIMIT = 100
MAX_LIMIT = 5000


# ------------------------------------------------------------------ what each worker holds


def _limit(query: Mapping[str, str], default: int = DEFAULT_LIMIT) -> int:
    try:
        return max(1, min(MAX_LIMIT, int(query.get("limit", default))))
    except ValueError:
        return default


def _matches(item: Mapping[str, Any], query: Mapping[str, str], fields: Iterable[str]) -> bool:
    for field in fields:
        wanted = query.get(field)
        if wanted and str(item.get("tenant_id" if field == "tenant" else field)) != wanted:
            return False
    return True


def open_view(state: OpenOperation) -> dict[str, Any] | None:
    """An open operation as served; None for a tombstone (already reported)."""
    held = [s for s in (state.start, state.end, state.error, *state.pending) if s is not None]
    if not held:
        return None

    def first(name: str) -> Any:
        return next((v for s in held if (v := getattr(s, name)) is not None), None)

    earliest = min(s.occurred_at for s in held)
    try:
        due: datetime | None = deadline(state, policy)
    except ValueError:
        due = None
    return {
        "join_key": state.join_key,
        "resource_type": state.resource_type.value,
        "operation": state.operation,
        "request_id": state.request_id,
        "resource_id": first("resource_id"),
        "tenant_id": first("tenant_id"),
        "user_id": first("user_id"),
        "started_at": state.start.occurred_at.isoformat() if state.start else None,
        "first_event_at": earliest.isoformat(),
        "has_start": state.start is not None,
        "has_end": state.end is not None,
        "has_error": state.error is not None,
        "pending_events": len(state.pending),
        "decided_after": due.isoformat() if due else None,  # event time
    }


def local_open(query: Mapping[str, str]) -> list[dict[str, Any]]:
    request_id = query.get("request_id")
    items = []
    for key, state in open_operations.local_items():
        if request_id and state.request_id != request_id:
            continue
        view = open_view(state)
        if view is not None and _matches(view, query, ("tenant", "operation", "resource_type")):
            items.append(view)
    return items


def local_recent(query: Mapping[str, str]) -> list[dict[str, Any]]:
    items = []
    for _, chunk in recent_operations.local_items():
        for operation in chunk["ops"]:
            if _matches(operation, query, ("tenant", "operation", "outcome", "resource_type")):
                items.append({k: v for k, v in operation.items() if v is not None})
    return items


def local_errors(query: Mapping[str, str]) -> list[dict[str, Any]]:
    items = []
    for key, counts in error_counts.local_items():
        tenant, resource_type, operation, exception_class = key.split("|", 3)
        item = {"tenant_id": tenant, "resource_type": resource_type, "operation": operation,
                "exception_class": exception_class, "total": counts.total,
                "hourly": dict(sorted(counts.hourly.items()))}
        if _matches(item, query, ("tenant", "operation", "resource_type", "exception_class")):
            items.append(item)
    return items


def local_resource(resource_id: str) -> dict[str, Any] | None:
    tracked = resources.get(resource_id)
    return None if tracked is None else orjson.loads(orjson.dumps(tracked.state))


def local_tenant_resources(tenant_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(orjson.dumps(state))
            for state in resource_state.tenant_resources(tenant_id)]


def local_status() -> dict[str, Any]:
    assignment: dict[str, list[int]] = {}
    try:
        for tp in app.assignor.assigned_actives():
            assignment.setdefault(tp.topic, []).append(tp.partition)
    except Exception:  # noqa: BLE001 - before the first assignment
        pass
    try:
        recovered = app.tables.recovery.completed.is_set()
    except Exception:  # noqa: BLE001
        recovered = False
    return {
        "app_id": settings.app_id,
        "url": str(app.conf.canonical_url),
        "assignment": {topic: sorted(ps) for topic, ps in sorted(assignment.items())},
        "recovered": recovered,
        "source_event_time": source_clock.now.isoformat() if source_clock.now else None,
        "pairing_event_time": {str(p): t.isoformat() for p, t in sorted(shell.event_time.items())},
        # Source partitions holding each pairing partition's event time back (trovemeter.watermark).
        "pairing_held_back_by": {str(p): w.behind() for p, w in sorted(shell.watermarks.items())},
        "tables": {table.name: len(table) for table in STAGED_TABLES},
        "usage": usage.snapshot(),
        "outbox": outbox.snapshot(),
    }


# ------------------------------------------------------------------ the group


def _own_url() -> str:
    return str(app.conf.canonical_url).rstrip("/")


def other_workers() -> list[str]:
    """The other members' URLs, from Faust's assignment."""
    try:
        urls = {str(url).rstrip("/") for url in app.assignor.tables_metadata()}
    except Exception:  # noqa: BLE001 - no assignment yet
        return []
    urls.discard(_own_url())
    return sorted(urls)


async def _fetch(url: str, path: str, query: Mapping[str, str]) -> Any:
    import aiohttp

    params = {**query, "scope": "local"}
    timeout = aiohttp.ClientTimeout(total=settings.web_fanout_timeout_seconds)
    async with app.http_client.get(f"{url}{path}", params=params, timeout=timeout) as response:
        if response.status == 404:
            return None
        response.raise_for_status()
        return await response.json(content_type=None)


async def _gather(path: str, query: Mapping[str, str], local: Any,
                  urls: list[str] | None = None) -> tuple[list[Any], list[str], list[str]]:
    """(parts, workers that answered, workers that did not)."""
    urls = other_workers() if urls is None else urls
    results = await asyncio.gather(*(_fetch(url, path, query) for url in urls),
                                   return_exceptions=True)
    parts, answered, failed = [local], [_own_url()], []
    for url, result in zip(urls, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("view %s: worker %s did not answer: %r", path, url, result)
            failed.append(url)
        else:
            parts.append(result)
            answered.append(url)
    return parts, answered, failed


def _json(view: Any, payload: Any, status: int = 200) -> Any:
    return view.bytes(orjson.dumps(payload), content_type="application/json", status=status)


async def _list_view(view: Any, request: Any, name: str, local: Callable[[Mapping[str, str]],
                     list[dict[str, Any]]], sort: Callable[[list[dict[str, Any]]], None],
                     dedupe: str | None = None, limit_default: int = DEFAULT_LIMIT) -> Any:
    query = dict(request.query)
    mine = local(query)
    if query.get("scope") == "local":
        return _json(view, {name: mine})
    parts, answered, failed = await _gather(request.path, query, mine)
    items: list[dict[str, Any]] = []
    for part in parts:
        items.extend((part or {}).get(name, []) if isinstance(part, dict) else part)
    if dedupe:
        unique: dict[Any, dict[str, Any]] = {}
        for item in items:
            unique.setdefault(item.get(dedupe), item)
        items = list(unique.values())
    sort(items)
    total = len(items)
    items = items[:_limit(query, limit_default)]
    return _json(view, {name: items, "count": total, "returned": len(items),
                        "workers": answered, "partial": bool(failed), "unreachable": failed})


# ------------------------------------------------------------------ the views


@app.page("/operations/open/")
async def open_operations_view(self: Any, request: Any) -> Any:
    return await _list_view(
        self, request, "operations", local_open,
        sort=lambda items: items.sort(key=lambda i: (i["first_event_at"], i["join_key"])))


@app.page("/operations/recent/")
async def recent_operations_view(self: Any, request: Any) -> Any:
    def newest_first(items: list[dict[str, Any]]) -> None:
        items.sort(key=lambda i: (i.get("ended_at") or i.get("started_at") or "",
                                  i["record_id"]), reverse=True)

    return await _list_view(self, request, "operations", local_recent, sort=newest_first,
                            dedupe="record_id", limit_default=50)


@app.page("/errors/")
async def errors_view(self: Any, request: Any) -> Any:
    def by_total(items: list[dict[str, Any]]) -> None:
        items.sort(key=lambda i: (-i["total"], i["tenant_id"], i["resource_type"],
                                  i["operation"], i["exception_class"]))

    return await _list_view(self, request, "errors", local_errors, sort=by_total)


@app.page("/resources/{resource_id}/")
async def resource_view(self: Any, request: Any, resource_id: str) -> Any:
    state = local_resource(resource_id)
    if state is not None:
        return _json(self, {"resource": state, "served_by": _own_url()})
    if request.query.get("scope") == "local":
        return _json(self, {"error": "not found", "resource_id": resource_id}, status=404)
    for url in other_workers():
        try:
            answer = await _fetch(url, request.path, {})
        except Exception as exc:  # noqa: BLE001 - try the others
            log.warning("view %s: worker %s did not answer: %r", request.path, url, exc)
            continue
        if answer is not None:
            return _json(self, answer)
    return _json(self, {"error": "not found", "resource_id": resource_id}, status=404)


@app.page("/tenants/{tenant_id}/resources/")
async def tenant_resources_view(self: Any, request: Any, tenant_id: str) -> Any:
    return await _list_view(
        self, request, "resources", lambda query: local_tenant_resources(tenant_id),
        sort=lambda items: items.sort(key=lambda i: (i["resource_type"], i["resource_id"])),
        dedupe="resource_id", limit_default=MAX_LIMIT)


@app.page("/status/")
async def status_view(self: Any, request: Any) -> Any:
    return _json(self, local_status())
