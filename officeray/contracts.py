"""The data contracts of officeray, defined once.

Every boundary (HTTP, Ray calls, the store, the LLM tiers) speaks these pydantic v2 models. The plan
schema is the seed's; :func:`plan_json_schema` exports it as JSON Schema, and that one schema is
what the validator checks and what structured-output model tiers are asked to produce.

Step inputs may refer to an earlier step's output with a *reference object*::

    {"from_step": "s1"}                  # the whole output of step s1
    {"from_step": "s1", "path": "value"} # one key (dot-separated for nesting: "a.b")

A step that uses a reference must list the referenced step in ``dependencies``; the validator
refuses a plan that does not, and the scheduler substitutes the value before the step runs.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_STEP_TIMEOUT_SECONDS = 300
"""A step's wall-clock limit when the plan does not set one (the seed's default)."""

MAX_STEP_TIMEOUT_SECONDS = 3600
"""The largest ``timeout_seconds`` a plan may ask for."""

MAX_TASK_DESCRIPTION_CHARS = 20_000
"""Longest task description accepted by the gateway, the CLI and the batch job."""

MAX_STEPS_PER_PLAN = 64
"""A plan with more steps than this is refused by the schema."""

STEP_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


def new_id(prefix: str) -> str:
    """A short random identifier such as ``task-3f2a9c...``."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------
# Plans (the seed's schema)
# --------------------------------------------------------------------------------------------------


class Priority(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class PlanMetadata(_Strict):
    priority: Priority = Priority.MEDIUM
    required_tools: list[str] = Field(default_factory=list)
    estimated_cost_tokens: int = Field(default=0, ge=0)
    estimated_duration_seconds: float = Field(default=0.0, ge=0)


class StepReference(_Strict):
    """An input value taken from an earlier step's output (see the module docstring)."""

    from_step: str = Field(pattern=STEP_ID_PATTERN)
    path: str | None = None


class PlanStep(_Strict):
    step_id: str = Field(pattern=STEP_ID_PATTERN)
    action: str = Field(min_length=1, description="The registered tool this step calls.")
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs_expectation: list[str] = Field(
        default_factory=list,
        description="Keys the step's output must contain for the reviewer to accept it.",
    )
    timeout_seconds: int = Field(default=DEFAULT_STEP_TIMEOUT_SECONDS, ge=1, le=MAX_STEP_TIMEOUT_SECONDS)
    parallelizable: bool = True
    idempotency_key: str = Field(min_length=1, max_length=200)
    dependencies: list[str] = Field(default_factory=list)


class Plan(_Strict):
    plan_id: str
    task_id: str
    generated_at: datetime = Field(default_factory=utcnow)
    confidence: float = Field(ge=0.0, le=1.0)
    metadata: PlanMetadata = Field(default_factory=PlanMetadata)
    steps: list[PlanStep] = Field(min_length=1, max_length=MAX_STEPS_PER_PLAN)


@functools.cache
def plan_json_schema() -> dict[str, Any]:
    """The plan's JSON Schema: used by the validator and requested from structured-output tiers.

    Built once per process (generating it costs milliseconds, on every planner call); treat the
    returned dict as read-only."""
    return Plan.model_json_schema()


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


class TaskStatus(StrEnum):
    QUEUED = "queued"
    PLANNING = "planning"
    VALIDATING = "validating"
    EXECUTING = "executing"
    WAITING_APPROVAL = "waiting_approval"
    REVIEWING = "reviewing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED)


class WorkflowRetryPolicy(_Strict):
    """Caps on a whole task run, so a runaway task stops (then it goes to the dead-letter queue).

    Separate from ``max_iterations`` (plan-review rounds) and from the per-step retry policy.
    """

    maximum_step_attempts: int = Field(default=50, ge=1, le=10_000)
    """Step attempts (first tries and retries, every round together) one task may make."""
    maximum_model_calls: int = Field(default=20, ge=1, le=1_000)
    """Planner and reviewer calls one task may make."""
    maximum_duration_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    """Wall-clock time from acceptance to a final state, approval waits included."""


class ModelUsage(_Strict):
    """Tokens and cost of model calls (summed with ``+``). Token counts come from the provider; the
    embedded tier counts whitespace-separated words. Cost comes from ``models.prices``."""

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    calls: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: ModelUsage) -> ModelUsage:
        return ModelUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            calls=self.calls + other.calls,
        )


class ModelCallRecord(_Strict):
    """One routed model call of a task: which tier answered, after how many fallbacks, at what cost."""

    role: str
    iteration: int = 0
    tier: str = ""
    model: str = ""
    fallbacks: int = 0
    cached: bool = False
    usage: ModelUsage = Field(default_factory=ModelUsage)
    attempts: list[dict[str, Any]] = Field(default_factory=list)
    """Every try in order: tier, model, outcome (ok, error, skipped_open_circuit, cache_hit), error."""


