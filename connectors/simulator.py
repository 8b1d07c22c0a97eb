"""Publish a simulated scenario (``trovemeter.simulation``) to RabbitMQ as oslo.messaging does.

The exchange is declared as oslo.messaging's rabbit driver declares its control exchange
(topic, not durable, not auto-delete) and every message goes out with the body, routing key and
AMQP properties the scenario gives it, ``mandatory=False``: with no queue bound, RabbitMQ drops
it, as it would drop a real notification. No queue is declared here (oslo.messaging declares
`notifications.<priority>` queues; nobody consumes them in this setup, so they would only fill).

pika's asynchronous ``SelectConnection`` drives the publishing, because publisher confirms on a
``BlockingConnection`` wait for each message's ack (≈ 4k msg/s here); asynchronously a window
of messages stays unconfirmed and RabbitMQ acks them in batches (``multiple``).

Pacing: as fast as possible, a fixed rate (messages per wall second), or a compressed clock
(simulated seconds per wall second: each message waits for its ``sent_offset``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec

from trovemeter.simulation import WireMessage

log = logging.getLogger("trovemeter.simulator")

_BATCH = 200  # publishes per turn of the I/O loop, which then writes them and reads confirms
_CONFIRM_WINDOW = 5000  # unconfirmed messages in flight (with confirms)


class SimulatorConfigError(Exception):
    """RabbitMQ refused our setup (e.g. the exchange exists with other attributes)."""


@dataclass(frozen=True)
class Pacing:
    """At most one of ``rate`` (messages per second) and ``speed`` (simulated seconds per
    second); neither means as fast as possible."""

    rate: float | None = None
    speed: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.speed is not None:
            raise ValueError("pace by rate or by speed, not both")
        if any(value is not None and value <= 0 for value in (self.rate, self.speed)):
            raise ValueError("rate and speed must be positive")

    def due_after(self, index: int, sim_elapsed: float) -> float:
        """Wall seconds after the first publish at which message ``index`` is due, given the
        simulated seconds between its send time and the first message's."""
        if self.rate is not None:
            return index / self.rate
        if self.speed is not None:
            return sim_elapsed / self.speed
        return 0.0

    def describe(self) -> str:
        if self.rate is not None:
            return f"rate={self.rate:g}/s"
        if self.speed is not None:
            return f"speed={self.speed:g}x"
        return "unpaced"


@dataclass
class PublishReport:
    published: int = 0
    confirmed: int = 0  # acked by RabbitMQ (only with confirms)
    nacked: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0


def publish(messages: Iterable[WireMessage], url: str | pika.ConnectionParameters,
            exchanges: Sequence[str], *,
            pacing: Pacing = Pacing(), confirm: bool = False,
            progress_interval_s: float = 5.0) -> PublishReport:
    """Declare ``exchanges``, publish every message, return the counts. ``url``: an AMQP URL or
    connection parameters (``settings.rabbit_parameters()``, TLS for amqps://).

    Raises ``pika.exceptions.AMQPConnectionError`` when RabbitMQ cannot be reached,
    ``SimulatorConfigError`` when it refuses the exchange declaration, and
    ``pika.exceptions.AMQPError`` when the connection is lost on the way.
    """
    return _Publisher(messages, url, exchanges, pacing, confirm, progress_interval_s).run()


