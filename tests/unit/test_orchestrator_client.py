"""The OrchestratorClient without Ray: in-process fake shards (:mod:`actors.testing`) for routing,
the one-round-trip keyed submit, restarts after a shard died, timeouts and typed errors; and the
gateway's answers to the client's errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.exceptions import RayTaskError

from actors.client import OrchestratorClient
from actors.orchestrator import shard_of, task_id_on_shard
from actors.testing import FakeOrchestrator, FakeTaskStore, LocalActors
from officeray.contracts import StepResult, StepStatus, TaskRecord, TaskRequest, TaskStatus, new_task_id
from officeray.errors import (
    ApprovalConflictError,
    IdempotencyConflictError,
    OrchestratorUnavailableError,
    TaskNotFoundError,
)
from serving import gateway

SHARDS = 4


class Cluster:
    """Fake orchestrator shards over one shared store, and a client of them."""

    def __init__(
        self, shards: int = SHARDS, *, call_timeout_s: float = 5.0, outcome: str | None = "completed"
    ):
        self.store = FakeTaskStore()
        self.actors = LocalActors(
            lambda shard: FakeOrchestrator(shard, shards, self.store, outcome=outcome),  # type: ignore[arg-type]
            shards,
        )
        self.client = OrchestratorClient(self.actors.connect, shards, call_timeout_s=call_timeout_s)

    def orchestrator(self, shard: int) -> FakeOrchestrator:
        orchestrator: FakeOrchestrator = self.actors.objects[shard]
        return orchestrator


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    running = Cluster()
    yield running
    for shard in range(running.actors.shards):
        running.actors.stall(shard, False)  # let calls left waiting on a stalled shard end


# -- routing ---------------------------------------------------------------------------------------


async def test_new_tasks_take_turns_and_get_ids_that_route_back_to_their_shard(cluster: Cluster) -> None:
    records = [(await cluster.client.submit(TaskRequest(description=f"t{i}")))[0] for i in range(2 * SHARDS)]
    shards = [call.shard for call in cluster.actors.calls_of("submit")]
    assert shards == [i % SHARDS for i in range(2 * SHARDS)]
    for record, shard in zip(records, shards, strict=True):
        assert shard_of(record.task_id, SHARDS) == shard == cluster.store.created_on[record.task_id]
        assert record.task_id.startswith("task-")
    # calls about a task go to the shard that started it
    final = await cluster.client.wait(records[3].task_id)
    assert final.status == TaskStatus.COMPLETED
    assert cluster.actors.calls_of("wait")[-1].shard == shards[3]


async def test_a_given_task_id_routes_by_the_id(cluster: Cluster) -> None:
    for task_id in ("row-1", "row-2", "row-3", new_task_id()):
        record, created = await cluster.client.submit(TaskRequest(description="x", task_id=task_id))
        assert created and record.task_id == task_id
        assert cluster.actors.calls_of("submit")[-1].shard == shard_of(task_id, SHARDS)
    again, created = await cluster.client.submit(TaskRequest(description="x", task_id="row-1"))
    assert not created and again.task_id == "row-1"


def test_task_ids_on_a_shard_route_to_it() -> None:
    for shard in range(SHARDS):
        assert {shard_of(task_id_on_shard(shard, SHARDS), SHARDS) for _ in range(20)} == {shard}
    assert shard_of(task_id_on_shard(0, 1), 1) == 0


# -- idempotency keys: one round trip, one shard -----------------------------------------------------


async def test_a_keyed_submit_claims_and_creates_in_one_call_on_the_shard_of_tenant_and_key(
    cluster: Cluster,
) -> None:
    request = TaskRequest(description="What is 6 * 7?", tenant="acme", idempotency_key="k-1")
    record, created = await cluster.client.submit(request)
    assert created
    key_shard = shard_of("acme/k-1", SHARDS)
    assert [(c.shard, c.method) for c in cluster.actors.calls] == [(key_shard, "submit")]
    # the claim and the task live on that shard; the task's id routes back to it
    assert cluster.store.claims[("acme", "k-1")][0] == record.task_id
    assert cluster.store.created_on[record.task_id] == key_shard == shard_of(record.task_id, SHARDS)

    again, created = await cluster.client.submit(request)
    assert not created and again.task_id == record.task_id
    assert [(c.shard, c.method) for c in cluster.actors.calls] == [(key_shard, "submit")] * 2
    assert list(cluster.store.tasks) == [record.task_id]


async def test_a_key_with_a_different_request_is_a_typed_conflict(cluster: Cluster) -> None:
    first, _ = await cluster.client.submit(TaskRequest(description="one", tenant="acme", idempotency_key="k"))
    with pytest.raises(IdempotencyConflictError) as raised:
        await cluster.client.submit(TaskRequest(description="two", tenant="acme", idempotency_key="k"))
    assert type(raised.value) is IdempotencyConflictError  # unwrapped: no Ray traceback in the message
    assert "'k' was used with a different request" in str(raised.value) and first.task_id in str(raised.value)
    assert "Traceback" not in str(raised.value)
    assert list(cluster.store.tasks) == [first.task_id]


async def test_keys_are_per_tenant(cluster: Cluster) -> None:
    a, created_a = await cluster.client.submit(TaskRequest(description="x", tenant="a", idempotency_key="k"))
    b, created_b = await cluster.client.submit(TaskRequest(description="y", tenant="b", idempotency_key="k"))
    assert created_a and created_b and a.task_id != b.task_id


async def test_concurrent_keyed_submits_make_one_task(cluster: Cluster) -> None:
    request = TaskRequest(description="What is 3 ** 3?", tenant="acme", idempotency_key="same")
    answers = await asyncio.gather(*(cluster.client.submit(request) for _ in range(8)))
    assert len({record.task_id for record, _ in answers}) == 1
    assert sorted(created for _, created in answers) == [False] * 7 + [True]


# -- restarts, timeouts, typed errors ----------------------------------------------------------------


async def test_a_dead_shard_is_found_again_once_and_the_call_retried(cluster: Cluster) -> None:
    task_id = "row-7"
    shard = shard_of(task_id, SHARDS)
    cluster.actors.kill(shard)  # Ray restarts it: a new incarnation
    record, created = await cluster.client.submit(TaskRequest(description="x", task_id=task_id))
    assert created and record.task_id == task_id
    attempts = [(c.shard, c.incarnation) for c in cluster.actors.calls_of("submit")]
    assert attempts == [(shard, 0), (shard, 1)]
    assert cluster.actors.connects.count(shard) == 2  # at construction, and once after the death


async def test_a_shard_that_stays_dead_is_unavailable(cluster: Cluster) -> None:
    shard = shard_of("row-8", SHARDS)
    cluster.actors.kill(shard, restart=False)
    with pytest.raises(OrchestratorUnavailableError, match=f"shard {shard}"):
        await cluster.client.submit(TaskRequest(description="x", task_id="row-8"))


async def test_a_shard_that_dies_again_after_its_restart_is_unavailable(cluster: Cluster) -> None:
    shard = shard_of("row-9", SHARDS)
    cluster.actors.kill(shard)
    real_connect = cluster.actors.connect

    def connect_to_a_dying_shard(which: int) -> object:
        handle = real_connect(which)
        cluster.actors.kill(which)
        return handle

    cluster.client._connect = connect_to_a_dying_shard  # the restarted incarnation dies at once too
    with pytest.raises(OrchestratorUnavailableError, match="is unavailable"):
        await cluster.client.submit(TaskRequest(description="x", task_id="row-9"))
    assert len(cluster.actors.calls_of("submit")) == 2  # tried once more, not forever


@pytest.mark.parametrize("call", ["submit", "retry", "decide_approval"])
async def test_a_call_that_may_have_taken_effect_is_not_repeated_after_a_death(
    cluster: Cluster, call: str
) -> None:
    """A submit without task id or key (its id is minted by the shard), a DLQ retry and an approval
    may have taken effect before the shard died: repeated, they would start a second task or answer
    "already decided". The caller gets 503-style unavailability; the next call reaches the restarted
    shard."""
    task_id = "row-5"
    shard = shard_of(task_id, SHARDS)
    request = TaskRequest(description="x")
    for each in range(SHARDS) if call == "submit" else [shard]:  # an unkeyed submit goes to any shard
        cluster.actors.kill(each)
    with pytest.raises(OrchestratorUnavailableError, match="is unavailable"):
        if call == "submit":
            await cluster.client.submit(request)
        elif call == "retry":
            await cluster.client.retry(task_id)
        else:
            await cluster.client.decide_approval(task_id, "s1", "approved", "key-1")
    assert len(cluster.actors.calls_of(call)) == 1
    record, created = await cluster.client.submit(TaskRequest(description="y", task_id=task_id))
    assert created and record.task_id == task_id  # the restarted incarnation answers


async def test_a_shard_that_does_not_answer_times_out_as_unavailable() -> None:
    cluster = Cluster(call_timeout_s=0.05)
    shard = shard_of("row-1", SHARDS)
    cluster.actors.stall(shard)
    try:
        with pytest.raises(OrchestratorUnavailableError, match=r"did not answer within 0.05s"):
            await cluster.client.submit(TaskRequest(description="x", task_id="row-1"))
        # other shards answer
        record, _ = await cluster.client.submit(TaskRequest(description="x", task_id="row-2"))
        assert shard_of("row-2", SHARDS) != shard and record.task_id == "row-2"
    finally:
        cluster.actors.stall(shard, False)


async def test_a_wait_that_runs_out_is_a_timeout_not_an_unavailable_shard() -> None:
    cluster = Cluster(call_timeout_s=0.05, outcome=None)  # tasks stay queued
    record, _ = await cluster.client.submit(TaskRequest(description="x"))
    with pytest.raises(TimeoutError) as raised:
        await cluster.client.wait(record.task_id, 0.1)  # longer than the call timeout: wait has its own
    assert not isinstance(raised.value, OrchestratorUnavailableError | RayTaskError)
    shard = cluster.client.shard_of_task(record.task_id)
    cluster.orchestrator(shard).finish(record.task_id)
    assert (await cluster.client.wait(record.task_id, 1.0)).status == TaskStatus.COMPLETED


async def test_errors_raised_by_the_orchestrator_come_back_as_raised(cluster: Cluster) -> None:
    with pytest.raises(TaskNotFoundError, match="not in the dead-letter queue") as raised:
        await cluster.client.retry("task-unknown")
    assert type(raised.value) is TaskNotFoundError
    failing = Cluster(outcome="failed")
    record, _ = await failing.client.submit(TaskRequest(description="x"))
    retried = await failing.client.retry(record.task_id)
    assert retried.status == TaskStatus.QUEUED
    assert failing.actors.calls_of("retry")[-1].shard == failing.client.shard_of_task(record.task_id)


# -- approvals ---------------------------------------------------------------------------------------


def _waiting_task(cluster: Cluster, task_id: str) -> str:
    key = f"{task_id}:1:s1"
    step = StepResult(
        step_id="s1", action="python_exec", idempotency_key=key, status=StepStatus.WAITING_APPROVAL
    )
    cluster.store.tasks[task_id] = TaskRecord(
        task_id=task_id, description="approval", status=TaskStatus.WAITING_APPROVAL, steps=[step]
    )
    return key


async def test_a_decision_goes_to_the_tasks_shard_which_wakes_the_step(cluster: Cluster) -> None:
    task_id = new_task_id()
    shard = shard_of(task_id, SHARDS)
    key = _waiting_task(cluster, task_id)
    cluster.orchestrator(shard).waiting_steps.add((task_id, key))
    stored = await cluster.client.decide_approval(task_id, "s1", "approved", "alice", "fine")
    assert stored.decision == "approved" and stored.decided_by == "alice" and stored.reason == "fine"
    assert cluster.orchestrator(shard).woken == [(task_id, key)]
    assert [(c.shard, c.method) for c in cluster.actors.calls] == [(shard, "decide_approval")]
    with pytest.raises(ApprovalConflictError, match="already decided"):
        await cluster.client.decide_approval(task_id, "s1", "rejected", "bob")
    with pytest.raises(ApprovalConflictError, match="not waiting for approval"):
        await cluster.client.decide_approval(task_id, "s2", "approved", "bob")
    with pytest.raises(TaskNotFoundError):
        await cluster.client.decide_approval("task-unknown", "s1", "approved", "bob")


async def test_a_step_waiting_on_another_shard_is_woken_there(cluster: Cluster) -> None:
    task_id = new_task_id()
    shard = shard_of(task_id, SHARDS)
    elsewhere = (shard + 1) % SHARDS  # the task moved after a restart
    key = _waiting_task(cluster, task_id)
    cluster.orchestrator(elsewhere).waiting_steps.add((task_id, key))
    await cluster.client.decide_approval(task_id, "s1", "approved", "alice")
    for _ in range(100):
        if cluster.orchestrator(elsewhere).woken:
            break
        await asyncio.sleep(0.01)
    assert cluster.orchestrator(elsewhere).woken == [(task_id, key)]
    notified = {c.shard for c in cluster.actors.calls_of("notify_approval")}
    assert notified == set(range(SHARDS)) - {shard}


# -- the shards together -------------------------------------------------------------------------------


async def test_in_flight_pool_stats_and_probe_cover_every_shard() -> None:
    cluster = Cluster(call_timeout_s=0.05, outcome=None)
    for i in range(3):
        await cluster.client.submit(TaskRequest(description=f"t{i}"))
    assert await cluster.client.in_flight() == 3
    assert len(await cluster.client.pool_stats()) == SHARDS
    assert await cluster.client.probe() == {}
    await cluster.client.ready(1.0)
    cluster.actors.stall(2)
    try:
        assert len(await cluster.client.pool_stats()) == SHARDS - 1  # the figures of those that answer
        assert set(await cluster.client.probe()) == {2}
        with pytest.raises(OrchestratorUnavailableError, match="shard 2"):
            await cluster.client.in_flight()
        with pytest.raises(OrchestratorUnavailableError, match="shard 2"):
            await cluster.client.ready(0.05)
    finally:
        cluster.actors.stall(2, False)


# -- the gateway's answers to the client's errors -------------------------------------------------------


def test_the_gateway_answers_an_unavailable_orchestrator_with_503_and_a_conflict_with_409() -> None:
    app = FastAPI()
    app.add_exception_handler(OrchestratorUnavailableError, gateway._orchestrator_unavailable)
    app.add_exception_handler(IdempotencyConflictError, gateway._idempotency_conflict)

    @app.get("/down")
    async def down() -> None:
        raise OrchestratorUnavailableError("the orchestrator (shard 1) did not answer within 30s")

    @app.get("/conflict")
    async def conflict() -> None:
        raise IdempotencyConflictError("idempotency key 'k' was used with a different request (task t)")

    with TestClient(app) as client:
        response = client.get("/down")
        assert response.status_code == 503 and response.headers["retry-after"] == str(
            gateway.STORE_RETRY_AFTER_S
        )
        assert response.json() == {
            "detail": "the orchestrator (shard 1) did not answer within 30s",
            "code": "orchestrator_unavailable",
        }
        response = client.get("/conflict")
        assert response.status_code == 409 and response.json()["code"] == "idempotency_conflict"
        assert "was used with a different request" in response.json()["detail"]
