"""DeliveryReader against frames pika itself encodes: the same deliveries pika would hand out,
however the socket splits the bytes, and every other frame passed on to pika in order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika import frame, spec
from pika.exceptions import InvalidFrameError

from connectors.delivery_reader import Delivery, DeliveryReader

CHANNEL = 1
PROPERTIES = spec.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                  delivery_mode=2, message_id="m-1", priority=0,
                                  headers={"x-auth-token": "secret", "n": 3, "nested": {"a": "b"}})


def deliver_frames(tag: int, body: bytes, *, properties: spec.BasicProperties = PROPERTIES,
                   exchange: str | bytes = "trove", routing_key: str = "notifications.info",
                   redelivered: bool = False, max_body_frame: int = 4096) -> bytes:
    method = frame.Method(CHANNEL, spec.Basic.Deliver("ctag1.0123", tag, redelivered, exchange,
                                                      routing_key)).marshal()
    header = frame.Header(CHANNEL, len(body), properties).marshal()
    bodies = [frame.Body(CHANNEL, body[i:i + max_body_frame]).marshal()
              for i in range(0, len(body), max_body_frame)]
    return method + header + b"".join(bodies)


def other_frames() -> list[bytes]:
    return [frame.Heartbeat().marshal(),
            frame.Method(CHANNEL, spec.Basic.CancelOk("ctag1.0123")).marshal(),
            frame.Method(2, spec.Basic.Deliver("other", 1, False, "x", "y")).marshal()]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.reader = DeliveryReader(CHANNEL, self.delivery, self.frame)

    def delivery(self, delivery: Delivery, body: bytes) -> None:
        self.events.append(("delivery", (delivery.delivery_tag, delivery.redelivered,
                                         delivery.exchange, delivery.routing_key,
                                         delivery.content_type, delivery.content_encoding,
                                         dict(vars(delivery.properties)), body)))

    def frame(self, data: bytes) -> None:
        self.events.append(("frame", data))

    def feed_in_chunks(self, stream: bytes, cuts: list[int]) -> int:
        consumed, start = 0, 0
        for cut in [*sorted(set(cuts)), len(stream)]:
            consumed += self.reader.feed(stream[start:cut])
            start = cut
        return consumed


def expected(tag: int, body: bytes, properties: spec.BasicProperties = PROPERTIES,
             exchange: str | bytes = "trove", redelivered: bool = False) -> tuple[str, object]:
    return ("delivery", (tag, redelivered, exchange, "notifications.info",
                         properties.content_type, properties.content_encoding,
                         dict(vars(properties)), body))


def test_deliveries_and_other_frames_in_their_order() -> None:
    bodies = [b'{"a": 1}', b"x" * 10_000, b""]
    heartbeat, cancel_ok, other_channel = other_frames()
    stream = (heartbeat + deliver_frames(1, bodies[0]) + other_channel
              + deliver_frames(2, bodies[1], redelivered=True) + cancel_ok
              + deliver_frames(3, bodies[2]))
    recorder = Recorder()
    assert recorder.feed_in_chunks(stream, []) == len(stream)
    assert recorder.events == [
        ("frame", heartbeat), expected(1, bodies[0]), ("frame", other_channel),
        expected(2, bodies[1], redelivered=True), ("frame", cancel_ok), expected(3, bodies[2])]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=12_000), max_size=12))
def test_any_split_of_the_stream_gives_the_same_deliveries(cuts: list[int]) -> None:
    bodies = [b"y" * 5000, b'{"b": 2}', b"z" * 300]
    heartbeat = frame.Heartbeat().marshal()
    stream = (deliver_frames(7, bodies[0], max_body_frame=1000) + heartbeat
              + deliver_frames(8, bodies[1]) + deliver_frames(9, bodies[2]))
    cuts = [cut for cut in cuts if cut < len(stream)]
    recorder = Recorder()
    assert recorder.feed_in_chunks(stream, cuts) == len(stream)
    assert recorder.events == [expected(7, bodies[0]), ("frame", heartbeat),
                               expected(8, bodies[1]), expected(9, bodies[2])]


def test_properties_beyond_type_and_encoding_and_names_pika_keeps_as_bytes() -> None:
    bare = spec.BasicProperties(delivery_mode=2)
    stream = (deliver_frames(1, b"{}", properties=bare)
              + deliver_frames(2, b"{}", exchange=b"\xff\xfe"))
    recorder = Recorder()
    recorder.feed_in_chunks(stream, [])
    assert recorder.events == [expected(1, b"{}", bare), expected(2, b"{}", exchange=b"\xff\xfe")]
    assert recorder.events[0][1][4:6] == (None, None)  # no content type or encoding


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    stream = deliver_frames(1, b"body")
    recorder = Recorder()
    assert recorder.reader.feed(stream[:-1]) < len(stream) - 1
    assert recorder.events == []
    recorder.reader.feed(stream[-1:])
    assert recorder.events == [expected(1, b"body")]


def test_a_corrupt_frame_is_refused() -> None:
    stream = bytearray(deliver_frames(1, b"body"))
    stream[-1] = 0
    with pytest.raises(InvalidFrameError):
        Recorder().reader.feed(bytes(stream))


def test_delivery_from_pika_keeps_its_properties() -> None:
    method = spec.Basic.Deliver("ctag", 5, True, "trove", "notifications.error")
    delivery = Delivery.from_pika(method, PROPERTIES)
    assert (delivery.delivery_tag, delivery.redelivered, delivery.exchange,
            delivery.routing_key) == (5, True, "trove", "notifications.error")
    assert delivery.properties is PROPERTIES
    assert (delivery.content_type, delivery.content_encoding) == ("application/json", "utf-8")


def test_names_and_properties_beyond_the_decoded_tables_still_decode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("connectors.delivery_reader._DECODED_LIMIT", 1)
    other = spec.BasicProperties(content_type="text/plain", content_encoding="gzip")
    stream = (deliver_frames(1, b"a", exchange="one") + deliver_frames(2, b"b", exchange="two")
              + deliver_frames(3, b"c", properties=other) + deliver_frames(4, b"d"))
    recorder = Recorder()
    recorder.feed_in_chunks(stream, [])
    assert recorder.events == [expected(1, b"a", exchange="one"), expected(2, b"b", exchange="two"),
                               expected(3, b"c", other), expected(4, b"d")]
