"""The simulator against the real RabbitMQ: what a queue bound like the shovel's receives is
byte for byte what the generator made, with the AMQP properties oslo.messaging sets.

Each test publishes to an exchange of its own (deleted afterwards), so a shovel or demo bound
to `trove` never sees test traffic. Unreachable RabbitMQ fails the tests (conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pika
import pika.adapters.blocking_connection
import pytest

from connectors.simulator import Pacing, SimulatorConfigError, publish
from trovemeter.simulation import ScenarioConfig, build_scenario

pytestmark = pytest.mark.integration

FIXTURE_META = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / \
    "dbaas.instance_create.start.v2.meta.json"
TROVEMETER = Path(sys.executable).parent / "trovemeter"
SCENARIO = ScenarioConfig(seed=11, tenants=2, instances=10, hours=3, v1_share=0.2,
                          duplicate_rate=0.05, reorder_rate=0.1, garbage_rate=0.05,
                          failure_rate=0.2)

Delivery = tuple[pika.spec.Basic.Deliver, pika.BasicProperties, bytes]


@pytest.fixture
def channel(rabbit_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    try:
        yield connection.channel()
    finally:
        connection.close()


@pytest.fixture
def bound_exchange(channel: pika.adapters.blocking_connection.BlockingChannel,
                   unique_name: str) -> Iterator[tuple[str, str]]:
    """(exchange, queue): the exchange declared as oslo.messaging does, an exclusive queue bound
    to it with the shovel's binding key."""
    exchange = f"{unique_name}.trove"
    channel.exchange_declare(exchange, exchange_type="topic", durable=False, auto_delete=False)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, "notifications.*")
    yield exchange, queue
    channel.exchange_delete(exchange)


def drain(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str,
          count: int) -> list[Delivery]:
    received: list[Delivery] = []
    for method, properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=5):
        if method is None:
            break
        received.append((method, properties, body))
        if len(received) == count:
            break
    channel.cancel()
    return received


def properties_of(properties: pika.BasicProperties, names: list[str]) -> dict[str, Any]:
    return {name: getattr(properties, name) for name in names}


def test_bodies_and_properties_arrive_exactly_as_generated(
        rabbit_url: str, channel: pika.adapters.blocking_connection.BlockingChannel,
        bound_exchange: tuple[str, str]) -> None:
    exchange, queue = bound_exchange
    scenario = build_scenario(replace(SCENARIO, exchange=exchange))
    generated = list(scenario.messages())

    report = publish(scenario.messages(), rabbit_url, [exchange], confirm=True)
    assert report.published == report.confirmed == len(generated)
    assert report.nacked == 0
    received = drain(channel, queue, len(generated))

    assert len(received) == len(generated)
    assert [body for _, _, body in received] == [m.body for m in generated]
    meta = json.loads(FIXTURE_META.read_text())
    for (method, properties, _), message in zip(received, generated):
        assert method.exchange == exchange
        assert method.routing_key == message.routing_key
        assert properties_of(properties, list(meta["properties"])) == meta["properties"]
    routing_keys = {method.routing_key for method, _, _ in received}
    assert routing_keys == {"notifications.info", "notifications.error"}


def test_rate_pacing_spreads_the_messages(
        rabbit_url: str, channel: pika.adapters.blocking_connection.BlockingChannel,
        bound_exchange: tuple[str, str]) -> None:
    exchange, queue = bound_exchange
    messages = list(build_scenario(replace(SCENARIO, exchange=exchange)).messages())[:60]
    started = time.monotonic()
    report = publish(messages, rabbit_url, [exchange], pacing=Pacing(rate=200))
    assert time.monotonic() - started >= 59 / 200
    assert report.published == 60
    assert len(drain(channel, queue, 60)) == 60


def test_exchange_with_other_attributes_is_a_config_error(
        rabbit_url: str, channel: pika.adapters.blocking_connection.BlockingChannel,
        unique_name: str) -> None:
    exchange = f"{unique_name}.durable"
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    try:
        messages = build_scenario(replace(SCENARIO, exchange=exchange)).messages()
        with pytest.raises(SimulatorConfigError):
            publish(messages, rabbit_url, [exchange])
    finally:
        channel.exchange_delete(exchange)


def test_command_publishes_and_writes_expected_totals(
        rabbit_url: str, channel: pika.adapters.blocking_connection.BlockingChannel,
        bound_exchange: tuple[str, str], tmp_path: Path) -> None:
    exchange, queue = bound_exchange
    expected_path = tmp_path / "expected.json"
    result = subprocess.run(
        [str(TROVEMETER), "simulate", "--seed", "11", "--tenants", "2", "--instances", "10",
         "--hours", "3", "--exchange", exchange, "--confirm", "--expected", str(expected_path)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TROVEMETER_RABBIT_URL": rabbit_url})
    assert result.returncode == 0, result.stderr
    expected = json.loads(expected_path.read_text())
    total = expected["messages"]["total"]
    assert f"published {total}/{total} messages" in result.stdout
    assert f"confirmed {total}, nacked 0" in result.stdout
    assert len(drain(channel, queue, total)) == total
    password = pika.URLParameters(rabbit_url).credentials.password
    assert f":{password}@" not in result.stdout + result.stderr


def test_command_fails_when_rabbitmq_is_unreachable(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(TROVEMETER), "simulate", "--instances", "2", "--hours", "1"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TROVEMETER_RABBIT_URL": "amqp://guest:s3cret-pw@127.0.0.1:1/"})
    assert result.returncode == 1
    assert "simulator.rabbit_error" in result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert "amqp://guest:***@127.0.0.1:1/" in result.stderr
