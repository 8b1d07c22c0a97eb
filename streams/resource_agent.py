"""The source agent: every notification once, decoded once, handed to each source handler.

trove.notifications is keyed by resource id (else request id), so everything that is kept per
resource is updated right here, on the partition the record arrived on, with no repartition:

- ``ResourceStateHandler``: ``resource_state.apply`` -> table ``resources`` -> trove.resources
  (when the state changed);
- ``PairingForwarder`` (``streams/pairing_agent.py``): start/end/error events to the pairing
  topic, in batches (point events -- usage audits, quota -- need no pairing and stay here);
- the hook for usage metering (issue #6): a handler calling ``accrual.apply`` per notification.

One agent and one decode per event, whatever the number of handlers: each Faust agent costs
~100 us per event on this machine class (a counting agent tops out near 10k events/s), so
resource state and usage metering share this one instead of consuming the topic twice.

Adding a handler (the usage agent's hook)
-----------------------------------------
Implement ``SourceHandler`` and append an instance to ``source_handlers`` at import time of a
module that ``streams/agents.py`` imports::

    class UsageHandler:
        def handle(self, n: Notification, raw: bytes, partition: int) -> None:
            old = metering.get(n.resource_id)
            step = accrual.apply(old, n, source_clock.now, policy)
            ...  # metering.put(partition, key, step.state); outbox.emit(...) per record

        def on_tick(self, partition: int, event_time: datetime) -> None:
            ...  # accrual.advance() for the keys of `partition` whose hour closed

    source_handlers.append(UsageHandler())

``handle`` runs inside the source agent's event of ``partition`` (a partition of
trove.notifications owned by this worker); write tables with ``StagedTable.put(partition, ...)``
and outputs with ``outbox.emit``. ``on_tick`` is optional: the pairing agent calls it for each
tick it receives on pairing partition ``partition`` -- the same worker owns that partition number
of every topic of the app (one co-partitioned group) -- so a handler can close windows on a
source partition that has gone quiet. ``source_clock.now`` is this worker's event time (the
greatest ``occurred_at`` seen, capped at the wall clock + ``pairing_max_clock_skew_seconds``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import orjson

from streams.app import app, settings
from streams.consumer import lean_events
from streams.tables import outbox, resources, table_json
from streams.topics import APP_ID_HEADER, source_topic
from trovemeter.codec import CodecError, decode, encode, header_for
from trovemeter.model import Notification, ResourceState
from trovemeter.resource_state import EXISTS_EVENT, TRACKED_TYPES, apply, confirmed_row
from trovemeter.watermark import SourceProgress

log = logging.getLogger("trovemeter.streams")


class SourceHandler(Protocol):
    def handle(self, n: Notification, raw: bytes, partition: int) -> None: ...


class EventClock:
    """Event time: the greatest ``occurred_at`` seen, never more than ``max_ahead`` past the
    wall clock (a notification stamped in the future must not expire everything)."""

    def __init__(self, max_ahead: timedelta) -> None:
        self.max_ahead = max_ahead
        self.now: datetime | None = None
        self._limit = datetime.min.replace(tzinfo=UTC)  # a cap read from the wall clock

    def capped(self, moment: datetime) -> datetime:
        # The cap only grows with the wall clock: a moment under an earlier one is under the
        # current one too, so the clock is read only for moments beyond it (rare).
        if moment <= self._limit:
            return moment
        limit = self._limit = datetime.now(UTC) + self.max_ahead
        return moment if moment <= limit else limit

    def observe(self, moment: datetime) -> datetime:
        now = self.now
        if now is None or moment > now:
            now = self.now = self.capped(moment)
        return now


class ReadProgress:
    """How far this worker has read each source partition it owns, counting only events whose
    effects are durable: what its pairing ticks report (``trovemeter.watermark``).

    Only durable progress may be vouched for: after a crash the events past the last durable
    one are read again, and a tick that had vouched for them would have moved event time past
    them already -- their starts would be abandoned on replay. So each tick takes a *mark*
    (last offset read, event time read through) per partition, and reports the newest mark
    at or below the partition's durable offset (``Outbox.durable_offsets``)."""

    def __init__(self) -> None:
        self.owned: set[int] = set()
        self._read_through: dict[int, datetime] = {}
        self._offsets: dict[int, int] = {}  # partition -> last offset read
        self._marks: dict[int, list[tuple[int, datetime | None]]] = {}  # oldest first
        self._log_ends: dict[int, int] = {}  # the broker's log end at the last tick

    def last_offset(self, partition: int) -> int | None:
        return self._offsets.get(partition)

    def log_end(self, partition: int) -> int | None:
        """The partition's log end as the broker gave it for the last tick (None: unknown)."""
        return self._log_ends.get(partition)

    def read(self, partition: int, offset: int, moment: datetime | None) -> None:
        self._offsets[partition] = offset
        if moment is not None:
            current = self._read_through.get(partition)
            if current is None or moment > current:
                self._read_through[partition] = moment

    def reports(self, log_end: Callable[[int], int | None],
                committed: Callable[[int], int | None],
                durable: Callable[[int], int | None]) -> list[SourceProgress]:
        """One report per owned partition: caught up when the next offset after the durable
        one is the partition's log end (None: unknown, so behind)."""
        reports = []
        for partition in sorted(self.owned):
            marks = self._marks.setdefault(partition, [])
            last = self._offsets.get(partition)
            if last is not None and (not marks or marks[-1][0] != last):
                marks.append((last, self._read_through.get(partition)))
            done = durable(partition)
            read_through = None
            if done is not None:
                vouched = [i for i, (offset, _) in enumerate(marks) if offset <= done]
                if vouched:
                    del marks[:vouched[-1]]  # older marks are superseded
                    read_through = marks[0][1]
            end = log_end(partition)
            if end is None:
                self._log_ends.pop(partition, None)
            else:
                self._log_ends[partition] = end
            position = done + 1 if done is not None else committed(partition) or 0
            reports.append(SourceProgress(partition, read_through,
                                          end is not None and position >= end))
        return reports

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._read_through.pop(partition, None)
            self._offsets.pop(partition, None)
            self._marks.pop(partition, None)
            self._log_ends.pop(partition, None)


