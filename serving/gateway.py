"""The HTTP API: a FastAPI app as the Serve ingress.

Every route but ``GET /healthz`` (and the OpenAPI documents) needs ``Authorization: Bearer KEY``
(:mod:`serving.security`; 401 ``unauthorized`` without a valid key). A key belongs to one tenant and
has a role (:class:`officeray.auth.Role`):

* the tenant of what a request creates is the key's, never the body's: a ``tenant`` in the body that
  is not the key's answers 403 (``forbidden``), except from an admin key, which acts for any tenant;
  ``submitted_by`` is the key's id;
* another tenant's task answers 404 ``task_not_found`` exactly as an unknown one (every task route,
  the DLQ entry routes). A client-chosen ``task_id`` that another tenant's task has answers 409
  ``task_id_unavailable`` with a neutral message (ids are global: the id is not free, and nothing
  more is said); idempotency keys belong to a tenant, so their 409 only ever names the caller's task;
* lists (``GET /v1/tasks``, ``GET /v1/dlq``) show the key's tenant's entries; an admin's show every
  tenant's, or ``?tenant=``'s; any other key asking for another tenant gets 403;
* approvals need an approver (of the task's tenant) or an admin key and are recorded as decided by
  the key's id (the body's ``by`` is accepted for older clients and ignored); DLQ retries need an
  admin key; a tenant's usage is read by its own keys or an admin.

Submissions (``POST /v1/tasks``, ``POST /tasks``) pass the tenant's limits (``tenants:`` in the
config, :mod:`officeray.quotas`): over its submit rate, 429 ``rate_limited`` with ``Retry-After``
(whole seconds, per gateway replica); above a ceiling (``token_budget``,
``retry_policy.maximum_step_attempts``), 422 ``over_ceiling`` with one ``errors`` entry per ceiling;
a DLQ retry of a task retried ``max_dlq_retries`` times already, 422 ``over_ceiling``.

The task API (what the issue documents; every error answer has ``detail`` and ``code``):

* ``POST /tasks``: body ``{"description": str, "constraints": {"max_duration": seconds > 0,
  "allowed_tools": [names]}, "plan"?: {...}}`` (:class:`TaskSubmission`; both constraints optional,
  any other key a 422 naming it); answers 202 ``{"task_id", "status", "estimated_completion"}``.
  ``constraints.allowed_tools`` restricts the tools (an unknown name: 422, code ``unknown_tools``);
  ``constraints.max_duration`` is the task's wall-clock cap, from acceptance to a final state
  (the workflow retry policy's ``maximum_duration_s``; the configured ``workflow.retry_policy``
  otherwise): when it is reached, even in the middle of a step, the task fails with
  ``"workflow retry policy: maximum_duration_s (S) reached ..."``. ``estimated_completion`` is
  the latest moment the task can end: its acceptance time plus that cap (ISO-8601, UTC).
* ``GET /tasks/{task_id}`` and ``GET /tasks/{task_id}/status``: ``{"task_id", "status",
  "current_step", "progress", "logs", "final_result", "error"}`` (:class:`TaskStatusView`):
  ``current_step`` is a sentence (``"planning (iteration 1)"``, ``"step s2 (code_analyzer)
  running"``, ``"reviewing the results (iteration 1)"``, ``"completed"``), ``progress`` the
  finished steps over all steps of the current plan (0.0 to 1.0; 1.0 once completed),
  ``final_result`` the approved result (null until completed).
* ``GET /tasks/{task_id}/logs``: ``{"task_id", "logs"}``; a log line reads
  ``"2026-01-01T12:00:00.123456+00:00 info step s1 (code_analyzer) started"``.
* An unknown task answers 404 (``code`` ``task_not_found``).

A *ready plan* (``plan`` in ``POST /tasks`` and ``POST /v1/tasks``) is a document in the published
plan schema that the task runs instead of calling the planner on its first iteration (the reviewer
still reviews; a REVISE goes to the planner). Its ``task_id`` is informational: the plan runs under
the task's id. It is validated here as the workflow validates a model's plan: an invalid one
answers 422 ``{"detail": "invalid plan: ...", "code": "invalid_plan", "reasons": [...]}`` and
nothing is created.

The full API (``/v1``):

* ``POST /v1/tasks``: body :class:`~officeray.contracts.TaskRequest`; answers 202
  ``{"task_id", "status"}`` once the task is persisted. A ``task_id`` already known answers 200 with
  that task instead of starting a second one.
* ``GET /v1/tasks/{task_id}``: the task record with ``progress`` (step counts by status),
  ``current_step``, the steps with their status, attempts, output or error, and log lines. With
  ``?wait_s=S`` (at most :data:`MAX_WAIT_S`) it is a long poll: the answer comes when the task is
  final or after ``S`` seconds, whichever is first (clients follow a task without busy polling).
* ``GET /v1/tasks?status=&created_after=&limit=&cursor=[&tenant=]``: ``{"tasks": [summaries],
  "next_cursor"}``, newest first (:class:`TaskList`); ``next_cursor`` (null on the last page) is an
  opaque keyset cursor to send back as ``?cursor=`` (a forged one: 422).
* ``GET /v1/tasks/{task_id}/events``: the task's transitions in order (JSON, each with its ``id``);
  with ``Accept: text/event-stream`` a live stream of them that resumes after ``Last-Event-ID`` and
  ends after the final state (:mod:`serving.events`).
* ``GET /v1/tasks/{task_id}/webhooks``: the task's webhook deliveries and their attempts.
* ``POST /v1/tasks/{task_id}/cancel``: 202; the run stops and the task ends ``cancelled`` (409
  ``task_final`` for a task that already ended).
* ``GET /v1/tasks/{task_id}/trace``: the task's spans in order.
* ``POST /v1/tasks/{task_id}/feedback`` ``{"rating": -1|0|1, "comment", "labels"}``
  (:class:`officeray.feedback.Feedback`, bounded sizes): 201 with the stored feedback;
  ``GET`` the same path: the task's feedback, oldest first.
* ``GET /v1/memory/search?q=TEXT&k=5[&outcome=completed|failed|cancelled][&tenant=]``: the
  ``k`` (1 to :data:`~officeray.memory.entries.MAX_SEARCH_K`) remembered task attempts of the caller's
  tenant (an admin: ``?tenant=``'s) nearest to ``q`` (1 to
  :data:`~officeray.memory.entries.MAX_QUERY_CHARS` characters), best first: ``{"query", "tenant",
  "hits": [MemoryHit...]}``. ``DELETE /v1/memory/{entry_id}``: forget one entry of the caller's
  tenant (an admin: any), ``{"entry_id", "deleted": 1}`` or 404 ``memory_entry_not_found``;
  ``DELETE /v1/tasks/{task_id}/memory``: a task's entries, ``{"task_id", "deleted": n}``;
  ``DELETE /v1/memory?tenant=T``: all of a tenant's entries (its own keys or an admin),
  ``{"tenant", "deleted": n}``. Admin only: ``POST /v1/memory/rebuild`` (every tenant's index from
  the store: the rebuild report) and ``GET /v1/memory/stats``. Without a memory (``memory.enabled``
  false) these answer 503 ``memory_off``; a memory that does not answer, 503 ``memory_unavailable``.
  A feedback rating (``POST /v1/tasks/{task_id}/feedback``) is passed on to the memory, which
  demotes or promotes the task's entries (a memory that fails there is logged; the feedback stands).
* ``GET /v1/tenants/{tenant}/usage``: tokens and cost summed over the tenant's finished tasks and its
  chat completions.
* ``POST /v1/chat/completions`` (``model`` = ``planner`` | ``reviewer`` | ``ai_tool``) and
  ``GET /v1/models``: the role models in the OpenAI chat-completions shape (:mod:`serving.chat_api`).
* ``GET /v1/dlq`` (``?tenant=``, ``?limit=``): the dead-letter queue, newest first;
  ``GET /v1/dlq/{task_id}``: one entry with the task record; ``POST /v1/dlq/{task_id}/retry``: 202
  ``{"task_id", "status"}``, the task runs again from its last good checkpoint.
* ``POST /v1/tasks/{task_id}/approvals/{step_id}`` (body ``{"decision": "approve" | "reject",
  "reason"}``; approver and admin keys, ``decided_by`` is the key's id): decides a step that waits
  for approval (409 when it does not wait, or was decided);
  ``GET`` the same path: the decision.
* ``POST /v1/tasks/{task_id}/review`` (body ``{"decision": "accept" | "reject" | "revise",
  "feedback"}``, feedback required for ``revise``; approver and admin keys): decides the results a
  task escalated to a person (409 ``not_waiting_review`` / ``review_already_decided``; a revise of
  a decomposed task's integrated result: 409 ``revise_not_supported``);
  ``GET /v1/reviews``: the tasks of the caller's tenant that wait for such a decision
  (:mod:`officeray.review`).
* ``GET /healthz``: ``{"status": "ok", "tasks_in_flight": N, "tool_runners": {...}}`` when the
  orchestrator answers; ``tool_runners`` sums the runner pools (runners, idle, starting, steps
  waiting for a runner: what the pool's autoscaling acts on) and lists ``problems`` (e.g. no node
  advertises the runners' ``docker`` resource, so they cannot start).

Idempotency: ``POST /v1/tasks`` with an ``Idempotency-Key`` header (or ``idempotency_key`` in the
body) answers the task first created with that key by that tenant (200) instead of creating another;
the same key with a different request answers 409. The orchestrator claims the key and creates the
task in one call (:meth:`actors.client.OrchestratorClient.submit`); a claim whose task never got
created (the submission failed half-way) is taken over by the next identical request, so a retry
after a failure creates the task.

The gateway talks to the orchestrators only through :class:`actors.client.OrchestratorClient`
(submissions, long polls, DLQ retries, approval decisions, health); it reads tasks from the store
itself and writes nothing there.

Bad input answers 4xx with a message (422 for a body that does not match the schema, with one
entry per bad field; 413 for a body over :data:`MAX_REQUEST_BYTES`), an unknown id answers 404, and
a store that cannot be reached answers 503 with ``Retry-After``: nothing of the request was accepted.
Every error answer is an :class:`ErrorBody`, ``{"detail": "...", "code": "..."}`` (plus ``errors``
where fields are at fault, or ``reasons``), declared so in the OpenAPI document with the bearer key
(:func:`document_errors`): ``code`` is one of :data:`ERROR_CODES`' values or a more precise one
(``task_not_found``, ``unknown_tools``, ``invalid_plan``, ``idempotency_conflict``...). An
unexpected error answers 500 ``internal_error`` in the same shape (logged, no traceback).

Why one file of this length: Serve's ingress is one class whose routes share its state, and
``serve.ingress`` pickles it with the module globals its routes use, so the helpers live beside it.
"""

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Self, TypeVar

