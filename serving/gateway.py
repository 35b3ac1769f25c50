"""The HTTP API: a FastAPI app as the Serve ingress.

* ``POST /v1/tasks``: body :class:`~officeray.contracts.TaskRequest`; answers 202
  ``{"task_id", "status"}`` once the task is persisted. A ``task_id`` already known answers 200 with
  that task instead of starting a second one.
* ``GET /v1/tasks/{task_id}``: the task record with ``progress`` (step counts by status),
  ``current_step``, the steps with their status, attempts, output or error, and log lines.
* ``GET /v1/tasks/{task_id}/events``: the task's transitions in order.
* ``GET /v1/tasks/{task_id}/trace``: the task's spans in order.
* ``GET /v1/tenants/{tenant}/usage``: tokens and cost summed over the tenant's finished tasks.
* ``POST /v1/chat/completions`` (``model`` = ``planner`` | ``reviewer`` | ``ai_tool``) and
  ``GET /v1/models``: the role models in the OpenAI chat-completions shape (:mod:`serving.chat_api`).
* ``GET /healthz``: ``{"status": "ok"}`` when the orchestrator answers.

Bad input answers 4xx with a message (422 for a body that does not match the schema, with one
entry per bad field), an unknown id answers 404.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError

from actors.orchestrator import get_or_create_orchestrator
from officeray.config import Settings
from officeray.contracts import TaskRecord, TaskRequest
from officeray.errors import ModelUnavailableError
from officeray.store import SqlStore
from officeray.telemetry import read_trace
from serving.chat_api import make_chat_router
from serving.models import call_with_backpressure, unwrap_chat_reply
from serving.tiers.base import BackpressureError, ModelAnswer, ModelCall, Role
from tools_sandbox.catalog import all_tools

HEALTH_TIMEOUT_S = 5.0

app = FastAPI(title="officeray", version="0.1.0")


@app.exception_handler(RequestValidationError)
async def _invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        errors.append({"field": ".".join(loc) or "(body)", "message": err.get("msg", "invalid")})
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(
        status_code=422, content={"detail": f"invalid task request: {summary}", "errors": errors}
    )


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


@serve.deployment(name="Gateway")
@serve.ingress(app)
class Gateway:
    def __init__(self, settings: Settings, planner: Any, reviewer: Any, ai_tool: Any) -> None:
        self.settings = settings
        self.store = SqlStore(settings.store.url)
        self._model_handles = (planner, reviewer, ai_tool)
        self.orchestrator = get_or_create_orchestrator(settings, planner, reviewer, ai_tool)
        _dispatch.handles = {"planner": planner, "reviewer": reviewer, "ai_tool": ai_tool}

    @app.post("/v1/tasks", status_code=202)
    async def create_task(self, task: TaskRequest) -> JSONResponse:
        unknown = sorted(set(task.allowed_tools or ()) - set(all_tools()))
        if unknown:
            raise HTTPException(
                status_code=422,
                detail=f"invalid task request: allowed_tools: unknown tools {', '.join(unknown)}; "
                f"registered tools: {', '.join(sorted(all_tools()))}",
            )
        record, created = await self._call_orchestrator("submit", task)
        body = {"task_id": record.task_id, "status": record.status.value}
        return JSONResponse(body, status_code=202 if created else 200)

    @app.get("/v1/tasks/{task_id}")
    async def get_task(self, task_id: str) -> dict[str, Any]:
        return (await self._record(task_id)).public_view()

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

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        try:
            in_flight = await asyncio.wait_for(self._call_orchestrator("in_flight"), HEALTH_TIMEOUT_S)
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "tasks_in_flight": in_flight})

    async def _call_orchestrator(self, method: str, *args: Any) -> Any:
        """Call the orchestrator; after it died, find its restarted incarnation once, else 503."""
        for attempt in range(2):
            try:
                return await getattr(self.orchestrator, method).remote(*args)
            except RayActorError as exc:
                if attempt:
                    raise HTTPException(
                        status_code=503, detail=f"the orchestrator is unavailable: {exc}"
                    ) from None
                self.orchestrator = get_or_create_orchestrator(self.settings, *self._model_handles)
        raise AssertionError("unreachable")

    async def _record(self, task_id: str) -> TaskRecord:
        record = await self.store.get_task(task_id)
        if record is None:
            raise HTTPException(status_code=404, detail=f"task {task_id!r} not found")
        return record
