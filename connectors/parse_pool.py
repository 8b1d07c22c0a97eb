"""Parse + normalise + encode: the shovel's CPU-heavy step, inline or in helper processes.

``Transformer`` turns one delivered body into an ``Outcome`` with ``trovemeter.envelope`` and
``trovemeter.codec`` (the only place the shovel calls them). ``ParsePool`` runs transformers in
helper processes so that RabbitMQ/Kafka I/O (the shovel's main loop) and parsing use two cores:
the main process ships batches of raw bodies over a pipe and gets the outcomes back **in
submission order**, so records leave in the order RabbitMQ delivered them.

A helper holds no state that matters: if one dies, the shovel drops its RabbitMQ session (every
unacked delivery is redelivered) and starts a new pool. Helpers exit when the main process goes
away (EOF on the pipe, and PR_SET_PDEATHSIG on Linux), so kill -9 of the shovel leaves nothing.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter, deque
from multiprocessing.connection import Connection
from typing import Any

from connectors.gc_tuning import settle_after_startup
from trovemeter.envelope import BadNotification, parse_fields
from trovemeter.model import Notification, RejectReason

# (message_id, key, value, headers) for a record; (None, reason value, detail, None) for a
# delivery to dead-letter.
Outcome = tuple[Any, Any, Any, Any]
Item = tuple[bytes, str | None, str | None]  # body, content_type, content_encoding
_FIELD_INDEX = {field: index for index, field in enumerate(Notification.__dataclass_fields__)}
_MESSAGE_ID, _REQUEST_ID, _RESOURCE_ID = (_FIELD_INDEX[name] for name in (
    "message_id", "request_id", "resource_id"))


class Transformer:
    """One delivered body -> ``Outcome``; never raises for a bad body."""

    def __init__(self, *, max_bytes: int, topic: str, normaliser: Any, serde: Any) -> None:
        self.max_bytes, self.topic = max_bytes, topic
        self.normaliser, self.serde = normaliser, serde
        # Single-object Avro is written straight from the parsed field values; other wire
        # formats get the Notification.
        self._encode_fields = serde.fields_encoder(Notification)
        self._header = serde.headers_for(Notification)[0]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Transformer:
        from trovemeter.codec import serde_for
        from trovemeter.normalise import Normaliser
        from trovemeter.settings import CommonSettings

        settings = CommonSettings(max_message_bytes=config["max_bytes"],
                                  event_mapping=config.get("event_mapping"),
                                  schema_registry_url=config.get("schema_registry_url"))
        return cls(max_bytes=config["max_bytes"], topic=config["topic"],
                   normaliser=Normaliser.from_settings(settings), serde=serde_for(settings))

    def __call__(self, body: bytes, content_type: str | None,
                 content_encoding: str | None) -> Outcome:
        try:
            fields = parse_fields(body, max_bytes=self.max_bytes, content_type=content_type,
                                  content_encoding=content_encoding, normaliser=self.normaliser)
        except BadNotification as exc:
            return (None, exc.reason.value, exc.detail, None)
        except Exception as exc:  # noqa: BLE001 - a parser bug must not lose the delivery
            return (None, RejectReason.OTHER.value, f"parser failed: {type(exc).__name__}: {exc}",
                    None)
        try:
            if self._encode_fields is not None:
                value = self._encode_fields(fields)
                headers = [self._header]
            else:
                notification = Notification(*fields)
                value = self.serde.encode(notification, self.topic)
                headers = self.serde.headers_for(notification)
        except Exception as exc:  # noqa: BLE001 - CodecError or a bug: dead-letter, never drop
            return (None, RejectReason.ENCODE_FAILED.value, f"{type(exc).__name__}: {exc}", None)
        key = fields[_RESOURCE_ID] or fields[_REQUEST_ID]  # Notification.kafka_key
        return (fields[_MESSAGE_ID], key.encode() if key is not None else None, value, headers)

    def unknown_counts(self) -> Counter[str]:
        return self.normaliser.unknown_counts


class ParsePoolDied(RuntimeError):
    """A helper process is gone (crashed or killed)."""


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pack(batch_id: int, items: list[Item]) -> bytes:
    """A batch as one ``Connection.send_bytes`` message: the length of a pickled (batch id,
    body lengths, (content type, content encoding) of each body), that pickle, then the bodies
    back to back. Pickling the bodies themselves cost the main process more than the rest of
    the batch."""
    head = pickle.dumps((batch_id, [len(body) for body, _, _ in items],
                         [(ctype, cenc) for _, ctype, cenc in items]), protocol=5)
    size = 4 + len(head) + sum(len(body) for body, _, _ in items)
    # Connection's framing: a signed 32-bit big-endian length, or -1 and a 64-bit one.
    frame = struct.pack("!i", size) if size <= 0x7FFFFFFF else struct.pack("!iQ", -1, size)
    return b"".join([frame, len(head).to_bytes(4, "little"), head,
                     *[body for body, _, _ in items]])


def _unpack(data: bytes) -> tuple[int, list[bytes], list[tuple[Any, Any]]]:
    """``_pack``'s batch id, bodies and their (content type, content encoding)."""
    head_end = 4 + int.from_bytes(data[:4], "little")
    batch_id, lengths, kinds = pickle.loads(memoryview(data)[4:head_end])
    bodies, start = [], head_end
    for length in lengths:
        bodies.append(data[start:start + length])
        start += length
    return batch_id, bodies, kinds