import ray
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.client import OrchestratorClient, create_client
from actors.collector import COLLECTOR_NAME, tracer_for
from actors.orchestrator import ModelPorts
from actors.webhooks import webhook_url_problem
from officeray.auth import Action, Principal
from officeray.config import Settings, TenantLimits
from officeray.contracts import (
    MAX_TASK_DESCRIPTION_CHARS,
    TRACEPARENT_MAX_CHARS,
    DlqDetail,
    MemoryOutcome,
    ModelUsage,
    PendingReview,
    ReviewDecisionKind,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    WorkflowRetryPolicy,
    utcnow,
)
from officeray.errors import (
    ApprovalConflictError,
    IdempotencyConflictError,
    LimitExceededError,
    ModelUnavailableError,
    OfficerayError,
    OrchestratorUnavailableError,
    ReviewConflictError,
    StoreUnavailableError,
    TaskFinalError,
    TaskNotFoundError,
)
from officeray.feedback import Feedback, TaskFeedback
from officeray.memory.entries import MAX_QUERY_CHARS, MAX_SEARCH_K, MemoryService
from officeray.quotas import (
    SubmitRateLimiter,
    ceiling_problems,
    daily_budget_spent_reason,
)
from officeray.review import MAX_REVIEW_FEEDBACK_CHARS, check_review_request
from officeray.store import SqlStore, TaskStore
from officeray.store.api import MAX_CURSOR_CHARS, TaskCursor, as_utc
from officeray.subtasks import REVISE_NOT_SUPPORTED, revise_refusal
from officeray.telemetry import TASK_ID_ATTR, parse_traceparent, traceparent_of
from officeray.tools.catalog import ToolCatalog, build_catalog
from officeray.validate import validate_plan
from officeray.workspaces import (
    artifact_headers,
    artifact_media_type,
    artifact_path_problem,
    workspace_owner,
)
from serving.chat_api import make_chat_router
from serving.console import console_response
from serving.events import (
    EVENTS_OPENAPI,
    FEED_OPENAPI,
    EventSourceResponse,
    deliveries_view,
    event_feed_response,
    event_stream_response,
    events_view,
    feed_view,
    parse_last_event_id,
    wants_event_stream,
)
from serving.models import call_with_backpressure, unwrap_chat_reply
from serving.security import KeyVerifier, authenticated, forbidden, install_verifier, require
from serving.system import (
    MESSAGE_WINDOW_S,
    PENDING_APPROVALS_LIMIT,
    SpanLink,
    SystemView,
    pending_approvals,
    system_view,
    waiting_steps,
)
from serving.tiers.base import BackpressureError, ModelAnswer, ModelCall, Role

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0

HEALTH_RUNNER_FIELDS = ("runners", "idle", "starting", "waiting_steps")
"""The tool-runner pool figures ``/healthz`` reports, summed over the orchestrator shards."""

MAX_REQUEST_BYTES = 1024 * 1024
"""Largest request body accepted (1 MiB); a larger one answers 413 before it is parsed."""

STORE_RETRY_AFTER_S = 5
"""``Retry-After`` of the 503 answered while the store cannot be reached."""

DLQ_LIST_MAX = 1000
"""Most dead-letter entries one ``GET /v1/dlq`` returns."""

MAX_WAIT_S = 30.0
"""Longest long poll (``GET /v1/tasks/{task_id}?wait_s=``)."""

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_CHARS = 200

TASK_LIST_DEFAULT = 50
"""Tasks one ``GET /v1/tasks`` returns unless ``?limit=`` says otherwise."""

TASK_LIST_MAX = 500
"""Most tasks one ``GET /v1/tasks`` returns."""

SUMMARY_DESCRIPTION_CHARS = 200
"""A task's description in a list is cut to this many characters (the task itself has all of it)."""

TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"

PUBLIC_PATHS = frozenset({"/healthz"})
"""Routes that answer without a key (besides the OpenAPI documents)."""

OPENAI_ERROR_PATHS = ("/v1/chat/", "/v1/models")
"""Routes that answer errors in OpenAI's shape (:mod:`serving.chat_api`), not :class:`ErrorBody`."""

ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}
"""The ``code`` of an error answer by HTTP status, where no more precise code is given."""


class ApiError(HTTPException):
    """An error answer with a machine-readable ``code`` (and any ``extra`` fields) beside ``detail``."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        code: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.code = code
        self.extra = extra


class _BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413: by ``Content-Length`` before reading, and
    by counting the streamed body (chunked uploads) before the app sees any of it."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await _send_json(
                    send, 400, {"detail": "invalid Content-Length header", "code": "bad_request"}
                )
                return
            if too_large:
                await self._refuse(send)
                return
        # Read the whole body (at most max_bytes) before the app runs, then replay it.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([], message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], None, receive), send)

    async def _refuse(self, send: Send) -> None:
        detail = f"request body too large: at most {self.max_bytes} bytes are accepted"
        await _send_json(send, 413, {"detail": detail, "code": ERROR_CODES[413]}, close=True)


def _replay(buffered: list[Message], last: Message | None, receive: Receive) -> Receive:
    pending = [*buffered, *([last] if last is not None else [])]

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _send_json(send: Send, status: int, content: dict[str, Any], *, close: bool = False) -> None:
    payload = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class FieldError(BaseModel):
    """One field at fault: its dotted path in the request and what is wrong with it."""

    model_config = ConfigDict(extra="allow")

    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer of the task API (4xx and 5xx): ``detail`` says what went wrong in a sentence,
    ``code`` is machine-readable (:data:`ERROR_CODES` or a more precise one: ``task_not_found``,
    ``unauthorized``, ``rate_limited``, ``over_ceiling``...), ``errors`` lists the fields at fault
    where there are any. Some answers carry more (``reasons`` of an ``invalid_plan``)."""

    model_config = ConfigDict(extra="allow")

    detail: str
    code: str
    errors: list[FieldError] | None = None


_SCHEMA_REF = "#/components/schemas/{model}"
_ERROR_RESPONSE = {
    "description": "An error (see ErrorBody)",
    "content": {"application/json": {"schema": {"$ref": _SCHEMA_REF.format(model="ErrorBody")}}},
}
_SECURITY_SCHEME = "apiKey"


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (an OpenAPI document of this app) with :class:`ErrorBody` as every task route's
    error answer (401, 422 and any 4XX/5XX) and the bearer key every route but the public ones needs."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template=_SCHEMA_REF)
    schemas.update(body.pop("$defs", {}))
    schemas["ErrorBody"] = body
    components.setdefault("securitySchemes", {})[_SECURITY_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (ofr_...), as 'Authorization: Bearer <key>'.",
    }
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if path not in PUBLIC_PATHS:
                operation["security"] = [{_SECURITY_SCHEME: []}]
            if path.startswith(OPENAI_ERROR_PATHS):
                continue
            statuses = ["422", "4XX", "5XX"] if path in PUBLIC_PATHS else ["401", "422", "4XX", "5XX"]
            if "422" not in responses:
                statuses.remove("422")  # nothing to validate: no 422 to document
            for status in statuses:
                responses[status] = {
                    **_ERROR_RESPONSE,
                    "description": responses.get(status, {}).get(
                        "description", _ERROR_RESPONSE["description"]
                    ),
                }
    return schema


class _TaskApi(FastAPI):
    """The app, its OpenAPI document declaring the one error shape (:func:`document_errors`)."""

    def openapi(self) -> dict[str, Any]:
        built = self.openapi_schema is not None
        schema = super().openapi()
        return schema if built else document_errors(schema)


