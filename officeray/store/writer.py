"""Group commit: the writer thread behind the store's hot writes.

A write is a *job*: a function of a connection, run inside a transaction. :class:`GroupCommitter`
takes every job waiting and commits them in ONE transaction, in the order they were submitted, then
wakes each caller. Two kinds of jobs know about task leases:

* :class:`Fenced`: runs only while its ``owner`` holds the lease on its task (checked in the same
  transaction); otherwise it is skipped and answers False;
* :class:`LeaseChange`: takes or gives up a lease; fenced jobs of that task after it in its
  transaction read the lease again.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Engine

from officeray.errors import StoreUnavailableError
from officeray.store.engine import write_transaction

GROUP_COMMIT_MAX_WRITES = 256
"""Most writes committed together in one transaction by the writer thread."""

WRITER_STOP_TIMEOUT_S = 10.0
"""How long :meth:`GroupCommitter.close` waits for the writer thread to finish its batch."""

Work = Callable[[Connection], Any]


@dataclass(frozen=True)
class Fenced:
    """A write that runs only while ``owner`` holds the lease on ``task_id``; otherwise it is skipped
    and answers False (see :func:`run_in_order`)."""

    task_id: str
    owner: str
    work: Work


@dataclass(frozen=True)
class LeaseChange:
    """A write that takes or gives up the lease on ``task_id``: fenced writes of that task after it
    in its transaction read the lease again."""

    task_id: str
    work: Work


@dataclass(frozen=True)
class Rows:
    """A write of fixed statements, one row each (``rows``, in statement order), that can share
    them with the other :class:`Rows` writes of its ``kind`` next to it in a transaction: ``many``
    runs each statement once for all their rows (``executemany``), in submission order. Answers
    ``result``. The hot writes (a task's transitions, its steps' results) are these."""

    kind: str
    rows: tuple[dict[str, Any], ...]
    many: Callable[[Connection, list[tuple[dict[str, Any], ...]]], None]
    result: Any = None

    def __call__(self, conn: Connection) -> Any:
        self.many(conn, [self.rows])
        return self.result


Job = Work | Fenced | LeaseChange
Holders = Callable[[Connection, list[str]], dict[str, str]]
"""``holders(conn, task_ids)``: who holds the lease of each of ``task_ids`` that has one."""
_Queued = tuple[Job, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def fenced(work: Work, task_id: str, owner: str | None) -> Job:
    """``work`` on ``task_id``, fenced on ``owner``'s lease when given."""
    return work if owner is None else Fenced(task_id, owner, work)


def run_in_order(conn: Connection, jobs: Sequence[Job], holders: Holders) -> list[Any]:
    """Run ``jobs`` in order in ``conn``'s transaction and return their results.

    Fences cost one look-up per transaction, not one per write: before any job runs, the leases of
    every fenced job's task are read at once (``holders``; on PostgreSQL their rows are locked first,
    in one order, so writers of the same tasks never wait for each other in a cycle). A task's lease
    is read again for its fenced jobs after a job that changed it.

    :class:`Rows` writes (fenced or not) that follow each other are run together, each kind's
    statements once for all their rows, in their order, before the next job of another sort: every
    table sees its writes in submission order, and nothing else runs in between.
    """
    fenced_ids = sorted({job.task_id for job in jobs if isinstance(job, Fenced)})
    held = holders(conn, fenced_ids) if fenced_ids else {}
    changed: set[str] = set()
    results: list[Any] = [None] * len(jobs)
    pending: dict[str, list[tuple[int, Rows]]] = {}

    def flush() -> None:
        for group in pending.values():
            group[0][1].many(conn, [rows.rows for _, rows in group])
            for index, rows in group:
                results[index] = rows.result
        pending.clear()

    for index, job in enumerate(jobs):
        work: Any = job
        if isinstance(job, Fenced):
            if job.task_id in changed:
                changed.discard(job.task_id)
                held.pop(job.task_id, None)
                held.update(holders(conn, [job.task_id]))
            if held.get(job.task_id) != job.owner:
                results[index] = False
                continue
            work = job.work
        if isinstance(work, Rows):
            pending.setdefault(work.kind, []).append((index, work))
            continue
        flush()
        if isinstance(job, LeaseChange):
            results[index] = job.work(conn)
            changed.add(job.task_id)
        else:
            results[index] = work(conn)
    flush()
    return results


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (cancelled); the write itself happened or not, as it went
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class GroupCommitter:
    """Group commit for the store's writes: a writer thread takes every write waiting and commits
    them in ONE transaction, in the order they were submitted, then wakes each caller.

    Each caller still awaits its own write's commit (a transition is stored before it is acted
    on); what is shared is the transaction's begin/commit (on PostgreSQL, its fsync) and the
    thread hand-off, and the lease look-up of the batch's fenced writes (:func:`run_in_order`).
    When a batch fails on a statement's error (not on an unreachable store), the transaction is
    rolled back and its writes run again one transaction each, so only the bad one fails.
    """

    def __init__(self, engine: Engine, holders: Holders) -> None:
        self._engine = engine
        self._holders = holders
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, work: Job) -> asyncio.Future[Any]:
        """Queue ``work(conn)``; the future gets its result once its transaction committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._ensure_thread()
        self._queue.put((work, future, loop))
        return future

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="officeray-store-writer", daemon=True)
                self._thread.start()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=WRITER_STOP_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < GROUP_COMMIT_MAX_WRITES:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Queued]) -> None:
        try:
            with write_transaction(self._engine) as conn:
                results = run_in_order(conn, [job for job, _, _ in batch], self._holders)
        except StoreUnavailableError as exc:
            for _, future, loop in batch:
                loop.call_soon_threadsafe(_resolve, future, None, exc)
        except Exception as exc:
            if len(batch) > 1:
                for item in batch:
                    self._commit([item])
            else:
                _, future, loop = batch[0]
                loop.call_soon_threadsafe(_resolve, future, None, exc)
        else:
            for (_, future, loop), result in zip(batch, results, strict=True):
                loop.call_soon_threadsafe(_resolve, future, result, None)
