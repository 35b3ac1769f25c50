"""Fakes for the workflow's ports, shipped with the package so users test their own code with them.

* :class:`ScriptedPlanner` / :class:`ScriptedReviewer` answer from a script (plans, reviews, or
  exceptions to raise) and record every request; :meth:`assert_consumed` fails a test that ended
  with answers left over.
* :class:`InMemoryStore` keeps records, events, step results, leases, the dead-letter queue and
  tenant usage in dicts.
* :class:`InMemoryApprovals` is the approvals port: a test decides steps with ``decide``.
* :class:`FunctionExecutor` runs steps by calling a Python function per action.
* :func:`in_memory_tracer` gives an OpenTelemetry tracer whose finished spans can be inspected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from officeray.contracts import (
    ErrorType,
    ModelUsage,
    Plan,
    PlanMetadata,
    PlanRequest,
    PlanStep,
    Review,
    ReviewRequest,
    StepError,
    StepOutcome,
    StepResult,
    TaskRecord,
    TaskStatus,
)

Scripted = Any  # an answer, an exception to raise, or a callable(request) -> answer


class _Script:
    def __init__(self, kind: str, answers: Iterable[Scripted]) -> None:
        self.kind = kind
        self.answers = list(answers)
        self.requests: list[Any] = []

    def next(self, request: Any) -> Any:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(
                f"{self.kind} called {len(self.requests)} time(s) but the script has no more answers"
            )
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            answer = answer(request)
        return answer

    def assert_consumed(self) -> None:
        if self.answers:
            raise AssertionError(f"{self.kind} script ended with {len(self.answers)} unused answer(s)")


class ScriptedPlanner:
    """Answers ``plan`` calls from ``answers`` in order: a Plan, an exception, or ``f(request) -> Plan``."""

    def __init__(self, answers: Iterable[Scripted]) -> None:
        self._script = _Script("planner", answers)

    @property
    def requests(self) -> list[PlanRequest]:
        return self._script.requests

    async def plan(self, request: PlanRequest) -> Plan:
        return self._script.next(request)

    def assert_consumed(self) -> None:
        self._script.assert_consumed()


class ScriptedReviewer:
    """Answers ``review`` calls from ``answers`` in order: a Review, an exception, or ``f(request)``."""

    def __init__(self, answers: Iterable[Scripted]) -> None:
        self._script = _Script("reviewer", answers)

    @property
    def requests(self) -> list[ReviewRequest]:
        return self._script.requests

    async def review(self, request: ReviewRequest) -> Review:
        return self._script.next(request)

    def assert_consumed(self) -> None:
        self._script.assert_consumed()


class InMemoryStore:
    """The workflow's Store port in memory. ``events[task_id]`` lists ``(kind, data)`` in order.

    ``leases[task_id]`` is the owner holding the task (a test sets it; a fenced write of another
    owner is refused); ``dead_letters[task_id]`` the reason a failed task was dead-lettered with, and
    ``usage[tenant]`` the model usage of the tenant's finished tasks.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, TaskRecord] = {}
        self.events: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.step_results: dict[str, StepResult] = {}
        self.leases: dict[str, str] = {}
        self.dead_letters: dict[str, str] = {}
        self.usage: dict[str, ModelUsage] = {}

    # Like SqlStore, the writes take their snapshot of the record when called, before any await
    # (the Store port's contract): the workflow may change the record while the write is pending.

    def save_task(self, record: TaskRecord) -> Coroutine[Any, Any, None]:
        return self._put_task(record.model_copy(deep=True))

    async def _put_task(self, snapshot: TaskRecord) -> None:
        self.tasks[snapshot.task_id] = snapshot

    async def get_task(self, task_id: str) -> TaskRecord | None:
        return self.tasks.get(task_id)

    def save_transition(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Coroutine[Any, Any, bool]:
        return self._put_transition(record.model_copy(deep=True), kind, dict(data), owner)

    async def _put_transition(
        self, snapshot: TaskRecord, kind: str, data: dict[str, Any], owner: str | None
    ) -> bool:
        if owner is not None and self.leases.get(snapshot.task_id) != owner:
            return False
        self.tasks[snapshot.task_id] = snapshot
        self.events.setdefault(snapshot.task_id, []).append((kind, data))
        return True

    def finish_task(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Coroutine[Any, Any, bool]:
        """The final record and event, a failed task's dead-letter entry and the usage, at once."""
        if not record.status.is_final:
            raise ValueError(f"the end of a run needs a final record, not a {record.status.value} one")
        return self._put_end(record.model_copy(deep=True), kind, dict(data), owner)

    async def _put_end(
        self, snapshot: TaskRecord, kind: str, data: dict[str, Any], owner: str | None
    ) -> bool:
        if not await self._put_transition(snapshot, kind, data, owner):
            return False
        if snapshot.status == TaskStatus.FAILED:
            self.dead_letters[snapshot.task_id] = snapshot.error or "failed"
        if snapshot.usage.calls:
            self.usage[snapshot.tenant] = self.usage.get(snapshot.tenant, ModelUsage()) + snapshot.usage
        return True

    async def append_event(self, task_id: str, kind: str, data: dict[str, Any]) -> None:
        self.events.setdefault(task_id, []).append((kind, dict(data)))

    def save_step_result(self, task_id: str, result: StepResult) -> Coroutine[Any, Any, None]:
        return self._put_step_result(result.model_copy(deep=True))

    async def _put_step_result(self, snapshot: StepResult) -> None:
        self.step_results[snapshot.idempotency_key] = snapshot

    async def get_step_result(self, idempotency_key: str) -> StepResult | None:
        found = self.step_results.get(idempotency_key)
        return None if found is None else found.model_copy(deep=True)

    def kinds(self, task_id: str) -> list[str]:
        return [kind for kind, _ in self.events.get(task_id, [])]


class InMemoryApprovals:
    """The workflow's Approvals port: a test decides with :meth:`decide`; ``requested`` lists waits."""

    def __init__(self) -> None:
        self.decisions: dict[tuple[str, str], dict[str, Any]] = {}
        self.requested: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def decide(self, task_id: str, step_id: str, decision: str, by: str = "tester", reason: str = "") -> None:
        self.decisions[(task_id, step_id)] = {
            "decision": decision,
            "decided_by": by,
            "reason": reason,
            "decided_at": "2026-01-01T00:00:00+00:00",
        }
        self._changed.set()

    async def wait(self, task_id: str, step_id: str, timeout_s: float) -> dict[str, Any] | None:
        self.requested.append((task_id, step_id))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (task_id, step_id) not in self.decisions:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return None
        return self.decisions[(task_id, step_id)]


StepFunction = Callable[[dict[str, Any]], Any | Awaitable[Any]]


class ToolFailed(Exception):
    """Raise from a :class:`FunctionExecutor` function to fail the step with a given error type."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class FunctionExecutor:
    """Runs a step by calling ``functions[action](inputs)`` (sync or async).

    A :class:`ToolFailed` raised by the function fails the attempt with its type; any other
    exception fails it as ``tool_error``. ``calls`` records ``(step_id, inputs)`` in call order and
    ``max_parallel`` the most steps seen running at once.
    """

    def __init__(self, functions: Mapping[str, StepFunction]) -> None:
        self.functions = dict(functions)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.running = 0
        self.max_parallel = 0

    async def execute(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], trace_carrier: dict[str, str]
    ) -> StepOutcome:
        self.calls.append((step.step_id, inputs))
        self.running += 1
        self.max_parallel = max(self.max_parallel, self.running)
        try:
            value = self.functions[step.action](inputs)
            if asyncio.iscoroutine(value):
                value = await value
            return StepOutcome(output=value)
        except ToolFailed as exc:
            return StepOutcome(error=StepError(type=exc.error_type, message=str(exc)))
        except Exception as exc:
            return StepOutcome(error=StepError(type=ErrorType.TOOL_ERROR, message=str(exc)))
        finally:
            self.running -= 1


def in_memory_tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    """A tracer on a private provider, and the exporter that holds its finished spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("officeray.testing"), exporter


def make_plan(task_id: str, steps: list[dict[str, Any]], iteration: int = 1) -> Plan:
    """A plan from short step dicts (``step_id`` and ``action`` required), for tests."""
    full = []
    for raw in steps:
        step = {"inputs": {}, "idempotency_key": f"{task_id}:{iteration}:{raw['step_id']}", **raw}
        full.append(PlanStep.model_validate(step))
    return Plan(
        plan_id=f"{task_id}-plan-{iteration}",
        task_id=task_id,
        confidence=1.0,
        metadata=PlanMetadata(required_tools=sorted({s.action for s in full})),
        steps=full,
    )
