"""One suite for every store: the in-memory store, SqlStore on a SQLite file and on a real PostgreSQL
server (``store`` in conftest.py), all through the async API production uses (on the SQL stores,
writes go through the group-commit writer).

What only a SQL database has (migrations, triggers, several processes racing) is tested in
``test_sql_store.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from officeray.auth import Role, mint_key, verify_key
from officeray.contracts import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    DlqStepError,
    ErrorType,
    FailedStep,
    ModelUsage,
    StepError,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    utcnow,
)
from officeray.feedback import TaskFeedback
from officeray.memory.entries import MemoryEntry, MemoryTenantState, vector_bytes, vector_of
from officeray.store import IdempotencyClaim, TaskStore
from officeray.store.api import TaskCursor
from officeray.testing import make_plan
from officeray.webhooks import DeliveryStatus, WebhookAttempt

from .conftest import LONG_KEY, LONG_STEP_ID, LONG_TASK_ID, LONG_TENANT, T0, record, request_for, step_result

# -- tasks and events ---------------------------------------------------------------------------------


async def test_tasks_round_trip_and_upsert_keeps_created_at_and_request(store: TaskStore) -> None:
    first = record(trace_id="ab" * 16)
    assert await store.create_task(first, request_for("task-1"))
    assert not await store.create_task(record(), request_for("task-1"))  # same id: refused

    done = first.model_copy(update={"status": TaskStatus.EXECUTING, "iterations": 2})
    await store.save_task(done)
    loaded = await store.get_task("task-1")
    assert loaded is not None
    assert (loaded.status, loaded.iterations, loaded.trace_id) == (TaskStatus.EXECUTING, 2, "ab" * 16)
    assert loaded.created_at == first.created_at
    assert loaded.updated_at >= first.updated_at
    [(unfinished, request)] = await store.unfinished()  # the request survived the update
    assert (unfinished.task_id, request.task_id) == ("task-1", "task-1")

    await store.save_task(record("task-2", TaskStatus.COMPLETED))
    assert [r.task_id for r in await store.list_tasks(TaskStatus.COMPLETED)] == ["task-2"]
    assert sorted(r.task_id for r in await store.list_tasks()) == ["task-1", "task-2"]
    assert await store.get_task("nope") is None
    assert await store.get_request("task-1") == request_for("task-1")
    assert await store.get_request("task-2") is None  # saved without a request
    assert await store.get_request("nope") is None


async def test_a_saved_record_keeps_everything(store: TaskStore) -> None:
    plan = make_plan(
        "task-1", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1"}}]
    )
    saved = record(
        plan=plan, steps=[step_result(output={"value": 1})], trace_id="ab" * 16, result={"answer": 42}
    )
    before = saved.model_copy(deep=True)
    await store.save_task(saved)
    assert saved == before  # the caller's record is not changed
    loaded = await store.get_task("task-1")
    assert loaded is not None
    assert loaded == saved.model_copy(update={"updated_at": loaded.updated_at})


async def test_list_tasks_newest_first_by_status_and_limit(store: TaskStore) -> None:
    base = record().created_at
    statuses = [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.EXECUTING]
    for i, (task_id, status) in enumerate(zip("abcd", statuses, strict=True)):
        await store.save_task(record(task_id, status, created_at=base + timedelta(days=i), error="x"))

    assert [r.task_id for r in await store.list_tasks()] == ["d", "c", "b", "a"]
    assert [r.task_id for r in await store.list_tasks(TaskStatus.COMPLETED)] == ["c", "a"]
    assert [(r.task_id, r.error) for r in await store.list_tasks(TaskStatus.FAILED)] == [("b", "x")]
    assert await store.list_tasks(TaskStatus.QUEUED) == []
    assert [r.task_id for r in await store.list_tasks(limit=2)] == ["d", "c"]


async def test_events_in_order_per_task_with_utc_times(store: TaskStore) -> None:
    for i, kind in enumerate(["accepted", "planned", "completed"]):
        await store.append_event("task-1", kind, {"i": i, "when": T0})
        await store.append_event("task-2", f"other-{kind}", {})
    events = await store.events("task-1")
    assert [(e.kind, e.data["i"]) for e in events] == [("accepted", 0), ("planned", 1), ("completed", 2)]
    assert all(e.at.utcoffset() == timedelta(0) for e in events)
    # as JSON data: a value JSON cannot hold is stored as its string; times in ISO 8601 with +00:00
    dumped = events[0].model_dump(mode="json")
    assert list(dumped) == ["id", "kind", "data", "at"]
    assert dumped["data"] == {"i": 0, "when": str(T0)}
    assert dumped["at"].endswith("+00:00") and datetime.fromisoformat(dumped["at"]) == events[0].at
    assert len(await store.events("task-2")) == 3
    assert await store.events("other") == []


async def test_concurrent_transitions_are_all_stored_in_order_per_task(store: TaskStore) -> None:
    records = [record(f"task-{i}") for i in range(20)]

    async def one_task(mine: TaskRecord) -> None:
        for i in range(10):
            mine.iterations = i  # changed while the previous write may still be pending
            assert await store.save_transition(mine, f"t{i}", {"i": i})

    await asyncio.gather(*(one_task(r) for r in records))
    for r in records:
        assert [e.kind for e in await store.events(r.task_id)] == [f"t{i}" for i in range(10)]
        stored = await store.get_task(r.task_id)
        assert stored is not None and stored.iterations == 9


async def test_writes_take_their_snapshot_when_called(store: TaskStore) -> None:
    mine = record(iterations=1)
    pending = store.save_transition(mine, "first", {"n": 1})
    mine.iterations = 2  # changed before the write was awaited
    assert await pending
    stored = await store.get_task("task-1")
    assert stored is not None and stored.iterations == 1


async def test_duplicate_creates_at_once_insert_once(store: TaskStore) -> None:
    results = await asyncio.gather(*(store.create_task(record(), request_for("task-1")) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]


# -- step results and usage ---------------------------------------------------------------------------


async def test_step_results_upsert_by_idempotency_key_and_a_success_is_final(store: TaskStore) -> None:
    await store.save_step_result("task-1", step_result(status=StepStatus.RUNNING, attempts=1))
    failed = step_result(
        status=StepStatus.FAILED, attempts=2, error=StepError(type=ErrorType.TIMEOUT, message="slow")
    )
    await store.save_step_result("task-1", failed)
    assert await store.get_step_result("task-1:1:s1") == failed
    assert await store.get_step_result("nope") is None

    done = step_result(status=StepStatus.SUCCEEDED, attempts=3, output=[1, 2])
    await store.save_step_result("task-1", done)
    stale = step_result(
        status=StepStatus.FAILED, attempts=4, error=StepError(type=ErrorType.TIMEOUT, message="x")
    )
    await store.save_step_result("task-1", stale)  # a stale run's later failure
    assert await store.get_step_result("task-1:1:s1") == done


async def test_concurrent_usage_is_summed(store: TaskStore) -> None:
    one = ModelUsage(prompt_tokens=1, completion_tokens=2, cost_usd=0.25, calls=1)
    await asyncio.gather(*(store.add_tenant_usage("acme", one) for _ in range(40)))
    assert await store.tenant_usage("acme") == ModelUsage(
        prompt_tokens=40, completion_tokens=80, cost_usd=10.0, calls=40
    )
    assert await store.tenant_usage("nobody") == ModelUsage()


# -- leases -------------------------------------------------------------------------------------------


async def test_lease_is_exclusive_until_it_expires(store: TaskStore) -> None:
    assert await store.lease_owner("task-1", now=T0) is None
    assert await store.acquire_lease("task-1", "orch-a", ttl_s=30, now=T0)
    assert await store.lease_owner("task-1", now=T0) == "orch-a"
    assert not await store.acquire_lease("task-1", "orch-b", ttl_s=30, now=T0 + timedelta(seconds=29))
    assert await store.acquire_lease("task-1", "orch-a", ttl_s=30, now=T0 + timedelta(seconds=29))  # ours
    # extended to T0+59s: still a's at 58s, free at 59s
    assert await store.lease_owner("task-1", now=T0 + timedelta(seconds=58)) == "orch-a"
    assert await store.lease_owner("task-1", now=T0 + timedelta(seconds=59)) is None
    assert await store.acquire_lease("task-1", "orch-b", ttl_s=30, now=T0 + timedelta(seconds=59))
    assert await store.lease_owner("task-1", now=T0 + timedelta(seconds=60)) == "orch-b"


async def test_lease_times_in_other_zones_mean_the_same_instant(store: TaskStore) -> None:
    east, west = timezone(timedelta(hours=5)), timezone(timedelta(hours=-8))
    assert await store.acquire_lease("task-1", "orch-a", ttl_s=10, now=T0.astimezone(east))
    assert await store.lease_owner("task-1", now=(T0 + timedelta(seconds=9)).astimezone(west)) == "orch-a"
    assert await store.lease_owner("task-1", now=(T0 + timedelta(seconds=10)).astimezone(west)) is None
    naive_utc = (T0 + timedelta(seconds=9)).replace(tzinfo=None)  # naive means UTC
    assert await store.lease_owner("task-1", now=naive_utc) == "orch-a"


async def test_renew_and_release(store: TaskStore) -> None:
    for task_id in ("t1", "t2"):
        assert await store.acquire_lease(task_id, "orch-a", ttl_s=10, now=T0)
    assert await store.acquire_lease("t3", "orch-b", ttl_s=10, now=T0)
    assert await store.renew_leases("orch-a", ttl_s=100, now=T0 + timedelta(seconds=5)) == 2
    later = T0 + timedelta(seconds=50)
    assert [await store.lease_owner(t, now=later) for t in ("t1", "t2", "t3")] == ["orch-a", "orch-a", None]

    assert not await store.release_lease("t1", "orch-b")  # not b's: left alone
    assert await store.release_lease("t1", "orch-a")
    assert await store.lease_owner("t1", now=T0) is None
    assert not await store.release_lease("t1", "orch-a")
    assert await store.renew_leases("nobody", ttl_s=10) == 0
    with pytest.raises(ValueError, match="ttl_s"):
        await store.acquire_lease("t9", "orch-a", ttl_s=0)
    with pytest.raises(ValueError, match="ttl_s"):
        await store.renew_leases("orch-a", ttl_s=-1)


async def test_claimable_unfinished_leases_what_it_returns(store: TaskStore) -> None:
    for task_id in ("a", "b", "c", "d", "e"):
        assert await store.create_task(record(task_id), request_for(task_id))
    await store.save_task(record("d", TaskStatus.COMPLETED))
    await store.save_task(record("e", TaskStatus.FAILED))
    await store.save_task(record("no-request", TaskStatus.EXECUTING))  # cannot be resumed: skipped
    assert await store.acquire_lease("b", "orch-b", ttl_s=30, now=T0)  # held
    assert await store.acquire_lease("c", "orch-b", ttl_s=5, now=T0)  # expires at T0+5

    now = T0 + timedelta(seconds=10)
    claimed = await store.claimable_unfinished("orch-a", ttl_s=60, now=now)
    assert [(r.task_id, req.task_id) for r, req in claimed] == [("a", "a"), ("c", "c")]
    assert [task.request for task in claimed] == [request_for("a"), request_for("c")]
    assert await store.lease_owner("a", now=now) == "orch-a"
    assert await store.lease_owner("c", now=now) == "orch-a"
    assert await store.lease_owner("b", now=now) == "orch-b"
    assert await store.claimable_unfinished("orch-a", ttl_s=60, now=now) == []  # its own: not again
    # b's lease runs out at T0+30: then b is claimable by anyone
    later = await store.claimable_unfinished("orch-c", 60, T0 + timedelta(seconds=31))
    assert [r.task_id for r, _ in later] == ["b"]
    assert len(await store.unfinished()) == 3  # the lease-free view is unchanged


async def test_claimable_unfinished_respects_limit(store: TaskStore) -> None:
    for i in range(5):
        await store.create_task(record(f"t{i}"), request_for(f"t{i}"))
    first = await store.claimable_unfinished("orch-a", ttl_s=60, now=T0, limit=2)
    second = await store.claimable_unfinished("orch-a", ttl_s=60, now=T0, limit=10)
    assert len(first) == 2 and len(second) == 3
    assert {r.task_id for r, _ in first}.isdisjoint({r.task_id for r, _ in second})


async def test_create_leased_task_takes_the_lease_and_inserts_once(store: TaskStore) -> None:
    request = TaskRequest(description="x")
    assert await store.create_leased_task(record("t1"), request, "orch-a", 30) is True
    assert await store.lease_owner("t1") == "orch-a"
    assert await store.get_request("t1") == request
    # the same id again, from another orchestrator: refused while a holds it, nothing changed
    assert await store.create_leased_task(record("t1"), request, "orch-b", 30) is False
    assert await store.lease_owner("t1") == "orch-a"
    # the task exists and its lease is gone: refused, and no lease is left behind
    assert await store.release_lease("t1", "orch-a")
    assert await store.create_leased_task(record("t1"), request, "orch-b", 30) is False
    assert await store.lease_owner("t1") is None


async def test_a_repeated_submission_leaves_the_running_tasks_lease_alone(store: TaskStore) -> None:
    """The same task submitted again reaches the same orchestrator (same owner): the task exists,
    and the lease its run holds must stay, or that run's next fenced write would be refused."""
    request = TaskRequest(description="x")
    assert await store.create_leased_task(record("t1"), request, "orch-a", 30) is True
    assert await store.create_leased_task(record("t1"), request, "orch-a", 30) is False
    assert await store.lease_owner("t1") == "orch-a"
    planning = record("t1", status=TaskStatus.PLANNING, iterations=1)
    assert await store.save_transition(planning, "planning", {}, owner="orch-a")


