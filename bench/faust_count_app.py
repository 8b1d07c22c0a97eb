"""Baseline for bench/bench_pairing.py: a Faust agent that only counts events (Faust's ceiling).

Same app settings as the worker where they matter (memory store, at-least-once, raw values,
concurrency 1, aiokafka's debug logging off); it reports the wall-clock times of its first and
N-th event, and the process CPU time between them, as one JSON record on ``COUNT_OUT``.
"""

from __future__ import annotations

import json
import logging
import os
import time

import faust

for _name in ("aiokafka", "faust", "mode"):
    logging.getLogger(_name).setLevel(logging.INFO)

N = int(os.environ["COUNT_N"])
app = faust.App(
    os.environ["COUNT_APP_ID"],
    broker=f"kafka://{os.environ.get('TROVEMETER_KAFKA_BOOTSTRAP', '127.0.0.1:9092')}",
    store="memory://",
    topic_replication_factor=1,
    processing_guarantee="at_least_once",
    web_host="127.0.0.1",
    web_port=int(os.environ["COUNT_WEB_PORT"]),
)
source = app.topic(os.environ["COUNT_SOURCE"], key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
out = app.topic(os.environ["COUNT_OUT"], key_serializer="raw", value_serializer="raw")
state = {"n": 0, "first": 0.0, "cpu": 0.0}


@app.agent(source, concurrency=1)
async def count(stream):  # type: ignore[no-untyped-def]
    async for _event in stream.events():
        state["n"] += 1
        if state["n"] == 1:
            state["first"] = time.time()
            state["cpu"] = time.process_time()
        if state["n"] == N:
            last, cpu = time.time(), time.process_time() - state["cpu"]
            await out.send(value=json.dumps({"n": N, "first": state["first"], "last": last,
                                             "cpu": cpu}).encode())
