"""bench_audit_burst's inputs: the preload holds exactly the live instances' messages its kind
names, encoded as the shovel writes them; the burst is one audit per live instance."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.bench_audit_burst import PRELOAD_EVENTS, _build_inputs, shovel_records
from connectors.shovel import HEADER_MESSAGE_ID, HEADER_ROUTING_KEY
from trovemeter.accrual import AccrualPolicy, MeteredResource, advance, apply
from trovemeter.codec import SCHEMA_NAME_HEADER, decode
from trovemeter.model import Notification
from trovemeter.topics import NOTIFICATIONS

INSTANCES = 40


@pytest.fixture(scope="module", params=sorted(PRELOAD_EVENTS))
def inputs(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param, _build_inputs(INSTANCES, seed=3, preload_kind=request.param)


def test_preload_is_the_live_instances_messages_of_its_kind(inputs: tuple[str, dict]) -> None:
    kind, built = inputs
    live = built["live"]
    assert len(live) == INSTANCES == len(built["burst"])
    notifications = [decode(value) for _, value, _, _ in built["preload"]]
    assert all(isinstance(n, Notification) for n in notifications)
    assert {n.event_type for n in notifications} <= PRELOAD_EVENTS[kind]
    # Every live instance is created, by its create's messages (a start names no instance:
    # its request pairs it with its end).
    created = Counter(n.resource_id for n in notifications
                      if n.event_type == "trove.instance.create")
    assert set(created) == live and set(created.values()) == {1}
    if kind == "settled":
        assert {n.event_type for n in notifications} - {"trove.instance.create"} <= {
            "trove.instance.modify_flavor", "trove.instance.modify_volume"}


def test_preload_agrees_with_the_audits(inputs: tuple[str, dict]) -> None:
    """The live instances are healthy: what the preload tells the worker about each one (its
    flavor above all: a resized instance's audit names the new one) matches its audit, so
    verification finds no discrepancy."""
    kind, built = inputs
    notifications = [decode(value) for _, value, _, _ in built["preload"]]
    notifications += [decode(value) for _, value, _, _ in shovel_records(
        built["burst"] + built["closing"], NOTIFICATIONS)]
    policy = AccrualPolicy()
    states: dict[str, MeteredResource | None] = {}
    watermark = None
    found = []
    for n in notifications:
        watermark = n.occurred_at if watermark is None else max(watermark, n.occurred_at)
        if n.resource_id in built["live"]:
            step = apply(states.get(n.resource_id), n, watermark, policy)
            states[n.resource_id] = step.state
            found += step.discrepancies
    for state in states.values():
        assert state is not None
        found += advance(state, watermark, policy).discrepancies
    resized = sum(n.event_type == "trove.instance.modify_flavor" for n in notifications)
    assert resized, "the scenario should resize some live instance (or this proves nothing)"
    assert found == [], f"{kind}: {len(found)} discrepancies, e.g. {found[0]}"


def test_preload_records_are_what_the_shovel_writes(inputs: tuple[str, dict]) -> None:
    _, built = inputs
    for key, value, headers, routing_key in built["preload"]:
        n = decode(value)
        assert key == (n.kafka_key.encode() if n.kafka_key else None)
        names = dict(headers)
        assert names[SCHEMA_NAME_HEADER] == b"trovemeter.Notification"
        assert names[HEADER_MESSAGE_ID] == n.message_id
        assert names[HEADER_ROUTING_KEY] == routing_key