# -- transitions fenced on the lease ------------------------------------------------------------------


async def test_a_transition_is_written_only_while_its_owner_holds_the_lease(store: TaskStore) -> None:
    assert await store.create_task(record(), request_for("task-1"))
    assert await store.acquire_lease("task-1", "orch-a", ttl_s=30, now=T0)
    executing = record(status=TaskStatus.EXECUTING, iterations=1)
    assert await store.save_transition(executing, "executing", {"n": 1}, owner="orch-a")
    # an expired lease nobody took is still the owner's: its run goes on writing
    assert await store.save_transition(executing, "step_started", {"n": 2}, owner="orch-a")

    assert await store.acquire_lease("task-1", "orch-b", ttl_s=30, now=T0 + timedelta(seconds=31))
    taken = record(status=TaskStatus.COMPLETED, iterations=2, result="b")
    assert await store.save_transition(taken, "completed", {"n": 3}, owner="orch-b")
    stale = record(status=TaskStatus.EXECUTING, iterations=1)
    assert not await store.save_transition(stale, "step_finished", {"n": 4}, owner="orch-a")
    failed = record(status=TaskStatus.FAILED, error="a", usage=ModelUsage(calls=1))
    assert not await store.finish_task(failed, "failed", {}, owner="orch-a")

    kept = await store.get_task("task-1")
    assert kept is not None and (kept.status, kept.result) == (TaskStatus.COMPLETED, "b")
    assert [e.data["n"] for e in await store.events("task-1")] == [1, 2, 3]
    assert await store.dlq_get("task-1") is None
    assert await store.tenant_usage("default") == ModelUsage()
    assert await store.release_lease("task-1", "orch-b")  # released: nobody holds it, nobody writes
    assert not await store.save_transition(stale, "step_finished", {}, owner="orch-b")
    assert await store.save_transition(stale, "saved", {}, owner=None)  # unfenced writes are not refused


