"""The store's tables, and the migrations that own them.

The schema is changed only by :data:`MIGRATIONS`, applied in order by :func:`migrate` when a store is
opened, inside one transaction that holds the database's write lock (``pg_advisory_xact_lock`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so processes that open a fresh database at once migrate
it once. A database newer than this code is refused with :class:`~officeray.errors.StoreError`.

Each table is built by a function named after the migration that created (or last changed) it; a
migration that changes a table adds a new function and keeps the old one for older migrations.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from officeray.contracts import utcnow
from officeray.errors import StoreError
from officeray.store.engine import translated, write_transaction

KEY_CHARS = 256
"""Width of the columns that hold a step's idempotency key (at most
:data:`~officeray.contracts.MAX_IDEMPOTENCY_KEY_CHARS`); task ids and tenants (at most 100 characters,
:class:`~officeray.contracts.TaskRequest`) fit the 128 of theirs. SQLite does not enforce widths,
PostgreSQL does: a value over its column's width is a :class:`~officeray.errors.StoreError` there."""

_MIGRATION_LOCK_KEY = int.from_bytes(b"ofcrmigr", "big")
"""PostgreSQL advisory lock held while migrating (any constant that other code does not use)."""


def _tasks_v1(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "tasks",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False, index=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("request", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _task_events_v1(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "task_events",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(128), nullable=False, index=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )


def _step_results_v1(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "step_results",
        md,
        sa.Column("idempotency_key", sa.String(256), primary_key=True),
        sa.Column("task_id", sa.String(128), nullable=False, index=True),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _tenant_usage_v1(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "tenant_usage",
        md,
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, default=0),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, default=0),
        sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
        sa.Column("calls", sa.BigInteger, nullable=False, default=0),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _task_leases_v2(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "task_leases",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False, index=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def _dlq_v2(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "dlq",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False, index=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def _idempotency_keys_v2(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "idempotency_keys",
        md,
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(256), primary_key=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def _approvals_v2(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "approvals",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("step_id", sa.String(64), primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )


def _approvals_v3(md: sa.MetaData) -> sa.Table:
    """``step_id`` holds the step's idempotency key (a decision belongs to one round's step), up to
    :data:`~officeray.contracts.MAX_IDEMPOTENCY_KEY_CHARS` long; version 2 held 64 characters."""
    return sa.Table(
        "approvals",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("step_id", sa.String(KEY_CHARS), primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )


def _api_keys_v4(md: sa.MetaData) -> sa.Table:
    """API keys: an argon2id hash of each key (never the key), its tenant and role."""
    return sa.Table(
        "api_keys",
        md,
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False, index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("webhook_secret", sa.String(256), nullable=False),
        sa.Column("name", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )


def _webhook_outbox_v5(md: sa.MetaData) -> sa.Table:
    """Webhook deliveries to make (:class:`~officeray.webhooks.WebhookDelivery`): one row per event
    and URL, written with the transition that causes it; leased by the orchestrator delivering it."""
    return sa.Table(
        "webhook_outbox",
        md,
        sa.Column("delivery_id", sa.String(64), primary_key=True),
        sa.Column("task_id", sa.String(128), nullable=False, index=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(256), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Index("ix_webhook_outbox_due", "status", "next_attempt_at"),
    )


def _webhook_attempts_v5(md: sa.MetaData) -> sa.Table:
    """Each try at a webhook delivery: when, the receiver's HTTP status, what went wrong."""
    return sa.Table(
        "webhook_attempts",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.String(64), nullable=False, index=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )


def _tasks_v6(md: sa.MetaData) -> sa.Table:
    """``tenant`` (whose task it is; lists filter on it) joins version 1's columns."""
    table = _tasks_v1(md)
    table.append_column(sa.Column("tenant", sa.String(128), nullable=False, server_default="default"))
    sa.Index("ix_tasks_tenant_created_at", table.c.tenant, table.c.created_at)
    return table


def _task_feedback_v6(md: sa.MetaData) -> sa.Table:
    """What users said about a task's result (:class:`~officeray.feedback.TaskFeedback`)."""
    return sa.Table(
        "task_feedback",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(128), nullable=False, index=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("rating", sa.SmallInteger, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("submitted_by", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def _tenant_daily_usage_v7(md: sa.MetaData) -> sa.Table:
    """Model usage per tenant and UTC day (what ``tenants.<name>.daily_token_budget`` is checked
    against), added with the tenant's totals in one transaction."""
    return sa.Table(
        "tenant_daily_usage",
        md,
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, default=0),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, default=0),
        sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
        sa.Column("calls", sa.BigInteger, nullable=False, default=0),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _spans_v8(md: sa.MetaData) -> sa.Table:
    """Finished spans of every process (the trace store, :mod:`officeray.store.spans`), indexed by
    task and by trace; ``id`` orders them as written (what the size limit prunes by)."""
    return sa.Table(
        "spans",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(128), nullable=True, index=True),
        sa.Column("trace_id", sa.String(32), nullable=False, index=True),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("parent_span_id", sa.String(16), nullable=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("component", sa.String(64), nullable=False),
        sa.Column("start_ns", sa.BigInteger, nullable=False),
        sa.Column("end_ns", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def _memory_entries_v9(md: sa.MetaData) -> sa.Table:
    """The memory (:mod:`officeray.store.memory`): one row per finished task attempt, the
    :class:`~officeray.memory.entries.MemoryEntry` as JSON without its vector (``entry``) and the columns
    that are queried or changed on their own (``rating``, ``encoder``, ``vector``: they win over the
    JSON). ``seq`` is the id of the entry's vector in its tenant's faiss index: never reused, even
    after the newest entry is deleted (``AUTOINCREMENT`` on SQLite; a sequence on PostgreSQL)."""
    return sa.Table(
        "memory_entries",
        md,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entry_id", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False, index=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("rating", sa.Integer, nullable=False, default=0),
        sa.Column("encoder", sa.String(256), nullable=False, default=""),
        sa.Column("vector", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entry", sa.Text, nullable=False),
        sa.Index("ix_memory_entries_tenant_seq", "tenant", "seq"),
        sqlite_autoincrement=True,
    )


def _review_decisions_v11(md: sa.MetaData) -> sa.Table:
    """A person's decision on a task's escalated results (:mod:`officeray.store.reviews`): the first
    one per task and round wins (the primary key)."""
    return sa.Table(
        "review_decisions",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("iteration", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("feedback", sa.Text, nullable=False),
        sa.Column("decided_by", sa.String(256), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )


def _workspace_files_v10(md: sa.MetaData) -> sa.Table:
    """Task workspaces (:mod:`officeray.store.workspace`): one row per file of a task's workspace,
    with its content; ``tenant`` (indexed) sums a tenant's bytes for its cap."""
    return sa.Table(
        "workspace_files",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False, index=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("step_id", sa.String(64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _schema_migrations(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "schema_migrations",
        md,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )


metadata = sa.MetaData()
"""The current schema, for queries (never ``create_all``: :data:`MIGRATIONS` own the schema)."""

tasks_table = _tasks_v6(metadata)
task_feedback_table = _task_feedback_v6(metadata)
events_table = _task_events_v1(metadata)
step_results_table = _step_results_v1(metadata)
tenant_usage_table = _tenant_usage_v1(metadata)
tenant_daily_usage_table = _tenant_daily_usage_v7(metadata)
spans_table = _spans_v8(metadata)
memory_entries_table = _memory_entries_v9(metadata)
workspace_files_table = _workspace_files_v10(metadata)
leases_table = _task_leases_v2(metadata)
dlq_table = _dlq_v2(metadata)
idempotency_keys_table = _idempotency_keys_v2(metadata)
approvals_table = _approvals_v3(metadata)
api_keys_table = _api_keys_v4(metadata)
webhook_outbox_table = _webhook_outbox_v5(metadata)
webhook_attempts_table = _webhook_attempts_v5(metadata)
review_decisions_table = _review_decisions_v11(metadata)
migrations_table = _schema_migrations(metadata)


# --------------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------------


def _migration_1(conn: Connection) -> None:
    md = sa.MetaData()
    for build in (_tasks_v1, _task_events_v1, _step_results_v1, _tenant_usage_v1):
        build(md)
    # checkfirst: a database made by create_all before explicit migrations is adopted as it is...
    md.create_all(conn, checkfirst=True)
    # ...except that the oldest of them have no tasks.request
    if "request" not in {column["name"] for column in sa.inspect(conn).get_columns("tasks")}:
        conn.execute(sa.text("ALTER TABLE tasks ADD COLUMN request TEXT"))


def _migration_2(conn: Connection) -> None:
    md = sa.MetaData()
    for build in (_task_leases_v2, _dlq_v2, _idempotency_keys_v2, _approvals_v2):
        build(md)
    md.create_all(conn, checkfirst=False)


def _migration_3(conn: Connection) -> None:
    # PostgreSQL enforces VARCHAR lengths (widening one is a catalog change, no table rewrite); SQLite
    # neither enforces them nor alters a column's type, so its approvals table is left as it is.
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"ALTER TABLE approvals ALTER COLUMN step_id TYPE VARCHAR({KEY_CHARS})"))


def _migration_4(conn: Connection) -> None:
    _api_keys_v4(sa.MetaData()).create(conn, checkfirst=False)


def _migration_5(conn: Connection) -> None:
    md = sa.MetaData()
    for build in (_webhook_outbox_v5, _webhook_attempts_v5):
        build(md)
    md.create_all(conn, checkfirst=False)


_TENANT_OF_RECORD = {
    "sqlite": "COALESCE(json_extract(record, '$.tenant'), 'default')",
    "postgresql": "COALESCE(CAST(record AS json) ->> 'tenant', 'default')",
}
"""The tenant in a ``tasks.record`` JSON document, per dialect (what migration 6 backfills)."""


def _migration_6(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE tasks ADD COLUMN tenant VARCHAR(128) NOT NULL DEFAULT 'default'"))
    conn.execute(sa.text(f"UPDATE tasks SET tenant = {_TENANT_OF_RECORD[conn.dialect.name]}"))
    conn.execute(sa.text("CREATE INDEX ix_tasks_tenant_created_at ON tasks (tenant, created_at)"))
    _task_feedback_v6(sa.MetaData()).create(conn, checkfirst=False)


def _migration_7(conn: Connection) -> None:
    _tenant_daily_usage_v7(sa.MetaData()).create(conn, checkfirst=False)


def _migration_8(conn: Connection) -> None:
    _spans_v8(sa.MetaData()).create(conn, checkfirst=False)


def _migration_9(conn: Connection) -> None:
    _memory_entries_v9(sa.MetaData()).create(conn, checkfirst=False)


def _migration_11(conn: Connection) -> None:
    _review_decisions_v11(sa.MetaData()).create(conn, checkfirst=False)


def _migration_10(conn: Connection) -> None:
    _workspace_files_v10(sa.MetaData()).create(conn, checkfirst=False)


Migration = tuple[int, str, Callable[[Connection], None]]

MIGRATIONS: tuple[Migration, ...] = (
    (1, "tasks, task_events, step_results, tenant_usage", _migration_1),
    (2, "task_leases, dlq, idempotency_keys, approvals", _migration_2),
    (3, "approvals.step_id holds a step's idempotency key: VARCHAR(256)", _migration_3),
    (4, "api_keys", _migration_4),
    (5, "webhook_outbox, webhook_attempts", _migration_5),
    (6, "tasks.tenant (backfilled from the record, indexed with created_at), task_feedback", _migration_6),
    (7, "tenant_daily_usage: model usage per tenant and UTC day", _migration_7),
    (8, "spans: the trace store, indexed by task and trace", _migration_8),
    (9, "memory_entries: the memory of finished task attempts, with their vectors", _migration_9),
    (10, "workspace_files: the files of each task's workspace", _migration_10),
    (11, "review_decisions: a person's decision on a task's escalated results", _migration_11),
)
"""Every schema change, oldest first: ``(version, description, apply(conn))``. Append only; never edit
or reorder an entry that has shipped."""

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The schema this code reads and writes."""


def applied_versions(conn: Connection) -> set[int]:
    """The migrations this database has had."""
    if not sa.inspect(conn).has_table(migrations_table.name):
        return set()
    return set(conn.execute(sa.select(migrations_table.c.version)).scalars())


def _refuse_newer(engine: Engine, applied: set[int]) -> None:
    newest = max(applied, default=0)
    if newest > SCHEMA_VERSION:
        where = engine.url.render_as_string(hide_password=True)
        raise StoreError(
            f"the database at {where} has schema version {newest}, newer than this officeray knows "
            f"({SCHEMA_VERSION}); upgrade officeray on this machine"
        )


def migrate(engine: Engine, target: int | None = None) -> int:
    """Apply the migrations this database lacks, up to ``target`` (default: all); return its version.

    The check and the changes run in one transaction that first takes the database's write lock, so
    of several processes opening a fresh database at once, one migrates and the others find it done.
    Raises :class:`~officeray.errors.StoreError` for a database newer than :data:`SCHEMA_VERSION`.
    :class:`~officeray.store.SqlStore` calls it on open; a SQLite engine made elsewhere lacks the
    store's ``BEGIN IMMEDIATE`` (and pysqlite then runs DDL outside the transaction).
    """
    target = SCHEMA_VERSION if target is None else target
    with translated(), engine.connect() as conn:  # fast path: nothing to do, no write lock taken
        applied = applied_versions(conn)
    _refuse_newer(engine, applied)
    if all(version in applied for version, _, _ in MIGRATIONS if version <= target):
        return max(applied, default=0)
    with write_transaction(engine) as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
        migrations_table.create(conn, checkfirst=True)
        applied = applied_versions(conn)  # again, under the lock: another process may have migrated
        _refuse_newer(engine, applied)
        for version, description, apply in MIGRATIONS:
            if version in applied or version > target:
                continue
            apply(conn)
            conn.execute(
                migrations_table.insert().values(
                    version=version, description=description, applied_at=utcnow()
                )
            )
            applied.add(version)
    return max(applied, default=0)
