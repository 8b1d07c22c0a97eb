"""A minimal Faust app for the stack smoke test: count records per key in a table."""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["SMOKE_APP_ID"],
    broker=f"kafka://{os.environ.get('TROVEMETER_KAFKA_BOOTSTRAP', '127.0.0.1:9092')}",
    store="memory://",
    topic_partitions=1,
    topic_replication_factor=1,
    web_host="127.0.0.1",
    web_port=int(os.environ["SMOKE_WEB_PORT"]),
)
source = app.topic(os.environ["SMOKE_TOPIC"], key_type=str, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
counts = app.Table("counts", default=int, partitions=1)


@app.agent(source)
async def count(stream):  # type: ignore[no-untyped-def]
    async for key, _value in stream.items():
        counts[key] += 1


@app.page("/counts/")
async def show_counts(web, request):  # type: ignore[no-untyped-def]
    return web.json({key: value for key, value in counts.items()})