async def test_refused_transitions_leave_the_writes_submitted_with_them_alone(store: TaskStore) -> None:
    for task_id, owner in (("mine", "orch-a"), ("theirs", "orch-b")):
        assert await store.create_leased_task(record(task_id), request_for(task_id), owner, 30)
    writes = []
    for i in range(5):  # submitted together: on a SQL store, committed in one batch
        for task_id in ("mine", "theirs"):
            update = record(task_id, TaskStatus.EXECUTING, iterations=i + 1)
            writes.append(store.save_transition(update, "step", {"i": i}, owner="orch-a"))
    assert await asyncio.gather(*writes) == [True, False] * 5
    assert [e.data["i"] for e in await store.events("mine")] == [0, 1, 2, 3, 4]
    assert await store.events("theirs") == []
    theirs = await store.get_task("theirs")
    assert theirs is not None and theirs.status == TaskStatus.QUEUED


# -- dead-letter queue --------------------------------------------------------------------------------

DLQ_ENTRY_FIELDS = ["task_id", "tenant", "reason", "trace_id", "created_at", "description"]
"""The JSON fields of a listed entry, in order (``GET /v1/dlq``)."""


async def test_dead_letter_queue(store: TaskStore) -> None:
    plan = make_plan(
        "task-1", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1/0"}}]
    )
    broken = step_result(
        status=StepStatus.FAILED, attempts=3, error=StepError(type=ErrorType.TOOL_ERROR, message="div by 0")
    )
    failed = record(
        status=TaskStatus.FAILED,
        tenant="acme",
        trace_id="cd" * 16,
        plan=plan,
        steps=[broken, step_result("k2")],
    )
    await store.dead_letter(failed, "retries exhausted")
    await store.dead_letter(record("task-2", TaskStatus.FAILED), "planner gave up")

    assert [e.task_id for e in await store.dlq_list()] == ["task-2", "task-1"]  # newest first
    [entry] = await store.dlq_list(tenant="acme")
    assert (entry.reason, entry.tenant, entry.trace_id, entry.description) == (
        "retries exhausted",
        "acme",
        "cd" * 16,
        "do task-1",
    )
    assert entry.created_at.utcoffset() == timedelta(0)
    dumped = entry.model_dump(mode="json")
    assert list(dumped) == DLQ_ENTRY_FIELDS and dumped["created_at"].endswith("+00:00")
    assert len(await store.dlq_list(limit=1)) == 1
    assert await store.dlq_list(tenant="nobody") == []

    full = await store.dlq_get("task-1")
    assert full is not None
    assert full.record == failed and full.plan == plan
    assert full.step_errors == [
        DlqStepError(step_id="s1", action="math_calculator", attempts=3, error=broken.error)
    ]
    as_json = full.model_dump(mode="json")  # the JSON of GET /v1/dlq/{task_id}
    assert list(as_json) == [*DLQ_ENTRY_FIELDS, "record", "plan", "step_errors"]
    assert as_json["record"] == failed.model_dump(mode="json")
    assert as_json["plan"] == plan.model_dump(mode="json")
    assert as_json["step_errors"] == [
        {
            "step_id": "s1",
            "action": "math_calculator",
            "attempts": 3,
            "error": {"type": "tool_error", "message": "div by 0"},
        }
    ]

    await store.dead_letter(failed, "retried and failed again")  # upsert
    again = await store.dlq_get("task-1")
    assert again is not None and again.reason == "retried and failed again"
    assert len(await store.dlq_list()) == 2

    assert await store.dlq_remove("task-1")
    assert not await store.dlq_remove("task-1")
    assert await store.dlq_get("task-1") is None


# -- the end of a run -------------------------------------------------------------------------------


async def test_dlq_size_counts_the_entries(store: TaskStore) -> None:
    assert await store.dlq_size() == 0
    await store.dead_letter(record("task-1", TaskStatus.FAILED), "retries exhausted")
    await store.dead_letter(record("task-2", TaskStatus.FAILED), "planner gave up")
    await store.dead_letter(record("task-1", TaskStatus.FAILED), "again")  # replaced, not added
    assert await store.dlq_size() == 2
    assert await store.dlq_remove("task-1")
    assert await store.dlq_size() == 1


async def test_finish_task_writes_the_record_its_event_the_dead_letter_entry_and_the_usage(
    store: TaskStore,
) -> None:
    assert await store.create_task(record(status=TaskStatus.EXECUTING), request_for("task-1"))
    usage = ModelUsage(prompt_tokens=3, completion_tokens=4, cost_usd=0.5, calls=2)
    failed = record(status=TaskStatus.FAILED, tenant="acme", error="retries exhausted", usage=usage)
    assert await store.finish_task(failed, "failed", {"error": "retries exhausted"})

    stored = await store.get_task("task-1")
    assert stored is not None and stored == failed.model_copy(update={"updated_at": stored.updated_at})
    assert [(e.kind, e.data) for e in await store.events("task-1")] == [
        ("failed", {"error": "retries exhausted"})
    ]
    entry = await store.dlq_get("task-1")
    assert entry is not None and (entry.reason, entry.tenant) == ("retries exhausted", "acme")
    assert await store.tenant_usage("acme") == usage

    done = record("task-2", TaskStatus.COMPLETED, tenant="acme", usage=ModelUsage(calls=1))
    assert await store.finish_task(done, "completed", {})
    assert await store.dlq_get("task-2") is None  # completed: not dead-lettered
    assert (await store.tenant_usage("acme")).calls == 3
    free = record("task-3", TaskStatus.FAILED, tenant="other")  # no model call: no usage row
    assert await store.finish_task(free, "failed", {})
    unpaid = await store.dlq_get("task-3")
    assert unpaid is not None and unpaid.reason == "failed"
    assert await store.tenant_usage("other") == ModelUsage()
    with pytest.raises(ValueError, match="final"):
        await store.finish_task(record("task-4", TaskStatus.EXECUTING), "executing", {})


