"""The worker's tables: changelog-backed Faust tables, written through the outbox.

| table | key | value | written by |
|---|---|---|---|
| ``resources`` | resource id | ``TrackedResource`` | source agent (partition of trove.notifications) |
| ``open_operations`` | join key (``pairing.join_key``) | ``OpenOperation`` | pairing agent |
| ``recent_operations`` | ``<partition>:<chunk>`` | up to 25 finished operations (a ring) | pairing agent |
| ``error_counts`` | ``FailureKey.table_key`` | ``ErrorCounts`` | error agent (trove.errors) |
| ``metering`` | resource id (instance, backup) | accrual state, compact JSON bytes | source agent (``streams/usage_agent.py``) |
| ``usage_clock`` | source partition number | usage watermark of the partition (us) | source agent, pairing ticks |
| ``usage_ledger`` | ``<tenant id>|<source partition>`` | ``TenantLedger`` (hourly usage totals) | source agent, pairing ticks |

Each is a Faust ``Table`` (so Faust creates its compacted changelog topic
``<app id>-<name>-changelog``, assigns its partitions with the agent's and recovers it after a
restart or a rebalance), wrapped in ``StagedTable``, which is how the agents read and write it:

- the local store (``memory://``) holds the decoded objects themselves; values recovered from
  the changelog arrive as bytes and are decoded on first read;
- except in *compact* tables (``resources``, ``open_operations``): there a value goes back to
  bytes -- the very changelog record the checkpoint wrote, no second encoding -- and every read
  decodes it (~10 us). One untracked bytes object per key instead of a graph of a dozen or more
  objects: 100k live instances fit in the memory target (docs/benchmarks.md), and Python's full
  GC collections no longer rescan every resource's state;
- a write updates the local store at once and *stages* the change in the outbox, which writes
  the changelog record at the next checkpoint, after the outputs it caused are confirmed
  (``streams/outbox.py`` explains why Faust's own table writes are not used);
- the wrapper remembers each key's partition, to drop a revoked partition's keys from the local
  store (Faust's memory store keeps keys it did not recover itself) and to answer the web views
  from active partitions only.

Standby replicas: 0 (``table_standby_replicas`` in ``streams/app.py``). A standby consumes every
other worker's changelogs as they are written, which costs CPU on every event on a machine
where the worker is CPU-bound; without one, a partition that moves is recovered from its
compacted changelog (seconds for these tables: open operations and tombstones are bounded by
the timeouts and the retention, error counts by tenants x operations x exception classes).

Only ``memory://`` is supported: the changelog is the durable copy, and the local store is
rebuilt from it at start-up (RocksDB is not installed here, and would need bytes values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import orjson

from streams.app import app, settings
from streams.outbox import Outbox
from streams.topics import PAIRING_TOPIC, pack_batch
from trovemeter.pairing import ErrorCounts, OpenOperation
from trovemeter.resource_state import TrackedResource
from trovemeter.usage_ledger import TenantLedger

V = TypeVar("V")

if not settings.store.startswith("memory://"):
    raise SystemExit(f"TROVEMETER_STORE={settings.store!r}: the worker's tables support only "
                     "memory:// (streams/tables.py)")

outbox = Outbox(
    {
        **settings.kafka_client_config(),
        "client.id": f"{settings.app_id}-worker",
        "enable.idempotence": True,  # acks=all, ordered retries per partition
        "linger.ms": settings.producer_linger_ms,
        "compression.type": "lz4",
        # The shovel's partitioner (Java's and aiokafka's): keyed outputs land where a Java or
        # Faust consumer of the same key expects them.
        "partitioner": "murmur2_random",
        # A record not delivered within a minute is a failed checkpoint: the worker stops.
        "message.timeout.ms": 60_000,
    },
    pairing_topic=PAIRING_TOPIC,
    forward_linger_ms=settings.forward_linger_ms,
    forward_max_batch=settings.forward_max_batch,
    pack=pack_batch,
    prompt_topics=frozenset({settings.operations_topic, settings.errors_topic, PAIRING_TOPIC}),
    bulk_linger_ms=settings.bulk_linger_ms,
)


class StagedTable(Generic[V]):
    """A Faust table read and written through the outbox (see the module docstring)."""

    def __init__(self, name: str, *, load: Callable[[Any], V], dump: Callable[[V], bytes],
                 help: str, compact: bool = False) -> None:
        self.name = name
        self.table = app.Table(name, key_type=str, value_type=bytes,
                               partitions=settings.topic_partitions, help=help)
        self._load = load
        self._dump = dump
        self._compact = compact
        self._partition_of: dict[str, int] = {}
        self._dict: dict[str, Any] | None = None

    # --- the outbox's Changelog protocol
    @property
    def changelog_topic_name(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def changelog_key(self, key: str) -> bytes:
        return orjson.dumps(key)  # the table's key serializer is json

    def changelog_value(self, value: V | None) -> bytes | None:
        if value is None:
            return None
        if self._compact and type(value) is bytes:  # put as the bytes a compact table keeps
            return value
        return self._dump(value)

    def written(self, key: str, value: V | None, raw: bytes | None) -> None:
        """``raw`` went to the changelog for ``key``: a compact table keeps it instead of the
        object when the key still holds that object (what a recovery would load)."""
        if self._compact and raw is not None and self._data.get(key) is value:
            self._data[key] = raw

    # --- reads and writes
    @property
    def _store(self) -> Any:
        return self.table.data  # faust.stores.memory.Store

    @property
    def _data(self) -> dict[str, Any]:
        data = self._dict
        if data is None:  # the memory store's dict: created once, never replaced (cleared)
            data = self._dict = self._store.data
        return data

    def get(self, key: str) -> V | None:
        value = self._data.get(key)
        if value is None or not isinstance(value, bytes | bytearray):
            return value
        decoded = self._load(value)
        if not self._compact:  # recovered from the changelog: decode once, keep
            self._data[key] = decoded
        return decoded

    def stored(self, key: str) -> V | bytes | None:
        """What the table holds for ``key``, undecoded (a compact table: mostly bytes)."""
        return self._data.get(key)

    def put(self, partition: int, key: str, value: V | bytes) -> None:
        """Hold ``value`` for ``key`` and stage it; a compact table also takes the bytes it
        would keep (``dump(value)``)."""
        self._data[key] = value
        self._partition_of[key] = partition
        outbox.stage(self, partition, key, value)

    def delete(self, partition: int, key: str) -> None:
        self._data.pop(key, None)
        self._partition_of.pop(key, None)
        outbox.stage(self, partition, key, None)

    def partition_of(self, key: str) -> int | None:
        return self._partition_of.get(key)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[str]:
        return list(self._data)

    def local_items(self, partitions: set[int] | None = None) -> Iterator[tuple[str, V]]:
        """(key, value) of the keys held here, of ``partitions`` only when given."""
        for key in list(self._data):
            if partitions is not None and self._partition_of.get(key) not in partitions:
                continue
            value = self.get(key)
            if value is not None:
                yield key, value

    # --- rebalances
    def on_recovered(self) -> None:
        """After Faust recovered the changelog: learn the partitions of the keys it restored."""
        self._partition_of.update(getattr(self._store, "_key_partition", {}))
        for key in [k for k in self._partition_of if k not in self._data]:
            del self._partition_of[key]

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the keys of revoked partitions (their next owner recovers them)."""
        if not partitions:
            return 0
        doomed = [k for k, p in self._partition_of.items() if p in partitions]
        recovered = getattr(self._store, "_key_partition", {})
        for key in doomed:
            self._data.pop(key, None)
            del self._partition_of[key]
            recovered.pop(key, None)
        return len(doomed)


