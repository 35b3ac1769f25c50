"""Decomposition into subtasks: a task whose decomposer answers several subtasks runs them as child
tasks and integrates their results in a final review.

The workflow calls :func:`coordinate` for a task before its first plan. With one subtask (what the
rules of :mod:`officeray.decompose` answer for anything that is not an explicit enumeration) it
returns None and the task runs as one plan, exactly as without decomposition: nothing is written.
With several, the parent task:

1. records the tree (``record.subtasks``, event ``decomposed``);
2. starts each subtask whose dependencies completed as a **child task** ``<parent id>.<subtask id>``
   through the :class:`Subtasks` port (same tenant, tools, caps; ``parent_id`` set), its
   dependencies' results written into its description (:func:`~officeray.decompose.substitute_results`);
   independent children run at once, on any orchestrator shard, each with its own plan/review loop,
   retries and dead-letter entry;
3. follows each child's status into ``record.subtasks`` (events ``subtask_started``,
   ``subtask_status``, ``subtask_finished``), holding **no task slot** meanwhile
   (:meth:`Subtasks.idle`);
4. once all completed, asks the reviewer to integrate them: one pseudo-step per subtask (action
   ``subtask``, output the child's result); an APPROVED ``final_output`` is the parent's result
   (with every subtask's result: :func:`integrated_result`). A failed (or cancelled) child fails
   the parent with ``subtask <id> failed: …``, and its unfinished siblings are cancelled. A person
   reviewing the integrated result (escalated) may accept or reject it, not ``revise`` it
   (:func:`revise_refusal`: 409 ``revise_not_supported``).

A child is gated against its root task's description (:func:`gate_description`), not its own, which
holds its dependencies' results: hosts named in fetched content do not count as named by the task.
A child id that names a task that is not this parent's child (another tenant's) fails the subtask.

Durable: a parent resumed after a crash finds its tree in its record and does not decompose again;
it starts its unfinished children again (a child's id makes that idempotent: an existing child is
not created twice, and goes on by the normal lease/claim path, reusing its recorded step results).
A parent re-queued from the dead-letter queue (status ``queued`` on resume) first re-queues its
dead-lettered children, and runs its other failed or cancelled subtasks again (a child that never
started as it was; one that ended as a fresh child ``<parent id>.<subtask id>-r<n>``). A cancelled
parent cancels its unfinished children.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from officeray.contracts import (
    MAX_TASK_DESCRIPTION_CHARS,
    Decomposed,
    DecomposeRequest,
    Decomposition,
    Plan,
    PlanStep,
    ReviewVerdict,
    StepResult,
    StepStatus,
    SubtaskView,
    TaskRecord,
    TaskRequest,
    TaskStatus,
)
from officeray.decompose import substitute_results
from officeray.errors import LimitExceededError
from officeray.review import escalation_reason
from officeray.telemetry import inject_context

if TYPE_CHECKING:
    from officeray.workflow import _TaskRun

logger = logging.getLogger(__name__)

SUBTASK_ACTION = "subtask"
"""The action of the final review's pseudo-steps (one per subtask)."""

PENDING = "pending"
"""A subtask's status before its child task starts (it waits for its dependencies)."""

WATCH_INTERVAL_S = 2.0
"""Longest one :meth:`Subtasks.wait` call waits before the parent looks again."""

START_ATTEMPTS = 5
"""Times the parent tries to start a child task (its shard may be restarting) before it fails."""

START_RETRY_S = 1.0
"""Wait between two tries to start a child task."""

MAX_TASK_ID_CHARS = 100
"""Longest task id (``TaskRequest.task_id``)."""

GATE_TEXT_KEY = "gate_description"
"""A child request's metadata key holding its root task's description: the text the gatekeeper
reads as the task's own words (:func:`gate_description`)."""

REVISE_NOT_SUPPORTED = "revise_not_supported"
"""The code of a ``revise`` decision refused on a decomposed task (:func:`revise_refusal`)."""

_FAILED = frozenset({TaskStatus.FAILED.value, TaskStatus.CANCELLED.value})


class Decomposer(Protocol):
    """Splits a task into subtasks: the embedded rules in process
    (:class:`~officeray.decompose.EmbeddedDecomposer`), or the decomposer role's tier chain."""

    async def decompose(self, request: DecomposeRequest) -> Decomposition | Decomposed: ...