class _Publisher:
    def __init__(self, messages: Iterable[WireMessage], url: str | pika.ConnectionParameters,
                 exchanges: Sequence[str], pacing: Pacing, confirm: bool,
                 progress_interval_s: float) -> None:
        self._messages: Iterator[WireMessage] = iter(messages)
        self._exchanges = list(dict.fromkeys(exchanges))
        self._pacing = pacing
        self._confirm = confirm
        self._progress_interval_s = progress_interval_s
        self._report = PublishReport()
        self._error: BaseException | None = None
        self._channel: pika.channel.Channel | None = None
        self._properties_source: Mapping[str, Any] | None = None
        self._properties = pika.BasicProperties()
        self._next: WireMessage | None = None
        self._first_offset: float | None = None
        self._exhausted = False
        self._closing = False
        self._blocked = False
        self._pump_scheduled = False
        self._unconfirmed: set[int] = set()
        self._lowest_unconfirmed = 1
        self._started = 0.0
        self._last_progress = 0.0
        self._connection = pika.SelectConnection(
            pika.URLParameters(url) if isinstance(url, str) else url,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
        )

    def run(self) -> PublishReport:
        try:
            self._connection.ioloop.start()
        except KeyboardInterrupt:
            self._report.interrupted = True
            self._close()
            self._connection.ioloop.start()  # until the close handshake is done
        self._report.elapsed_s = time.monotonic() - self._started if self._started else 0.0
        if self._error is not None:
            raise self._error
        return self._report

    # -- connection and channel

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_open_error(self, _connection: pika.SelectConnection,
                                  error: BaseException) -> None:
        self._error = error if isinstance(error, pika.exceptions.AMQPError) else \
            pika.exceptions.AMQPConnectionError(str(error))
        self._connection.ioloop.stop()

    def _on_connection_closed(self, _connection: pika.SelectConnection,
                              reason: BaseException) -> None:
        if not self._closing and self._error is None:
            self._error = reason
        self._connection.ioloop.stop()

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        self._declare_exchanges(None)

    def _on_channel_closed(self, _channel: pika.channel.Channel, reason: BaseException) -> None:
        if self._closing:
            return
        refused = isinstance(reason, pika.exceptions.ChannelClosedByBroker) and \
            reason.reply_code in (404, 406)
        if refused:
            self._error = SimulatorConfigError(
                f"RabbitMQ refused the setup: {reason.reply_text} (an exchange declared by "
                "someone else with other attributes? oslo.messaging's is topic, non-durable)")
        else:
            self._error = reason
        self._close()

    def _declare_exchanges(self, _frame: pika.frame.Method | None) -> None:
        assert self._channel is not None
        if self._exchanges:
            exchange = self._exchanges.pop(0)
            log.info("simulator.declare_exchange", extra={"exchange": exchange, "type": "topic",
                                                          "durable": False})
            self._channel.exchange_declare(exchange, exchange_type="topic", durable=False,
                                           auto_delete=False, callback=self._declare_exchanges)
        elif self._confirm:
            self._channel.confirm_delivery(self._on_confirmation, callback=self._start)
        else:
            self._start(None)

    def _on_blocked(self, _connection: pika.SelectConnection, _frame: pika.frame.Method) -> None:
        log.warning("simulator.blocked", extra={"reason": "RabbitMQ resource alarm"})
        self._blocked = True

    def _on_unblocked(self, _connection: pika.SelectConnection, _frame: pika.frame.Method) -> None:
        log.info("simulator.unblocked")
        self._blocked = False
        self._schedule_pump(0.0)

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            if self._connection.is_open:
                self._connection.close()
            elif not self._connection.is_closing:
                self._connection.ioloop.stop()

    # -- publishing

    def _start(self, _frame: pika.frame.Method | None) -> None:
        self._started = self._last_progress = time.monotonic()
        self._schedule_pump(0.0)

    def _schedule_pump(self, delay: float) -> None:
        if not self._pump_scheduled and not self._closing:
            self._pump_scheduled = True
            self._connection.ioloop.call_later(delay, self._pump)

    def _pump(self) -> None:
        """Publish what is due, up to a batch; then hand the loop back to I/O."""
        self._pump_scheduled = False
        channel, report = self._channel, self._report
        assert channel is not None
        now = time.monotonic()
        if now - self._last_progress >= self._progress_interval_s:
            self._last_progress = now
            self._log_progress(now)
        for _ in range(_BATCH):
            if self._blocked or (self._confirm and len(self._unconfirmed) >= _CONFIRM_WINDOW):
                break  # resumed by the unblocked callback or by confirms
            message = self._next or next(self._messages, None)
            if message is None:
                self._exhausted = True
                self._finish_if_done()
                return
            if self._first_offset is None:
                self._first_offset = message.sent_offset
            due = self._pacing.due_after(report.published,
                                         message.sent_offset - self._first_offset)
            wait = due - (now - self._started)
            if wait > 0:
                self._next = message
                self._schedule_pump(wait)
                return
            self._next = None
            channel.basic_publish(message.exchange, message.routing_key, message.body,
                                  self._pika_properties(message), mandatory=False)
            report.published += 1
            report.by_kind[message.kind] += 1
            if self._confirm:
                self._unconfirmed.add(report.published)  # delivery tags count from 1
        if not self._blocked and not (self._confirm and len(self._unconfirmed) >= _CONFIRM_WINDOW):
            self._schedule_pump(0.0)

    def _pika_properties(self, message: WireMessage) -> pika.BasicProperties:
        # A scenario's messages share one properties mapping: build its pika object once.
        if message.properties is not self._properties_source:
            self._properties_source = message.properties
            self._properties = pika.BasicProperties(**message.properties)
        return self._properties

    def _on_confirmation(self, frame: pika.frame.Method) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tag: int = method.delivery_tag
        if method.multiple:
            settled = [t for t in range(self._lowest_unconfirmed, tag + 1)
                       if t in self._unconfirmed]
            self._unconfirmed.difference_update(settled)
            self._lowest_unconfirmed = tag + 1
            count = len(settled)
        else:
            count = 1 if tag in self._unconfirmed else 0
            self._unconfirmed.discard(tag)
        if acked:
            self._report.confirmed += count
        else:
            self._report.nacked += count
        if self._exhausted:
            self._finish_if_done()
        else:
            self._schedule_pump(0.0)

    def _finish_if_done(self) -> None:
        if self._exhausted and not self._unconfirmed:
            self._log_progress(time.monotonic())
            self._close()

    def _log_progress(self, now: float) -> None:
        report = self._report
        elapsed = now - self._started
        extra: dict[str, Any] = {"published": report.published,
                                 "rate": round(report.published / elapsed) if elapsed > 0 else 0}
        if self._confirm:
            extra.update(confirmed=report.confirmed, nacked=report.nacked,
                         unconfirmed=len(self._unconfirmed))
        log.info("simulator.progress", extra=extra)
