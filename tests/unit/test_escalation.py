"""Escalation to a person (:mod:`officeray.review`) with the shipped fakes: the reviewer's ESCALATE (or a
low-confidence approval) makes the task wait in ``waiting_review`` until a person accepts, rejects or
sends the results back; a timeout fails it; a resumed task goes back to waiting without re-running
anything; a cancel ends the wait. Then the pure rules and the store-backed port."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from officeray.config import EscalationSettings, WorkflowSettings
from officeray.contracts import (
    PendingReview,
    Review,
    ReviewRequest,
    ReviewVerdict,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    WorkflowRetryPolicy,
)
from officeray.errors import ReviewConflictError, TaskNotFoundError
from officeray.review import (
    MAX_REVIEW_FEEDBACK_CHARS,
    StoreReviews,
    asks_for_sign_off,
    check_review_request,
    escalation_reason,
    record_review_decision,
)
from officeray.testing import (
    FunctionExecutor,
    InMemoryReviews,
    InMemoryStore,
    ScriptedPlanner,
    ScriptedReviewer,
    in_memory_tracer,
)
from officeray.webhooks import webhook_event_for
from officeray.workflow import Workflow
from tests.unit.test_workflow import TOOLS, approve, calc_plan, calculate

TASK = "task-1"  # calc_plan's task
WAIT_S = 5.0
PROPOSAL = {"answer": 5.0}


def escalate(request: ReviewRequest) -> Review:
    """Escalates with the last step's value as the proposed result."""
    value = request.results[-1].output["value"]
    return Review(
        verdict=ReviewVerdict.ESCALATE, feedback="a person should check", final_output={"answer": value}
    )


class Clock:
    """An injected wall clock that a test (or a time-skipping port) moves forward."""

    def __init__(self) -> None:
        self.moment = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.moment