# -- idempotency keys and approvals -------------------------------------------------------------------


async def test_idempotency_key_first_claim_wins(store: TaskStore) -> None:
    first = await store.claim_idempotency_key("acme", "k1", "sha-a", "task-1")
    assert first == IdempotencyClaim(task_id="task-1", same_body=True)
    assert await store.claim_idempotency_key("acme", "k1", "sha-a", "task-2") == ("task-1", True)  # replay
    assert await store.claim_idempotency_key("acme", "k1", "sha-b", "task-3") == ("task-1", False)  # misuse
    assert await store.claim_idempotency_key("other", "k1", "sha-b", "task-4") == ("task-4", True)  # tenant


async def test_racing_idempotency_claims_in_one_process_bind_one_task(store: TaskStore) -> None:
    claims = await asyncio.gather(
        *(store.claim_idempotency_key("acme", "same-key", "sha", f"task-{i}") for i in range(8))
    )
    assert len({claim.task_id for claim in claims}) == 1 and all(claim.same_body for claim in claims)


async def test_first_approval_decision_wins(store: TaskStore) -> None:
    assert await store.get_approval("task-1", "s1") is None
    assert await store.decide_approval("task-1", "s1", "approved", "alice", "looks fine")
    assert not await store.decide_approval("task-1", "s1", "rejected", "bob", "too late")
    decided = await store.get_approval("task-1", "s1")
    assert decided is not None
    assert (decided.task_id, decided.step_id, decided.decision, decided.decided_by, decided.reason) == (
        "task-1",
        "s1",
        "approved",
        "alice",
        "looks fine",
    )
    assert decided.decided_at.utcoffset() == timedelta(0)
    dumped = decided.model_dump(mode="json")
    assert list(dumped) == ["task_id", "step_id", "decision", "decided_by", "reason", "decided_at"]
    assert dumped["decided_at"].endswith("+00:00")
    assert await store.decide_approval("task-1", "s2", "rejected", "bob")
    second = await store.get_approval("task-1", "s2")
    assert second is not None and (second.decision, second.reason) == ("rejected", None)
    with pytest.raises(ValueError, match="decision"):
        await store.decide_approval("task-1", "s3", "maybe", "carol")  # type: ignore[arg-type]


# -- the longest ids the contracts allow ------------------------------------------------------------


async def test_the_longest_ids_fit_every_table(store: TaskStore) -> None:
    assert len(LONG_KEY) == MAX_IDEMPOTENCY_KEY_CHARS
    request = TaskRequest(
        description="long", task_id=LONG_TASK_ID, tenant=LONG_TENANT, idempotency_key=LONG_KEY
    )
    task = record(LONG_TASK_ID, tenant=LONG_TENANT)
    assert await store.create_task(task, request)
    assert await store.acquire_lease(LONG_TASK_ID, "orch-a", ttl_s=30)
    task.status = TaskStatus.WAITING_APPROVAL
    assert await store.save_transition(task, "approval_requested", {"step_id": LONG_STEP_ID}, owner="orch-a")
    result = StepResult(
        step_id=LONG_STEP_ID, action="python_exec", idempotency_key=LONG_KEY, status=StepStatus.SUCCEEDED
    )
    await store.save_step_result(LONG_TASK_ID, result)
    assert await store.get_step_result(LONG_KEY) == result

    # approvals are keyed by the step's idempotency key (a decision belongs to one round's step)
    assert await store.decide_approval(LONG_TASK_ID, LONG_KEY, "approved", "b" * 200, "ok")
    decided = await store.get_approval(LONG_TASK_ID, LONG_KEY)
    assert decided is not None and (decided.step_id, decided.decided_by) == (LONG_KEY, "b" * 200)

    assert await store.claim_idempotency_key(LONG_TENANT, LONG_KEY, "f" * 64, LONG_TASK_ID) == (
        LONG_TASK_ID,
        True,
    )
    failed = task.model_copy(update={"status": TaskStatus.FAILED, "error": "x", "usage": ModelUsage(calls=1)})
    assert await store.finish_task(failed, "failed", {}, owner="orch-a")
    assert [e.task_id for e in await store.dlq_list(tenant=LONG_TENANT)] == [LONG_TASK_ID]
    assert (await store.tenant_usage(LONG_TENANT)).calls == 1
    assert await store.release_lease(LONG_TASK_ID, "orch-a")
    assert len(await store.events(LONG_TASK_ID)) == 2


# -- API keys (helper KEYS) ---------------------------------------------------------------------------


async def test_api_keys_round_trip_and_a_stored_key_still_verifies(store: TaskStore) -> None:
    key, minted = mint_key("acme", Role.APPROVER, name="ci runner", now=T0)
    assert await store.create_api_key(minted)
    loaded = await store.get_api_key(minted.key_id)
    assert loaded == minted
    assert loaded is not None and loaded.created_at.utcoffset() == timedelta(0)
    assert verify_key(key, loaded)
    assert not verify_key(key.replace(key[-1], "A" if key[-1] != "A" else "B"), loaded)
    assert await store.get_api_key("0" * 12) is None

    _, other = mint_key("acme", now=T0)
    clash = other.model_copy(update={"key_id": minted.key_id})
    assert not await store.create_api_key(clash)  # same id: refused, the first key is kept
    assert await store.get_api_key(minted.key_id) == minted


async def test_api_keys_list_by_tenant_oldest_first_and_count_the_active_ones(store: TaskStore) -> None:
    assert await store.count_api_keys() == 0
    assert await store.list_api_keys() == []
    minted = [mint_key(tenant, now=T0 + timedelta(minutes=i))[1] for i, tenant in enumerate("bab")]
    for record_ in reversed(minted):
        assert await store.create_api_key(record_)
    assert [r.key_id for r in await store.list_api_keys()] == [r.key_id for r in minted]
    assert [r.key_id for r in await store.list_api_keys("b")] == [minted[0].key_id, minted[2].key_id]
    assert await store.list_api_keys("nobody") == []
    assert await store.count_api_keys() == 3

    later = T0 + timedelta(hours=1)
    assert await store.revoke_api_key(minted[1].key_id, now=later)
    assert not await store.revoke_api_key(minted[1].key_id, now=later + timedelta(hours=1))  # once
    assert not await store.revoke_api_key("f" * 12)
    assert await store.count_api_keys() == 2
    revoked = await store.get_api_key(minted[1].key_id)
    assert revoked is not None and revoked.revoked_at == later and not revoked.active
    assert len(await store.list_api_keys()) == 3  # a revoked key is still listed


async def test_a_revoked_key_no_longer_verifies(store: TaskStore) -> None:
    key, minted = mint_key("acme", Role.ADMIN)
    await store.create_api_key(minted)
    assert await store.revoke_api_key(minted.key_id)
    revoked = await store.get_api_key(minted.key_id)
    assert revoked is not None and revoked.revoked_at is not None
    assert not verify_key(key, revoked)


