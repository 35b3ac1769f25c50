"""The task workflow: PLAN -> VALIDATE -> EXECUTE -> REVIEW, looping on REVISE, as a pure async state machine.

The workflow decides; it does no I/O of its own. Everything it touches is a port (a
``typing.Protocol``): the planner, the reviewer, the step executor, the store and an OpenTelemetry
tracer. On a cluster those are Serve deployment handles, Ray actors and SQLite/Postgres; in a unit
test they are the fakes of :mod:`officeray.testing`. The wall clock (``now``: timestamps and the
``maximum_duration_s`` cap), the retry sleep and the random source for retry jitter are injected too.

One round (an *iteration*):

1. the planner gets the task, the tools it may use and the feedback of the previous round;
2. the plan is validated; a rejected plan sends the validator's reasons back as feedback;
3. steps run as a DAG (:mod:`officeray.dag`); each step is retried under the step retry policy;
4. the reviewer approves (the task completes with its final output), asks to REVISE (its feedback
   goes to the next plan), FAILS the task, or ESCALATEs the results to a person (the task waits in
   ``waiting_review`` on the ``reviews`` port: :mod:`officeray.review`).

A planner that cannot plan the task (:class:`~officeray.errors.PlanningError`) fails it at once.
After ``max_iterations`` rounds without approval the task fails with the last feedback.

Why one file of this length: the state machine is one run object whose transitions share its
state (record, counters, caps, the write lock); split, one transition table would be scattered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pydantic import BaseModel, ValidationError

from officeray.config import MemorySettings, RedactionSettings, TenantLimits, WorkflowSettings
from officeray.contracts import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    ErrorType,
    LogLine,
    ModelCallRecord,
    ModelUsage,
    PendingReview,
    Plan,
    Planned,
    PlanRequest,
    PlanStep,
    Recall,
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
    WorkflowRetryPolicy,
    utcnow,
)
from officeray.dag import run_dag
from officeray.errors import PlanningError
from officeray.event_schema import emit_event
from officeray.gatekeeper import (
    RULE_GATEKEEPER_ERROR,
    GateDecision,
    Gatekeeper,
    GateRequest,
    RuleGatekeeper,
    Verdict,
)
from officeray.memory.learn import failure_like
from officeray.quotas import daily_budget_spent_reason, effective_token_budget
from officeray.review import Reviews, escalation_reason
from officeray.subtasks import Decomposer, Subtasks, coordinate, gate_description
from officeray.telemetry import (
    attached,
    inject_context,
    parse_traceparent,
    remote_parent,
    trace_id_hex,
    with_task,
)
from officeray.tools.plugins import RiskLevel
from officeray.validate import parse_plan, validate_plan

logger = logging.getLogger(__name__)

MAX_LOG_LINES = 200
"""Log lines kept in a task record; older ones are dropped first."""

MAX_FEEDBACK_ITEMS = 20

MEMORY_CALL_TIMEOUT_S = 10.0
"""Longest wait for the memory (a recall before planning, the record of a finished task); past it
the task goes on without (a recall) or is not remembered (a record)."""

_RESUME_WITH_PLAN = frozenset({TaskStatus.EXECUTING, TaskStatus.WAITING_APPROVAL, TaskStatus.REVIEWING})
"""A task resumed in one of these states goes on with its stored plan instead of planning again."""
"""Feedback lines passed to the planner for the next round."""


class RunSupersededError(Exception):
    """This run lost its task to another run (its lease expired); it stops without writing."""


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
    """Where tasks live. The writes take their snapshot of the record or result **when called**
    (before the first ``await``): the workflow goes on changing its record while a write is pending.
    They return an awaitable that is done once the write is durable."""

    def save_task(self, record: TaskRecord) -> Awaitable[None]: ...

    def save_transition(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Awaitable[bool]:
        """Write the record and one event atomically. With ``owner``, only while ``owner`` holds the
        task's lease (checked in the same transaction): False, and nothing written, when it does not."""
        ...

    def finish_task(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Awaitable[bool]:
        """Write the end of a run atomically: the final record and its event (fenced on ``owner`` as
        :meth:`save_transition`), a failed task's dead-letter entry and the task's model usage added
        to its tenant's."""
        ...

    async def get_step_result(self, idempotency_key: str) -> StepResult | None: ...

    def append_event(self, task_id: str, kind: str, data: dict[str, Any]) -> Awaitable[None]: ...

    def save_step_result(self, task_id: str, result: StepResult) -> Awaitable[None]: ...


class MemoryPort(Protocol):
    """What the workflow asks of the memory (:mod:`officeray.memory`): similar past tasks before
    planning, and each finished task afterwards."""

    async def recall(self, tenant: str, description: str) -> Recall | None: ...

    async def remember(self, record: TaskRecord) -> Any: ...


class Approvals(Protocol):
    """Where a person's decision on a step comes from."""

    async def wait(self, task_id: str, step_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The decision (``{"decision": "approved"|"rejected", "decided_by", "reason", "decided_at"}``),
        or None when ``timeout_s`` passed without one."""
        ...


class Workflow:
    """Runs tasks; one instance serves any number of concurrent :meth:`run` calls.

    A record that already made progress (loaded from the store after a restart, or re-queued from
    the dead-letter queue) is *resumed*: a task that was executing or reviewing goes on with its
    stored plan, validated again first (a plan refused now is feedback for a new plan, as in any
    round), and a step whose idempotency key already has a successful result is not run again.
    """

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
        tenant_limits: Callable[[str], TenantLimits] | None = None,
        usage_on: Callable[[str, date], Awaitable[ModelUsage]] | None = None,
        needs_approval: Callable[[str], bool] | None = None,
        calls_model: Callable[[str], bool] | None = None,
        approvals: Approvals | None = None,
        reviews: Reviews | None = None,
        decomposer: Decomposer | None = None,
        subtasks: Subtasks | None = None,
        gatekeeper: Gatekeeper | None = None,
        redaction: RedactionSettings | None = None,
        memory: MemoryPort | None = None,
        memory_settings: MemorySettings | None = None,
        owner: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.planner = planner
        self.reviewer = reviewer
        self.executor = executor
        self.store = store
        self.tracer = tracer
        self.tools = tools
        self.settings = settings or WorkflowSettings()
        self.token_budget = token_budget
        """Model tokens one task may spend (a task's ``token_budget`` overrides it); None: no limit
        (with ``tenant_limits``: the tenant's ``max_token_budget``)."""
        self.tenant_limits = tenant_limits
        """The operator's limits of a tenant (``Settings.tenant_limits``): a task's token budget is
        capped by its tenant's ``max_token_budget``, and its model calls stop once the tenant's
        ``daily_token_budget`` is spent. None: no tenant limits."""
        self.usage_on = usage_on
        """The model usage a tenant's finished tasks recorded on a UTC day (the store's
        ``tenant_usage_on``); read before each model call of a tenant with a daily token budget."""
        self.needs_approval = needs_approval or (lambda _action: False)
        """Whether steps of a tool (by name) wait for a person's decision before they run (older
        callers; the gatekeeper decides when it is not given)."""
        self.gatekeeper: Gatekeeper = gatekeeper or RuleGatekeeper(needs_approval=needs_approval)
        """Judges each step before it runs: allow, approval or deny (:mod:`officeray.gatekeeper`).
        Default: the rules in process, over the built-in tools' risks and the approval levels of
        the settings (or the tenant's), or ``needs_approval`` where it is given."""
        self.calls_model = calls_model or (lambda _action: False)
        """Whether a tool (by name) calls a model: its steps do not run once the tenant's
        ``daily_token_budget`` is spent."""
        self.approvals = approvals
        self.reviews = reviews
        self.decomposer = decomposer
        """What splits a new task into subtasks (:mod:`officeray.subtasks`); None, or no ``subtasks``:
        every task runs as one plan."""
        self.subtasks = subtasks
        """Where a decomposed task's subtasks run as child tasks."""
        """Where a person's decision on escalated results comes from (:mod:`officeray.review`); None:
        escalated results fail their task at once, as nobody can decide them."""
        self.redaction = redaction
        """How the ``approval`` and ``review`` events record reasons and feedback
        (``telemetry.redaction``; None: its defaults)."""
        self.memory = memory
        """Where similar past tasks come from before the first plan, and where finished tasks go
        (None: no memory)."""
        self.memory_settings = memory_settings or MemorySettings()
        """``memory.failure_warning_threshold``: how close a plan must be to a recorded failure's for
        validation to warn."""
        self.owner = owner
        """Who holds the leases of the tasks run here (an orchestrator's life). Every write of a run
        is then fenced on its task's lease: once another owner took the task over, the run's next
        write is refused and the run stops with :class:`RunSupersededError`. None: no leases."""
        self._sleep = sleep
        self._rand = rand
        self._now = now
        """The wall clock (aware UTC): the record's timestamps and the ``maximum_duration_s`` cap."""
        self._runs: dict[str, _TaskRun] = {}
        """The runs going on in this process, by task id (what :meth:`cancel` stops)."""

    async def run(self, request: TaskRequest, task_id: str, record: TaskRecord | None = None) -> TaskRecord:
        """Run one task to a final state and return its record (never raises for task failures).

        A bug that escapes the loop (an unexpected exception) fails the task with ``internal error:
        ...``, written as every end of a run is (:meth:`_TaskRun.finish`). Raises only
        :class:`RunSupersededError` (another run holds the task now) and what a write of the end
        itself raises (the store is unreachable: the task stays unfinished and is resumed later).
        """
        run = _TaskRun(self, request, task_id, record)
        self._runs[task_id] = run
        try:
            return await self._remembered(await run.execute())
        except RunSupersededError:
            raise
        except asyncio.CancelledError:
            if run.cancelled_by is None:
                raise  # stopped from outside (its lease went to another orchestrator): nothing is written
            return await self._remembered(await run.end_cancelled())
        except Exception as exc:
            logger.exception("task %s crashed", task_id)
            ended = await run.finish(TaskStatus.FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
            return await self._remembered(ended)
        finally:
            if self._runs.get(task_id) is run:
                del self._runs[task_id]

    async def _remembered(self, record: TaskRecord) -> TaskRecord:
        """``record``, once the memory recorded it (a memory that fails or is slow is logged, never
        the task's failure: the record is already stored)."""
        if self.memory is not None and record.status.is_final:
            try:
                await asyncio.wait_for(self.memory.remember(record), MEMORY_CALL_TIMEOUT_S)
            except Exception as exc:
                logger.warning("task %s was not remembered: %s", record.task_id, _describe(exc))
        return record

    def cancel(self, task_id: str, by: str) -> bool:
        """Stop the run of ``task_id`` going on here (:meth:`run` then ends it ``cancelled``: the steps
        as they are, a running one failed and the others skipped with error type ``cancelled``, in
        one :meth:`Store.finish_task` write with the event ``cancelled`` and ``{"by": by}``). False
        when no run of it goes on here. Cancelling twice is cancelling once."""
        run = self._runs.get(task_id)
        if run is None or run.task is None or run.task.done():
            return False
        if run.cancelled_by is None:
            run.cancelled_by = by
            run.task.cancel()
        return True

    async def cancel_unstarted(
        self, request: TaskRequest, task_id: str, record: TaskRecord, by: str
    ) -> TaskRecord:
        """End a task whose run did not start (it waited for a slot, or it is resumed after a cancel
        request that no run took) as ``cancelled``, written as :meth:`cancel` writes it."""
        run = _TaskRun(self, request, task_id, record)
        run.cancelled_by = by
        return await run.end_cancelled()


class _TaskRun:
    """The state of one task while it runs."""

    def __init__(self, wf: Workflow, request: TaskRequest, task_id: str, record: TaskRecord | None) -> None:
        self.wf = wf
        self.request = request
        self.task_id = task_id
        now = wf._now()
        self.record = record or TaskRecord(
            task_id=task_id, description=request.description, created_at=now, updated_at=now
        )
        self.record.tenant = request.tenant
        self.record.parent_id = request.parent_id
        self.limits = None if wf.tenant_limits is None else wf.tenant_limits(request.tenant)
        self.budget = (
            request.token_budget or wf.token_budget
            if self.limits is None
            else effective_token_budget(request, self.limits, wf.token_budget)
        )
        self.policy = request.retry_policy or wf.settings.retry_policy
        self.stop_reason: str | None = None
        self._waiting = 0
        self.task = asyncio.current_task()
        """The asyncio task this run goes on in (what :meth:`Workflow.cancel` cancels)."""
        self.cancelled_by: str | None = None
        """Who cancelled the task (an API key id, ``cli``), once :meth:`Workflow.cancel` was called."""
        self._queued: list[asyncio.Future[Any]] = []
        """Writes submitted and not yet waited for, in submission order (see :meth:`persist`): a
        cancelled run lets them land before it writes its end."""
        self._fresh = record is None or (record.iterations == 0 and record.resumed == 0)
        """This is the task's first run: no step of it has a result recorded by an earlier run."""
        self._saved: dict[str, StepResult] = {}
        """The step results this run saved, by idempotency key (what a fresh run's later round may
        reuse, without reading the store)."""
        self.recall: Recall | None = None
        """What the memory recalled before the first plan (see :meth:`_recall`)."""
        self._recalled = False

    # -- persistence --------------------------------------------------------------------------

    def log(self, message: str, level: str = "info") -> None:
        line = LogLine(at=self.wf._now(), message=message, level=level)  # type: ignore[arg-type]
        self.record.logs.append(line)
        del self.record.logs[:-MAX_LOG_LINES]

    async def persist(self, kind: str, **data: Any) -> None:
        """Write the record and one event, in order, before the workflow acts on the transition."""
        await self._write(self.wf.store.save_transition, kind, data)

    def persist_soon(self, kind: str, **data: Any) -> None:
        """Submit the write of the record and one event (its snapshot is taken now, and writes commit
        in submission order) without waiting for it: for a transition followed only by work inside
        this run (a plan's validation, the next transition), never by a call outside it. The next
        write that waits (:meth:`durable`) waits for it too, so every transition is durable before the
        run acts on it; writes submitted together share their transaction (group commit)."""
        self._submit(self.wf.store.save_transition, kind, data)

    async def _write(self, save: Callable[..., Awaitable[bool]], kind: str, data: dict[str, Any]) -> None:
        """``save(record, kind, event, owner=...)``, and every write submitted before it; a refused
        write (another owner holds the task's lease now) stops this run: :class:`RunSupersededError`."""
        self._submit(save, kind, data)
        await self.durable()

    def _submit(self, save: Callable[..., Awaitable[bool]], kind: str, data: dict[str, Any]) -> None:
        self.record.updated_at = self.wf._now()
        event = {"status": self.record.status.value, **data}
        # no await between the snapshot (taken by ``save`` when called) and the submission: writes
        # commit in the order of the transitions
        self._queued.append(asyncio.ensure_future(save(self.record, kind, event, owner=self.wf.owner)))

    def save_result(self, result: StepResult) -> None:
        """Submit ``result``'s write (waited for with the next :meth:`durable`)."""
        self._saved[result.idempotency_key] = result
        self._queued.append(asyncio.ensure_future(self.wf.store.save_step_result(self.task_id, result)))

    async def durable(self) -> None:
        """Wait for every write submitted so far; :class:`RunSupersededError` when one was refused.
        Shielded: a run stopped half-way (its lease went to another orchestrator) never leaves a
        record without its event."""
        queued = self._queued[:]
        if not queued:
            return
        # every waiter waits for all the writes submitted before it (parallel steps wait together)
        outcomes = await asyncio.shield(asyncio.gather(*queued, return_exceptions=True))
        done = {id(future) for future in queued}
        self._queued = [future for future in self._queued if id(future) not in done]
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is False:
                raise RunSupersededError(f"task {self.task_id} is run by another orchestrator now")

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

    async def daily_budget_spent(self) -> str | None:
        """Why this task may make no more model calls: its tenant's ``daily_token_budget`` is spent by
        the tenant's tasks finished today (UTC) and this one's calls so far; None while it is not."""
        limits, usage_on = self.limits, self.wf.usage_on
        if limits is None or limits.daily_token_budget is None or usage_on is None:
            return None
        stored = await usage_on(self.request.tenant, self.wf._now().date())
        spent = stored.total_tokens + self.record.usage.total_tokens
        return daily_budget_spent_reason(self.request.tenant, spent, limits)

    async def finish(
        self, status: TaskStatus, *, result: Any = None, error: str | None = None, **data: Any
    ) -> TaskRecord:
        """End the run: its final record, with a failed task's dead-letter entry and the task's usage
        for its tenant, in one write (:meth:`Store.finish_task`); ``data`` goes into its event."""
        self.record.status = status
        self.record.result = result
        self.record.error = error
        self.record.current_step = None
        self.record.review_pending = None
        self.record.finished_at = self.wf._now()
        self.log(f"task {status.value}" + (f": {error}" if error else ""), "error" if error else "info")
        await self._write(self.wf.store.finish_task, status.value, {"error": error, **data})
        return self.record

    async def end_cancelled(self) -> TaskRecord:
        """End a cancelled run (:attr:`cancelled_by` set): the steps as they are (a running step
        ``failed``, a pending or waiting one ``skipped``, both with error type ``cancelled``), then
        the final ``cancelled`` record. A run that was writing its own end when the cancel came
        keeps that end."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()  # the cancel is handled here; the writes below must not be cut short
        with contextlib.suppress(Exception):
            await self.durable()  # the writes in flight land before the end
        if self.record.status.is_final:
            return self.record
        by = self.cancelled_by or "unknown"
        now = self.wf._now()
        stopped = []
        for i, step in enumerate(self.record.steps):
            if step.status in (StepStatus.RUNNING, StepStatus.PENDING, StepStatus.WAITING_APPROVAL):
                ran = step.status == StepStatus.RUNNING
                why = f"cancelled by {by} while the step {'ran' if ran else 'waited'}"
                self.record.steps[i] = step.model_copy(
                    update={
                        "status": StepStatus.FAILED if ran else StepStatus.SKIPPED,
                        "error": StepError(type=ErrorType.CANCELLED, message=why),
                        "finished_at": now,
                    }
                )
                if ran:
                    stopped.append(self.record.steps[i])
        for result in stopped:
            self.save_result(result)
        return await self.finish(TaskStatus.CANCELLED, error=f"cancelled by {by}", by=by)

    # -- the loop -----------------------------------------------------------------------------

    def _trace_parent(self) -> otel_context.Context:
        """The task's span hangs from the gateway's ``submit`` span (``trace_parent``); a resumed task
        goes on in its original trace. The task id travels as baggage, so every span of the task, in
        any process, records it."""
        context = parse_traceparent(self.record.trace_parent)
        if context is None and self.record.trace_id:
            context = remote_parent(self.record.trace_id)
        return with_task(self.task_id, context or otel_context.Context())

    async def execute(self) -> TaskRecord:
        with (
            attached(self._trace_parent()),
            self.wf.tracer.start_as_current_span(
                "task", attributes={"officeray.task_id": self.task_id}
            ) as span,
        ):
            self.record.trace_id = trace_id_hex(span)
            record = await self._loop()
            span.set_attribute("officeray.status", record.status.value)
            span.set_attribute("officeray.iterations", record.iterations)
            if record.status == TaskStatus.FAILED:
                span.set_status(Status(StatusCode.ERROR, record.error or "failed"))
            return record

    def effective_policy(self) -> WorkflowRetryPolicy:
        """The task's policy, tightened by the policies of the tools its current plan uses."""
        policy = self.policy
        plan = self.record.plan
        by_tool = self.wf.settings.retry_policy_by_tool
        for action in sorted({s.action for s in plan.steps} if plan else set()):
            other = by_tool.get(action)
            if other is not None:
                policy = WorkflowRetryPolicy(
                    maximum_step_attempts=min(policy.maximum_step_attempts, other.maximum_step_attempts),
                    maximum_model_calls=min(policy.maximum_model_calls, other.maximum_model_calls),
                    maximum_duration_s=min(policy.maximum_duration_s, other.maximum_duration_s),
                )
        return policy

    def over_policy(self) -> str | None:
        """Why the workflow retry policy stops this task now, if it does."""
        policy, counters = self.effective_policy(), self.record.counters
        if counters.step_attempts >= policy.maximum_step_attempts:
            return f"workflow retry policy: maximum_step_attempts ({policy.maximum_step_attempts}) reached"
        if counters.model_calls >= policy.maximum_model_calls:
            return f"workflow retry policy: maximum_model_calls ({policy.maximum_model_calls}) reached"
        if self.remaining_s() <= 0:
            return self.duration_reached()
        return None

    def remaining_s(self) -> float:
        """Seconds left before the wall-clock cap (``maximum_duration_s``, counted from the start of
        this run: acceptance, or the DLQ retry, less the time it waited for a person's review); what a
        step, an approval wait or a model call may still take."""
        elapsed = (self.wf._now() - (self.record.run_started_at or self.record.created_at)).total_seconds()
        waited = self.record.review_wait_s + self._review_waited_s()
        return self.effective_policy().maximum_duration_s - elapsed + waited

    def _review_waited_s(self) -> float:
        """Seconds the results wait for a person now (``waiting_review`` since ``review_pending.since``)."""
        pending = self.record.review_pending
        if self.record.status != TaskStatus.WAITING_REVIEW or pending is None:
            return 0.0
        return max(0.0, (self.wf._now() - pending.since).total_seconds())

    def _model_call_timeout_s(self) -> float:
        """A planner or reviewer call's limit: ``model_call_timeout_s``, or less near the wall-clock cap."""
        return max(0.0, min(self.wf.settings.model_call_timeout_s, self.remaining_s()))

    def duration_reached(self, during: str = "") -> str:
        """The error of a task stopped by its wall-clock cap (``during``: what was cut short)."""
        cap = self.effective_policy().maximum_duration_s
        reached = f"workflow retry policy: maximum_duration_s ({cap:g}) reached"
        return f"{reached} {during}" if during else reached

    async def _begin(self) -> bool:
        """Log and persist the start; True when this run resumes a task that made progress."""
        if self.record.iterations == 0:
            self.log("task accepted")
            self.persist_soon("accepted")
            return False
        self.record.resumed += 1
        where = f"{self.record.status.value} (iteration {self.record.iterations})"
        self.log(f"task resumed at {where}", "warning")
        await self.persist("resumed", iteration=self.record.iterations)
        return True

    async def _loop(self) -> TaskRecord:
        wf = self.wf
        allowed = self.request.allowed_tools if self.request.allowed_tools is not None else sorted(wf.tools)
        unknown = sorted(set(allowed) - set(wf.tools))
        resuming = await self._begin()
        if unknown:
            return await self.finish(
                TaskStatus.FAILED, error=f"unknown tools in allowed_tools: {', '.join(unknown)}"
            )
        decomposed = await coordinate(self, allowed, resuming)  # several subtasks: child tasks
        if decomposed is not None:
            return decomposed
        max_iterations = self.request.max_iterations or wf.settings.max_iterations
        feedback: list[str] = list(self.record.feedback)
        previous: Plan | None = self.record.plan
        resume_plan = previous if resuming and self.record.status in _RESUME_WITH_PLAN else None
        for iteration in range(max(1, self.record.iterations), max_iterations + 1):
            self.record.iterations = iteration
            stop = self.over_policy()
            if stop:
                return await self.finish(TaskStatus.FAILED, error=stop)
            planned: Plan | TaskRecord | list[str]
            if resume_plan is not None:
                planned, resume_plan = await self._revalidate(resume_plan, allowed), None
            else:
                planned = await self._plan_and_validate(iteration, allowed, feedback, previous)
            if isinstance(planned, TaskRecord):
                return planned
            if isinstance(planned, list):  # no usable plan this round: try again with feedback
                feedback = planned
                continue
            plan = previous = planned
            results = await self._execute(plan)
            if self.stop_reason:
                return await self.finish(TaskStatus.FAILED, error=self.stop_reason)
            review = await self._review(iteration, plan, results)
            if review is None:
                feedback = ["the reviewer did not answer; run the plan again"]
                continue
            review = await self._person_review(iteration, review)  # a person decides, when it asks for one
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

    async def _plan_and_validate(
        self, iteration: int, allowed: list[str], feedback: list[str], previous: Plan | None
    ) -> Plan | TaskRecord | list[str]:
        """A valid plan; a final record; or the feedback for the next round when there is none. A task
        resumed while its results waited for a person goes straight back to waiting (no re-plan, no
        step re-run): the decision ends it, or its feedback goes to the next round."""
        pending = self.record.review_pending
        if self.record.status == TaskStatus.WAITING_REVIEW and pending is not None:
            return await self._await_review(pending)
        self.record.feedback = list(feedback)
        if iteration == 1 and self.request.plan is not None:
            return await self._ready_plan(allowed)
        planned = await self._plan(iteration, allowed, feedback, previous)
        if planned is None or isinstance(planned, TaskRecord):
            return feedback if planned is None else planned
        reasons = await self._validate(planned, allowed)
        if reasons:
            return [f"plan rejected: {r}" for r in reasons][:MAX_FEEDBACK_ITEMS]
        return planned

    async def _revalidate(self, plan: Plan, allowed: list[str]) -> Plan | list[str]:
        """A resumed task's stored plan, validated again before any of its steps runs (it may have
        been refused, as on a DLQ retry of a round whose plan was rejected, or be invalid now that the
        tool catalog changed); refused, its reasons are the feedback for the next round's plan."""
        reasons = await self._validate(plan, allowed)
        if reasons:
            return [f"plan rejected: {r}" for r in reasons][:MAX_FEEDBACK_ITEMS]
        return plan

    async def _plan(
        self, iteration: int, allowed: list[str], feedback: list[str], previous: Plan | None
    ) -> Plan | TaskRecord | None:
        """The round's plan; a final record when planning is impossible; None to try another round."""
        wf = self.wf
        spent = await self.daily_budget_spent()
        if spent is not None:
            return await self.finish(TaskStatus.FAILED, error=spent)
        self.record.status = TaskStatus.PLANNING
        self.record.current_step = None
        await self.persist("planning", iteration=iteration)
        await self._recall()
        request = PlanRequest(
            task_id=self.task_id,
            tenant=self.request.tenant,
            description=self.request.description,
            iteration=iteration,
            allowed_tools=list(allowed),
            feedback=feedback,
            previous_plan=previous,
            memory=self.recall,
        )
        self.record.counters.model_calls += 1
        with wf.tracer.start_as_current_span("plan", attributes={"officeray.iteration": iteration}) as span:
            try:
                answer = await asyncio.wait_for(wf.planner.plan(request), self._model_call_timeout_s())
            except PlanningError as exc:
                span.set_status(Status(StatusCode.ERROR, "cannot plan"))
                return await self.finish(TaskStatus.FAILED, error=str(exc))
            except Exception as exc:  # model down, timed out, bad answer: another round may work
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                if self.remaining_s() <= 0:
                    return await self.finish(TaskStatus.FAILED, error=self.duration_reached("while planning"))
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
        reused = call.reused_from if call is not None else None
        if reused is not None:
            score = next((h.score for h in self.record.memory if h.task_id == reused), None)
            similarity = f" (similarity {score:.2f})" if score is not None else ""
            self.log(
                f"iteration {iteration}: planned from memory: the plan of {reused}{similarity}, no model call"
            )
            self.persist_soon("planned", iteration=iteration, plan_id=plan.plan_id, reused_from=reused)
            return plan
        self.persist_soon("planned", iteration=iteration, plan_id=plan.plan_id)
        return plan

    async def _recall(self) -> None:
        """Ask the memory, once per run, for the tenant's similar past tasks (a ``memory.search``
        span with the hit count and the best score); they go to every round's planner and on the
        record (without their plans)."""
        wf = self.wf
        if wf.memory is None or self._recalled:
            return
        self._recalled = True
        with wf.tracer.start_as_current_span("memory.search") as span:
            try:
                recall = await asyncio.wait_for(
                    wf.memory.recall(self.request.tenant, self.request.description), MEMORY_CALL_TIMEOUT_S
                )
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self.log(f"memory unavailable, planning without it: {_describe(exc)}", "warning")
                return
            span.set_attribute("officeray.memory.on", recall is not None)
            if recall is None:
                return
            span.set_attribute("officeray.memory.hits", len(recall.hits))
            span.set_attribute("officeray.memory.searched", recall.searched)
            if recall.best_score is not None:
                span.set_attribute("officeray.memory.best_score", recall.best_score)
        self.recall = recall
        self.record.memory = [h.model_copy(update={"plan": None}) for h in recall.hits]
        if recall.hits:
            best = max(recall.hits, key=lambda h: h.score)
            self.log(
                f"memory: {len(recall.successes)} similar success(es), {len(recall.failures)} similar "
                f"failure(s); best {best.task_id} ({best.score:.2f})"
            )

    async def _ready_plan(self, allowed: list[str]) -> Plan | TaskRecord:
        """Iteration 1 of a task submitted with a plan: that plan instead of the planner's, validated
        like a model's; refused, it fails the task with the reasons (nobody re-plans a user's plan)."""
        wf = self.wf
        with wf.tracer.start_as_current_span(
            "plan", attributes={"officeray.iteration": 1, "officeray.plan_source": "submitted"}
        ):
            plan, reasons = parse_plan(self.request.ready_plan(self.task_id) or {})
        if plan is not None:
            reasons = await self._validate(plan, allowed)
        if plan is None or reasons:
            return await self.finish(
                TaskStatus.FAILED, error="the submitted plan was refused: " + "; ".join(reasons)
            )
        plan = _scoped_to_task(plan, self.task_id)
        self.record.plan = plan
        self.log(
            f"iteration 1: the submitted plan has {len(plan.steps)} step(s): "
            + ", ".join(f"{s.step_id}={s.action}" for s in plan.steps)
        )
        self.persist_soon("planned", iteration=1, plan_id=plan.plan_id, source="submitted")
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
        if not reasons:
            await self._recall()  # a submitted or resumed plan is checked against past failures too
        warnings = [] if reasons else self._failure_warnings(plan)
        self.persist_soon("validated", valid=not reasons, reasons=reasons, warnings=warnings)
        return reasons

    def _failure_warnings(self, plan: Plan) -> list[str]:
        """A warning when the plan closely matches one that failed before (it still runs)."""
        match = failure_like(plan, self.recall, self.wf.memory_settings.failure_warning_threshold)
        if match is None:
            return []
        hit, similarity = match
        warning = (
            f"this plan matches the failed plan of {hit.task_id} (plan similarity {similarity:.2f}, "
            f"task similarity {hit.score:.2f}): {hit.lesson}"
        )
        self.log(f"validation warning: {warning}", "warning")
        return [warning]

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
        self.persist_soon("executing", steps=len(plan.steps))
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

    async def _recorded_success(self, step: PlanStep) -> StepResult | None:
        key = step.idempotency_key
        if self._fresh and key.startswith(f"{self.task_id}:"):
            recorded = self._saved.get(key)  # the task's own keys: only this run can have saved them
        else:
            recorded = await self.wf.store.get_step_result(key)
        if recorded is None or recorded.status != StepStatus.SUCCEEDED:
            return None
        self._set_step(recorded)
        self.log(
            f"step {step.step_id}: its recorded result is reused (idempotency key {step.idempotency_key})"
        )
        await self.persist("step_reused", step_id=step.step_id)
        return recorded

    def approval_risk_levels(self) -> list[str]:
        """Step risk levels that need approval in this task: its tenant's, else the settings'."""
        own = None if self.limits is None else self.limits.approval_risk_levels
        return list(self.wf.settings.approvals.required_risk_levels if own is None else own)

    async def _gate(self, step: PlanStep, inputs: dict[str, Any]) -> GateDecision:
        """The gatekeeper's decision on ``step``, recorded (task event and span event ``gatekeeper``)
        before the workflow acts on it. A gatekeeper that fails or is slow leaves the step to a person."""
        request = GateRequest(
            task_id=self.task_id,
            tenant=self.request.tenant,
            description=gate_description(self.request),  # a subtask's: its root task's words
            step=step,
            inputs=inputs,
            required_risk_levels=self.approval_risk_levels(),
        )
        started_at = self.wf._now()
        try:
            decision = await asyncio.wait_for(self.wf.gatekeeper.gate(request), self._model_call_timeout_s())
        except Exception as exc:
            decision = GateDecision(
                verdict=Verdict.APPROVAL,
                risk=RiskLevel.HIGH,
                reason=f"the gatekeeper could not judge the step ({_describe(exc)}): a person decides",
                rule=RULE_GATEKEEPER_ERROR,
            )
        if decision.verdict != Verdict.ALLOW:
            verdict = decision.verdict.value
            self.log(f"gatekeeper: step {step.step_id} ({step.action}): {verdict}: {decision.reason}")
        self.persist_soon(
            "gatekeeper",
            step_id=step.step_id,
            action=step.action,
            verdict=decision.verdict.value,
            risk=decision.risk.value,
            reason=decision.reason,
            rule=decision.rule,
        )
        if decision.verdict != Verdict.ALLOW:
            await self.durable()  # an allowed step's own start waits for it
        emit_event(
            trace.get_current_span(),
            "gatekeeper",
            agent="orchestrator",
            redaction=self.wf.redaction,
            task_id=self.task_id,
            step_id=step.step_id,
            content=decision.reason,
            details={
                "action": step.action,
                "verdict": decision.verdict.value,
                "risk": decision.risk.value,
                "rule": decision.rule,
            },
            error=None,
            started_at=started_at,
            ended_at=self.wf._now(),
        )
        return decision

    async def _approve(self, step: PlanStep, gate: GateDecision | None = None) -> StepError | None:
        """Wait (holding no runner) for a person's decision; an error when rejected or timed out.
        ``gate``: the gatekeeper's decision that asked for it (its reason and risk are in the
        ``approval_requested`` event)."""
        wf = self.wf
        timeout_s = wf.settings.approvals.timeout_s
        waiting = StepResult(
            step_id=step.step_id,
            action=step.action,
            idempotency_key=step.idempotency_key,
            status=StepStatus.WAITING_APPROVAL,
            started_at=self.wf._now(),
        )
        self._set_step(waiting)
        self._waiting += 1
        self.record.status = TaskStatus.WAITING_APPROVAL
        self.log(f"step {step.step_id} ({step.action}) waits for approval", "warning")
        asked = {} if gate is None else {"reason": gate.reason, "risk": gate.risk.value, "rule": gate.rule}
        await self.persist(
            "approval_requested", step_id=step.step_id, action=step.action, timeout_s=timeout_s, **asked
        )
        decision = None
        if wf.approvals is not None:
            # keyed by the step's idempotency key: a decision never carries over to another
            # round's step that happens to reuse the step id
            wait_s = max(0.0, min(timeout_s, self.remaining_s()))  # the wall-clock cap counts waits too
            decision = await wf.approvals.wait(self.task_id, step.idempotency_key, wait_s)
        self._waiting -= 1
        if self._waiting == 0:
            self.record.status = TaskStatus.EXECUTING
        self._approval_event(step, waiting.started_at, decision)
        if decision is None and self.remaining_s() <= 0:
            self.stop_reason = self.duration_reached(f"while step {step.step_id} waited for approval")
            self.log(self.stop_reason, "error")
            await self.persist("approval_timed_out", step_id=step.step_id)
            return StepError(type=ErrorType.POLICY, message=self.stop_reason)
        if decision is None:
            why = f"approval of step {step.step_id} timed out after {timeout_s:g}s"
            self.log(why, "error")
            await self.persist("approval_timed_out", step_id=step.step_id)
            return StepError(type=ErrorType.APPROVAL, message=why)
        audit = {k: decision.get(k) for k in ("decision", "decided_by", "reason", "decided_at")}
        self.log(f"step {step.step_id} {decision['decision']} by {decision.get('decided_by')}")
        await self.persist("approval_decided", step_id=step.step_id, **audit)
        if decision["decision"] != "approved":
            reason = f": {decision.get('reason')}" if decision.get("reason") else ""
            return StepError(
                type=ErrorType.APPROVAL,
                message=f"step {step.step_id} was rejected by {decision.get('decided_by')}{reason}",
            )
        return None

    def _approval_event(
        self, step: PlanStep, started_at: datetime | None, decision: dict[str, Any] | None
    ) -> None:
        """The ``approval`` event of a step's wait: the decision applied, or none in time."""
        details = {"action": step.action, "decision": "timed_out"}
        if decision is not None:
            details.update(decision=str(decision.get("decision")), decided_by=str(decision.get("decided_by")))
        emit_event(
            trace.get_current_span(),
            "approval",
            agent="orchestrator",
            redaction=self.wf.redaction,
            task_id=self.task_id,
            step_id=step.step_id,
            content=None if decision is None else decision.get("reason"),
            details=details,
            error="no decision in time" if decision is None else None,
            started_at=started_at,
            ended_at=self.wf._now(),
        )

    def _step_failed(self, step: PlanStep, error: StepError) -> StepResult:
        return StepResult(
            step_id=step.step_id,
            action=step.action,
            idempotency_key=step.idempotency_key,
            status=StepStatus.FAILED,
            error=error,
            started_at=self.wf._now(),
            finished_at=self.wf._now(),
        )

    async def _run_step(self, step: PlanStep, inputs: dict[str, Any]) -> StepResult:
        wf = self.wf
        recorded = await self._recorded_success(step)
        if recorded is not None:
            return recorded
        gate = await self._gate(step, inputs)
        if gate.verdict != Verdict.ALLOW:
            refused = (
                await self._approve(step, gate)
                if gate.verdict == Verdict.APPROVAL
                else StepError(type=ErrorType.DENIED, message=f"denied by the gatekeeper: {gate.reason}")
            )
            if refused is not None:
                failed = self._step_failed(step, refused)
                self._set_step(failed)
                self.save_result(failed)
                await self.persist("step_finished", step_id=step.step_id, step_status=failed.status.value)
                return failed
        if wf.calls_model(step.action):
            spent = await self.daily_budget_spent()
            if spent is not None:  # a model call like the planner's: not made once the day's budget is spent
                failed = self._step_failed(step, StepError(type=ErrorType.POLICY, message=spent))
                self._set_step(failed)
                self.save_result(failed)
                await self.persist("step_finished", step_id=step.step_id, step_status=failed.status.value)
                return failed
        policy = wf.settings.step_retry_by_tool.get(step.action, wf.settings.step_retry)
        result = StepResult(
            step_id=step.step_id,
            action=step.action,
            idempotency_key=step.idempotency_key,
            status=StepStatus.RUNNING,
            started_at=self.wf._now(),
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
                stop = self.over_policy()
                if stop:
                    self.stop_reason = stop
                    outcome = StepOutcome(error=StepError(type=ErrorType.POLICY, message=stop))
                    break
                result.attempts += 1
                self.record.counters.step_attempts += 1
                outcome = await self._attempt(step, inputs)
                if outcome.error is None or self.stop_reason or outcome.error.type == ErrorType.CANCELLED:
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
        result.finished_at = self.wf._now()
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
        self._account_step_usage(step, result)
        self.save_result(result)
        # not waited for: what comes next (another step, the review, the end) waits for it first
        self.persist_soon("step_finished", step_id=step.step_id, step_status=result.status.value)
        return result

    async def _attempt(self, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        """One attempt of ``step``, cut short (and the task stopped) when the wall-clock cap is reached."""
        try:
            async with asyncio.timeout(max(0.0, self.remaining_s())) as cap:
                return await self.wf.executor.execute(self.task_id, step, inputs, inject_context())
        except TimeoutError as exc:
            if not cap.expired():  # the executor's own error
                return StepOutcome(error=StepError(type=ErrorType.INTERNAL, message=_describe(exc)))
            self.stop_reason = self.duration_reached(f"while step {step.step_id} ({step.action}) was running")
            self.log(self.stop_reason, "error")
            return StepOutcome(error=StepError(type=ErrorType.POLICY, message=self.stop_reason))
        except Exception as exc:  # an executor must not raise; count it as internal
            return StepOutcome(error=StepError(type=ErrorType.INTERNAL, message=_describe(exc)))

    def _account_step_usage(self, step: PlanStep, result: StepResult) -> None:
        """A step whose output reports model ``usage`` (``ai_tool`` does) counts toward the task's tokens."""
        output = result.output
        if result.status != StepStatus.SUCCEEDED or not isinstance(output, dict):
            return
        raw = output.get("usage")
        if not isinstance(raw, dict):
            return
        try:
            usage = ModelUsage.model_validate({"calls": 1, **raw})
        except ValidationError:
            return  # not a model's usage report: nothing to count
        call = ModelCallRecord(role=step.action, tier=str(output.get("tier", "")), usage=usage)
        self.account(call, self.record.iterations)

    async def _person_review(self, iteration: int, review: Review) -> Review:
        """``review`` as it stands, or, when it goes to a person
        (:func:`~officeray.review.escalation_reason`), the person's decision as a review: round
        ``iteration``'s results wait (``waiting_review``, no runner held) until accepted (APPROVED with
        the proposed output), rejected or timed out (FAILED), or sent back with feedback (REVISE)."""
        reason = escalation_reason(review, self.wf.settings.escalation.confidence_threshold)
        if reason is None:
            return review
        return await self._decision_on(await self._wait_begins(iteration, reason, review.final_output))

    async def _escalate(self, iteration: int, reason: str, proposed: Any) -> TaskRecord | list[str]:
        """Hand round ``iteration``'s results (``proposed``: the result once accepted) to a person and
        wait: the final record (accepted, rejected, timed out), or the feedback for the next round (sent
        back for revision). For loops of their own (a decomposed task's final review)."""
        return await self._await_review(await self._wait_begins(iteration, reason, proposed))

    async def _wait_begins(self, iteration: int, reason: str, proposed: Any) -> PendingReview:
        """The task starts to wait for a person (``waiting_review``, event ``review_escalated``)."""
        timeout_s = self.wf.settings.escalation.timeout_s
        pending = PendingReview(
            iteration=iteration,
            reason=reason,
            proposed_output=proposed,
            since=self.wf._now(),
            timeout_s=timeout_s,
        )
        self.record.review_pending = pending
        self.record.status = TaskStatus.WAITING_REVIEW
        self.log(f"iteration {iteration}: the results wait for a person's review: {reason}", "warning")
        await self.persist("review_escalated", iteration=iteration, reason=reason, timeout_s=timeout_s)
        return pending

    async def _await_review(self, pending: PendingReview) -> TaskRecord | list[str]:
        """Wait for the decision on ``pending`` and apply it: the final record (accepted: completed
        with the proposed output; rejected or timed out: failed), or the feedback for the next round."""
        decided = await self._decision_on(pending)
        if decided.verdict == ReviewVerdict.APPROVED:
            return await self.finish(TaskStatus.COMPLETED, result=decided.final_output)
        if decided.verdict == ReviewVerdict.FAILED:
            return await self.finish(TaskStatus.FAILED, error=decided.feedback)
        return [decided.feedback]

    async def _decision_on(self, pending: PendingReview) -> Review:
        """Wait for the decision on ``pending`` (what is left of its timeout: the wall-clock cap does
        not count this wait, :meth:`remaining_s`; no task slot held meanwhile) and answer it as a
        review. The pending review stays on the record until the task ends or the next round begins: a
        run resumed in between finds the stored decision again."""
        wf = self.wf
        left = pending.timeout_s - (wf._now() - pending.since).total_seconds()
        decision = None
        if wf.reviews is not None:
            async with wf.reviews.idle(self.request.tenant, self.request.priority):
                decision = await wf.reviews.wait(self.task_id, pending.iteration, max(0.0, left))
        if decision is None:
            if wf.reviews is None:
                why = "escalated to a person, but no one can decide reviews here"
            else:
                why = f"no review decision in {pending.timeout_s:g}s"
            self.log(why, "error")
            return Review(verdict=ReviewVerdict.FAILED, feedback=why)
        verdict, by = str(decision.get("decision")), str(decision.get("decided_by"))
        feedback = str(decision.get("feedback") or "")
        said = f": {feedback}" if feedback else ""
        self.log(f"iteration {pending.iteration}: review {verdict} by {by}{said}")
        await self.persist(
            "review_decided",
            iteration=pending.iteration,
            decision=verdict,
            decided_by=by,
            feedback=feedback,
            decided_at=decision.get("decided_at"),
        )
        if verdict == "accept":
            return Review(
                verdict=ReviewVerdict.APPROVED, feedback=feedback, final_output=pending.proposed_output
            )
        if verdict == "reject":
            return Review(verdict=ReviewVerdict.FAILED, feedback=f"rejected by {by}{said}")
        # revise: written with the next round's first transition, with the wait taken off the cap's count
        self.record.review_wait_s += self._review_waited_s()
        self.record.review_pending = None
        return Review(verdict=ReviewVerdict.REVISE, feedback=feedback or f"{by} asked for a revision")

    async def _review(self, iteration: int, plan: Plan, results: list[StepResult]) -> Review | None:
        wf = self.wf
        spent = await self.daily_budget_spent()
        if spent is not None:
            return Review(verdict=ReviewVerdict.FAILED, feedback=spent)
        self.record.status = TaskStatus.REVIEWING
        await self.persist("reviewing", iteration=iteration)
        request = ReviewRequest(
            task_id=self.task_id,
            tenant=self.request.tenant,
            description=self.request.description,
            iteration=iteration,
            plan=plan,
            results=results,
            require_sign_off=self.request.require_sign_off,
        )
        self.record.counters.model_calls += 1
        started_at = wf._now()
        with wf.tracer.start_as_current_span("review", attributes={"officeray.iteration": iteration}) as span:
            try:
                answer = await asyncio.wait_for(wf.reviewer.review(request), self._model_call_timeout_s())
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self._review_event(span, iteration, started_at, error=_describe(exc))
                if self.remaining_s() <= 0:
                    stop = self.duration_reached("while reviewing")
                    return Review(verdict=ReviewVerdict.FAILED, feedback=stop)
                self.log(f"iteration {iteration}: reviewer failed: {_describe(exc)}", "warning")
                return None
            review, call = (answer.review, answer.call) if isinstance(answer, Reviewed) else (answer, None)
            span.set_attribute("officeray.verdict", review.verdict.value)
            self._review_event(span, iteration, started_at, review=review, call=call)
        over = self.account(call, iteration)
        if over is not None:
            return Review(verdict=ReviewVerdict.FAILED, feedback=over)
        self.log(f"iteration {iteration}: review {review.verdict.value}: {review.feedback}")
        self.persist_soon(
            "reviewed",  # what follows (the end, a new round, a person's review) waits for it
            iteration=iteration,
            verdict=review.verdict.value,
            feedback=review.feedback,
        )
        return review

    def _review_event(
        self,
        span: trace.Span,
        iteration: int,
        started_at: datetime,
        *,
        review: Review | None = None,
        call: ModelCallRecord | None = None,
        error: str | None = None,
    ) -> None:
        """The ``review`` event: the reviewer's verdict and feedback, or why it did not answer."""
        details: dict[str, Any] = {"iteration": iteration}
        if review is not None:
            details["verdict"] = review.verdict.value
        if call is not None:
            details.update(tier=call.tier, model=call.model)
        emit_event(
            span,
            "review",
            agent="reviewer",
            redaction=self.wf.redaction,
            task_id=self.task_id,
            content=None if review is None else review.feedback,
            details=details,
            error=error,
            started_at=started_at,
            ended_at=self.wf._now(),
            tokens_in=None if call is None else call.usage.prompt_tokens,
            tokens_out=None if call is None else call.usage.completion_tokens,
        )


SUBMITTED_PLAN_ITERATION = 0
"""The round number in a submitted plan's step keys: planners number their rounds from 1, so a
submitted step's key never equals a key a planner gives a later round's step."""


def _scoped_to_task(plan: Plan, task_id: str) -> Plan:
    """A submitted plan with its steps' idempotency keys made the task's own:
    ``<task_id>:0:<step_id>`` (hashed when longer than the limit).

    Recorded step results are found by idempotency key alone (that is how a resumed task skips the
    steps that succeeded): a key the client chose ("s1", or the same key on two steps) must not find
    another step's result, of this task or of another one.
    """
    steps = []
    for step in plan.steps:
        key = f"{task_id}:{SUBMITTED_PLAN_ITERATION}:{step.step_id}"
        if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
            digest = hashlib.sha256(step.step_id.encode()).hexdigest()[:32]
            key = f"{task_id}:{SUBMITTED_PLAN_ITERATION}:{digest}"
        steps.append(step.model_copy(update={"idempotency_key": key}))
    return plan.model_copy(update={"steps": steps})


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, TimeoutError) and not text:
        text = "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
