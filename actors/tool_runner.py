"""Tool runners: Ray actors that each own one warm sandbox, and the pool that hands steps to them.

A :class:`ToolRunner` runs one step at a time in its sandbox (a synchronous actor: slow tools block
only that actor's own process, never the orchestrator's event loop). The :class:`RunnerPool` lives
in the orchestrator and implements the workflow's ``StepExecutor`` port: a step waits for an idle
runner, so up to ``runners.count`` independent steps run in parallel. A runner whose process died
is replaced; the step it was running fails with ``sandbox_error`` and is retried under the policy.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from officeray.config import SandboxSettings, Settings
from officeray.contracts import ErrorType, PlanStep, StepError, StepOutcome
from officeray.telemetry import extract_context, setup_tracing
from tools_sandbox.catalog import HostContext, validate_tool_settings
from tools_sandbox.executor import run_step
from tools_sandbox.plugins import load_plugins
from tools_sandbox.sandbox import Sandbox

logger = logging.getLogger(__name__)


def make_sandbox(settings: SandboxSettings) -> Sandbox:
    """The sandbox backend the settings name, not started yet."""
    if settings.backend == "local":
        from tools_sandbox.testing import LocalProcessSandbox

        return LocalProcessSandbox()
    from tools_sandbox.docker_sandbox import DockerSandbox
    from tools_sandbox.image import ensure_image
    from tools_sandbox.limits import SandboxLimits

    image = settings.image or ensure_image()
    return DockerSandbox(image=image, limits=SandboxLimits(**settings.limits))


class ToolRunner:
    """Owns one warm sandbox and runs steps in it, one at a time."""

    def __init__(self, settings: Settings) -> None:
        load_plugins(settings.plugins)
        self.workspace_root = Path(settings.workspace_root)
        self.host_context = HostContext(settings=validate_tool_settings(settings.tools))
        self.tracer = setup_tracing(settings.telemetry.trace_file, settings.telemetry.service_name)
        self.sandbox = make_sandbox(settings.sandbox)
        self.sandbox.start()

    def ready(self) -> bool:
        return self.sandbox.alive

    def run(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], carrier: dict[str, str]
    ) -> StepOutcome:
        with self.tracer.start_as_current_span(
            f"tool {step.action}",
            context=extract_context(carrier),
            attributes={"officeray.task_id": task_id, "officeray.step_id": step.step_id},
        ) as span:
            outcome = run_step(self.sandbox, step, inputs, self.workspace_root, self.host_context)
            if outcome.error is not None:
                span.set_attribute("officeray.error_type", outcome.error.type.value)
            return outcome

    def shutdown(self) -> None:
        self.sandbox.stop()


class RunnerPool:
    """A fixed set of :class:`ToolRunner` actors behind a queue of idle ones (the StepExecutor port)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._actor_cls = ray.remote(ToolRunner).options(
            num_cpus=settings.runners.num_cpus, max_restarts=0, max_concurrency=1
        )
        self._idle: asyncio.Queue[Any] = asyncio.Queue()
        self.runners = [self._spawn() for _ in range(settings.runners.count)]
        for runner in self.runners:
            self._idle.put_nowait(runner)

    def _spawn(self) -> Any:
        return self._actor_cls.remote(self.settings)

    async def wait_ready(self) -> None:
        await asyncio.gather(*(r.ready.remote() for r in self.runners))

    async def execute(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], trace_carrier: dict[str, str]
    ) -> StepOutcome:
        runner = await self._idle.get()
        try:
            return await runner.run.remote(task_id, step, inputs, trace_carrier)
        except RayActorError as exc:
            logger.warning("tool runner died while running %s/%s: %s", task_id, step.step_id, exc)
            fresh = self._spawn()
            self.runners = [fresh if r is runner else r for r in self.runners]
            runner = fresh
            return StepOutcome(
                error=StepError(type=ErrorType.SANDBOX_ERROR, message=f"the tool runner died: {exc}")
            )
        finally:
            self._idle.put_nowait(runner)

    def shutdown(self) -> None:
        for runner in self.runners:
            ray.kill(runner)
