"""Step results: the ``step_results`` table, each step's result under its plan ``idempotency_key``.

A recorded success is final: a stale run's later result (a failure, a retry in flight) never
replaces it, so a resumed task never runs a succeeded step again.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.contracts import StepResult, StepStatus, utcnow
from officeray.store.engine import insert
from officeray.store.schema import step_results_table

_ROW_COLUMNS = ("idempotency_key", "task_id", "step_id", "status", "result", "updated_at")


def step_row(task_id: str, result: StepResult) -> dict[str, Any]:
    """The ``step_results`` row of ``result``, as of now."""
    return {
        "idempotency_key": result.idempotency_key,
        "task_id": task_id,
        "step_id": result.step_id,
        "status": result.status.value,
        "result": result.model_dump_json(),
        "updated_at": utcnow(),
    }


class StepResultRepository:
    """Reads and writes of ``step_results`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        t = step_results_table
        results = insert(dialect, t).values({name: sa.bindparam(name) for name in _ROW_COLUMNS})
        self._upsert = results.on_conflict_do_update(  # built once: a hot path
            index_elements=[t.c.idempotency_key],
            set_={name: results.excluded[name] for name in _ROW_COLUMNS[1:]},
            where=t.c.status != StepStatus.SUCCEEDED.value,  # a recorded success is final
        )

    def save_on(self, conn: Connection, row: dict[str, Any]) -> None:
        conn.execute(self._upsert, row)

    def save_many_on(self, conn: Connection, writes: list[tuple[dict[str, Any], ...]]) -> None:
        """Several results (one row each), in order, in one ``executemany``."""
        conn.execute(self._upsert, [write[0] for write in writes])

    @staticmethod
    def get(conn: Connection, idempotency_key: str) -> StepResult | None:
        t = step_results_table
        raw = conn.execute(
            sa.select(t.c.result).where(t.c.idempotency_key == idempotency_key)
        ).scalar_one_or_none()
        return None if raw is None else StepResult.model_validate_json(raw)
