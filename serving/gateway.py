"""The HTTP API: a FastAPI app as the Serve ingress.

* ``POST /v1/tasks``: body :class:`~officeray.contracts.TaskRequest`; answers 202
  ``{"task_id", "status"}`` once the task is persisted. A ``task_id`` already known answers 200 with
  that task instead of starting a second one.
* ``GET /v1/tasks/{task_id}``: the task record with ``progress`` (step counts by status),
  ``current_step``, the steps with their status, attempts, output or error, and log lines.
* ``GET /v1/tasks/{task_id}/events``: the task's transitions in order.
* ``GET /v1/tasks/{task_id}/trace``: the task's spans in order.
* ``GET /healthz``: ``{"status": "ok"}`` when the orchestrator answers.

Bad input answers 4xx with a message (422 for a body that does not match the schema, with one
entry per bad field), an unknown id answers 404.
"""

import asyncio
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from actors.orchestrator import get_or_create_orchestrator
from officeray.config import Settings
from officeray.contracts import TaskRecord, TaskRequest
from officeray.store import SqlStore
from officeray.telemetry import read_trace

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


@serve.deployment(name="Gateway")
@serve.ingress(app)
class Gateway:
    def __init__(self, settings: Settings, planner: Any, reviewer: Any) -> None:
        self.settings = settings
        self.store = SqlStore(settings.store.url)
        self.orchestrator = get_or_create_orchestrator(settings, planner, reviewer)

    @app.post("/v1/tasks", status_code=202)
    async def create_task(self, task: TaskRequest) -> JSONResponse:
        if task.task_id is not None:
            existing = await self.store.get_task(task.task_id)
            if existing is not None:
                return JSONResponse(
                    {"task_id": existing.task_id, "status": existing.status.value}, status_code=200
                )
        record: TaskRecord = await self.orchestrator.submit.remote(task)
        return JSONResponse({"task_id": record.task_id, "status": record.status.value}, status_code=202)

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

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        try:
            in_flight = await asyncio.wait_for(self.orchestrator.in_flight.remote(), HEALTH_TIMEOUT_S)
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "tasks_in_flight": in_flight})

    async def _record(self, task_id: str) -> TaskRecord:
        record = await self.store.get_task(task_id)
        if record is None:
            raise HTTPException(status_code=404, detail=f"task {task_id!r} not found")
        return record
