"""Fakes for the model layer, shipped with the package: a scripted tier and a fake clock.

:class:`ScriptedTier` answers :meth:`generate` calls from a script, one item per call, in order:

* a :class:`~serving.tiers.base.ModelAnswer`: returned (an empty ``tier``/``model`` is filled in
  with the tier's ``name``/``model``);
* a ``str``: an answer with that ``content``; a ``dict``: an answer with that ``data`` (and the
  dict as JSON in ``content``);
* an exception instance (``RateLimitedError("429", retry_after_s=2)``): raised;
* a callable ``f(call) -> item``: called with the :class:`ModelCall`; what it returns is handled as
  above (it may also raise, or be ``async``);
* a ``float``: **hang** for that many real seconds, then answer with the *next* item in the same
  call. If the router's timeout cancels the hang, the next item is left in the script for the next
  call, so ``[5.0, answer]`` on a tier with one retry means "the first try times out, the retry
  gets ``answer``". Use seconds far above the tier's ``timeout_s``.

Every call is recorded in :attr:`ScriptedTier.calls` (hung ones too); :meth:`assert_consumed` fails
a test that ended with items left over, and a call past the end of the script fails loudly.

:class:`FakeClock` stands in for ``time.monotonic`` and ``asyncio.sleep``: pass ``clock=fake`` (or
``fake.now``) and ``sleep=fake.sleep``; every sleep advances the clock at once and is recorded in
:attr:`FakeClock.sleeps`.

:class:`FakeTaskApi` is an in-memory stand-in for the gateway's task API (the routes' shapes, API
keys, the event stream) that command-line clients are tested against; :func:`serve_in_thread` serves
an ASGI app on loopback with uvicorn for the length of a ``with`` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from officeray.auth import Principal, Role
from officeray.config import EmbeddedTierConfig, OpenAITierConfig, TierConfig, VllmTierConfig
from officeray.contracts import (
    MemoryOutcome,
    StepResult,
    StepStatus,
    TaskEvent,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    utcnow,
)
from officeray.memory.entries import MAX_QUERY_CHARS, MAX_SEARCH_K
from serving.tiers.base import ModelAnswer, ModelCall, ModelTier

if TYPE_CHECKING:
    from officeray.memory.service import Memory

SCRIPTED_TIER_NO_TIMEOUT_S = 3600.0
"""``timeout_s`` of a scripted non-embedded tier built with ``timeout_s=None`` (the config's maximum)."""


class ScriptedTier:
    """A :class:`~serving.tiers.base.ModelTier` that answers from a script (see the module doc).

    ``name`` is the tier kind it poses as in attempts and answers. ``timeout_s`` and ``max_retries``
    only shape :meth:`config`, the chain entry the router reads them from.
    """

    def __init__(
        self,
        name: str = "fake",
        model: str = "fake-model",
        answers: Iterable[Any] = (),
        timeout_s: float | None = None,
        max_retries: int = 0,
    ) -> None:
        self.name = name
        self.model = model
        self.answers: list[Any] = list(answers)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.calls: list[ModelCall] = []

    @property
    def call_count(self) -> int:
        return len(self.calls)

    def config(self) -> TierConfig:
        """The tier config for this fake: embedded (no timeout, no retries) for ``name="embedded"``,
        vLLM for ``name="vllm"``, else an OpenAI-compatible config with this model."""
        timeout = self.timeout_s if self.timeout_s is not None else SCRIPTED_TIER_NO_TIMEOUT_S
        if self.name == "embedded":
            if self.timeout_s is not None or self.max_retries:
                raise ValueError("an embedded tier has no timeout_s and no retries")
            return EmbeddedTierConfig()
        if self.name == "vllm":
            return VllmTierConfig(
                tier="vllm", model=self.model, timeout_s=timeout, max_retries=self.max_retries
            )
        return OpenAITierConfig(
            tier="openai", model=self.model, timeout_s=timeout, max_retries=self.max_retries
        )

    def entry(self) -> tuple[TierConfig, ModelTier]:
        """``(config, tier)``: one element of the ``tiers`` a :class:`~serving.router.Router` takes."""
        return self.config(), self

    async def generate(self, call: ModelCall) -> ModelAnswer:
        self.calls.append(call)
        item = self._pop()
        while isinstance(item, float):
            await asyncio.sleep(item)
            item = self._pop()
        return await self._answer(item, call)

    def assert_consumed(self) -> None:
        if self.answers:
            raise AssertionError(
                f"scripted tier {self.name}({self.model}) ended with {len(self.answers)} unused item(s)"
            )

    def _pop(self) -> Any:
        if not self.answers:
            raise AssertionError(
                f"scripted tier {self.name}({self.model}) called {len(self.calls)} time(s) "
                "but the script has no more items"
            )
        return self.answers.pop(0)

    async def _answer(self, item: Any, call: ModelCall) -> ModelAnswer:
        if isinstance(item, BaseException):
            raise item
        if callable(item):
            item = item(call)
            if inspect.isawaitable(item):
                item = await item
            return await self._answer(item, call)
        if isinstance(item, str):
            item = ModelAnswer(content=item)
        elif isinstance(item, dict):
            item = ModelAnswer(content=json.dumps(item), data=item)
        if not isinstance(item, ModelAnswer):
            raise TypeError(f"scripted tier item of unsupported type {type(item).__name__}: {item!r}")
        return item.model_copy(update={"tier": item.tier or self.name, "model": item.model or self.model})

    def __repr__(self) -> str:
        return f"ScriptedTier({self.name!r}, {self.model!r}, {len(self.answers)} item(s) left)"


def chain(*tiers: ScriptedTier) -> list[tuple[TierConfig, ModelTier]]:
    """The ``tiers`` argument of a :class:`~serving.router.Router` made of scripted tiers."""
    return [tier.entry() for tier in tiers]


class RoutedPlanner:
    """The workflow's planner port over an in-process :class:`~serving.router.Router`: what the planner
    deployment does (the prompt with the memory's examples and warnings, the tier chain, the answer
    re-stamped for the task, the call's record), without Serve. ``tiers`` as for the router (e.g.
    :func:`chain` of scripted tiers, or ``[(EmbeddedTierConfig(), EmbeddedTier("planner"))]``)."""

    def __init__(
        self,
        tiers: list[tuple[TierConfig, ModelTier]],
        tools: Mapping[str, tuple[str, Any]],
        *,
        memory_budget: int = 1_200,
    ) -> None:
        from officeray.config import RouterSettings
        from serving.router import Router

        self.router = Router("planner", tiers, RouterSettings())
        self.tools = dict(tools)
        self.memory_budget = memory_budget

    async def plan(self, request: Any) -> Any:
        from officeray.contracts import Planned
        from serving.roles import accept_plan, call_record, planner_call

        call = planner_call(request, self.tools, tenant=request.tenant, memory_budget=self.memory_budget)
        routed = await self.router.call(call, accept_plan(request))
        return Planned(plan=routed.value, call=call_record("planner", routed))


class FakeClock:
    """A monotonic clock that only moves when told to; ``sleep`` moves it instead of waiting."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    __call__ = now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the wait, advance the clock by it, and yield to the event loop once."""
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    @property
    def waits(self) -> list[float]:
        """The same list as :attr:`sleeps`."""
        return self.sleeps


# -- a fake task API for command-line clients (helper CLIENT) --

FAKE_ADMIN_KEY = "ofr_00000000000a_" + "a" * 32
"""The admin key (tenant ``default``) a :class:`FakeTaskApi` accepts unless given other keys."""
FAKE_USER_KEY = "ofr_00000000000b_" + "b" * 32
"""A ``user`` key of tenant ``acme``."""
FAKE_OTHER_USER_KEY = "ofr_00000000000c_" + "c" * 32
"""A ``user`` key of tenant ``globex``."""
FAKE_POLL_S = 0.01
"""How often the fake's long polls and event streams look for news."""
FAKE_MAX_LIST_LIMIT = 500
FAKE_MEMORY_K = 5
"""Hits of a memory search without ``?k=`` (as the gateway's ``MEMORY_SEARCH_DEFAULT_K``)."""
SERVER_START_TIMEOUT_S = 10.0
"""How long :func:`serve_in_thread` waits for uvicorn to accept connections."""
FAKE_SUBMIT_SPAN_NS = 1_000_000
"""Length of the synthesized gateway ``submit`` span of a fake task (1 ms)."""
FAKE_WORK_SHARE = 0.8
"""Share of a synthesized phase its main span takes: ``plan`` then ``validate`` in the planning
phase, the steps then ``review`` in the executing phase."""
NDJSON = "application/x-ndjson"


_AuthHeader = Annotated[str | None, Header(alias="Authorization")]


def _fake_principals() -> dict[str, Principal]:
    return {
        FAKE_ADMIN_KEY: Principal("00000000000a", "default", Role.ADMIN),
        FAKE_USER_KEY: Principal("00000000000b", "acme", Role.USER),
        FAKE_OTHER_USER_KEY: Principal("00000000000c", "globex", Role.USER),
    }


class _Refused(Exception):
    def __init__(
        self, status: int, detail: str, code: str, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.code = status, detail, code
        self.headers = dict(headers or {})
        self.extra = extra


class FakeTaskApi:
    """The task API's routes in memory, answering in the gateway's shapes (``{"detail", "code"}``
    errors, 401 with ``WWW-Authenticate`` for a missing or unknown key, 404 for another tenant's task):
    ``POST/GET /v1/tasks``, ``GET /v1/tasks/{id}`` (``?wait_s=`` long poll), ``.../events`` (server-sent
    events with ``Accept: text/event-stream``, resumed after ``Last-Event-ID``; a JSON list otherwise),
    ``.../cancel``, ``.../approvals/{step}``, ``.../feedback``, ``.../trace`` (JSON, or NDJSON with
    ``Accept: application/x-ndjson``), ``/v1/dlq`` (admin), ``/healthz`` and the memory routes
    (``/v1/memory/search``, ``DELETE /v1/memory/{entry_id}``, ``DELETE /v1/memory?tenant=``, ``DELETE
    /v1/tasks/{id}/memory``, admin ``POST /v1/memory/rebuild`` and ``GET /v1/memory/stats``).

    :attr:`memory` is an in-process :class:`~officeray.memory.service.Memory` (in-memory store,
    :class:`~officeray.testing.HashingEncoder`, no index files) that remembers every task the fake
    ends, before its final state shows, and takes the feedback ratings; ``memory=False``: no memory
    (the memory routes answer 503 ``memory_off``).

    ``keys`` maps API keys to principals (default: :data:`FAKE_ADMIN_KEY`, :data:`FAKE_USER_KEY`,
    :data:`FAKE_OTHER_USER_KEY`). A submitted task runs by itself to ``finish_as`` (planning, one
    step ``s1`` running then succeeded, then the final state; ``transition_delay_s`` apart), or
    stays queued when ``finish_as`` is None: move it with :meth:`transition`. ``cut_streams_after``
    ends each of the first ``cut_streams`` event streams after that many events, before the task is
    final, as a dropped connection would. What the fake saw is in :attr:`requests` (method, path),
    :attr:`last_event_ids`, :attr:`decisions` and :attr:`feedback`. A task's trace is synthesized
    from its record and events (see :meth:`trace`) unless :attr:`spans` holds spans for it.
    """

    def __init__(
        self,
        keys: Mapping[str, Principal] | None = None,
        *,
        finish_as: TaskStatus | None = TaskStatus.COMPLETED,
        transition_delay_s: float = 0.0,
        cut_streams_after: int | None = None,
        cut_streams: int = 1,
        memory: bool = True,
    ) -> None:
        self.keys = dict(keys) if keys is not None else _fake_principals()
        self.memory: Memory | None = _fake_memory() if memory else None
        self.finish_as = finish_as
        self.transition_delay_s = transition_delay_s
        self.cut_streams_after = cut_streams_after
        self.cuts_left = cut_streams if cut_streams_after is not None else 0
        self.tasks: dict[str, TaskRecord] = {}
        self.events: dict[str, list[TaskEvent]] = {}
        self.requests: list[tuple[str, str]] = []
        self.last_event_ids: list[str | None] = []
        self.decisions: list[dict[str, Any]] = []
        self.feedback: dict[str, list[dict[str, Any]]] = {}
        self.dlq: dict[str, dict[str, Any]] = {}
        self.spans: dict[str, list[dict[str, Any]]] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._event_seq = 0
        self._background: set[asyncio.Task[None]] = set()
        self.app = self._build_app()

    # -- what tests drive --

    def add_task(self, record: TaskRecord) -> TaskRecord:
        """Store ``record`` (as if submitted) with its first event."""
        with self._lock:
            self.tasks[record.task_id] = record
            self.events.setdefault(record.task_id, [])
            self._append_event(record.task_id, record.status)
        return record

    def transition(self, task_id: str, status: TaskStatus, **changes: Any) -> TaskRecord:
        """Move the task to ``status`` (with other record fields changed too) and record the event."""
        with self._lock:
            update = {"status": status, "updated_at": utcnow(), **changes}
            if status.is_final:
                update.setdefault("finished_at", utcnow())
            record = self.tasks[task_id].model_copy(update=update)
            self.tasks[task_id] = record
            self._append_event(task_id, status, changes.get("current_step"))
        return record

    def _append_event(self, task_id: str, status: TaskStatus, step: str | None = None) -> None:
        self._event_seq += 1
        data: dict[str, Any] = {"status": status.value}
        if step:
            data["current_step"] = step
        self.events[task_id].append(TaskEvent(id=self._event_seq, kind="status", data=data, at=utcnow()))

    def trace(self, task_id: str) -> dict[str, Any]:
        """The ``GET /v1/tasks/{id}/trace`` answer: the spans set in :attr:`spans` for the task, else
        spans made up from its record and events, as the real system would have them (gateway
        ``submit``; planner ``plan`` and ``validate`` while planning; one ``step <id>`` per step on
        runner ``0``, ``1``, ... then ``review`` while executing; the orchestrator's ``task`` once
        final), each with its ``lane`` and ``duration_ms``; ordered by start."""
        record = self.tasks[task_id]
        trace_id = record.trace_id or hashlib.sha256(task_id.encode()).hexdigest()[:32]
        given = self.spans.get(task_id)
        spans = [dict(s) for s in given] if given is not None else self._synthesized_spans(record, trace_id)
        spans.sort(key=lambda s: (s.get("start_ns") or 0, s.get("end_ns") or 0))
        return {
            "task_id": task_id,
            "trace_id": trace_id,
            "spans": spans,
            "events": [e.model_dump(mode="json") for e in self.events.get(task_id, [])],
        }

    def _synthesized_spans(self, record: TaskRecord, trace_id: str) -> list[dict[str, Any]]:
        first: dict[str, int] = {}
        for event in self.events.get(record.task_id, []):
            status = event.data.get("status") if isinstance(event.data, dict) else None
            if isinstance(status, str) and event.at is not None:
                first.setdefault(status, _ns(event.at))
        root_id = _span_id(trace_id, "task")
        made: list[dict[str, Any]] = []

        def add(
            name: str, component: str, start: int, end: int, *, instance: str = "0", **extra: Any
        ) -> None:
            parent = None if name == "task" else root_id
            made.append(
                _fake_span(trace_id, record.task_id, name, component, instance, start, end, parent, extra)
            )

        created = _ns(record.created_at)
        add("submit", "gateway", created, created + FAKE_SUBMIT_SPAN_NS)
        final_at = _ns(record.finished_at) if record.status.is_final and record.finished_at else None
        planning, executing = first.get(TaskStatus.PLANNING.value), first.get(TaskStatus.EXECUTING.value)
        plan_end = executing or final_at
        if planning is not None and plan_end is not None:
            split = planning + int((plan_end - planning) * FAKE_WORK_SHARE)
            add("plan", "planner", planning, split)
            add("validate", "planner", split, plan_end)
        if executing is not None and final_at is not None:
            split = executing + int((final_at - executing) * FAKE_WORK_SHARE)
            for index, step in enumerate(record.steps):
                failed = step.status == StepStatus.FAILED
                message = step.error.message if step.error else (record.error or "") if failed else ""
                add(
                    f"step {step.step_id}",
                    "runner",
                    _ns(step.started_at) if step.started_at else executing,
                    _ns(step.finished_at) if step.finished_at else split,
                    instance=str(index),
                    status="error" if failed else "ok",
                    status_message=message,
                    attributes={"officeray.step_id": step.step_id, "officeray.action": step.action},
                )
            if record.status == TaskStatus.COMPLETED:
                add("review", "reviewer", split, final_at)
        if final_at is not None:
            ok = record.status == TaskStatus.COMPLETED
            add(
                "task",
                "orchestrator",
                created,
                final_at,
                status="ok" if ok else "error",
                status_message="" if ok else record.error or record.status.value,
            )
        return made

    async def _run(self, task_id: str, finish_as: TaskStatus) -> None:
        """The scripted life of a submitted task (see the class doc)."""
        step = StepResult(
            step_id="s1", action="echo", idempotency_key=f"{task_id}:s1", status=StepStatus.RUNNING
        )
        description = self.tasks[task_id].description
        script: list[tuple[TaskStatus, dict[str, Any]]] = [
            (TaskStatus.PLANNING, {"current_step": "planning (iteration 1)", "iterations": 1}),
            (TaskStatus.EXECUTING, {"current_step": "step s1 (echo) running", "steps": [step]}),
        ]
        done = step.model_copy(update={"status": StepStatus.SUCCEEDED, "attempts": 1, "output": description})
        final: dict[str, Any]
        if finish_as == TaskStatus.COMPLETED:
            final = {"steps": [done], "result": {"echo": description}, "current_step": "completed"}
        else:
            failed = step.model_copy(update={"status": StepStatus.FAILED, "attempts": 1})
            final = {
                "steps": [failed],
                "error": f"the fake task ended {finish_as.value}",
                "current_step": None,
            }
        script.append((finish_as, final))
        for status, changes in script:
            await asyncio.sleep(self.transition_delay_s)
            if self.tasks[task_id].status.is_final:  # cancelled meanwhile
                return
            if status.is_final:
                await self._end(task_id, status, **changes)
            else:
                self.transition(task_id, status, **changes)

    async def _end(self, task_id: str, status: TaskStatus, **changes: Any) -> None:
        """Remember the task's attempt (as the orchestrator does, before its final state shows), then
        move it to ``status``."""
        if self.memory is not None:
            ended = {"status": status, "finished_at": utcnow(), **changes}
            await self.memory.remember(self.tasks[task_id].model_copy(update=ended))
        self.transition(task_id, status, **changes)

    # -- the app --

    def _principal(self, authorization: str | None) -> Principal:
        scheme, _, key = (authorization or "").partition(" ")
        principal = self.keys.get(key.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise _Refused(
                401, "missing or invalid API key", "unauthorized", headers={"WWW-Authenticate": "Bearer"}
            )
        return principal

    def _task(self, task_id: str, principal: Principal) -> TaskRecord:
        record = self.tasks.get(task_id)
        if record is None or not principal.sees_tenant(record.tenant):
            raise _Refused(404, f"task {task_id!r} not found", "task_not_found")
        return record

    def _build_app(self) -> FastAPI:  # noqa: C901 - one closure per route, as a fake server is
        app = FastAPI(title="officeray (fake task API)")

        @app.middleware("http")
        async def _log(request: Request, call_next: Any) -> Any:
            self.requests.append((request.method, request.url.path))
            return await call_next(request)

        @app.exception_handler(_Refused)
        async def _refused(_request: Request, exc: _Refused) -> JSONResponse:
            body = {"detail": exc.detail, "code": exc.code, **exc.extra}
            return JSONResponse(body, status_code=exc.status, headers=exc.headers)

        @app.exception_handler(RequestValidationError)
        async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
            errors = [
                {"field": ".".join(str(p) for p in e["loc"] if p != "body") or "(body)", "message": e["msg"]}
                for e in exc.errors()
            ]
            summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
            return JSONResponse(
                {"detail": f"invalid request: {summary}", "code": "invalid_request", "errors": errors},
                status_code=422,
            )

        @app.get("/healthz")
        async def healthz() -> dict[str, Any]:
            return {
                "status": "ok",
                "tasks_in_flight": sum(not t.status.is_final for t in self.tasks.values()),
            }

        @app.post("/v1/tasks", status_code=202)
        async def submit(
            body: dict[str, Any],
            authorization: _AuthHeader = None,
            idempotency_key: Annotated[str | None, Header()] = None,
        ) -> JSONResponse:
            principal = self._principal(authorization)
            try:
                request = TaskRequest.model_validate({**body, "tenant": principal.tenant})
            except ValidationError as exc:
                errors = [
                    {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
                    for e in exc.errors()
                ]
                raise _Refused(422, "invalid task request", "invalid_request", errors=errors) from None
            if idempotency_key and (principal.tenant, idempotency_key) in self._idempotency:
                known = self.tasks[self._idempotency[(principal.tenant, idempotency_key)]]
                return JSONResponse({"task_id": known.task_id, "status": known.status.value}, status_code=200)
            task_id = f"task-{len(self.tasks) + 1:04d}"
            self.add_task(
                TaskRecord(task_id=task_id, description=request.description, tenant=principal.tenant)
            )
            if idempotency_key:
                self._idempotency[(principal.tenant, idempotency_key)] = task_id
            if self.finish_as is not None:
                runner = asyncio.create_task(self._run(task_id, self.finish_as))
                self._background.add(runner)
                runner.add_done_callback(self._background.discard)
            return JSONResponse({"task_id": task_id, "status": "queued"}, status_code=202)

        @app.get("/v1/tasks")
        async def list_tasks(
            authorization: _AuthHeader = None,
            status: TaskStatus | None = None,
            tenant: str | None = None,
            limit: Annotated[int, Query(ge=1, le=FAKE_MAX_LIST_LIMIT)] = 50,
            cursor: str | None = None,
        ) -> dict[str, Any]:
            principal = self._principal(authorization)
            wanted = (
                tenant
                if principal.is_admin and tenant
                else (None if principal.is_admin else principal.tenant)
            )
            chosen = [
                t
                for t in reversed(list(self.tasks.values()))
                if (wanted is None or t.tenant == wanted) and (status is None or t.status == status)
            ]
            start = int(cursor) if cursor and cursor.isdigit() else 0
            page = chosen[start : start + limit]
            more = start + limit < len(chosen)
            return {
                "tasks": [t.public_view() for t in page],
                "next_cursor": str(start + limit) if more else None,
            }

        @app.get("/v1/tasks/{task_id}")
        async def get_task(
            task_id: str,
            authorization: _AuthHeader = None,
            wait_s: Annotated[float, Query(ge=0, le=30)] = 0.0,
        ) -> dict[str, Any]:
            principal = self._principal(authorization)
            record = self._task(task_id, principal)
            deadline = time.monotonic() + wait_s
            while not record.status.is_final and time.monotonic() < deadline:
                await asyncio.sleep(FAKE_POLL_S)
                record = self.tasks[task_id]
            return record.public_view()

        @app.get("/v1/tasks/{task_id}/events", response_model=None)
        async def events(
            task_id: str,
            request: Request,
            authorization: _AuthHeader = None,
            last_event_id: Annotated[str | None, Header()] = None,
        ) -> Any:
            from sse_starlette import EventSourceResponse

            self._task(task_id, self._principal(authorization))
            if "text/event-stream" not in request.headers.get("accept", ""):
                return {
                    "task_id": task_id,
                    "events": [e.model_dump(mode="json") for e in self.events[task_id]],
                }
            self.last_event_ids.append(last_event_id)
            after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
            cut_after = None
            if self.cuts_left > 0:
                self.cuts_left -= 1
                cut_after = self.cut_streams_after
            return EventSourceResponse(self._stream(task_id, after, cut_after))

        @app.get("/v1/tasks/{task_id}/trace", response_model=None)
        async def trace(task_id: str, request: Request, authorization: _AuthHeader = None) -> Any:
            self._task(task_id, self._principal(authorization))
            answer = self.trace(task_id)
            if NDJSON in request.headers.get("accept", ""):
                lines = "".join(json.dumps(span) + "\n" for span in answer["spans"])
                return Response(lines, media_type=NDJSON)
            return answer

        @app.post("/v1/tasks/{task_id}/cancel", status_code=202)
        async def cancel(task_id: str, authorization: _AuthHeader = None) -> dict[str, Any]:
            record = self._task(task_id, self._principal(authorization))
            if record.status.is_final:
                raise _Refused(409, f"task {task_id!r} already ended {record.status.value}", "task_final")
            await self._end(task_id, TaskStatus.CANCELLED, error="cancelled by a client")
            return {"task_id": task_id, "status": TaskStatus.CANCELLED.value}

        @app.post("/v1/tasks/{task_id}/approvals/{step_id}")
        async def approve(
            task_id: str, step_id: str, body: dict[str, Any], authorization: _AuthHeader = None
        ) -> dict[str, Any]:
            principal = self._principal(authorization)
            record = self._task(task_id, principal)
            if principal.role == Role.USER:
                raise _Refused(403, "deciding approvals needs an approver or admin key", "forbidden")
            if body.get("decision") not in ("approve", "reject"):
                raise _Refused(422, "decision must be approve or reject", "invalid_request")
            waiting = any(
                s.step_id == step_id and s.status == StepStatus.WAITING_APPROVAL for s in record.steps
            )
            if not waiting:
                raise _Refused(
                    409, f"step {step_id!r} of task {task_id!r} does not wait", "approval_conflict"
                )
            decision = {
                "task_id": task_id,
                "step_id": step_id,
                "decision": "approved" if body["decision"] == "approve" else "rejected",
                "decided_by": principal.key_id,
                "reason": body.get("reason", ""),
            }
            self.decisions.append(decision)
            return decision

        @app.post("/v1/tasks/{task_id}/feedback", status_code=201)
        async def feedback(
            task_id: str, body: dict[str, Any], authorization: _AuthHeader = None
        ) -> dict[str, Any]:
            self._task(task_id, self._principal(authorization))
            if body.get("rating") not in (-1, 0, 1):
                raise _Refused(
                    422,
                    "rating must be -1, 0 or 1",
                    "invalid_request",
                    errors=[{"field": "rating", "message": "must be -1, 0 or 1"}],
                )
            self.feedback.setdefault(task_id, []).append(body)
            if self.memory is not None and body["rating"]:
                await self.memory.feedback(task_id, body["rating"])
            return {"task_id": task_id, **body}

        def _admin(authorization: str | None) -> None:
            if not self._principal(authorization).is_admin:
                raise _Refused(403, "the dead-letter queue needs an admin key", "forbidden")

        @app.get("/v1/dlq")
        async def dlq_list(
            authorization: _AuthHeader = None, tenant: str | None = None, limit: int = 100
        ) -> dict[str, Any]:
            _admin(authorization)
            entries = [e for e in self.dlq.values() if tenant in (None, e.get("tenant"))][:limit]
            return {"entries": entries, "count": len(entries)}

        @app.get("/v1/dlq/{task_id}")
        async def dlq_get(task_id: str, authorization: _AuthHeader = None) -> dict[str, Any]:
            _admin(authorization)
            if task_id not in self.dlq:
                raise _Refused(404, f"task {task_id!r} is not in the dead-letter queue", "task_not_found")
            return self.dlq[task_id]

        @app.post("/v1/dlq/{task_id}/retry", status_code=202)
        async def dlq_retry(task_id: str, authorization: _AuthHeader = None) -> dict[str, Any]:
            _admin(authorization)
            if self.dlq.pop(task_id, None) is None:
                raise _Refused(404, f"task {task_id!r} is not in the dead-letter queue", "task_not_found")
            return {"task_id": task_id, "status": "queued"}

        self._add_memory_routes(app)
        return app

    def _memory(self) -> Memory:
        if self.memory is None:
            raise _Refused(503, "the memory is off on this server (memory.enabled is false)", "memory_off")
        return self.memory

    def _add_memory_routes(self, app: FastAPI) -> None:
        """The memory routes over :attr:`memory`, answered as the gateway answers them."""

        @app.get("/v1/memory/search")
        async def memory_search(
            q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
            authorization: _AuthHeader = None,
            k: Annotated[int, Query(ge=1, le=MAX_SEARCH_K)] = FAKE_MEMORY_K,
            outcome: MemoryOutcome | None = None,
            tenant: str | None = None,
        ) -> dict[str, Any]:
            whose = _memory_tenant(self._principal(authorization), tenant)
            if not q.strip():
                raise _Refused(422, "invalid request: q: the query is blank", "invalid_request")
            hits = await self._memory().search(whose, q, k, outcome=outcome)
            return {"query": q, "tenant": whose, "hits": [h.model_dump(mode="json") for h in hits]}

        @app.delete("/v1/memory/{entry_id}")
        async def memory_delete_entry(entry_id: str, authorization: _AuthHeader = None) -> dict[str, Any]:
            principal = self._principal(authorization)
            only = None if principal.is_admin else principal.tenant
            if not await self._memory().delete_entry(entry_id, only):
                raise _Refused(404, f"memory entry {entry_id!r} not found", "memory_entry_not_found")
            return {"entry_id": entry_id, "deleted": 1}

        @app.delete("/v1/tasks/{task_id}/memory")
        async def memory_delete_task(task_id: str, authorization: _AuthHeader = None) -> dict[str, Any]:
            memory = self._memory()
            record = self._task(task_id, self._principal(authorization))
            return {"task_id": task_id, "deleted": await memory.delete_task(task_id, record.tenant)}

        @app.delete("/v1/memory")
        async def memory_delete_tenant(tenant: str, authorization: _AuthHeader = None) -> dict[str, Any]:
            whose = _memory_tenant(self._principal(authorization), tenant)
            return {"tenant": whose, "deleted": await self._memory().delete_tenant(whose)}

        @app.post("/v1/memory/rebuild")
        async def memory_rebuild(authorization: _AuthHeader = None) -> dict[str, Any]:
            _admin_only(self._principal(authorization), "rebuilding the memory")
            return await self._memory().rebuild()

        @app.get("/v1/memory/stats")
        async def memory_stats(authorization: _AuthHeader = None) -> dict[str, Any]:
            _admin_only(self._principal(authorization), "the memory's figures")
            return await self._memory().stats()

    async def _stream(self, task_id: str, after: int, cut_after: int | None) -> AsyncIterator[dict[str, str]]:
        """The task's events after id ``after`` as they come; ends once the final state was sent (or
        after ``cut_after`` events: a cut stream)."""
        sent = 0
        while True:
            news = [e for e in self.events[task_id] if e.id is not None and e.id > after]
            for event in news:
                yield {"event": event.kind, "id": str(event.id), "data": event.model_dump_json()}
                after = event.id or after
                sent += 1
                if cut_after is not None and sent >= cut_after:
                    return
            if not news and self.tasks[task_id].status.is_final:
                return
            await asyncio.sleep(FAKE_POLL_S)


def _memory_tenant(principal: Principal, tenant: str | None) -> str:
    """Whose memory a fake request reads or changes (another tenant's: 403 unless an admin)."""
    if tenant is not None and not principal.sees_tenant(tenant):
        raise _Refused(403, f"this key sees the memory of tenant {principal.tenant!r} only", "forbidden")
    return tenant or principal.tenant


def _admin_only(principal: Principal, what: str) -> None:
    if not principal.is_admin:
        raise _Refused(403, f"{what} needs an admin key", "forbidden")


def _fake_memory() -> Memory:
    """The in-process memory of a :class:`FakeTaskApi` (imported here: it loads faiss)."""
    from officeray.config import MemorySettings
    from officeray.memory.service import Memory
    from officeray.testing import HashingEncoder, InMemoryStore

    return Memory(InMemoryStore(), HashingEncoder(), MemorySettings(), None)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def _span_id(trace_id: str, name: str) -> str:
    return hashlib.sha256(f"{trace_id}/{name}".encode()).hexdigest()[:16]


def _fake_span(
    trace_id: str,
    task_id: str,
    name: str,
    component: str,
    instance: str,
    start_ns: int,
    end_ns: int,
    parent: str | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """One span of a synthesized trace in the ``/trace`` answer's shape."""
    end_ns = max(start_ns, end_ns)
    lane = f"runner:{instance}" if component == "runner" else "validator" if name == "validate" else component
    return {
        "trace_id": trace_id,
        "span_id": _span_id(trace_id, name),
        "parent_span_id": parent,
        "task_id": task_id,
        "name": name,
        "component": component,
        "instance": instance,
        "node": "127.0.0.1",
        "start_ns": start_ns,
        "end_ns": end_ns,
        "status": extra.get("status", "ok"),
        "status_message": extra.get("status_message", ""),
        "attributes": {"officeray.task_id": task_id, **extra.get("attributes", {})},
        "events": [],
        "lane": lane,
        "duration_ms": (end_ns - start_ns) / 1_000_000,
    }


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` on a free loopback port with uvicorn in a thread; yields its base URL
    (``http://127.0.0.1:PORT``) and stops the server when the block ends."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(FAKE_POLL_S)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_TIMEOUT_S)
        sock.close()
