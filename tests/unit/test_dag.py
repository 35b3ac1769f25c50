"""The DAG scheduler: parallelism, ordering, failure propagation, exclusive steps, input references.

Concurrency is asserted with events and barriers (a step that needs another one running at the
same time waits for it), never with sleeps and timings. Every wait is bounded so that a
scheduling bug fails fast instead of hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from officeray.contracts import ErrorType, PlanStep, StepError, StepResult, StepStatus
from officeray.dag import InputReferenceError, find_cycle, iter_references, resolve_inputs, run_dag
from officeray.testing import make_plan

WAIT_S = 2.0
"""Upper bound of any wait in these tests; reached only when the scheduler misbehaves."""


def steps(*specs: dict[str, Any]) -> list[PlanStep]:
    """Steps that may run in parallel unless a spec says ``parallelizable: False`` (the schema's
    default is False; these tests are about the scheduler, so they state it)."""
    return make_plan("t", [{"action": "python_exec", "parallelizable": True, **spec} for spec in specs]).steps


Body = Callable[[PlanStep, dict[str, Any]], Awaitable[Any]]


class Runner:
    """A ``run_step`` for :func:`run_dag`: runs ``bodies[step_id]`` and records what happened."""

    def __init__(self, bodies: dict[str, Body] | None = None, fail: set[str] | None = None) -> None:
        self.bodies = bodies or {}
        self.fail = fail or set()
        self.started: list[str] = []
        self.finished: list[str] = []
        self.inputs: dict[str, dict[str, Any]] = {}
        self.running: set[str] = set()
        self.overlaps: list[set[str]] = []

    async def __call__(self, step: PlanStep, inputs: dict[str, Any]) -> StepResult:
        self.started.append(step.step_id)
        self.inputs[step.step_id] = inputs
        self.running.add(step.step_id)
        self.overlaps.append(set(self.running))
        try:
            body = self.bodies.get(step.step_id)
            if body is not None:
                output = await body(step, inputs)
            else:
                for _ in range(3):  # yield, so that a wrongly started step would overlap this one
                    await asyncio.sleep(0)
                output = {"value": step.step_id}
        finally:
            self.running.discard(step.step_id)
            self.finished.append(step.step_id)
        if step.step_id in self.fail:
            return StepResult(
                step_id=step.step_id,
                action=step.action,
                idempotency_key=step.idempotency_key,
                status=StepStatus.FAILED,
                attempts=1,
                error=StepError(type=ErrorType.TOOL_ERROR, message="boom"),
            )
        return StepResult(
            step_id=step.step_id,
            action=step.action,
            idempotency_key=step.idempotency_key,
            status=StepStatus.SUCCEEDED,
            attempts=1,
            output=output,
        )


async def run(plan_steps: list[PlanStep], runner: Runner, **kwargs: Any) -> dict[str, StepResult]:
    return await asyncio.wait_for(run_dag(plan_steps, runner, **kwargs), WAIT_S)


# -- scheduling ----------------------------------------------------------------------------------


async def test_independent_steps_run_at_the_same_time() -> None:
    barrier = asyncio.Barrier(3)

    async def meet(step: PlanStep, inputs: dict[str, Any]) -> Any:
        # Passes only when all three steps are running at once.
        await asyncio.wait_for(barrier.wait(), WAIT_S)
        return step.step_id

    runner = Runner({"a": meet, "b": meet, "c": meet})
    results = await run(steps({"step_id": "a"}, {"step_id": "b"}, {"step_id": "c"}), runner)
    assert {r.status for r in results.values()} == {StepStatus.SUCCEEDED}
    assert {"a", "b", "c"} in runner.overlaps


async def test_dependant_waits_for_its_dependencies() -> None:
    release = asyncio.Event()

    async def slow(step: PlanStep, inputs: dict[str, Any]) -> Any:
        await asyncio.wait_for(release.wait(), WAIT_S)
        return "slow"

    async def fast(step: PlanStep, inputs: dict[str, Any]) -> Any:
        # c must not have started yet: one of its dependencies (a) is still blocked.
        assert "c" not in runner.started
        release.set()
        return "fast"

    runner = Runner({"a": slow, "b": fast})
    plan_steps = steps({"step_id": "a"}, {"step_id": "b"}, {"step_id": "c", "dependencies": ["a", "b"]})
    results = await run(plan_steps, runner)
    assert [r.status for r in results.values()] == [StepStatus.SUCCEEDED] * 3
    assert runner.started[-1] == "c"
    assert runner.finished.index("a") < runner.started.index("c")
    assert runner.finished.index("b") < runner.started.index("c")


async def test_chain_runs_in_dependency_order_regardless_of_plan_order() -> None:
    runner = Runner()
    plan_steps = steps(
        {"step_id": "c", "dependencies": ["b"]},
        {"step_id": "b", "dependencies": ["a"]},
        {"step_id": "a"},
    )
    results = await run(plan_steps, runner)
    assert runner.started == ["a", "b", "c"]
    assert list(results) == ["c", "b", "a"]  # results come back in plan order


async def test_failure_skips_dependants_transitively_and_other_branches_go_on() -> None:
    skipped: list[StepResult] = []

    async def on_skip(result: StepResult) -> None:
        skipped.append(result)

    runner = Runner(fail={"a"})
    plan_steps = steps(
        {"step_id": "a"},
        {"step_id": "b", "dependencies": ["a"]},
        {"step_id": "c", "dependencies": ["b"]},
        {"step_id": "x"},
        {"step_id": "y", "dependencies": ["x"]},
    )
    results = await run(plan_steps, runner, on_skip=on_skip)

    assert results["a"].status == StepStatus.FAILED
    for step_id in ("b", "c"):
        assert results[step_id].status == StepStatus.SKIPPED
        assert results[step_id].error is not None
        assert results[step_id].error.type == ErrorType.DEPENDENCY_FAILED
        assert results[step_id].attempts == 0
    assert "dependency a" in results["b"].error.message
    assert "dependency b" in results["c"].error.message
    assert results["x"].status == StepStatus.SUCCEEDED
    assert results["y"].status == StepStatus.SUCCEEDED
    assert sorted(runner.started) == ["a", "x", "y"]
    assert sorted(r.step_id for r in skipped) == ["b", "c"]


async def test_independent_branch_keeps_running_while_a_failure_is_handled() -> None:
    # x is still running when a fails; b is skipped at once, x finishes normally.
    a_failed = asyncio.Event()

    async def a_body(step: PlanStep, inputs: dict[str, Any]) -> Any:
        a_failed.set()
        return None

    async def x_body(step: PlanStep, inputs: dict[str, Any]) -> Any:
        await asyncio.wait_for(a_failed.wait(), WAIT_S)
        return "x done"

    runner = Runner({"a": a_body, "x": x_body}, fail={"a"})
    results = await run(
        steps({"step_id": "x"}, {"step_id": "a"}, {"step_id": "b", "dependencies": ["a"]}), runner
    )
    assert results["x"].output == "x done"
    assert results["b"].status == StepStatus.SKIPPED


async def test_non_parallelizable_step_runs_alone() -> None:
    runner = Runner()
    plan_steps = steps(
        {"step_id": "a"},
        {"step_id": "b"},
        {"step_id": "solo", "parallelizable": False},
        {"step_id": "c"},
        {"step_id": "d"},
    )
    results = await run(plan_steps, runner)
    assert all(r.status == StepStatus.SUCCEEDED for r in results.values())
    # Whenever solo was running, nothing else was; and it ran while nothing else did.
    assert all(overlap == {"solo"} for overlap in runner.overlaps if "solo" in overlap)
    index = runner.started.index("solo")
    assert set(runner.started[:index]) == set(runner.finished[:index])  # all before it had finished
    assert {"a", "b"} in runner.overlaps  # the parallel steps did run together


async def test_nothing_starts_while_an_exclusive_step_runs() -> None:
    release = asyncio.Event()

    async def solo(step: PlanStep, inputs: dict[str, Any]) -> Any:
        # Give the scheduler every chance to (wrongly) start the others.
        for _ in range(10):
            await asyncio.sleep(0)
        assert runner.started == ["solo"]
        release.set()
        return "solo"

    barrier = asyncio.Barrier(2)

    async def meet(step: PlanStep, inputs: dict[str, Any]) -> Any:
        await asyncio.wait_for(barrier.wait(), WAIT_S)
        return step.step_id

    runner = Runner({"solo": solo, "b": meet, "c": meet})
    await run(steps({"step_id": "solo", "parallelizable": False}, {"step_id": "b"}, {"step_id": "c"}), runner)
    assert release.is_set()
    assert runner.started[0] == "solo"
    assert {"b", "c"} in runner.overlaps  # the parallel ones still ran together afterwards


async def test_two_exclusive_steps_never_overlap() -> None:
    runner = Runner()
    await run(
        steps(
            {"step_id": "p", "parallelizable": False},
            {"step_id": "q", "parallelizable": False},
            {"step_id": "r"},
        ),
        runner,
    )
    for overlap in runner.overlaps:
        if overlap & {"p", "q"}:
            assert len(overlap) == 1, overlap


async def test_outputs_of_dependencies_are_substituted_into_inputs() -> None:
    async def first(step: PlanStep, inputs: dict[str, Any]) -> Any:
        return {"stdout": "42\n", "lines": ["x", "y"]}

    runner = Runner({"a": first})
    plan_steps = steps(
        {"step_id": "a", "inputs": {"code": "print(42)"}},
        {
            "step_id": "b",
            "inputs": {"code": "print(input())", "stdin": {"from_step": "a", "path": "stdout"}},
            "dependencies": ["a"],
        },
    )
    results = await run(plan_steps, runner)
    assert results["b"].status == StepStatus.SUCCEEDED
    assert runner.inputs["b"] == {"code": "print(input())", "stdin": "42\n"}


async def test_bad_reference_at_run_time_fails_the_step_and_skips_its_dependants() -> None:
    runner = Runner()  # a's output is {"value": "a"}: there is no "missing" key
    plan_steps = steps(
        {"step_id": "a"},
        {"step_id": "b", "inputs": {"stdin": {"from_step": "a", "path": "missing"}}, "dependencies": ["a"]},
        {"step_id": "c", "dependencies": ["b"]},
    )
    results = await run(plan_steps, runner)
    assert results["b"].status == StepStatus.FAILED
    assert results["b"].error is not None
    assert results["b"].error.type == ErrorType.BAD_INPUT
    assert "missing" in results["b"].error.message
    assert results["c"].status == StepStatus.SKIPPED
    assert runner.started == ["a"]


async def test_dependency_outside_the_plan_is_skipped_not_hung() -> None:
    runner = Runner()
    results = await run(steps({"step_id": "a"}, {"step_id": "b", "dependencies": ["ghost"]}), runner)
    assert results["a"].status == StepStatus.SUCCEEDED
    assert results["b"].status == StepStatus.SKIPPED
    assert "ghost" in results["b"].error.message


async def test_cancelling_the_dag_cancels_running_steps() -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def forever(step: PlanStep, inputs: dict[str, Any]) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    dag = asyncio.ensure_future(run_dag(steps({"step_id": "a"}), Runner({"a": forever})))
    await asyncio.wait_for(started.wait(), WAIT_S)
    dag.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dag
    await asyncio.wait_for(cancelled.wait(), WAIT_S)


# -- input references ----------------------------------------------------------------------------

OUTPUTS = {
    "s1": {"value": 7, "nested": {"deep": {"x": "y"}}, "items": [10, {"name": "second"}]},
    "s2": "plain text",
}


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        pytest.param({"from_step": "s1"}, OUTPUTS["s1"], id="whole-output"),
        pytest.param({"from_step": "s2"}, "plain text", id="whole-scalar-output"),
        pytest.param({"from_step": "s1", "path": "value"}, 7, id="path"),
        pytest.param({"from_step": "s1", "path": "nested.deep.x"}, "y", id="nested-path"),
        pytest.param({"from_step": "s1", "path": "items.0"}, 10, id="list-index"),
        pytest.param({"from_step": "s1", "path": "items.1.name"}, "second", id="list-index-then-key"),
        pytest.param(
            {"a": {"from_step": "s1", "path": "value"}, "b": [{"from_step": "s2"}, 3], "c": "keep"},
            {"a": 7, "b": ["plain text", 3], "c": "keep"},
            id="references-inside-structures",
        ),
        pytest.param(
            {"from_step": "s1", "path": "value", "other": 1},
            {"from_step": "s1", "path": "value", "other": 1},
            id="not-a-reference-with-extra-keys",
        ),
        pytest.param({"expression": "1 + 1"}, {"expression": "1 + 1"}, id="no-references"),
    ],
)
def test_resolve_inputs(inputs: Any, expected: Any) -> None:
    assert resolve_inputs(inputs, OUTPUTS) == expected


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        pytest.param({"from_step": "s1", "path": "nope"}, "step s1 output has no 'nope'", id="missing-key"),
        pytest.param({"from_step": "s1", "path": "nested.deep.z"}, "no 'nested.deep.z'", id="missing-nested"),
        pytest.param({"from_step": "s1", "path": "items.5"}, "no 'items.5'", id="index-out-of-range"),
        pytest.param({"from_step": "s2", "path": "value"}, "no 'value'", id="path-into-scalar"),
        pytest.param({"x": {"from_step": "s9"}}, "step s9 has no output", id="unknown-step"),
    ],
)
def test_resolve_inputs_errors(inputs: Any, message: str) -> None:
    with pytest.raises(InputReferenceError, match=message):
        resolve_inputs(inputs, OUTPUTS)


def test_iter_references_finds_nested_references() -> None:
    inputs = {"a": {"from_step": "s1"}, "b": [{"c": {"from_step": "s2", "path": "v"}}], "d": 1}
    assert [(r.from_step, r.path) for r in iter_references(inputs)] == [("s1", None), ("s2", "v")]


# -- cycles --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        pytest.param([{"step_id": "a"}, {"step_id": "b", "dependencies": ["a"]}], None, id="chain"),
        pytest.param(
            [
                {"step_id": "a"},
                {"step_id": "b", "dependencies": ["a"]},
                {"step_id": "c", "dependencies": ["a"]},
                {"step_id": "d", "dependencies": ["b", "c"]},
            ],
            None,
            id="diamond",
        ),
        pytest.param([{"step_id": "a", "dependencies": ["a"]}], ["a", "a"], id="self-loop"),
        pytest.param(
            [{"step_id": "a", "dependencies": ["b"]}, {"step_id": "b", "dependencies": ["a"]}],
            ["a", "b", "a"],
            id="two-cycle",
        ),
        pytest.param(
            [
                {"step_id": "root"},
                {"step_id": "a", "dependencies": ["root", "c"]},
                {"step_id": "b", "dependencies": ["a"]},
                {"step_id": "c", "dependencies": ["b"]},
            ],
            ["a", "c", "b", "a"],
            id="three-cycle-off-a-root",
        ),
        pytest.param(
            [{"step_id": "a", "dependencies": ["ghost"]}], None, id="unknown-dependency-is-no-cycle"
        ),
    ],
)
def test_find_cycle(specs: list[dict[str, Any]], expected: list[str] | None) -> None:
    assert find_cycle(steps(*specs)) == expected
