"""Faust's per-message machinery, leaner: its Kafka consumer's hand-over of each fetched message
to the agents (``LeanConsumer``), and an agent's iteration over its stream (``lean_events``).

faust-streaming 0.15.3's fetch loop (``faust.transport.consumer.Consumer._drain_messages``)
hands every message to the conductor (which finds the message's channels and puts an event on
each agent's queue) through::

    await self.wait_first(callback(message), self.suspend_flow.wait())

``wait_first`` wraps the callback, the suspend-flow wait and the consumer's stopped and
crashed events in four tasks, waits for the first of them and cancels the other three, for
every message. Yet the callback almost never waits: it puts the event on a queue with room and
returns. (bench_pairing, one worker: 354 us of CPU per event before this consumer and the
direct Avro reader, 229 after; a Faust agent that only counts spends ~72.)

``LeanConsumer`` runs the callback's first step inline; only when it does wait (flow control
during a rebalance, a full agent queue, the producer's buffer) is the rest handed to
``wait_first`` exactly as Faust does, so a suspended flow still interrupts it. A callback that completes without waiting ran to completion under Faust's code
too (its task's first step ran before the other futures could win), so nothing else changes.

The rest of the loop is Faust's, copied from 0.15.3 (``LEAN_FAUST_VERSION``): with another
Faust version the worker uses Faust's own consumer (``streams/app.py``).

``RawSchema`` is Faust's schema for topics read as the bytes Kafka holds (key and value types
``bytes``, serializer ``raw``): the event is built from the message's own key and value, as
Faust's schema would after two passes through its serializer registry (codec lookup, the raw
codec, the payload's type check: the same bytes objects, None stays None) per message.

``lean_events(stream)`` gives what ``stream.noack().events()`` gives, without the stream
iterator's per-event work: Faust's iterator yields to the event loop before *every* event (a
loop turn and an ``epoll_wait`` each), awaits the channel even when the queue holds events,
calls the stream sensors and sets the current-event context variable -- none of which the
worker's agents use (their writes name their partitions, ``streams/outbox.py``). What it keeps
from Faust 0.15.3's ``Stream._py_aiter``: events of an earlier consumer generation, or read
while flow control is suspended, are skipped and acknowledged; every message is tracked as
unacknowledged (so a rebalance's ``wait_empty`` waits for the outbox to acknowledge it); channel
errors are raised. It yields to the loop when the queue is empty and every ``yield_every``
events, as Faust's fetch loop does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import EventT
from faust.transport.drivers import aiokafka as aiokafka_driver
from mode import Service, ServiceT

LEAN_FAUST_VERSION = "0.15.3"


class _Rest:
    """The rest of a coroutine whose first step (run by the caller) yielded ``pending``:
    awaitable, so a task can run it from there as if it had started it."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - cancellation, thrown into the callback
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                pending = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _finish(rest: _Rest) -> Any:
    return await rest


class LeanConsumer(aiokafka_driver.Consumer):  # type: ignore[misc]
    """aiokafka consumer of Faust, its fetch loop handing messages over without four tasks
    each (see the module docstring)."""

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover
        # Faust 0.15.3's loop; the only change is marked "lean".
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # We have a gap in income messages
                            if gap > 1 and r_offset:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            # lean: the callback's first step inline; Faust's wait_first only
                            # for the rest of a callback that waits.
                            delivery = callback(message)
                            try:
                                pending = delivery.send(None)
                            except StopIteration:
                                pass
                            else:
                                await self.wait_first(_finish(_Rest(delivery, pending)),
                                                      self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)


class RawSchema(faust.Schema):  # type: ignore[misc]
    """Keys and values as bytes, decoded by no serializer (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw")

    def compile(self, app: Any, **_: Any) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class LeanTransport(aiokafka_driver.Transport):  # type: ignore[misc]
    """Faust's aiokafka transport, creating ``LeanConsumer``s."""

    Consumer = LeanConsumer


async def lean_events(stream: Any, yield_every: int = 100) -> AsyncIterator[Any]:
    """The events of an agent's ``stream``, unacknowledged (see the module docstring)."""
    if stream._processors:  # e.g. Faust's test_context counting what the agent took
        async for event in stream.noack().events():
            yield event
        return
    stream._finalized = True  # as Faust's iterators mark it: no more processors
    started = await stream.maybe_start()
    app = stream.app
    channel = stream.channel
    queue = channel.queue
    errors = queue._errors
    empty, get_nowait, get = queue.empty, queue.get_nowait, queue.get
    track = app.consumer.unacked.add
    acking_topics = app.topics.acking_topics
    on_message_in = stream._on_message_in
    flow_active = app.flow_control.is_active
    sleep = asyncio.sleep
    since_yield = 0
    try:
        while not stream.should_stop:
            if errors:
                raise errors.popleft()
            if empty():
                since_yield = 0
                value = await get()
            elif since_yield >= yield_every:
                since_yield = 0
                await sleep(0)
                continue  # a rebalance may have cleared the queue meanwhile
            else:
                since_yield += 1
                value = get_nowait()
            if not isinstance(value, EventT):
                continue  # not from a topic: nothing the worker's agents are sent
            message = value.message
            if not flow_active() or message.generation_id != app.consumer_generation_id:
                value.ack()  # Faust acknowledges what it skips, so that the lag does not grow
                continue
            if message.topic in acking_topics and not message.tracked:
                message.tracked = True
                track(message)
                on_message_in(message.tp, message.offset, message)
            yield value
    except StopAsyncIteration:
        return  # the channel stopped (shutdown): an async generator must not propagate it
    finally:
        stream._channel_stop_iteration(channel)
        if started:
            await stream.stop()
            stream.service_reset()
