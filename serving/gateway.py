"""The HTTP API: a FastAPI app as the Serve ingress.

* ``POST /v1/tasks``: body :class:`~officeray.contracts.TaskRequest`; answers 202
  ``{"task_id", "status"}`` once the task is persisted. A ``task_id`` already known answers 200 with
  that task instead of starting a second one.
* ``GET /v1/tasks/{task_id}``: the task record with ``progress`` (step counts by status),
  ``current_step``, the steps with their status, attempts, output or error, and log lines. With
  ``?wait_s=S`` (at most :data:`MAX_WAIT_S`) it is a long poll: the answer comes when the task is
  final or after ``S`` seconds, whichever is first (clients follow a task without busy polling).
* ``GET /v1/tasks/{task_id}/events``: the task's transitions in order.
* ``GET /v1/tasks/{task_id}/trace``: the task's spans in order.
* ``GET /v1/tenants/{tenant}/usage``: tokens and cost summed over the tenant's finished tasks.
* ``POST /v1/chat/completions`` (``model`` = ``planner`` | ``reviewer`` | ``ai_tool``) and
  ``GET /v1/models``: the role models in the OpenAI chat-completions shape (:mod:`serving.chat_api`).
* ``GET /v1/dlq`` (``?tenant=``, ``?limit=``): the dead-letter queue, newest first;
  ``GET /v1/dlq/{task_id}``: one entry with the task record; ``POST /v1/dlq/{task_id}/retry``: 202
  ``{"task_id", "status"}``, the task runs again from its last good checkpoint.
* ``POST /v1/tasks/{task_id}/approvals/{step_id}`` (body ``{"decision": "approve" | "reject", "by",
  "reason"}``): decides a step that waits for approval (409 when it does not wait, or was decided);
  ``GET`` the same path: the decision.
* ``GET /healthz``: ``{"status": "ok", "tasks_in_flight": N, "tool_runners": {...}}`` when the
  orchestrator answers; ``tool_runners`` sums the runner pools (runners, idle, starting, steps
  waiting for a runner: what the pool's autoscaling acts on) and lists ``problems`` (e.g. no node
  advertises the runners' ``docker`` resource, so they cannot start).

Idempotency: ``POST /v1/tasks`` with an ``Idempotency-Key`` header (or ``idempotency_key`` in the
body) answers the task first created with that key by that tenant (200) instead of creating another;
the same key with a different request answers 409. The key is claimed before the task is submitted;
a claim whose task never got created (the submission failed) is taken over by the next identical
request, so a retry after a failure creates the task.

Bad input answers 4xx with a message (422 for a body that does not match the schema, with one
entry per bad field; 413 for a body over :data:`MAX_REQUEST_BYTES`), an unknown id answers 404, and
a store that cannot be reached answers 503 with ``Retry-After``: nothing of the request was accepted.
"""

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.orchestrator import get_or_create_orchestrator, shard_of
from officeray.config import Settings
from officeray.contracts import StepStatus, TaskRecord, TaskRequest, new_id
from officeray.errors import ModelUnavailableError, StoreUnavailableError, TaskNotFoundError
from officeray.store import SqlStore
from officeray.telemetry import read_trace
from serving.chat_api import make_chat_router
from serving.models import call_with_backpressure, unwrap_chat_reply
from serving.tiers.base import BackpressureError, ModelAnswer, ModelCall, Role
from tools_sandbox.catalog import all_tools

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0

HEALTH_RUNNER_FIELDS = ("runners", "idle", "starting", "waiting_steps")
"""The tool-runner pool figures ``/healthz`` reports, summed over the orchestrator shards."""

ORCHESTRATOR_CALL_TIMEOUT_S = 30.0
"""Longest wait for an orchestrator call from a request (a restarting shard answers 503 after it)."""

MAX_REQUEST_BYTES = 1024 * 1024
"""Largest request body accepted (1 MiB); a larger one answers 413 before it is parsed."""

