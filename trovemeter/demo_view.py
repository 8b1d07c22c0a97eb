"""The demo's live terminal view: a frame of plain text from the run's numbers.

Pure: ``render_frame(state)`` returns the lines of one frame (ANSI colours when asked);
``Screen`` redraws frames in place on a terminal (cursor up + clear line, no curses), and
``progress_line`` is what a non-terminal stdout gets every few seconds instead.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from trovemeter.demo_summary import fmt_duration


@dataclass
class LiveState:
    run_id: str
    seed: int
    tenants: int
    instances: int
    hours: int
    speed: float
    dashboard_url: str | None
    run_dir: str = ".stack/run"
    phase: str = "starting"  # starting, publishing, settling, done, interrupted
    elapsed_s: float = 0.0
    sim_now: datetime | None = None
    published: int = 0
    total: int = 0
    in_topic: int = 0  # distinct message ids of this run in trove.notifications
    expected_ids: int = 0
    dead_letters: int = 0
    garbage: int = 0
    publish_rate: float = 0.0
    topic_rate: float = 0.0
    ops_rate: float = 0.0
    worker_lag: int | None = None
    usage_note: str = "no usage yet"
    snapshot: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _bar(fraction: float, width: int = 24) -> str:
    fraction = min(1.0, max(0.0, fraction))
    done = int(round(fraction * width))
    return "█" * done + "░" * (width - done)


def render_frame(state: LiveState, *, color: bool = True, width: int = 100,
                 max_lines: int = 60) -> list[str]:
    def c(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if color else text

    dim, bold, green, red, yellow, cyan = "2", "1", "32", "31", "33", "36"
    snap = state.snapshot or {}
    ops = snap.get("operations", {})
    errors = snap.get("errors", {})
    lines = [
        c(f"trovemeter demo · run {state.run_id} · seed {state.seed} · {state.tenants} tenants · "
          f"{state.instances} instances · {state.hours} h simulated at {state.speed:,.0f}x", bold)
        + c(f"   {_clock(state.elapsed_s)}  {state.phase}", dim),
        "dashboard " + (c(state.dashboard_url, cyan) if state.dashboard_url else
                        c("not served by this worker", yellow)) + c(f"   logs {state.run_dir}/", dim),
    ]
    fraction = state.published / state.total if state.total else 0.0
    sim = state.sim_now.strftime("%Y-%m-%d %H:%M UTC") if state.sim_now else "-"
    lines.append(f"simulated clock {sim}  {_bar(fraction)} {fraction:4.0%}")
    lines.append(
        f"messages  published {state.published:>6}/{state.total:<6} "
        f"{c(f'{state.publish_rate:6.1f}/s', dim)}   in trove.notifications "
        f"{state.in_topic:>6}/{state.expected_ids:<6} {c(f'{state.topic_rate:6.1f}/s', dim)}   "
        f"dead-lettered {state.dead_letters}/{state.garbage}")
    by_outcome = ops.get("by_outcome", {})
    lag = "-" if state.worker_lag is None else str(state.worker_lag)
    lines.append(
        f"worker    operations {ops.get('total', 0):>5} {c(f'{state.ops_rate:5.1f}/s', dim)}  "
        f"{c('succeeded ' + str(by_outcome.get('succeeded', 0)), green)}  "
        f"{c('failed ' + str(by_outcome.get('failed', 0)), red)}  "
        f"{c('abandoned ' + str(by_outcome.get('abandoned', 0)), yellow)}   "
        f"errors {errors.get('total', 0)}   resources {snap.get('resources', {}).get('total', 0)}"
        f"   lag {lag}")
    if state.note:
        lines.append(c(state.note, yellow))
    lines.append("")
    lines.append(c(f"{'operation':<24}{'n':>5}{'ok':>6}{'failed':>8}{'aband.':>8}"
                   f"{'p50':>10}{'p95':>10}", bold))
    rows = ops.get("by_operation", [])
    for row in rows:
        failed, abandoned = f"{row['failed']:>8}", f"{row['abandoned']:>8}"
        lines.append(f"{row['name']:<24}{row['count']:>5}{row['succeeded']:>6}"
                     f"{c(failed, red) if row['failed'] else failed}"
                     f"{c(abandoned, yellow) if row['abandoned'] else abandoned}"
                     f"{fmt_duration(row['p50_s']):>10}{fmt_duration(row['p95_s']):>10}")
    if not rows:
        lines.append(c("  (no operation out of the worker yet)", dim))
    lines.append("")
    lines.append(c("top errors", bold))
    top = errors.get("top", [])
    for row in top[:5]:
        message = row["last_message"].replace("\n", " ")
        text = (f"{row['count']:>4}  {row['operation']:<24}{row['exception_class'][:45]:<46}"
                f"{message}")
        lines.append(text[: width - 1])
    if not top:
        lines.append(c("  (none yet)", dim))
    lines.append("")
    lines.append(c(f"{'usage per tenant':<20}{'instance h':>12}{'volume GB·h':>14}"
                   f"{'backup GB·h':>14}{'exists h':>10}", bold))
    usage = snap.get("usage")
    if usage:
        for row in sorted(usage["tenants"], key=lambda r: -r["instance_hours"])[:8]:
            lines.append(f"{row['tenant_id'][:16]:<20}{row['instance_hours']:>12,.2f}"
                         f"{row['volume_gb_hours']:>14,.1f}{row['backup_gb_hours']:>14,.2f}"
                         f"{row['exists_hours']:>10,.0f}")
    else:
        lines.append(c(f"  ({state.usage_note})", dim))
    return lines[:max_lines]


def clip(line: str, width: int) -> str:
    """``line`` cut to ``width`` visible characters; ANSI colour codes do not count."""
    out: list[str] = []
    visible = 0
    i = 0
    while i < len(line):
        if line[i] == "\x1b":
            end = line.find("m", i)
            if end < 0:
                break
            out.append(line[i:end + 1])
            i = end + 1
            continue
        if visible >= width:
            out.append("\x1b[0m")
            break
        out.append(line[i])
        visible += 1
        i += 1
    return "".join(out)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def progress_line(state: LiveState) -> str:
    """One line for a stdout that is not a terminal."""
    ops = (state.snapshot or {}).get("operations", {})
    by_outcome = ops.get("by_outcome", {})
    return (f"demo {_clock(state.elapsed_s)} {state.phase}: published {state.published}/"
            f"{state.total}, in trove.notifications {state.in_topic}/{state.expected_ids}, "
            f"dead-lettered {state.dead_letters}/{state.garbage}, operations "
            f"{ops.get('total', 0)} (succeeded {by_outcome.get('succeeded', 0)}, failed "
            f"{by_outcome.get('failed', 0)}, abandoned {by_outcome.get('abandoned', 0)}), errors "
            f"{(state.snapshot or {}).get('errors', {}).get('total', 0)}")


class Screen:
    """Redraws a frame in place: moves up over the previous frame and overwrites it."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self._height = 0

    def draw(self, lines: list[str]) -> None:
        size = shutil.get_terminal_size((100, 40))
        # A wrapped line would take two rows and the next frame would be drawn too low.
        lines = [clip(line, size.columns - 1) for line in lines[: max(5, size.lines - 2)]]
        out = []
        if self._height:
            out.append(f"\x1b[{self._height}F")  # to the start of the frame's first line
        out.extend(f"{line}\x1b[K\n" for line in lines)
        out.append("\x1b[J")  # clear what an older, longer frame left below
        self.stream.write("".join(out))
        self.stream.flush()
        self._height = len(lines)

    def release(self) -> None:
        """Leave the last frame on screen; later output goes below it."""
        self._height = 0
