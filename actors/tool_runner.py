"""Tool runners: Ray actors that each own one warm sandbox, and the pool that hands steps to them.

A :class:`ToolRunner` runs one step at a time in its sandbox (a synchronous actor: slow tools block
only that actor's own process, never the orchestrator's event loop). The :class:`RunnerPool` lives
in the orchestrator and implements the workflow's ``StepExecutor`` port: a step waits for an idle
runner, so up to ``runners.count`` independent steps run in parallel. A runner whose process died
is replaced; the step it was running fails with ``sandbox_error`` and is retried under the policy.

Host-side tools (``runtime: host``: http_client, web_search, ai_tool, sleep) need no sandbox: the
pool sends them to one :class:`HostToolRunner`, a threaded actor that runs up to
``runners.host_concurrency`` of them at once, so a slow fetch or a long wait never holds a sandbox.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from officeray.config import Settings
from officeray.contracts import ErrorType, PlanStep, StepError, StepOutcome
from officeray.telemetry import extract_context, setup_tracing
from tools_sandbox.backends import make_sandbox
from tools_sandbox.catalog import HostContext, ToolRuntime, get_tool, validate_tool_settings
from tools_sandbox.executor import run_host_step, run_step
from tools_sandbox.limits import SandboxLimits
from tools_sandbox.plugins import load_plugins
from tools_sandbox.recycling import TaskSandboxes

logger = logging.getLogger(__name__)


class AiToolService:
    """``ai_tool``'s answerer on a runner: the ai_tool deployment, called synchronously."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def answer(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        from officeray.errors import ModelUnavailableError, PlanningError

        reply = self.handle.answer.remote(prompt, max_tokens, None, {}).result()
        if reply.text is None:
            if reply.error == "planning":
                raise PlanningError(reply.message)
            raise ModelUnavailableError(reply.message or "the ai_tool model did not answer")
        call = reply.call
        return {
            "answer": reply.text,
            "tier": call.tier if call else "",
            "usage": call.usage.model_dump() if call else {},
        }


def _host_context(settings: Settings, ai_tool_handle: Any) -> HostContext:
    context = HostContext(settings=validate_tool_settings(settings.tools))
    if ai_tool_handle is not None:
        context.services["ai_tool"] = AiToolService(ai_tool_handle)
    return context


def _runs_on_host(action: str) -> bool:
    try:
        return get_tool(action).runtime == ToolRuntime.HOST
    except KeyError:
        return False  # an unknown tool: the sandbox runner's run_step reports it


