"""RabbitMQ (oslo.messaging notifications) -> Kafka (Avro records), acked only after Kafka confirmed.

One thread drives a pika ``BlockingConnection`` and a confluent-kafka ``Producer`` in its own loop:

    process_data_events(time_limit)   deliveries (decoded by ``delivery_reader``, not pika's
                                      frame objects) -> _on_delivery: track the tag, batch the body
    _submit_batch / _collect          parse + encode in a helper process (``parse_pool``),
                                      outcomes back in delivery order -> produce()
    producer.poll(0)                  delivery reports -> AckWindow.confirm(tag)
    basic_ack(top, multiple=True)     top = highest contiguous confirmed delivery tag

(``parse_workers=0`` parses inline in ``_on_delivery`` instead.) See docs/shovel.md.

Guarantees (as RabbitMQ's Shovel in ``on-confirm`` mode):
- a delivery is acked only after Kafka's delivery report for its record (or for its dead letter)
  succeeded; a failed report re-produces the record with backoff and never acks;
- a body that cannot be parsed or encoded becomes a ``DeadLetter`` on the DLQ topic (raw bytes,
  secrets masked, reason) and is acked only once that record is confirmed;
- a lost connection or channel forgets the window: RabbitMQ redelivers every unacked delivery (a
  Kafka write still in flight may then land twice, with the same message_id: allowed);
- SIGTERM/SIGINT: stop consuming, wait for outstanding reports, ack what was confirmed, close.

Nothing here knows the Trove formats: ``trovemeter.envelope`` parses, ``trovemeter.codec``
encodes (single-object Avro, or Confluent's wire format with a Schema Registry).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import pika
import pika.exceptions
from confluent_kafka import KafkaError, KafkaException, Producer

from connectors.ack_window import AckWindow
from connectors.delivery_reader import Delivery
from connectors.delivery_reader import install as install_delivery_reader
from connectors.metrics import ShovelStats
from connectors.parse_pool import Outcome, ParsePool, ParsePoolDied, Transformer
from trovemeter import topics
from trovemeter.codec import RecordSerde, serde_for
from trovemeter.model import AmqpProperties, DeadLetter, RejectReason
from trovemeter.normalise import Normaliser
from trovemeter.redaction import MASK, is_secret_key, mask_url_password, scrub_raw
from trovemeter.settings import ShovelSettings

log = logging.getLogger("trovemeter.shovel")

# Kafka headers of every record (besides the codec's schema-name header).
HEADER_EXCHANGE = "trovemeter.exchange"
HEADER_ROUTING_KEY = "trovemeter.routing_key"
HEADER_MESSAGE_ID = "trovemeter.message_id"
HEADER_REASON = "trovemeter.reason"  # dead letters only

# An "all brokers down" this soon after a successful delivery describes an earlier disconnect.
STALE_BROKERS_DOWN_SECONDS = 3.0
# A dead letter keeps the delivered body whole up to this size (the broker accepts 4 MiB
# records); beyond it, the first DLQ_MAX_BODY_BYTES plus body_length and body_sha256.
DLQ_MAX_BODY_BYTES = 3 * 1024 * 1024
# If Kafka still refuses a dead letter as too large, it is re-sent with this much of the body.
DLQ_FALLBACK_BODY_BYTES = 64 * 1024

# Kafka errors that retrying the same record cannot fix.
_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE})

_MESSAGE_ID_IN_RAW = re.compile(rb'message_id\\?"\s*:\s*\\?"([0-9A-Za-z._:-]{1,80})')


class ShovelConfigError(Exception):
    """A problem restarting cannot fix (exchange declared differently, missing topic, ...):
    reported once, and the process exits non-zero instead of looping."""


class _SessionLost(Exception):
    """The RabbitMQ connection or channel is gone, or the producer must be rebuilt."""

    def __init__(self, why: str, rebuild_producer: bool = False,
                 restart_pool: bool = False) -> None:
        super().__init__(why)
        self.rebuild_producer = rebuild_producer
        self.restart_pool = restart_pool


@dataclass(slots=True)
class _Out:
    """One record on its way to Kafka, with what is needed to retry it or dead-letter it."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, Any]]
    tag: int
    window: AckWindow
    reason: str | None  # dead letters: the reject reason (metric label); None for notifications
    delivery: Delivery
    body: bytes  # as delivered
    # A dead letter already without its body: if Kafka refuses even that as too large, nothing
    # is left to shrink, so it is retried with backoff like any failed delivery.
    final: bool = False


