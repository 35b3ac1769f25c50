"""Durable task state with SQLAlchemy Core: a SQLite file by default, PostgreSQL by URL.

One async API with typed results, :class:`TaskStore` (:mod:`officeray.store.api`), implemented by
:class:`SqlStore` here and by :class:`~officeray.testing.InMemoryStore` for tests; both pass
``tests/store/test_store_conformance.py``. There is no synchronous API: every production caller is
async (the orchestrator actor, the gateway), and the SQL store never blocks their event loop (see
:mod:`officeray.store.sql`). The store's benchmark is ``python -m loadtests.bench_store``.

Tables (:mod:`officeray.store.schema`), each with the module that reads and writes it:

* ``tasks``: one row per task, the full :class:`~officeray.contracts.TaskRecord` as JSON plus the
  columns that are queried and the :class:`~officeray.contracts.TaskRequest`; ``task_events``: every
  transition of a task, in order (:mod:`~officeray.store.tasks`);
* ``step_results``: each step's result under its plan ``idempotency_key`` (:mod:`~officeray.store.steps`);
* ``tenant_usage``: model tokens and cost summed per tenant over finished tasks
  (:mod:`~officeray.store.usage`);
* ``tenant_daily_usage``: the same per tenant and UTC day, written with the totals (the daily token
  budget reads it; :mod:`~officeray.store.usage`);
* ``task_feedback``: users' ratings, comments and labels of tasks (:mod:`~officeray.store.feedback`);
* ``api_keys``: API keys (argon2id hashes), each bound to a tenant and a role, with the secret that
  signs its tasks' webhooks (:mod:`~officeray.store.keys`);
* ``task_leases``: which orchestrator runs which unfinished task, until when (:mod:`~officeray.store.leases`);
* ``dlq``: the dead-letter queue, tasks given up on, with the reason and the full record
  (:mod:`~officeray.store.dlq`);
* ``idempotency_keys``: ``Idempotency-Key`` headers per tenant, with the task they created
  (:mod:`~officeray.store.idempotency`);
* ``approvals``: the first decision on a step that waits for a human, keyed by the task and the step's
  idempotency key (:mod:`~officeray.store.approvals`);
* ``webhook_outbox`` and ``webhook_attempts``: the webhooks to deliver, written with the transition each
  announces, leased by the orchestrator delivering it, and every attempt (:mod:`~officeray.store.outbox`);
* ``spans``: the trace store, finished spans of every process (:mod:`~officeray.store.spans`);
* ``memory_entries``: the memory, one entry per finished task attempt with its vector (float32 bytes)
  and the encoder that made it; ``seq`` is the entry's id in its tenant's faiss index
  (:mod:`~officeray.store.memory`);
* ``schema_migrations``: which of :data:`MIGRATIONS` this database has had, and when.

The schema is changed only by :data:`MIGRATIONS`, applied when a store is opened (:func:`migrate`);
a database newer than this code is refused. Every insert-or-update is one ``INSERT ... ON CONFLICT``
statement, so concurrent writers never race into an integrity error.

A database that cannot be reached (server down, connection refused, SQLite locked past its busy
timeout) raises :class:`~officeray.errors.StoreUnavailableError` from every method; callers answer
503 with ``Retry-After``. Other database failures raise :class:`~officeray.errors.StoreError`.

The workflow writes each transition here before it acts on it, *fenced* on its task's lease
(``owner``: written only while that owner holds the lease, checked in the write's transaction, so a
run that lost its task to another orchestrator never overwrites the newer record), and the end of a
run (final record, dead-letter entry, tenant usage) in one transaction (``finish_task``). Those
writes go through one writer thread per store that commits every write waiting in one transaction
(group commit, :mod:`officeray.store.writer`).
"""

from officeray.contracts import (
    APPROVAL_VERDICTS,
    ApprovalDecision,
    ApprovalVerdict,
    DlqDetail,
    DlqEntry,
    DlqStepError,
    TaskEvent,
)
from officeray.errors import StoreError, StoreUnavailableError
from officeray.store.api import (
    CLAIM_LIMIT,
    DLQ_LIST_LIMIT,
    MEMORY_PAGE_LIMIT,
    TASK_LIST_LIMIT,
    IdempotencyClaim,
    ResumableTask,
    TaskStore,
)
from officeray.store.engine import (
    POSTGRES_CONNECT_TIMEOUT_S,
    POSTGRES_MAX_OVERFLOW,
    POSTGRES_POOL_RECYCLE_S,
    POSTGRES_POOL_SIZE,
    POSTGRES_POOL_TIMEOUT_S,
    SQLITE_BUSY_TIMEOUT_MS,
    SUPPORTED_BACKENDS,
)
from officeray.store.leases import CLAIM_BATCH_SIZE
from officeray.store.schema import MIGRATIONS, SCHEMA_VERSION, Migration, metadata, migrate
from officeray.store.sql import SqlStore
from officeray.store.writer import GROUP_COMMIT_MAX_WRITES

__all__ = [
    "APPROVAL_VERDICTS",
    "CLAIM_BATCH_SIZE",
    "CLAIM_LIMIT",
    "DLQ_LIST_LIMIT",
    "GROUP_COMMIT_MAX_WRITES",
    "MEMORY_PAGE_LIMIT",
    "MIGRATIONS",
    "POSTGRES_CONNECT_TIMEOUT_S",
    "POSTGRES_MAX_OVERFLOW",
    "POSTGRES_POOL_RECYCLE_S",
    "POSTGRES_POOL_SIZE",
    "POSTGRES_POOL_TIMEOUT_S",
    "SCHEMA_VERSION",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SUPPORTED_BACKENDS",
    "TASK_LIST_LIMIT",
    "ApprovalDecision",
    "ApprovalVerdict",
    "DlqDetail",
    "DlqEntry",
    "DlqStepError",
    "IdempotencyClaim",
    "Migration",
    "ResumableTask",
    "SqlStore",
    "StoreError",
    "StoreUnavailableError",
    "TaskEvent",
    "TaskStore",
    "metadata",
    "migrate",
]
