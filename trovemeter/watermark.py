"""Event time of a stream fed by several source partitions: the low watermark.

Pure: no Faust, no Kafka, no clock.

A pairing partition receives the start/end/error events of every source partition, and the
workers read those at different speeds: after a restart one source partition may be hours (of
event time) behind another. If the pairing partition's event time were the greatest
``occurred_at`` it had seen, the fast partitions would push it past starts whose ends are still
unread on a slow one, and those starts would be abandoned although their ends come. So its event
time is the *low watermark*: the least progress among the source partitions that still have
something to deliver.

Each worker reports, for every source partition it reads, how far it has read (the greatest
``occurred_at``) and whether it has caught up with the partition's end (nothing more to read
now, so the partition holds nothing back; what it receives next is newer than anything read).
A pairing partition folds the reports of all workers:

- until every source partition has been reported once, event time is unknown (nothing expires);
- otherwise it is the least ``read_through`` among the partitions that are behind, or, when none
  is behind, the greatest ``read_through`` of all (the stream is idle at its head);
- ``read_through`` of a partition never goes back (a new owner starting over reports less), and
  event time never goes back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class SourceProgress:
    """One worker's word on one source partition."""

    partition: int
    read_through: datetime | None  # the greatest occurred_at read from it; None: nothing yet
    caught_up: bool  # nothing more to read from it right now


class LowWatermark:
    """Event time of one pairing partition, from the progress of ``partitions`` sources."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._progress: dict[int, SourceProgress] = {}
        self.now: datetime | None = None

    def update(self, reports: Iterable[SourceProgress]) -> datetime | None:
        """Fold reports in; returns event time (None while some source was never reported)."""
        for report in reports:
            if not 0 <= report.partition < self.partitions:
                continue  # from a worker configured with more partitions: not ours to count
            previous = self._progress.get(report.partition)
            read = report.read_through
            if previous is not None and previous.read_through is not None and (
                    read is None or read < previous.read_through):
                read = previous.read_through
            self._progress[report.partition] = SourceProgress(report.partition, read,
                                                              report.caught_up)
        candidate = self._candidate()
        if candidate is not None and (self.now is None or candidate > self.now):
            self.now = candidate
        return self.now

    def behind(self) -> list[int]:
        """The source partitions holding event time back (for the status view)."""
        return sorted(p.partition for p in self._progress.values() if not p.caught_up)

    def _candidate(self) -> datetime | None:
        if len(self._progress) < self.partitions:
            return None
        behind = [p.read_through for p in self._progress.values() if not p.caught_up]
        if behind:
            if any(read is None for read in behind):
                return None
            return min(read for read in behind if read is not None)
        return max((p.read_through for p in self._progress.values()
                    if p.read_through is not None), default=None)