async def test_the_longest_tenant_fits_the_api_keys_table(store: TaskStore) -> None:
    key, minted = mint_key(LONG_TENANT, Role.USER, name="n" * 200)
    assert await store.create_api_key(minted)
    assert [r.key_id for r in await store.list_api_keys(LONG_TENANT)] == [minted.key_id]
    loaded = await store.get_api_key(minted.key_id)
    assert loaded is not None and verify_key(key, loaded)


# -- task lists by tenant, time and cursor; feedback (GATEWAY) -----------------------------------------


async def _pages(store: TaskStore, limit: int, **filters: object) -> list[list[str]]:
    """Every page of ``list_tasks`` with ``filters``, following the cursor of each page's last task."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await store.list_tasks(None, limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        if not page:
            return pages
        pages.append([r.task_id for r in page])
        cursor = TaskCursor(page[-1].created_at, page[-1].task_id)


async def test_list_tasks_by_tenant_created_after_and_cursor(store: TaskStore) -> None:
    tenants = ["acme", "beta", "acme", "acme", "beta", "acme"]
    for i, tenant in enumerate(tenants):
        at = T0 + timedelta(minutes=i // 2)  # two tasks at each moment: ties are broken by id
        await store.create_task(record(f"t{i}", tenant=tenant, created_at=at), request_for(f"t{i}", tenant))

    assert [r.task_id for r in await store.list_tasks()] == ["t5", "t4", "t3", "t2", "t1", "t0"]
    assert [r.task_id for r in await store.list_tasks(tenant="acme")] == ["t5", "t3", "t2", "t0"]
    assert await store.list_tasks(tenant="nobody") == []
    after = await store.list_tasks(created_after=T0)  # strictly after
    assert [r.task_id for r in after] == ["t5", "t4", "t3", "t2"]
    assert await _pages(store, 2) == [["t5", "t4"], ["t3", "t2"], ["t1", "t0"]]
    assert await _pages(store, 3, tenant="acme") == [["t5", "t3", "t2"], ["t0"]]
    assert await _pages(store, 1, tenant="beta", created_after=T0) == [["t4"]]
    # the old positional call still works
    assert [r.task_id for r in await store.list_tasks(TaskStatus.QUEUED, 1)] == ["t5"]


async def test_list_tasks_sees_the_tenant_of_saved_records(store: TaskStore) -> None:
    await store.save_task(record("saved", tenant="acme"))
    finished = record("saved", TaskStatus.COMPLETED, tenant="acme")
    await store.finish_task(finished, "completed", {})
    assert [r.task_id for r in await store.list_tasks(tenant="acme")] == ["saved"]
    assert [r.task_id for r in await store.list_tasks(TaskStatus.COMPLETED, tenant="acme")] == ["saved"]


def test_task_cursors_round_trip_and_forged_ones_are_refused() -> None:
    cursor = TaskCursor(T0, "task-1")
    assert TaskCursor.decode(cursor.encode()) == cursor
    forged = ["", "x", "!!!", "a" * 600, cursor.encode()[:-3], "W10", "WyJ4IiwieSJd", "eyJhIjoxfQ"]
    # moments that exist in their own offset but not in UTC (before year 1, after year 9999)
    for moment in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00"):
        raw = json.dumps([moment, "task-1"]).encode()
        forged.append(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    for text in forged:
        with pytest.raises(ValueError, match="invalid cursor"):
            TaskCursor.decode(text)


async def test_feedback_is_stored_per_task_in_order(store: TaskStore) -> None:
    first = await store.add_feedback(
        TaskFeedback(task_id="t1", tenant="acme", rating=1, comment="good", labels=["fast"], submitted_by="k")
    )
    await store.add_feedback(TaskFeedback(task_id="t2", tenant="acme", rating=0))
    second = await store.add_feedback(TaskFeedback(task_id="t1", tenant="acme", rating=-1, created_at=T0))
    assert first.id is not None and second.id is not None and second.id > first.id
    stored = await store.feedback("t1")
    assert stored == [first, second]
    assert (stored[0].rating, stored[0].comment, stored[0].labels, stored[0].submitted_by) == (
        1,
        "good",
        ["fast"],
        "k",
    )
    assert stored[1].created_at == T0
    assert await store.feedback("none") == []


# -- event ids and the webhook outbox (EVENTS) ----------------------------------------------------------

HOOK_URL = "https://hooks.example.com/officeray"
HOOK_KEY = "0123456789ab"


def hooked_request(task_id: str) -> TaskRequest:
    """A request with a webhook URL, submitted with key :data:`HOOK_KEY`."""
    return TaskRequest(
        description=f"do {task_id}", task_id=task_id, webhook_url=HOOK_URL, submitted_by=HOOK_KEY
    )


async def _finished_with_hook(store: TaskStore, task_id: str) -> None:
    await store.create_task(record(task_id), hooked_request(task_id))
    await store.finish_task(record(task_id, TaskStatus.COMPLETED), "completed", {"status": "completed"})


async def test_events_have_increasing_ids_and_resume_after_one(store: TaskStore) -> None:
    await store.append_event("a", "first", {"n": 1})
    await store.append_event("b", "other", {})
    await store.save_transition(record("a", TaskStatus.PLANNING), "planning", {"n": 2})
    await store.append_event("a", "third", {"n": 3})
    events = await store.events("a")
    ids = [e.id for e in events]
    assert [e.kind for e in events] == ["first", "planning", "third"]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids))  # type: ignore[type-var]
    [other] = await store.events("b")
    assert other.id is not None and ids[0] < other.id < ids[1]  # type: ignore[operator]
    assert await store.events("a", after_id=ids[0]) == events[1:]
    assert await store.events("a", after_id=ids[-1]) == []
    assert await store.events("a", after_id=0) == events
    assert await store.events("nope", after_id=None) == []


async def test_the_event_feed_holds_every_task_by_tenant_in_id_order(store: TaskStore) -> None:
    """``event_feed``: all tasks' events in id order with their task and tenant; the tail without
    ``after_id``, the next ``limit`` after one; a tenant's only; none of a task with no record."""
    await store.create_task(record("a", tenant="acme"), request_for("a", tenant="acme"))
    await store.create_task(record("b", tenant="zeta"), request_for("b", tenant="zeta"))
    await store.save_transition(record("a", TaskStatus.PLANNING, tenant="acme"), "planning", {"n": 1})
    await store.save_transition(record("b", TaskStatus.PLANNING, tenant="zeta"), "planning", {"n": 2})
    await store.append_event("orphan", "lost", {})  # no record: not in the feed
    await store.save_transition(record("a", TaskStatus.EXECUTING, tenant="acme"), "step_started", {"n": 3})

    feed = await store.event_feed()
    assert [(e.task_id, e.tenant, e.kind, e.data) for e in feed] == [
        ("a", "acme", "planning", {"n": 1}),
        ("b", "zeta", "planning", {"n": 2}),
        ("a", "acme", "step_started", {"n": 3}),
    ]
    ids = [e.id for e in feed]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids))  # type: ignore[type-var]
    assert all(e.at.tzinfo is not None for e in feed)
    assert [e.id for e in await store.event_feed(limit=2)] == ids[1:]  # the tail
    assert [e.id for e in await store.event_feed(ids[0], limit=1)] == [ids[1]]  # the next after one
    assert await store.event_feed(ids[-1]) == []
    assert await store.event_feed(0) == feed
    acme = await store.event_feed(tenant="acme")
    assert [(e.task_id, e.kind) for e in acme] == [("a", "planning"), ("a", "step_started")]
    assert await store.event_feed(acme[0].id, tenant="acme") == acme[1:]
    assert await store.event_feed(tenant="nobody") == []
    assert [e.kind for e in await store.events("a")] == ["planning", "step_started"]  # the same events
    with pytest.raises(ValueError, match="limit"):
        await store.event_feed(limit=0)


