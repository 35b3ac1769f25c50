"""The tool-runner pool's bookkeeping: starts that fail, which runner a step takes, scale-down.

The pool gets in-process actors (:class:`actors.fake_runners.LocalRunnerActors`: handles whose
``method.remote()`` returns an awaitable) and short waits (:class:`PoolLimits`), because what is
tested is the pool's state handling around Ray's calls, not Ray; the pool on real Ray actors and
Docker is tested in tests/autoscaling/.
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.fake_runners import HOST_RUNNER_PID, LocalRunnerActors
from actors.testing import LocalActorHandle
from actors.tool_runner import MAX_START_FAILURES, PoolLimits, RunnerPool
from officeray.config import load_settings
from officeray.contracts import ErrorType, PlanStep, StepOutcome

FAST = PoolLimits(wait_recheck_s=0.01, start_backoff_max_s=0.0)
"""A waiting step looks again every 10 ms; failed starts are retried without a pause."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pool(actors: LocalRunnerActors, min_runners: int, max_runners: int, clock: Clock) -> RunnerPool:
    policy = {"min_runners": min_runners, "max_runners": max_runners, "idle_timeout_s": 10}
    settings = load_settings(None, **{"runners.autoscaling": policy})
    return RunnerPool(settings, actors=actors, limits=FAST, clock=clock)


def _step(i: int) -> PlanStep:
    return PlanStep(step_id=f"s{i}", action="python_exec", inputs={"code": "1"}, idempotency_key=f"k{i}")


async def _execute(pool: RunnerPool, i: int, task: str | None = None) -> StepOutcome:
    return await pool.execute(task or f"task-{i}", _step(i), {}, {})


def test_a_step_fails_with_sandbox_error_when_no_runner_can_be_started() -> None:
    actors = LocalRunnerActors()

    async def scenario() -> tuple[StepOutcome, dict[str, Any]]:
        pool = _pool(actors, 0, 2, Clock())
        actors.fail_starts = True
        outcome = await asyncio.wait_for(_execute(pool, 1), 5)
        return outcome, pool.stats()

    outcome, stats = asyncio.run(scenario())
    assert outcome.error is not None and outcome.error.type == ErrorType.SANDBOX_ERROR
    assert f"({MAX_START_FAILURES} starts failed while the step waited" in outcome.error.message
    assert stats["runners"] == 0 and stats["waiting_steps"] == 0


def test_the_failed_start_limit_is_the_pools() -> None:
    actors = LocalRunnerActors()

    async def scenario() -> StepOutcome:
        settings = load_settings(None, **{"runners.autoscaling": {"min_runners": 0, "max_runners": 2}})
        limits = FAST.model_copy(update={"max_start_failures": 1})
        pool = RunnerPool(settings, actors=actors, limits=limits, clock=Clock())
        actors.fail_starts = True
        return await asyncio.wait_for(_execute(pool, 1), 5)

    outcome = asyncio.run(scenario())
    assert outcome.error is not None and "(1 starts failed while the step waited" in outcome.error.message


def test_the_pool_recovers_when_starts_work_again() -> None:
    actors = LocalRunnerActors()

    async def scenario() -> StepOutcome:
        pool = _pool(actors, 0, 2, Clock())
        actors.fail_starts = True
        await asyncio.wait_for(_execute(pool, 1), 5)
        actors.fail_starts = False
        return await asyncio.wait_for(_execute(pool, 2), 5)

    assert asyncio.run(scenario()).error is None


def test_light_steady_load_uses_one_runner_so_the_others_can_be_stopped() -> None:
    clock, actors = Clock(), LocalRunnerActors()
    actors.step_s = 0.01

    async def scenario() -> tuple[list[int], int]:
        pool = _pool(actors, 1, 4, clock)
        await asyncio.gather(*(_execute(pool, i) for i in range(4)))  # a burst: four runners
        used = []
        for i in range(10):  # then one step at a time, 2 s apart
            clock.now += 2
            used.append((await _execute(pool, 10 + i)).output["ran_on"])
            await pool.scale_down_once()
        return used, pool.stats()["runners"]

    used, runners = asyncio.run(scenario())
    assert len(set(used)) == 1  # always the runner released last
    assert runners == 1  # the three others went idle past the 10 s timeout and were stopped
    assert sum(r.dead for r in actors.runners) == 3


def test_idle_runners_are_not_stopped_while_steps_wait() -> None:
    clock, actors = Clock(), LocalRunnerActors()
    actors.step_s = 0.2

    async def scenario() -> int:
        pool = _pool(actors, 0, 1, clock)
        first = asyncio.ensure_future(_execute(pool, 1))
        second = asyncio.ensure_future(_execute(pool, 2))  # waits: max_runners is 1
        await asyncio.sleep(0.1)
        clock.now += 60
        stopped = await pool.scale_down_once()
        await asyncio.gather(first, second)
        return stopped

    assert asyncio.run(scenario()) == 0


def test_a_runner_whose_shutdown_fails_is_still_killed() -> None:
    clock, actors = Clock(), LocalRunnerActors()

    async def scenario() -> LocalActorHandle:
        pool = _pool(actors, 0, 1, clock)
        await _execute(pool, 1)
        (runner,) = pool.runners
        actors.fail_shutdown = True
        clock.now += 60
        assert await pool.scale_down_once() == 1
        assert pool.stats()["runners"] == 0
        return runner  # type: ignore[no-any-return]

    assert asyncio.run(scenario()).dead


def test_a_runner_that_dies_mid_step_is_replaced() -> None:
    clock, actors = Clock(), LocalRunnerActors()

    async def scenario() -> tuple[StepOutcome, StepOutcome, int]:
        pool = _pool(actors, 1, 1, clock)
        await pool.wait_ready()
        (first,) = pool.runners
        first.kill()  # its process died: the next call on it raises ActorDiedError (a RayActorError)
        died = await _execute(pool, 1)
        again = await _execute(pool, 2)
        return died, again, len(actors.runners)

    died, again, started = asyncio.run(scenario())
    assert died.error is not None and died.error.type == ErrorType.SANDBOX_ERROR
    assert "the tool runner died" in died.error.message
    assert again.error is None and again.output == {"ran_on": 101}  # the replacement
    assert started == 2


def test_host_tools_go_to_the_host_runner() -> None:
    actors = LocalRunnerActors()

    async def scenario() -> StepOutcome:
        pool = _pool(actors, 0, 1, Clock())
        step = PlanStep(step_id="w", action="sleep", inputs={"seconds": 0}, idempotency_key="kw")
        return await pool.execute("task-h", step, {}, {})

    outcome = asyncio.run(scenario())
    assert outcome.output == {"ran_on": HOST_RUNNER_PID}  # no sandbox runner was started for it
    assert actors.runners == [] and actors.host_runner_objects[0].steps == ["w"]
