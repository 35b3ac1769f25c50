"""The tool-runner pool's bookkeeping: starts that fail, which runner a step takes, scale-down.

``actors.tool_runner.ray`` is replaced by a small in-process stand-in (actors are objects whose
``method.remote()`` returns an awaitable), because what is tested is the pool's state handling
around Ray's calls, not Ray; the pool on real Ray actors and Docker is tested in tests/autoscaling/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from ray.exceptions import RayActorError

import actors.tool_runner as tool_runner
from actors.tool_runner import MAX_START_FAILURES, RunnerPool
from officeray.config import Settings, load_settings
from officeray.contracts import ErrorType, PlanStep, StepOutcome


class FakeActor:
    def __init__(self, cluster: FakeRay) -> None:
        self.cluster = cluster
        self.pid_value = len(cluster.actors) + 100
        self.killed = False
        self.steps: list[str] = []
        cluster.actors.append(self)
        self.ready = self._method(self._ready)
        self.pid = self._method(self._pid)
        self.run = self._method(self._run)
        self.shutdown = self._method(self._shutdown)

    def _method(self, fn: Callable[..., Awaitable[Any]]) -> SimpleNamespace:
        return SimpleNamespace(remote=lambda *args: asyncio.ensure_future(fn(*args)))

    async def _ready(self) -> bool:
        if self.cluster.fail_starts:
            raise RayActorError()
        return True

    async def _pid(self) -> int:
        return self.pid_value

    async def _run(self, task_id: str, step: PlanStep, inputs: dict[str, Any], carrier: Any) -> StepOutcome:
        self.steps.append(step.step_id)
        await asyncio.sleep(self.cluster.step_s)
        return StepOutcome(output={"ran_on": self.pid_value})

    async def _shutdown(self) -> None:
        if self.cluster.fail_shutdown:
            raise RuntimeError("shutdown failed")


class FakeRay:
    """Just what :class:`RunnerPool` calls on the ``ray`` module."""

    def __init__(self) -> None:
        self.actors: list[FakeActor] = []
        self.fail_starts = False
        self.fail_shutdown = False
        self.step_s = 0.0

    def remote(self, _cls: type) -> Any:
        factory = SimpleNamespace(remote=lambda *args: FakeActor(self))
        return SimpleNamespace(options=lambda **_options: factory)

    def kill(self, actor: FakeActor) -> None:
        actor.killed = True

    def nodes(self) -> list[dict[str, Any]]:
        return [{"Alive": True, "Resources": {"CPU": 2.0, "docker": 4.0}}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> FakeRay:
    fake = FakeRay()
    monkeypatch.setattr(tool_runner, "ray", fake)
    monkeypatch.setattr(tool_runner, "WAIT_RECHECK_S", 0.01)
    monkeypatch.setattr(tool_runner, "start_backoff_s", lambda _failures: 0.0)
    return fake


def _settings(min_runners: int, max_runners: int) -> Settings:
    policy = {"min_runners": min_runners, "max_runners": max_runners, "idle_timeout_s": 10}
    return load_settings(None, **{"runners.autoscaling": policy})


def _step(i: int) -> PlanStep:
    return PlanStep(step_id=f"s{i}", action="python_exec", inputs={"code": "1"}, idempotency_key=f"k{i}")


async def _execute(pool: RunnerPool, i: int, task: str | None = None) -> StepOutcome:
    return await pool.execute(task or f"task-{i}", _step(i), {}, {})


def test_a_step_fails_with_sandbox_error_when_no_runner_can_be_started(fake_ray: FakeRay) -> None:
    async def scenario() -> tuple[StepOutcome, dict[str, Any]]:
        pool = RunnerPool(_settings(0, 2))
        fake_ray.fail_starts = True
        outcome = await asyncio.wait_for(_execute(pool, 1), 5)
        return outcome, pool.stats()

    outcome, stats = asyncio.run(scenario())
    assert outcome.error is not None and outcome.error.type == ErrorType.SANDBOX_ERROR
    assert f"({MAX_START_FAILURES} starts failed while the step waited" in outcome.error.message
    assert stats["runners"] == 0 and stats["waiting_steps"] == 0


def test_the_pool_recovers_when_starts_work_again(fake_ray: FakeRay) -> None:
    async def scenario() -> StepOutcome:
        pool = RunnerPool(_settings(0, 2))
        fake_ray.fail_starts = True
        await asyncio.wait_for(_execute(pool, 1), 5)
        fake_ray.fail_starts = False
        return await asyncio.wait_for(_execute(pool, 2), 5)

    assert asyncio.run(scenario()).error is None


def test_light_steady_load_uses_one_runner_so_the_others_can_be_stopped(fake_ray: FakeRay) -> None:
    clock = Clock()

    async def scenario() -> tuple[list[int], int]:
        pool = RunnerPool(_settings(1, 4), clock=clock)
        fake_ray.step_s = 0.01
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


def test_idle_runners_are_not_stopped_while_steps_wait(fake_ray: FakeRay) -> None:
    clock = Clock()

    async def scenario() -> int:
        pool = RunnerPool(_settings(0, 1), clock=clock)
        fake_ray.step_s = 0.2
        first = asyncio.ensure_future(_execute(pool, 1))
        second = asyncio.ensure_future(_execute(pool, 2))  # waits: max_runners is 1
        await asyncio.sleep(0.1)
        clock.now += 60
        stopped = await pool.scale_down_once()
        await asyncio.gather(first, second)
        return stopped

    assert asyncio.run(scenario()) == 0


def test_a_runner_whose_shutdown_fails_is_still_killed(fake_ray: FakeRay) -> None:
    clock = Clock()

    async def scenario() -> FakeActor:
        pool = RunnerPool(_settings(0, 1), clock=clock)
        await _execute(pool, 1)
        (runner,) = pool.runners
        fake_ray.fail_shutdown = True
        clock.now += 60
        assert await pool.scale_down_once() == 1
        assert pool.stats()["runners"] == 0
        return runner  # type: ignore[no-any-return]

    assert asyncio.run(scenario()).killed
