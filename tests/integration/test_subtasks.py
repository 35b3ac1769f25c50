"""Decomposition on the real stack: a three-part task whose middle part depends on the first runs as
three child tasks across the orchestrator shards (parts 1 and 3 at once, part 2 with part 1's result),
the API shows the tree, and the final review integrates the results; then the same with kill -9 of
the orchestrator shard that runs the parent, mid-way: every subtask still completes, once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
import pytest
import ray

from actors.orchestrator import shard_of
from cluster.runtime import LocalStack
from officeray.contracts import TaskEvent, TaskRecord, TaskRequest, TaskStatus
from officeray.store import SqlStore
from tests.integration.stored import with_store

pytestmark = pytest.mark.integration

THREE_PARTS = (
    "1) compute 2+3 2) compute the result of part 1 * 4 3) wait 1 seconds then count words: hello big world"
)
SLOW_THREE_PARTS = (
    "1) wait 3 seconds then compute 2+3 2) compute the result of part 1 * 4 "
    "3) wait 3 seconds then count words: hello big world"
)
FINAL_TIMEOUT_S = 120
RECOVERY_TIMEOUT_S = 240


def _wait_final(api: httpx.Client, task_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = api.get(f"/v1/tasks/{task_id}", params={"wait_s": 5}).json()
        if body.get("status") in ("completed", "failed", "cancelled"):
            return body
        assert time.monotonic() < deadline, f"task {task_id} never finished: {body.get('status')}"


def _overlap(a: TaskRecord, b: TaskRecord) -> bool:
    assert a.finished_at is not None and b.finished_at is not None
    return a.created_at < b.finished_at and b.created_at < a.finished_at


def _events(url: str, task_id: str) -> list[TaskEvent]:
    async def read(store: SqlStore) -> list[TaskEvent]:
        return await store.events(task_id)

    return with_store(url, read)


def _children(url: str, parent_id: str) -> list[TaskRecord]:
    async def read(store: SqlStore) -> list[TaskRecord]:
        return [r for r in await store.list_tasks(limit=1000) if r.parent_id == parent_id]

    return with_store(url, read)


def test_a_three_part_task_runs_its_parts_as_child_tasks(stack: LocalStack, api: httpx.Client) -> None:
    created = api.post("/v1/tasks", json={"description": THREE_PARTS})
    assert created.status_code in (200, 201, 202), created.text
    parent_id = created.json()["task_id"]
    body = _wait_final(api, parent_id, FINAL_TIMEOUT_S)

    assert body["status"] == "completed", body.get("error")
    tree = {s["subtask_id"]: s for s in body["subtasks"]}
    assert [(k, v["task_id"], v["status"], v["dependencies"]) for k, v in tree.items()] == [
        ("s1", f"{parent_id}.s1", "completed", []),
        ("s2", f"{parent_id}.s2", "completed", ["s1"]),
        ("s3", f"{parent_id}.s3", "completed", []),
    ]
    children = {c["task_id"]: c for c in (api.get(f"/v1/tasks/{v['task_id']}").json() for v in tree.values())}
    s1, s2, s3 = (
        TaskRecord.model_validate({k: v for k, v in children[f"{parent_id}.s{i}"].items() if k != "progress"})
        for i in (1, 2, 3)
    )
    assert all(c.parent_id == parent_id and c.status == TaskStatus.COMPLETED for c in (s1, s2, s3))
    assert s2.description == "compute 5 * 4" and s2.result == 20  # part 2 received part 1's result
    assert _overlap(s1, s3)  # independent parts ran at once
    assert s1.finished_at is not None and s2.created_at >= s1.finished_at  # the dependent one after
    result = body["result"]
    assert result["s1"] == 5 and result["s2"] == 20 and "3" in str(result["s3"])  # the final review
    kinds = [e["kind"] for e in api.get(f"/v1/tasks/{parent_id}/events").json()["events"]]
    assert kinds.count("decomposed") == 1 and kinds.count("subtask_finished") == 3


def test_kill_9_of_the_parents_orchestrator_mid_way_completes_every_subtask_once(stack: LocalStack) -> None:
    url = stack.settings.store.url
    parent_id = "tree-kill9"
    shard = shard_of(parent_id, stack.client.shards)
    record, created = asyncio.run(
        stack.client.submit(TaskRequest(description=SLOW_THREE_PARTS, task_id=parent_id))
    )
    assert created
    deadline = time.monotonic() + FINAL_TIMEOUT_S
    while True:  # mid-way: the children of parts 1 and 3 run, none finished
        stored = with_store(url, lambda store: store.get_task(parent_id))
        if stored is not None and any(v.status not in ("pending", "queued") for v in stored.subtasks):
            break
        assert time.monotonic() < deadline, "the subtasks never started"
        time.sleep(0.1)
    assert not stored.status.is_final and not any(v.status == "completed" for v in stored.subtasks)
    pid = ray.get(stack.client.handle(shard).pid.remote())
    os.kill(pid, signal.SIGKILL)

    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        final = with_store(url, lambda store: store.get_task(parent_id))
        if final is not None and final.status.is_final:
            break
        assert time.monotonic() < deadline, f"the parent never finished: {final and final.status}"
        time.sleep(0.5)
    assert final.status == TaskStatus.COMPLETED, final.error
    assert final.resumed >= 1
    assert final.result["s1"] == 5 and final.result["s2"] == 20
    children = _children(url, parent_id)
    assert sorted(c.task_id for c in children) == [f"{parent_id}.s{i}" for i in (1, 2, 3)]  # one child each
    for child in children:
        assert child.status == TaskStatus.COMPLETED, (child.task_id, child.error)
        events = _events(url, child.task_id)
        kinds = [e.kind for e in events]
        assert kinds.count("completed") == 1, (child.task_id, kinds)  # completed once
        succeeded = [
            e.data["step_id"]
            for e in events
            if e.kind == "step_finished" and e.data.get("step_status") == "succeeded"
        ]
        assert len(succeeded) == len(set(succeeded)), (child.task_id, kinds)  # no success ran twice
    parent_kinds = [e.kind for e in _events(url, parent_id)]
    assert parent_kinds.count("decomposed") == 1 and parent_kinds.count("completed") == 1