STORE_RETRY_AFTER_S = 5
"""``Retry-After`` of the 503 answered while the store cannot be reached."""

DLQ_LIST_MAX = 1000
"""Most dead-letter entries one ``GET /v1/dlq`` returns."""

MAX_WAIT_S = 30.0
"""Longest long poll (``GET /v1/tasks/{task_id}?wait_s=``)."""

WAIT_GRACE_S = 5.0
"""How much longer than ``wait_s`` the gateway waits for the orchestrator's answer before it reads
the store instead."""

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_CHARS = 200


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
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
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
        await _send_json(send, 413, {"detail": detail}, close=True)


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


app = FastAPI(title="officeray", version="0.1.0")
app.add_middleware(_BodySizeLimit, max_bytes=MAX_REQUEST_BYTES)


@app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        errors.append({"field": ".".join(loc) or "(body)", "message": err.get("msg", "invalid")})
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    what = "invalid task request" if request.url.path.rstrip("/") == "/v1/tasks" else "invalid request"
    return JSONResponse(status_code=422, content={"detail": f"{what}: {summary}", "errors": errors})


@app.exception_handler(StoreUnavailableError)
async def _store_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("store unavailable: %s", exc)
    return JSONResponse(
        status_code=503,
        content={
            "detail": f"the task store is unavailable, nothing was changed; retry in "
            f"{STORE_RETRY_AFTER_S}s ({_first_line(exc)})"
        },
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


def _first_line(exc: BaseException) -> str:
    """The message of an error without the traceback Ray adds to errors raised in an actor."""
    cause = getattr(exc, "cause", None)  # RayTaskError carries the original exception
    text = str(cause if isinstance(cause, BaseException) else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def request_fingerprint(task: TaskRequest) -> str:
    """sha256 of the request as canonical JSON (sorted keys, defaults filled in), without its
    idempotency key: two requests with the same fingerprint ask for the same task."""
    data = task.model_dump(mode="json", exclude={"idempotency_key"})
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ApprovalRequest(BaseModel):
    """Body of ``POST /v1/tasks/{task_id}/approvals/{step_id}``."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    by: str = Field(min_length=1, max_length=200, description="Who decides (kept in the audit trail).")
    reason: str = Field(default="", max_length=2000)


_STORED_DECISION: dict[str, Literal["approved", "rejected"]] = {"approve": "approved", "reject": "rejected"}


class _HandleDispatch:
    """The chat routes' way to the role deployments (set by the Gateway replica in this process)."""

    def __init__(self) -> None:
        self.handles: dict[str, Any] = {}

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
app.include_router(make_chat_router(_dispatch))


def _idempotency_key(header: str | None, body: str | None) -> str | None:
    """The request's idempotency key: the header, or the body's field (422 when both differ)."""
    if header is not None and body is not None and header != body:
        raise HTTPException(
            status_code=422,
            detail=f"invalid task request: the {IDEMPOTENCY_HEADER} header ({header!r}) and the body's "
            f"idempotency_key ({body!r}) differ; send one, or the same value in both",
        )
    return header if header is not None else body


def _already_decided(task_id: str, step_id: str, previous: dict[str, Any]) -> str:
    who = f" by {previous['decided_by']}" if previous.get("decided_by") else ""
    when = f" at {jsonable_encoder(previous['decided_at'])}" if previous.get("decided_at") else ""
    return (
        f"step {step_id!r} of task {task_id!r} was already decided: "
        f"{previous.get('decision', 'decided')}{who}{when}"
    )


# serve.ingress pickles the app (and so these methods, with the module globals they use) when the
# class is decorated: every helper the routes call must be defined above this line.
@serve.deployment(name="Gateway")
@serve.ingress(app)
class Gateway:
    def __init__(self, settings: Settings, planner: Any, reviewer: Any, ai_tool: Any) -> None:
        self.settings = settings
        self.store = SqlStore(settings.store.url)
        self._model_handles = (planner, reviewer, ai_tool)
        self.shards = settings.workflow.orchestrators
        self._background: set[asyncio.Future[None]] = set()
        self.orchestrators = [
            get_or_create_orchestrator(settings, planner, reviewer, ai_tool, shard=i)
            for i in range(self.shards)
        ]
        _dispatch.handles = {"planner": planner, "reviewer": reviewer, "ai_tool": ai_tool}

    @app.post("/v1/tasks", status_code=202)
    async def create_task(
        self,
        task: TaskRequest,
        idempotency_key: Annotated[
            str | None,
            Header(alias=IDEMPOTENCY_HEADER, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS),
        ] = None,
    ) -> JSONResponse:
        unknown = sorted(set(task.allowed_tools or ()) - set(all_tools()))
        if unknown:
            raise HTTPException(
                status_code=422,
                detail=f"invalid task request: allowed_tools: unknown tools {', '.join(unknown)}; "
                f"registered tools: {', '.join(sorted(all_tools()))}",
            )
        key = _idempotency_key(idempotency_key, task.idempotency_key)
        if key is not None:
            task = await self._claim(task, key)
        if task.task_id is None:
            task = task.model_copy(update={"task_id": new_id("task")})
        assert task.task_id is not None
        record, created = await self._call_orchestrator(
            "submit", task, shard=shard_of(task.task_id, self.shards)
        )
        body = {"task_id": record.task_id, "status": record.status.value}
        return JSONResponse(body, status_code=202 if created else 200)

    async def _claim(self, task: TaskRequest, key: str) -> TaskRequest:
        """Claim ``(tenant, key)`` for this request; the request to submit, under the claimed id.

        The first claim takes a new task id. A later identical request gets the first one's id:
        submitting it answers the existing task (or creates it, when the first submission failed
        after its claim). A different request under the same key is refused with 409.
        """
        task_id = task.task_id or new_id("task")
        # claimed through an orchestrator (its store writer), not this process's own connection
        claimed_id, same_body = await self._call_orchestrator(
            "claim_idempotency_key",
            task.tenant,
            key,
            request_fingerprint(task),
            task_id,
            shard=shard_of(f"{task.tenant}/{key}", self.shards),
        )
        if not same_body:
            raise HTTPException(
                status_code=409,
                detail=f"idempotency key {key!r} was used with a different request "
                f"(task {claimed_id}); use a new key for a new task",
            )
        return task.model_copy(update={"task_id": claimed_id, "idempotency_key": key})

    @app.get("/v1/tasks/{task_id}")
    async def get_task(
        self,
        task_id: str,
        wait_s: Annotated[
            float, Query(ge=0, le=MAX_WAIT_S, description="Long poll: answer once final, or after this.")
        ] = 0.0,
    ) -> dict[str, Any]:
        record = await self._record(task_id)
        if wait_s > 0 and not record.status.is_final:
            record = await self._wait_final(record, wait_s)
        return record.public_view()

    async def _wait_final(self, record: TaskRecord, wait_s: float) -> TaskRecord:
        """The record once final (the orchestrator running it answers the moment it ends), or as
        stored after ``wait_s``."""
        waiter = self.orchestrators[shard_of(record.task_id, self.shards)]
        try:
            final: TaskRecord = await asyncio.wait_for(
                waiter.wait.remote(record.task_id, wait_s), wait_s + WAIT_GRACE_S
            )
            return final
        except Exception as exc:  # not final in time, or the shard is restarting: the store answers
            logger.debug("task %s: long poll ended without a final state: %s", record.task_id, exc)
            return await self._record(record.task_id)

    @app.get("/v1/tasks/{task_id}/events")
    async def get_events(self, task_id: str) -> dict[str, Any]:
        await self._record(task_id)
        return {"task_id": task_id, "events": await self.store.events(task_id)}

    @app.get("/v1/tasks/{task_id}/trace")
    async def get_trace(self, task_id: str) -> dict[str, Any]:
        record = await self._record(task_id)
        spans = []
        if record.trace_id:
            spans = await asyncio.to_thread(read_trace, self.settings.telemetry.trace_file, record.trace_id)
        return {"task_id": task_id, "trace_id": record.trace_id, "spans": spans}

    @app.get("/v1/tenants/{tenant}/usage")
    async def tenant_usage(self, tenant: str) -> dict[str, Any]:
        usage = await self.store.tenant_usage(tenant)
        return {"tenant": tenant, **usage.model_dump(), "total_tokens": usage.total_tokens}

    @app.get("/v1/dlq")
    async def dlq_list(
        self,
        tenant: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,100}$")] = None,
        limit: Annotated[int, Query(ge=1, le=DLQ_LIST_MAX)] = 100,
    ) -> dict[str, Any]:
        entries = await self.store.dlq_list(tenant, limit)
        return {"entries": jsonable_encoder(entries), "count": len(entries)}

    @app.get("/v1/dlq/{task_id}")
    async def dlq_get(self, task_id: str) -> dict[str, Any]:
        entry = await self._dlq_entry(task_id)
        return dict(jsonable_encoder(entry))

    @app.post("/v1/dlq/{task_id}/retry", status_code=202)
    async def dlq_retry(self, task_id: str) -> JSONResponse:
        await self._dlq_entry(task_id)
        try:
            record = await self._call_orchestrator("retry", task_id, shard=shard_of(task_id, self.shards))
        except TaskNotFoundError:  # taken out of the queue meanwhile (another retry)
            raise HTTPException(
                status_code=404, detail=f"task {task_id!r} is not in the dead-letter queue"
            ) from None
        return JSONResponse({"task_id": record.task_id, "status": record.status.value}, status_code=202)

    @app.post("/v1/tasks/{task_id}/approvals/{step_id}")
    async def decide_approval(self, task_id: str, step_id: str, body: ApprovalRequest) -> dict[str, Any]:
        record = await self._record(task_id)
        step = next((s for s in record.steps if s.step_id == step_id), None)
        if step is None or step.status != StepStatus.WAITING_APPROVAL:
            previous = await self.store.get_approval(task_id, step.idempotency_key) if step else None
            if previous is not None:
                raise HTTPException(status_code=409, detail=_already_decided(task_id, step_id, previous))
            state = "has no such step" if step is None else f"is {step.status.value}"
            raise HTTPException(
                status_code=409,
                detail=f"step {step_id!r} of task {task_id!r} is not waiting for approval (it {state})",
            )
        decision = _STORED_DECISION[body.decision]
        key = step.idempotency_key  # decisions belong to this round's step, not to every "s1"
        if not await self.store.decide_approval(task_id, key, decision, body.by, body.reason):
            previous = await self.store.get_approval(task_id, key) or {}
            raise HTTPException(status_code=409, detail=_already_decided(task_id, step_id, previous))
        stored = await self.store.get_approval(task_id, key) or {}
        # the decision is durable (the waiting step also polls for it): wake it without waiting
        self._background.add(task := asyncio.ensure_future(self._notify_all(task_id, key)))
        task.add_done_callback(self._background.discard)
        return {
            "task_id": task_id,
            "step_id": step_id,
            "decision": decision,
            "decided_by": body.by,
            "decided_at": jsonable_encoder(stored.get("decided_at")),
        }

    @app.get("/v1/tasks/{task_id}/approvals/{step_id}")
    async def get_approval(self, task_id: str, step_id: str) -> dict[str, Any]:
        record = await self._record(task_id)
        step = next((s for s in record.steps if s.step_id == step_id), None)
        stored = None if step is None else await self.store.get_approval(task_id, step.idempotency_key)
        if stored is None:
            raise HTTPException(
                status_code=404, detail=f"no decision for step {step_id!r} of task {task_id!r}"
            )
        return {**jsonable_encoder(stored), "task_id": task_id, "step_id": step_id}

    async def check_health(self) -> None:
        """Serve's periodic health check: reach the orchestrator (after a crash, Ray restarts it and
        this call starts its loops, which resume the tasks it held)."""
        results = await asyncio.gather(
            *(
                asyncio.wait_for(self._call_orchestrator("in_flight", shard=shard), HEALTH_TIMEOUT_S)
                for shard in range(self.shards)
            ),
            return_exceptions=True,
        )
        for shard, result in enumerate(results):
            if isinstance(result, BaseException):  # the gateway is healthy while an orchestrator restarts
                logger.warning("orchestrator %d not reachable from the health check: %s", shard, result)

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        shards = range(self.shards)
        try:
            counts, pools = await asyncio.wait_for(
                asyncio.gather(
                    asyncio.gather(*(self._call_orchestrator("in_flight", shard=i) for i in shards)),
                    # the pool figures are informative: an orchestrator without them is still healthy
                    asyncio.gather(
                        *(self._call_orchestrator("pool_stats", shard=i) for i in shards),
                        return_exceptions=True,
                    ),
                ),
                HEALTH_TIMEOUT_S,
            )
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        known = [pool for pool in pools if isinstance(pool, dict)]
        runners: dict[str, Any] = {key: sum(p.get(key, 0) for p in known) for key in HEALTH_RUNNER_FIELDS}
        runners["problems"] = sorted({p["placement_problem"] for p in known if p.get("placement_problem")})
        return JSONResponse({"status": "ok", "tasks_in_flight": sum(counts), "tool_runners": runners})

    async def _notify_all(self, task_id: str, key: str) -> None:
        """Tell every shard (whichever holds the task wakes its waiting step)."""
        results = await asyncio.gather(
            *(self._call_orchestrator("notify_approval", task_id, key, shard=i) for i in range(self.shards)),
            return_exceptions=True,
        )
        for shard, result in enumerate(results):
            if isinstance(result, BaseException):
                logger.warning("task %s: notify_approval on shard %d failed: %s", task_id, shard, result)

    async def _call_orchestrator(self, method: str, *args: Any, shard: int = 0) -> Any:
        """Call orchestrator ``shard``; after it died, find its restarted incarnation once, else 503.

        A shard that does not answer within ``ORCHESTRATOR_CALL_TIMEOUT_S`` (restarting, overloaded)
        gets a 503 with Retry-After, never a hung request.
        """
        for attempt in range(2):
            try:
                return await asyncio.wait_for(
                    getattr(self.orchestrators[shard], method).remote(*args), ORCHESTRATOR_CALL_TIMEOUT_S
                )
            except TimeoutError:
                raise HTTPException(
                    status_code=503,
                    detail=f"the orchestrator did not answer within {ORCHESTRATOR_CALL_TIMEOUT_S:g}s",
                    headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
                ) from None
            except RayActorError as exc:
                if attempt:
                    raise HTTPException(
                        status_code=503, detail=f"the orchestrator is unavailable: {exc}"
                    ) from None
                self.orchestrators[shard] = get_or_create_orchestrator(
                    self.settings, *self._model_handles, shard=shard
                )
        raise AssertionError("unreachable")

    async def _record(self, task_id: str) -> TaskRecord:
        record = await self.store.get_task(task_id)
        if record is None:
            raise HTTPException(status_code=404, detail=f"task {task_id!r} not found")
        return record

    async def _dlq_entry(self, task_id: str) -> dict[str, Any]:
        entry = await self.store.dlq_get(task_id)
        if entry is None:
            raise HTTPException(status_code=404, detail=f"task {task_id!r} is not in the dead-letter queue")
        return entry