class TaskRequest(_Strict):
    """What a client submits: ``POST /v1/tasks``, ``officeray run``, a batch line."""

    description: str = Field(min_length=1, max_length=MAX_TASK_DESCRIPTION_CHARS)
    task_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    allowed_tools: list[str] | None = Field(
        default=None, description="Restrict the tools this task may use; all registered tools when omitted."
    )
    max_iterations: int | None = Field(default=None, ge=1, le=20)
    tenant: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    """Whose task this is: tokens and cost are also summed per tenant."""
    token_budget: int | None = Field(default=None, ge=1)
    """Most model tokens this task may spend (default: ``models.task_token_budget``)."""
    retry_policy: WorkflowRetryPolicy | None = None
    """Caps on the whole run (default: ``workflow.retry_policy`` in the config)."""
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    """The same key from the same tenant returns the same task (also the ``Idempotency-Key`` header)."""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("description must not be blank")
        return value


class StepStatus(StrEnum):
    PENDING = "pending"
    WAITING_APPROVAL = "waiting_approval"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class ErrorType(StrEnum):
    """Why a step failed. The retry policy and the reviewer decide on these."""

    TIMEOUT = "timeout"
    TOOL_ERROR = "tool_error"  # the tool ran and reported failure (exception in user code, ...)
    BAD_INPUT = "bad_input"  # the inputs were refused by the tool
    OUTPUT_LIMIT = "output_limit"
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed (crash, OOM, lost container)
    DEPENDENCY_FAILED = "dependency_failed"
    APPROVAL = "approval"  # a person rejected the step, or nobody decided in time
    POLICY = "policy"  # the workflow retry policy stopped the task (attempts, model calls, duration)
    INTERNAL = "internal"


TRANSIENT_ERROR_TYPES = frozenset({ErrorType.TIMEOUT, ErrorType.SANDBOX_ERROR, ErrorType.INTERNAL})
"""Failures that may pass on another attempt or another plan."""


class StepError(_Strict):
    type: ErrorType
    message: str


class StepResult(_Strict):
    step_id: str
    action: str
    idempotency_key: str
    status: StepStatus
    attempts: int = 0
    output: Any = None
    error: StepError | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class StepOutcome(_Strict):
    """What an executor reports for one attempt of one step: an output, or an error."""

    output: Any = None
    error: StepError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ReviewVerdict(StrEnum):
    APPROVED = "APPROVED"
    REVISE = "REVISE"
    FAILED = "FAILED"


class Review(_Strict):
    verdict: ReviewVerdict
    feedback: str = ""
    final_output: Any = None


class Planned(_Strict):
    """A plan with the record of the model call that made it (what routed planners return)."""

    plan: Plan
    call: ModelCallRecord | None = None


class Reviewed(_Strict):
    """A review with the record of the model call that made it (what routed reviewers return)."""

    review: Review
    call: ModelCallRecord | None = None


class PlanRequest(_Strict):
    """What the planner is asked: the task, the tools it may use, and what went wrong last time."""

    task_id: str
    description: str
    iteration: int = 1
    allowed_tools: list[str]
    feedback: list[str] = Field(default_factory=list)
    previous_plan: Plan | None = None


class ReviewRequest(_Strict):
    task_id: str
    description: str
    iteration: int
    plan: Plan
    results: list[StepResult]


class LogLine(_Strict):
    at: datetime = Field(default_factory=utcnow)
    level: Literal["info", "warning", "error"] = "info"
    message: str


class TaskCounters(_Strict):
    """What the workflow retry policy counts, kept in the record so a resumed task goes on counting."""

    step_attempts: int = 0
    model_calls: int = 0


class TaskRecord(_Strict):
    """The state of a task as clients see it (``GET /v1/tasks/{id}``, ``officeray run --json``)."""

    task_id: str
    description: str
    status: TaskStatus = TaskStatus.QUEUED
    result: Any = None
    error: str | None = None
    iterations: int = 0
    current_step: str | None = None
    steps: list[StepResult] = Field(default_factory=list)
    plan: Plan | None = None
    feedback: list[str] = Field(default_factory=list)
    trace_id: str | None = None
    tenant: str = "default"
    usage: ModelUsage = Field(default_factory=ModelUsage)
    """Tokens and cost of every model call of this task (planner and reviewer; ai_tool steps too)."""
    model_calls: list[ModelCallRecord] = Field(default_factory=list)
    counters: TaskCounters = Field(default_factory=TaskCounters)
    resumed: int = 0
    """How many times the task was resumed (after an orchestrator restart or a DLQ retry)."""
    logs: list[LogLine] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    run_started_at: datetime | None = None
    """When the current run began (a DLQ retry starts a new one); the duration cap counts from it."""
    finished_at: datetime | None = None

    @property
    def progress(self) -> dict[str, int]:
        counts = {s.value: 0 for s in StepStatus}
        for step in self.steps:
            counts[step.status.value] += 1
        counts["total"] = len(self.steps)
        return counts

    def public_view(self) -> dict[str, Any]:
        """The JSON clients get: the record plus a ``progress`` summary."""
        data = self.model_dump(mode="json")
        data["progress"] = self.progress
        return data
