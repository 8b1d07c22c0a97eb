"""The worker's write path: every record the agents produce goes through one librdkafka producer.

Faust keeps what it is good at: consuming, partition assignment, table recovery from the
changelogs at start-up and after a rebalance, and the web server. What the agents *write* --
the output records (trove.operations, trove.errors, trove.resources), the forwards to the
pairing topic, the ticks, and the tables' changelog records -- goes through this outbox. Why:

1. **Cost.** Measured on this machine class (faust-streaming 0.15.3, aiokafka 0.14): an agent that
   only counts events runs at ~10k events/s; one ``topic.send()`` per event brings it to ~3.4k/s,
   one table write per event (one changelog record through Faust's producer buffer and aiokafka)
   to ~3.4k/s. Each produced record costs ~150-200 us of Python in Faust + aiokafka, the same as
   consuming three events. librdkafka's ``produce()`` costs a few microseconds. With Faust's
   write path the pairing path (two table writes and a send per event, plus the repartition
   hop) tops out near 1-2k events/s per worker; the target is 5k.
2. **Correct order of effects.** With Faust's tables, a table write and the output it causes are
   two independent records: after a kill -9 the state may say "reported" while the record never
   left, and the replay then drops it as a duplicate -- an operation lost. Here a table change
   reaches its changelog only after every output emitted before it is confirmed by Kafka (acks
   =all, idempotent producer), and an event is acknowledged to Faust -- its offset becomes
   committable -- only after both. A crash can repeat an output (same record id, same content),
   never lose one.
3. **Fewer changelog records.** Table changes are staged and written at checkpoints, the latest
   value per key: a start and its end arriving within one checkpoint interval cost one changelog
   record (the tombstone), not two.

How it works
------------
- The agents read their streams with ``noack()``: Faust does not acknowledge an event when the
  agent moves on; ``processed(event)`` hands it to the outbox instead.
- ``emit()`` produces an output now (non-blocking) and counts it in the current *epoch*.
- ``stage()`` records a table change (the agents have already updated the local store); the
  value is serialised only when the changelog record is written.
- ``forward()`` collects notifications per pairing partition and emits them as one batch record
  (``streams.topics.pack_batch``) after ``forward_linger_ms`` or ``forward_max_batch`` items:
  the pairing agent then pays Faust's per-event cost once per batch, not once per notification.
- ``checkpoint()`` (a timer, every ``checkpoint_interval_seconds``) closes the epoch and takes
  each closed epoch, oldest first, as far as Kafka's confirmations allow, without blocking the
  event loop: once its outputs are confirmed it writes its staged changes (the latest value per
  key) to the changelogs; once those are confirmed it acknowledges its events. Faust's own
  periodic commit then commits exactly the offsets whose effects are durable -- it never has to
  wait for anything.
- ``checkpoint_sync()`` does the same at once, blocking (producer flushes), when Faust stops
  the flow of events -- partition revocation and shutdown -- and waits for every event in flight
  to be acknowledged before it goes on: the next owner recovers a changelog holding every change
  made here, and no write of this worker lands after it. (Faust's ``wait_empty`` calls a commit
  in its loop; the commit hook in ``streams/agents.py`` runs the synchronous checkpoint then.)
- A delivery that fails for good (librdkafka retried until ``message.timeout.ms``) is fatal:
  ``OutboxError`` is raised from the checkpoint, the worker stops, nothing past it was
  acknowledged, and a restart replays from the last commit.

Two producers: the records on the operations' latency path (trove.operations, trove.errors and
the forwards/ticks to the pairing topic) go through a producer with ``producer_linger_ms`` (2);
the rest -- trove.resources, trove.usage, discrepancies and every changelog record, ~90% of the
records -- through a second one with ``bulk_linger_ms`` (25). Per event, the broker then receives
fewer, larger produce requests: measured with bench_pairing (100k events, one worker), the
broker's CPU fell from ~55 to ~40 us per event and the worker's from ~170 to ~160 (one producer
at 20 ms does better still, 29 and ~145, but adds its linger to every operation). The outbox's
order of effects holds across both: an epoch's changes wait for its outputs on either producer.

Rebalances: writes use explicit partitions (the partition of the event that caused them), not
Faust's "current event", so a changelog record always goes to the partition its key belongs to.

An earlier version flushed synchronously from a Faust sensor before every offset commit; under
a loaded broker that blocked the event loop for seconds (15 s measured) every commit interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("trovemeter.outbox")

Headers = list[tuple[str, bytes]]


class OutboxError(RuntimeError):
    """A record could not be delivered: the worker must not commit offsets past it."""


class Changelog(Protocol):
    """What the outbox needs of a table to write its changelog records."""

    changelog_topic_name: str

    def changelog_key(self, key: str) -> bytes: ...

    def changelog_value(self, value: Any) -> bytes | None: ...

    def written(self, key: str, value: Any, raw: bytes | None) -> None:
        """``raw`` (``changelog_value(value)``) was produced to the changelog for ``key``."""


class Outbox:
    """One producer for outputs, forwards, ticks and changelog records (see the module doc)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        pairing_topic: str,
        forward_linger_ms: float = 5,
        forward_max_batch: int = 500,
        pack: Callable[[list[bytes]], bytes] | None = None,
        producer_factory: Callable[[dict[str, Any]], Any] | None = None,
        flush_timeout: float = 60.0,
        prompt_topics: frozenset[str] | None = None,
        bulk_linger_ms: float | None = None,
    ) -> None:
        self._config = dict(config)
        self._factory = producer_factory
        self._producer: Any = None
        # Records of ``prompt_topics`` (None: all) go through ``producer`` with the config's
        # linger; the rest through a second producer lingering ``bulk_linger_ms``: see "Two
        # producers" in the module doc.
        self._prompt_topics = prompt_topics
        self._bulk_linger_ms = bulk_linger_ms
        self._bulk_producer: Any = None
        self.pairing_topic = pairing_topic
        self._forward_linger = forward_linger_ms / 1000.0
        self._forward_max = forward_max_batch
        self._pack = pack
        self._flush_timeout = flush_timeout
        self._epoch = 0
        self._outstanding: Counter[int] = Counter()  # epoch -> outputs not yet confirmed
        self._callbacks: dict[int, Callable[[Any, Any], None]] = {}
        self._failures: list[str] = []
        # (table, key) -> (partition, value or None for a delete): the latest staged change.
        self._staged: dict[tuple[Changelog, str], tuple[int, Any]] = {}
        # Events processed in the current epoch: acknowledged once everything they caused is.
        self._events: list[Any] = []
        # Closed epochs, oldest first, on their way to durability.
        self._closed: list[_Closed] = []
        self._forwards: dict[int, list[bytes]] = {}
        # (topic, partition) -> the last offset whose effects are durable (acknowledged): what a
        # restart after a crash would not read again, up to Faust's next commit.
        self.durable_offsets: dict[tuple[str, int], int] = {}
        self._forward_count = 0
        self._forward_timer: asyncio.TimerHandle | None = None
        self._checkpointing = False
        self._since_poll = 0
        self.stats: Counter[str] = Counter()

    # ---------------------------------------------------------------- producer

    def _new_producer(self, config: dict[str, Any]) -> Any:
        if self._factory is None:
            from confluent_kafka import Producer

            self._factory = Producer
        return self._factory(config)

    @property
    def producer(self) -> Any:
        if self._producer is None:
            self._producer = self._new_producer(self._config)
        return self._producer

    @property
    def bulk_producer(self) -> Any:
        if self._bulk_producer is None:
            linger = self._bulk_linger_ms
            if self._prompt_topics is None or linger is None or \
                    linger == self._config.get("linger.ms"):
                self._bulk_producer = self.producer
            else:
                client = self._config.get("client.id", "trovemeter")
                self._bulk_producer = self._new_producer(
                    {**self._config, "linger.ms": linger, "client.id": f"{client}-bulk"})
        return self._bulk_producer

    def _producers(self) -> list[Any]:
        """The producers created so far (one object when both lanes share it)."""
        found = []
        for producer in (self._producer, self._bulk_producer):
            if producer is not None and all(producer is not p for p in found):
                found.append(producer)
        return found

    def use_producer(self, producer: Any) -> None:
        """Replace the producers (unit tests: a fake that records what is produced)."""
        self._producer = self._bulk_producer = producer

    def _callback(self, epoch: int) -> Callable[[Any, Any], None]:
        callback = self._callbacks.get(epoch)
        if callback is None:
            outstanding, failures = self._outstanding, self._failures

            def callback(err: Any, msg: Any) -> None:
                outstanding[epoch] -= 1
                if err is not None:
                    failures.append(f"{msg.topic() if msg is not None else '?'}: {err}")

            self._callbacks[epoch] = callback
        return callback

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, partition: int,
                 headers: Headers | None, on_delivery: Callable[[Any, Any], None] | None) -> None:
        prompt = self._prompt_topics
        producer = self.producer if prompt is None or topic in prompt else self.bulk_producer
        while True:
            try:
                producer.produce(topic, value, key, partition=partition, headers=headers,
                                 on_delivery=on_delivery)
                break
            except BufferError:  # librdkafka's queue is full: serve callbacks, then retry
                self.stats["buffer_full"] += 1
                producer.poll(0.05)
        self._since_poll += 1
        if self._since_poll >= 256:
            self._since_poll = 0
            for each in self._producers():
                each.poll(0)

    # ---------------------------------------------------------------- outputs

    def emit(self, topic: str, value: bytes, key: str | bytes | None = None, *,
             partition: int = -1, headers: Headers | None = None) -> None:
        """Produce an output record now; it counts in the current epoch."""
        if isinstance(key, str):
            key = key.encode()
        epoch = self._epoch
        self._outstanding[epoch] += 1
        self._produce(topic, value, key, partition, headers, self._callback(epoch))
        self.stats["emitted"] += 1

    def forward(self, partition: int, value: bytes) -> None:
        """Queue a notification for the pairing topic's ``partition`` (sent in batches)."""
        batch = self._forwards.get(partition)
        if batch is None:
            batch = self._forwards[partition] = []
        batch.append(value)
        self._forward_count += 1
        if len(batch) >= self._forward_max:
            self._emit_forwards(partition)
        elif self._forward_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): send at the next flush
                return
            self._forward_timer = loop.call_later(self._forward_linger, self.flush_forwards)

    def flush_forwards(self) -> None:
        """Emit every queued forward now."""
        if self._forward_timer is not None:
            self._forward_timer.cancel()
            self._forward_timer = None
        for partition in list(self._forwards):
            self._emit_forwards(partition)

    def _emit_forwards(self, partition: int) -> None:
        batch = self._forwards.pop(partition, None)
        if not batch:
            return
        assert self._pack is not None, "Outbox(pack=...) is needed to forward"
        self._forward_count -= len(batch)
        self.emit(self.pairing_topic, self._pack(batch), partition=partition)
        self.stats["forward_batches"] += 1
        self.stats["forwarded"] += len(batch)

    # ---------------------------------------------------------------- table changes

    def stage(self, table: Changelog, partition: int, key: str, value: Any) -> None:
        """Record a table change (``value`` None: delete) for the next checkpoint."""
        self._staged[(table, key)] = (partition, value)

    def processed(self, event: Any) -> None:
        """The agent is done with ``event``: acknowledge it (its offset becomes committable)
        once the outputs and table changes it caused are confirmed by Kafka."""
        self._events.append(event)

    @property
    def staged(self) -> int:
        return len(self._staged) + sum(len(c.changes) for c in self._closed if not c.written)

    def _close_epoch(self) -> int:
        closed = self._epoch
        if self._staged or self._events:
            self._closed.append(_Closed(closed, self._staged, self._events))
            self._staged, self._events = {}, []
        self._epoch += 1
        return closed

    def _confirmed_through(self, epoch: int) -> bool:
        return all(count <= 0 for e, count in self._outstanding.items() if e <= epoch)

    def _write_changes(self, closed: _Closed) -> None:
        failures = self._failures

        def confirmed(err: Any, msg: Any) -> None:
            closed.unconfirmed -= 1
            if err is not None:
                failures.append(f"{msg.topic() if msg is not None else '?'}: {err}")

        closed.unconfirmed += len(closed.changes)
        topics: dict[Changelog, str] = {}  # the name is computed by Faust on each access
        for (table, key), (partition, value) in closed.changes.items():
            topic = topics.get(table)
            if topic is None:
                topic = topics[table] = table.changelog_topic_name
            raw = table.changelog_value(value)
            self._produce(topic, raw, table.changelog_key(key), partition, None, confirmed)
            table.written(key, value, raw)
        closed.written = True
        self.stats["changelog_records"] += len(closed.changes)

    def _advance(self) -> None:
        """Move closed epochs along, oldest first: write their table changes once their outputs
        are confirmed; acknowledge their events once those changes are confirmed too."""
        while self._closed:
            closed = self._closed[0]
            if not closed.written:
                if not self._confirmed_through(closed.epoch):
                    return
                self._write_changes(closed)
            if closed.unconfirmed > 0:
                return
            self._ack(closed.events)
            self._closed.pop(0)

    def _ack(self, events: list[Any]) -> None:
        durable = self.durable_offsets
        for event in events:
            try:
                event.ack()
            except Exception:  # noqa: BLE001 - a consumer already gone: nothing to commit
                self.stats["ack_errors"] += 1
            message = event.message
            durable[(message.topic, message.partition)] = message.offset
        self.stats["acked"] += len(events)

    def _forget_confirmed_epochs(self) -> None:
        for epoch in [e for e, count in self._outstanding.items() if count <= 0
                      and e < self._epoch]:
            del self._outstanding[epoch]
            self._callbacks.pop(epoch, None)

    def _raise_failures(self) -> None:
        if self._failures:
            failures, self._failures[:] = list(self._failures), []
            raise OutboxError(f"{len(failures)} record(s) not delivered, e.g. {failures[0]}")

    # ---------------------------------------------------------------- checkpoints

    def drain(self) -> None:
        """Serve delivery reports and move closed epochs on as far as they already can; never
        waits (Faust's commit calls it: acknowledgements ready now make this commit)."""
        for producer in self._producers():
            producer.poll(0)
        self._raise_failures()
        self._advance()

    async def checkpoint(self, max_wait: float = 5.0) -> None:
        """Close the epoch and take every closed epoch as far as Kafka's confirmations allow
        (outputs -> table changes -> acknowledgements). Never blocks the event loop: waits in
        short sleeps, at most ``max_wait`` seconds, then leaves the rest to the next one."""
        if self._checkpointing:
            return
        self._checkpointing = True
        try:
            self.flush_forwards()
            self._close_epoch()
            deadline = time.monotonic() + max_wait
            while True:
                # Each turn: the first changelog write below may create the bulk producer.
                for producer in self._producers():
                    producer.poll(0)
                self._raise_failures()
                self._advance()
                if not self._closed or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.002)
            self._forget_confirmed_epochs()
            self.stats["checkpoints"] += 1
        finally:
            self._checkpointing = False

    def checkpoint_sync(self) -> None:
        """Make every output and every staged change durable and acknowledge every processed
        event, now. Blocks the event loop for the producer's round trips: used only when
        partitions are revoked and at shutdown, when nothing is processed anyway."""
        if self._producer is None and not (self._staged or self._closed or self._forwards
                                           or self._events):
            return
        started = time.perf_counter()
        self.flush_forwards()
        self._close_epoch()
        self._flush()
        self._raise_failures()
        for closed in self._closed:
            if not closed.written:
                self._write_changes(closed)
        self._flush()
        self._raise_failures()
        closed_epochs, self._closed = self._closed, []
        for closed in closed_epochs:
            self._ack(closed.events)
        self._forget_confirmed_epochs()
        self.stats["sync_checkpoints"] += 1
        blocked = round((time.perf_counter() - started) * 1000, 1)  # the event loop waited
        self.stats["sync_checkpoint_ms_total"] += blocked
        self.stats["sync_checkpoint_ms_max"] = max(self.stats["sync_checkpoint_ms_max"], blocked)

    def _flush(self) -> None:
        remaining = sum(producer.flush(self._flush_timeout) for producer in self._producers())
        if remaining:
            raise OutboxError(f"{remaining} record(s) still undelivered after "
                              f"{self._flush_timeout:.0f}s")

    def poll(self) -> None:
        for producer in self._producers():
            producer.poll(0)

    def snapshot(self) -> dict[str, Any]:
        """Counters for the status view."""
        return {**self.stats, "staged": self.staged, "queued_forwards": self._forward_count,
                "unconfirmed": sum(c for c in self._outstanding.values() if c > 0),
                "unacknowledged": len(self._events) + sum(len(c.events) for c in self._closed)}


@dataclass
class _Closed:
    """A closed epoch: its table changes and the events processed during it."""

    epoch: int
    changes: dict[tuple[Changelog, str], tuple[int, Any]]
    events: list[Any]
    written: bool = False
    unconfirmed: int = 0  # changelog records written and not yet confirmed
