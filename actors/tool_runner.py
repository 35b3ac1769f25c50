"""Tool runners: Ray actors that each own one warm sandbox, and the pool that hands steps to them.

A :class:`ToolRunner` runs one step at a time in its sandbox (a synchronous actor: slow tools block
only that actor's own process, never the orchestrator's event loop). The :class:`RunnerPool` lives
in the orchestrator and implements the workflow's ``StepExecutor`` port: a step waits for an idle
runner, so up to ``runners.count`` independent steps run in parallel. With ``runners.autoscaling`` the
pool grows with waiting steps (up to ``max_runners``, asking Ray for nodes that advertise the
``docker`` resource) and stops runners left idle. A runner whose process died is replaced; the step
it was running fails with ``sandbox_error`` and is retried under the policy.

Host-side tools (``runtime: host``: http_client, web_search, ai_tool, sleep) need no sandbox: the
pool sends them to one :class:`HostToolRunner`, a threaded actor that runs up to
``runners.host_concurrency`` of them at once, so a slow fetch or a long wait never holds a sandbox.

A step whose caller stops waiting (its task was cancelled, or reached its ``maximum_duration_s``) is
stopped where it runs: the pool calls the runner's ``interrupt`` (in the :data:`CONTROL_GROUP`, so it
does not wait behind the step), which kills the step's processes in the sandbox (the agent and
everything it started; in Docker the container, replaced by a fresh one on the next call), or
wakes a host ``sleep``; the runner goes back to the pool once its step returned.

Why one file of this length: the runners and the pool share one protocol (the step call, its
interrupt in the control group, the early-interrupt bookkeeping, the span and events of a step), and
a change to one side is a change to the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import ray
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pydantic import BaseModel, ConfigDict, Field
from ray.exceptions import RayActorError

from actors.collector import tracer_for
from officeray.config import DEFAULT_TENANT, RiskPolicy, RunnerAutoscaling, Settings
from officeray.contracts import ErrorType, PlanStep, StepError, StepOutcome, utcnow
from officeray.errors import StoreError
from officeray.event_schema import emit_event
from officeray.gatekeeper import step_risk
from officeray.metrics import NO_METRICS, Metrics, step_outcome
from officeray.sandbox_policy import call_limits, capped_timeout, policy_for, policy_refusal
from officeray.telemetry import extract_context
from officeray.tools.catalog import ToolCatalog, build_catalog
from officeray.tools.spec import HostContext, ToolRuntime
from officeray.workspaces import (
    WorkspaceCaps,
    WorkspaceChanges,
    WorkspaceLimitError,
    WorkspaceStore,
    artifact_path_problem,
    workspace_owner,
)
from tools_sandbox.backends import make_sandbox
from tools_sandbox.executor import run_host_step, run_step
from tools_sandbox.host_tools import CANCELLED_SERVICE
from tools_sandbox.image import ensure_image, image_tag
from tools_sandbox.recycling import TaskSandboxes
from tools_sandbox.sandbox import Sandbox, SandboxError, ToolCallError
from tools_sandbox.workspace_sync import SandboxWorkspace

logger = logging.getLogger(__name__)

CONTROL_GROUP = "control"
"""The runners' concurrency group of calls that must not wait behind a running step (``interrupt``,
``shutdown``): it has its own thread, beside the step's."""

CONTROL_CONCURRENCY = 2
"""Threads of :data:`CONTROL_GROUP` on each runner."""

EARLY_INTERRUPT_TTL_S = 900.0
"""How long a runner keeps an interrupt that came before its step started there (the step's call may
wait for a free thread behind long host steps): the step then starts cancelled."""

EARLY_INTERRUPT_MAX = 1024
"""Early interrupts (and recently ended steps) a runner keeps at most; past it the oldest are
forgotten."""

LATE_INTERRUPT_S = 5.0
"""An interrupt of a step that ended on this runner less than this ago came late, for that run: it is
not kept for the step's next attempt."""

StepKey = tuple[str, str]
"""``(task_id, step_id)``: a step as ``interrupt`` names it."""


class EarlyInterrupts:
    """Interrupts of steps that had not started on a runner when they came (``interrupt`` is in the
    control group, so it can overtake its step's ``run`` call): the step starts cancelled. An
    interrupt of a step that ended here within :data:`LATE_INTERRUPT_S` is not kept. Kept for
    :data:`EARLY_INTERRUPT_TTL_S`, :data:`EARLY_INTERRUPT_MAX` at most. Not thread-safe: the runner
    calls it under its lock. ``clock``: monotonic seconds (injected for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._asked: dict[StepKey, float] = {}
        self._ended: dict[StepKey, float] = {}

    def ask(self, key: StepKey) -> bool:
        """Keep an interrupt of a step that is not running here; False when it just ended here."""
        now = self._clock()
        _forget_before(self._ended, now - LATE_INTERRUPT_S)
        if key in self._ended:
            return False
        _keep(self._asked, key, now)
        return True

    def starting(self, key: StepKey) -> bool:
        """A step starts here: whether it was interrupted before (the interrupt is used up)."""
        _forget_before(self._asked, self._clock() - EARLY_INTERRUPT_TTL_S)
        return self._asked.pop(key, None) is not None

    def ended(self, key: StepKey) -> None:
        """A step's run here returned."""
        _keep(self._ended, key, self._clock())


def _keep(kept: dict[StepKey, float], key: StepKey, now: float) -> None:
    """``key`` at ``now``, the newest of ``kept`` (oldest first), which keeps at most
    :data:`EARLY_INTERRUPT_MAX`."""
    kept.pop(key, None)
    kept[key] = now
    while len(kept) > EARLY_INTERRUPT_MAX:
        del kept[next(iter(kept))]


def _forget_before(kept: dict[StepKey, float], oldest: float) -> None:
    while kept and next(iter(kept.values())) < oldest:
        del kept[next(iter(kept))]


