"""The worker's topics: the source, the internal pairing topic and the output topic names.

trove.notifications (source, external)
    Avro single-object ``Notification`` bytes (``trovemeter.codec``), keyed by resource id, else
    request id (the shovel). Read raw; the agent decodes. Which partition a key lands on is the
    shovel's business (``murmur2_random``), and nothing here depends on it: state read from
    this topic is keyed by resource id and stays on whatever partition a key arrives on.

``<app id>-pairing`` (internal, ``topic_partitions`` partitions, created by Faust)
    Start/end/error notifications on their way to the pairing agent, and event-time ticks. The
    partition of a join key is ``pairing_partition(key)`` (CRC-32, chosen by trovemeter, not by
    a producer's partitioner), so the pairing agent and the web views agree on where a key
    lives whichever client produced the record. Values:

    - a batch: ``b"TMB1"`` then, per notification, a 4-byte big-endian length and the
      notification's Avro bytes exactly as read from the source (no re-encoding);
    - a tick: ``b"TMT2"``, a 2-byte count, then per source partition the sender reads: the
      partition (2 bytes), 1 if it has caught up with the partition's end else 0 (1 byte), and
      how far it has read in event time (signed 8-byte microseconds since the epoch, UTC;
      ``-2**63`` for nothing yet), all big-endian. The pairing partition's event time is the low
      watermark of these reports (``trovemeter.watermark``). A tick with no report only nudges
      the usage handlers (streams/usage_agent.py). Ticks of the earlier ``TMT1`` format (one
      time, the sender's greatest) are skipped: that time is what let fast partitions expire
      starts whose ends were unread on a slow one.

    Records carry no key: a batch holds several join keys of one partition.

trove.operations, trove.errors, trove.resources (outputs, external)
    Avro single-object records with the codec's schema-name header, produced by the outbox
    (``streams/outbox.py``) with the shovel's partitioner (``murmur2_random``, as Java and
    aiokafka), keyed by resource id (else request id, else record id): one resource's records
    stay in order on one partition, the compacted trove.resources needs exactly that key, and
    a consumer drops repeats by ``record_id`` (also in the ``trovemeter.record_id`` header).
    The ``trovemeter.app_id`` header names the worker app that wrote a record (two pipelines
    with different app ids, e.g. a demo beside production, may both read trove.notifications).
    trove.errors is keyed by tenant id instead: the error agent counts failures per tenant x
    resource type x operation x exception class, and every key of that table must arrive on
    one partition.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

from streams.app import app, settings
from streams.consumer import RawSchema
from trovemeter.watermark import SourceProgress

BATCH_MAGIC = b"TMB1"
TICK_MAGIC = b"TMT2"
_TICK_COUNT = struct.Struct(">H")
_TICK_ENTRY = struct.Struct(">HBq")
_NOTHING_YET = -(2**63)
_LENGTH = struct.Struct(">I")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PAIRING_TOPIC = f"{settings.app_id}-pairing"
APP_ID_HEADER = ("trovemeter.app_id", settings.app_id.encode())
PARTITIONS = settings.topic_partitions

# Read raw (RawSchema: bytes keys and values without Faust's serializer registry per message).
source_topic = app.topic(settings.source_topic, schema=RawSchema())
pairing_topic = app.topic(
    PAIRING_TOPIC, schema=RawSchema(), internal=True, partitions=PARTITIONS,
    # Forwarded events are needed only until the pairing agent has taken them into its table.
    retention=timedelta(days=1),
)


@app.on_worker_init.connect
def create_pairing_topic(sender: object, **_: object) -> None:
    """Create the pairing topic and wait until every partition has a leader, before the worker
    subscribes. Faust would create it itself at start-up, but on a brand-new cluster its consumer
    can subscribe before the topic is in the metadata ("Ignoring missing topic ...-pairing") and
    then never get those partitions: no operation would ever come out."""
    import time

    from confluent_kafka.admin import AdminClient

    from connectors.kafka_admin import ensure_topics
    from trovemeter.topics import TopicSpec

    config = settings.kafka_client_config()
    ensure_topics(config, [TopicSpec(PAIRING_TOPIC, PARTITIONS,
                                     config={"retention.ms": str(24 * 3600 * 1000)})])
    admin = AdminClient(config)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        topic = admin.list_topics(PAIRING_TOPIC, timeout=10).topics.get(PAIRING_TOPIC)
        if topic and not topic.error and len(topic.partitions) == PARTITIONS \
                and all(p.leader >= 0 for p in topic.partitions.values()):
            return
        time.sleep(0.2)
    raise RuntimeError(f"Kafka topic {PAIRING_TOPIC} has no leader for every partition after 60 s")


errors_topic = app.topic(settings.errors_topic, schema=RawSchema())


def pairing_partition(join_key: str, partitions: int = PARTITIONS) -> int:
    """The pairing partition of a join key (stable across processes and versions)."""
    return zlib.crc32(join_key.encode()) % partitions


def pack_batch(values: Iterable[bytes]) -> bytes:
    parts = [BATCH_MAGIC]
    for value in values:
        parts.append(_LENGTH.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def pack_tick(reports: Iterable[SourceProgress]) -> bytes:
    entries = [_TICK_ENTRY.pack(r.partition, 1 if r.caught_up else 0,
                                _NOTHING_YET if r.read_through is None else _micros(r.read_through))
               for r in reports]
    return b"".join([TICK_MAGIC, _TICK_COUNT.pack(len(entries)), *entries])


def tick_reports(value: bytes) -> list[SourceProgress] | None:
    """The reports of a tick, or None when ``value`` is not a tick of this format."""
    if value[:4] != TICK_MAGIC or len(value) < 6:
        return None
    (count,) = _TICK_COUNT.unpack_from(value, 4)
    if len(value) != 6 + count * _TICK_ENTRY.size:
        return None
    reports = []
    for i in range(count):
        partition, caught_up, micros = _TICK_ENTRY.unpack_from(value, 6 + i * _TICK_ENTRY.size)
        read = None if micros == _NOTHING_YET else _EPOCH + timedelta(microseconds=micros)
        reports.append(SourceProgress(partition, read, bool(caught_up)))
    return reports


def is_old_tick(value: bytes) -> bool:
    return len(value) == 12 and value[:4] == b"TMT1"


def unpack_batch(value: bytes) -> Iterator[bytes]:
    """The notifications of a batch; ValueError for anything else (a corrupt record)."""
    if value[:4] != BATCH_MAGIC:
        raise ValueError("not a pairing batch (no TMB1 marker)")
    view = memoryview(value)
    offset, end = 4, len(value)
    while offset < end:
        if offset + 4 > end:
            raise ValueError("truncated pairing batch")
        (length,) = _LENGTH.unpack_from(value, offset)
        offset += 4
        if offset + length > end:
            raise ValueError("truncated pairing batch")
        yield bytes(view[offset:offset + length])
        offset += length
