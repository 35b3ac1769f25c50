"""The task workflow: PLAN -> VALIDATE -> EXECUTE -> REVIEW, looping on REVISE, as a pure async state machine.

The workflow decides; it does no I/O of its own. Everything it touches is a port (a
``typing.Protocol``): the planner, the reviewer, the step executor, the store and an OpenTelemetry
tracer. On a cluster those are Serve deployment handles, Ray actors and SQLite/Postgres; in a unit
test they are the fakes of :mod:`officeray.testing`. The clock's sleep and the random source for
retry jitter are injected too.

One round (an *iteration*):

1. the planner gets the task, the tools it may use and the feedback of the previous round;
2. the plan is validated; a rejected plan sends the validator's reasons back as feedback;
3. steps run as a DAG (:mod:`officeray.dag`); each step is retried under the step retry policy;
4. the reviewer approves (the task completes with its final output), asks to REVISE (its feedback
   goes to the next plan) or FAILS the task.

A planner that cannot plan the task (:class:`~officeray.errors.PlanningError`) fails it at once.
After ``max_iterations`` rounds without approval the task fails with the last feedback.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pydantic import BaseModel

from officeray.config import WorkflowSettings
from officeray.contracts import (
    ErrorType,
    LogLine,
    ModelCallRecord,
    Plan,
    Planned,
    PlanRequest,
    PlanStep,
    Review,
    Reviewed,
    ReviewRequest,
    ReviewVerdict,
    StepError,
    StepOutcome,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    utcnow,
)
from officeray.dag import run_dag
from officeray.errors import PlanningError
from officeray.telemetry import inject_context, trace_id_hex
from officeray.validate import validate_plan

MAX_LOG_LINES = 200
"""Log lines kept in a task record; older ones are dropped first."""

MAX_FEEDBACK_ITEMS = 20
"""Feedback lines passed to the planner for the next round."""


class Planner(Protocol):
    """Answers a plan; routed planners answer :class:`Planned` (the plan and its call's cost)."""

    async def plan(self, request: PlanRequest) -> Plan | Planned: ...


class Reviewer(Protocol):
    async def review(self, request: ReviewRequest) -> Review | Reviewed: ...


class StepExecutor(Protocol):
    async def execute(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], trace_carrier: dict[str, str]
    ) -> StepOutcome: ...


class Store(Protocol):
    async def save_task(self, record: TaskRecord) -> None: ...

    async def append_event(self, task_id: str, kind: str, data: dict[str, Any]) -> None: ...

    async def save_step_result(self, task_id: str, result: StepResult) -> None: ...


