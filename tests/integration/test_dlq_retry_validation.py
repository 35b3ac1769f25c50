"""A DLQ retry on the real stack validates the stored plan again before any of its steps runs.

The task is put in the dead-letter queue as a round whose plan was refused leaves it: failed, with
that plan stored (a ``python_exec`` step, while the task allows ``math_calculator`` only). The retry
(``POST /v1/dlq/{id}/retry``) resumes the round with its stored plan; the plan is refused again, its
reasons go to the planner, and the task completes with a plan of allowed tools: ``python_exec`` never
runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cluster.runtime import LocalStack
from officeray.contracts import TaskRecord, TaskRequest, TaskStatus, utcnow
from officeray.store import SqlStore
from officeray.testing import make_plan
from tests.integration.conftest import bearer
from tests.integration.stored import with_store

pytestmark = pytest.mark.integration

POLL_TIMEOUT_S = 120


@pytest.fixture
def client(stack: LocalStack, admin_key: str) -> Iterator[httpx.Client]:
    base = f"http://127.0.0.1:{stack.settings.serve.port}"
    with httpx.Client(base_url=base, headers=bearer(admin_key), timeout=60) as http:
        yield http


def _wait_final(client: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish in {POLL_TIMEOUT_S}s")


def test_a_dlq_retry_does_not_run_a_stored_plan_that_uses_a_tool_outside_allowed_tools(
    stack: LocalStack, client: httpx.Client
) -> None:
    suffix = uuid.uuid4().hex[:12]
    task_id, tenant = f"task-refused-{suffix}", f"t-{suffix}"
    request = TaskRequest(
        description="What is 2 + 3?", task_id=task_id, tenant=tenant, allowed_tools=["math_calculator"]
    )
    refused = make_plan(task_id, [{"step_id": "s1", "action": "python_exec", "inputs": {"code": "print(1)"}}])
    error = "not approved after 1 iteration(s); last feedback: plan rejected: 'python_exec' is not allowed"
    dead = TaskRecord(
        task_id=task_id,
        description=request.description,
        tenant=tenant,
        status=TaskStatus.FAILED,
        iterations=1,
        plan=refused,
        error=error,
        finished_at=utcnow(),
    )

    async def dead_letter(store: SqlStore) -> bool:
        created = await store.create_task(dead, request)
        await store.dead_letter(dead, error)
        return created

    assert with_store(stack.settings.store.url, dead_letter)

    retried = client.post(f"/v1/dlq/{task_id}/retry")
    assert retried.status_code == 202, retried.text
    final = _wait_final(client, task_id)

    assert [step["action"] for step in final["steps"]] == ["math_calculator"], final["steps"]
    assert final["status"] == "completed", final.get("error")
    events = client.get(f"/v1/tasks/{task_id}/events").json()["events"]
    validated = [e["data"]["valid"] for e in events if e["kind"] == "validated"]
    assert validated[:2] == [False, True]  # the stored plan refused, the new one accepted