class _StepRunner:
    """What both runners share: plugins loaded, the host tools' context, a ``tool <action>`` span per step."""

    def __init__(self, settings: Settings, ai_tool_handle: Any = None) -> None:
        load_plugins(settings.plugins)
        self.workspace_root = Path(settings.workspace_root)
        self.host_context = _host_context(settings, ai_tool_handle)
        self.tracer = setup_tracing(settings.telemetry.trace_file, settings.telemetry.service_name)

    def run(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], carrier: dict[str, str]
    ) -> StepOutcome:
        with self.tracer.start_as_current_span(
            f"tool {step.action}",
            context=extract_context(carrier),
            attributes={"officeray.task_id": task_id, "officeray.step_id": step.step_id},
        ) as span:
            outcome = self._run(task_id, step, inputs)
            if outcome.error is not None:
                span.set_attribute("officeray.error_type", outcome.error.type.value)
            return outcome

    def _run(self, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        raise NotImplementedError


class HostToolRunner(_StepRunner):
    """Runs host-side tool steps, many at once (a threaded actor, ``runners.host_concurrency``)."""

    def ready(self) -> bool:
        return True

    def _run(self, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        return run_host_step(step, inputs, self.workspace_root, self.host_context)


class ToolRunner(_StepRunner):
    """Owns one warm sandbox and runs steps in it, one at a time."""

    def __init__(self, settings: Settings, ai_tool_handle: Any = None) -> None:
        super().__init__(settings, ai_tool_handle)
        box = settings.sandbox
        if box.backend == "docker":
            limits = SandboxLimits(**box.limits)  # a bad limit fails here, before any container starts
            box = box.model_copy(update={"limits": limits.model_dump()})
        self.sandboxes = TaskSandboxes(
            lambda: make_sandbox(box.backend, image=box.image, limits=box.limits),
            recycle=box.recycle,
            spares=box.spares,
        )

    def ready(self) -> bool:
        return self.sandboxes.active.alive

    def pid(self) -> int:
        return os.getpid()

    def _run(self, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        sandbox = self.sandboxes.for_task(task_id)
        outcome = run_step(sandbox, step, inputs, self.workspace_root, self.host_context)
        if outcome.error is not None and outcome.error.type == ErrorType.SANDBOX_ERROR:
            self.sandboxes.retire_failed()  # the retry runs on a warm spare at once
        return outcome

    def shutdown(self) -> None:
        self.sandboxes.close()


class RunnerPool:
    """A fixed set of :class:`ToolRunner` actors behind a list of idle ones (the StepExecutor port).

    A step prefers an idle runner that last served the same task (its sandbox needs no recycling);
    otherwise it takes the runner idle the longest.
    """

    def __init__(self, settings: Settings, ai_tool_handle: Any = None) -> None:
        self.settings = settings
        self.ai_tool_handle = ai_tool_handle
        self._actor_cls = ray.remote(ToolRunner).options(
            num_cpus=settings.runners.num_cpus, max_restarts=0, max_concurrency=1
        )
        self._host_cls = ray.remote(HostToolRunner).options(
            num_cpus=0, max_restarts=0, max_concurrency=settings.runners.host_concurrency
        )
        self.host_runner: Any = self._host_cls.remote(settings, ai_tool_handle)
        self.runners = [self._spawn() for _ in range(settings.runners.count)]
        self._idle: list[Any] = list(self.runners)
        self._pids: dict[int, int] = {}
        """Runner process ids (by ``id(actor)``), learned while the runner is idle."""
        self._last_task: dict[int, str] = {}
        self._changed = asyncio.Condition()

    def _spawn(self) -> Any:
        return self._actor_cls.remote(self.settings, self.ai_tool_handle)

    async def wait_ready(self) -> None:
        await asyncio.gather(self.host_runner.ready.remote(), *(r.ready.remote() for r in self.runners))
        pids = await asyncio.gather(*(r.pid.remote() for r in self.runners))
        self._pids.update({id(r): pid for r, pid in zip(self.runners, pids, strict=True)})

    def busy_pids(self) -> list[int]:
        """Process ids of the runners running a step now (for fault-injection tests)."""
        idle = {id(r) for r in self._idle}
        return [pid for key, pid in self._pids.items() if key not in idle]

    async def _acquire(self, task_id: str) -> Any:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._idle))
            for i, runner in enumerate(self._idle):
                if self._last_task.get(id(runner)) == task_id:
                    return self._idle.pop(i)
            return self._idle.pop(0)

    async def _release(self, runner: Any, task_id: str) -> None:
        async with self._changed:
            self._last_task[id(runner)] = task_id
            self._idle.append(runner)
            self._changed.notify()

    async def execute(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], trace_carrier: dict[str, str]
    ) -> StepOutcome:
        if _runs_on_host(step.action):
            return await self._execute_on_host(task_id, step, inputs, trace_carrier)
        runner = await self._acquire(task_id)
        try:
            return await runner.run.remote(task_id, step, inputs, trace_carrier)
        except RayActorError as exc:
            logger.warning("tool runner died while running %s/%s: %s", task_id, step.step_id, exc)
            fresh = self._spawn()
            self.runners = [fresh if r is runner else r for r in self.runners]
            self._last_task.pop(id(runner), None)
            self._pids.pop(id(runner), None)
            runner = fresh
            return StepOutcome(
                error=StepError(type=ErrorType.SANDBOX_ERROR, message=f"the tool runner died: {exc}")
            )
        finally:
            await self._release(runner, task_id)

    async def _execute_on_host(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], trace_carrier: dict[str, str]
    ) -> StepOutcome:
        runner = self.host_runner
        try:
            return await runner.run.remote(task_id, step, inputs, trace_carrier)
        except RayActorError as exc:
            logger.warning("the host-tool runner died while running %s/%s: %s", task_id, step.step_id, exc)
            if self.host_runner is runner:
                self.host_runner = self._host_cls.remote(self.settings, self.ai_tool_handle)
            return StepOutcome(
                error=StepError(type=ErrorType.SANDBOX_ERROR, message=f"the host-tool runner died: {exc}")
            )

    def shutdown(self) -> None:
        for runner in [*self.runners, self.host_runner]:
            ray.kill(runner)