def producer_config(settings: ShovelSettings, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka settings of the shovel's producer; ``overrides`` (--kafka-config) win."""
    config: dict[str, Any] = {
        **settings.kafka_client_config(),  # bootstrap.servers + TLS/SASL (trovemeter.security)
        "client.id": "trovemeter-shovel",
        "enable.idempotence": True,  # implies acks=all, max.in.flight <= 5, retries
        "acks": "all",
        # 20 ms (not 5): batches four times larger cut the broker's CPU per record several-fold
        # (bench/bench_shovel.py); the prefetch window covers the added latency many times over.
        "linger.ms": 20,
        "compression.type": "lz4",  # cheapest per byte here; zstd cost more CPU than it saved
        # Single records up to 4 MB (the broker's message.max.bytes is 4 MiB): dead letters of
        # oversized bodies keep up to DLQ_MAX_BODY_BYTES of the body.
        "message.max.bytes": 4_000_000,
        # A delivery that has not succeeded after a minute comes back as an error report: the
        # shovel re-produces it (never acks it), and counts and logs the outage.
        "message.timeout.ms": 60_000,
        # Java's and aiokafka's default partitioner: Faust and Java consumers agree on where a key
        # lives, so records keyed by resource id co-partition with their tables.
        "partitioner": "murmur2_random",
    }
    config.update(overrides or {})
    return config


class Shovel:
    """Consumes ``settings.queue`` and produces to ``topic`` (records) / ``dlq_topic``."""

    def __init__(
        self,
        settings: ShovelSettings,
        *,
        topic: str = topics.NOTIFICATIONS,
        dlq_topic: str = topics.NOTIFICATIONS_DLQ,
        stats: ShovelStats | None = None,
        serde: RecordSerde | None = None,
        normaliser: Normaliser | None = None,
        producer_overrides: dict[str, Any] | None = None,
        stop_timeout: float = 10.0,
        stall_after: float = 10.0,
        max_reconnect_delay: float = 10.0,
        parse_workers: int = 1,
    ) -> None:
        self.settings = settings
        self.topic, self.dlq_topic = topic, dlq_topic
        self.stats = stats or ShovelStats()
        self.serde = serde or serde_for(settings)
        self.normaliser = normaliser or Normaliser.from_settings(settings)
        self.stats.unmapped = self.normaliser.unknown_counts
        self.stats.topics_missing = {topic: 0, dlq_topic: 0}
        self._next_topic_check = 0.0
        self._producer_overrides = producer_overrides
        self.stop_timeout = stop_timeout
        self.stall_after = stall_after
        self.max_reconnect_delay = max_reconnect_delay
        self._max_bytes = settings.max_message_bytes
        self._transform = Transformer(max_bytes=settings.max_message_bytes, topic=topic,
                                      normaliser=self.normaliser, serde=self.serde)
        # Parsing in helper processes (0 = inline): deliveries wait in _batch until the loop
        # ships them; shipped batches wait in _pending for their outcomes, in order.
        self.parse_workers = parse_workers
        self._pool_config = {"max_bytes": settings.max_message_bytes, "topic": topic,
                             "event_mapping": settings.event_mapping,
                             "schema_registry_url": settings.schema_registry_url}
        self._pool: ParsePool | None = None
        self._batch: list[tuple[Delivery, bytes]] = []
        self._pending: deque[tuple[int, AckWindow, list[tuple[Delivery, bytes]]]] = deque()

        self._stopping = False
        self._producer: Producer | None = None
        self._producer_fatal: KafkaError | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._consumer_tag: str | None = None
        self._session_broken: str | None = None
        self._window = AckWindow()
        self._retries: list[tuple[float, int, _Out, int]] = []  # heap: (due, seq, out, attempt)
        self._seq = itertools.count()
        self._ever_connected = False

        # Kafka health, logged once per outage.
        self._kafka_failing_since: float | None = None
        self._outage_began = 0.0  # perf_counter() at the start of the current Kafka outage
        self._last_success = 0.0  # perf_counter() of the latest successful delivery report
        self._kafka_failures_in_outage = 0
        self._last_report_at = time.monotonic()
        self._all_brokers_down = False
        self._ever_reached_kafka = False
        self._last_delivery_ok: bool | None = None
        # Dead-letter log lines are rate-limited: a flood of garbage must not flood the log.
        self._dl_log_window_start = 0.0
        self._dl_logged = 0
        self._dl_suppressed = 0

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self, *_: Any) -> None:
        """Ask the loop to stop gracefully (signal-handler safe: only sets a flag)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self) -> int:
        """Run until stopped. Returns 0 after a graceful stop; raises ``ShovelConfigError``."""
        try:
            return self._run()
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def _start_pool(self) -> None:
        if self.parse_workers > 0:
            try:
                self._pool = ParsePool(self.parse_workers, self._pool_config)
            except ValueError as exc:
                raise ShovelConfigError(str(exc)) from None
        self._pending.clear()

    def _run(self) -> int:
        self._producer = self._new_producer()
        self._start_pool()
        self._await_kafka()
        backoff = _Backoff(self.max_reconnect_delay)
        outage_since: float | None = None
        last_error = ""
        while not self._stopping:
            try:
                self._open_session()
            except ShovelConfigError:
                self._close_connection()
                raise
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._close_connection()
                last_error = _describe(exc)
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("rabbitmq.unavailable", extra={
                        "url": self.settings.rabbit_url_masked, "error": last_error,
                        "retrying": "with backoff; logged again when connected"})
                self._idle(backoff.next())
                continue
            backoff.reset()
            if outage_since is not None:
                log.info("rabbitmq.connected" if not self._ever_connected else "rabbitmq.reconnected",
                         extra={"url": self.settings.rabbit_url_masked, "attempts": backoff.attempts_before_reset,
                                "down_seconds": round(time.monotonic() - outage_since, 1),
                                "last_error": last_error})
                outage_since = None
            else:
                log.info("rabbitmq.connected", extra={"url": self.settings.rabbit_url_masked})
            if self._ever_connected:
                self.stats.reconnects += 1
            self._ever_connected = True
            try:
                self._pump()
            except _SessionLost as lost:
                last_error = str(lost)
                outage_since = time.monotonic()
                log.warning("rabbitmq.session_lost", extra={
                    "error": last_error, "unacked_redelivered_by_rabbitmq": len(self._window),
                    "retrying": "with backoff; logged again when connected"})
                self._drop_session(rebuild_producer=lost.rebuild_producer,
                                   restart_pool=lost.restart_pool)
                continue
            break  # stopping
        self._shutdown()
        return 0

    def _new_producer(self) -> Producer:
        kafka_log = logging.getLogger("trovemeter.shovel.librdkafka")
        config = producer_config(self.settings, self._producer_overrides)
        config["error_cb"] = self._on_kafka_error
        config["logger"] = kafka_log
        return Producer(config)

    def _await_kafka(self) -> None:
        """Wait until Kafka answers; fail clearly when our topics do not exist."""
        assert self._producer is not None
        logged = False
        while not self._stopping:
            try:
                metadata = self._producer.list_topics(timeout=3)
            except KafkaException as exc:
                if not logged:
                    log.warning("kafka.unavailable", extra={
                        "bootstrap": self.settings.kafka_bootstrap, "error": str(exc),
                        "retrying": "until Kafka answers; not consuming meanwhile"})
                    logged = True
                self._idle(1.0)
                continue
            missing = [t for t in (self.topic, self.dlq_topic) if t not in metadata.topics]
            if missing:
                raise ShovelConfigError(
                    f"Kafka topic(s) {', '.join(missing)} do not exist on "
                    f"{self.settings.kafka_bootstrap} (auto-creation is off): run `trovemeter topics`")
            self.stats.kafka_ok = True
            self._all_brokers_down = False
            self._ever_reached_kafka = True
            self._last_report_at = time.monotonic()
            if logged:
                log.info("kafka.available", extra={"bootstrap": self.settings.kafka_bootstrap})
            return

    def _open_session(self) -> None:
        s = self.settings
        params = s.rabbit_parameters()  # pika.SSLOptions for amqps:// (trovemeter.security)
        params.connection_attempts = 1
        params.socket_timeout = 5
        # Shown by `rabbitmqctl list_connections client_properties` and the management UI.
        params.client_properties = {"connection_name": f"trovemeter-shovel {s.queue}",
                                    "product": "trovemeter shovel"}
        self._session_broken = None
        self._window = AckWindow()
        self._retries = []  # the old channel's deliveries come back from RabbitMQ
        try:
            connection = pika.BlockingConnection(params)
        except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError,
                pika.exceptions.ProbableAccessDeniedError) as exc:
            if not self._ever_connected:
                raise ShovelConfigError(
                    f"RabbitMQ at {s.rabbit_url_masked} refused the login: {_describe(exc)} "
                    f"(check TROVEMETER_RABBIT_URL's user, password and vhost)") from None
            raise
        self._connection = connection
        channel = connection.channel()
        durable = s.exchange_durable
        for exchange in s.exchanges:
            try:
                # Exactly as oslo.messaging declares its control exchange (kombu: topic,
                # durable=amqp_durable_queues, auto_delete=False), so either side may start first.
                channel.exchange_declare(exchange, exchange_type="topic", durable=durable,
                                         auto_delete=False)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code in (403, 406):
                    raise ShovelConfigError(
                        f"RabbitMQ refused to declare exchange {exchange!r} as type=topic, "
                        f"durable={str(durable).lower()}: {exc.reply_text}. "
                        f"The exchange exists with other settings: set TROVEMETER_EXCHANGE_DURABLE="
                        f"{str(not durable).lower()} (or --{'no-' if durable else ''}exchange-durable) "
                        f"to match how oslo.messaging declares it (its amqp_durable_queues option)"
                    ) from None
                raise
        try:
            channel.queue_declare(s.queue, durable=True, auto_delete=False, exclusive=False)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code in (403, 405, 406):
                raise ShovelConfigError(
                    f"RabbitMQ refused to declare queue {s.queue!r} as durable: {exc.reply_text}. "
                    f"Use another queue name (TROVEMETER_QUEUE / --queue) or delete the old queue"
                ) from None
            raise
        for exchange in s.exchanges:
            for routing_key in s.routing_keys:
                channel.queue_bind(s.queue, exchange, routing_key)
        channel.basic_qos(prefetch_count=s.prefetch)
        channel.add_on_cancel_callback(self._on_consumer_cancelled)
        # Before basic_consume: every delivery then takes the same path, in order (one that
        # pika decoded first would be handed out after later ones the reader decoded).
        install_delivery_reader(connection, channel.channel_number, self._on_delivery)
        self._consumer_tag = channel.basic_consume(s.queue, self._on_message)
        self._channel = channel
        self.stats.rabbit_connected = True
        log.debug("rabbitmq.consuming", extra={
            "queue": s.queue, "exchanges": list(s.exchanges), "routing_keys": list(s.routing_keys),
            "prefetch": s.prefetch, "exchange_durable": durable})

    def _on_consumer_cancelled(self, frame: Any) -> None:
        self._session_broken = "RabbitMQ cancelled the consumer (queue deleted?)"

    def _close_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self.stats.rabbit_connected = False
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail any way
                pass

    def _drop_session(self, rebuild_producer: bool, restart_pool: bool = False) -> None:
        """Forget the channel's deliveries (RabbitMQ redelivers them) and close it."""
        self._close_connection()
        self._window = AckWindow()
        self._retries = []
        self._batch = []  # batches already shipped come back and are dropped (window changed)
        self.stats.in_flight = 0
        if restart_pool and self._pool is not None:
            self._pool.close()
            self._pool = None
            self._start_pool()
        if rebuild_producer and self._producer is not None:
            old, self._producer = self._producer, None
            try:
                old.purge()
                old.flush(0)
            except Exception:  # noqa: BLE001
                pass
            self._producer_fatal = None
            self._producer = self._new_producer()

    def _idle(self, seconds: float) -> None:
        """Sleep, serving Kafka callbacks, interruptible by a stop request."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._producer is not None:
                self._producer.poll(min(left, 0.1))
            else:
                time.sleep(min(left, 0.1))

    # ------------------------------------------------------------------ the loop

    def _pump(self) -> None:
        connection, producer = self._connection, self._producer
        assert connection is not None and producer is not None
        try:
            while not self._stopping:
                window = self._window
                # While records are in flight, come back to Kafka's reports quickly; idle, wait
                # longer for RabbitMQ (any delivery ends the wait at once).
                connection.process_data_events(time_limit=0.002 if len(window) else 0.1)
                if self._batch:
                    self._submit_batch()
                if self._pending:
                    self._collect()
                producer.poll(0)
                if self._retries:
                    self._produce_due_retries()
                self._ack_confirmed()
                self._watch_kafka()
                if self._session_broken:
                    raise _SessionLost(self._session_broken)
                if self._producer_fatal is not None:
                    raise _SessionLost(f"Kafka producer fatal error: {self._producer_fatal.str()}",
                                       rebuild_producer=True)
        except ParsePoolDied as exc:
            raise _SessionLost(str(exc), restart_pool=True) from None
        except pika.exceptions.AMQPError as exc:
            raise _SessionLost(_describe(exc)) from None
        except OSError as exc:
            raise _SessionLost(_describe(exc)) from None

    def _ack_confirmed(self) -> None:
        window = self._window
        before = len(window)
        top = window.pop_ackable()
        if top is not None:
            # Counted before basic_ack: its I/O may bring (and track) new deliveries.
            self.stats.acked += before - len(window)
            self._channel.basic_ack(top, multiple=True)
        self.stats.in_flight = len(window)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        """pika's consumer callback. The ``DeliveryReader`` decodes the channel's deliveries
        before pika sees them; this takes any that pika would decode itself all the same."""
        self._on_delivery(Delivery.from_pika(method, properties), body)

    def _on_delivery(self, delivery: Delivery, body: bytes) -> None:
        """Called inside pika's I/O (``delivery_reader``): it must not call pika, nor raise
        what the loop handles (pika would take it for a broken connection), so the batch goes
        to the parser helpers from ``_pump``, once per read."""
        window = self._window
        window.track(delivery.delivery_tag)
        stats = self.stats
        stats.consumed += 1
        if delivery.redelivered:
            stats.redelivered += 1
        if self._pool is not None:
            self._batch.append((delivery, body))
            return
        self._emit(window, delivery, body,
                   self._transform(body, delivery.content_type, delivery.content_encoding))

    def _submit_batch(self) -> None:
        batch, self._batch = self._batch, []
        assert self._pool is not None
        batch_id = self._pool.submit([(body, delivery.content_type, delivery.content_encoding)
                                      for delivery, body in batch])
        self._pending.append((batch_id, self._window, batch))

    def _collect(self, timeout: float = 0.0) -> None:
        """Produce the outcomes the parser helpers finished, in delivery order."""
        pool = self._pool
        assert pool is not None
        for batch_id, outcomes in pool.ready(timeout):
            expected, window, batch = self._pending.popleft()
            assert expected == batch_id, (expected, batch_id)
            if window is not self._window:
                continue  # a channel that is gone: RabbitMQ redelivers these
            for (delivery, body), outcome in zip(batch, outcomes, strict=True):
                self._emit(window, delivery, body, outcome)
        if pool.unknown_by_helper:
            self.stats.unmapped = pool.unknown_counts()
            pool.unknown_by_helper.clear()

    def _emit(self, window: AckWindow, delivery: Delivery, body: bytes, outcome: Outcome) -> None:
        """Produce a record for ``outcome``, or a dead letter when it is a rejection."""
        message_id, key, value, headers = outcome
        if message_id is None:
            self._dead_letter(window, delivery, body, RejectReason(key), value)
            return
        headers.append((HEADER_EXCHANGE, delivery.exchange))
        headers.append((HEADER_ROUTING_KEY, delivery.routing_key))
        headers.append((HEADER_MESSAGE_ID, message_id))
        self._produce(_Out(self.topic, key, value, headers, delivery.delivery_tag, window, None,
                           delivery, body))

    def _dead_letter(self, window: AckWindow, delivery: Delivery, body: bytes,
                     reason: RejectReason, detail: str, max_body: int = DLQ_MAX_BODY_BYTES) -> None:
        detail = mask_url_password(" ".join(detail.split()))[:1000]  # one line, no secrets
        letter = DeadLetter.from_delivery(
            body, reason, detail, exchange=delivery.exchange or "",
            routing_key=delivery.routing_key or "",
            properties=_amqp_properties(delivery.properties),
            redelivered=bool(delivery.redelivered), max_body_bytes=max_body)
        try:
            value = self.serde.encode(letter, self.dlq_topic)
            headers = self.serde.headers_for(letter)
        except Exception as exc:  # noqa: BLE001
            if max_body == 0:
                raise  # cannot even write an empty dead letter: a bug; crash, RabbitMQ keeps it
            # Properties or detail we cannot encode: keep the body and the reason, drop the rest.
            log.error("shovel.dead_letter_encode_failed", extra={"error": str(exc)})
            letter = DeadLetter.from_delivery(
                body, reason, f"{detail} (properties dropped: {type(exc).__name__})",
                exchange=delivery.exchange or "", routing_key=delivery.routing_key or "",
                redelivered=bool(delivery.redelivered), max_body_bytes=max_body)
            value = self.serde.encode(letter, self.dlq_topic)
            headers = self.serde.headers_for(letter)
        headers.append((HEADER_EXCHANGE, delivery.exchange or ""))
        headers.append((HEADER_ROUTING_KEY, delivery.routing_key or ""))
        headers.append((HEADER_REASON, reason.value))
        found = _MESSAGE_ID_IN_RAW.search(body, 0, 8192)
        if found:
            headers.append((HEADER_MESSAGE_ID, found.group(1)))
        self._log_dead_letter(reason, detail, delivery, len(body))
        self._produce(_Out(self.dlq_topic, None, value, headers, delivery.delivery_tag, window,
                           reason.value, delivery, body, final=max_body == 0))

    def _produce(self, out: _Out, attempt: int = 0) -> None:
        """Hand ``out`` to librdkafka; its delivery report confirms the tag or schedules a retry."""
        producer = self._producer
        assert producer is not None
        stats = self.stats
        started = perf_counter()

        def report(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                reported = perf_counter()
                stats.produce_latency.observe(reported - started)
                self._last_success = reported
                self._all_brokers_down = False
                if out.reason is None:
                    stats.produced += 1
                else:
                    stats.count_dead_letter(out.reason)
                out.window.confirm(out.tag)
                self._last_report_at = 0.0  # "a report came": restarts the stall clock
                # Only a record produced after the outage began proves Kafka is back: a late
                # report for one written just before it would end the outage too early.
                if self._kafka_failing_since is not None and started >= self._outage_began:
                    self._kafka_recovered()
            else:
                self._delivery_failed(out, err, attempt)

        while True:
            try:
                producer.produce(out.topic, out.value, out.key, headers=out.headers,
                                 on_delivery=report)
                return
            except BufferError:  # librdkafka's local queue is full: serve reports, try again
                producer.poll(0.1)
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() in _TOO_LARGE and not out.final:
                    self._too_large(out, error)
                else:
                    # Not enqueued (unknown topic, a fatal producer state, ...): a failed
                    # delivery like any other: logged, counted, retried, never acked. Raising
                    # here would crash the shovel into a restart loop.
                    self._delivery_failed(out, error, attempt)
                return

    def _too_large(self, out: _Out, error: KafkaError) -> None:
        """Kafka will never take this record: a notification becomes a dead letter; a dead
        letter is re-sent with less of its body."""
        if out.reason is None:
            self._dead_letter(out.window, out.delivery, out.body, RejectReason.TOO_LARGE,
                              f"record of {len(out.value)} bytes refused by Kafka: {error.str()}")
        elif len(out.value) > 2 * DLQ_FALLBACK_BODY_BYTES:
            self._dead_letter(out.window, out.delivery, out.body, RejectReason(out.reason),
                              f"dead letter refused by Kafka ({error.str()}); body truncated",
                              max_body=DLQ_FALLBACK_BODY_BYTES)
        else:
            self._dead_letter(out.window, out.delivery, out.body, RejectReason(out.reason),
                              "dead letter refused by Kafka; body dropped", max_body=0)

    def _delivery_failed(self, out: _Out, err: KafkaError, attempt: int) -> None:
        """Never ack: retry with backoff (or dead-letter what Kafka can never take)."""
        self.stats.delivery_failures += 1
        self.stats.count_delivery_error(err.name())
        # A record too large for Kafka becomes a (smaller) dead letter at once: not an outage.
        # Anything else (timeouts, a missing topic, a broker that cannot write) is one.
        shrink = err.code() in _TOO_LARGE and not out.final
        if not shrink:
            self._last_delivery_ok = False
            if self._kafka_failing_since is None:
                self._kafka_outage(f"delivery failed: {err.str()}", code=err.name())
            self._kafka_failures_in_outage += 1
        if out.window is not self._window:
            return  # a delivery of a channel that is gone: RabbitMQ redelivers it
        if shrink:
            due, attempt = time.monotonic(), -1
        else:
            due = time.monotonic() + min(30.0, 0.5 * 2 ** min(attempt, 6))
        heapq.heappush(self._retries, (due, next(self._seq), out, attempt))

    def _produce_due_retries(self) -> None:
        now = time.monotonic()
        retries = self._retries
        while retries and retries[0][0] <= now:
            _, _, out, attempt = heapq.heappop(retries)
            if out.window is not self._window:
                continue
            if attempt < 0:
                self._too_large(out, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            else:
                self._produce(out, attempt + 1)

    # ------------------------------------------------------------------ Kafka health

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._producer_fatal = err
            log.error("kafka.producer_fatal", extra={"error": err.str(), "code": err.name()})
            return
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._all_brokers_down = True
            # Before start-up has reached Kafka, _await_kafka reports the outage itself. Right
            # after a delivery succeeded it is librdkafka reporting an old disconnect late: it
            # must not mark deliveries failing, as no outage would ever end that mark (a real
            # outage that begins so soon is caught by the stall watch instead).
            if self._kafka_failing_since is None and self._ever_reached_kafka \
                    and perf_counter() - self._last_success > STALE_BROKERS_DOWN_SECONDS:
                self._kafka_outage(err.str(), code=err.name())
        else:
            log.debug("kafka.client_error", extra={"error": err.str(), "code": err.name()})

    def _kafka_outage(self, why: str, code: str) -> None:
        self._kafka_failing_since = time.monotonic()
        self._outage_began = perf_counter()
        self._kafka_failures_in_outage = 0
        self.stats.kafka_outages += 1
        self.stats.kafka_ok = False
        log.warning("kafka.delivery_failing", extra={
            "error": why, "code": code, "in_flight": len(self._window),
            "action": "records are retried and their deliveries stay unacked in RabbitMQ; "
                      "logged again when deliveries succeed"})

    def _kafka_recovered(self) -> None:
        since = self._kafka_failing_since
        self._kafka_failing_since = None
        self._all_brokers_down = False
        self._last_delivery_ok = True
        self.stats.kafka_ok = True
        self._next_topic_check = 0.0
        log.info("kafka.delivery_recovered", extra={
            "outage_seconds": round(time.monotonic() - since, 1) if since else None,
            "failed_reports": self._kafka_failures_in_outage})
        missing = self.stats.topics_missing
        if any(missing.values()):
            log.info("kafka.topic_available",
                     extra={"topics": sorted(t for t, m in missing.items() if m)})
            self.stats.topics_missing = dict.fromkeys(missing, 0)

    def _check_topics(self) -> None:
        """While deliveries fail, look (every 30 s) whether a topic is the cause: one deleted
        while the shovel runs makes librdkafka time records out without saying why."""
        now = time.monotonic()
        if now < self._next_topic_check or self._producer is None:
            return
        self._next_topic_check = now + 30.0
        try:
            metadata = self._producer.list_topics(timeout=2)
        except Exception:  # noqa: BLE001 - a diagnosis only; it must never break the loop
            return  # Kafka itself does not answer: kafka.delivery_failing already says so
        known = metadata.topics
        missing = {t: int(t not in known or (known[t].error is not None and known[t].error.code()
                                              == KafkaError.UNKNOWN_TOPIC_OR_PART))
                   for t in self.stats.topics_missing}
        newly = sorted(t for t, m in missing.items() if m and not self.stats.topics_missing[t])
        self.stats.topics_missing = missing
        if newly:
            log.error("kafka.topic_missing", extra={
                "topics": newly, "bootstrap": self.settings.kafka_bootstrap,
                "action": "records for it are retried and their deliveries stay unacked in "
                          "RabbitMQ until the topic exists again: create it (trovemeter topics)"})

    def _watch_kafka(self) -> None:
        """No delivery report for ``stall_after`` seconds while records wait: an outage too
        (a stopped or partitioned broker produces no error until message.timeout.ms)."""
        now = time.monotonic()
        window = self._window
        if window.unconfirmed == 0 or self._last_report_at == 0.0:
            # Nothing waits (or a report just came): restart the stall clock.
            self._last_report_at = now
            return
        if self._kafka_failing_since is None and now - self._last_report_at > self.stall_after:
            self._kafka_outage(f"no delivery report for {self.stall_after:.0f}s", code="STALLED")
        if self._kafka_failing_since is not None:
            self._check_topics()

    def health(self) -> dict[str, Any]:
        stats = self.stats
        kafka_reachable = not self._all_brokers_down
        return {
            "healthy": bool(stats.rabbit_connected and stats.kafka_ok and not self._stopping),
            "rabbit_connected": stats.rabbit_connected,
            "kafka_reachable": kafka_reachable,
            "kafka_deliveries_ok": stats.kafka_ok,
            "last_delivery_ok": self._last_delivery_ok,
            "in_flight": stats.in_flight,
            "queue": self.settings.queue,
            "parse_workers": self._pool.workers if self._pool is not None else 0,
            "kafka_topics_missing": sorted(t for t, m in stats.topics_missing.items() if m),
            "stopping": self._stopping,
        }

    # ------------------------------------------------------------------ stopping

    def _shutdown(self) -> None:
        """Stop consuming, let outstanding records finish, ack what Kafka confirmed, close."""
        producer = self._producer
        assert producer is not None
        channel, connection = self._channel, self._connection
        deadline = time.monotonic() + self.stop_timeout
        window = self._window
        outstanding = window.unconfirmed
        try:
            if channel is not None and channel.is_open and self._consumer_tag:
                channel.basic_cancel(self._consumer_tag)  # pika requeues undispatched deliveries
            if self._batch:
                self._submit_batch()
            while window.unconfirmed and time.monotonic() < deadline:
                if self._pending:
                    self._collect(timeout=0.05)
                    producer.poll(0)
                else:
                    producer.poll(0.05)
                if self._retries:
                    self._produce_due_retries()
                if connection is not None:
                    connection.process_data_events(time_limit=0)
                self._ack_confirmed()
            if channel is not None and channel.is_open:
                self._ack_confirmed()
                for tag in window.pop_stragglers():
                    channel.basic_ack(tag, multiple=False)
                    self.stats.acked += 1
        except (pika.exceptions.AMQPError, OSError, ParsePoolDied) as exc:
            log.warning("shovel.stop_ack_failed", extra={"error": _describe(exc)})
        left = window.unconfirmed
        self.stats.in_flight = len(window)
        self._close_connection()
        pending = len(producer)
        if pending:
            producer.purge()
            producer.flush(1)
        log.info("shovel.stopped", extra={
            "outstanding_at_stop": outstanding, "left_unacked_in_rabbitmq": left,
            "consumed": self.stats.consumed, "acked": self.stats.acked,
            "produced": self.stats.produced,
            "dead_lettered": sum(self.stats.dead_lettered.values())})

    # ------------------------------------------------------------------ logs

    def _log_dead_letter(self, reason: RejectReason, detail: str, delivery: Delivery,
                         size: int) -> None:
        now = time.monotonic()
        if now - self._dl_log_window_start > 60:
            if self._dl_suppressed:
                log.warning("shovel.dead_letters_suppressed", extra={
                    "suppressed": self._dl_suppressed, "note": "log lines for further dead letters "
                    "were suppressed; see trovemeter_shovel_dead_lettered_total"})
            self._dl_log_window_start, self._dl_logged, self._dl_suppressed = now, 0, 0
        if self._dl_logged < 20:
            self._dl_logged += 1
            log.warning("shovel.dead_letter", extra={
                "reason": reason.value, "detail": detail, "exchange": delivery.exchange,
                "routing_key": delivery.routing_key, "body_length": size})
        else:
            self._dl_suppressed += 1


class _Backoff:
    """0.5 s, 1 s, 2 s, ... up to ``cap``."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.attempts = 0
        self.attempts_before_reset = 0

    def next(self) -> float:
        self.attempts += 1
        return min(self.cap, 0.5 * 2 ** min(self.attempts - 1, 10))

    def reset(self) -> None:
        self.attempts_before_reset = self.attempts + 1
        self.attempts = 0


def _amqp_properties(properties: Any) -> AmqpProperties:
    try:
        props = AmqpProperties.from_object(properties)
    except Exception:  # noqa: BLE001 - odd header values: keep the rest
        props = AmqpProperties(content_type=getattr(properties, "content_type", None),
                               content_encoding=getattr(properties, "content_encoding", None))
    return _redacted_properties(props)


def _redacted_properties(props: AmqpProperties) -> AmqpProperties:
    """The dead letter keeps the AMQP properties: a header named like a secret (``x-auth-token``)
    is masked, and so are secrets inside header values (nested tables) and URL passwords in
    any text property."""
    headers = {}
    for key, value in props.headers.items():
        if is_secret_key(key):
            headers[key] = MASK
        else:
            headers[key] = scrub_raw(value.encode("utf-8", "surrogatepass")).decode(
                "utf-8", "surrogatepass")
    texts = {name: mask_url_password(value) for name in (
        "correlation_id", "reply_to", "message_id", "type", "user_id", "app_id", "cluster_id")
        if isinstance(value := getattr(props, name), str)}
    return dataclasses.replace(props, headers=headers, **texts)


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return mask_url_password(f"{type(exc).__name__}: {text}")