class TimeSkippingReviews(InMemoryReviews):
    """Nobody decides: each wait moves the clock past its timeout and answers None (no real waiting)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    async def wait(self, task_id: str, iteration: int, timeout_s: float) -> dict[str, Any] | None:
        self.requested.append((task_id, iteration, timeout_s))
        self.clock.moment += timedelta(seconds=timeout_s)
        return None


def make(
    plans: list[Any],
    reviews: list[Any],
    *,
    store: InMemoryStore | None = None,
    port: InMemoryReviews | None = None,
    settings: WorkflowSettings | None = None,
    now: Callable[[], datetime] | None = None,
    with_port: bool = True,
) -> tuple[Workflow, ScriptedPlanner, ScriptedReviewer, FunctionExecutor, InMemoryStore, InMemoryReviews]:
    tracer, _spans = in_memory_tracer()
    planner, reviewer = ScriptedPlanner(plans), ScriptedReviewer(reviews)
    executor = FunctionExecutor({"math_calculator": calculate})
    store = store or InMemoryStore()
    port = port or InMemoryReviews()
    extra: dict[str, Any] = {} if now is None else {"now": now}
    workflow = Workflow(
        planner=planner,
        reviewer=reviewer,
        executor=executor,
        store=store,
        tracer=tracer,
        tools=TOOLS,
        settings=settings,
        reviews=port if with_port else None,
        **extra,
    )
    return workflow, planner, reviewer, executor, store, port


async def until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


def _waiting(store: InMemoryStore) -> bool:
    record = store.tasks.get(TASK)
    return record is not None and record.status == TaskStatus.WAITING_REVIEW


def _events(store: InMemoryStore, kind: str) -> list[dict[str, Any]]:
    return [data for k, data in store.event_log[TASK] if k == kind]


# -- the workflow ---------------------------------------------------------------------------------------


async def test_escalated_results_wait_for_a_person_and_accepting_completes_with_the_proposal() -> None:
    workflow, planner, reviewer, executor, store, port = make([calc_plan()], [escalate])
    running = asyncio.ensure_future(workflow.run(TaskRequest(description="add"), TASK))
    await until(lambda: _waiting(store), "the task waits for a review")

    waiting = store.tasks[TASK]
    assert waiting.review_pending is not None
    assert waiting.review_pending.proposed_output == PROPOSAL
    assert waiting.review_pending.reason == "a person should check" and waiting.review_pending.iteration == 1
    escalated = _events(store, "review_escalated")
    assert escalated == [
        {"status": "waiting_review", "iteration": 1, "reason": "a person should check", "timeout_s": 86400.0}
    ]
    port.decide(TASK, 1, "accept", by="key-alice")
    final = await running

    assert final.status == TaskStatus.COMPLETED and final.result == PROPOSAL
    assert final.review_pending is None and final.iterations == 1
    decided = _events(store, "review_decided")[0]
    assert (decided["decision"], decided["decided_by"], decided["feedback"]) == ("accept", "key-alice", "")
    assert len(executor.calls) == 1
    assert port.requested[0][:2] == (TASK, 1)
    planner.assert_consumed()
    reviewer.assert_consumed()


async def test_a_rejection_fails_the_task_naming_who_and_why() -> None:
    workflow, _p, _r, _e, store, port = make([calc_plan()], [escalate])
    port.decide(TASK, 1, "reject", by="key-bob", feedback="the sum is not what we asked for")

    final = await workflow.run(TaskRequest(description="add"), TASK)

    assert final.status == TaskStatus.FAILED and final.result is None
    assert final.error == "rejected by key-bob: the sum is not what we asked for"
    assert store.dead_letters[TASK] == final.error


async def test_a_revision_sends_the_feedback_to_the_next_rounds_planner() -> None:
    plans = [calc_plan(), calc_plan(expression="2 + 4", iteration=2)]
    workflow, planner, reviewer, _e, _s, port = make(plans, [escalate, approve])
    port.decide(TASK, 1, "revise", by="key-carol", feedback="add four, not three")

    final = await workflow.run(TaskRequest(description="add"), TASK)

    assert final.status == TaskStatus.COMPLETED and final.result == {"answer": 6.0}
    assert final.iterations == 2
    assert planner.requests[1].feedback == ["add four, not three"] and planner.requests[1].iteration == 2
    reviewer.assert_consumed()


async def test_a_revision_in_the_last_round_fails_with_the_persons_feedback() -> None:
    workflow, _p, _r, _e, _s, port = make([calc_plan()], [escalate])
    port.decide(TASK, 1, "revise", by="key-carol", feedback="add four")

    final = await workflow.run(TaskRequest(description="add", max_iterations=1), TASK)

    assert final.status == TaskStatus.FAILED
    assert final.error == "not approved after 1 iteration(s); last feedback: add four"


async def test_no_decision_in_time_fails_the_task() -> None:
    clock = Clock()
    settings = WorkflowSettings(
        escalation=EscalationSettings(timeout_s=60),
        retry_policy=WorkflowRetryPolicy(maximum_duration_s=7 * 24 * 3600),
    )
    port = TimeSkippingReviews(clock)
    workflow, *_rest = make([calc_plan()], [escalate], port=port, settings=settings, now=clock.now)

    final = await workflow.run(TaskRequest(description="add"), TASK)

    assert final.status == TaskStatus.FAILED and final.error == "no review decision in 60s"
    assert port.requested == [(TASK, 1, 60.0)]


class LateReviews(InMemoryReviews):
    """A person decides ``after_s`` into each wait (the clock moves on, no real waiting); ``idled``
    lists the ``idle`` blocks entered, with the task's status then."""

    def __init__(self, clock: Clock, after_s: float, store: InMemoryStore) -> None:
        super().__init__()
        self.clock, self.after_s, self.store = clock, after_s, store
        self.idled: list[tuple[str, int, TaskStatus]] = []

    def idle(self, tenant: str, priority: int) -> contextlib.AbstractAsyncContextManager[None]:
        self.idled.append((tenant, priority, self.store.tasks[TASK].status))
        return contextlib.nullcontext()

    async def wait(self, task_id: str, iteration: int, timeout_s: float) -> dict[str, Any] | None:
        self.requested.append((task_id, iteration, timeout_s))
        self.clock.moment += timedelta(seconds=self.after_s)
        return self.decisions.get((task_id, iteration))