def _helper_main(conn: Connection) -> None:
    """A helper process: its config, then batches in, outcomes out, until EOF or b""."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        config = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    try:
        transform = Transformer.from_config(config)
    except Exception as exc:  # noqa: BLE001 - e.g. an invalid event mapping: tell the parent
        conn.send_bytes(pickle.dumps(("error", f"{type(exc).__name__}: {exc}")))
        return
    settle_after_startup()
    conn.send_bytes(pickle.dumps(("ready", os.getpid())))
    counts = transform.unknown_counts()
    seen_unknown = sum(counts.values())
    dumps = pickle.dumps
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        batch_id, bodies, kinds = _unpack(data)
        outcomes = [transform(body, ctype, cenc)
                    for body, (ctype, cenc) in zip(bodies, kinds, strict=True)]
        unknown = None
        total = sum(counts.values()) if counts else 0
        if total != seen_unknown:
            seen_unknown, unknown = total, dict(counts)
        try:
            conn.send_bytes(dumps((batch_id, outcomes, unknown), protocol=5))
        except OSError:  # the main process closed the pool
            return


class ParsePool:
    """``workers`` helper processes; ``submit`` batches, ``ready`` returns outcomes in order.

    Batches go out without blocking (what a helper's socket cannot take yet waits here and is
    sent by the next ``submit`` or ``ready``): a helper blocked writing outcomes the main
    process is not reading yet, while the main process blocked writing a batch that helper is
    not reading yet, would be a deadlock once both exceed the socket buffers.
    """

    def __init__(self, workers: int, config: dict[str, Any], start_timeout: float = 60.0) -> None:
        # Plain subprocesses on a socketpair rather than multiprocessing's spawn, which would
        # re-run the host program's __main__ in each helper.
        self._conns: list[Connection] = []  # outcomes in (blocking reads)
        self._socks: list[socket.socket] = []  # batches out (non-blocking sends)
        self._unsent: list[deque[memoryview]] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._next_submit = 0
        self._next_result = 0
        self._done: dict[int, tuple[list[Outcome], int]] = {}
        self.unknown_by_helper: dict[int, dict[str, int]] = {}
        try:
            for _ in range(workers):
                ours, theirs = socket.socketpair()
                process = subprocess.Popen(
                    [sys.executable, "-m", "connectors.parse_pool", str(theirs.fileno())],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
                theirs.close()
                conn = Connection(os.dup(ours.fileno()))
                self._conns.append(conn)
                self._socks.append(ours)
                self._unsent.append(deque())
                self._procs.append(process)
                conn.send_bytes(pickle.dumps(config))
            for conn in self._conns:
                if not conn.poll(start_timeout):
                    raise ParsePoolDied(f"parser helper did not start within {start_timeout:.0f}s")
                try:
                    kind, detail = pickle.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    raise ParsePoolDied("parser helper exited during start-up") from None
                if kind != "ready":
                    raise ValueError(f"parser helper could not start: {detail}")
        except BaseException:
            self.close()
            raise

    @property
    def workers(self) -> int:
        return len(self._conns)

    @property
    def outstanding(self) -> int:
        """Batches submitted whose outcomes were not handed out yet."""
        return self._next_submit - self._next_result

    def submit(self, items: list[Item]) -> int:
        batch_id = self._next_submit
        self._unsent[batch_id % len(self._socks)].append(memoryview(_pack(batch_id, items)))
        self._next_submit += 1
        self._send()
        return batch_id

    def _send(self) -> None:
        """Send what each helper's socket takes now."""
        for index, unsent in enumerate(self._unsent):
            sock = self._socks[index]
            while unsent:
                try:
                    sent = sock.send(unsent[0], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                except OSError as exc:
                    raise ParsePoolDied(f"parser helper {self._procs[index].pid} gone: "
                                        f"{exc}") from None
                if sent == len(unsent[0]):
                    unsent.popleft()
                else:
                    unsent[0] = unsent[0][sent:]

    def ready(self, timeout: float = 0.0) -> list[tuple[int, list[Outcome]]]:
        """Outcomes of the oldest batches that are done, in submission order. Waits up to
        ``timeout`` for the oldest one when nothing is ready."""
        if self.outstanding == 0:
            return []
        deadline = time.monotonic() + timeout
        while True:
            self._send()
            self._receive()
            left = deadline - time.monotonic()
            if self._next_result in self._done or left <= 0:
                break
            select.select(self._conns, [sock for sock, unsent in zip(self._socks, self._unsent)
                                        if unsent], [], left)
        out = []
        while self._next_result in self._done:
            outcomes, _ = self._done.pop(self._next_result)
            out.append((self._next_result, outcomes))
            self._next_result += 1
        return out

    def _receive(self) -> None:
        for index, conn in enumerate(self._conns):
            try:
                while conn.poll(0):
                    batch_id, outcomes, unknown = pickle.loads(conn.recv_bytes())
                    self._done[batch_id] = (outcomes, index)
                    if unknown is not None:
                        self.unknown_by_helper[index] = unknown
            except (EOFError, OSError) as exc:
                raise ParsePoolDied(f"parser helper {self._procs[index].pid} died: "
                                    f"{type(exc).__name__}") from None

    def unknown_counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.unknown_by_helper.values():
            total.update(counts)
        return total

    def close(self, timeout: float = 5.0) -> None:
        for sock in self._socks:  # EOF for the helper, also in the middle of a batch
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for process in self._procs:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        for conn in self._conns:
            conn.close()
        for sock in self._socks:
            sock.close()
        self._conns, self._socks, self._unsent, self._procs = [], [], [], []


if __name__ == "__main__":  # a helper: python -m connectors.parse_pool FD
    _helper_main(Connection(int(sys.argv[1])))
