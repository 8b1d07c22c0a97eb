"""Read topics the way an inspector does: partitions assigned explicitly, nothing committed.

``TopicReader`` is a confluent-kafka consumer with a throwaway group id that never commits (no
consumer group shows up, no offsets are written): the caller says where each partition starts
(beginning, end, a point in time or explicit offsets) and gets raw ``confluent_kafka.Message``
objects back, in arrival order. ``at_end()`` tells when every partition has reached the end it
had when the reader started (``enable.partition.eof``), which is what `trovemeter tail` without
``--follow`` stops on.

Also here: ``end_offsets`` (high watermarks, to read "only what comes after now") and
``commit_group_offsets``, which pre-positions a consumer group that does not exist yet, so a
fresh Faust worker starts at the current end of its source topic instead of replaying it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from trovemeter.security import client_config

Offsets = dict[tuple[str, int], int]


class TopicMissing(LookupError):
    """A topic the caller named does not exist."""


class KafkaUnreachable(RuntimeError):
    """The bootstrap servers did not answer."""


def _consumer(bootstrap: str | Mapping[str, Any], extra: Mapping[str, Any] | None = None
              ) -> Consumer:
    """``bootstrap``: servers, or ``settings.kafka_client_config()`` (with TLS/SASL)."""
    config: dict[str, Any] = {
        **client_config(bootstrap),
        # librdkafka wants a group id even for assign(); this one is never joined or committed.
        "group.id": f"trovemeter-reader-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 100,
        "socket.connection.setup.timeout.ms": 5000,
        "log_level": 0,  # connection trouble surfaces as KafkaUnreachable, not as log spam
    }
    config.update(extra or {})
    return Consumer(config)


def partitions_of(consumer: Consumer, topics: Iterable[str], timeout: float = 10.0
                  ) -> list[tuple[str, int]]:
    """(topic, partition) of every named topic; ``TopicMissing`` for one that does not exist."""
    try:
        metadata = consumer.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnreachable(str(exc.args[0] if exc.args else exc)) from exc
    found: list[tuple[str, int]] = []
    for topic in topics:
        info = metadata.topics.get(topic)
        if info is None or info.error is not None and \
                info.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise TopicMissing(topic)
        found.extend((topic, p) for p in sorted(info.partitions))
    return found


_RETRIABLE = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                        KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT})


def watermarks(consumer: Consumer, topic: str, partition: int, timeout: float = 10.0
               ) -> tuple[int, int]:
    """(low, high) of a partition; retried while a topic created a moment ago has no leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                  timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code not in _RETRIABLE or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def end_offsets(bootstrap: str | Mapping[str, Any], topics: Iterable[str], timeout: float = 10.0) -> Offsets:
    """High watermark of every partition of ``topics``: where "only new records" starts."""
    consumer = _consumer(bootstrap)
    try:
        marks: Offsets = {}
        for topic, partition in partitions_of(consumer, topics, timeout):
            marks[(topic, partition)] = watermarks(consumer, topic, partition, timeout)[1]
        return marks
    except KafkaException as exc:
        raise KafkaUnreachable(str(exc)) from exc
    finally:
        consumer.close()


def commit_group_offsets(bootstrap: str | Mapping[str, Any], group_id: str, offsets: Offsets) -> None:
    """Commit ``offsets`` for ``group_id`` (a group with no active member): its next consumer
    starts exactly there."""
    consumer = _consumer(bootstrap, {"group.id": group_id})
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                        asynchronous=False)
    finally:
        consumer.close()


class TopicReader:
    """Iterate the records of ``topics`` from a chosen position; commits nothing.

    ``start`` is ``"beginning"``, ``"end"``, a ``datetime``-like epoch in milliseconds (int,
    via ``since_ms``) or explicit ``Offsets`` (partitions missing from them start at the
    beginning).
    """

    def __init__(self, bootstrap: str | Mapping[str, Any], topics: Iterable[str], *, start: str | Offsets = "beginning",
                 since_ms: int | None = None, timeout: float = 10.0) -> None:
        self.topics = list(dict.fromkeys(topics))
        self._consumer = _consumer(bootstrap)
        try:
            self.partitions = partitions_of(self._consumer, self.topics, timeout)
            self.ends: Offsets = {}
            for tp in self.partitions:
                self.ends[tp] = watermarks(self._consumer, *tp, timeout)[1]
            assignment = self._start_positions(start, since_ms, timeout)
        except Exception:
            self._consumer.close()
            raise
        # Partitions already at their end need no EOF event to count as done.
        self._pending_eof = {tp for tp in self.partitions
                             if self.ends[tp] > self._start_offset(assignment[tp])}
        self._consumer.assign(list(assignment.values()))
        self.closed = False

    def _start_positions(self, start: str | Offsets, since_ms: int | None, timeout: float
                         ) -> dict[tuple[str, int], TopicPartition]:
        if since_ms is not None:
            asked = [TopicPartition(t, p, since_ms) for t, p in self.partitions]
            found = self._consumer.offsets_for_times(asked, timeout=timeout)
            # -1: no record at or after that time: start at the end.
            return {(tp.topic, tp.partition): TopicPartition(
                tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                for tp in found}
        if start == "beginning":
            return {tp: TopicPartition(*tp, OFFSET_BEGINNING) for tp in self.partitions}
        if start == "end":
            return {tp: TopicPartition(*tp, self.ends[tp]) for tp in self.partitions}
        if isinstance(start, Mapping):
            return {tp: TopicPartition(*tp, start.get(tp, OFFSET_BEGINNING))
                    for tp in self.partitions}
        raise ValueError(f"start must be 'beginning', 'end' or offsets, not {start!r}")

    def _start_offset(self, tp: TopicPartition) -> int:
        if tp.offset == OFFSET_END:
            return self.ends[(tp.topic, tp.partition)]
        if tp.offset < 0:  # OFFSET_BEGINNING: compare with the low watermark
            return watermarks(self._consumer, tp.topic, tp.partition)[0]
        return tp.offset

    def at_end(self) -> bool:
        """Every partition has reached the end it had when the reader was created."""
        return not self._pending_eof

    def poll(self, timeout: float = 0.2, max_records: int = 500) -> list[Message]:
        """Up to ``max_records`` records (errors and EOF events are handled, not returned)."""
        records = []
        for message in self._consumer.consume(num_messages=max_records, timeout=timeout):
            error = message.error()
            if error is None:
                records.append(message)
                tp = (message.topic(), message.partition())
                if tp in self._pending_eof and message.offset() + 1 >= self.ends[tp]:
                    self._pending_eof.discard(tp)
            elif error.code() == KafkaError._PARTITION_EOF:
                tp = (message.topic(), message.partition())
                if message.offset() >= self.ends.get(tp, 0):
                    self._pending_eof.discard(tp)
            elif error.fatal() or error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaException(error)
            # other errors (a broker restarting) are retried by librdkafka
        return records

    def __iter__(self) -> Iterator[Message]:
        """Every record until ``at_end()``: the topic's content when the reader started."""
        while not self.at_end():
            yield from self.poll()

    def follow(self, idle_seconds: float | None = None) -> Iterator[Message]:
        """Records as they come; stops after ``idle_seconds`` without one (None: never)."""
        last = time.monotonic()
        while True:
            batch = self.poll()
            if batch:
                last = time.monotonic()
                yield from batch
            elif idle_seconds is not None and time.monotonic() - last >= idle_seconds:
                return

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
