"""Escalation to a person in a real orchestrator, in process (SQLite store, fake runners, no Ray): a
task waiting in ``waiting_review`` gives back its task slot, and a DLQ retry of a task a person
rejected waits for a new decision instead of finding the old one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.fake_runners import LocalRunnerActors
from actors.orchestrator import ModelPorts, Orchestrator
from officeray.contracts import Review, ReviewRequest, ReviewVerdict, TaskStatus
from officeray.errors import ReviewConflictError
from officeray.testing import ScriptedPlanner
from tests.unit.test_orchestrator_limits import WAIT_S, Approver, Gates, settings_for, task, until

ESCALATED = "review-1"


class EscalatingReviewer(Approver):
    """Escalates the results of tasks whose id starts with ``review``; approves the others."""

    async def review(self, request: ReviewRequest) -> Review:
        if request.task_id.startswith("review"):
            return Review(verdict=ReviewVerdict.ESCALATE, final_output=request.results[-1].output)
        return await super().review(request)


@pytest.fixture
async def one_slot(tmp_path: Path) -> AsyncIterator[tuple[Orchestrator, Gates]]:
    """An orchestrator with one task slot whose reviewer escalates ``review*`` tasks."""
    gates = Gates()
    settings = settings_for(tmp_path, workflow={"max_concurrent_tasks": 1})
    ports = ModelPorts(planner=ScriptedPlanner([]), reviewer=EscalatingReviewer())
    orchestrator = Orchestrator(settings, ports, runner_actors=LocalRunnerActors(step=gates.step))
    try:
        yield orchestrator, gates
    finally:
        gates.open_all()
        for running in [*orchestrator._background, *orchestrator._running.values()]:
            running.cancel()
            with contextlib.suppress(BaseException):
                await running
        orchestrator.store.close()


async def _status(orchestrator: Orchestrator, task_id: str) -> TaskStatus | None:
    record = await orchestrator.store.get_task(task_id)
    return None if record is None else record.status


async def _wait_for(orchestrator: Orchestrator, task_id: str, status: TaskStatus) -> None:
    async with asyncio.timeout(WAIT_S):
        while await _status(orchestrator, task_id) != status:
            await asyncio.sleep(0.01)


async def test_a_task_waiting_for_a_review_gives_back_its_task_slot(
    one_slot: tuple[Orchestrator, Gates],
) -> None:
    orchestrator, gates = one_slot
    gates.open(ESCALATED)
    await orchestrator.submit(task(ESCALATED, "acme"))
    await _wait_for(orchestrator, ESCALATED, TaskStatus.WAITING_REVIEW)
    await until(lambda: orchestrator.scheduler.running == 0, "the waiting task holds no slot")

    gates.open("other-1")
    await orchestrator.submit(task("other-1", "acme"))
    done = await orchestrator.wait("other-1", timeout_s=WAIT_S)  # runs while the first one waits
    assert done.status == TaskStatus.COMPLETED
    assert await _status(orchestrator, ESCALATED) == TaskStatus.WAITING_REVIEW

    await orchestrator.decide_review(ESCALATED, "accept", "key-alice")
    final = await orchestrator.wait(ESCALATED, timeout_s=WAIT_S)
    assert final.status == TaskStatus.COMPLETED and final.result == {"value": 42}
    assert orchestrator.scheduler.running == 0


async def test_a_dlq_retry_of_a_rejected_task_waits_for_a_new_decision(
    one_slot: tuple[Orchestrator, Gates],
) -> None:
    orchestrator, gates = one_slot
    gates.open(ESCALATED)
    await orchestrator.submit(task(ESCALATED, "acme"))
    await _wait_for(orchestrator, ESCALATED, TaskStatus.WAITING_REVIEW)
    await orchestrator.decide_review(ESCALATED, "reject", "key-bob", "not yet")
    rejected = await orchestrator.wait(ESCALATED, timeout_s=WAIT_S)
    assert rejected.status == TaskStatus.FAILED and rejected.error == "rejected by key-bob: not yet"

    await orchestrator.retry(ESCALATED)
    await _wait_for(orchestrator, ESCALATED, TaskStatus.WAITING_REVIEW)  # not rejected again at once
    decided, woken = await orchestrator.decide_review(ESCALATED, "accept", "key-alice")
    assert (decided.decision, decided.decided_by, woken) == ("accept", "key-alice", True)
    with pytest.raises(ReviewConflictError) as again:  # the first decision on this wait wins
        await orchestrator.decide_review(ESCALATED, "reject", "key-bob")
    assert again.value.code in ("review_already_decided", "not_waiting_review")
    final = await orchestrator.wait(ESCALATED, timeout_s=WAIT_S)
    assert final.status == TaskStatus.COMPLETED and final.result == {"value": 42}
