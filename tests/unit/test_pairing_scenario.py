"""A whole seeded scenario, in publication order, through the pure pairing core: the operations
it reports equal the simulator's expected totals. When the pipeline's totals differ (make chaos),
this says whether the core or the way the runtime feeds it is at fault."""

from __future__ import annotations

import heapq
from collections import Counter

from trovemeter.demo_summary import Observed, compare
from trovemeter.envelope import BadNotification, parse_body
from trovemeter.pairing import DEFAULT_POLICY, OpenOperation, deadline, expire, join_key, step
from trovemeter.pipeline_tally import PipelineTally
from trovemeter.simulation import ScenarioConfig, build_scenario


def test_a_scenario_in_publication_order_gives_the_expected_operations() -> None:
    # The chaos run's mix (v1 bodies, duplicates, garbage, reordering), smaller.
    scenario = build_scenario(ScenarioConfig(seed=4242, tenants=5, message_budget=20_000,
                                             v1_share=0.1))
    expected = scenario.expected.to_json()
    states: dict[str, OpenOperation] = {}
    due: list[tuple[object, str]] = []
    tally = PipelineTally()
    now = None

    def keep(key: str, state: OpenOperation) -> None:
        states[key] = state
        try:
            heapq.heappush(due, (deadline(state, DEFAULT_POLICY), key))
        except ValueError:  # nothing held that could ever be decided
            pass

    for message in scenario.messages():
        try:
            n = parse_body(message.body, max_bytes=1 << 20)
        except BadNotification:
            assert message.kind == "garbage"
            continue
        now = n.occurred_at if now is None or n.occurred_at > now else now
        key = join_key(n)
        if key is not None:
            old = states.get(key)
            new, records = step(old, n, DEFAULT_POLICY)
            for record in records:
                tally.add(record)
            if new is not old and new is not None:
                keep(key, new)
        while due and due[0][0] < now:
            _, key = heapq.heappop(due)
            state = states.get(key)
            if state is None or not now > deadline(state, DEFAULT_POLICY):
                continue
            new, records = expire(state, now, DEFAULT_POLICY)
            for record in records:
                tally.add(record)
            if new is None:
                del states[key]
            elif new is not state:
                keep(key, new)

    still_open = Counter((s.resource_type.value, s.operation) for s in states.values()
                         if s.start is not None and s.closed_at is None)
    observed = Observed(
        operations=tally.operation_counts(), failures=tally.failure_counts(), dead_letters=0,
        message_ids=set(),
        durations={name: tally.durations(name) for name in expected["operation_durations"]},
        open_operations=still_open)
    checks = [c for c in compare(expected, observed)
              if c.section in ("operations", "failures", "durations")]
    assert checks and all(c.ok for c in checks), [
        (c.label, c.expected, c.actual, c.details) for c in checks if not c.ok]
