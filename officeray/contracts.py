"""The data contracts of officeray, defined once.

Every boundary (HTTP, Ray calls, the store, the LLM tiers) speaks these pydantic v2 models. The plan
contract is the published JSON Schema shipped as ``officeray/schemas/plan.schema.json``
(:func:`plan_json_schema`): structured-output model tiers are asked for it, ready plans are written in
it, and the :class:`Plan` model accepts every document valid under it. Where officeray is stricter
(step count, timeout bounds, id lengths, registered tools), the rule is in :mod:`officeray.validate`
and its message reaches the planner as revision feedback.

Step inputs may refer to an earlier step's output with a *reference object*::

    {"from_step": "s1"}                  # the whole output of step s1
    {"from_step": "s1", "path": "value"} # one key (dot-separated for nesting: "a.b")

A step that uses a reference must list the referenced step in ``dependencies``; the validator
refuses a plan that does not, and the scheduler substitutes the value before the step runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from importlib import resources
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

DEFAULT_STEP_TIMEOUT_SECONDS = 300
"""A step's wall-clock limit when the plan does not set one (the seed's default)."""

MAX_STEP_TIMEOUT_SECONDS = 3600
"""The largest ``timeout_seconds`` a plan may ask for."""

MAX_TASK_DESCRIPTION_CHARS = 20_000
"""Longest task description accepted by the gateway, the CLI and the batch job."""

MAX_STEPS_PER_PLAN = 64
"""A plan with more steps than this is refused by a validator rule."""

MAX_STEP_ID_CHARS = 64
"""Longest step id a plan may use (a validator rule)."""

MAX_IDEMPOTENCY_KEY_CHARS = 200
"""Longest step idempotency key (a validator rule; the store's key columns hold this many)."""


def new_id(prefix: str) -> str:
    """A short random identifier such as ``life-3f2a9c...``."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def new_task_id() -> str:
    """A fresh task id (``task-`` and 16 hex digits). The one place task ids are minted: only the
    orchestrator calls it, for a task submitted without an id (see ``Orchestrator.submit``)."""
    return new_id("task")


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------
# Plans (the published plan schema: officeray/schemas/plan.schema.json)
# --------------------------------------------------------------------------------------------------

LEGACY_PRIORITIES: dict[str, int] = {"low": 0, "medium": 1, "high": 2}
"""Priorities of plans stored before the published schema (words); read as these integers."""


class _Tolerant(BaseModel):
    """Plan models accept every document valid under the published schema: unknown properties are
    dropped, never an error; officeray's stricter rules live in :mod:`officeray.validate`."""

    model_config = ConfigDict(extra="ignore")


class PlanMetadata(_Tolerant):
    priority: int = Field(default=0, ge=0)
    """Larger is more urgent; 0 is normal. Stored with the task; read by the scheduler."""
    required_tools: list[str] = Field(default_factory=list)
    estimated_cost_tokens: int | float = 0
    estimated_duration_seconds: int | float = 0.0

    @field_validator("priority", mode="before")
    @classmethod
    def _legacy_priority(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in LEGACY_PRIORITIES:
            return LEGACY_PRIORITIES[value.lower()]
        return value


class StepReference(_Strict):
    """An input value taken from an earlier step's output (see the module docstring)."""

    from_step: str = Field(min_length=1)
    path: str | None = None


OutputsExpectation = dict[str, Any]
"""What a step's output must satisfy (checked by the reviewer, :mod:`officeray.expectations`): a JSON
Schema (draft 2020-12), or the shorthand ``{"keys": ["a", "b"]}`` for an object with these keys."""


class PlanStep(_Tolerant):
    step_id: str
    """Any non-empty text (``"s1"``, ``"step 1"``); length and characters are validator rules."""
    action: str = Field(description="The registered tool this step calls.")
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs_expectation: OutputsExpectation | None = Field(
        default=None,
        description="A JSON Schema the step's output must satisfy, or {'keys': [...]}; null: none.",
    )
    timeout_seconds: int = DEFAULT_STEP_TIMEOUT_SECONDS
    """Bounds (1..:data:`MAX_STEP_TIMEOUT_SECONDS`) are a validator rule."""
    parallelizable: bool = False
    """False (the schema's default): the step runs alone, after what runs before it finished."""
    idempotency_key: str
    dependencies: list[str] = Field(default_factory=list)

    @field_validator("outputs_expectation", mode="before")
    @classmethod
    def _legacy_expectation(cls, value: Any) -> Any:
        """Plans stored before the published schema listed the expected keys."""
        if isinstance(value, list) and all(isinstance(key, str) for key in value):
            return {"keys": value} if value else None
        return value


class Plan(_Tolerant):
    plan_id: str
    task_id: str
    generated_at: datetime | None = Field(default_factory=utcnow)
    """When the plan was made; a value that is not a date-time is dropped (None)."""
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    metadata: PlanMetadata = Field(default_factory=PlanMetadata)
    steps: list[PlanStep] = Field(default_factory=list)
    """An empty list and more than :data:`MAX_STEPS_PER_PLAN` steps are refused by validator rules."""

    @field_validator("generated_at", mode="before")
    @classmethod
    def _lenient_timestamp(cls, value: Any) -> Any:
        if value is None or isinstance(value, datetime):
            return value
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                return None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return None


@functools.cache
def plan_json_schema() -> dict[str, Any]:
    """The published plan schema (``officeray/schemas/plan.schema.json``): what structured-output
    tiers are asked for and what ready plans are written in.

    Loaded once per process; treat the returned dict as read-only."""
    text = resources.files("officeray").joinpath("schemas/plan.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


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
    WAITING_REVIEW = "waiting_review"
    """The reviewer escalated the results to a person (``POST /v1/tasks/{id}/review`` decides)."""
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


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
    reused_from: str | None = None
    """The task whose remembered plan the tier reused instead of planning (:mod:`officeray.memory`)."""


TRACEPARENT_MAX_CHARS = 128
"""Longest ``traceparent`` a request carries (a valid one has 55 characters)."""


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
    priority: int = Field(default=0, ge=0, le=1000)
    """Higher runs first among the tenant's queued tasks (scheduling is fair across tenants)."""
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2000)
    """Where this task's events (completed, failed, cancelled, waiting_approval) are POSTed, signed
    (default: the tenant's ``tenants.<name>.webhook_url``)."""
    submitted_by: str | None = Field(default=None, max_length=128)
    """The id of the API key that submitted the task (set by the gateway; a client's value is
    replaced)."""
    traceparent: str | None = Field(default=None, max_length=TRACEPARENT_MAX_CHARS)
    """W3C ``traceparent`` of the span the task's trace hangs from (the gateway's ``submit`` span,
    itself a child of the caller's ``traceparent`` header); a malformed one starts a new trace."""
    plan: dict[str, Any] | None = Field(
        default=None,
        description="A ready plan in the published plan schema: run instead of asking the planner.",
    )
    """A *ready plan*: a document in the published plan schema that the first iteration runs instead
    of calling the planner. It is validated like a model's plan (and refused with the validator's
    reasons); the reviewer still reviews its results, and a REVISE verdict sends later iterations to
    the planner as usual. Kept as raw JSON here: its ``task_id`` is informational, because the client
    does not know the task's id when writing it; the plan runs with ``task_id`` set to the task's id
    (:meth:`ready_plan`)."""
    require_sign_off: bool = False
    """A person must accept the result before the task completes: the reviewer escalates results it
    would approve (the task waits in ``waiting_review``; see :mod:`officeray.review`)."""
    parent_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    """The task this one is a subtask of (set by the parent's coordinator, :mod:`officeray.subtasks`):
    a child task is never decomposed again."""

    @field_validator("description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("description must not be blank")
        return value

    def ready_plan(self, task_id: str) -> dict[str, Any] | None:
        """The submitted :attr:`plan` as it runs for task ``task_id`` (its ``task_id`` replaced)."""
        return None if self.plan is None else {**self.plan, "task_id": task_id}

    def fingerprint(self) -> str:
        """sha256 of the request as canonical JSON (sorted keys, defaults filled in), without its
        idempotency key: two requests with the same fingerprint ask for the same task (what an
        idempotency key's claim compares)."""
        data = self.model_dump(mode="json", exclude={"idempotency_key", "submitted_by", "traceparent"})
        for name, default in _FINGERPRINT_NEW_DEFAULTS.items():
            if name in data and data[name] == default:
                del data[name]  # fields added later leave the fingerprints of older requests as they were
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


_FINGERPRINT_NEW_DEFAULTS: dict[str, Any] = {"require_sign_off": False, "parent_id": None}
"""Fields :meth:`TaskRequest.fingerprint` leaves out while they hold these defaults (they were added
after fingerprints were stored: an older request's fingerprint does not change)."""


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
    CANCELLED = "cancelled"  # its task was cancelled (POST /v1/tasks/{id}/cancel) while it ran or waited
    DENIED = "denied"  # the gatekeeper refused the step before it ran (officeray.gatekeeper)
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
    ESCALATE = "ESCALATE"
    """Hand the results to a person: ``final_output`` is the proposed result, ``feedback`` why."""


class Review(_Strict):
    verdict: ReviewVerdict
    feedback: str = ""
    final_output: Any = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    """How sure the reviewer is (0..1; None: not said). An APPROVED review below
    ``workflow.escalation.confidence_threshold`` is escalated to a person."""


MemoryOutcome = Literal["completed", "failed", "cancelled"]
"""How a remembered task attempt ended (:mod:`officeray.memory`)."""


class FailedStep(_Strict):
    step_id: str
    action: str
    error_type: str
    message: str = ""


class MemoryHit(_Strict):
    """One retrieved entry."""

    entry_id: str
    task_id: str
    outcome: MemoryOutcome
    score: float
    """Cosine similarity of the query and the entry's description."""
    rank_score: float
    """``score`` plus the entry's promotion from positive ratings (what hits are ordered by)."""
    description: str
    lesson: str = ""
    rating: int = 0
    plan: dict[str, Any] | None = None
    failed_steps: list[FailedStep] = Field(default_factory=list)


class Recall(_Strict):
    """What the planner is given before planning: similar successes and similar failures."""

    successes: list[MemoryHit] = Field(default_factory=list)
    failures: list[MemoryHit] = Field(default_factory=list)
    best_score: float | None = None
    searched: int = 0
    """Entries of the tenant's index at the time of the search."""
    encoder: str = ""
    took_ms: float = 0.0
    reusable: str | None = None
    """The entry of a success close enough to reuse as it is (similarity at least
    ``memory.reuse_threshold``, every literal input of its plan in the new task's text): the
    embedded tier plans the task with it, without planning anew."""

    @property
    def hits(self) -> list[MemoryHit]:
        return [*self.successes, *self.failures]


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
    tenant: str = "default"
    """Whose task it is (model routers account tokens and cost per tenant; not part of the prompt)."""
    description: str
    iteration: int = 1
    allowed_tools: list[str]
    feedback: list[str] = Field(default_factory=list)
    previous_plan: Plan | None = None
    memory: Recall | None = None
    """Similar past successes and failures of the tenant (:mod:`officeray.memory`): examples and
    warnings for model tiers; a near-duplicate's plan the embedded tier may reuse."""


class ReviewRequest(_Strict):
    task_id: str
    tenant: str = "default"
    """Whose task it is (as :attr:`PlanRequest.tenant`)."""
    description: str
    iteration: int
    plan: Plan
    results: list[StepResult]
    require_sign_off: bool = False
    """The task asks for a person's sign-off (:attr:`TaskRequest.require_sign_off`): results the
    reviewer would approve are escalated instead."""


class PendingReview(_Strict):
    """Results that wait for a person's decision (a task in ``waiting_review``); kept on the record so
    that a resumed run goes back to waiting without re-running anything."""

    iteration: int
    reason: str = ""
    """Why the reviewer escalated (its feedback, or the confidence below the threshold)."""
    proposed_output: Any = None
    """What the task's result is once a person accepts it."""
    since: datetime
    """When the wait began (``timeout_s`` counts from it, across restarts)."""
    timeout_s: float
    """How long a decision may take (``workflow.escalation.timeout_s`` when the wait began)."""


ReviewDecisionKind = Literal["accept", "reject", "revise"]
REVIEW_DECISIONS: tuple[str, ...] = get_args(ReviewDecisionKind)


MAX_SUBTASKS = 16
"""Subtasks one task may be decomposed into."""

MAX_SUBTASK_ID_CHARS = 16
"""Longest subtask id (a child task's id is ``<parent id>.<subtask id>``)."""


class Subtask(_Strict):
    """One part of a decomposed task: run as a child task with its own plan/review loop."""

    subtask_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")
    description: str = Field(min_length=1, max_length=MAX_TASK_DESCRIPTION_CHARS)
    """What the child task is asked; ``{result:<subtask_id>}`` stands for a dependency's result (the
    coordinator writes it in before the child starts)."""
    dependencies: list[str] = Field(default_factory=list)
    """Subtasks whose results this one needs: it starts once they completed."""
    tool_hints: list[str] = Field(default_factory=list)
    """Tools the part probably needs (informational)."""


class Decomposition(_Strict):
    """A task's subtask DAG (what the decomposer role answers). One subtask: the task runs as today."""

    subtasks: list[Subtask] = Field(min_length=1, max_length=MAX_SUBTASKS)

    @model_validator(mode="after")
    def _a_dag(self) -> Decomposition:
        ids = [s.subtask_id for s in self.subtasks]
        if len(ids) != len(set(ids)):
            raise ValueError("subtask ids must be unique")
        seen: set[str] = set()
        for subtask in self.subtasks:  # dependencies name earlier subtasks only: no cycles
            unknown = [d for d in subtask.dependencies if d not in seen]
            if unknown:
                raise ValueError(
                    f"subtask {subtask.subtask_id} depends on {unknown}, which are not earlier subtasks"
                )
            seen.add(subtask.subtask_id)
        return self


class DecomposeRequest(_Strict):
    """What the decomposer is asked: the task and the tools it may use."""

    task_id: str
    tenant: str = "default"
    description: str
    allowed_tools: list[str] = Field(default_factory=list)


class Decomposed(_Strict):
    """A decomposition with the record of the model call that made it (routed decomposers)."""

    decomposition: Decomposition
    call: ModelCallRecord | None = None


class SubtaskView(_Strict):
    """A subtask as the parent's record shows it: its child task and where that stands."""

    subtask_id: str
    task_id: str
    """The child task (``<parent id>.<subtask id>``)."""
    description: str
    dependencies: list[str] = Field(default_factory=list)
    status: str = "pending"
    """``pending`` (waits for its dependencies), then the child task's status."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: str | None = None


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
    trace_parent: str | None = None
    """W3C ``traceparent`` of the span the task's spans hang from (the gateway's ``submit`` span)."""
    tenant: str = "default"
    usage: ModelUsage = Field(default_factory=ModelUsage)
    """Tokens and cost of every model call of this task (planner and reviewer; ai_tool steps too)."""
    model_calls: list[ModelCallRecord] = Field(default_factory=list)
    memory: list[MemoryHit] = Field(default_factory=list)
    """What the memory recalled before planning: similar past tasks of the tenant, best first
    (without their plans)."""
    counters: TaskCounters = Field(default_factory=TaskCounters)
    resumed: int = 0
    """How many times the task was resumed (after an orchestrator restart or a DLQ retry)."""
    review_pending: PendingReview | None = None
    """The escalated results waiting for a person (status ``waiting_review``); None otherwise."""
    logs: list[LogLine] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    run_started_at: datetime | None = None
    """When the current run began (a DLQ retry starts a new one); the duration cap counts from it."""
    review_wait_s: float = 0.0
    """Seconds this run's earlier rounds waited for a person's review (``waiting_review``): not
    counted against the wall-clock cap (``maximum_duration_s``)."""
    finished_at: datetime | None = None
    parent_id: str | None = None
    """The task this one is a subtask of (None: a top-level task)."""
    subtasks: list[SubtaskView] = Field(default_factory=list)
    """A decomposed task's subtasks (:mod:`officeray.subtasks`), each run as a child task
    ``<task_id>.<subtask_id>``, with its status; empty for a task that runs as one plan."""

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


# --------------------------------------------------------------------------------------------------
# What the store keeps about a task besides its record, as the API answers it (events, the dead-letter
# queue, approvals)
# --------------------------------------------------------------------------------------------------


def _as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime (a naive one is taken as UTC: SQLite keeps datetimes without offset)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


StoredAt = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(lambda moment: moment.isoformat(), return_type=str, when_used="json"),
]
"""A moment the store recorded: UTC, in JSON as ISO 8601 with a ``+00:00`` offset."""


class TaskEvent(_Strict):
    """One stored transition of a task (``GET /v1/tasks/{id}/events``), in the order written."""

    id: int | None = None
    """The event's sequence number in the store: increasing in the order written (the SSE event id)."""
    kind: str
    data: dict[str, Any]
    """What the transition recorded, as JSON data (values JSON cannot hold were stored as strings)."""
    at: StoredAt


class FeedEvent(TaskEvent):
    """One stored transition of any task, as the feed of every task's events answers it
    (``GET /v1/events``, the console's live task list): the event with its task and that task's tenant."""

    task_id: str
    tenant: str


class DlqEntry(_Strict):
    """A dead-lettered task as listed (``GET /v1/dlq``), newest first."""

    task_id: str
    tenant: str
    reason: str
    trace_id: str | None = None
    created_at: StoredAt
    """When the task was (last) put in the queue."""
    description: str


class DlqStepError(_Strict):
    """A failed step of a dead-lettered task."""

    step_id: str
    action: str
    attempts: int
    error: StepError


class DlqDetail(DlqEntry):
    """One dead-lettered task (``GET /v1/dlq/{task_id}``): the listed fields, the full record, its
    last plan and the steps that failed."""

    record: TaskRecord
    plan: Plan | None = None
    step_errors: list[DlqStepError] = Field(default_factory=list)

    @classmethod
    def of(cls, entry: DlqEntry, record: TaskRecord) -> DlqDetail:
        """The detail of ``entry``, whose full record is ``record``."""
        step_errors = [
            DlqStepError(step_id=step.step_id, action=step.action, attempts=step.attempts, error=step.error)
            for step in record.steps
            if step.error is not None
        ]
        return cls(**dict(entry), record=record, plan=record.plan, step_errors=step_errors)


ApprovalVerdict = Literal["approved", "rejected"]
APPROVAL_VERDICTS: tuple[str, ...] = get_args(ApprovalVerdict)


class ApprovalDecision(_Strict):
    """The first decision on a step that waits for a person (``GET /v1/tasks/{id}/approvals/{step}``).

    In the store ``step_id`` is the step's idempotency key (a decision belongs to one round's step);
    the API answers with the step id the client named."""

    task_id: str
    step_id: str
    decision: ApprovalVerdict
    decided_by: str
    reason: str | None = None
    decided_at: StoredAt


class ReviewDecision(_Strict):
    """A person's decision on escalated results (``POST /v1/tasks/{id}/review``): the first one per
    task and round (``iteration``) wins."""

    task_id: str
    iteration: int
    decision: ReviewDecisionKind
    feedback: str = ""
    """Why (``reject``), or what to change (``revise``: the next round's planner gets it)."""
    decided_by: str
    decided_at: StoredAt
