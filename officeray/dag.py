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
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
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


async def run_dag(
    steps: list[PlanStep],
    run_step: RunStep,
    on_skip: Callable[[StepResult], Awaitable[None]] | None = None,
) -> dict[str, StepResult]:
    """Run ``steps`` (an acyclic plan, already validated) and return every step's result by id.

    ``run_step(step, resolved_inputs)`` runs one step and returns its result; it must not raise.
    ``on_skip`` is told about each step skipped because a dependency failed.
    """
    by_id = {s.step_id: s for s in steps}
    results: dict[str, StepResult] = {}
    outputs: dict[str, Any] = {}
    running: dict[asyncio.Task[StepResult], PlanStep] = {}
    pending = list(steps)  # plan order breaks ties
    exclusive_running = False

    async def skip(step: PlanStep, failed_dep: str) -> None:
        result = _skipped(step, failed_dep)
        results[step.step_id] = result
        if on_skip is not None:
            await on_skip(result)

    try:
        while pending or running:
            progressed = True
            while progressed:
                progressed = False
                for step in list(pending):
                    failed = next(
                        (d for d in step.dependencies if d in results and results[d].status != StepStatus.SUCCEEDED),
                        None,
                    )
                    if failed is not None:
                        pending.remove(step)
                        await skip(step, failed)
                        progressed = True
                        continue
                    if any(d not in results for d in step.dependencies):
                        continue
                    if exclusive_running or (not step.parallelizable and running):
                        continue
                    pending.remove(step)
                    try:
                        inputs = resolve_inputs(step.inputs, outputs)
                    except InputReferenceError as exc:
                        results[step.step_id] = _bad_reference(step, exc)
                        progressed = True
                        continue
                    task = asyncio.ensure_future(run_step(step, inputs))
                    running[task] = step
                    if not step.parallelizable:
                        exclusive_running = True
                        break
            if not running:
                if pending:  # only reachable with dependencies outside the plan
                    for step in pending:
                        missing = next((d for d in step.dependencies if d not in by_id), "a step in a cycle")
                        await skip(step, missing)
                    pending.clear()
                break
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                step = running.pop(task)
                result = task.result()
                results[step.step_id] = result
                if result.status == StepStatus.SUCCEEDED:
                    outputs[step.step_id] = result.output
                if not step.parallelizable:
                    exclusive_running = False
    finally:
        for task in running:
            task.cancel()
    return {s.step_id: results[s.step_id] for s in steps}