class Subtasks(Protocol):
    """Where child tasks run (on a cluster: any orchestrator shard, through the store)."""

    async def start(self, request: TaskRequest) -> None:
        """Create and start the child task ``request.task_id``; an existing one is left as it is."""
        ...

    async def wait(self, task_id: str, timeout_s: float) -> TaskRecord | None:
        """The child's record once final, or as it is after ``timeout_s``; None when it does not exist."""
        ...

    async def cancel(self, task_id: str, by: str) -> None:
        """Cancel the child (a final or unknown one: nothing happens)."""
        ...

    async def retry(self, task_id: str) -> bool:
        """Re-queue a dead-lettered child; False when it is not in the dead-letter queue."""
        ...

    def idle(self, tenant: str, priority: int) -> AbstractAsyncContextManager[None]:
        """A block in which the parent's run holds no task slot (it only waits for its children)."""
        ...


class SubtaskStartError(Exception):
    """A child task could not be started: its orchestrator did not answer, or its id names a task
    that is not this parent's child (another tenant's, or one submitted by hand): not retried."""


def gate_description(request: TaskRequest) -> str:
    """The text the gatekeeper reads as what the submitter wrote (hosts it names may receive
    non-GET requests): a task's description; for a child task its root task's description, which the
    coordinator keeps in its metadata (:data:`GATE_TEXT_KEY`): never the child's description, which
    holds its dependencies' results (fetched content must not name hosts for the task). A child
    without it gets ``""`` (no host counts as named)."""
    if request.parent_id is None:
        return request.description
    kept = request.metadata.get(GATE_TEXT_KEY)
    return kept if isinstance(kept, str) else ""


def revise_refusal(record: TaskRecord, decision: str) -> str | None:
    """Why a person's ``decision`` on ``record``'s escalated results is refused, or None: ``revise``
    on a decomposed task (its final review integrates the subtasks' results; there is no plan for
    the feedback to change). Accept or reject it, or submit the task again with the feedback."""
    if decision != "revise" or not record.subtasks:
        return None
    return (
        f"task {record.task_id!r} was decomposed into subtasks: its integrated result can be accepted "
        "or rejected, not revised (submit the task again with the feedback)"
    )


def retry_subtask_id(subtask_id: str, task_id: str) -> str:
    """The subtask id of a fresh child for a subtask whose child ``task_id`` ended cancelled or failed
    and cannot be re-queued: ``<subtask id>-r<n>``, ``n`` one more than ``task_id``'s."""
    found = re.search(rf"\.{re.escape(subtask_id)}-r(\d+)$", task_id)
    return f"{subtask_id}-r{int(found.group(1)) + 1 if found else 1}"


def child_task_id(parent_id: str, subtask_id: str) -> str:
    """``<parent id>.<subtask id>``; a parent id too long for that is shortened with a hash of it."""
    child = f"{parent_id}.{subtask_id}"
    if len(child) <= MAX_TASK_ID_CHARS:
        return child
    digest = hashlib.sha256(parent_id.encode()).hexdigest()[:12]
    keep = MAX_TASK_ID_CHARS - len(subtask_id) - len(digest) - 2
    return f"{parent_id[:keep]}-{digest}.{subtask_id}"


def integrated_result(final_output: Any, views: list[SubtaskView]) -> Any:
    """The parent's result: the reviewer's ``final_output`` when it already holds every subtask's
    result by subtask id (the embedded reviewer's does), else ``{"result": final_output,
    "subtasks": {id: result}}``."""
    by_id = {v.subtask_id: v.result for v in views}
    if isinstance(final_output, Mapping) and set(by_id) <= set(final_output):
        return final_output
    return {"result": final_output, "subtasks": by_id}


async def coordinate(run: _TaskRun, allowed: list[str], resuming: bool) -> TaskRecord | None:
    """Run ``run``'s task as a tree of subtasks when it is one: its final record; None when the task
    runs as one plan (no decomposer or subtasks port, a submitted plan, a child task, one subtask,
    or a resumed task that was not decomposed)."""
    wf = run.wf
    if wf.decomposer is None or wf.subtasks is None:
        return None
    if run.request.plan is not None or run.request.parent_id is not None:
        return None
    if not run.record.subtasks:
        if resuming:
            return None
        decomposition = await _decompose(run, allowed)
        if decomposition is None or len(decomposition.subtasks) < 2:
            return None
        await _record_tree(run, decomposition)
    return await _Coordinator(run, wf.subtasks).execute()


