"""Feeding the orchestrator: bounded concurrency, results in input order, re-runs of a run id.

Pure asyncio over a small port (:class:`TaskPort`: ``submit``, ``retry``, ``wait``, which the
orchestrator actor answers); no Ray here, so the logic runs in unit tests against a fake.

What one row does (:func:`run_row`), given its deterministic task id:

* ``submit``: a new task starts; the same id submitted before answers with the stored record;
* stored and ``completed``: *skipped*, the stored record is the result (nothing runs);
* stored and ``failed``: *re-run*: ``retry`` takes it out of the dead-letter queue and resumes it
  from its last good checkpoint, then ``wait``;
* stored and unfinished (an earlier job was interrupted; the task kept running on the cluster):
  ``wait`` for it;
* stored with another description or tenant: the run id was reused for other input; the row fails
  with a message saying so, and nothing runs.

A call that raises (the orchestrator restarting, the store briefly away) is tried again, up to
:data:`ROW_ATTEMPTS` times: submitting the same task id twice never runs it twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from cluster.jobs.batch_report import Disposition, Outcome
from officeray.contracts import TaskRecord, TaskRequest, TaskStatus
from officeray.errors import TaskNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 64
"""Tasks in flight against the orchestrator at once (``--concurrency``)."""

ORDER_WINDOW_ROWS = 10_000
"""Most rows started ahead of the first row whose result is not written yet (at least twice the
concurrency): bounds the finished results held back to keep the output in input order."""

ROW_ATTEMPTS = 5
"""Tries of one row when an orchestrator call raises; then the row is reported failed."""

ROW_RETRY_INITIAL_S = 1.0
"""Wait before the second try of a row; doubled for each further try."""

ROW_RETRY_MAX_S = 10.0
"""Longest wait between two tries of a row."""


class TaskPort(Protocol):
    """The orchestrator as the batch job uses it (:class:`actors.client.OrchestratorClient`)."""

    async def submit(self, request: TaskRequest) -> tuple[TaskRecord, bool]:
        """Start the task unless its id exists: ``(record, created)``."""
        ...

    async def retry(self, task_id: str) -> TaskRecord:
        """Re-run a dead-lettered task; :class:`TaskNotFoundError` when it is not in the queue."""
        ...

    async def wait(self, task_id: str) -> TaskRecord:
        """The final record of the task."""
        ...


def conflict_of(stored: TaskRecord, request: TaskRequest) -> str | None:
    """Why ``stored`` is not the task of ``request`` (its id was reused for other input), if so."""
    if stored.description != request.description or stored.tenant != request.tenant:
        return (
            f"task id {stored.task_id} already names another task ({stored.description[:60]!r}, "
            f"tenant {stored.tenant}): the run id was reused for different input; use a new --run-id"
        )
    return None


def failed_record(request: TaskRequest, error: str) -> TaskRecord:
    """The record of a row whose task could not be run at all (it has no finish time)."""
    assert request.task_id is not None
    return TaskRecord(
        task_id=request.task_id,
        description=request.description,
        tenant=request.tenant,
        status=TaskStatus.FAILED,
        error=error,
    )


class _Row:
    """One row across its tries: what earlier tries may have done decides what a stored record means."""

    def __init__(self, port: TaskPort, index: int, request: TaskRequest) -> None:
        assert request.task_id is not None
        self.port = port
        self.index = index
        self.request = request
        self.task_id = request.task_id
        self.maybe_created = False
        """A submit of this job created the task, or raised so that it may have."""
        self.disposition = Disposition.NEW

    async def attempt(self) -> Outcome:
        try:
            stored, created = await self.port.submit(self.request)
        except Exception:
            self.maybe_created = True
            raise
        if created:
            self.maybe_created = True
        else:
            conflict = conflict_of(stored, self.request)
            if conflict is not None:
                return Outcome(self.index, failed_record(self.request, conflict), Disposition.CONFLICT)
            if stored.status.is_final and (self.maybe_created or self.disposition == Disposition.RERUN):
                return Outcome(self.index, stored, self.disposition)  # this job's run of it ended
            if stored.status == TaskStatus.COMPLETED:
                return Outcome(self.index, stored, Disposition.SKIPPED)
            if stored.status == TaskStatus.FAILED:
                try:
                    await self.port.retry(self.task_id)
                except TaskNotFoundError:  # not in the dead-letter queue (any more): its failure stands
                    return Outcome(self.index, stored, self.disposition)
                self.disposition = Disposition.RERUN
            elif not self.maybe_created and self.disposition == Disposition.NEW:
                self.disposition = Disposition.RESUMED
        return Outcome(self.index, await self.port.wait(self.task_id), self.disposition)


async def run_row(
    port: TaskPort,
    index: int,
    request: TaskRequest,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Outcome:
    """The outcome of one row (see the module docstring); never raises for a failed call."""
    row = _Row(port, index, request)
    delay = ROW_RETRY_INITIAL_S
    for attempt in range(1, ROW_ATTEMPTS + 1):
        try:
            return await row.attempt()
        except Exception as exc:
            if attempt == ROW_ATTEMPTS:
                error = f"the orchestrator could not run it ({attempt} tries): {type(exc).__name__}: {exc}"
                return Outcome(index, failed_record(request, error), row.disposition)
            logger.warning("task %s: %r; trying again in %.1fs", row.task_id, exc, delay)
            await sleep(delay)
            delay = min(delay * 2, ROW_RETRY_MAX_S)
    raise AssertionError("unreachable")


async def run_rows(
    rows: AsyncIterator[tuple[int, TaskRequest]],
    port: TaskPort,
    *,
    concurrency: int,
    on_outcome: Callable[[Outcome], None],
    window: int = ORDER_WINDOW_ROWS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run every row, at most ``concurrency`` at once; ``on_outcome`` gets them in row order.

    ``rows`` yields indexes 0, 1, 2, ... and is read only as slots free up (it may stream from
    storage). A row starts only while it is fewer than ``max(window, 2 * concurrency)`` rows ahead of
    the first row not yet handed to ``on_outcome``. An exception from ``on_outcome`` (the output
    cannot be written) stops the whole run.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    window = max(window, 2 * concurrency)
    slots = asyncio.Semaphore(concurrency)
    finished: dict[int, Outcome] = {}
    next_out = 0
    moved = asyncio.Condition()

    async def one(index: int, request: TaskRequest) -> None:
        nonlocal next_out
        try:
            finished[index] = await run_row(port, index, request, sleep=sleep)
        finally:
            slots.release()
        while next_out in finished:
            on_outcome(finished.pop(next_out))
            next_out += 1
        async with moved:
            moved.notify_all()

    try:
        async with asyncio.TaskGroup() as group:
            async for index, request in rows:
                await slots.acquire()
                async with moved:
                    await moved.wait_for(lambda: index < next_out + window)  # noqa: B023 (awaited here)
                group.create_task(one(index, request))
    except ExceptionGroup as errors:  # the first error says it; the rows in flight were cancelled
        raise errors.exceptions[0] from None
