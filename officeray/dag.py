"""DAG scheduling of plan steps: pure graph checks, input references, and an async scheduler.

Rules the scheduler follows:

* a step starts as soon as all of its dependencies have succeeded, so independent steps run in
  parallel (as many at once as the executor behind ``run_step`` can take);
* a step with ``parallelizable: false`` runs alone: it waits until nothing else runs, and nothing
  else starts while it runs;
* when a step fails, every step that depends on it (directly or not) is ``skipped`` with error type
  ``dependency_failed``; steps on other branches go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from officeray.contracts import ErrorType, PlanStep, StepError, StepReference, StepResult, StepStatus

REFERENCE_KEYS = frozenset({"from_step", "path"})


class InputReferenceError(LookupError):
    """A reference names a step or a path that has no value."""


def find_cycle(steps: Iterable[PlanStep]) -> list[str] | None:
    """A dependency cycle as a list of step ids (first id repeated at the end), or ``None``."""
    deps = {s.step_id: [d for d in s.dependencies] for s in steps}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in deps.get(node, []):
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if state.get(dep) is None:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in deps:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and "from_step" in value and set(value) <= REFERENCE_KEYS


def iter_references(value: Any) -> Iterable[StepReference]:
    """Every reference object inside an inputs structure."""
    if is_reference(value):
        try:
            yield StepReference.model_validate(value)
        except ValidationError:
            return  # malformed: the tool's input model reports it
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_references(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_references(item)


def _lookup(output: Any, path: str | None, ref: StepReference) -> Any:
    if not path:
        return output
    node = output
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isascii() and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise InputReferenceError(f"step {ref.from_step} output has no {path!r}")
    return node


def resolve_inputs(inputs: Any, outputs: Mapping[str, Any]) -> Any:
    """``inputs`` with every reference replaced by the referenced step's output value."""
    if is_reference(inputs):
        ref = StepReference.model_validate(inputs)
        if ref.from_step not in outputs:
            raise InputReferenceError(f"step {ref.from_step} has no output")
        return _lookup(outputs[ref.from_step], ref.path, ref)
    if isinstance(inputs, dict):
        return {key: resolve_inputs(value, outputs) for key, value in inputs.items()}
    if isinstance(inputs, list):
        return [resolve_inputs(value, outputs) for value in inputs]
    return inputs


RunStep = Callable[[PlanStep, dict[str, Any]], Awaitable[StepResult]]


def _skipped(step: PlanStep, failed_dep: str) -> StepResult:
    return StepResult(
        step_id=step.step_id,
        action=step.action,
        idempotency_key=step.idempotency_key,
        status=StepStatus.SKIPPED,
        error=StepError(type=ErrorType.DEPENDENCY_FAILED, message=f"dependency {failed_dep} did not succeed"),
    )


def _bad_reference(step: PlanStep, exc: Exception) -> StepResult:
    return StepResult(
        step_id=step.step_id,
        action=step.action,
        idempotency_key=step.idempotency_key,
        status=StepStatus.FAILED,
        error=StepError(type=ErrorType.BAD_INPUT, message=str(exc)),
    )


class _Scheduler:
    """The state of one DAG run; see :func:`run_dag`."""

    def __init__(
        self,
        steps: list[PlanStep],
        run_step: RunStep,
        on_skip: Callable[[StepResult], Awaitable[None]] | None,
    ) -> None:
        self.steps = steps
        self.by_id = {s.step_id: s for s in steps}
        self.run_step = run_step
        self.on_skip = on_skip
        self.results: dict[str, StepResult] = {}
        self.outputs: dict[str, Any] = {}
        self.running: dict[asyncio.Task[StepResult], PlanStep] = {}
        self.pending = list(steps)  # plan order breaks ties
        self.exclusive_running = False

    async def skip(self, step: PlanStep, failed_dep: str) -> None:
        result = _skipped(step, failed_dep)
        self.results[step.step_id] = result
        if self.on_skip is not None:
            await self.on_skip(result)

    def _failed_dependency(self, step: PlanStep) -> str | None:
        for dep in step.dependencies:
            if dep in self.results and self.results[dep].status != StepStatus.SUCCEEDED:
                return dep
        return None

    def _can_start(self, step: PlanStep) -> bool:
        if any(d not in self.results for d in step.dependencies):
            return False
        return not (self.exclusive_running or (not step.parallelizable and self.running))

    def _start(self, step: PlanStep) -> None:
        self.pending.remove(step)
        try:
            inputs = resolve_inputs(step.inputs, self.outputs)
        except (InputReferenceError, ValidationError, ValueError) as exc:
            self.results[step.step_id] = _bad_reference(step, exc)
            return
        self.running[asyncio.ensure_future(self.run_step(step, inputs))] = step
        if not step.parallelizable:
            self.exclusive_running = True

    async def launch_ready(self) -> None:
        """Skip what can no longer run and start what can, until nothing changes."""
        progressed = True
        while progressed:
            progressed = False
            for step in list(self.pending):
                failed = self._failed_dependency(step)
                if failed is not None:
                    self.pending.remove(step)
                    await self.skip(step, failed)
                    progressed = True
                elif self._can_start(step):
                    self._start(step)
                    progressed = True
                    if self.exclusive_running:
                        return

    async def collect(self) -> None:
        done, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            step = self.running.pop(task)
            result = task.result()
            self.results[step.step_id] = result
            if result.status == StepStatus.SUCCEEDED:
                self.outputs[step.step_id] = result.output
            if not step.parallelizable:
                self.exclusive_running = False

    async def run(self) -> dict[str, StepResult]:
        try:
            while self.pending or self.running:
                await self.launch_ready()
                if not self.running:
                    # only reachable with dependencies that no step of the plan satisfies
                    for step in list(self.pending):
                        missing = next(
                            (d for d in step.dependencies if d not in self.by_id), "a step in a cycle"
                        )
                        await self.skip(step, missing)
                    self.pending.clear()
                    break
                await self.collect()
        finally:
            for task in self.running:
                task.cancel()
        return {s.step_id: self.results[s.step_id] for s in self.steps}


async def run_dag(
    steps: list[PlanStep],
    run_step: RunStep,
    on_skip: Callable[[StepResult], Awaitable[None]] | None = None,
) -> dict[str, StepResult]:
    """Run ``steps`` (an acyclic plan, already validated) and return every step's result by id.

    ``run_step(step, resolved_inputs)`` runs one step and returns its result; it must not raise.
    ``on_skip`` is told about each step skipped because a dependency failed.
    """
    return await _Scheduler(steps, run_step, on_skip).run()