async def test_announced_transitions_write_their_delivery_in_the_same_write(store: TaskStore) -> None:
    await store.create_task(record("t"), hooked_request("t"))
    await store.save_transition(record("t", TaskStatus.EXECUTING), "step_started", {"status": "executing"})
    waiting = record("t", TaskStatus.WAITING_APPROVAL)
    data = {"status": "waiting_approval", "step_id": "s1"}
    assert await store.save_transition(waiting, "approval_requested", data)
    await store.finish_task(record("t", TaskStatus.FAILED, error="boom"), "failed", {"status": "failed"})
    deliveries = await store.webhook_deliveries("t")
    assert [d.event for d in deliveries] == ["waiting_approval", "failed"]
    events = {e.kind: e for e in await store.events("t")}
    for delivery, kind in zip(deliveries, ["approval_requested", "failed"], strict=True):
        assert (delivery.url, delivery.key_id, delivery.task_id) == (HOOK_URL, HOOK_KEY, "t")
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, [])
        assert delivery.tenant == "default"
        body = json.loads(delivery.body)
        assert body["id"] == delivery.delivery_id and body["event"] == delivery.event
        assert body["task_event_id"] == events[kind].id  # the transition it announces
        assert body["task_id"] == "t" and body["data"]["status"] == body["status"]
    assert json.loads(deliveries[0].body)["data"]["step_id"] == "s1"
    assert len({d.delivery_id for d in deliveries}) == 2
    assert await store.webhook_deliveries("nope") == []


async def test_no_delivery_without_a_webhook_url_or_when_the_write_is_refused(store: TaskStore) -> None:
    await store.create_task(record("plain"), request_for("plain"))
    await store.finish_task(record("plain", TaskStatus.COMPLETED), "completed", {"status": "completed"})
    assert await store.webhook_deliveries("plain") == []
    await store.create_task(record("fenced"), hooked_request("fenced"))
    assert await store.acquire_lease("fenced", "owner-a", 60)
    done = record("fenced", TaskStatus.COMPLETED)
    assert not await store.finish_task(done, "completed", {"status": "completed"}, owner="owner-b")
    assert await store.webhook_deliveries("fenced") == []  # not written: nothing announced
    assert await store.finish_task(done, "completed", {"status": "completed"}, owner="owner-a")
    assert [d.event for d in await store.webhook_deliveries("fenced")] == ["completed"]


async def test_a_claimed_delivery_is_one_claimers_until_its_lease_expires(store: TaskStore) -> None:
    await _finished_with_hook(store, "t")
    now = utcnow() + timedelta(seconds=1)
    [claimed] = await store.claim_webhooks("a", 30, now)
    assert claimed.event == "completed" and claimed.attempts == []
    assert await store.claim_webhooks("b", 30, now) == []
    later = now + timedelta(seconds=31)
    [taken] = await store.claim_webhooks("b", 30, later)  # a's lease expired: b has it now
    assert taken.delivery_id == claimed.delivery_id
    failed = WebhookAttempt(at=later, status_code=500, error="HTTP 500")
    retry = later + timedelta(seconds=5)
    pending = DeliveryStatus.PENDING
    assert not await store.record_webhook_attempt(claimed.delivery_id, "a", failed, pending, retry)
    assert await store.record_webhook_attempt(claimed.delivery_id, "b", failed, pending, retry)
    with pytest.raises(ValueError):
        await store.claim_webhooks("a", 0, now)


async def test_attempts_reschedule_then_deliver(store: TaskStore) -> None:
    await _finished_with_hook(store, "t")
    now = utcnow() + timedelta(seconds=1)
    [delivery] = await store.claim_webhooks("a", 30, now)
    first = WebhookAttempt(at=now, status_code=500, error="HTTP 500")
    retry = now + timedelta(seconds=10)
    assert await store.record_webhook_attempt(delivery.delivery_id, "a", first, DeliveryStatus.PENDING, retry)
    assert await store.claim_webhooks("a", 30, now + timedelta(seconds=9)) == []  # not due yet
    [again] = await store.claim_webhooks("b", 30, retry)
    assert again.attempts == [first] and again.next_attempt_at == retry
    second = WebhookAttempt(at=retry, status_code=204)
    assert await store.record_webhook_attempt(delivery.delivery_id, "b", second, DeliveryStatus.DELIVERED)
    assert await store.claim_webhooks("a", 30, retry + timedelta(days=1)) == []
    [done] = await store.webhook_deliveries("t")
    assert (done.status, done.finished_at) == (DeliveryStatus.DELIVERED, retry)
    assert done.attempts == [first, second]
    assert done.next_attempt_at is None
    # final: nothing more is recorded
    assert not await store.record_webhook_attempt(delivery.delivery_id, "b", second, DeliveryStatus.DELIVERED)


async def test_given_up_and_not_sent_are_final_with_their_reason(store: TaskStore) -> None:
    await _finished_with_hook(store, "t1")
    await _finished_with_hook(store, "t2")
    now = utcnow() + timedelta(seconds=1)
    claimed = {d.task_id: d for d in await store.claim_webhooks("a", 30, now)}
    unsigned = WebhookAttempt(at=now, error="no API key to sign with")
    ok = await store.record_webhook_attempt(
        claimed["t1"].delivery_id, "a", unsigned, DeliveryStatus.NOT_SENT, reason="no API key to sign with"
    )
    assert ok
    refused = WebhookAttempt(at=now, error="refused")
    assert await store.record_webhook_attempt(
        claimed["t2"].delivery_id, "a", refused, DeliveryStatus.GIVEN_UP, reason="refused"
    )
    [t1] = await store.webhook_deliveries("t1")
    [t2] = await store.webhook_deliveries("t2")
    assert (t1.status, t1.reason) == (DeliveryStatus.NOT_SENT, "no API key to sign with")
    assert t1.attempts == [unsigned]
    assert (t2.status, t2.reason) == (DeliveryStatus.GIVEN_UP, "refused")
    assert await store.claim_webhooks("b", 30, now + timedelta(days=2)) == []
    with pytest.raises(ValueError):  # pending needs a time; final takes none
        await store.record_webhook_attempt(t1.delivery_id, "a", refused, DeliveryStatus.PENDING)
    with pytest.raises(ValueError):
        await store.record_webhook_attempt(t1.delivery_id, "a", refused, DeliveryStatus.DELIVERED, now)