source_clock = EventClock(timedelta(seconds=settings.pairing_max_clock_skew_seconds))
read_progress = ReadProgress()
RESOURCE_STATE_HEADER = header_for(ResourceState)


class ResourceStateHandler:
    """Table ``resources`` and trove.resources (compacted, keyed by resource id)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._tenants: dict[str, set[str]] | None = None  # tenant -> resource ids (lazy)

    def handle(self, n: Notification, raw: bytes, partition: int) -> None:
        rid = n.resource_id
        if rid is None or n.resource_type not in TRACKED_TYPES:
            return
        if n.event_type == EXISTS_EVENT:  # mostly a confirming audit: ``confirmed_row``
            stored = resources.stored(rid)
            if type(stored) is bytes:
                row = orjson.loads(stored)
                confirmed = confirmed_row(row, n) if type(row) is list else None
                if confirmed is not None:
                    if confirmed is not row:  # only report times moved: no new state to send
                        resources.put(partition, rid, table_json(confirmed))
                    return
        old = resources.get(rid)
        new = apply(old, n)
        if new is old or new is None:
            return
        resources.put(partition, rid, new)
        state = new.state
        # ``apply`` keeps the state object when only report times moved (a confirming audit).
        if old is None or (state is not old.state and state != old.state):
            outbox.emit(self.topic, encode(state), rid, headers=[RESOURCE_STATE_HEADER, APP_ID_HEADER])
        tenants = self._tenants
        if tenants is not None and state.tenant_id and (
                old is None or old.state.tenant_id != state.tenant_id):
            tenants.setdefault(state.tenant_id, set()).add(rid)
            if old is not None and old.state.tenant_id:
                tenants.get(old.state.tenant_id, set()).discard(rid)

    def tenant_resources(self, tenant_id: str) -> list[ResourceState]:
        """The states of ``tenant_id``'s resources held here (index built on first use)."""
        if self._tenants is None:
            index: dict[str, set[str]] = {}
            for rid, tracked in resources.local_items():
                if tracked.state.tenant_id:
                    index.setdefault(tracked.state.tenant_id, set()).add(rid)
            self._tenants = index
        states = []
        for rid in sorted(self._tenants.get(tenant_id, ())):
            tracked = resources.get(rid)
            if tracked is not None and tracked.state.tenant_id == tenant_id:
                states.append(tracked.state)
        return states

    def forget_index(self) -> None:
        """After a rebalance: rebuild the tenant index on next use."""
        self._tenants = None


resource_state = ResourceStateHandler(settings.resources_topic)
# Called in order for every decoded notification; see "Adding a handler" above.
source_handlers: list[SourceHandler] = [resource_state]


def process(raw: bytes, partition: int, offset: int) -> None:
    """One record of trove.notifications: decoded once, handed to every source handler (the
    agent's per-event work; bench/profile_worker.py calls it without Faust)."""
    try:
        n = decode(raw)
    except CodecError as exc:
        # Not ours to repair: the shovel dead-letters what it cannot parse, so this is a
        # foreign or corrupt record. Skipped (and counted), never a crash loop.
        outbox.stats["undecodable"] += 1
        log.warning("skipping undecodable record %s[%s]@%s: %s", settings.source_topic,
                    partition, offset, exc)
        read_progress.read(partition, offset, None)
        return
    if not isinstance(n, Notification):
        outbox.stats["not_a_notification"] += 1
        read_progress.read(partition, offset, None)
        return
    read_progress.read(partition, offset, n.occurred_at)
    source_clock.observe(n.occurred_at)
    for handler in source_handlers:
        try:
            handler.handle(n, raw, partition)
        except Exception:  # noqa: BLE001 - one bad event must not stop every other one
            # A bug or an input the pure core cannot take: logged with what identifies the
            # record, counted (/status/), and the other handlers still run. Raising would
            # make Faust restart the agent and ack the event anyway.
            outbox.stats["handler_errors"] += 1
            log.exception("%s failed on %s (message %s, %s[%s]@%s)",
                          type(handler).__name__, n.event_type, n.message_id,
                          settings.source_topic, partition, offset)


@app.agent(source_topic, concurrency=1)
async def notifications(stream: Any) -> None:
    """trove.notifications -> every source handler."""
    processed = outbox.processed
    # Unacknowledged: the outbox acknowledges an event once what it caused is durable.
    # (lean_events: ``stream.noack().events()`` without Faust's per-event stream work.)
    async for event in lean_events(stream):
        processed(event)  # (effects below join the current epoch before it can close)
        message = event.message
        process(event.value, message.partition, message.offset)
