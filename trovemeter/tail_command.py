"""`trovemeter tail TOPIC...`: print a topic's records decoded, one JSON object per line.

    {"topic": ..., "partition": 0, "offset": 12, "timestamp": "2026-11-02T10:00:01.123000+00:00",
     "key": "...", "headers": {"avro.schema.name": "trovemeter.OperationCompleted", ...},
     "value": {...the record: enums as their values, datetimes ISO 8601, bytes base64...}}

A value that does not decode (a foreign producer, a schema this build does not know) is printed
with ``"value": null``, ``"error"`` and ``"raw_base64"``; a tombstone (compacted topics) has
``"value": null`` and no error. Reads with explicitly assigned partitions and commits nothing,
so it never disturbs a consumer group. Exit codes: 0, 1 Kafka unreachable, 2 unknown topic.

    trovemeter tail trove.operations                      # everything so far, then exit
    trovemeter tail trove.errors --follow                 # new records as they come (Ctrl-C)
    trovemeter tail trove.resources --key <resource id>   # the history of one key
    trovemeter tail trove.usage --limit 5 | jq .value
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import enum
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any

import orjson

from trovemeter import topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", nargs="+", metavar="TOPIC",
                        help=f"topic(s) to read, e.g. {topics.OPERATIONS}")
    parser.add_argument("--from-beginning", action="store_true",
                        help="start at the beginning (the default without --follow)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new records; alone it starts at the end, with "
                        "--from-beginning it prints the history first")
    parser.add_argument("-k", "--key", action="append", default=[], metavar="KEY",
                        help="only records with this key (repeatable)")
    parser.add_argument("-n", "--limit", type=int, default=None, metavar="N",
                        help="stop after N printed records")
    parser.add_argument("--until-idle", type=float, default=None, metavar="SECONDS",
                        help="follow, and stop after SECONDS without a new record")
    parser.add_argument("--compact", action="store_true",
                        help="only the value, not the envelope (topic, offset, key, headers)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers "
                        "(default TROVEMETER_KAFKA_BOOTSTRAP)")


# ------------------------------------------------------------------------ rendering (pure)


def to_jsonable(value: Any) -> Any:
    """A decoded record as plain JSON values: dataclasses as objects, enums as their values,
    datetimes as ISO 8601 (UTC stays ``+00:00``), bytes as base64, tuples and sets as lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, enum.Enum):  # str/int enums are instances of str/int too
            return to_jsonable(value.value)
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v) for v in items]
    return str(value)


def _text(data: bytes | str | None) -> str | None:
    if data is None or isinstance(data, str):
        return data
    return data.decode("utf-8", "backslashreplace")


def render_record(topic: str, partition: int, offset: int, key: bytes | None,
                  headers: Iterable[tuple[str, bytes | None]] | None, value: bytes | None,
                  decode: Callable[[bytes], Any], timestamp_ms: int | None = None
                  ) -> dict[str, Any]:
    """One Kafka record as the JSON object `trovemeter tail` prints."""
    out: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset}
    if timestamp_ms is not None and timestamp_ms > 0:
        out["timestamp"] = datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat()
    out["key"] = _text(key)
    out["headers"] = {name: _text(data) for name, data in headers or ()}
    if value is None:
        out["value"] = None  # a tombstone
        return out
    try:
        out["value"] = to_jsonable(decode(value))
    except Exception as exc:  # noqa: BLE001 - any undecodable value is shown, never fatal
        out["value"] = None
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["raw_base64"] = base64.b64encode(value).decode("ascii")
    return out


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


# ------------------------------------------------------------------------ command


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from connectors.topic_reader import KafkaUnreachable, TopicMissing, TopicReader
    from trovemeter.codec import serde_for
    from trovemeter.settings import CommonSettings

    settings = CommonSettings(**({"kafka_bootstrap": args.bootstrap} if args.bootstrap else {}))
    serde = serde_for(settings)
    follow = args.follow or args.until_idle is not None
    start = "end" if follow and not args.from_beginning else "beginning"
    keys = {k.encode() for k in args.key}
    if args.limit is not None and args.limit <= 0:
        return 0
    try:
        reader = TopicReader(settings.kafka_client_config(), args.topic, start=start)
    except TopicMissing as exc:
        print(f"trovemeter tail: topic {exc.args[0]} does not exist (trovemeter's topics: "
              f"{', '.join(s.name for s in topics.topic_specs())}; create them with "
              "`trovemeter topics`)", file=sys.stderr)
        return 2
    except (KafkaUnreachable, KafkaException) as exc:
        print(f"trovemeter tail: Kafka at {settings.kafka_bootstrap} is not reachable: {exc}",
              file=sys.stderr)
        return 1

    out = sys.stdout.buffer
    line_buffered = sys.stdout.isatty() or follow
    printed = 0
    if follow and args.from_beginning:
        messages = _history_then_follow(reader, args.until_idle)
    elif follow:
        messages = reader.follow(args.until_idle)
    else:
        messages = iter(reader)
    try:
        for message in messages:
            if keys and message.key() not in keys:
                continue
            rendered = render_record(
                message.topic(), message.partition(), message.offset(), message.key(),
                message.headers(), message.value(),
                lambda data, t=message.topic(): serde.decode(data, t),
                message.timestamp()[1])
            out.write(dumps(rendered["value"] if args.compact else rendered) + b"\n")
            if line_buffered:
                out.flush()
            printed += 1
            if args.limit is not None and printed >= args.limit:
                break
        out.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head`: the reader went away, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KafkaException as exc:
        print(f"trovemeter tail: {exc}", file=sys.stderr)
        return 1
    finally:
        reader.close()
    return 0


def _history_then_follow(reader: Any, idle: float | None) -> Any:
    yield from reader
    yield from reader.follow(idle)