async def test_the_wait_for_a_person_does_not_count_against_the_wall_clock_cap() -> None:
    clock, store = Clock(), InMemoryStore()
    settings = WorkflowSettings(
        escalation=EscalationSettings(timeout_s=3600),
        retry_policy=WorkflowRetryPolicy(maximum_duration_s=600),
    )
    port = LateReviews(clock, after_s=1000, store=store)  # longer than the cap, within the timeout
    port.decide(TASK, 1, "revise", by="key-carol", feedback="add four")
    plans = [calc_plan(), calc_plan(expression="2 + 4", iteration=2)]
    workflow, planner, *_rest = make(
        plans, [escalate, approve], store=store, port=port, settings=settings, now=clock.now
    )

    final = await workflow.run(TaskRequest(description="add", tenant="acme", priority=3), TASK)

    assert port.requested == [(TASK, 1, 3600.0)]  # the escalation's timeout, not what the cap leaves
    assert final.status == TaskStatus.COMPLETED and final.result == {"answer": 6.0}, final.error
    assert planner.requests[1].iteration == 2 and final.review_wait_s == 1000.0
    assert port.idled == [("acme", 3, TaskStatus.WAITING_REVIEW)]  # the wait holds no task slot


async def test_a_resumed_task_that_waited_past_the_cap_still_waits_for_its_decision() -> None:
    clock = Clock()
    settings = WorkflowSettings(retry_policy=WorkflowRetryPolicy(maximum_duration_s=600))
    record = _waiting_record(since=clock.moment - timedelta(seconds=2000), timeout_s=3600)
    assert record.run_started_at is not None
    record.run_started_at -= timedelta(seconds=100)  # ran 100 s, then waited 2000 s
    workflow, _p, _r, executor, _s, port = make([], [], settings=settings, now=clock.now)
    port.decide(TASK, 1, "accept", by="key-alice")

    final = await workflow.run(TaskRequest(description="add"), TASK, record)

    assert final.status == TaskStatus.COMPLETED and final.result == PROPOSAL, final.error
    assert port.requested == [(TASK, 1, 1600.0)] and executor.calls == []


@pytest.mark.parametrize(
    ("confidence", "threshold", "escalated"),
    [(0.3, 0.5, True), (0.5, 0.5, False), (0.9, 0.5, False), (None, 0.5, False), (0.1, None, False)],
)
async def test_a_low_confidence_approval_goes_to_a_person(
    confidence: float | None, threshold: float | None, escalated: bool
) -> None:
    def unsure(request: ReviewRequest) -> Review:
        return approve(request).model_copy(update={"confidence": confidence})

    settings = WorkflowSettings(escalation=EscalationSettings(confidence_threshold=threshold))
    workflow, _p, _r, _e, store, port = make([calc_plan()], [unsure], settings=settings)
    port.decide(TASK, 1, "accept", by="key-alice")

    final = await workflow.run(TaskRequest(description="add"), TASK)

    assert final.status == TaskStatus.COMPLETED and final.result == PROPOSAL
    assert bool(_events(store, "review_escalated")) is escalated
    if escalated:
        assert (
            "confidence 0.30 is below the threshold 0.50" in _events(store, "review_escalated")[0]["reason"]
        )


async def test_the_reviewer_is_told_when_the_task_asks_for_sign_off() -> None:
    workflow, _p, reviewer, _e, _s, _port = make([calc_plan()], [approve])
    await workflow.run(TaskRequest(description="add", require_sign_off=True), TASK)
    assert reviewer.requests[0].require_sign_off is True


async def test_without_a_reviews_port_escalated_results_fail_the_task() -> None:
    workflow, *_rest = make([calc_plan()], [escalate], with_port=False)
    final = await workflow.run(TaskRequest(description="add"), TASK)
    assert (
        final.status == TaskStatus.FAILED and final.error is not None and "no one can decide" in final.error
    )


def _waiting_record(since: datetime, timeout_s: float = 300.0) -> TaskRecord:
    plan = calc_plan()
    step = StepResult(
        step_id="s1",
        action="math_calculator",
        idempotency_key=plan.steps[0].idempotency_key,
        status=StepStatus.SUCCEEDED,
        attempts=1,
        output={"value": 5.0},
    )
    return TaskRecord(
        task_id=TASK,
        description="add",
        status=TaskStatus.WAITING_REVIEW,
        iterations=1,
        plan=plan,
        steps=[step],
        created_at=since,
        run_started_at=since,
        review_pending=PendingReview(
            iteration=1, reason="sign-off", proposed_output=PROPOSAL, since=since, timeout_s=timeout_s
        ),
    )


