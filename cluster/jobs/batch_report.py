"""What the batch job tells its user: the progress bar of the job logs and the summary at the end.

Pure: the tally takes outcomes, the formatters take numbers; the clock is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from cluster.jobs.batch_io import record_latency_s
from officeray.contracts import ModelUsage, TaskRecord, TaskStatus
from officeray.stats import percentiles

PROGRESS_BAR_WIDTH = 20
"""Characters of the bar between the brackets."""


class Disposition(StrEnum):
    """What the job did with a row's task."""

    NEW = "new"
    """Submitted by this job."""
    RERUN = "rerun"
    """Had failed under the same run id: re-run from the dead-letter queue."""
    RESUMED = "resumed"
    """Was still running under the same run id (an earlier, interrupted job): waited for."""
    SKIPPED = "skipped"
    """Had completed under the same run id: its stored record is reused, nothing runs."""
    CONFLICT = "conflict"
    """Its task id names a different task already (the run id was reused for other input)."""


@dataclass(frozen=True)
class Outcome:
    """The final record of one row's task, and what the job did to get it."""

    index: int
    record: TaskRecord
    disposition: Disposition = Disposition.NEW


@dataclass
class Tally:
    """Counts of the outcomes so far; latency and tokens of the tasks this job ran (not skipped)."""

    total: int
    """Rows of the input (known from the check before the run)."""
    completed: int = 0
    """Completed in this job (new, re-run or waited for); skipped ones are not counted here."""
    failed: int = 0
    skipped: int = 0
    rerun: int = 0
    latencies: list[float] = field(default_factory=list)
    usage: ModelUsage = field(default_factory=ModelUsage)

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.skipped

    @property
    def all_completed(self) -> bool:
        return self.failed == 0

    def add(self, outcome: Outcome) -> None:
        record = outcome.record
        if outcome.disposition == Disposition.SKIPPED:
            self.skipped += 1
            return
        if record.status == TaskStatus.COMPLETED:
            self.completed += 1
        else:
            self.failed += 1
        self.rerun += outcome.disposition == Disposition.RERUN
        latency = record_latency_s(record)
        if latency is not None:
            self.latencies.append(latency)
        self.usage = self.usage + record.usage


def progress_line(tally: Tally, elapsed_s: float, width: int = PROGRESS_BAR_WIDTH) -> str:
    """``[#########-----------] 45/100 done (44 completed, 1 failed, 0 skipped) 3.2 tasks/s``."""
    total = max(tally.total, tally.done)
    filled = width if total == 0 else min(width, tally.done * width // total)
    rate = tally.done / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"[{'#' * filled}{'-' * (width - filled)}] {tally.done}/{total} done "
        f"({tally.completed} completed, {tally.failed} failed, {tally.skipped} skipped) {rate:.1f} tasks/s"
    )


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}s"


def summary_lines(tally: Tally, *, run_id: str, elapsed_s: float, start_up_s: float = 0.0) -> list[str]:
    """The summary printed at the end of the job (the first line says ``N completed, M failed``).

    ``elapsed_s`` is the run itself; ``start_up_s`` the time to reach the cluster and the app first.
    """
    p50, p95 = percentiles(tally.latencies, (50, 95)) if tally.latencies else (None, None)
    usage = tally.usage
    lines = [
        f"batch: run {run_id}: {tally.done} task(s) in {elapsed_s:.1f}s: {tally.completed} completed, "
        f"{tally.failed} failed, {tally.skipped} skipped (completed earlier), {tally.rerun} re-run "
        f"(start-up {start_up_s:.1f}s)",
        f"batch: latency p50 {_seconds(p50)} p95 {_seconds(p95)}; "
        f"tokens {usage.prompt_tokens} prompt + {usage.completion_tokens} completion = {usage.total_tokens} "
        f"(tasks run by this job)",
    ]
    if tally.failed:
        lines.append(
            f"batch: re-submit with --run-id {run_id} to re-run the failed tasks (completed ones are skipped)"
        )
    else:
        lines.append(f"batch: re-submit with --run-id {run_id} to reuse these results without running again")
    return lines
