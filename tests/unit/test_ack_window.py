"""AckWindow never lets RabbitMQ ack a delivery Kafka has not confirmed, and acks everything that
was confirmed as soon as the prefix before it is confirmed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.ack_window import AckWindow


class FakeChannel:
    """What RabbitMQ does with basic_ack: ``multiple=True`` acks every outstanding tag <= tag;
    acking an unknown tag is a channel error (PRECONDITION_FAILED)."""

    def __init__(self) -> None:
        self.outstanding: set[int] = set()
        self.acked: list[int] = []

    def deliver(self, tag: int) -> None:
        self.outstanding.add(tag)

    def ack(self, tag: int, multiple: bool) -> set[int]:
        if multiple:
            done = {t for t in self.outstanding if t <= tag}
            assert tag in done, f"multi-ack of unknown tag {tag}"
        else:
            assert tag in self.outstanding, f"ack of unknown tag {tag}"
            done = {tag}
        self.outstanding -= done
        self.acked.extend(sorted(done))
        return done


def test_in_order_confirms_ack_everything() -> None:
    window = AckWindow()
    for tag in range(1, 6):
        window.track(tag)
    for tag in range(1, 6):
        assert window.confirm(tag)
    assert window.pop_ackable() == 5
    assert len(window) == 0 and window.pop_ackable() is None


def test_gap_holds_back_the_ack() -> None:
    window = AckWindow()
    for tag in (1, 2, 3, 4):
        window.track(tag)
    window.confirm(2)
    window.confirm(3)
    assert window.pop_ackable() is None  # 1 is not confirmed
    window.confirm(1)
    assert window.pop_ackable() == 3
    assert window.unconfirmed == 1 and window.oldest == 4


def test_stragglers_behind_a_gap() -> None:
    window = AckWindow()
    for tag in (1, 2, 3, 4, 5):
        window.track(tag)
    for tag in (1, 3, 5):
        window.confirm(tag)
    assert window.pop_ackable() == 1
    assert window.pop_stragglers() == [3, 5]
    assert len(window) == 2 and window.unconfirmed == 2
    window.confirm(2)
    assert window.pop_ackable() == 2  # 3 was acked singly: the multi-ack covers only 2
    window.confirm(4)
    assert window.pop_ackable() == 4


def test_unknown_and_repeated_confirms_are_ignored() -> None:
    window = AckWindow()
    window.track(1)
    assert not window.confirm(7)  # never delivered on this channel
    assert window.confirm(1)
    assert not window.confirm(1)
    assert window.pop_ackable() == 1
    assert not window.confirm(1)  # already acked: a late duplicate report
    assert window.pop_ackable() is None


def test_tags_must_grow() -> None:
    window = AckWindow()
    window.track(3)
    with pytest.raises(ValueError):
        window.track(3)
    with pytest.raises(ValueError):
        window.track(2)


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[int], list[tuple[str, int]]]:
    """Increasing tags (with gaps, as after pika nacks undispatched deliveries) and an interleaving
    of confirms (any order, some repeated, some never) with pops."""
    steps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=60))
    tags = []
    tag = 0
    for step in steps:
        tag += step
        tags.append(tag)
    confirm_order = draw(st.permutations(tags))
    confirmed = draw(st.lists(st.sampled_from(confirm_order), max_size=len(tags) * 2)) + list(
        confirm_order[: draw(st.integers(0, len(tags)))]
    )
    ops: list[tuple[str, int]] = []
    for tag in confirmed:
        ops.append(("confirm", tag))
        if draw(st.booleans()):
            ops.append(("pop", 0))
        if draw(st.integers(0, 9)) == 0:
            ops.append(("confirm", tag + 1000))  # a report for a tag this channel never saw
    return tags, ops


@settings(max_examples=400, deadline=None)
@given(schedules(), st.booleans())
def test_never_acks_an_unconfirmed_delivery(schedule: tuple[list[int], list[tuple[str, int]]],
                                            close_with_stragglers: bool) -> None:
    tags, ops = schedule
    window, channel = AckWindow(), FakeChannel()
    for tag in tags:
        window.track(tag)
        channel.deliver(tag)
    confirmed: set[int] = set()
    for op, tag in ops:
        if op == "confirm":
            window.confirm(tag)
            if tag in tags:
                confirmed.add(tag)
        else:
            top = window.pop_ackable()
            if top is not None:
                done = channel.ack(top, multiple=True)
                assert done <= confirmed, f"acked unconfirmed {sorted(done - confirmed)}"
        assert window.unconfirmed == len(channel.outstanding - confirmed)
        assert len(window) == len(channel.outstanding)

    # Whatever the order, once the prefix is confirmed the window acks all of it.
    top = window.pop_ackable()
    if top is not None:
        assert channel.ack(top, multiple=True) <= confirmed
    prefix = 0
    for tag in tags:
        if tag not in confirmed:
            break
        prefix += 1
    assert set(tags[:prefix]).isdisjoint(channel.outstanding)

    if close_with_stragglers:
        for tag in window.pop_stragglers():
            channel.ack(tag, multiple=False)
        # At close, RabbitMQ keeps exactly the deliveries Kafka has not confirmed.
        assert channel.outstanding == set(tags) - confirmed
        assert len(window) == len(channel.outstanding) == window.unconfirmed
    assert sorted(channel.acked) == sorted(set(channel.acked)), "a tag acked twice"