async def _decompose(run: _TaskRun, allowed: list[str]) -> Decomposition | None:
    """The decomposer's answer; None (the task runs as one plan) when it fails."""
    wf = run.wf
    assert wf.decomposer is not None
    request = DecomposeRequest(
        task_id=run.task_id,
        tenant=run.request.tenant,
        description=run.request.description,
        allowed_tools=allowed,
    )
    await run.durable()  # the task's acceptance is written before a model is asked
    with wf.tracer.start_as_current_span("decompose") as span:
        try:
            answer = await asyncio.wait_for(wf.decomposer.decompose(request), run._model_call_timeout_s())
        except Exception as exc:
            span.record_exception(exc)
            run.log(
                f"the decomposer failed ({type(exc).__name__}: {exc}); the task runs as one plan", "warning"
            )
            return None
        decomposition, call = (
            (answer.decomposition, answer.call) if isinstance(answer, Decomposed) else (answer, None)
        )
        span.set_attribute("officeray.subtasks", len(decomposition.subtasks))
    if call is not None:
        run.account(call, 0)
    return decomposition


async def _record_tree(run: _TaskRun, decomposition: Decomposition) -> None:
    record = run.record
    record.subtasks = [
        SubtaskView(
            subtask_id=s.subtask_id,
            task_id=child_task_id(run.task_id, s.subtask_id),
            description=s.description,
            dependencies=list(s.dependencies),
        )
        for s in decomposition.subtasks
    ]
    record.iterations = 1
    record.status = TaskStatus.EXECUTING
    run.log(
        f"decomposed into {len(record.subtasks)} subtasks: "
        + ", ".join(
            v.subtask_id + (f" (after {', '.join(v.dependencies)})" if v.dependencies else "")
            for v in record.subtasks
        )
    )
    await run.persist(
        "decomposed",
        subtasks=[
            {
                "subtask_id": s.subtask_id,
                "task_id": child_task_id(run.task_id, s.subtask_id),
                "dependencies": s.dependencies,
                "tool_hints": s.tool_hints,
            }
            for s in decomposition.subtasks
        ],
    )