class StepContext(BaseModel):
    """What a pool with a store sends with a sandbox step (see :meth:`ToolRunner.run`)."""

    model_config = ConfigDict(frozen=True)

    workspace_id: str | None = None
    """The task whose workspace the step sees (a subtask sees its root task's)."""
    workspace: dict[str, bytes] | None = None
    """The task workspace's files; None: no workspace sync."""
    limits: dict[str, int] | None = None
    """The call's limits (:func:`officeray.sandbox_policy.call_limits`)."""


class StepRun(BaseModel):
    """A :class:`ToolRunner`'s answer to a step sent with a :class:`StepContext`."""

    model_config = ConfigDict(frozen=True)

    outcome: StepOutcome
    changes: WorkspaceChanges | None = None
    """What the step changed in the workspace (None: it failed, or there was no workspace)."""


def workspace_caps(settings: Settings) -> WorkspaceCaps:
    """The ``workspace`` settings' caps."""
    ws = settings.workspace
    return WorkspaceCaps(ws.max_task_bytes, ws.max_task_files, ws.max_tenant_bytes)


def _cancelled(task_id: str, step: PlanStep) -> StepOutcome:
    return StepOutcome(
        error=StepError(
            type=ErrorType.CANCELLED, message=f"step {step.step_id} of task {task_id} was cancelled"
        )
    )


AI_TOOL_CALL_TIMEOUT_S = 300.0
"""Longest wait of a runner for the ai_tool deployment's answer (a step's own timeout is shorter
when it is): past it the step fails with ``timeout``."""