class Workflow:
    """Runs tasks; one instance serves any number of concurrent :meth:`run` calls."""

    def __init__(
        self,
        *,
        planner: Planner,
        reviewer: Reviewer,
        executor: StepExecutor,
        store: Store,
        tracer: trace.Tracer,
        tools: Mapping[str, type[BaseModel]],
        settings: WorkflowSettings | None = None,
        token_budget: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.planner = planner
        self.reviewer = reviewer
        self.executor = executor
        self.store = store
        self.tracer = tracer
        self.tools = tools
        self.settings = settings or WorkflowSettings()
        self.token_budget = token_budget
        """Model tokens one task may spend (a task's ``token_budget`` overrides it); None: no limit."""
        self._sleep = sleep
        self._rand = rand

    async def run(self, request: TaskRequest, task_id: str, record: TaskRecord | None = None) -> TaskRecord:
        """Run one task to a final state and return its record (never raises for task failures)."""
        run = _TaskRun(self, request, task_id, record)
        return await run.execute()


class _TaskRun:
    """The state of one task while it runs."""

    def __init__(self, wf: Workflow, request: TaskRequest, task_id: str, record: TaskRecord | None) -> None:
        self.wf = wf
        self.request = request
        self.task_id = task_id
        self.record = record or TaskRecord(task_id=task_id, description=request.description)
        self.record.tenant = request.tenant
        self.budget = request.token_budget or wf.token_budget
        self._lock = asyncio.Lock()

    # -- persistence --------------------------------------------------------------------------

    def log(self, message: str, level: str = "info") -> None:
        self.record.logs.append(LogLine(message=message, level=level))  # type: ignore[arg-type]
        del self.record.logs[:-MAX_LOG_LINES]

    async def persist(self, kind: str, **data: Any) -> None:
        """Write the record and one event, in order, before the workflow acts on the transition."""
        async with self._lock:
            self.record.updated_at = utcnow()
            await self.wf.store.save_task(self.record.model_copy(deep=True))
            await self.wf.store.append_event(self.task_id, kind, {"status": self.record.status.value, **data})

    def account(self, call: ModelCallRecord | None, iteration: int) -> str | None:
        """Add a model call to the record; returns why the task must stop when over its budget."""
        if call is None:
            return None
        call = call.model_copy(update={"iteration": iteration})
        self.record.model_calls.append(call)
        self.record.usage = self.record.usage + call.usage
        if call.fallbacks:
            self.log(
                f"iteration {iteration}: {call.role} answered by {call.tier} "
                f"after {call.fallbacks} fallback(s)",
                "warning",
            )
        used = self.record.usage.total_tokens
        if self.budget is not None and used > self.budget:
            return f"token budget exceeded: {used} tokens used, the budget is {self.budget}"
        return None

    async def finish(self, status: TaskStatus, *, result: Any = None, error: str | None = None) -> TaskRecord:
        self.record.status = status
        self.record.result = result
        self.record.error = error
        self.record.current_step = None
        self.record.finished_at = utcnow()
        self.log(f"task {status.value}" + (f": {error}" if error else ""), "error" if error else "info")
        await self.persist(status.value, error=error)
        return self.record

    # -- the loop -----------------------------------------------------------------------------

    async def execute(self) -> TaskRecord:
        with self.wf.tracer.start_as_current_span(
            "task", attributes={"officeray.task_id": self.task_id}
        ) as span:
            self.record.trace_id = trace_id_hex(span)
            record = await self._loop()
            span.set_attribute("officeray.status", record.status.value)
            span.set_attribute("officeray.iterations", record.iterations)
            if record.status == TaskStatus.FAILED:
                span.set_status(Status(StatusCode.ERROR, record.error or "failed"))
            return record

    async def _loop(self) -> TaskRecord:
        wf = self.wf
        allowed = self.request.allowed_tools if self.request.allowed_tools is not None else sorted(wf.tools)
        unknown = sorted(set(allowed) - set(wf.tools))
        self.log("task accepted")
        await self.persist("accepted")
        if unknown:
            return await self.finish(
                TaskStatus.FAILED, error=f"unknown tools in allowed_tools: {', '.join(unknown)}"
            )
        max_iterations = self.request.max_iterations or wf.settings.max_iterations
        feedback: list[str] = []
        previous: Plan | None = None
        for iteration in range(1, max_iterations + 1):
            self.record.iterations = iteration
            self.record.feedback = list(feedback)
            plan = await self._plan(iteration, allowed, feedback, previous)
            if isinstance(plan, TaskRecord):
                return plan
            if plan is None:
                continue
            previous = plan
            reasons = await self._validate(plan, allowed)
            if reasons:
                feedback = [f"plan rejected: {r}" for r in reasons][:MAX_FEEDBACK_ITEMS]
                continue
            results = await self._execute(plan)
            review = await self._review(iteration, plan, results)
            if review is None:
                feedback = ["the reviewer did not answer; run the plan again"]
                continue
            if review.verdict == ReviewVerdict.APPROVED:
                return await self.finish(TaskStatus.COMPLETED, result=review.final_output)
            if review.verdict == ReviewVerdict.FAILED:
                return await self.finish(
                    TaskStatus.FAILED, error=review.feedback or "the reviewer failed the task"
                )
            feedback = [review.feedback or "the reviewer asked for a revision"]
        last = "; ".join(feedback) or "no feedback"
        return await self.finish(
            TaskStatus.FAILED,
            error=f"not approved after {max_iterations} iteration(s); last feedback: {last}",
        )

    async def _plan(
        self, iteration: int, allowed: list[str], feedback: list[str], previous: Plan | None
    ) -> Plan | TaskRecord | None:
        """The round's plan; a final record when planning is impossible; None to try another round."""
        wf = self.wf
        self.record.status = TaskStatus.PLANNING
        self.record.current_step = None
        await self.persist("planning", iteration=iteration)
        request = PlanRequest(
            task_id=self.task_id,
            description=self.request.description,
            iteration=iteration,
            allowed_tools=list(allowed),
            feedback=feedback,
            previous_plan=previous,
        )
        with wf.tracer.start_as_current_span("plan", attributes={"officeray.iteration": iteration}) as span:
            try:
                answer = await asyncio.wait_for(wf.planner.plan(request), wf.settings.model_call_timeout_s)
            except PlanningError as exc:
                span.set_status(Status(StatusCode.ERROR, "cannot plan"))
                return await self.finish(TaskStatus.FAILED, error=str(exc))
            except Exception as exc:  # model down, timed out, bad answer: another round may work
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                feedback[:] = [f"the planner failed: {_describe(exc)}"]
                self.log(f"iteration {iteration}: planner failed: {_describe(exc)}", "warning")
                return None
            plan, call = (answer.plan, answer.call) if isinstance(answer, Planned) else (answer, None)
            span.set_attribute("officeray.steps", len(plan.steps))
        over = self.account(call, iteration)
        if over is not None:
            return await self.finish(TaskStatus.FAILED, error=over)
        self.record.plan = plan
        self.log(
            f"iteration {iteration}: planned {len(plan.steps)} step(s): "
            + ", ".join(f"{s.step_id}={s.action}" for s in plan.steps)
        )
        await self.persist("planned", iteration=iteration, plan_id=plan.plan_id)
        return plan

    async def _validate(self, plan: Plan, allowed: list[str]) -> list[str]:
        wf = self.wf
        self.record.status = TaskStatus.VALIDATING
        with wf.tracer.start_as_current_span("validate") as span:
            reasons = validate_plan(plan, task_id=self.task_id, tools=wf.tools, allowed_tools=allowed)
            span.set_attribute("officeray.valid", not reasons)
            if reasons:
                span.set_status(Status(StatusCode.ERROR, "plan rejected"))
        if reasons:
            self.log("plan rejected: " + "; ".join(reasons), "warning")
        await self.persist("validated", valid=not reasons, reasons=reasons)
        return reasons

    async def _execute(self, plan: Plan) -> list[StepResult]:
        self.record.status = TaskStatus.EXECUTING
        self.record.steps = [
            StepResult(
                step_id=s.step_id,
                action=s.action,
                idempotency_key=s.idempotency_key,
                status=StepStatus.PENDING,
            )
            for s in plan.steps
        ]
        await self.persist("executing", steps=len(plan.steps))
        results = await run_dag(plan.steps, self._run_step, on_skip=self._on_skip)
        for result in results.values():
            # A step whose input reference had no value fails in the scheduler without running;
            # without this the record would show it as pending after the task ended.
            if result.status == StepStatus.FAILED and result.attempts == 0:
                self._set_step(result)
                reason = result.error.message if result.error else "no input"
                self.log(f"step {result.step_id} failed: {reason}", "error")
        self.record.current_step = None
        return list(results.values())

    def _set_step(self, result: StepResult) -> None:
        for i, existing in enumerate(self.record.steps):
            if existing.step_id == result.step_id:
                self.record.steps[i] = result
                return
        self.record.steps.append(result)

    async def _on_skip(self, result: StepResult) -> None:
        self._set_step(result)
        self.log(f"step {result.step_id} skipped: {result.error.message if result.error else ''}", "warning")
        await self.persist("step_skipped", step_id=result.step_id)

    async def _run_step(self, step: PlanStep, inputs: dict[str, Any]) -> StepResult:
        wf = self.wf
        policy = wf.settings.step_retry
        result = StepResult(
            step_id=step.step_id,
            action=step.action,
            idempotency_key=step.idempotency_key,
            status=StepStatus.RUNNING,
            started_at=utcnow(),
        )
        self._set_step(result)
        self.record.current_step = step.step_id
        self.log(f"step {step.step_id} ({step.action}) started")
        await self.persist("step_started", step_id=step.step_id)
        with wf.tracer.start_as_current_span(
            f"step {step.step_id}",
            attributes={"officeray.step_id": step.step_id, "officeray.action": step.action},
        ) as span:
            outcome = StepOutcome()
            while True:
                result.attempts += 1
                try:
                    outcome = await wf.executor.execute(self.task_id, step, inputs, inject_context())
                except Exception as exc:  # an executor must not raise; count it as internal
                    outcome = StepOutcome(error=StepError(type=ErrorType.INTERNAL, message=_describe(exc)))
                if outcome.error is None:
                    break
                if result.attempts >= policy.maximum_attempts or not policy.retryable(outcome.error.type):
                    break
                delay = policy.delay_s(result.attempts, wf._rand())
                self.log(
                    f"step {step.step_id} attempt {result.attempts} failed ({outcome.error.type.value}); "
                    f"retrying in {delay:.2f}s",
                    "warning",
                )
                await wf._sleep(delay)
            span.set_attribute("officeray.attempts", result.attempts)
            if outcome.error is not None:
                span.set_status(Status(StatusCode.ERROR, outcome.error.type.value))
        result.finished_at = utcnow()
        result.output = outcome.output
        result.error = outcome.error
        result.status = StepStatus.SUCCEEDED if outcome.error is None else StepStatus.FAILED
        self._set_step(result)
        if outcome.error is None:
            self.log(f"step {step.step_id} succeeded after {result.attempts} attempt(s)")
        else:
            self.log(
                f"step {step.step_id} failed ({outcome.error.type.value}): {outcome.error.message}", "error"
            )
        await wf.store.save_step_result(self.task_id, result.model_copy(deep=True))
        await self.persist("step_finished", step_id=step.step_id, step_status=result.status.value)
        return result

    async def _review(self, iteration: int, plan: Plan, results: list[StepResult]) -> Review | None:
        wf = self.wf
        self.record.status = TaskStatus.REVIEWING
        await self.persist("reviewing", iteration=iteration)
        request = ReviewRequest(
            task_id=self.task_id,
            description=self.request.description,
            iteration=iteration,
            plan=plan,
            results=results,
        )
        with wf.tracer.start_as_current_span("review", attributes={"officeray.iteration": iteration}) as span:
            try:
                answer = await asyncio.wait_for(wf.reviewer.review(request), wf.settings.model_call_timeout_s)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self.log(f"iteration {iteration}: reviewer failed: {_describe(exc)}", "warning")
                return None
            review, call = (answer.review, answer.call) if isinstance(answer, Reviewed) else (answer, None)
            span.set_attribute("officeray.verdict", review.verdict.value)
        over = self.account(call, iteration)
        if over is not None:
            return Review(verdict=ReviewVerdict.FAILED, feedback=over)
        self.log(f"iteration {iteration}: review {review.verdict.value}: {review.feedback}")
        await self.persist(
            "reviewed", iteration=iteration, verdict=review.verdict.value, feedback=review.feedback
        )
        return review


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, TimeoutError) and not text:
        text = "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