async def test_the_webhook_backlog_counts_the_pending_deliveries(store: TaskStore) -> None:
    assert await store.webhook_backlog() == 0
    for task_id in ("t1", "t2", "t3"):
        await _finished_with_hook(store, task_id)
    assert await store.webhook_backlog() == 3
    now = utcnow() + timedelta(seconds=1)
    claimed = {d.task_id: d.delivery_id for d in await store.claim_webhooks("a", 30, now)}
    assert await store.webhook_backlog() == 3  # claimed, still pending
    failed = WebhookAttempt(at=now, status_code=500, error="HTTP 500")
    later = now + timedelta(seconds=10)
    assert await store.record_webhook_attempt(claimed["t1"], "a", failed, DeliveryStatus.PENDING, later)
    delivered = WebhookAttempt(at=now, status_code=204)
    assert await store.record_webhook_attempt(claimed["t2"], "a", delivered, DeliveryStatus.DELIVERED)
    refused = WebhookAttempt(at=now, error="refused")
    assert await store.record_webhook_attempt(
        claimed["t3"], "a", refused, DeliveryStatus.GIVEN_UP, reason="refused"
    )
    assert await store.webhook_backlog() == 1  # t1 waits for its next attempt


async def test_concurrent_claimers_get_disjoint_deliveries(store: TaskStore) -> None:
    for i in range(12):
        await _finished_with_hook(store, f"t{i}")
    now = utcnow() + timedelta(seconds=1)
    batches = await asyncio.gather(*(store.claim_webhooks(f"o{n}", 30, now, limit=5) for n in range(4)))
    ids = [d.delivery_id for batch in batches for d in batch]
    assert len(ids) == len(set(ids)) == 12
    assert all(len(batch) <= 5 for batch in batches)


# -- the trace store ----------------------------------------------------------------------------------


def _span(name: str, start_ns: int, task_id: str | None = "task-1", trace_id: str = "a" * 32, **more: object):  # type: ignore[no-untyped-def]
    from officeray.telemetry import SpanRecord

    return SpanRecord.model_validate(
        {
            "trace_id": trace_id,
            "span_id": format(start_ns, "016x"),
            "parent_span_id": None,
            "task_id": task_id,
            "name": name,
            "component": "orchestrator",
            "start_ns": start_ns,
            "end_ns": start_ns + 5,
            **more,
        }
    )


async def test_spans_of_a_task_come_back_whole_and_in_start_order(store: TaskStore) -> None:
    written = [
        _span("step s1", 30, component="runner", instance="4711", node="n2", status="error",
              status_message="boom", attributes={"officeray.step_id": "s1", "n": 3, "xs": [1, 2]},
              events=[{"name": "tool_request", "time_ns": 31, "attributes": {"officeray.event": "{}"}}]),
        _span("task", 10),
        _span("submit", 5, task_id=None),  # of the task's trace, but written without its task id
        _span("plan", 20, task_id="task-2", trace_id="b" * 32),
    ]  # fmt: skip
    assert await store.add_spans(written, now=T0) == 4
    assert await store.add_spans([], now=T0) == 0
    spans = await store.task_spans("task-1")
    assert [s.name for s in spans] == ["task", "step s1"]
    assert spans[1] == written[0]  # every field survives
    with_trace = await store.task_spans("task-1", trace_id="a" * 32)
    assert [s.name for s in with_trace] == ["submit", "task", "step s1"]
    assert [s.name for s in await store.task_spans("task-2", trace_id="b" * 32)] == ["plan"]
    assert await store.task_spans("nobody") == []
    assert [s.name for s in await store.task_spans("task-1", limit=1)] == ["task"]


async def test_recent_spans_are_those_written_since_newest_first(store: TaskStore) -> None:
    await store.add_spans([_span("old", 1)], now=T0)
    await store.add_spans([_span("a", 2), _span("b", 3)], now=T0 + timedelta(minutes=5))
    recent = await store.recent_spans(T0 + timedelta(minutes=1))
    assert [s.name for s in recent] == ["b", "a"]
    assert [s.name for s in await store.recent_spans(T0, limit=1)] == ["b"]


async def test_pruning_drops_old_spans_then_the_oldest_beyond_the_limit(store: TaskStore) -> None:
    await store.add_spans([_span(f"old{i}", i) for i in range(3)], now=T0)
    await store.add_spans([_span(f"new{i}", 10 + i) for i in range(5)], now=T0 + timedelta(hours=2))
    assert await store.prune_spans(T0 + timedelta(hours=1), max_spans=100) == 3
    assert [s.name for s in await store.task_spans("task-1")] == [f"new{i}" for i in range(5)]
    assert await store.prune_spans(T0, max_spans=2) == 3  # the three written first go
    assert [s.name for s in await store.task_spans("task-1")] == ["new3", "new4"]
    assert await store.prune_spans(T0, max_spans=2) == 0


# -- the memory ---------------------------------------------------------------------------------------

UNIT = vector_bytes(np.array([0.6, 0.8, 0.0], dtype=np.float32))


def memory(entry_id: str, task_id: str = "task-1", tenant: str = "acme", **fields: object) -> MemoryEntry:
    return MemoryEntry.model_validate(
        {
            "entry_id": entry_id,
            "task_id": task_id,
            "tenant": tenant,
            "description": f"do {task_id}",
            "outcome": "completed",
            **fields,
        }
    )


async def add_all(store: TaskStore, *entries: MemoryEntry) -> list[int]:
    seqs = []
    for entry in entries:
        stored = await store.add_memory_entry(entry)
        assert stored.seq is not None
        seqs.append(stored.seq)
    return seqs


async def test_a_memory_entry_round_trips_with_its_vector(store: TaskStore) -> None:
    plan = make_plan(
        "task-1", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6*7"}}]
    )
    entry = memory(
        "m-1",
        plan=plan.model_dump(mode="json"),
        outcome="failed",
        failed_steps=[
            FailedStep(step_id="s1", action="math_calculator", error_type="tool_error", message="x")
        ],
        review_feedback=["wrong unit"],
        lesson="Check the unit.",
        iterations=2,
        latency_s=1.5,
        tokens=120,
        rating=-1,
        encoder="enc-a",
        vector=UNIT,
        seq=999,  # the store's to choose
    )
    stored = await store.add_memory_entry(entry)
    assert stored.seq is not None and stored.seq != 999
    assert stored == entry.model_copy(update={"seq": stored.seq})
    loaded = await store.memory_entry("m-1")
    assert loaded == stored
    assert loaded is not None and loaded.vector is not None
    np.testing.assert_array_equal(vector_of(loaded.vector), vector_of(UNIT))
    assert await store.memory_entry("nope") is None


async def test_an_entry_id_is_stored_once(store: TaskStore) -> None:
    first = await store.add_memory_entry(memory("m-1", lesson="first"))
    again = await store.add_memory_entry(memory("m-1", lesson="second", task_id="task-2"))
    assert again == first
    assert [e.lesson for e in await store.memory_entries()] == ["first"]


async def test_memory_seqs_increase_and_are_never_reused(store: TaskStore) -> None:
    a, b = await add_all(store, memory("m-a"), memory("m-b"))
    assert 0 < a < b
    assert [e.entry_id for e in await store.delete_memory(entry_id="m-b")] == ["m-b"]
    [c] = await add_all(store, memory("m-c"))
    assert c > b  # the faiss id of a deleted entry never names another one


