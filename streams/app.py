"""The Faust app, its settings and the process's GC threshold, nothing else: `faust -A
streams.app worker -l info` (or `trovemeter worker`) starts it; the agents, tables, views and
the dashboard are found by autodiscovery of the ``streams`` package (``streams/agents.py``
lists the agents).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import faust

from trovemeter.security import faust_credentials
from trovemeter.settings import WorkerSettings

settings = WorkerSettings()
log = logging.getLogger("trovemeter.streams")


class LeanMonitor(faust.Monitor):  # type: ignore[misc]
    """Faust's monitor without its bookkeeping on every message and event (counters, a latency
    deque, a state dict per event). Nothing in the worker reads those figures; the rest of the
    monitor (commits, rebalances, assignment, web requests) is kept."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any,
                            state: Any = None) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass


# The tables hold one object graph per resource and operation, and each event allocates a few
# hundred short-lived objects (decoded notification, states, records) freed by reference
# counting: the default threshold (700) runs a young collection every few events, which
# rescans survivors for nothing. 20,000: ~4% less CPU per event (bench/profile_worker.py).
gc.set_threshold(20_000, 10, 10)

# mode's logging setup leaves the root logger at DEBUG (the handler filters), so every
# aiokafka debug call builds a LogRecord: ~10% of the worker's CPU, measured. Their own level.
for _name in ("aiokafka", "faust", "mode"):
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger(_name).setLevel(logging.INFO)

class WorkerApp(faust.App):  # type: ignore[misc]
    """Faust's app with the lean consumer (``streams/consumer.py``) when Faust is the version
    its fetch loop was copied from."""

    def _new_transport(self) -> Any:
        from streams.consumer import LEAN_FAUST_VERSION, LeanTransport

        if faust.__version__ != LEAN_FAUST_VERSION:
            log.warning("faust %s, not %s: Faust's own consumer (streams/consumer.py)",
                        faust.__version__, LEAN_FAUST_VERSION)
            return super()._new_transport()
        return LeanTransport(self.conf.broker_consumer, self)


app = WorkerApp(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    broker_credentials=faust_credentials(settings),  # TLS/SASL (docs/security.md); None: plaintext
    store=settings.store,
    datadir=settings.data_dir,
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=1,
    # At-least-once with idempotent state and deterministic output ids: exactly-once with
    # group_by and tables hangs in recovery (faust-pitfalls.md, #47). The outbox
    # (streams/outbox.py) makes every output and table change durable before offsets commit.
    processing_guarantee="at_least_once",
    broker_commit_interval=settings.commit_interval_seconds,
    broker_session_timeout=settings.session_timeout_seconds,
    # No standbys: on this CPU-bound worker each standby would consume every other worker's
    # changelogs as they are written; a moved partition is recovered from its compacted
    # changelog instead (streams/tables.py).
    table_standby_replicas=0,
    web_host=settings.web_host,
    # web_host only names the server in URLs; Faust binds 0.0.0.0 unless told (docs/security.md)
    web_bind=settings.web_host,
    web_port=settings.web_port,
    # What the other workers use to reach this one (the views fan out to every worker): the
    # bind address, not the host name Faust would guess.
    canonical_url=settings.web_canonical_url or f"http://{settings.web_host}:{settings.web_port}",
    autodiscover=True,
    origin="streams",
    monitor=LeanMonitor(),
)
