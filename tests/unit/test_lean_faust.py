"""streams/consumer.py: the fetch loop's inline first step and the agents' lean stream iteration
keep Faust's semantics (the real consumer path is covered by tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust import Event
from faust.types import Message

import streams.agents  # noqa: F401 - the worker's app, as the agents see it
from streams.app import app
from streams.consumer import _finish, _Rest, lean_events


def event(value: bytes, offset: int, generation: int) -> Any:
    message = Message("lean-src", 0, offset, 0.0, 0, None, None, value, None,
                      generation_id=generation)
    message.tracked = False  # as the consumer creates them (Message.use_tracking)
    return Event(app, None, value, None, message)


def run(scenario: Any) -> Any:
    async def main() -> Any:
        app.loop = asyncio.get_running_loop()
        app.flow_control.resume()
        return await scenario()

    return asyncio.run(main())


def test_lean_events_yield_in_order_skip_earlier_generations_and_track_messages() -> None:
    async def scenario() -> None:
        stream = app.stream(app.channel(value_type=bytes, maxsize=100))
        queue = stream.channel.queue
        generation = app.consumer_generation_id
        stale = event(b"stale", 0, generation - 1)
        fresh = [event(f"e{i}".encode(), i + 1, generation) for i in range(250)]
        app.topics._acking_topics.add("lean-src")
        try:
            for item in (stale, *fresh[:50]):
                queue.put_nowait(item)
            got = []

            async def take() -> None:
                async for item in lean_events(stream, yield_every=7):
                    got.append(item)
                    if len(got) == len(fresh):
                        break

            async def arrive() -> None:  # more events while the agent works, the queue full
                for later in fresh[50:]:
                    await queue.put(later)

            await asyncio.wait_for(asyncio.gather(take(), arrive()), 10)
            assert [e.value for e in got] == [e.value for e in fresh]
            assert stale.message.acked and not any(e.message.acked for e in fresh)
            # Tracked as unacknowledged: a rebalance waits for the outbox to acknowledge them.
            assert all(e.message in app.consumer.unacked for e in fresh)
        finally:
            app.topics._acking_topics.discard("lean-src")
            for e in fresh:
                app.consumer.unacked.discard(e.message)

    run(scenario)


def test_a_suspended_callback_is_finished_by_a_task_with_its_result() -> None:
    async def scenario() -> None:
        gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def callback() -> int:
            await asyncio.sleep(0)
            return await gate + 1

        coro = callback()
        pending = coro.send(None)  # the first step, as the fetch loop runs it
        task = asyncio.ensure_future(_finish(_Rest(coro, pending)))
        await asyncio.sleep(0.01)
        assert not task.done()
        gate.set_result(41)
        assert await task == 42

    run(scenario)


def test_a_suspended_callback_is_cancelled_with_its_task() -> None:
    async def scenario() -> None:
        cancelled = []

        async def callback() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        coro = callback()
        pending = coro.send(None)
        task = asyncio.ensure_future(_finish(_Rest(coro, pending)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cancelled == [True]

    run(scenario)


def test_lean_events_end_when_the_channel_stops() -> None:
    async def scenario() -> None:
        stream = app.stream(app.channel(value_type=bytes, maxsize=10))
        stream.channel.queue._errors.append(StopAsyncIteration())  # what a stopping channel raises
        taken = [e async for e in lean_events(stream)]  # ends instead of crashing the agent
        assert taken == []

    run(scenario)


def test_raw_schema_gives_the_events_faust_s_raw_schema_gives() -> None:
    import faust

    from streams.consumer import RawSchema

    faust_schema = faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw",
                                value_serializer="raw")

    async def scenario() -> None:
        for key, value in ((b"k", b"\xc3\x01body"), (None, b"v"), (b"k", None)):
            message = Message("t", 1, 5, 0.0, 0, [("h", b"1")], key, value, None)
            mine = await RawSchema().compile(app)(message, propagate=True)
            theirs = await faust_schema.compile(app)(message, propagate=True)
            assert (mine.key, mine.value, mine.headers, mine.message) == \
                (theirs.key, theirs.value, theirs.headers, theirs.message)

    run(scenario)