class _Coordinator:
    """The subtask phase and the final review of one decomposed task's run."""

    def __init__(self, run: _TaskRun, port: Subtasks) -> None:
        self.run = run
        self.port = port
        self.record = run.record
        self.views = {v.subtask_id: v for v in run.record.subtasks}

    async def execute(self) -> TaskRecord:
        run, record = self.run, self.record
        pending_review = getattr(record, "review_pending", None)
        if record.status == TaskStatus.WAITING_REVIEW and pending_review is not None:
            return await self._final_review(pending_review)
        retrying = record.status == TaskStatus.QUEUED  # re-queued from the dead-letter queue
        record.status = TaskStatus.EXECUTING
        failure = await self._children_phase(retrying)
        if failure is not None:
            return await run.finish(TaskStatus.FAILED, error=failure)
        return await self._final_review(None)

    # -- children ------------------------------------------------------------------------------

    async def _children_phase(self, retrying: bool) -> str | None:
        """Run the children to their ends (no task slot held); why the parent fails, or None."""
        run = self.run
        try:
            async with self.port.idle(run.request.tenant, run.request.priority):
                async with asyncio.timeout(max(0.0, run.remaining_s())):
                    return await self._children(retrying)
        except TimeoutError:
            reason = run.duration_reached("while the subtasks ran")
            await asyncio.shield(self._cancel_children("maximum_duration_s"))
            return reason
        except asyncio.CancelledError:
            if run.cancelled_by is not None:  # a cancel of the parent: of its tree
                await asyncio.shield(self._cancel_children(run.cancelled_by))
            raise
        except SubtaskStartError as exc:  # the children started so far end with the parent
            await asyncio.shield(self._cancel_children(str(exc).split(":", 1)[0]))
            return str(exc)

    async def _children(self, retrying: bool) -> str | None:
        if retrying:
            refused = await self._retry_dead_lettered()
            if refused is not None:
                return refused
        for view in self.views.values():  # resumed: make sure every started child exists
            if view.status not in _FAILED and view.status not in (PENDING, TaskStatus.COMPLETED.value):
                await self._start(view, announce=False)
        watchers: dict[asyncio.Task[TaskRecord | None], str] = {}
        try:
            while True:
                failed = self._failed()
                if failed is not None:  # its running siblings end with the parent
                    reason = f"subtask {failed.subtask_id} failed: {failed.error or failed.status}"
                    await asyncio.shield(self._cancel_children(f"subtask {failed.subtask_id} failed"))
                    return reason
                if all(v.status == TaskStatus.COMPLETED.value for v in self.views.values()):
                    return None
                for view in self._ready():
                    await self._start(view, announce=True)
                self._watch(watchers)
                if not watchers:
                    return "no subtask can start: their dependencies never complete"
                done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    await self._update(self.views[watchers.pop(task)], task.result())
        finally:
            for task in watchers:
                task.cancel()

    def _failed(self) -> SubtaskView | None:
        """The first failed (or cancelled) child: the parent fails."""
        return next((v for v in self.views.values() if v.status in _FAILED), None)

    def _watch(self, watchers: dict[asyncio.Task[TaskRecord | None], str]) -> None:
        """A :meth:`Subtasks.wait` in flight for every started, unfinished child."""
        watched = set(watchers.values())
        for view in self.views.values():
            if view.status in (PENDING, TaskStatus.COMPLETED.value) or view.subtask_id in watched:
                continue
            watchers[asyncio.ensure_future(self.port.wait(view.task_id, WATCH_INTERVAL_S))] = view.subtask_id

    def _ready(self) -> list[SubtaskView]:
        done = {v.subtask_id for v in self.views.values() if v.status == TaskStatus.COMPLETED.value}
        return [v for v in self.views.values() if v.status == PENDING and set(v.dependencies) <= done]

    def _child_request(self, view: SubtaskView) -> TaskRequest:
        parent = self.run.request
        results = {v.subtask_id: v.result for v in self.views.values() if v.subtask_id in view.dependencies}
        description = substitute_results(view.description, results)[:MAX_TASK_DESCRIPTION_CHARS]
        return TaskRequest(
            description=description,
            task_id=view.task_id,
            tenant=parent.tenant,
            allowed_tools=parent.allowed_tools,
            max_iterations=parent.max_iterations,
            token_budget=parent.token_budget,
            retry_policy=parent.retry_policy,
            priority=parent.priority,
            submitted_by=parent.submitted_by,
            traceparent=inject_context().get("traceparent"),
            metadata={
                "parent_id": self.run.task_id,
                "subtask_id": view.subtask_id,
                GATE_TEXT_KEY: gate_description(parent),
            },
            parent_id=self.run.task_id,
        )

    async def _start(self, view: SubtaskView, *, announce: bool) -> None:
        request = self._child_request(view)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await self.port.start(request)
                break
            except SubtaskStartError as exc:
                raise SubtaskStartError(f"subtask {view.subtask_id} failed: {exc}") from None
            except Exception as exc:
                if attempt == START_ATTEMPTS:
                    raise SubtaskStartError(
                        f"subtask {view.subtask_id} failed: its task {view.task_id} could not be started: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
                logger.warning(
                    "task %s: starting %s failed (%s); retrying", self.run.task_id, view.task_id, exc
                )
                await self.run.wf._sleep(START_RETRY_S)
        if not announce:
            return
        view.status = TaskStatus.QUEUED.value
        view.started_at = self.run.wf._now()
        self.run.log(f"subtask {view.subtask_id} started as task {view.task_id}")
        await self.run.persist("subtask_started", subtask_id=view.subtask_id, task_id=view.task_id)

    async def _update(self, view: SubtaskView, child: TaskRecord | None) -> None:
        """Follow a child's record into its view (persisted when its status changed)."""
        if child is None:  # not stored (yet): start it (again)
            await self._start(view, announce=False)
            return
        status = child.status.value
        if status == view.status:
            return
        view.status = status
        if view.started_at is None:
            view.started_at = child.created_at
        if not child.status.is_final:
            await self.run.persist("subtask_status", subtask_id=view.subtask_id, subtask_status=status)
            return
        view.finished_at = child.finished_at or self.run.wf._now()
        view.result = child.result
        view.error = child.error
        level = "info" if child.status == TaskStatus.COMPLETED else "error"
        self.run.log(
            f"subtask {view.subtask_id} {status}" + (f": {child.error}" if child.error else ""), level
        )
        await self.run.persist(
            "subtask_finished", subtask_id=view.subtask_id, task_id=view.task_id, subtask_status=status
        )

    async def _retry_dead_lettered(self) -> str | None:
        """A parent re-queued from the dead-letter queue runs its failed and cancelled subtasks again:
        a dead-lettered child is re-queued; one that never started waits for its dependencies again;
        one that ended otherwise (cancelled, or failed and not in the dead-letter queue) gets a fresh
        child task (:func:`retry_subtask_id`). Why the parent fails (a child's retry is over its
        tenant's limit: the children re-queued so far are cancelled), or None."""
        for view in self.views.values():
            if view.status not in _FAILED:
                continue
            if view.started_at is not None and view.status == TaskStatus.FAILED.value:
                try:
                    requeued = await self.port.retry(view.task_id)
                except LimitExceededError as exc:
                    reason = f"subtask {view.subtask_id} failed: {exc}"
                    await asyncio.shield(self._cancel_children(f"subtask {view.subtask_id} failed"))
                    return reason
                if requeued:
                    self._reset(view, TaskStatus.QUEUED.value)
                    self.run.log(
                        f"subtask {view.subtask_id}: task {view.task_id} re-queued from the dead-letter queue"
                    )
                    await self.run.persist(
                        "subtask_retried", subtask_id=view.subtask_id, task_id=view.task_id
                    )
                    continue
            replaced, ended = None, view.status
            if view.started_at is not None:  # its child ended for good: a fresh one runs the subtask
                replaced = view.task_id
                view.task_id = child_task_id(self.run.task_id, retry_subtask_id(view.subtask_id, replaced))
                view.started_at = None
            self._reset(view, PENDING)
            self.run.log(
                f"subtask {view.subtask_id} waits to start again"
                + (f" as task {view.task_id} (task {replaced} ended {ended})" if replaced else "")
            )
            await self.run.persist(
                "subtask_retried", subtask_id=view.subtask_id, task_id=view.task_id, replaces=replaced
            )
        return None

    @staticmethod
    def _reset(view: SubtaskView, status: str) -> None:
        view.status, view.error, view.finished_at, view.result = status, None, None, None

    async def _cancel_children(self, by: str) -> None:
        """Cancel every unfinished child (and mark the pending ones): the tree ends with its parent."""
        for view in self.views.values():
            if view.status == TaskStatus.COMPLETED.value or view.status in _FAILED:
                continue
            if view.status != PENDING:
                try:
                    await self.port.cancel(view.task_id, by)
                except Exception as exc:
                    logger.warning("task %s: cancelling %s failed: %s", self.run.task_id, view.task_id, exc)
            view.status = TaskStatus.CANCELLED.value
            view.finished_at = self.run.wf._now()
            view.error = f"cancelled by {by}"

    # -- the final review ----------------------------------------------------------------------

    def _review_input(self) -> tuple[Plan, list[StepResult]]:
        """One pseudo-step per subtask (no dependencies: every subtask's result is part of the answer)."""
        task_id = self.run.task_id
        steps, results = [], []
        for view in self.views.values():
            key = f"{task_id}:subtask:{view.subtask_id}"
            steps.append(
                PlanStep(
                    step_id=view.subtask_id,
                    action=SUBTASK_ACTION,
                    inputs={"description": view.description, "task_id": view.task_id},
                    idempotency_key=key,
                )
            )
            results.append(
                StepResult(
                    step_id=view.subtask_id,
                    action=SUBTASK_ACTION,
                    idempotency_key=key,
                    status=StepStatus.SUCCEEDED,
                    attempts=1,
                    output=view.result,
                    started_at=view.started_at,
                    finished_at=view.finished_at,
                )
            )
        plan = Plan(task_id=task_id, plan_id=f"{task_id}-subtasks", steps=steps)
        return plan, results

    async def _final_review(self, pending_review: Any) -> TaskRecord:
        run, wf = self.run, self.run.wf
        plan, results = self._review_input()
        max_iterations = run.request.max_iterations or wf.settings.max_iterations
        iteration = max(1, self.record.iterations)
        feedback = "no feedback"
        if pending_review is not None:  # resumed while a person reviews the integrated result
            waited = await run._await_review(pending_review)
            if isinstance(waited, TaskRecord):
                return waited
            feedback, iteration = "; ".join(waited), iteration + 1
        while iteration <= max_iterations:
            self.record.iterations = iteration
            stop = run.over_policy()
            if stop:
                return await run.finish(TaskStatus.FAILED, error=stop)
            review = await run._review(iteration, plan, results)
            iteration += 1
            if review is None:
                feedback = "the reviewer did not answer"
                continue
            escalated = escalation_reason(review, wf.settings.escalation.confidence_threshold)
            if escalated is not None:
                proposed = integrated_result(review.final_output, list(self.views.values()))
                decided = await run._escalate(iteration - 1, escalated, proposed)
                if isinstance(decided, TaskRecord):
                    return decided
                feedback = "; ".join(decided)
                continue
            if review.verdict == ReviewVerdict.APPROVED:
                result = integrated_result(review.final_output, list(self.views.values()))
                return await run.finish(TaskStatus.COMPLETED, result=result)
            if review.verdict == ReviewVerdict.FAILED:
                return await run.finish(
                    TaskStatus.FAILED, error=review.feedback or "the reviewer failed the task"
                )
            feedback = review.feedback or "the reviewer asked for a revision"
        return await run.finish(
            TaskStatus.FAILED,
            error=f"the subtasks' results were not approved after {max_iterations} iteration(s); "
            f"last feedback: {feedback}",
        )
