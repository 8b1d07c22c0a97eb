"""Oslo message -> canonical ``Notification``, driven by the event mapping (``mapping.py``)."""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from trovemeter.mapping import EventMapping, first_value, load_mapping
from trovemeter.model import Notification, Phase

if TYPE_CHECKING:
    from datetime import datetime

    from trovemeter.envelope import OsloMessage
    from trovemeter.settings import CommonSettings

# Distinct unmapped event types counted one by one; beyond this they share one bucket, so a
# stream of garbage event types cannot grow the counter without bound.
UNKNOWN_TYPES_TRACKED = 1000
OTHER_UNKNOWN = "<other>"

_TRACEBACK_HEADER = "Traceback (most recent call last):"
# `module.Class: message` or `Class: message`, as Python prints an exception's last line.
_EXCEPTION_LINE = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?::[ \t]?(.*))?\Z", re.DOTALL)


def error_details(exception: Any, message: Any) -> tuple[str | None, str | None]:
    """(exception_class, error_message) of an error notification.

    ``exception`` is Trove's formatted traceback, whose final exception line reads
    ``trove.common.exception.TroveError: No valid host`` -> class ``trove.common.exception
    .TroveError``; design-note payloads carry just ``str(exc)``, which names no class.
    The message is the payload's ``message`` when present, else the exception's own text.
    """
    exception_text = _text(exception)
    exception_class, exception_message = (
        _parse_exception(exception_text) if exception_text else (None, None)
    )
    error_message = _text(message) or exception_message
    return exception_class, error_message


def _parse_exception(text: str) -> tuple[str | None, str | None]:
    lines = text.strip().splitlines()
    if not lines:
        return None, None
    if _TRACEBACK_HEADER in text:
        # The exception starts at the first unindented line after the last indented frame line;
        # its message may continue over several lines.
        start = len(lines) - 1
        while start > 0 and not lines[start - 1].startswith((" ", "\t", _TRACEBACK_HEADER)):
            start -= 1
        final = "\n".join(lines[start:])
        match = _EXCEPTION_LINE.match(final)
        if match:
            return match.group(1), (match.group(2) or "").strip() or None
        return None, lines[-1].strip()
    # Without a traceback the text is str(exc): only a dotted name or a name ending in Error or
    # Exception before the colon is a class, so "Timeout waiting: 30s" is not read as one.
    match = _EXCEPTION_LINE.match(text.strip())
    if match and ("." in match.group(1) or match.group(1).endswith(("Error", "Exception"))):
        return match.group(1), (match.group(2) or "").strip() or None
    return None, text.strip()


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


class Normaliser:
    """Turns parsed oslo messages into ``Notification``s and counts unmapped event types."""

    def __init__(self, mapping: EventMapping) -> None:
        self.mapping = mapping
        # Unmapped event type -> how many were seen (exposed as a metric by the shovel).
        self.unknown_counts: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> Normaliser:
        """Built-in mapping plus ``settings.event_mapping``; raises ``MappingError`` if invalid."""
        return cls(load_mapping(settings.event_mapping))

    def normalise(self, message: OsloMessage) -> Notification:
        return Notification(*self.fields(
            message.message_id, message.publisher_id, message.event_type, message.priority,
            message.occurred_at, message.payload, message.context))

    def fields(self, message_id: str, publisher_id: str, event_type: str, priority: str,
               occurred_at: datetime, payload: dict[str, Any],
               context: dict[str, Any]) -> tuple[Any, ...]:
        """``normalise``'s ``Notification`` as its field values in order (from the
        ``OsloMessage`` fields), for encoders that need no dataclass."""
        mapping = self.mapping
        event = mapping.classify(event_type)
        if not event.known:
            self._count_unknown(event_type)
        exception_class = error_message = None
        if event.phase is Phase.ERROR or "exception" in payload:
            exception_class, error_message = error_details(
                payload.get("exception"), payload.get("message")
            )
        return (
            message_id,
            event_type,
            event.resource_type,
            event.operation,
            event.phase,
            publisher_id,
            priority,
            occurred_at,
            first_value(mapping.request_id_paths, payload, context),  # request_id
            first_value(event.resource_id_paths, payload, context),  # resource_id
            first_value(mapping.tenant_id_paths, payload, context),  # tenant_id
            first_value(mapping.user_id_paths, payload, context),  # user_id
            error_message,
            exception_class,
            payload,
            context,
        )

    def _count_unknown(self, event_type: str) -> None:
        counts = self.unknown_counts
        if event_type in counts or len(counts) < UNKNOWN_TYPES_TRACKED:
            counts[event_type] += 1
        else:
            counts[OTHER_UNKNOWN] += 1
