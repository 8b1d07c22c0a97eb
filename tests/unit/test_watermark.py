"""The low watermark of a pairing partition (trovemeter/watermark.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from trovemeter.watermark import LowWatermark, SourceProgress

T0 = datetime(2026, 11, 25, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def behind(partition: int, minutes: int | None) -> SourceProgress:
    return SourceProgress(partition, None if minutes is None else at(minutes), False)


def idle(partition: int, minutes: int | None) -> SourceProgress:
    return SourceProgress(partition, None if minutes is None else at(minutes), True)


def test_unknown_until_every_source_partition_was_reported() -> None:
    mark = LowWatermark(3)
    assert mark.update([behind(0, 50), behind(1, 60)]) is None
    assert mark.update([behind(2, 40)]) == at(40)


def test_the_slowest_partition_that_is_behind_sets_event_time() -> None:
    mark = LowWatermark(3)
    assert mark.update([behind(0, 300), behind(1, 10), idle(2, 400)]) == at(10)
    assert mark.behind() == [0, 1]
    # The slow partition catches up: the fastest one still behind sets it.
    assert mark.update([behind(1, 200)]) == at(200)


def test_when_nothing_is_behind_event_time_is_the_newest_read() -> None:
    mark = LowWatermark(3)
    assert mark.update([idle(0, 30), idle(1, None), idle(2, 45)]) == at(45)


def test_a_partition_behind_with_nothing_read_yet_holds_everything_back() -> None:
    mark = LowWatermark(2)
    assert mark.update([behind(0, None), idle(1, 100)]) is None


def test_event_time_and_each_partitions_progress_never_go_back() -> None:
    mark = LowWatermark(2)
    assert mark.update([behind(0, 100), behind(1, 120)]) == at(100)
    # A new owner of partition 0 starts over (a restart) and reports less: no step back.
    assert mark.update([behind(0, 20)]) == at(100)
    assert mark.update([behind(0, None)]) == at(100)
    assert mark.update([behind(0, 130)]) == at(120)


def test_reports_of_partitions_beyond_the_count_are_ignored() -> None:
    mark = LowWatermark(1)
    assert mark.update([behind(0, 10), behind(7, 1)]) == at(10)


reports = st.lists(
    st.builds(SourceProgress, st.integers(0, 3),
              st.one_of(st.none(), st.integers(0, 10_000).map(at)), st.booleans()),
    max_size=40)


@given(reports, st.integers(1, 5))
def test_event_time_is_the_greatest_safe_moment_so_far(batch: list[SourceProgress],
                                                       chunk: int) -> None:
    """At every step: event time = the greatest of the moments the reports so far made safe,
    where a moment is safe when every partition still behind has been read through it."""
    mark = LowWatermark(4)
    caught_up: dict[int, bool] = {}
    progress: dict[int, datetime] = {}
    best: datetime | None = None
    for i in range(0, len(batch), chunk):
        part = batch[i:i + chunk]
        now = mark.update(part)
        for r in part:
            caught_up[r.partition] = r.caught_up
            if r.read_through is not None:
                progress[r.partition] = max(progress.get(r.partition, r.read_through),
                                            r.read_through)
        safe: datetime | None = None
        if len(caught_up) == 4:
            lagging = [p for p, done in caught_up.items() if not done]
            if lagging and all(p in progress for p in lagging):
                safe = min(progress[p] for p in lagging)
                assert all(progress[p] >= safe for p in lagging)
            elif not lagging:
                safe = max(progress.values(), default=None)
        if safe is not None and (best is None or safe > best):
            best = safe
        assert now == best