async def test_memory_pages_by_tenant_and_seq(store: TaskStore) -> None:
    seqs = await add_all(
        store,
        memory("m-1", tenant="acme", encoder="enc-a", vector=UNIT),
        memory("m-2", tenant="globex", encoder="enc-a", vector=UNIT),
        memory("m-3", tenant="acme", encoder="enc-a", vector=UNIT),
        memory("m-4", tenant="acme"),
    )
    assert [e.entry_id for e in await store.memory_entries()] == ["m-1", "m-2", "m-3", "m-4"]
    acme = await store.memory_entries(tenant="acme")
    assert [e.entry_id for e in acme] == ["m-1", "m-3", "m-4"]
    assert [e.vector for e in acme] == [UNIT, UNIT, None]
    after = await store.memory_entries(tenant="acme", after_seq=seqs[0], limit=1)
    assert [e.entry_id for e in after] == ["m-3"]
    assert await store.memory_entries(after_seq=seqs[-1]) == []
    bare = await store.memory_entries(with_vectors=False)
    assert all(e.vector is None for e in bare)
    assert [e.encoder for e in bare] == ["enc-a", "enc-a", "enc-a", ""]  # what made the vector still says
    assert await store.memory_entries(tenant="nobody") == []
    with pytest.raises(ValueError, match="limit"):
        await store.memory_entries(limit=0)


async def test_entries_missing_an_encoders_vector_and_setting_them(store: TaskStore) -> None:
    await add_all(
        store,
        memory("no-vector"),
        memory("enc-a", encoder="enc-a", vector=UNIT),
        memory("enc-b", encoder="enc-b", vector=UNIT),
    )
    missing = await store.memory_entries(missing_encoder="enc-a")
    assert [e.entry_id for e in missing] == ["no-vector", "enc-b"]
    other = vector_bytes(np.array([1.0, 0.0, 0.0], dtype=np.float32))
    updated = await store.set_memory_vectors(
        {"no-vector": (other, "enc-a"), "enc-b": (other, "enc-a"), "gone": (other, "enc-a")}
    )
    assert updated == 2  # the unknown id is left out
    assert await store.memory_entries(missing_encoder="enc-a") == []
    assert await store.set_memory_vectors({}) == 0
    loaded = await store.memory_entry("enc-b")
    assert loaded is not None
    assert (loaded.encoder, loaded.vector) == ("enc-a", other)  # the columns win over the stored JSON
    assert loaded.updated_at >= loaded.created_at


async def test_rating_a_tasks_memory_adds_to_every_entry_of_it(store: TaskStore) -> None:
    await add_all(
        store,
        memory("m-1", task_id="task-1", rating=1, vector=UNIT, encoder="enc-a"),
        memory("m-2", task_id="task-1"),
        memory("m-3", task_id="task-2"),
    )
    rated = await store.rate_memory("task-1", 2)
    assert [(e.entry_id, e.rating, e.vector) for e in rated] == [("m-1", 3, None), ("m-2", 2, None)]
    assert [e.rating for e in await store.rate_memory("task-1", -3)] == [0, -1]
    assert [e.rating for e in await store.task_memory("task-1")] == [0, -1]
    loaded = await store.memory_entry("m-1")
    assert loaded is not None and (loaded.rating, loaded.vector) == (0, UNIT)
    assert [e.rating for e in await store.task_memory("task-2")] == [0]  # another task's: untouched
    assert await store.rate_memory("nope", 1) == []


async def test_task_memory_and_entries_by_seq(store: TaskStore) -> None:
    a, b, c = await add_all(
        store,
        memory("m-a", task_id="task-1", vector=UNIT, encoder="enc-a"),
        memory("m-b", task_id="task-2"),
        memory("m-c", task_id="task-1"),
    )
    assert [e.entry_id for e in await store.task_memory("task-1")] == ["m-a", "m-c"]
    assert all(e.vector is None for e in await store.task_memory("task-1"))
    assert await store.task_memory("nope") == []
    found = await store.memory_entries_by_seq([c, c + 1000, a, b])
    assert [e.entry_id for e in found] == ["m-c", "m-a", "m-b"]  # the order asked; unknown left out
    assert all(e.vector is None for e in found)
    assert await store.memory_entries_by_seq([]) == []


async def test_deleting_memory_by_entry_task_or_tenant(store: TaskStore) -> None:
    await add_all(
        store,
        memory("m-1", task_id="task-1", tenant="acme", vector=UNIT, encoder="enc-a"),
        memory("m-2", task_id="task-1", tenant="acme"),
        memory("m-3", task_id="task-2", tenant="acme"),
        memory("m-4", task_id="task-3", tenant="globex"),
        memory("m-5", task_id="task-4", tenant="globex"),
    )
    assert await store.delete_memory(entry_id="m-4", tenant="acme") == []  # another tenant's: kept
    assert await store.delete_memory(task_id="task-3", tenant="acme") == []
    deleted = await store.delete_memory(entry_id="m-4", tenant="globex")
    assert [e.entry_id for e in deleted] == ["m-4"]
    deleted = await store.delete_memory(task_id="task-1")
    assert [(e.entry_id, e.vector) for e in deleted] == [("m-1", None), ("m-2", None)]
    assert await store.delete_memory(entry_id="m-1") == []  # gone already
    assert [e.entry_id for e in await store.delete_memory(tenant="acme")] == ["m-3"]
    assert [e.entry_id for e in await store.memory_entries()] == ["m-5"]
    for selectors in (
        {},
        {"entry_id": "m-5", "task_id": "task-4"},
        {"entry_id": "m-5", "task_id": "x", "tenant": "globex"},
    ):
        with pytest.raises(ValueError, match="exactly one"):
            await store.delete_memory(**selectors)
    assert [e.entry_id for e in await store.memory_entries()] == ["m-5"]  # refused calls deleted nothing


async def test_memory_state_counts_each_tenants_entries_and_newest_seq(store: TaskStore) -> None:
    assert await store.memory_state() == {}
    a, b, c = await add_all(
        store, memory("m-1", tenant="acme"), memory("m-2", tenant="globex"), memory("m-3", tenant="acme")
    )
    assert await store.memory_state() == {"acme": MemoryTenantState(2, c), "globex": MemoryTenantState(1, b)}
    await store.delete_memory(entry_id="m-3")
    assert await store.memory_state() == {"acme": MemoryTenantState(1, a), "globex": MemoryTenantState(1, b)}
    await store.delete_memory(tenant="globex")
    assert await store.memory_state() == {"acme": MemoryTenantState(1, a)}


async def test_the_longest_ids_fit_the_memory(store: TaskStore) -> None:
    entry = memory("m" * 64, task_id=LONG_TASK_ID, tenant=LONG_TENANT, encoder="e" * 256, vector=UNIT)
    stored = await store.add_memory_entry(entry)
    assert await store.memory_entry("m" * 64) == stored
    assert [e.task_id for e in await store.task_memory(LONG_TASK_ID)] == [LONG_TASK_ID]