app = _TaskApi(title="officeray", version="0.1.0")
app.add_middleware(_BodySizeLimit, max_bytes=MAX_REQUEST_BYTES)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """``{"detail", "code"}`` (and an :class:`ApiError`'s extra fields) for every HTTP error."""
    code = getattr(exc, "code", None) or ERROR_CODES.get(exc.status_code, "error")
    content = {"detail": exc.detail, "code": code, **getattr(exc, "extra", {})}
    return JSONResponse(status_code=exc.status_code, content=jsonable_encoder(content), headers=exc.headers)


_TASK_CREATION_PATHS = frozenset({"/v1/tasks", "/tasks"})


_PYDANTIC_VALUE_ERROR = "Value error, "
"""What pydantic puts before the message of a ValueError raised in a validator."""


@app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        message = str(err.get("msg", "invalid")).removeprefix(_PYDANTIC_VALUE_ERROR)  # our own words only
        errors.append({"field": ".".join(loc) or "(body)", "message": message})
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    creating = request.url.path.rstrip("/") in _TASK_CREATION_PATHS
    what = "invalid task request" if creating else "invalid request"
    content = {"detail": f"{what}: {summary}", "code": ERROR_CODES[422], "errors": errors}
    return JSONResponse(status_code=422, content=content)


@app.exception_handler(StoreUnavailableError)
async def _store_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("store unavailable: %s", exc)
    return JSONResponse(
        status_code=503,
        content={
            "detail": f"the task store is unavailable, nothing was changed; retry in "
            f"{STORE_RETRY_AFTER_S}s ({_first_line(exc)})",
            "code": "store_unavailable",
        },
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


@app.exception_handler(OrchestratorUnavailableError)
async def _orchestrator_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("orchestrator unavailable: %s", exc)
    return JSONResponse(
        status_code=503,
        content={"detail": _first_line(exc), "code": "orchestrator_unavailable"},
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


@app.exception_handler(IdempotencyConflictError)
async def _idempotency_conflict(_request: Request, exc: Exception) -> JSONResponse:
    # an idempotency key belongs to one tenant (the key's), so the task it names is the caller's own
    return JSONResponse(status_code=409, content={"detail": _first_line(exc), "code": "idempotency_conflict"})


ORCHESTRATOR_REFUSALS: dict[type[OfficerayError], tuple[int, str]] = {
    TaskNotFoundError: (404, "task_not_found"),
    TaskFinalError: (409, "task_final"),
    ApprovalConflictError: (409, "approval_conflict"),
    LimitExceededError: (422, "over_ceiling"),
}
"""Status and ``code`` of each refusal the orchestrator client raises that a route does not answer
itself (IdempotencyConflictError and the unavailable errors have their own handlers above)."""


async def _orchestrator_refusal(_request: Request, exc: Exception) -> JSONResponse:
    """An orchestrator's refusal in the one error shape (:data:`ORCHESTRATOR_REFUSALS`), never a 500."""
    status, code = next(
        (answer for cls, answer in ORCHESTRATOR_REFUSALS.items() if isinstance(exc, cls)), (409, "conflict")
    )
    content: dict[str, Any] = {"detail": _first_line(exc), "code": code}
    if isinstance(exc, TaskFinalError) and exc.status:
        content["status"] = exc.status
    return JSONResponse(status_code=status, content=content)


for _refusal in ORCHESTRATOR_REFUSALS:
    app.add_exception_handler(_refusal, _orchestrator_refusal)


@app.exception_handler(Exception)
async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
    """The last resort: a 500 in the one error shape, without a traceback (it is logged)."""
    logger.error("request failed", exc_info=exc)
    content = {"detail": f"internal error ({type(exc).__name__})", "code": ERROR_CODES[500]}
    return JSONResponse(status_code=500, content=content)


def _first_line(exc: BaseException) -> str:
    """The message of an error without the traceback Ray adds to errors raised in an actor."""
    cause = getattr(exc, "cause", None)  # RayTaskError carries the original exception
    text = str(cause if isinstance(cause, BaseException) else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ApprovalRequest(BaseModel):
    """Body of ``POST /v1/tasks/{task_id}/approvals/{step_id}``."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    by: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Ignored (kept for older clients): the decision is recorded as the API key's id.",
    )
    reason: str = Field(default="", max_length=2000)


_STORED_DECISION: dict[str, Literal["approved", "rejected"]] = {"approve": "approved", "reject": "rejected"}


class ReviewDecisionRequest(BaseModel):
    """Body of ``POST /v1/tasks/{task_id}/review``: a person's decision on escalated results."""

    model_config = ConfigDict(extra="forbid")

    decision: ReviewDecisionKind = Field(
        description="accept: complete with the proposed result; reject: fail the task; revise: another "
        "round, with the feedback for its planner."
    )
    feedback: str = Field(default="", max_length=MAX_REVIEW_FEEDBACK_CHARS)

    @model_validator(mode="after")
    def _feedback_for_revise(self) -> Self:
        problem = check_review_request(self.decision, self.feedback)
        if problem is not None:
            raise ValueError(problem)
        return self


class TaskConstraints(BaseModel):
    """``constraints`` of ``POST /tasks``: both optional; any other key is refused, by name."""

    model_config = ConfigDict(extra="forbid")

    max_duration: float | None = Field(
        default=None,
        gt=0,
        description="The task's wall-clock cap in seconds, from acceptance to a final state "
        "(default: the configured workflow.retry_policy.maximum_duration_s).",
    )
    allowed_tools: list[str] | None = Field(
        default=None, description="The tools the task may use (default: every registered tool)."
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"unknown constraint(s) {', '.join(map(repr, unknown))}; "
                    f"known: {', '.join(sorted(cls.model_fields))}"
                )
        return data


class TaskSubmission(BaseModel):
    """Body of ``POST /tasks``."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(min_length=1, max_length=MAX_TASK_DESCRIPTION_CHARS)
    constraints: TaskConstraints = Field(default_factory=TaskConstraints)
    plan: dict[str, Any] | None = Field(
        default=None,
        description="A ready plan in the published plan schema, run instead of asking the planner; "
        "its task_id is informational (the plan runs under the task's id).",
    )


class TaskAccepted(BaseModel):
    """Answer of ``POST /tasks``."""

    task_id: str
    status: str
    estimated_completion: datetime = Field(
        description="The latest moment the task can end: acceptance plus its wall-clock cap (UTC)."
    )


class TaskStatusView(BaseModel):
    """Answer of ``GET /tasks/{task_id}`` and ``GET /tasks/{task_id}/status``."""

    task_id: str
    status: str
    current_step: str = Field(description="What the task does now, as a sentence.")
    progress: float = Field(ge=0.0, le=1.0, description="Finished steps over the plan's steps.")
    logs: list[str]
    final_result: Any = Field(default=None, description="The approved result; null until completed.")
    error: str | None = None


class TaskLogsView(BaseModel):
    """Answer of ``GET /tasks/{task_id}/logs``."""

    task_id: str
    logs: list[str]


_FINISHED_STEP = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED})

_PHASES = {
    TaskStatus.PLANNING: "planning",
    TaskStatus.VALIDATING: "validating the plan",
    TaskStatus.EXECUTING: "executing the plan",
    TaskStatus.REVIEWING: "reviewing the results",
    TaskStatus.WAITING_REVIEW: "waiting for a person's review",
}


def _steps_phrase(steps: list[StepResult]) -> str:
    names = ", ".join(f"{s.step_id} ({s.action})" for s in steps)
    return f"step {names}" if len(steps) == 1 else f"steps {names}"


def describe_current_step(record: TaskRecord) -> str:
    """What the task does now, as a sentence: ``"planning (iteration 1)"``, ``"step s2
    (code_analyzer) running"``, ``"completed"``..."""
    if record.status == TaskStatus.QUEUED or record.status.is_final:
        return record.status.value
    running = [s for s in record.steps if s.status == StepStatus.RUNNING]
    waiting = [s for s in record.steps if s.status == StepStatus.WAITING_APPROVAL]
    if record.status in (TaskStatus.EXECUTING, TaskStatus.WAITING_APPROVAL) and (running or waiting):
        parts = [f"{_steps_phrase(running)} running"] if running else []
        parts += [f"{_steps_phrase(waiting)} waiting for approval"] if waiting else []
        return "; ".join(parts)
    phase = _PHASES.get(record.status, record.status.value)
    return f"{phase} (iteration {max(1, record.iterations)})"


def step_progress(record: TaskRecord) -> float:
    """Finished steps over the current plan's steps; 1.0 once the task completed."""
    if record.status == TaskStatus.COMPLETED:
        return 1.0
    if not record.steps:
        return 0.0
    return sum(s.status in _FINISHED_STEP for s in record.steps) / len(record.steps)


def log_lines(record: TaskRecord) -> list[str]:
    return [f"{line.at.isoformat()} {line.level} {line.message}" for line in record.logs]


def status_view(record: TaskRecord) -> TaskStatusView:
    return TaskStatusView(
        task_id=record.task_id,
        status=record.status.value,
        current_step=describe_current_step(record),
        progress=step_progress(record),
        logs=log_lines(record),
        final_result=record.result if record.status == TaskStatus.COMPLETED else None,
        error=record.error,
    )


def task_request_from(body: TaskSubmission, default_policy: WorkflowRetryPolicy) -> TaskRequest:
    """The :class:`TaskRequest` a ``POST /tasks`` body asks for (422 for what it refuses)."""
    constraints = body.constraints
    try:
        policy = None
        if constraints.max_duration is not None:
            policy = WorkflowRetryPolicy.model_validate(
                {**default_policy.model_dump(), "maximum_duration_s": constraints.max_duration}
            )
        return TaskRequest(
            description=body.description,
            allowed_tools=constraints.allowed_tools,
            retry_policy=policy,
            plan=body.plan,
        )
    except ValidationError as exc:
        fields = {"maximum_duration_s": "constraints.max_duration"}
        errors = [
            {
                "field": ".".join(fields.get(str(p), str(p)) for p in e["loc"]) or "(body)",
                "message": str(e["msg"]).removeprefix(_PYDANTIC_VALUE_ERROR),
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise ApiError(422, f"invalid task request: {summary}", ERROR_CODES[422], errors=errors) from None


def check_no_parent(task: TaskRequest) -> None:
    """422 (``invalid_request``) for a ``parent_id``: only a parent's coordinator makes subtasks
    (:mod:`officeray.subtasks`); a client's would share another task's workspace and stop its own
    task from being decomposed."""
    if task.parent_id is None:
        return
    message = "parent_id is set by the coordinator of a decomposed task, not by a client"
    raise ApiError(
        422,
        f"invalid task request: parent_id: {message}",
        ERROR_CODES[422],
        errors=[{"field": "parent_id", "message": message}],
    )


def check_allowed_tools(names: list[str] | None, registered: ToolCatalog) -> None:
    """422 (``unknown_tools``) naming the tools that are not in the catalog."""
    unknown = sorted(set(names or ()) - set(registered))
    if unknown:
        raise ApiError(
            422,
            f"invalid task request: allowed_tools: unknown tools {', '.join(unknown)}; "
            f"registered tools: {', '.join(sorted(registered))}",
            "unknown_tools",
        )


def check_webhook_url(url: str | None, allow_hosts: list[str]) -> None:
    """422 (``invalid_webhook_url``) for a ``webhook_url`` the SSRF guard refuses (a scheme other than
    http/https, credentials, an internal name or address not in ``webhooks.allow_hosts``)."""
    if url is None:
        return
    problem = webhook_url_problem(url, allow_hosts)
    if problem is not None:
        raise ApiError(
            422,
            f"invalid task request: webhook_url: {problem}",
            "invalid_webhook_url",
            errors=[{"field": "webhook_url", "message": problem}],
        )


def check_ready_plan(task: TaskRequest, catalog: ToolCatalog) -> None:
    """422 (``invalid_plan``) with the validator's reasons when the task's ready plan is refused."""
    if task.plan is None:
        return
    task_id = task.task_id or "new-task"  # the plan runs under the task's id, whatever it says
    tools = catalog.input_models()
    allowed = task.allowed_tools if task.allowed_tools is not None else sorted(tools)
    reasons = validate_plan(
        task.ready_plan(task_id) or {}, task_id=task_id, tools=tools, allowed_tools=allowed
    )
    if reasons:
        raise ApiError(422, "invalid plan: " + "; ".join(reasons), "invalid_plan", reasons=reasons)


class TaskSummary(BaseModel):
    """One task in ``GET /v1/tasks``: what a list shows (``GET /v1/tasks/{task_id}`` has the rest)."""

    task_id: str
    tenant: str
    status: str
    description: str = Field(description=f"Cut to {SUMMARY_DESCRIPTION_CHARS} characters.")
    current_step: str
    progress: float = Field(ge=0.0, le=1.0)
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    tokens: int = Field(default=0, ge=0, description="Model tokens of the task so far (prompt + completion).")
    review_pending: PendingReview | None = Field(
        default=None, description="Escalated results waiting for a person's decision (waiting_review)."
    )


class TaskList(BaseModel):
    """Answer of ``GET /v1/tasks``: newest first; ``next_cursor`` (null on the last page) asks for the
    next page as ``?cursor=``."""

    tasks: list[TaskSummary]
    next_cursor: str | None = None


def task_summary(record: TaskRecord) -> TaskSummary:
    return TaskSummary(
        task_id=record.task_id,
        tenant=record.tenant,
        status=record.status.value,
        description=record.description[:SUMMARY_DESCRIPTION_CHARS],
        current_step=describe_current_step(record),
        progress=step_progress(record),
        error=record.error,
        created_at=record.created_at,
        updated_at=record.updated_at,
        finished_at=record.finished_at,
        tokens=record.usage.total_tokens,
        review_pending=record.review_pending,
    )


def submission_tenant(task: TaskRequest, principal: Principal) -> str:
    """Whose task a submission makes: the key's tenant. An admin key may name another tenant in the
    body's ``tenant``; any other key naming another tenant answers 403 (``forbidden``)."""
    if "tenant" not in task.model_fields_set or task.tenant == principal.tenant:
        return principal.tenant
    if principal.is_admin:
        return task.tenant
    raise forbidden(f"this key submits for tenant {principal.tenant!r} only; leave 'tenant' out of the body")


def listed_tenant(asked: str | None, principal: Principal, what: str) -> str | None:
    """The tenant whose ``what`` a list shows (None: every tenant's). An admin sees the ``?tenant=``
    it asks for (every tenant's without one); any other key its own tenant's, and 403 when it asks
    for another's."""
    if principal.is_admin:
        return asked
    if asked is not None and asked != principal.tenant:
        raise forbidden(f"this key sees the {what} of tenant {principal.tenant!r} only")
    return principal.tenant


def rate_limited(tenant: str, wait_s: float) -> ApiError:
    """The 429 of a submission over the tenant's rate, with ``Retry-After`` in whole seconds (>= 1)."""
    retry_after = max(1, math.ceil(wait_s))
    return ApiError(
        429,
        f"tenant {tenant!r} submits faster than its limit (tenants.<name>.submit_per_s and "
        f"submit_burst); retry in {retry_after}s",
        "rate_limited",
        headers={"Retry-After": str(retry_after)},
    )


def over_ceiling(problems: list[dict[str, Any]]) -> ApiError:
    """The 422 of a request above the tenant's ceilings, one ``errors`` entry per ceiling."""
    summary = "; ".join(p["message"] for p in problems)
    return ApiError(422, f"invalid task request: {summary}", "over_ceiling", errors=problems)


def dlq_over_ceiling(problem: str, limits: TenantLimits) -> ApiError:
    """The 422 of a DLQ retry past the tenant's ``max_dlq_retries``."""
    field = {"field": "max_dlq_retries", "message": problem, "ceiling": limits.max_dlq_retries}
    return ApiError(422, f"cannot retry: {problem}", "over_ceiling", errors=[field])


def invalid_field(field: str, message: str) -> ApiError:
    """The 422 (``invalid_request``) of one bad query field."""
    return ApiError(
        422,
        f"invalid request: {field}: {message}",
        ERROR_CODES[422],
        errors=[{"field": field, "message": message}],
    )


def decode_cursor(cursor: str | None) -> TaskCursor | None:
    """The page a ``?cursor=`` names; 422 for one this API did not write."""
    if cursor is None:
        return None
    try:
        return TaskCursor.decode(cursor)
    except ValueError:
        message = "not a cursor this API returned (use next_cursor of the previous page as it is)"
        raise invalid_field("cursor", message) from None


def created_after_utc(moment: datetime | None) -> datetime | None:
    """``?created_after=`` in UTC (a moment without an offset is UTC); 422 for one that has no UTC
    equivalent (an offset that moves it before year 1 or after year 9999)."""
    if moment is None:
        return None
    try:
        return as_utc(moment)
    except OverflowError:
        raise invalid_field("created_after", "the moment is out of range once converted to UTC") from None


Caller = Annotated[Principal, Depends(authenticated)]

TraceParent = Annotated[
    str | None,
    Header(
        max_length=TRACEPARENT_MAX_CHARS,
        description="W3C trace context: the task's trace becomes a child of the caller's span.",
    ),
]

NDJSON = "application/x-ndjson"
TRACE_OPENAPI: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The task's spans (JSON; or NDJSON, one span per line, with Accept: "
        "application/x-ndjson)",
        "content": {"application/json": {}, NDJSON: {}},
    }
}
"""The principal of a route's request (401 without a valid key): ``principal: Caller``."""


class _HandleDispatch:
    """The chat routes' way to the role deployments (set by the Gateway replica in this process), where
    they bill the key's tenant, and what says when its daily token budget is spent."""

    def __init__(self, now: Callable[[], datetime] = utcnow) -> None:
        self.handles: dict[str, Any] = {}
        self.store: TaskStore | None = None
        self.settings: Settings | None = None
        self.now = now

    async def bill(self, tenant: str, usage: ModelUsage) -> None:
        if self.store is not None:
            await self.store.add_tenant_usage(tenant, usage)

    async def budget_spent(self, tenant: str) -> str | None:
        """Why ``tenant`` may make no more model calls today (its ``daily_token_budget`` is spent by
        the usage stored for the UTC day); None while it may, or without a daily budget."""
        if self.store is None or self.settings is None:
            return None
        limits = self.settings.tenant_limits(tenant)
        if limits.daily_token_budget is None:
            return None  # no budget: no store read per call
        used = await self.store.tenant_usage_on(tenant, self.now().date())
        return daily_budget_spent_reason(tenant, used.total_tokens, limits)

    async def generate(self, role: Role, call: ModelCall) -> ModelAnswer:
        try:
            reply = await call_with_backpressure(self.handles[role].chat, call)
        except ModelUnavailableError as exc:
            raise BackpressureError(str(exc), retry_after_s=1.0) from None
        return unwrap_chat_reply(reply)

    async def stream(self, role: Role, call: ModelCall) -> AsyncIterator[str]:
        async for chunk in self.handles[role].options(stream=True).stream.remote(call):
            yield chunk


_dispatch = _HandleDispatch()
app.include_router(
    make_chat_router(
        _dispatch, authenticate=authenticated, bill=_dispatch.bill, budget_spent=_dispatch.budget_spent
    )
)


def _idempotency_key(header: str | None, body: str | None) -> str | None:
    """The request's idempotency key: the header, or the body's field (422 when both differ)."""
    if header is not None and body is not None and header != body:
        raise HTTPException(
            status_code=422,
            detail=f"invalid task request: the {IDEMPOTENCY_HEADER} header ({header!r}) and the body's "
            f"idempotency_key ({body!r}) differ; send one, or the same value in both",
        )
    return header if header is not None else body


def admitted_task(
    task: TaskRequest,
    header_key: str | None,
    principal: Principal,
    settings: Settings,
    catalog: ToolCatalog,
    rate_limiter: SubmitRateLimiter,
) -> TaskRequest:
    """``task`` as the gateway submits it: for the caller's tenant, ``submitted_by`` its key, with its
    idempotency key. Checked first (the caller's tenant and role, the tenant's ceilings, the webhook
    URL, the tools, a ready plan, the idempotency key: 4xx), then charged to the tenant's submit rate
    (429), so a refused request spends none of it."""
    tenant = submission_tenant(task, principal)
    require(principal, Action.SUBMIT, tenant)
    check_no_parent(task)
    limits = settings.tenant_limits(tenant)
    problems = ceiling_problems(task, limits)
    if problems:
        raise over_ceiling(problems)
    check_webhook_url(task.webhook_url, settings.webhooks.allow_hosts)
    check_allowed_tools(task.allowed_tools, catalog)
    check_ready_plan(task, catalog)
    key = _idempotency_key(header_key, task.idempotency_key)
    task = task.model_copy(
        update={"tenant": tenant, "submitted_by": principal.key_id, "idempotency_key": key}
    )
    wait_s = rate_limiter.acquire(tenant, limits)
    if wait_s is not None:
        raise rate_limited(tenant, wait_s)
    return task


def _task_not_found(task_id: str) -> ApiError:
    return ApiError(404, f"task {task_id!r} not found", "task_not_found")


def _not_in_dlq(task_id: str) -> ApiError:
    return ApiError(404, f"task {task_id!r} is not in the dead-letter queue", "not_in_dlq")


# -- console helpers (CONSOLE) --

FEED_LIST_DEFAULT = 100
"""Events one ``GET /v1/events`` (JSON) returns unless ``?limit=`` says otherwise."""

FEED_LIST_MAX = 1000
"""Most events one ``GET /v1/events`` (JSON) returns."""

APPROVALS_LIST_MAX = 1000
"""Most waiting tasks one ``GET /v1/approvals`` looks at."""


def after_event_id(last_event_id: str | None) -> int | None:
    """The event id of a ``Last-Event-ID`` header; 422 (``invalid_last_event_id``) for a bad one."""
    try:
        return parse_last_event_id(last_event_id)
    except ValueError as exc:
        raise ApiError(
            422,
            f"invalid request: {exc}",
            "invalid_last_event_id",
            errors=[{"field": "Last-Event-ID", "message": str(exc)}],
        ) from None


async def serve_status() -> Any:
    """Serve's status (``serve.status()``: a call to the controller, in a worker thread); None when
    the controller does not answer in time."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(serve.status), HEALTH_TIMEOUT_S)
    except Exception as exc:
        logger.warning("serve.status() did not answer: %s", exc)
        return None


async def collector_stats(settings: Settings) -> dict[str, Any] | BaseException | None:
    """The trace collector's figures; None when there is none (the trace store is off, or no process
    made spans yet); the exception when it does not answer in time."""
    if not settings.telemetry.trace_store.enabled:
        return None
    try:
        handle = await asyncio.to_thread(ray.get_actor, COLLECTOR_NAME, namespace=settings.ray_namespace)
    except ValueError:
        return None
    try:
        return dict(await asyncio.wait_for(handle.stats.remote(), HEALTH_TIMEOUT_S))
    except Exception as exc:
        return exc


# -- end console helpers (CONSOLE) --


# -- memory helpers (MEMORY) --

MEMORY_SEARCH_DEFAULT_K = 5
"""Hits one ``GET /v1/memory/search`` answers unless ``?k=`` says otherwise."""

MEMORY_RETRY_AFTER_S = 5
"""``Retry-After`` of the 503 answered while the memory does not answer."""

_Answer = TypeVar("_Answer")


def memory_off() -> ApiError:
    """The 503 (``memory_off``) of every memory route on a server without a memory."""
    return ApiError(
        503,
        "the memory is off on this server (memory.enabled is false): nothing to search or forget",
        "memory_off",
    )


def memory_tenant(asked: str | None, principal: Principal) -> str:
    """The tenant whose memory a request reads or changes: the key's own; an admin's ``?tenant=``
    (its own without one). Any other key naming another tenant: 403 (``forbidden``)."""
    return listed_tenant(asked, principal, "memory") or principal.tenant


def search_query(q: str) -> str:
    """``?q=`` of a memory search; 422 (``invalid_request``) when it is blank."""
    if not q.strip():
        raise invalid_field("q", "the query is blank")
    return q


def require_admin(principal: Principal, what: str) -> None:
    """403 (``forbidden``) unless ``principal`` is an admin."""
    if not principal.is_admin:
        raise forbidden(f"{what} needs an admin key")


MEMORY_ROUTE_TIMEOUT_S = 30.0
"""Longest wait for the memory in a request (a search, a delete, a rating); past it: 503
``memory_unavailable`` (a rebuild takes longer: ``POST /v1/memory/rebuild`` waits for it)."""


MEMORY_REBUILD_ROUTE_TIMEOUT_S = 600.0
"""Longest wait for ``POST /v1/memory/rebuild`` (every tenant's index, embedding what has no vector)."""


async def memory_answer(call: Awaitable[_Answer], timeout_s: float = MEMORY_ROUTE_TIMEOUT_S) -> _Answer:
    """What the memory answered. A memory that fails (its actor is restarting, its encoder is gone)
    answers 503 ``memory_unavailable`` with ``Retry-After`` (logged), never a 500; an unavailable
    store keeps its own answer (503 ``store_unavailable``)."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except (StoreUnavailableError, StarletteHTTPException):
        raise
    except Exception as exc:
        logger.warning("the memory did not answer: %s", _first_line(exc) or type(exc).__name__)
        raise ApiError(
            503,
            f"the memory did not answer, nothing was changed; retry in {MEMORY_RETRY_AFTER_S}s "
            f"({_first_line(exc)})",
            "memory_unavailable",
            headers={"Retry-After": str(MEMORY_RETRY_AFTER_S)},
        ) from None


# -- end memory helpers (MEMORY) --


# serve.ingress pickles the app (and so these methods, with the module globals they use) when the
# class is decorated: every helper the routes call must be defined above this line.
@serve.deployment(name="Gateway")
@serve.ingress(app)
class Gateway:
    """The ingress. ``planner``/``reviewer``/``ai_tool`` are the role deployments' handles (the chat
    routes call them); ``ports`` are what the orchestrators call, built by the composition root
    (:func:`serving.app.build_app`): the orchestrator shards are created with them on first use."""

    def __init__(
        self, settings: Settings, planner: Any, reviewer: Any, ai_tool: Any, ports: ModelPorts
    ) -> None:
        self.settings = settings
        self.catalog = build_catalog(settings)  # plugin tools are known to the allowed_tools and plan checks
        self.store = SqlStore(settings.store.url)
        self.tracer = tracer_for(settings, "gateway")
        self.orchestrators: OrchestratorClient = create_client(settings, ports)
        self.rate_limiter = SubmitRateLimiter()
        self.memory: MemoryService | None = ports.memory
        """What the memory routes and feedback call (None: ``memory.enabled`` is false)."""
        install_verifier(KeyVerifier(self.store, settings.auth.cache_ttl_s))
        _dispatch.handles = {"planner": planner, "reviewer": reviewer, "ai_tool": ai_tool}
        _dispatch.store = self.store
        _dispatch.settings = settings

    @app.post("/v1/tasks", status_code=202)
    async def create_task(
        self,
        task: TaskRequest,
        principal: Caller,
        idempotency_key: Annotated[
            str | None,
            Header(alias=IDEMPOTENCY_HEADER, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS),
        ] = None,
        traceparent: TraceParent = None,
    ) -> JSONResponse:
        record, created = await self._submit(task, idempotency_key, principal, traceparent)
        body = {"task_id": record.task_id, "status": record.status.value}
        return JSONResponse(body, status_code=202 if created else 200)

    @app.get("/v1/tasks")
    async def list_tasks(
        self,
        principal: Caller,
        status: TaskStatus | None = None,
        created_after: Annotated[
            datetime | None, Query(description="Only tasks created after this moment (ISO 8601).")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=TASK_LIST_MAX)] = TASK_LIST_DEFAULT,
        cursor: Annotated[
            str | None, Query(max_length=MAX_CURSOR_CHARS, description="next_cursor of the previous page.")
        ] = None,
        tenant: Annotated[
            str | None, Query(pattern=TENANT_PATTERN, description="An admin key's choice of tenant.")
        ] = None,
    ) -> TaskList:
        """The caller's tenant's tasks (an admin: every tenant's, or ``?tenant=``'s), newest first."""
        require(principal, Action.READ, principal.tenant)
        whose = listed_tenant(tenant, principal, "tasks")
        records = await self.store.list_tasks(
            status,
            limit + 1,
            tenant=whose,
            created_after=created_after_utc(created_after),
            cursor=decode_cursor(cursor),
        )
        page = records[:limit]
        more = len(records) > limit
        next_cursor = TaskCursor(page[-1].created_at, page[-1].task_id).encode() if more else None
        return TaskList(tasks=[task_summary(r) for r in page], next_cursor=next_cursor)

    @app.post("/tasks", status_code=202, response_model=TaskAccepted)
    async def submit_task(
        self,
        body: TaskSubmission,
        principal: Caller,
        idempotency_key: Annotated[
            str | None,
            Header(alias=IDEMPOTENCY_HEADER, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS),
        ] = None,
        traceparent: TraceParent = None,
    ) -> JSONResponse:
        task = task_request_from(body, self.settings.workflow.retry_policy)
        record, created = await self._submit(task, idempotency_key, principal, traceparent)
        cap = (task.retry_policy or self.settings.workflow.retry_policy).maximum_duration_s
        accepted = TaskAccepted(
            task_id=record.task_id,
            status=record.status.value,
            estimated_completion=record.created_at + timedelta(seconds=cap),
        )
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202 if created else 200)

    @app.get("/tasks/{task_id}")
    async def task_status(self, task_id: str, principal: Caller) -> TaskStatusView:
        return status_view(await self._record(task_id, principal))

    @app.get("/tasks/{task_id}/status")
    async def task_status_alias(self, task_id: str, principal: Caller) -> TaskStatusView:
        return status_view(await self._record(task_id, principal))

    @app.get("/tasks/{task_id}/logs")
    async def task_logs(self, task_id: str, principal: Caller) -> TaskLogsView:
        record = await self._record(task_id, principal)
        return TaskLogsView(task_id=record.task_id, logs=log_lines(record))

    async def _submit(
        self, task: TaskRequest, header_key: str | None, principal: Principal, traceparent: str | None = None
    ) -> tuple[TaskRecord, bool]:
        """Check ``task`` (:func:`admitted_task`: the caller's tenant and role, the tenant's ceilings,
        tools, ready plan, then its rate) and submit it for that tenant, ``submitted_by`` the key,
        with its idempotency key (claimed with the task, in one orchestrator call); ``(record,
        created)``. A refused task creates nothing; a key used with another request answers 409
        (``idempotency_conflict``); a ``task_id`` that another tenant's task has answers 409
        (``task_id_unavailable``), which says nothing of that task."""
        task = admitted_task(task, header_key, principal, self.settings, self.catalog, self.rate_limiter)
        tenant = task.tenant
        # The task's trace hangs from this span, itself a child of the caller's ``traceparent``.
        parent = parse_traceparent(traceparent or task.traceparent)
        with self.tracer.start_as_current_span(
            "submit", context=parent, kind=SpanKind.SERVER, attributes={"officeray.tenant": tenant}
        ) as span:
            task = task.model_copy(update={"traceparent": traceparent_of(span)})
            record, created = await self.orchestrators.submit(task)
            span.set_attribute(TASK_ID_ATTR, record.task_id)
            span.set_attribute("officeray.created", created)
        if record.tenant != tenant:
            raise ApiError(
                409,
                f"task_id {task.task_id!r} cannot be used; choose another, or leave task_id out for a "
                "new one",
                "task_id_unavailable",
            )
        return record, created

    @app.get("/v1/tasks/{task_id}")
    async def get_task(
        self,
        task_id: str,
        principal: Caller,
        wait_s: Annotated[
            float, Query(ge=0, le=MAX_WAIT_S, description="Long poll: answer once final, or after this.")
        ] = 0.0,
    ) -> dict[str, Any]:
        record = await self._record(task_id, principal)
        if wait_s > 0 and not record.status.is_final:
            record = await self._wait_final(record, wait_s, principal)
        return record.public_view()

    async def _wait_final(self, record: TaskRecord, wait_s: float, principal: Principal) -> TaskRecord:
        """The record once final (the orchestrator running it answers the moment it ends), or as
        stored after ``wait_s``."""
        try:
            return await self.orchestrators.wait(record.task_id, wait_s)
        except Exception as exc:  # not final in time, or the shard is restarting: the store answers
            logger.debug("task %s: long poll ended without a final state: %s", record.task_id, exc)
            return await self._record(record.task_id, principal)

    @app.get("/v1/tasks/{task_id}/trace", response_model=None, responses=TRACE_OPENAPI)
    async def get_trace(
        self, task_id: str, principal: Caller, accept: Annotated[str | None, Header()] = None
    ) -> dict[str, Any] | Response:
        """The task's spans from every process of every node (the trace store, indexed by task id),
        ordered by start, and its stored events. ``Accept: application/x-ndjson``: one span per line."""
        record = await self._record(task_id, principal)
        spans = await self.store.task_spans(record.task_id, record.trace_id)
        views = [span.public_view() for span in spans]
        if accept and NDJSON in accept:
            lines = "".join(json.dumps(view, separators=(",", ":")) + "\n" for view in views)
            return Response(lines, media_type=NDJSON)
        events = await self.store.events(record.task_id)
        return {
            "task_id": record.task_id,
            "trace_id": record.trace_id,
            "spans": views,
            "events": [e.model_dump(mode="json") for e in events],
        }

    @app.post("/v1/tasks/{task_id}/feedback", status_code=201)
    async def add_feedback(self, task_id: str, body: Feedback, principal: Caller) -> TaskFeedback:
        """Store the caller's feedback on the task's result; answers the stored feedback."""
        record = await self._record(task_id, principal)
        require(principal, Action.FEEDBACK, record.tenant)
        feedback = TaskFeedback(
            **body.model_dump(), task_id=record.task_id, tenant=record.tenant, submitted_by=principal.key_id
        )
        stored = await self.store.add_feedback(feedback)
        await self._rate_memory(record.task_id, body.rating)
        return stored

    async def _rate_memory(self, task_id: str, rating: int) -> None:
        """Pass a stored rating on to the memory (it demotes or promotes the task's entries); a
        memory that fails is logged: the feedback is stored, the request succeeds."""
        if self.memory is None or rating == 0:
            return
        try:
            await asyncio.wait_for(self.memory.feedback(task_id, rating), MEMORY_ROUTE_TIMEOUT_S)
        except Exception as exc:
            logger.warning(
                "task %s: the memory did not take rating %d: %s", task_id, rating, _first_line(exc)
            )

    @app.get("/v1/tasks/{task_id}/feedback")
    async def get_feedback(self, task_id: str, principal: Caller) -> dict[str, Any]:
        record = await self._record(task_id, principal)
        stored = await self.store.feedback(record.task_id)
        return {"task_id": record.task_id, "feedback": [f.model_dump(mode="json") for f in stored]}

    # -- artifacts: the task workspace's files (officeray.workspaces) --

    @app.get("/v1/tasks/{task_id}/artifacts")
    async def list_artifacts(self, task_id: str, principal: Caller) -> dict[str, Any]:
        """The files the task's steps left in its workspace (without contents), by path; a subtask's
        are its root task's (``workspace_id``), which all the tree's steps share."""
        record = await self._record(task_id, principal)
        owner, _tenant = await workspace_owner(self.store.get_task, record.task_id)
        files = await self.store.workspace_files(owner)
        return {
            "task_id": record.task_id,
            "workspace_id": owner,
            "files": [f.model_dump(mode="json") for f in files],
            "total_bytes": sum(f.size for f in files),
        }

    @app.get("/v1/tasks/{task_id}/artifacts/{path:path}", response_model=None)
    async def get_artifact(self, task_id: str, path: str, principal: Caller) -> Response:
        """One file of the task's workspace, as an attachment. A path that is absolute, has ``..``,
        NUL or a backslash answers 400 ``invalid_path``; an unknown one 404 ``artifact_not_found``."""
        record = await self._record(task_id, principal)
        problem = artifact_path_problem(path)
        if problem is not None:
            raise ApiError(400, f"invalid artifact path: {problem}", "invalid_path")
        owner, _tenant = await workspace_owner(self.store.get_task, record.task_id)
        found = await self.store.workspace_file(owner, path)
        if found is None:
            raise ApiError(404, f"task {record.task_id!r} has no artifact {path!r}", "artifact_not_found")
        meta, content = found
        headers = artifact_headers(path, meta.sha256)
        return Response(content, media_type=artifact_media_type(path), headers=headers)

    # -- memory (MEMORY) --

    def _memory(self) -> MemoryService:
        """The memory port; 503 (``memory_off``) without one. Called once the request's own checks
        (key, role, tenant, task) passed, so a bad request answers as it would with a memory."""
        if self.memory is None:
            raise memory_off()
        return self.memory

    @app.get("/v1/memory/search")
    async def memory_search(
        self,
        principal: Caller,
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")],
        k: Annotated[
            int, Query(ge=1, le=MAX_SEARCH_K, description="How many hits.")
        ] = MEMORY_SEARCH_DEFAULT_K,
        outcome: Annotated[MemoryOutcome | None, Query(description="Only entries that ended so.")] = None,
        tenant: Annotated[
            str | None, Query(pattern=TENANT_PATTERN, description="An admin key's choice of tenant.")
        ] = None,
    ) -> dict[str, Any]:
        """The remembered task attempts of the caller's tenant (an admin: ``?tenant=``'s) nearest
        to ``q``, best first (a tenant never sees another's entries)."""
        whose = memory_tenant(tenant, principal)
        require(principal, Action.READ, whose)
        query = search_query(q)
        hits = await memory_answer(self._memory().search(whose, query, k, outcome=outcome))
        return {"query": q, "tenant": whose, "hits": [hit.model_dump(mode="json") for hit in hits]}

    # Forgetting is the strongest feedback: whoever may rate a tenant's tasks may make the memory
    # forget them (Action.FEEDBACK).

    @app.delete("/v1/memory/{entry_id}")
    async def memory_delete_entry(self, entry_id: str, principal: Caller) -> dict[str, Any]:
        """Forget one entry of the caller's tenant (an admin: of any tenant); 404
        (``memory_entry_not_found``) for an unknown entry or another tenant's (the same answer)."""
        require(principal, Action.FEEDBACK, principal.tenant)
        only = None if principal.is_admin else principal.tenant
        if not await memory_answer(self._memory().delete_entry(entry_id, only)):
            raise ApiError(404, f"memory entry {entry_id!r} not found", "memory_entry_not_found")
        return {"entry_id": entry_id, "deleted": 1}

    @app.delete("/v1/tasks/{task_id}/memory")
    async def memory_delete_task(self, task_id: str, principal: Caller) -> dict[str, Any]:
        """Forget a task's entries (a task the caller sees, as for ``GET /v1/tasks/{task_id}``)."""
        record = await self._record(task_id, principal)
        require(principal, Action.FEEDBACK, record.tenant)
        deleted = await memory_answer(self._memory().delete_task(record.task_id, record.tenant))
        return {"task_id": record.task_id, "deleted": deleted}

    @app.delete("/v1/memory")
    async def memory_delete_tenant(
        self,
        principal: Caller,
        tenant: Annotated[str, Query(pattern=TENANT_PATTERN, description="Whose memory to forget.")],
    ) -> dict[str, Any]:
        """Forget every entry of ``?tenant=`` (required: the caller's own tenant; an admin: any)."""
        if not principal.sees_tenant(tenant):
            raise forbidden(f"this key forgets the memory of tenant {principal.tenant!r} only")
        require(principal, Action.FEEDBACK, tenant)
        deleted = await memory_answer(self._memory().delete_tenant(tenant))
        return {"tenant": tenant, "deleted": deleted}

    @app.post("/v1/memory/rebuild")
    async def memory_rebuild(self, principal: Caller) -> dict[str, Any]:
        """Admin only: rebuild every tenant's index from the store (embedding what has no vector of
        the encoder); answers the rebuild report."""
        require_admin(principal, "rebuilding the memory")
        return await memory_answer(self._memory().rebuild(), MEMORY_REBUILD_ROUTE_TIMEOUT_S)

    @app.get("/v1/memory/stats")
    async def memory_stats(self, principal: Caller) -> dict[str, Any]:
        """Admin only: whether the memory is on, its encoder and each tenant's index."""
        require_admin(principal, "the memory's figures")
        return await memory_answer(self._memory().stats())

    # -- end memory (MEMORY) --

    @app.get("/v1/tenants/{tenant}/usage")
    async def tenant_usage(self, tenant: str, principal: Caller) -> dict[str, Any]:
        """Tokens and cost of the tenant's finished tasks and chat calls (its own tenant; an admin: any)."""
        if not principal.sees_tenant(tenant):
            raise forbidden(f"this key reads the usage of tenant {principal.tenant!r} only")
        require(principal, Action.USAGE_READ, tenant)
        usage = await self.store.tenant_usage(tenant)
        return {"tenant": tenant, **usage.model_dump(), "total_tokens": usage.total_tokens}

    @app.get("/v1/dlq")
    async def dlq_list(
        self,
        principal: Caller,
        tenant: Annotated[str | None, Query(pattern=TENANT_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=DLQ_LIST_MAX)] = 100,
    ) -> dict[str, Any]:
        """The caller's tenant's dead-lettered tasks (an admin: every tenant's, or ``?tenant=``'s)."""
        require(principal, Action.DLQ_READ, principal.tenant)
        entries = await self.store.dlq_list(listed_tenant(tenant, principal, "dead-letter queue"), limit)
        return {"entries": [entry.model_dump(mode="json") for entry in entries], "count": len(entries)}

    @app.get("/v1/dlq/{task_id}")
    async def dlq_get(self, task_id: str, principal: Caller) -> dict[str, Any]:
        entry = await self._dlq_entry(task_id, principal)
        require(principal, Action.DLQ_READ, entry.tenant)
        return entry.model_dump(mode="json")

    @app.post("/v1/dlq/{task_id}/retry", status_code=202)
    async def dlq_retry(self, task_id: str, principal: Caller) -> JSONResponse:
        """Admin only; 422 (``over_ceiling``) once the task was retried ``max_dlq_retries`` times."""
        entry = await self._dlq_entry(task_id, principal)
        require(principal, Action.DLQ_RETRY, entry.tenant)
        try:
            record = await self.orchestrators.retry(task_id)  # which counts the task's retries
        except TaskNotFoundError:  # taken out of the queue meanwhile (another retry)
            raise _not_in_dlq(task_id) from None
        except LimitExceededError as exc:
            raise dlq_over_ceiling(_first_line(exc), self.settings.tenant_limits(entry.tenant)) from None
        return JSONResponse({"task_id": record.task_id, "status": record.status.value}, status_code=202)

    @app.post("/v1/tasks/{task_id}/approvals/{step_id}")
    async def decide_approval(
        self, task_id: str, step_id: str, body: ApprovalRequest, principal: Caller
    ) -> dict[str, Any]:
        """Decided by the task's orchestrator, which stores the decision and wakes the step. Needs an
        approver (of the task's tenant) or admin key; the decision is recorded as the key's id."""
        record = await self._record(task_id, principal)
        require(principal, Action.DECIDE_APPROVAL, record.tenant)
        decision = _STORED_DECISION[body.decision]
        try:
            stored = await self.orchestrators.decide_approval(
                task_id, step_id, decision, principal.key_id, body.reason
            )
        except TaskNotFoundError:
            raise _task_not_found(task_id) from None
        except ApprovalConflictError as exc:
            raise ApiError(409, str(exc), "approval_conflict") from None
        return {
            "task_id": task_id,
            "step_id": step_id,
            "decision": decision,
            "decided_by": principal.key_id,
            "decided_at": jsonable_encoder(stored.decided_at),
        }

    @app.get("/v1/tasks/{task_id}/approvals/{step_id}")
    async def get_approval(self, task_id: str, step_id: str, principal: Caller) -> dict[str, Any]:
        record = await self._record(task_id, principal)
        step = next((s for s in record.steps if s.step_id == step_id), None)
        stored = None if step is None else await self.store.get_approval(task_id, step.idempotency_key)
        if stored is None:
            raise HTTPException(
                status_code=404, detail=f"no decision for step {step_id!r} of task {task_id!r}"
            )
        return {**stored.model_dump(mode="json"), "task_id": task_id, "step_id": step_id}

    @app.post("/v1/tasks/{task_id}/review")
    async def decide_review(
        self, task_id: str, body: ReviewDecisionRequest, principal: Caller
    ) -> dict[str, Any]:
        """Decide the results ``task_id`` escalated to a person (``waiting_review``), through the task's
        orchestrator, which stores the decision (the first per round wins) and wakes the task. Needs
        an approver (of the task's tenant) or admin key; the decision is recorded as the key's id."""
        record = await self._record(task_id, principal)
        require(principal, Action.DECIDE_REVIEW, record.tenant)
        refusal = revise_refusal(record, body.decision)
        if refusal is not None:
            raise ApiError(409, refusal, REVISE_NOT_SUPPORTED)
        try:
            stored = await self.orchestrators.decide_review(
                task_id, body.decision, principal.key_id, body.feedback
            )
        except TaskNotFoundError:
            raise _task_not_found(task_id) from None
        except ReviewConflictError as exc:
            raise ApiError(409, exc.message, exc.code) from None
        return stored.model_dump(mode="json")

    @app.get("/v1/reviews")
    async def reviews(
        self,
        principal: Caller,
        tenant: Annotated[
            str | None, Query(pattern=TENANT_PATTERN, description="An admin key's choice of tenant.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=APPROVALS_LIST_MAX)] = PENDING_APPROVALS_LIMIT,
    ) -> dict[str, Any]:
        """The tasks whose results wait for a person's decision (of the caller's tenant; an admin:
        every tenant's, or ``?tenant=``'s), oldest wait first; decided with
        ``POST /v1/tasks/{task_id}/review``."""
        require(principal, Action.READ, principal.tenant)
        whose = listed_tenant(tenant, principal, "reviews")
        records = await self.store.list_tasks(TaskStatus.WAITING_REVIEW, limit, tenant=whose)
        waiting = sorted(
            (r for r in records if r.review_pending is not None),
            key=lambda r: (r.review_pending.since if r.review_pending else r.updated_at, r.task_id),
        )
        views = [
            {
                "task_id": r.task_id,
                "tenant": r.tenant,
                "description": r.description[:SUMMARY_DESCRIPTION_CHARS],
                **(r.review_pending.model_dump(mode="json") if r.review_pending else {}),
            }
            for r in waiting
        ]
        return {"reviews": views, "count": len(views)}

    async def check_health(self) -> None:
        """Serve's periodic health check: reach every orchestrator (after a crash, Ray restarts it and
        this call starts its loops, which resume the tasks it held)."""
        for shard, why in (await self.orchestrators.probe(HEALTH_TIMEOUT_S)).items():
            # the gateway is healthy while an orchestrator restarts
            logger.warning("orchestrator %d not reachable from the health check: %s", shard, why)

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """Public: no key needed."""
        try:
            in_flight, pools = await asyncio.gather(
                self.orchestrators.in_flight(HEALTH_TIMEOUT_S),
                # the pool figures are informative: an orchestrator without them is still healthy
                self.orchestrators.pool_stats(HEALTH_TIMEOUT_S),
            )
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "detail": str(exc), "code": "orchestrator_unavailable"},
                status_code=503,
                headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
            )
        runners: dict[str, Any] = {key: sum(p.get(key, 0) for p in pools) for key in HEALTH_RUNNER_FIELDS}
        runners["problems"] = sorted({p["placement_problem"] for p in pools if p.get("placement_problem")})
        return JSONResponse({"status": "ok", "tasks_in_flight": in_flight, "tool_runners": runners})

    async def _record(self, task_id: str, principal: Principal) -> TaskRecord:
        """The task's record; 404 (``task_not_found``) when there is none, or when it is another
        tenant's and ``principal`` is not an admin (the same answer: nothing says it exists)."""
        record = await self.store.get_task(task_id)
        if record is None or not principal.sees_tenant(record.tenant):
            raise _task_not_found(task_id)
        return record

    async def _dlq_entry(self, task_id: str, principal: Principal) -> DlqDetail:
        """The dead-letter entry; 404 when there is none or it is another tenant's (not an admin)."""
        entry = await self.store.dlq_get(task_id)
        if entry is None or not principal.sees_tenant(entry.tenant):
            raise _not_in_dlq(task_id)
        return entry

    # -- events and webhooks (EVENTS) --

    @app.get("/v1/tasks/{task_id}/events", response_model=None, responses=EVENTS_OPENAPI)
    async def task_events(
        self,
        task_id: str,
        principal: Caller,
        accept: Annotated[str | None, Header(max_length=1000)] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)] = None,
    ) -> EventSourceResponse | dict[str, Any]:
        """The task's transitions: a JSON list, or with ``Accept: text/event-stream`` a live stream
        (:mod:`serving.events`) that resumes after ``Last-Event-ID``."""
        await self._record(task_id, principal)
        after_id = after_event_id(last_event_id)
        if wants_event_stream(accept):
            return event_stream_response(self.store, task_id, after_id)
        return events_view(task_id, await self.store.events(task_id, after_id))

    @app.get("/v1/tasks/{task_id}/webhooks")
    async def task_webhooks(self, task_id: str, principal: Caller) -> dict[str, Any]:
        """The task's webhook deliveries (event, URL, status) with each attempt."""
        await self._record(task_id, principal)
        return deliveries_view(task_id, await self.store.webhook_deliveries(task_id))

    # -- end events and webhooks (EVENTS) --

    # -- cancel (CANCEL) --

    @app.post("/v1/tasks/{task_id}/cancel", status_code=202)
    async def cancel_task(self, task_id: str, principal: Caller) -> JSONResponse:
        """Cancel the task: its running steps are stopped (sandbox processes killed, host tools
        cancelled) and it ends ``cancelled``; what it recorded (step results, events, usage) stays.
        202 with the status it had; 409 (``task_final``, with its ``status``) when it already ended."""
        record = await self._record(task_id, principal)
        require(principal, Action.CANCEL, record.tenant)
        try:
            if record.status.is_final:
                status = record.status.value
                raise TaskFinalError(f"task {task_id!r} already ended: {status}", status)
            before = await self.orchestrators.cancel(task_id, principal.key_id)
        except TaskNotFoundError:
            raise _task_not_found(task_id) from None
        except TaskFinalError as exc:
            raise ApiError(409, str(exc), "task_final", status=exc.status) from None
        body = {"task_id": task_id, "status": before.status.value, "cancelled_by": principal.key_id}
        return JSONResponse(body, status_code=202)

    # -- end cancel (CANCEL) --

    # -- console (CONSOLE) --

    @app.get("/console", include_in_schema=False)
    async def console_page(self) -> Response:
        """The web console (public: the page asks for a key and sends it on every API call)."""
        return console_response("index.html")

    @app.get("/console/{name}", include_in_schema=False)
    async def console_asset(self, name: str) -> Response:
        return console_response(name)

    @app.get("/v1/events", response_model=None, responses=FEED_OPENAPI)
    async def event_feed(
        self,
        principal: Caller,
        tenant: Annotated[
            str | None, Query(pattern=TENANT_PATTERN, description="An admin key's choice of tenant.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=FEED_LIST_MAX)] = FEED_LIST_DEFAULT,
        accept: Annotated[str | None, Header(max_length=1000)] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)] = None,
    ) -> EventSourceResponse | dict[str, Any]:
        """The events of every task of the caller's tenant (an admin: every tenant's, or ``?tenant=``'s),
        each with its task id and tenant: JSON (the last ``limit``, or the first after ``Last-Event-ID``),
        or with ``Accept: text/event-stream`` a live stream (:func:`serving.events.event_feed_stream`)."""
        require(principal, Action.READ, principal.tenant)
        whose = listed_tenant(tenant, principal, "task events")
        after_id = after_event_id(last_event_id)
        if wants_event_stream(accept):
            return event_feed_response(self.store, whose, after_id)
        return feed_view(await self.store.event_feed(after_id, tenant=whose, limit=limit))

    @app.get("/v1/approvals")
    async def approvals(
        self,
        principal: Caller,
        tenant: Annotated[
            str | None, Query(pattern=TENANT_PATTERN, description="An admin key's choice of tenant.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=APPROVALS_LIST_MAX)] = PENDING_APPROVALS_LIMIT,
    ) -> dict[str, Any]:
        """The steps that wait for a person's decision (of the caller's tenant; an admin: every
        tenant's, or ``?tenant=``'s), oldest wait first; decided with
        ``POST /v1/tasks/{task_id}/approvals/{step_id}``."""
        require(principal, Action.READ, principal.tenant)
        whose = listed_tenant(tenant, principal, "approvals")
        records = await self.store.list_tasks(TaskStatus.WAITING_APPROVAL, limit, tenant=whose)
        decided = {
            (record.task_id, key)
            for record in records
            for _, key in waiting_steps(record)
            if await self.store.get_approval(record.task_id, key) is not None
        }
        pending = pending_approvals(records, decided)
        return {"approvals": [p.model_dump(mode="json") for p in pending], "count": len(pending)}

    @app.get("/v1/system")
    async def system(self, principal: Caller) -> SystemView:
        """The running system for the console (any key): Serve's deployments and replicas, the
        orchestrator shards, the runner pools, the trace collector, every lane that sent spans in the
        last minute with its heartbeat, and the message rate between lanes (:mod:`serving.system`)."""
        require(principal, Action.READ, principal.tenant)
        checked_at = utcnow()
        status, shards, spans, collector = await asyncio.gather(
            serve_status(),
            self.orchestrators.shard_stats(HEALTH_TIMEOUT_S),
            self.store.recent_spans(checked_at - timedelta(seconds=MESSAGE_WINDOW_S)),
            collector_stats(self.settings),
        )
        return system_view(
            checked_at=checked_at,
            serve_status=status,
            shards=shards,
            spans=[SpanLink(s.span_id, s.parent_span_id, s.lane, s.end_ns) for s in spans],
            collector=collector,
        )

    # -- end console (CONSOLE) --
