"""What a load-test run leaves in its output folder before the report is built, and how it is named.

A run (``officeray loadtest``, or ``locust -f loadtests/locustfile.py`` with ``--out-dir``) writes:

* :data:`SAMPLES_FILE`: one JSON :class:`Sample` per line, one per request outcome, as locust's
  ``request`` event saw it (in distributed mode the workers send theirs to the master);
* :data:`TIMELINE_FILE`: one JSON :class:`Tick` per line, about once a second (:data:`TICK_S`);
* :data:`RUN_FILE`: one JSON :class:`RunInfo` object: the run's settings and its stages.

:mod:`loadtests.report` reads these three files and writes ``report.json``, ``report.html`` and
the plots. Sample files are plain JSON lines so that a run's raw data can be kept and re-reported.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

SAMPLES_FILE = "samples.jsonl"
TIMELINE_FILE = "timeline.jsonl"
RUN_FILE = "run.json"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

TICK_S = 1.0
"""How often the timeline gets a :class:`Tick`."""

SUBMIT_TYPE = "POST"
SUBMIT_NAME = "/v1/tasks"
"""The locust request type and name of a task submission (``POST /v1/tasks``)."""

POLL_NAME = "/v1/tasks/[id]"
"""The locust name of a task status read (``GET``; long poll or poll)."""

COMPLETION_TYPE = "TASK"
"""The locust request type of a task's completion; its name is the task kind (from the task mix).
The response time is from the start of the submission to the moment the final state was seen."""

MODEL_TYPE = "LLM"
"""The locust request type of the model user's samples; names are :data:`MODEL_METRICS`."""

MODEL_METRICS = ("ttft", "itl", "e2e")
"""Time to first token, mean inter-token latency of one response, end-to-end latency (all in ms).
An ``e2e`` sample also carries ``tokens`` (output tokens) and ``tokens_per_s`` (output tokens per
second after the first token, llmperf's definition)."""

DEFAULT_STAGE = "steady"
"""The stage name of a run without a staged shape."""


class Sample(TypedDict):
    t: float
    """Unix time the request ended."""
    type: str
    """locust ``request_type``."""
    name: str
    """locust ``name``."""
    ms: float
    """Response time in milliseconds."""
    ok: bool
    error: NotRequired[str]
    """Why it failed (``ok`` is False): the exception's text."""
    task_id: NotRequired[str]
    status: NotRequired[str]
    """A completion's final task status (``completed``, ``failed``, ``rejected``)."""
    tokens: NotRequired[int]
    tokens_per_s: NotRequired[float]


class Tick(TypedDict):
    t: float
    """Unix time of the tick."""
    users: int
    """Users running now (all workers)."""
    in_flight: int
    """Tasks submitted and not yet seen in a final state."""
    submitted: int
    """Tasks accepted so far (cumulative)."""
    completed: int
    """Tasks seen in a final state so far (cumulative, failed ones included)."""
    failures: int
    """Failed requests so far, of any type (cumulative)."""
    stage: str
    """The stage the run is in."""


class StageInfo(TypedDict):
    name: str
    start_s: float
    """Seconds from the run's start."""
    end_s: float
    users: int
    """Users the stage ends at (a ramp's target)."""
    spawn_rate: float
    arrival_rate: NotRequired[float]
    """Open-loop tasks per second in this stage, when the run is open-loop."""


class RunInfo(TypedDict):
    started_at: float
    """Unix time the load started."""
    ended_at: float
    host: str
    """Base URL of the system under test."""
    mode: str
    """``closed`` (N users, each one task at a time) or ``open`` (Poisson arrivals)."""
    scenario: str
    """``tasks`` (TaskUser) or ``model`` (ModelUser)."""
    stand_in_model: bool
    """Whether the model tier was the embedded tier's latency model (a stand-in), not a real model."""
    stages: list[StageInfo]
    settings: dict[str, Any]
    """The command's settings as given (users, spawn rate, duration, workers, shape, task mix...)."""
    traces: NotRequired[dict[str, Any]]
    """Trace completeness of the completed tasks (see :mod:`loadtests.traces`)."""