class AiToolService:
    """``ai_tool``'s answerer on a runner: the ai_tool deployment, called synchronously."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def answer(self, prompt: str, max_tokens: int, timeout_s: float | None = None) -> dict[str, Any]:
        """The deployment's answer, waited for at most ``timeout_s`` (the step's timeout), capped by
        :data:`AI_TOOL_CALL_TIMEOUT_S`; raises :class:`TimeoutError` past it."""
        from officeray.errors import ModelUnavailableError, PlanningError

        wait_s = AI_TOOL_CALL_TIMEOUT_S if timeout_s is None else min(timeout_s, AI_TOOL_CALL_TIMEOUT_S)
        reply = self.handle.answer.remote(prompt, max_tokens, None, {}).result(timeout_s=wait_s)
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


def _host_context(settings: Settings, catalog: ToolCatalog, ai_tool_handle: Any) -> HostContext:
    context = HostContext(settings=catalog.check_settings(settings.tools))
    if ai_tool_handle is not None:
        context.services["ai_tool"] = AiToolService(ai_tool_handle)
    return context


def _runs_on_host(catalog: ToolCatalog, action: str) -> bool:
    spec = catalog.get(action)
    return spec is not None and spec.runtime == ToolRuntime.HOST  # unknown: run_step reports it


class _StepRunner:
    """What both runners share: the process's catalog (built from the settings: built-ins and
    plugins), the host tools' context, a ``tool <action>`` span per step."""

    def __init__(self, settings: Settings, ai_tool_handle: Any = None) -> None:
        self.catalog = build_catalog(settings)
        self.workspace_root = Path(settings.workspace_root)
        self.workspace_confined = settings.workspace_confined
        self.host_context = _host_context(settings, self.catalog, ai_tool_handle)
        self.tracer = tracer_for(settings, "runner", instance=self.lane_instance())
        self.redaction = settings.telemetry.redaction
        """How the ``tool_request``/``tool_response`` events record a step's inputs and output."""

    def lane_instance(self) -> str:
        """Which runner this is on a timeline (its process)."""
        return str(os.getpid())

    def run(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], carrier: dict[str, str]
    ) -> StepOutcome:
        with self.tracer.start_as_current_span(
            f"tool {step.action}",
            context=extract_context(carrier),
            attributes={"officeray.task_id": task_id, "officeray.step_id": step.step_id},
        ) as span:
            started_at, started = utcnow(), time.monotonic()
            self._event(span, "tool_request", task_id, step, content=inputs, started_at=started_at)
            outcome = self._run(task_id, step, inputs)
            error = outcome.error
            if error is not None:
                span.set_attribute("officeray.error_type", error.type.value)
                span.set_status(Status(StatusCode.ERROR, f"{error.type.value}: {error.message}"[:200]))
            else:
                span.set_status(Status(StatusCode.OK))
            self._event(
                span,
                "tool_response",
                task_id,
                step,
                content=outcome.output,
                error_type=None if error is None else error.type.value,
                error=None if error is None else error.message,
                started_at=started_at,
                ended_at=utcnow(),
                duration_ms=(time.monotonic() - started) * 1000,
            )
            return outcome

    def _event(
        self,
        span: trace.Span,
        kind: Literal["tool_request", "tool_response"],
        task_id: str,
        step: PlanStep,
        error_type: str | None = None,
        **fields: Any,
    ) -> None:
        """A ``tool_request``/``tool_response`` event on the step's span (the step's inputs/output
        recorded as ``telemetry.redaction`` says)."""
        details = {"action": step.action}
        if error_type is not None:
            details["error_type"] = error_type
        emit_event(
            span,
            kind,
            agent="runner",
            redaction=self.redaction,
            task_id=task_id,
            step_id=step.step_id,
            details=details,
            **fields,
        )

    def _run(self, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        raise NotImplementedError


class HostToolRunner(_StepRunner):
    """Runs host-side tool steps, many at once (a threaded actor, ``runners.host_concurrency``).

    Each step's tool finds a :class:`threading.Event` under ``context.services[CANCELLED_SERVICE]``,
    set by :meth:`interrupt` or once the step's ``timeout_seconds`` passed (``sleep`` waits on it;
    the other host tools end on their own timeouts, capped by the step's); a step past its timeout
    fails with ``timeout`` (:func:`~tools_sandbox.executor.run_host_step`)."""

    def __init__(self, settings: Settings, ai_tool_handle: Any = None) -> None:
        super().__init__(settings, ai_tool_handle)
        self._lock = threading.Lock()
        self._cancels: dict[StepKey, threading.Event] = {}
        self._early = EarlyInterrupts()

    def lane_instance(self) -> str:
        return f"host-{os.getpid()}"

    def ready(self) -> bool:
        return True

    def _run(self, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        key, cancelled = (task_id, step.step_id), threading.Event()
        with self._lock:
            if self._early.starting(key):
                self._early.ended(key)
                return _cancelled(task_id, step)
            self._cancels[key] = cancelled
        context = HostContext(
            settings=self.host_context.settings,
            services={**self.host_context.services, CANCELLED_SERVICE: cancelled},
        )
        try:
            outcome = run_host_step(step, inputs, self.workspace_root, context, catalog=self.catalog)
        finally:
            with self._lock:
                self._cancels.pop(key, None)
                self._early.ended(key)
        timed_out = outcome.error is not None and outcome.error.type == ErrorType.TIMEOUT
        return _cancelled(task_id, step) if cancelled.is_set() and not timed_out else outcome

    @ray.method(concurrency_group=CONTROL_GROUP)
    def interrupt(self, task_id: str, step_id: str) -> bool:
        """Cancel step ``step_id`` of ``task_id`` (True): it runs here, or starts here cancelled
        (:class:`EarlyInterrupts`); False when it already ended here."""
        key = (task_id, step_id)
        with self._lock:
            cancelled = self._cancels.get(key)
            if cancelled is None:
                return self._early.ask(key)
        cancelled.set()
        return True


class ToolRunner(_StepRunner):
    """Owns one warm sandbox and runs steps in it, one at a time. ``metrics`` counts the sandboxes it
    starts (:meth:`~officeray.metrics.Metrics.sandbox_started`)."""

    def __init__(self, settings: Settings, ai_tool_handle: Any = None, metrics: Metrics = NO_METRICS) -> None:
        super().__init__(settings, ai_tool_handle)
        box = settings.sandbox
        if box.backend == "docker":
            # the project's own image is built on this node when missing (a new cluster node), once
            image = ensure_image() if box.image in (None, image_tag()) else box.image
            box = box.model_copy(update={"image": image})
        self.sandboxes = TaskSandboxes(
            lambda: make_sandbox(box.backend, image=box.image, limits=box.limits),
            recycle=box.recycle,
            spares=box.spares,
            on_started=lambda: metrics.sandbox_started(box.backend),
        )
        self._lock = threading.Lock()
        self._step: StepKey | None = None
        """``(task_id, step_id)`` of the step running now."""
        self._stop_asked = False
        self._early = EarlyInterrupts()
        self._sandbox: Sandbox | None = None
        """The sandbox the running step's call went to (what :meth:`interrupt` stops)."""
        self.workspace_sync = SandboxWorkspace()
        """What this runner's sandbox workspace holds, per task (:mod:`tools_sandbox.workspace_sync`)."""
        self.workspace_caps = workspace_caps(settings)
        self._context: StepContext | None = None
        """The context of the step running now (see :meth:`run`)."""
        self._changes: WorkspaceChanges | None = None
        """What the step running now changed in the task workspace."""

    def ready(self) -> bool:
        return self.sandboxes.active.alive

    def pid(self) -> int:
        return os.getpid()

    def run(  # type: ignore[override]
        self,
        task_id: str,
        step: PlanStep,
        inputs: dict[str, Any],
        carrier: dict[str, str],
        context: StepContext | None = None,
    ) -> StepOutcome | StepRun:
        """Run one step. With a ``context`` (from a pool with a store) the sandbox's workspace is
        first made equal to ``context.workspace`` and the call runs under ``context.limits``; the
        answer is then a :class:`StepRun` with what the step changed in the workspace."""
        if context is None:
            return super().run(task_id, step, inputs, carrier)
        self._context, self._changes = context, None
        try:
            outcome = super().run(task_id, step, inputs, carrier)
            return StepRun(outcome=outcome, changes=self._changes)
        finally:
            self._context, self._changes = None, None

    def _run_in(self, sandbox: Sandbox, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        """The step in ``sandbox``: workspace sync, the call, the workspace's changes (see :meth:`run`)."""
        context = self._context
        if context is None or context.workspace is None:
            limits = context.limits if context is not None else None
            return self._call(sandbox, step, inputs, limits)
        workspace_id = context.workspace_id or task_id
        try:
            before = self.workspace_sync.sync(sandbox, workspace_id, context.workspace)
        except (SandboxError, ToolCallError, OSError) as exc:
            return self._workspace_failure("cannot set up the task workspace", exc)
        outcome = self._call(sandbox, step, inputs, context.limits)
        if outcome.error is not None:
            self.workspace_sync.forget()  # a failed step's changes are not kept; the sandbox may hold them
            return outcome
        try:
            self._changes = self.workspace_sync.changes(sandbox, workspace_id, before, self.workspace_caps)
        except WorkspaceLimitError as exc:
            return StepOutcome(
                output=outcome.output, error=StepError(type=ErrorType.OUTPUT_LIMIT, message=str(exc))
            )
        except (SandboxError, ToolCallError, OSError) as exc:
            return self._workspace_failure("cannot read back the task workspace", exc)
        return outcome

    def _call(
        self, sandbox: Sandbox, step: PlanStep, inputs: dict[str, Any], limits: dict[str, int] | None
    ) -> StepOutcome:
        return run_step(
            sandbox,
            step,
            inputs,
            self.workspace_root,
            self.host_context,
            workspace_confined=self.workspace_confined,
            catalog=self.catalog,
            limits=limits,
        )

    def _workspace_failure(self, what: str, exc: Exception) -> StepOutcome:
        """A workspace sync that failed: nothing cached is trusted any more; the step fails."""
        self.workspace_sync.forget()
        kind = exc.error_type if isinstance(exc, ToolCallError) else ErrorType.SANDBOX_ERROR
        return StepOutcome(error=StepError(type=kind, message=f"{what}: {exc}"))

    def _run(self, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        key = (task_id, step.step_id)
        with self._lock:
            if self._early.starting(key):
                self._early.ended(key)
                return _cancelled(task_id, step)
            self._step, self._stop_asked = key, False
        try:
            sandbox = self.sandboxes.for_task(task_id)
            with self._lock:
                if self._stop_asked:
                    return _cancelled(task_id, step)
                self._sandbox = sandbox
            try:
                outcome = self._run_in(sandbox, task_id, step, inputs)
            finally:
                with self._lock:
                    self._sandbox = None
                    sandbox.clear_interrupt()  # one that came after the call ended
        finally:
            with self._lock:
                self._step = None
                self._early.ended(key)
        if outcome.error is not None and outcome.error.type == ErrorType.SANDBOX_ERROR:
            self.sandboxes.retire_failed()  # the retry runs on a warm spare at once
        return outcome

    @ray.method(concurrency_group=CONTROL_GROUP)
    def interrupt(self, task_id: str, step_id: str) -> bool:
        """Stop step ``step_id`` of ``task_id`` (True): when it runs here its call's processes are
        killed (the sandbox starts afresh on the next call) and the step returns ``cancelled``; when
        it has not started here yet it starts cancelled (:class:`EarlyInterrupts`). False when it
        already ended here."""
        with self._lock:
            if self._step != (task_id, step_id):
                return self._early.ask((task_id, step_id))
            self._stop_asked = True
            if self._sandbox is not None:
                self._sandbox.interrupt()
        return True

    @ray.method(concurrency_group=CONTROL_GROUP)
    def shutdown(self) -> None:
        self.sandboxes.close()


AUTOSCALE_INTERVAL_S = 0.5
"""How often an autoscaling pool looks for idle runners to stop and unneeded starts to cancel."""

RUNNER_STOP_TIMEOUT_S = 10.0
"""How long a stopping runner may take to remove its containers before its actor is killed anyway."""

WAIT_RECHECK_S = 1.0
"""How often a step waiting for a runner looks again whether one more must be started."""

MAX_START_FAILURES = 3
"""Runner starts that may fail while a step waits on an empty pool (no Docker on the node, image
build failed) before that step fails with ``sandbox_error`` instead of waiting on (the step retry
policy and the dead-letter queue take over; the next step tries again)."""

START_BACKOFF_MAX_S = 30.0
"""Longest pause between runner starts after failed ones (the pause doubles per failure)."""

PLACEMENT_CHECK_S = 10.0
"""How often the pool checks that some node advertises the runners' custom resources."""

INTERRUPT_TIMEOUT_S = 10.0
"""How long a cancelled step's runner may take to stop it (and its run to return) before the runner
is replaced."""


class PoolLimits(BaseModel):
    """How the pool waits, retries and checks; each default is the constant of the same name above.

    A :class:`RunnerPool` takes one (``limits=``); tests pass short waits instead of patching the
    constants."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    autoscale_interval_s: float = Field(default=AUTOSCALE_INTERVAL_S, gt=0)
    """:data:`AUTOSCALE_INTERVAL_S`."""
    runner_stop_timeout_s: float = Field(default=RUNNER_STOP_TIMEOUT_S, gt=0)
    """:data:`RUNNER_STOP_TIMEOUT_S`."""
    wait_recheck_s: float = Field(default=WAIT_RECHECK_S, gt=0)
    """:data:`WAIT_RECHECK_S`."""
    max_start_failures: int = Field(default=MAX_START_FAILURES, ge=1)
    """:data:`MAX_START_FAILURES`."""
    start_backoff_max_s: float = Field(default=START_BACKOFF_MAX_S, ge=0)
    """:data:`START_BACKOFF_MAX_S` (0: no pause between failed starts)."""
    placement_check_s: float = Field(default=PLACEMENT_CHECK_S, gt=0)
    """:data:`PLACEMENT_CHECK_S`."""
    interrupt_timeout_s: float = Field(default=INTERRUPT_TIMEOUT_S, gt=0)
    """:data:`INTERRUPT_TIMEOUT_S`."""


def runners_to_add(policy: RunnerAutoscaling, running: int, starting: int, waiting: int) -> int:
    """New runners to start now: one per waiting step not already covered by a start, up to the max."""
    room = policy.max_runners - running - starting
    return max(0, min(waiting - starting, room))


def runners_to_stop(policy: RunnerAutoscaling, running: int, idle_for_s: Sequence[float]) -> int:
    """Idle runners to stop now: those idle past the timeout, never going below ``min_runners``."""
    expired = sum(1 for idle in idle_for_s if idle >= policy.idle_timeout_s)
    return max(0, min(expired, running - policy.min_runners))


def starts_to_cancel(policy: RunnerAutoscaling, starting: int, waiting: int, quiet_for_s: float) -> int:
    """Starts no longer needed: more than the waiting steps, once no step has waited for the timeout
    (they hold a resource request that would make the autoscaler add a node nobody needs)."""
    if quiet_for_s < policy.idle_timeout_s:
        return 0
    return max(0, starting - waiting)


def start_backoff_s(failures: int, max_s: float = START_BACKOFF_MAX_S) -> float:
    """Pause before the next runner start after ``failures`` failed starts in a row (at most ``max_s``)."""
    return 0.0 if failures == 0 else min(max_s, 2.0 ** (failures - 1))


def missing_resources(wanted: dict[str, float], nodes: Sequence[dict[str, Any]]) -> list[str]:
    """The custom resources in ``wanted`` that no alive node of ``nodes`` (``ray.nodes()``) advertises."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    return sorted(name for name in wanted if not any(res.get(name, 0) > 0 for res in alive))


def placement_problem(wanted: dict[str, float], nodes: Sequence[dict[str, Any]]) -> str | None:
    """Why runners asking for ``wanted`` cannot be placed on ``nodes`` (``ray.nodes()``), or ``None``."""
    missing = missing_resources(wanted, nodes)
    if not missing:
        return None
    return (
        f"no node advertises {missing} (tool runners ask for {wanted}): they start only once such a "
        "node joins; start nodes with e.g. --resources '{\"docker\": 8}', or set runners.resources: {}"
    )


OWNER_CACHE_SIZE = 4096
"""Tasks whose workspace owner and tenant a pool remembers."""


class NoRunnerError(Exception):
    """No runner could be started for a waiting step (every recent start failed)."""


class RunnerActors(Protocol):
    """How a :class:`RunnerPool` starts, ends and places its actors: :class:`RayRunnerActors` on a
    cluster, :class:`actors.fake_runners.LocalRunnerActors` (in-process handles) in tests.

    A handle answers ``handle.<method>.remote(*args)`` with an awaitable, as a Ray actor handle does,
    for the methods of :class:`ToolRunner` (``ready``, ``pid``, ``run``, ``shutdown``) and of
    :class:`HostToolRunner` (``ready``, ``run``); a call on a dead actor raises ``RayActorError``."""

    def start_runner(self) -> Any:
        """A new :class:`ToolRunner` actor (its handle, at once; it becomes ready later)."""
        ...

    def start_host_runner(self) -> Any:
        """A new :class:`HostToolRunner` actor."""
        ...

    def kill(self, actor: Any) -> None:
        """End an actor now (its resources are freed)."""
        ...

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes, as ``ray.nodes()`` lists them (``Alive``, ``Resources``)."""
        ...


class RayRunnerActors:
    """The pool's actors on Ray: :class:`ToolRunner` actors that ask for ``runners.num_cpus`` and
    ``runners.resources``, and a threaded :class:`HostToolRunner` (``runners.host_concurrency``)."""

    def __init__(self, settings: Settings, ai_tool_handle: Any = None, metrics: Metrics = NO_METRICS) -> None:
        self.settings = settings
        self.ai_tool_handle = ai_tool_handle
        self.metrics = metrics
        control = {CONTROL_GROUP: CONTROL_CONCURRENCY}  # interrupt and shutdown never wait behind a step
        # (concurrency groups are declared with the class: ``.options()`` does not take them)
        self._runner_cls = ray.remote(concurrency_groups=control)(ToolRunner).options(  # type: ignore[call-overload]
            num_cpus=settings.runners.num_cpus,
            resources=dict(settings.runners.resources),
            max_restarts=0,
            max_concurrency=1,
        )
        self._host_cls = ray.remote(concurrency_groups=control)(HostToolRunner).options(  # type: ignore[call-overload]
            num_cpus=0, max_restarts=0, max_concurrency=settings.runners.host_concurrency
        )

    def start_runner(self) -> Any:
        return self._runner_cls.remote(self.settings, self.ai_tool_handle, self.metrics)

    def start_host_runner(self) -> Any:
        return self._host_cls.remote(self.settings, self.ai_tool_handle)

    def kill(self, actor: Any) -> None:
        ray.kill(actor)

    def nodes(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = ray.nodes()
        return nodes


class RunnerPool:
    """:class:`ToolRunner` actors behind a list of idle ones (the StepExecutor port).

    A step prefers an idle runner that last served the same task (its sandbox needs no recycling).
    Without ``runners.autoscaling`` the pool is a fixed ``runners.count`` and a step otherwise takes
    the runner idle the longest; with it, a step takes the runner released last (so the others stay
    idle and can be stopped), a step that finds no idle runner starts one more (up to
    ``max_runners``), and :meth:`autoscale` stops runners idle past ``idle_timeout_s`` (down to
    ``min_runners``). Runner actors ask for ``runners.resources`` (by default ``{"docker": 1}``), so
    on an autoscaling cluster a start that no node can place makes the autoscaler add a CPU node.

    Each step runs under the sandbox policy of its risk (:func:`officeray.gatekeeper.step_risk`,
    ``sandbox.policies``): its timeout is cut, its call limited, network host tools refused. With a
    ``store``, a sandbox step sees its task's workspace (sent to the runner, which returns what the
    step changed; the changes are written to the store before the step's outcome is answered).

    Injected: ``catalog`` (which steps are host-side; default: built from ``settings``, as the
    orchestrator does and hands it over), ``clock`` (monotonic seconds: idle times, back-off),
    ``actors`` (how actors start and end; default :class:`RayRunnerActors` over ``settings`` and
    ``ai_tool_handle``, which the runners' ``ai_tool`` calls) and ``limits`` (:class:`PoolLimits`).
    """

    def __init__(
        self,
        settings: Settings,
        ai_tool_handle: Any = None,
        *,
        catalog: ToolCatalog | None = None,
        clock: Callable[[], float] = time.monotonic,
        actors: RunnerActors | None = None,
        limits: PoolLimits | None = None,
        metrics: Metrics = NO_METRICS,
        store: WorkspaceStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        """Where task workspaces live (None: sandbox steps see no task workspace)."""
        self.workspace_caps = workspace_caps(settings)
        self._owners: dict[str, tuple[str, str]] = {}
        """``task_id -> (workspace task id, tenant)``, the newest :data:`OWNER_CACHE_SIZE`."""
        self.catalog = catalog if catalog is not None else build_catalog(settings)
        self.policy = settings.runners.autoscaling
        self._clock = clock
        self.metrics = metrics
        self.actors: RunnerActors = actors or RayRunnerActors(settings, ai_tool_handle, metrics)
        self.limits = limits or PoolLimits()
        self.host_runner: Any = self.actors.start_host_runner()
        self.runners = [self.actors.start_runner() for _ in range(settings.runners.initial_runners)]
        self._initial = list(self.runners)
        self._initial_ready: asyncio.Future[None] | None = None
        self._idle: list[Any] = list(self.runners)
        self._idle_since: dict[int, float] = {id(r): clock() for r in self.runners}
        self._starting: dict[int, tuple[Any, float]] = {}
        """Runners being started for waiting steps (by ``id(actor)``), with when they were asked for."""
        self._waiting = 0
        """Steps waiting for an idle runner."""
        self._last_wait = clock()
        self._start_failures = 0
        """Runner starts failed in a row (reset by one that succeeds)."""
        self._failed_starts_total = 0
        self._last_failure_at = 0.0
        self.placement_problem: str | None = None
        """Why runners may never be placed (no node advertises their resources), when that is so."""
        self._pids: dict[int, int] = {}
        """Runner process ids (by ``id(actor)``), learned while the runner is idle."""
        self._last_task: dict[int, str] = {}
        self._changed = asyncio.Condition()
        self._growing: set[asyncio.Future[None]] = set()
        self._stopping: set[asyncio.Future[None]] = set()
        """Cancelled steps being stopped on their runners."""
        self.started_total = 0
        """Runners started by autoscaling over the pool's life."""
        self.stopped_total = 0
        """Runners stopped (or starts cancelled) by autoscaling over the pool's life."""
        self._report()

    def _report(self) -> None:
        """Tell the metrics the pool's size and busy runners (after each change of either)."""
        self.metrics.runner_pool(len(self.runners), len(self.runners) - len(self._idle))

    async def wait_ready(self) -> None:
        """Wait for the host runner and the runners started with the pool (once; later calls share it)."""
        if self._initial_ready is None:
            self._initial_ready = asyncio.ensure_future(self._wait_initial())
        await asyncio.shield(self._initial_ready)

    async def _wait_initial(self) -> None:
        await self.host_runner.ready.remote()
        for runner, answer in zip(
            self._initial,
            await asyncio.gather(*(self._pid_when_ready(r) for r in self._initial)),
            strict=True,
        ):
            if answer is not None and any(r is runner for r in self.runners):
                self._pids[id(runner)] = answer

    @staticmethod
    async def _pid_when_ready(runner: Any) -> int | None:
        """The runner's process id once it is ready; ``None`` when it died (it is replaced on use)."""
        try:
            await runner.ready.remote()
            pid: int = await runner.pid.remote()
        except Exception as exc:  # RayActorError: its __init__ failed or its process died
            logger.warning("a tool runner failed to start: %s", exc)
            return None
        return pid

    def busy_pids(self) -> list[int]:
        """Process ids of the runners running a step now (for fault-injection tests)."""
        idle = {id(r) for r in self._idle}
        return [pid for key, pid in self._pids.items() if key not in idle]

    def stats(self) -> dict[str, Any]:
        """The pool now: runners running, idle, starting, steps waiting, the autoscaling totals, and
        ``placement_problem`` (why runners may never start, or ``None``)."""
        return {
            "runners": len(self.runners),
            "idle": len(self._idle),
            "starting": len(self._starting),
            "waiting_steps": self._waiting,
            "min_runners": self.settings.runners.initial_runners,
            "max_runners": self.settings.runners.max_runners,
            "started_total": self.started_total,
            "stopped_total": self.stopped_total,
            "placement_problem": self.placement_problem,
        }

    # -- scaling ---------------------------------------------------------------------------------

    def _grow_for_waiting_steps(self) -> None:
        if self.policy is None:
            return
        backoff = start_backoff_s(self._start_failures, self.limits.start_backoff_max_s)
        if self._clock() - self._last_failure_at < backoff:
            return
        for _ in range(runners_to_add(self.policy, len(self.runners), len(self._starting), self._waiting)):
            actor = self.actors.start_runner()
            self._starting[id(actor)] = (actor, self._clock())
            future = asyncio.ensure_future(self._join_when_ready(actor))
            self._growing.add(future)
            future.add_done_callback(self._growing.discard)

    async def _join_when_ready(self, actor: Any) -> None:
        pid = await self._pid_when_ready(actor)
        async with self._changed:
            if self._starting.pop(id(actor), None) is None:
                return  # cancelled (killed) while starting
            if pid is None:
                self._start_failures += 1
                self._failed_starts_total += 1
                self._last_failure_at = self._clock()
                self._changed.notify_all()  # the waiting steps start another, or give up
                return
            self._start_failures = 0
            self.started_total += 1
            self.runners.append(actor)
            self._pids[id(actor)] = pid
            self._idle.append(actor)
            self._idle_since[id(actor)] = self._clock()
            self._changed.notify()
            self._report()

    async def autoscale(self) -> None:
        """Forever: check that runners can be placed, and (autoscaling) stop idle runners."""
        limits = self.limits
        last_check = -limits.placement_check_s
        interval = limits.autoscale_interval_s if self.policy is not None else limits.placement_check_s
        while True:
            await asyncio.sleep(interval)
            try:
                if self._clock() - last_check >= limits.placement_check_s:
                    last_check = self._clock()
                    self._check_placement(await asyncio.to_thread(self.actors.nodes))
                if self.policy is not None:
                    await self.scale_down_once()
            except Exception:
                logger.exception("tool-runner pool: autoscaling pass failed")

    def _check_placement(self, nodes: Sequence[dict[str, Any]]) -> None:
        problem = placement_problem(self.settings.runners.resources, nodes)
        if problem and problem != self.placement_problem:
            logger.warning("tool-runner pool: %s", problem)
        self.placement_problem = problem

    async def scale_down_once(self) -> int:
        """One pass of scale-down; returns how many runners (or starts) were stopped."""
        if self.policy is None:
            return 0
        now = self._clock()
        to_stop: list[Any] = []
        async with self._changed:
            if self._waiting:  # steps wait: every idle runner is about to be taken
                return 0
            oldest_first = sorted(self._idle, key=lambda r: self._idle_since.get(id(r), now))
            idle_for = [now - self._idle_since.get(id(r), now) for r in oldest_first]
            for runner in oldest_first[: runners_to_stop(self.policy, len(self.runners), idle_for)]:
                self._idle.remove(runner)
                self.runners.remove(runner)
                self._forget(runner)
                to_stop.append(runner)
            cancel = starts_to_cancel(self.policy, len(self._starting), self._waiting, now - self._last_wait)
            newest_first = sorted(self._starting.values(), key=lambda entry: -entry[1])
            for actor, _since in newest_first[:cancel]:
                del self._starting[id(actor)]
                self.actors.kill(actor)
        self.stopped_total += len(to_stop) + cancel
        self._report()
        await asyncio.gather(*(self._stop(runner) for runner in to_stop))
        return len(to_stop) + cancel

    def _forget(self, runner: Any) -> None:
        """Drop what the pool remembers of a runner that left it."""
        for table in (self._idle_since, self._pids, self._last_task):
            table.pop(id(runner), None)

    async def _stop(self, runner: Any) -> None:
        """Remove the runner's containers, then end its actor (which frees its resources)."""
        try:
            await asyncio.wait_for(runner.shutdown.remote(), self.limits.runner_stop_timeout_s)
        except Exception as exc:
            logger.warning("a stopping tool runner did not shut down cleanly: %s", exc)
        finally:
            self.actors.kill(runner)

    # -- steps -----------------------------------------------------------------------------------

    async def _acquire(self, task_id: str) -> Any:
        async with self._changed:
            if not self._idle:
                self._waiting += 1
                failures_before = self._failed_starts_total
                recheck_s = self.limits.wait_recheck_s if self.policy is not None else None
                try:
                    while not self._idle:
                        failed = self._failed_starts_total - failures_before
                        if failed >= self.limits.max_start_failures and not self.runners:
                            # every start made while this step waited failed, and no runner exists
                            raise NoRunnerError(
                                f"no tool runner could be started ({failed} starts failed while the step "
                                "waited; last: a new tool runner died while starting (see the Ray logs))"
                            )
                        self._grow_for_waiting_steps()
                        with contextlib.suppress(TimeoutError):  # a fixed pool has nothing to recheck
                            await asyncio.wait_for(self._changed.wait(), recheck_s)
                finally:
                    self._waiting -= 1
                    self._last_wait = self._clock()
            index = next(
                (i for i, runner in enumerate(self._idle) if self._last_task.get(id(runner)) == task_id),
                # else (autoscaling) the runner released last, so the others stay idle long enough to stop
                -1 if self.policy is not None else 0,
            )
            runner = self._idle.pop(index)
            self._report()
            return runner

    async def _release(self, runner: Any, task_id: str) -> None:
        async with self._changed:
            if not any(r is runner for r in self.runners):
                return  # stopped or replaced meanwhile
            self._last_task[id(runner)] = task_id
            self._idle.append(runner)
            self._idle_since[id(runner)] = self._clock()
            self._changed.notify()
            self._report()

    async def execute(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], trace_carrier: dict[str, str]
    ) -> StepOutcome:
        """Run one attempt of ``step`` (the StepExecutor port); its latency and outcome go to the
        metrics (:meth:`~officeray.metrics.Metrics.step_finished`; a cancelled attempt is not counted)."""
        started = self._clock()
        outcome = await self._execute(task_id, step, inputs, trace_carrier)
        self.metrics.step_finished(step.action, step_outcome(outcome), self._clock() - started)
        return outcome

    async def _execute(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], trace_carrier: dict[str, str]
    ) -> StepOutcome:
        step, policy, refused = self._apply_policy(step, inputs)
        if refused is not None:
            return refused
        if _runs_on_host(self.catalog, step.action):
            return await self._execute_on_host(task_id, step, inputs, trace_carrier)
        try:
            context = await self._context_for(task_id, policy)
        except StoreError as exc:
            message = f"cannot read the task workspace: {exc}"
            return StepOutcome(error=StepError(type=ErrorType.INTERNAL, message=message))
        try:
            runner = await self._acquire(task_id)
        except NoRunnerError as exc:
            return StepOutcome(error=StepError(type=ErrorType.SANDBOX_ERROR, message=str(exc)))
        args: tuple[Any, ...] = (task_id, step, inputs, trace_carrier)
        if context is not None:
            args = (*args, context)
        call = asyncio.ensure_future(runner.run.remote(*args))
        stopping: asyncio.Future[None] | None = None
        try:
            answer = await asyncio.shield(call)
            return await self._settle(task_id, step, answer, policy)
        except asyncio.CancelledError:
            # the task was cancelled or ran out of time: stop the step in its sandbox; the runner
            # goes back to the pool once its run returned (another cancel only stops the waiting)
            stopping = self._keep(self._interrupt(runner, call, task_id, step.step_id))
            await asyncio.shield(stopping)
            raise
        except RayActorError as exc:
            logger.warning("tool runner died while running %s/%s: %s", task_id, step.step_id, exc)
            fresh = self.actors.start_runner()
            self.runners = [fresh if r is runner else r for r in self.runners]
            self._forget(runner)
            runner = fresh
            return StepOutcome(
                error=StepError(type=ErrorType.SANDBOX_ERROR, message=f"the tool runner died: {exc}")
            )
        finally:
            if stopping is None:
                await self._release(runner, task_id)

    # -- per-risk policies and the task workspace ------------------------------------------------------

    def _apply_policy(
        self, step: PlanStep, inputs: dict[str, Any]
    ) -> tuple[PlanStep, RiskPolicy | None, StepOutcome | None]:
        """The step under its risk's sandbox policy (timeout cut to ``max_timeout_s``), the policy,
        and the outcome of a step the policy refuses (error type ``policy``). An unknown tool gets no
        policy (the runner reports it)."""
        spec = self.catalog.get(step.action)
        if spec is None:
            return step, None, None
        risk = step_risk(spec.risk, step.action, inputs)
        policy = policy_for(risk, self.settings.sandbox.policies)
        refusal = policy_refusal(step.action, risk, policy)
        if refusal is not None:
            return step, policy, StepOutcome(error=StepError(type=ErrorType.POLICY, message=refusal))
        capped = capped_timeout(step.timeout_seconds, policy)
        if capped < step.timeout_seconds:
            step = step.model_copy(update={"timeout_seconds": max(1, int(capped))})
        return step, policy, None

    async def _workspace_owner(self, task_id: str) -> tuple[str, str]:
        """``(workspace task id, tenant)`` of a task: a subtask shares its root task's workspace."""
        known = self._owners.get(task_id)
        if known is not None:
            return known
        assert self.store is not None
        owner, tenant = await workspace_owner(self.store.get_task, task_id)
        self._owners[task_id] = (owner, tenant or DEFAULT_TENANT)
        while len(self._owners) > OWNER_CACHE_SIZE:
            del self._owners[next(iter(self._owners))]
        return self._owners[task_id]

    async def _context_for(self, task_id: str, policy: RiskPolicy | None) -> StepContext | None:
        """What a sandbox step is sent with: the task workspace (with a store) and the call limits."""
        limits = call_limits(policy) if policy is not None else None
        if self.store is None:
            return StepContext(limits=limits) if limits else None
        owner, _tenant = await self._workspace_owner(task_id)
        files = await self.store.workspace_contents(owner)
        return StepContext(workspace_id=owner, workspace=files, limits=limits)

    async def _settle(
        self, task_id: str, step: PlanStep, answer: StepOutcome | StepRun, policy: RiskPolicy | None
    ) -> StepOutcome:
        """The step's outcome once its workspace changes are kept in the store (before the workflow
        hears of it, so a resumed task sees them); changes over a cap fail the step
        (``output_limit``), and a policy without ``workspace_write`` drops them
        (``workspace_discarded`` in the output)."""
        if not isinstance(answer, StepRun):
            return answer
        outcome, changes = answer.outcome, answer.changes
        if outcome.error is not None or changes is None or changes.empty or self.store is None:
            return outcome
        if policy is not None and not policy.workspace_write:
            if isinstance(outcome.output, dict):
                return StepOutcome(output={**outcome.output, "workspace_discarded": changes.paths()})
            return outcome
        refused = [path for path in changes.written if artifact_path_problem(path) is not None]
        if refused:  # a runner never sends these; one that did must not break the task's later syncs
            logger.warning("dropping workspace paths the artifact API refuses: %r", refused[:10])
            written = {path: data for path, data in changes.written.items() if path not in refused}
            changes = WorkspaceChanges(written=written, deleted=changes.deleted)
            if changes.empty:
                return outcome
        owner, tenant = await self._workspace_owner(task_id)
        try:
            caps = self.workspace_caps
            await self.store.apply_workspace_changes(owner, tenant, step.step_id, changes, caps)
        except WorkspaceLimitError as exc:
            error = StepError(type=ErrorType.OUTPUT_LIMIT, message=str(exc))
            return StepOutcome(output=outcome.output, error=error)
        except StoreError as exc:
            message = f"cannot keep the step's workspace changes: {exc}"
            return StepOutcome(error=StepError(type=ErrorType.INTERNAL, message=message))
        return outcome

    def _keep(self, coro: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.ensure_future(coro)
        self._stopping.add(future)
        future.add_done_callback(self._stopping.discard)
        return future

    async def _interrupt(self, runner: Any, call: asyncio.Future[Any], task_id: str, step_id: str) -> None:
        """Stop a cancelled step on ``runner`` and take the runner back once its run returned; a
        runner that does not stop within ``interrupt_timeout_s`` is replaced."""
        limit = self.limits.interrupt_timeout_s
        try:
            await asyncio.wait_for(runner.interrupt.remote(task_id, step_id), limit)
            await asyncio.wait_for(asyncio.shield(call), limit)
        except Exception as exc:  # stuck or dead: a fresh runner takes its place
            logger.warning("tool runner did not stop cancelled step %s/%s: %s", task_id, step_id, exc)
            fresh = self.actors.start_runner()
            self.runners = [fresh if r is runner else r for r in self.runners]
            self._forget(runner)
            await self._release(fresh, task_id)
            await self._stop(runner)
            return
        await self._release(runner, task_id)

    async def _execute_on_host(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], trace_carrier: dict[str, str]
    ) -> StepOutcome:
        runner = self.host_runner
        try:
            return await runner.run.remote(task_id, step, inputs, trace_carrier)
        except asyncio.CancelledError:
            self._keep(self._interrupt_host(runner, task_id, step.step_id))  # frees its thread
            raise
        except RayActorError as exc:
            logger.warning("the host-tool runner died while running %s/%s: %s", task_id, step.step_id, exc)
            if self.host_runner is runner:
                self.host_runner = self.actors.start_host_runner()
            return StepOutcome(
                error=StepError(type=ErrorType.SANDBOX_ERROR, message=f"the host-tool runner died: {exc}")
            )

    async def _interrupt_host(self, runner: Any, task_id: str, step_id: str) -> None:
        try:
            await asyncio.wait_for(runner.interrupt.remote(task_id, step_id), self.limits.interrupt_timeout_s)
        except Exception as exc:
            logger.warning("host-tool runner did not stop cancelled step %s/%s: %s", task_id, step_id, exc)

    def shutdown(self) -> None:
        for runner in [*self.runners, self.host_runner, *(actor for actor, _ in self._starting.values())]:
            self.actors.kill(runner)