async def test_a_task_resumed_while_waiting_goes_back_to_waiting_without_rerunning_anything() -> None:
    clock = Clock()
    record = _waiting_record(since=clock.moment - timedelta(seconds=100))
    workflow, planner, reviewer, executor, store, port = make([], [], now=clock.now)
    running = asyncio.ensure_future(workflow.run(TaskRequest(description="add"), TASK, record))
    await until(lambda: bool(port.requested), "the resumed task waits")

    assert port.requested == [(TASK, 1, 200.0)]  # what is left of its 300 s
    assert store.tasks[TASK].status == TaskStatus.WAITING_REVIEW
    port.decide(TASK, 1, "accept", by="key-alice")
    final = await running

    assert final.status == TaskStatus.COMPLETED and final.result == PROPOSAL and final.resumed == 1
    assert executor.calls == [] and planner.requests == [] and reviewer.requests == []
    assert "planning" not in store.kinds(TASK) and "executing" not in store.kinds(TASK)


async def test_a_resumed_task_sent_back_for_revision_plans_the_next_round() -> None:
    clock = Clock()
    record = _waiting_record(since=clock.moment)
    workflow, planner, _r, _e, _s, port = make(
        [calc_plan(expression="2 + 4", iteration=2)], [approve], now=clock.now
    )
    port.decide(TASK, 1, "revise", by="key-carol", feedback="add four")

    final = await workflow.run(TaskRequest(description="add"), TASK, record)

    assert final.status == TaskStatus.COMPLETED and final.result == {"answer": 6.0} and final.iterations == 2
    assert planner.requests[0].iteration == 2 and planner.requests[0].feedback == ["add four"]


async def test_a_resumed_task_rejected_meanwhile_fails() -> None:
    clock = Clock()
    workflow, _p, _r, _e, _s, port = make([], [], now=clock.now)
    port.decide(TASK, 1, "reject", by="key-bob")
    final = await workflow.run(TaskRequest(description="add"), TASK, _waiting_record(since=clock.moment))
    assert final.status == TaskStatus.FAILED and final.error == "rejected by key-bob"


async def test_a_task_waiting_for_a_review_can_be_cancelled() -> None:
    workflow, _p, _r, _e, store, _port = make([calc_plan()], [escalate])
    running = asyncio.ensure_future(workflow.run(TaskRequest(description="add"), TASK))
    await until(lambda: _waiting(store), "the task waits for a review")

    assert workflow.cancel(TASK, "key-dave")
    final = await running

    assert final.status == TaskStatus.CANCELLED and final.error == "cancelled by key-dave"
    assert final.review_pending is None and store.tasks[TASK].review_pending is None


# -- the pure rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("review", "threshold", "reason"),
    [
        (Review(verdict=ReviewVerdict.ESCALATE, feedback="unsure"), 0.5, "unsure"),
        (Review(verdict=ReviewVerdict.ESCALATE), None, "the reviewer escalated the results to a person"),
        (Review(verdict=ReviewVerdict.APPROVED, confidence=0.2), 0.5, "below the threshold"),
        (Review(verdict=ReviewVerdict.APPROVED, confidence=0.0), 0.01, "below the threshold"),
        (Review(verdict=ReviewVerdict.APPROVED, confidence=0.5), 0.5, None),
        (Review(verdict=ReviewVerdict.APPROVED), 0.5, None),
        (Review(verdict=ReviewVerdict.APPROVED, confidence=0.2), None, None),
        (Review(verdict=ReviewVerdict.REVISE, confidence=0.1), 0.5, None),
        (Review(verdict=ReviewVerdict.FAILED, confidence=0.1), 0.5, None),
    ],
)
def test_escalation_reason(review: Review, threshold: float | None, reason: str | None) -> None:
    found = escalation_reason(review, threshold)
    assert (found is None) is (reason is None)
    if reason is not None:
        assert found is not None and reason in found


@pytest.mark.parametrize(
    ("description", "asks"),
    [
        ("Compute 2 + 3; a human must sign off on the result", True),
        ("compute 2+3 and get HUMAN  SIGN-OFF", True),
        ("Summarise the file, then request human review", True),
        ("needs sign-off before it ships", True),
        ("Manual review required.", True),
        ("compute the signoff date", True),
        ("compute 2 + 3", False),
        ("sign offers from the vendor list", False),  # not the phrase: a longer word
        ("the design-sign off column", False),
        ("review the human resources file", False),
        ("", False),
    ],
)
def test_asks_for_sign_off(description: str, asks: bool) -> None:
    assert asks_for_sign_off(description) is asks


