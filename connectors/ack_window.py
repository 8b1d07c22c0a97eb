"""Ack bookkeeping of one AMQP channel: which deliveries Kafka has confirmed, and how far
RabbitMQ may be acked with ``multiple=True``.

Pure and single-threaded: no pika, no Kafka. A ``basic_ack(tag, multiple=True)`` acks *every*
outstanding delivery up to ``tag`` on the channel, so it is only safe when every delivery up to
``tag`` has been confirmed. ``AckWindow`` tracks the tags in delivery order and hands out the
highest tag of the contiguous confirmed prefix.

Delivery tags are per channel: after a reconnect the shovel starts a new window (the old
channel's unacked deliveries come back from RabbitMQ as redeliveries).
"""

from __future__ import annotations

from collections import deque


class AckWindow:
    """Delivery tags in delivery order; ``confirm`` marks one done; ``pop_ackable`` returns the
    highest tag up to which everything is confirmed (and forgets those tags)."""

    __slots__ = ("_pending", "_live", "_confirmed", "_last_tracked")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()  # tracked, not yet handed out for acking, in order
        self._live: set[int] = set()  # the same tags as _pending, for O(1) membership
        self._confirmed: set[int] = set()  # subset of _live
        self._last_tracked = 0

    def track(self, tag: int) -> None:
        """Record a new delivery. Tags must grow (AMQP numbers deliveries 1, 2, 3, ... per channel)."""
        if tag <= self._last_tracked:
            raise ValueError(f"delivery tag {tag} not above the last tracked tag {self._last_tracked}")
        self._last_tracked = tag
        self._pending.append(tag)
        self._live.add(tag)

    def confirm(self, tag: int) -> bool:
        """Mark ``tag`` as safely written. Unknown or already handed-out tags are ignored
        (returns False): a late delivery report for an old channel must not ack anything."""
        if tag not in self._live or tag in self._confirmed:
            return False
        self._confirmed.add(tag)
        return True

    def pop_ackable(self) -> int | None:
        """Highest tag of the contiguous confirmed prefix, to ack with ``multiple=True``; None when
        the oldest pending delivery is not confirmed yet. The returned tags are forgotten."""
        pending, confirmed, live = self._pending, self._confirmed, self._live
        last = None
        while pending and pending[0] in confirmed:
            last = pending.popleft()
            confirmed.discard(last)
            live.discard(last)
        return last

    def pop_stragglers(self) -> list[int]:
        """Confirmed tags stuck behind an unconfirmed one, to ack one by one (``multiple=False``)
        when the channel is about to close, so RabbitMQ keeps only what was not confirmed.
        Call ``pop_ackable`` first."""
        if not self._confirmed:
            return []
        stragglers = sorted(self._confirmed)
        self._confirmed.clear()
        self._live.difference_update(stragglers)
        self._pending = deque(tag for tag in self._pending if tag in self._live)
        return stragglers

    def __len__(self) -> int:
        """Deliveries tracked and not yet handed out for acking (RabbitMQ counts them unacked)."""
        return len(self._pending)

    @property
    def unconfirmed(self) -> int:
        """Deliveries still waiting for Kafka."""
        return len(self._pending) - len(self._confirmed)

    @property
    def oldest(self) -> int | None:
        return self._pending[0] if self._pending else None
