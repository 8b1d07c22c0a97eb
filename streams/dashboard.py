"""The worker's dashboard: a small HTML page on the worker's web server (no build step, no CDN).

    /dashboard/            the page (streams/dashboard/index.html, dashboard.js, dashboard.css)
    /dashboard/summary/    JSON: operations by outcome with p50/p95 per operation and the recent
                           durations, top errors, resources by state, usage per tenant, dead
                           letters (``trovemeter.pipeline_tally``'s snapshot)

The numbers come from the worker's own output topics (trove.operations, trove.errors,
trove.resources, trove.usage, trove.notifications.dlq), read from the moment this worker
started by a background consumer that assigns partitions and commits nothing. It starts on the
first request, so a worker nobody looks at pays nothing. Reading the topics rather than the
agents' tables keeps the page independent of how the agents keep their state: it shows exactly
what downstream consumers receive.

Registered on import: ``streams/app.py`` autodiscovers every module of the ``streams`` package,
so `trovemeter worker` serves the dashboard without further wiring.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from streams.app import app, settings
from trovemeter import topics

log = logging.getLogger("trovemeter.dashboard")

STATIC_DIR = Path(__file__).with_name("dashboard")
# The worker's own output topics (its TROVEMETER_*_TOPIC settings), and the shovel's dead
# letters next to its source topic (`<source>.dlq`, as trove.notifications.dlq).
DLQ_TOPIC = f"{getattr(settings, 'source_topic', topics.NOTIFICATIONS)}.dlq"
FEED_TOPICS = (getattr(settings, "operations_topic", topics.OPERATIONS),
               getattr(settings, "errors_topic", topics.ERRORS),
               getattr(settings, "resources_topic", topics.RESOURCES),
               getattr(settings, "usage_topic", topics.USAGE), DLQ_TOPIC)
# Views of the streams agents the page links to (and polls, when the worker serves them).
KNOWN_VIEWS = ("/operations/open/", "/operations/recent/", "/errors/")
_STARTED_MS = int(time.time() * 1000)
APP_ID_HEADER = "trovemeter.app_id"  # on output records, when the agents set it
_CONTENT_TYPES = {".html": "text/html", ".js": "application/javascript", ".css": "text/css"}


class DashboardFeed:
    """Background consumer of the output topics into a ``PipelineTally`` (thread-safe reads)."""

    def __init__(self, bootstrap: Any, since_ms: int, app_id: str = "") -> None:
        self.bootstrap = bootstrap
        self.app_id = app_id.encode()
        self.since_ms = since_ms
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._tally: Any = None
        self.error: str | None = None
        self.caught_up = False
        self.undecodable = 0

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="dashboard-feed",
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from connectors.topic_reader import TopicReader
        from trovemeter.codec import serde_for
        from trovemeter.pipeline_tally import PipelineTally

        serde = serde_for(settings)
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._tally = self._tally or PipelineTally()
                with TopicReader(self.bootstrap, FEED_TOPICS, since_ms=self.since_ms) as reader:
                    self.error = None
                    while not self._stop.is_set():
                        batch = reader.poll(timeout=0.5, max_records=1000)
                        decoded = []
                        for message in batch:
                            value = message.value()
                            if value is None or self._foreign(message):
                                continue
                            try:
                                decoded.append(serde.decode(value, message.topic()))
                            except Exception:  # noqa: BLE001 - foreign records are skipped
                                self.undecodable += 1
                        with self._lock:
                            self._tally.add_all(decoded)
                            self.caught_up = self.caught_up or reader.at_end()
            except Exception as exc:  # noqa: BLE001 - keep serving the page; retry
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("dashboard.feed_error", extra={"error": self.error})
                self._stop.wait(2.0)
                with self._lock:  # start over from the worker's start: no double counting
                    self._tally = None
                    self.caught_up = False

    def _foreign(self, message: Any) -> bool:
        """Written by another app's worker on the same topics (when outputs carry the app id
        header): not this worker's numbers."""
        if message.topic() == DLQ_TOPIC:
            return False
        producer = dict(message.headers() or ()).get(APP_ID_HEADER)
        return producer is not None and producer != self.app_id

    def snapshot(self) -> dict[str, Any]:
        from trovemeter.pipeline_tally import PipelineTally

        with self._lock:
            tally = self._tally or PipelineTally()
            snap = tally.snapshot()
        snap["feed"] = {"since": _iso_ms(self.since_ms), "caught_up": self.caught_up,
                        "error": self.error, "undecodable": self.undecodable}
        return snap


feed = DashboardFeed(settings.kafka_client_config(), _STARTED_MS, settings.app_id)


def _iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def served_views() -> list[str]:
    """The streams agents' views this worker serves (the page polls only these)."""
    try:
        router = app.web.web_app.router
        paths = {getattr(r, "canonical", "") for r in router.resources()}
    except Exception:  # noqa: BLE001 - before the web server is set up
        return []
    return [path for path in KNOWN_VIEWS if path in paths or path.rstrip("/") in paths]


def _static(name: str) -> tuple[str, str]:
    path = STATIC_DIR / name
    return path.read_text(encoding="utf-8"), _CONTENT_TYPES[path.suffix]


@app.page("/dashboard/")
async def dashboard_page(self: Any, request: Any) -> Any:
    feed.ensure_started()
    text, content_type = _static("index.html")
    return self.text(text, content_type=content_type, headers={"Cache-Control": "no-store"})


@app.page("/dashboard/dashboard.js")
async def dashboard_script(self: Any, request: Any) -> Any:
    text, content_type = _static("dashboard.js")
    return self.text(text, content_type=content_type, headers={"Cache-Control": "no-store"})


@app.page("/dashboard/dashboard.css")
async def dashboard_style(self: Any, request: Any) -> Any:
    text, content_type = _static("dashboard.css")
    return self.text(text, content_type=content_type, headers={"Cache-Control": "no-store"})


@app.page("/dashboard/summary/")
async def dashboard_summary(self: Any, request: Any) -> Any:
    feed.ensure_started()
    snap = feed.snapshot()
    snap["worker"] = {"app_id": settings.app_id, "views": served_views(),
                      "now": _iso_ms(int(time.time() * 1000))}
    return self.json(snap, headers={"Cache-Control": "no-store"})