@pytest.mark.parametrize(
    ("decision", "feedback", "problem"),
    [
        ("accept", "", None),
        ("reject", "", None),
        ("revise", "use four", None),
        ("revise", "", "needs feedback"),
        ("revise", "  \n ", "needs feedback"),
        ("approve", "", "decision must be one of"),
        ("ACCEPT", "", "decision must be one of"),
        ("accept", "x" * (MAX_REVIEW_FEEDBACK_CHARS + 1), "longer than"),
    ],
)
def test_check_review_request(decision: str, feedback: str, problem: str | None) -> None:
    found = check_review_request(decision, feedback)
    assert (found is None) is (problem is None)
    if problem is not None:
        assert found is not None and problem in found


# -- deciding through the store ---------------------------------------------------------------------


async def _stored(store: InMemoryStore, record: TaskRecord) -> None:
    await store.create_task(record, TaskRequest(description=record.description))


async def test_record_review_decision_checks_that_the_task_waits_and_the_first_decision_wins() -> None:
    store = InMemoryStore()
    with pytest.raises(TaskNotFoundError):
        await record_review_decision(store, TASK, "accept", "key-a")
    await _stored(store, _waiting_record(since=datetime(2026, 1, 1, tzinfo=UTC)))

    stored = await record_review_decision(store, TASK, "accept", "key-a")
    assert (stored.decision, stored.decided_by, stored.iteration) == ("accept", "key-a", 1)
    with pytest.raises(ReviewConflictError) as again:
        await record_review_decision(store, TASK, "reject", "key-b", "no")
    assert again.value.code == "review_already_decided" and "accept by key-a" in str(again.value)
    with pytest.raises(ValueError, match="needs feedback"):
        await record_review_decision(store, TASK, "revise", "key-b")

    other = TaskRecord(task_id="task-2", description="d", status=TaskStatus.EXECUTING)
    await _stored(store, other)
    with pytest.raises(ReviewConflictError) as not_waiting:
        await record_review_decision(store, "task-2", "accept", "key-a")
    assert not_waiting.value.code == "not_waiting_review" and "executing" in str(not_waiting.value)


async def test_store_reviews_is_woken_by_notify_and_finds_decisions_by_polling() -> None:
    store = InMemoryStore()
    await _stored(store, _waiting_record(since=datetime(2026, 1, 1, tzinfo=UTC)))
    port = StoreReviews(store, poll_s=3600)  # only a notify wakes it in time
    waiting = asyncio.ensure_future(port.wait(TASK, 1, WAIT_S))
    await asyncio.sleep(0.01)
    assert not port.notify(TASK, 2)  # nobody waits for round 2
    await record_review_decision(store, TASK, "revise", "key-c", "more")
    assert port.notify(TASK, 1)
    decision = await waiting
    assert decision is not None and decision["decision"] == "revise" and decision["feedback"] == "more"
    assert not port.notify(TASK, 1)  # the wait is over

    polled = StoreReviews(store, poll_s=0.01)
    assert (await polled.wait(TASK, 1, WAIT_S)) == decision  # decided already: found at once
    assert await polled.wait(TASK, 7, 0.03) is None  # no decision: None once the time is up


# -- contracts and webhooks -----------------------------------------------------------------------------


def test_the_fingerprint_of_a_request_without_sign_off_is_unchanged() -> None:
    request = TaskRequest(description="add", tenant="acme")
    data = request.model_dump(mode="json", exclude={"idempotency_key", "submitted_by", "traceparent"})
    data.pop("require_sign_off")
    for later in ("parent_id",):  # fields other helpers add with the same rule
        if data.get(later) is None:
            data.pop(later, None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert request.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()
    assert (
        TaskRequest(description="add", tenant="acme", require_sign_off=True).fingerprint()
        != request.fingerprint()
    )


def test_waiting_for_a_review_is_announced_by_webhook_and_is_not_final() -> None:
    assert webhook_event_for("review_escalated", "waiting_review") == "waiting_review"
    assert webhook_event_for("review_decided", "waiting_review") is None
    assert not TaskStatus.WAITING_REVIEW.is_final