def _load_json(value: bytes) -> Any:
    return orjson.loads(value)


def _load_tracked(raw: bytes) -> TrackedResource:
    data = orjson.loads(raw)
    if isinstance(data, list):
        return TrackedResource.from_row(data)
    # Changelogs written before the row form: the dataclass as orjson wrote it, or to_dict().
    state = {name: value for name, value in data["state"].items() if value is not None}
    return TrackedResource.from_dict({"state": state, "reported_at": data["reported_at"]})


def table_json(value: Any) -> bytes:
    """``orjson.dumps(value)`` copied to an exact-size bytes object: orjson 3.x returns bytes
    with a 4 KB allocation whatever their length, which kept in a table is ~4 KB per key
    instead of ~0.3 KB (measured with tracemalloc)."""
    return bytes(memoryview(orjson.dumps(value)))


def _dump_tracked(tracked: TrackedResource) -> bytes:
    return table_json(tracked.to_row())


resources: StagedTable[TrackedResource] = StagedTable(
    "resources",
    # The row form (~0.4 KB, ~8 us; the dataclass as orjson writes it was ~0.9 KB), also what a
    # compact table keeps; ``_load_tracked`` reads the older forms too.
    load=_load_tracked,
    dump=_dump_tracked,
    help="resource id -> latest state of an instance, cluster or backup",
    compact=True,
)
open_operations: StagedTable[OpenOperation] = StagedTable(
    "open_operations",
    load=lambda raw: OpenOperation.from_dict(orjson.loads(raw)),
    dump=lambda state: table_json(state.to_dict()),
    help="join key -> what pairing holds of the operation (or its tombstone)",
    # Mostly tombstones (kept for the retention): ~0.25 KB as bytes against ~0.55 KB decoded.
    compact=True,
)
recent_operations: StagedTable[dict[str, Any]] = StagedTable(
    "recent_operations",
    load=_load_json,
    dump=orjson.dumps,
    help="<partition>:<chunk> -> up to 25 finished operations (a ring of chunks per partition)",
)
error_counts: StagedTable[ErrorCounts] = StagedTable(
    "error_counts",
    load=lambda raw: ErrorCounts.from_dict(orjson.loads(raw)),
    dump=lambda counts: orjson.dumps(counts.to_dict()),
    help="tenant|resource type|operation|exception class -> failures, total and hourly",
)

# Usage metering (streams/usage_agent.py): keys follow the source partitions.
metering: StagedTable[bytes] = StagedTable(
    "metering",
    # Kept as bytes (~0.5 KB; the decoded MeteredResource is ~4x larger): 100k live instances.
    load=bytes,
    dump=bytes,
    help="resource id -> accrual state (trovemeter.accrual.MeteredResource as compact JSON)",
)
usage_clock: StagedTable[int] = StagedTable(
    "usage_clock",
    load=int,
    dump=lambda us: str(us).encode(),
    help="source partition -> its usage watermark (microseconds since the epoch)",
)
usage_ledger: StagedTable[TenantLedger] = StagedTable(
    "usage_ledger",
    load=TenantLedger.from_bytes,
    dump=TenantLedger.to_bytes,
    help="tenant id|source partition -> hourly usage totals (latest record versions)",
)

STAGED_TABLES: tuple[StagedTable[Any], ...] = (
    resources, open_operations, recent_operations, error_counts, metering, usage_clock,
    usage_ledger,
)
