"""In-process stand-ins for the tool-runner pool's actors, for tests that need no Ray cluster.

:class:`LocalRunnerActors` is the :class:`~actors.tool_runner.RunnerActors` a
:class:`~actors.tool_runner.RunnerPool` takes (``actors=``): its runners are :class:`FakeToolRunner`
objects behind :class:`actors.testing.LocalActorHandle` handles (``handle.method.remote(*args)``
returns an awaitable; a killed handle raises ``ActorDiedError``, a ``RayActorError``), and switches
make their starts or shutdowns fail::

    actors = LocalRunnerActors()
    pool = RunnerPool(settings, actors=actors, limits=PoolLimits(wait_recheck_s=0.01))
    actors.fail_starts = True  # the next runners die while starting

The pool on real Ray actors and Docker is tested in tests/autoscaling/.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ray.exceptions import RayActorError

from actors.testing import LocalActorHandle
from officeray.contracts import ErrorType, PlanStep, StepError, StepOutcome

DEFAULT_NODES: tuple[dict[str, Any], ...] = ({"Alive": True, "Resources": {"CPU": 2.0, "docker": 4.0}},)
"""What :meth:`LocalRunnerActors.nodes` lists unless told otherwise: one node that can place runners."""

HOST_RUNNER_PID = 0
"""The pid the host runner's steps report (``{"ran_on": 0}``); tool runners count from 100."""

StepFunction = Callable[[str, PlanStep, dict[str, Any]], StepOutcome | Awaitable[StepOutcome]]
"""``(task_id, step, inputs) -> outcome`` (or an awaitable of it): what a fake runner does with a step."""


class FakeToolRunner:
    """The methods of :class:`~actors.tool_runner.ToolRunner` (and of the host runner), in process.

    ``ready`` fails with ``RayActorError`` while :attr:`LocalRunnerActors.fail_starts` is set (its
    start failed); ``run`` records the step id and answers with the actors' ``step`` function,
    by default ``{"ran_on": <pid>}`` after :attr:`LocalRunnerActors.step_s` seconds; ``interrupt``
    stops a running step (it answers ``cancelled``), unless :attr:`LocalRunnerActors.ignore_interrupts`.
    """

    def __init__(self, actors: LocalRunnerActors, pid: int) -> None:
        self.actors = actors
        self.pid_value = pid
        self.steps: list[str] = []
        self.running: dict[tuple[str, str], asyncio.Future[StepOutcome]] = {}
        """The steps running now, by ``(task_id, step_id)``."""
        self.interrupts: list[tuple[str, str]] = []
        """Every ``interrupt`` call, in order."""
        self.contexts: list[Any] = []
        """The ``context`` of every ``run`` call, in order."""

    async def ready(self) -> bool:
        if self.actors.fail_starts:
            raise RayActorError()
        return True

    async def pid(self) -> int:
        return self.pid_value

    async def run(
        self,
        task_id: str,
        step: PlanStep,
        inputs: dict[str, Any],
        carrier: dict[str, str],
        context: Any = None,
    ) -> StepOutcome:
        """``context`` (a :class:`~actors.tool_runner.StepContext`) is kept in :attr:`contexts`."""
        self.steps.append(step.step_id)
        self.contexts.append(context)
        work = asyncio.ensure_future(self._work(task_id, step, inputs))
        self.running[(task_id, step.step_id)] = work
        try:
            return await work
        except asyncio.CancelledError:
            if not work.cancelled():
                raise
            return StepOutcome(error=StepError(type=ErrorType.CANCELLED, message="interrupted"))
        finally:
            self.running.pop((task_id, step.step_id), None)

    async def _work(self, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        if self.actors.step is not None:
            outcome = self.actors.step(task_id, step, inputs)
            return await outcome if inspect.isawaitable(outcome) else outcome
        await asyncio.sleep(self.actors.step_s)
        return StepOutcome(output={"ran_on": self.pid_value})

    async def interrupt(self, task_id: str, step_id: str) -> bool:
        """Stop the step if it runs here (its work is cancelled; ``run`` answers ``cancelled``)."""
        self.interrupts.append((task_id, step_id))
        work = self.running.get((task_id, step_id))
        if work is None or self.actors.ignore_interrupts:
            return False
        work.cancel()
        return True

    async def shutdown(self) -> None:
        if self.actors.fail_shutdown:
            raise RuntimeError("shutdown failed")


class LocalRunnerActors:
    """A :class:`~actors.tool_runner.RunnerActors` of in-process runners (see the module).

    Every runner it starts is kept: the handles in :attr:`runners` (pids from 100 up) and
    :attr:`host_runners`, the objects behind them in :attr:`runner_objects` and
    :attr:`host_runner_objects` (same order).
    """

    def __init__(
        self, *, step: StepFunction | None = None, nodes: list[dict[str, Any]] | None = None
    ) -> None:
        self.step = step
        self.step_s = 0.0
        """How long a default step takes (real seconds of the event loop)."""
        self.fail_starts = False
        """While set, new (and not yet ready) runners die while starting."""
        self.fail_shutdown = False
        """While set, a runner's ``shutdown`` raises (the pool must kill it anyway)."""
        self.ignore_interrupts = False
        """While set, ``interrupt`` leaves the step running (a stuck runner: the pool must replace it)."""
        self.node_list = list(DEFAULT_NODES) if nodes is None else nodes
        self.runners: list[LocalActorHandle] = []
        self.runner_objects: list[FakeToolRunner] = []
        self.host_runners: list[LocalActorHandle] = []
        self.host_runner_objects: list[FakeToolRunner] = []

    def start_runner(self) -> LocalActorHandle:
        runner = FakeToolRunner(self, 100 + len(self.runners))
        self.runner_objects.append(runner)
        self.runners.append(LocalActorHandle(runner))
        return self.runners[-1]

    def start_host_runner(self) -> LocalActorHandle:
        runner = FakeToolRunner(self, HOST_RUNNER_PID)
        self.host_runner_objects.append(runner)
        self.host_runners.append(LocalActorHandle(runner))
        return self.host_runners[-1]

    def kill(self, actor: Any) -> None:
        actor.kill()

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.node_list)
