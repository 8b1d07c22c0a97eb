"""AMQP deliveries decoded straight from the socket bytes, beside pika.

pika turns every frame into objects and passes each delivery through its channel, its content
assembler and ``BlockingChannel``'s event queue: three frames and about a dozen Python calls
per message, more than half of the shovel's main-process CPU (bench/bench_shovel.py).
``DeliveryReader`` decodes the frames of ``basic.deliver`` on the consuming channel itself
(method, content header, body) and hands each delivery to the shovel at once; every other
frame (heartbeats, ``basic.cancel``, ``channel.close``, ``basic.cancel-ok``, other channels)
goes to pika unchanged, in order, so pika keeps running the connection.

Pure and single-threaded: ``feed`` takes the bytes the socket gave; ``install`` wires a reader
into a pika connection in place of its frame parser.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pika import frame as pika_frame
from pika import spec
from pika.exceptions import InvalidFrameError

_FRAME_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
_HEADER_FRAME_SIZES = struct.Struct(">HHQ")  # class id, weight, body size
_DELIVERY_TAG = struct.Struct(">Q")
_METHOD_ID = struct.Struct(">I")
_FRAME_END = 0xCE
_BASIC_DELIVER = spec.Basic.Deliver.INDEX
_FLAG_CONTENT_TYPE = spec.BasicProperties.FLAG_CONTENT_TYPE
_FLAG_CONTENT_ENCODING = spec.BasicProperties.FLAG_CONTENT_ENCODING
# pika reads 4 KiB per recv(): about two messages of 1.5 KB. The reader keeps an offset into
# what it was given instead of re-slicing the buffer per frame, so larger reads cost nothing
# extra and save recv() and poll() calls.
RECV_BYTES = 128 * 1024
# Exchanges, routing keys and property lists repeat from one delivery to the next: each is
# decoded once. The bound keeps a publisher that varies them per message (message ids in the
# properties, say) from growing the tables; past it they are decoded every time.
_DECODED_LIMIT = 1024


class Delivery:
    """One ``basic.deliver``: the method's fields (same names as pika's ``Basic.Deliver``) and
    the content type and encoding; the other properties are decoded only when asked for
    (dead letters), since the hot path never needs them."""

    __slots__ = ("delivery_tag", "redelivered", "exchange", "routing_key", "content_type",
                 "content_encoding", "_properties")

    def __init__(self, delivery_tag: int, redelivered: bool, exchange: Any, routing_key: Any,
                 content_type: Any, content_encoding: Any, properties: Any) -> None:
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routing_key = routing_key
        self.content_type = content_type
        self.content_encoding = content_encoding
        self._properties = properties  # pika BasicProperties, or the encoded property list

    @classmethod
    def from_pika(cls, method: Any, properties: Any) -> Delivery:
        """A delivery pika decoded (``basic_consume``'s callback arguments)."""
        return cls(method.delivery_tag, method.redelivered, method.exchange, method.routing_key,
                   properties.content_type, properties.content_encoding, properties)

    @property
    def properties(self) -> spec.BasicProperties:
        if isinstance(self._properties, bytes):
            self._properties = spec.BasicProperties().decode(self._properties)
        return self._properties


def _short_string(data: bytes, offset: int) -> tuple[Any, int]:
    """An AMQP shortstr as pika decodes it: str, or the bytes when they are not UTF-8."""
    end = offset + 1 + data[offset]
    raw = data[offset + 1:end]
    try:
        return raw.decode(), end
    except UnicodeDecodeError:
        return raw, end


def _type_and_encoding(encoded: bytes) -> tuple[Any, Any]:
    """content_type and content_encoding of an encoded property list: the first two
    properties, so nothing else needs decoding."""
    flags = (encoded[0] << 8) | encoded[1]
    offset = 2
    if flags & 1:  # a second flag word (never sent for basic properties): let pika read it
        properties = spec.BasicProperties().decode(encoded)
        return properties.content_type, properties.content_encoding
    content_type = content_encoding = None
    if flags & _FLAG_CONTENT_TYPE:
        content_type, offset = _short_string(encoded, offset)
    if flags & _FLAG_CONTENT_ENCODING:
        content_encoding, offset = _short_string(encoded, offset)
    return content_type, content_encoding


class DeliveryReader:
    """Splits a byte stream into AMQP frames; the deliveries of ``channel_number`` go to
    ``on_delivery(delivery, body)``, every other frame (its bytes) to ``on_frame``."""

    def __init__(self, channel_number: int, on_delivery: Callable[[Delivery, bytes], None],
                 on_frame: Callable[[bytes], None]) -> None:
        self.channel_number = channel_number
        self.on_delivery = on_delivery
        self.on_frame = on_frame
        self._rest = b""  # an incomplete frame from the previous read
        # The delivery whose content frames are being read: (tag, redelivered, exchange,
        # routing key), then its encoded properties, body size and body parts.
        self._method: tuple[int, bool, Any, Any] | None = None
        self._properties: bytes | None = None
        self._body_size = 0
        self._body_parts: list[bytes] = []
        self._body_read = 0
        self._names: dict[bytes, Any] = {}  # encoded exchange / routing key -> pika's value
        self._kinds: dict[bytes, tuple[Any, Any]] = {}  # property list -> (type, encoding)

    def feed(self, data: bytes) -> int:
        """Process every complete frame in what was read so far; returns the bytes consumed."""
        buffer = self._rest + data if self._rest else data
        end_of_data = len(buffer)
        position = 0
        ours = self.channel_number
        unpack_frame_header = _FRAME_HEADER.unpack_from
        while end_of_data - position >= 8:
            frame_type, channel, size = unpack_frame_header(buffer, position)
            payload = position + 7
            frame_end = payload + size
            if frame_end >= end_of_data:
                break  # the rest of this frame is still on its way
            if buffer[frame_end] != _FRAME_END:
                raise InvalidFrameError("Invalid FRAME_END marker")
            next_frame = frame_end + 1
            if channel != ours:
                self.on_frame(buffer[position:next_frame])
            elif frame_type == 3 and self._properties is not None:  # body
                self._body_parts.append(buffer[payload:frame_end])
                self._body_read += size
                if self._body_read >= self._body_size:
                    self._deliver()
            elif frame_type == 2 and self._method is not None and self._properties is None:
                _class_id, _weight, self._body_size = _HEADER_FRAME_SIZES.unpack_from(
                    buffer, payload)
                self._properties = buffer[payload + 12:frame_end]
                if self._body_size == 0:
                    self._deliver()
            elif frame_type == 1 and self._method is None \
                    and _METHOD_ID.unpack_from(buffer, payload)[0] == _BASIC_DELIVER:
                offset = payload + 5 + buffer[payload + 4]  # past the consumer tag
                tag = _DELIVERY_TAG.unpack_from(buffer, offset)[0]
                redelivered = bool(buffer[offset + 8] & 1)
                offset += 9
                exchange_end = offset + 1 + buffer[offset]
                routing_key_end = exchange_end + 1 + buffer[exchange_end]
                self._method = (tag, redelivered, self._name(buffer[offset + 1:exchange_end]),
                                self._name(buffer[exchange_end + 1:routing_key_end]))
            else:
                # Any other method of this channel, or content frames out of sequence: pika
                # answers them (out-of-sequence content closes the connection there, as it
                # should).
                self.on_frame(buffer[position:next_frame])
            position = next_frame
        self._rest = buffer[position:] if position < end_of_data else b""
        return position

    def _deliver(self) -> None:
        method, properties, parts = self._method, self._properties, self._body_parts
        assert method is not None and properties is not None
        self._method = self._properties = None
        self._body_parts, self._body_read = [], 0
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        kind = self._kinds.get(properties)
        if kind is None:
            kind = _type_and_encoding(properties)
            if len(self._kinds) < _DECODED_LIMIT:
                self._kinds[properties] = kind
        self.on_delivery(Delivery(*method, *kind, properties), body)

    def _name(self, encoded: bytes) -> Any:
        name = self._names.get(encoded)
        if name is None:
            try:
                name = encoded.decode()
            except UnicodeDecodeError:  # pika keeps such a name as bytes
                name = encoded
            if len(self._names) < _DECODED_LIMIT:
                self._names[encoded] = name
        return name


def install(connection: Any, channel_number: int,
            on_delivery: Callable[[Delivery, bytes], None]) -> DeliveryReader:
    """Put a ``DeliveryReader`` in place of the frame parser of ``connection`` (a pika
    ``BlockingConnection``), before ``basic_consume`` on ``channel_number``. ``on_delivery``
    runs inside pika's I/O (in ``basic_consume``, ``process_data_events``, ``basic_ack``, ...)
    and must not call pika.

    Every ``process_data_events`` returns after the read that brought deliveries, as it does
    when pika dispatches them itself."""
    impl = connection._impl  # noqa: SLF001 - pika's asynchronous connection under the blocking one
    process_frame = impl._process_frame  # noqa: SLF001
    decode_frame = pika_frame.decode_frame
    stop_waiting = connection._request_channel_dispatch  # noqa: SLF001

    def pika_frame_bytes(data: bytes) -> None:
        process_frame(decode_frame(data)[1])

    def delivered(delivery: Delivery, body: bytes) -> None:
        on_delivery(delivery, body)
        stop_waiting(-channel_number)  # a negative number only ends process_data_events' wait

    reader = DeliveryReader(channel_number, delivered, pika_frame_bytes)

    def data_available(data: bytes) -> None:
        impl.bytes_received += reader.feed(data)  # what pika's heartbeat checker watches

    reader.feed(impl._frame_buffer)  # noqa: SLF001 - anything pika read but did not parse yet
    impl._frame_buffer = b""  # noqa: SLF001
    impl._on_data_available = data_available  # noqa: SLF001
    transport = impl._transport  # noqa: SLF001
    if transport is not None:
        transport._MAX_RECV_BYTES = RECV_BYTES  # noqa: SLF001
    return reader
