"""The error agent: trove.errors -> table ``error_counts`` (``pairing.count_failure``).

Failures are counted per tenant x resource type x operation x exception class
(``FailureKey.table_key``), in total and per hour of event time (the error's ``occurred_at``),
keeping ``error_hours_kept`` hourly windows per key. Plain keyed state, not a Faust windowed
table (those lose data across restarts and misbehave with several partitions: faust-pitfalls).

The counts are made from trove.errors, the topic consumers see, rather than inside the pairing
agent: a key of this table must live on one partition, and the pairing agent sees one failure
key on many partitions (join keys spread it). The pairing agent keys trove.errors by tenant id,
so all of a tenant's failures -- every key of this table -- arrive on one partition. The topic
is delivered at least once; ``count_failure`` remembers the last record ids of each key and
counts a repeat once.
"""

from __future__ import annotations

import logging
from typing import Any

from streams.app import app, settings
from streams.tables import error_counts, outbox
from streams.topics import errors_topic
from trovemeter.codec import CodecError, decode
from trovemeter.model import OperationError
from trovemeter.pairing import count_failure, failure_key

log = logging.getLogger("trovemeter.streams")


def count(record: OperationError, partition: int) -> None:
    key = failure_key(record).table_key
    old = error_counts.get(key)
    new = count_failure(old, record, keep_hours=settings.error_hours_kept)
    if new is not old:
        error_counts.put(partition, key, new)


@app.agent(errors_topic, concurrency=1)
async def count_errors(stream: Any) -> None:
    """trove.errors -> error_counts."""
    async for event in stream.noack().events():  # acknowledged by the outbox (outbox.py)
        outbox.processed(event)
        try:
            record = decode(event.value)
        except CodecError as exc:
            outbox.stats["undecodable"] += 1
            log.warning("skipping undecodable record on %s: %s", event.message.topic, exc)
            continue
        if isinstance(record, OperationError):
            count(record, event.message.partition)
