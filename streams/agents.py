"""The worker's agents, and how they are tied to Faust's lifecycle.

Agents (each ``concurrency=1``: they own tables, and Faust's offset tracking with concurrent
actors commits across gaps, faust-pitfalls #606/#312):

| agent | reads | keyed by | writes |
|---|---|---|---|
| ``notifications`` (streams/resource_agent.py) | trove.notifications | resource id (shovel) | table resources, trove.resources, batches to ``<app id>-pairing``; usage (streams/usage_agent.py): tables metering, usage_clock, usage_ledger, trove.usage, trove.usage.discrepancies |
| ``pairing`` (streams/pairing_agent.py) | ``<app id>-pairing`` | join key (``pairing_partition``) | tables open_operations, recent_operations, trove.operations, trove.errors |
| ``count_errors`` (streams/error_agent.py) | trove.errors | tenant id | table error_counts |

Timers: ``send_ticks`` (this worker's progress on its source partitions to every pairing
partition: their event time), ``checkpoint`` (staged table changes to their changelogs once the
outputs they caused are confirmed). Task: ``sweep_in_slices`` (streams/usage_agent.py: a closed
hour's sweep of a partition's keys, in slices between events).

Lifecycle (the outbox's guarantees depend on these, see streams/outbox.py):

- the agents read with ``noack()`` and hand every event to the outbox, which acknowledges it
  once its outputs and table changes are durable: Faust's periodic commit covers only those;
  when Faust stops the flow (revocation, shutdown) and waits for every event in flight, the
  commit hook makes everything durable at once (``CheckpointOnCommit``);
- on partition revocation (Faust has waited for the agents to finish their current event):
  pending usage sweeps are dropped (swept again on first sight), then ``checkpoint_sync()``, so
  the next owner recovers everything written here;
- on assignment: the keys of partitions that really left are dropped from the local stores
  (Faust's rebalances are eager: every partition is "revoked" and most come straight back);
- after recovery: each table learns its keys' partitions; the pairing deadlines are rebuilt;
- at start-up: trove.notifications and trove.errors must have ``topic_partitions`` partitions
  (one co-partitioned group: a worker owns partition *p* of every topic and table of the app);
- at shutdown: a last ``checkpoint_sync()``.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import faust

from streams.app import app, settings
from streams.error_agent import count_errors
from streams.pairing_agent import forwarder, pairing, recent, shell
from streams.resource_agent import notifications, read_progress, resource_state
from streams.usage_agent import usage
from streams.tables import (
    STAGED_TABLES,
    error_counts,
    metering,
    open_operations,
    outbox,
    recent_operations,
    resources,
    usage_clock,
    usage_ledger,
)
from streams.topics import PAIRING_TOPIC

log = logging.getLogger("trovemeter.streams")

__all__ = ["count_errors", "notifications", "pairing"]

# Which topic's partitions a table's keys follow (besides its own changelog).
_TABLE_SOURCE = {
    resources.name: settings.source_topic,
    open_operations.name: PAIRING_TOPIC,
    recent_operations.name: PAIRING_TOPIC,
    error_counts.name: settings.errors_topic,
    metering.name: settings.source_topic,
    usage_clock.name: settings.source_topic,
    usage_ledger.name: settings.source_topic,
}


class CheckpointOnCommit(faust.Sensor):  # type: ignore[misc]
    """Faust's offset commits meet the outbox here (``on_commit_initiated`` runs before Faust
    picks the offsets to commit). While events flow: acknowledge what is durable already, never
    wait. When the flow is stopped -- a revocation or shutdown, where Faust's ``wait_empty``
    commits in a loop until every event in flight is acknowledged -- make everything durable and
    acknowledge it, blocking: nothing is being processed then."""

    def on_commit_initiated(self, consumer: Any) -> Any:
        if consumer.flow_active:
            outbox.drain()
        else:
            outbox.checkpoint_sync()
        return None


app.sensors.add(CheckpointOnCommit())


@app.timer(interval=settings.checkpoint_interval_seconds)
async def checkpoint() -> None:
    await outbox.checkpoint()


_assignment: set[Any] = set()


@app.task
async def settle_heap() -> None:
    """Once the tables are recovered: collect, then keep every object alive now (Faust, mode,
    aiokafka, modules, the recovered tables) out of later collections (``gc.freeze``). A full
    collection otherwise re-scans them all: 37-52 ms pauses in the worker, measured with
    bench_latency at 1k msg/s -- most of its p99 over 50 ms. Frozen objects freed by reference
    counting are still freed; only a cycle among them would be kept."""
    await app.tables.recovery.completed.wait()
    gc.collect()
    gc.freeze()
    log.info("heap settled: %d objects kept out of garbage collection", gc.get_freeze_count())


@app.on_partitions_revoked.connect
async def _flush_before_revocation(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
    forwarder.owned.clear()  # until the new assignment is known, every phased event is forwarded
    usage.drop_sweeps({tp.partition for tp in revoked if tp.topic == settings.source_topic})
    outbox.checkpoint_sync()


@app.on_partitions_assigned.connect
async def _drop_revoked(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
    gone = _assignment - set(assigned)
    _assignment.clear()
    _assignment.update(assigned)
    forwarder.owned = {tp.partition for tp in assigned if tp.topic == PAIRING_TOPIC}
    read_progress.owned = {tp.partition for tp in assigned if tp.topic == settings.source_topic}
    read_progress.forget({tp.partition for tp in gone if tp.topic == settings.source_topic})
    if not gone:
        return
    for table in STAGED_TABLES:
        topics = {table.changelog_topic_name, _TABLE_SOURCE[table.name]}
        partitions = {tp.partition for tp in gone if tp.topic in topics}
        dropped = table.drop_partitions(partitions)
        if dropped:
            log.info("table %s: dropped %d keys of partitions %s (reassigned)", table.name,
                     dropped, sorted(partitions))
    shell.forget({tp.partition for tp in gone if tp.topic == PAIRING_TOPIC})
    recent.forget({tp.partition for tp in gone if tp.topic == PAIRING_TOPIC})
    resource_state.forget_index()
    usage.forget({tp.partition for tp in gone if tp.topic == settings.source_topic})


def _on_recover(table: Any) -> Any:
    async def recovered() -> None:
        table.on_recovered()
        if table is open_operations:
            shell.rebuild()
        elif table is recent_operations:
            recent.forget()
        elif table is resources:
            resource_state.forget_index()
        elif table is metering:
            usage.forget_index()

    return recovered


for _table in STAGED_TABLES:
    _table.table.on_recover(_on_recover(_table))


@app.task
async def _check_partitions() -> None:
    """Refuse to run when the topics cannot be co-partitioned (see the module docstring)."""
    from confluent_kafka.admin import AdminClient

    import asyncio

    def counts() -> dict[str, int]:
        admin = AdminClient(settings.kafka_client_config())
        metadata = admin.list_topics(timeout=30)
        return {name: len(metadata.topics[name].partitions)
                for name in (settings.source_topic, settings.errors_topic)
                if name in metadata.topics}

    found = await asyncio.get_running_loop().run_in_executor(None, counts)
    wrong = {name: n for name, n in found.items() if n != settings.topic_partitions}
    if wrong:
        message = (f"topics {wrong} must have TROVEMETER_TOPIC_PARTITIONS="
                   f"{settings.topic_partitions} partitions (one co-partitioned group)")
        log.error(message)
        await app.crash(RuntimeError(message))


@app.service
class _FinalCheckpoint(faust.Service):  # type: ignore[misc]
    """Flushes everything once more when the worker stops."""

    async def on_stop(self) -> None:
        try:
            outbox.checkpoint_sync()
        except Exception:  # noqa: BLE001 - logged; offsets were not committed past it
            log.exception("final checkpoint failed")
