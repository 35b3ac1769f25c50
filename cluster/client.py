"""An HTTP client of officeray's task API: what the ``officeray`` commands use to talk to a running
server (``officeray serve``, or a cluster's gateway).

:class:`TaskApiClient` sends ``Authorization: Bearer KEY`` with every call and answers the JSON the
server sends. Two errors, both with a one-line message that names the server:

* :class:`ApiUnreachable`: no answer (connection refused, DNS, timeout, the stream dropped);
* :class:`ApiError`: the server answered 4xx/5xx; it carries the task API's one error shape
  (``status``, ``detail``, ``code`` and, where fields are at fault, ``errors``).

Where the server is and which key to present: :func:`default_address` (``$OFFICERAY_ADDRESS``, else
:data:`DEFAULT_ADDRESS`) and ``$OFFICERAY_API_KEY`` (:data:`API_KEY_ENV`); the commands add the local
admin key file (:mod:`cluster.cli_client`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from officeray.contracts import TaskRecord

DEFAULT_ADDRESS = "http://127.0.0.1:8000"
"""The server the commands talk to when neither ``--address`` nor ``$OFFICERAY_ADDRESS`` is given."""
ADDRESS_ENV = "OFFICERAY_ADDRESS"
API_KEY_ENV = "OFFICERAY_API_KEY"

REQUEST_TIMEOUT_S = 30.0
"""How long one call waits for the server's answer (a long poll waits its ``wait_s`` on top)."""
CONNECT_TIMEOUT_S = 5.0
"""How long opening a connection may take before the server counts as unreachable."""
LONG_POLL_S = 25.0
"""``wait_s`` of each long poll (``GET /v1/tasks/{id}?wait_s=``); the gateway allows up to 30 s."""
STREAM_READ_TIMEOUT_S = 90.0
"""Longest silence on an event stream before it counts as dropped (the server sends heartbeats)."""
MAX_LIST_PAGE = 500
"""Largest ``limit`` one ``GET /v1/tasks`` page asks for."""
MAX_DETAIL_CHARS = 300
"""Longest part of an error answer that is not JSON shown as its detail (an HTML page of a proxy)."""
MEMORY_REBUILD_TIMEOUT_S = 600.0
"""How long ``POST /v1/memory/rebuild`` may take (it embeds every entry without a vector)."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
LAST_EVENT_ID_HEADER = "Last-Event-ID"


def default_address(environ: Mapping[str, str] | None = None) -> str:
    """``$OFFICERAY_ADDRESS`` when set, else :data:`DEFAULT_ADDRESS`."""
    env = os.environ if environ is None else environ
    return (env.get(ADDRESS_ENV) or "").strip() or DEFAULT_ADDRESS


class ApiUnreachable(Exception):
    """The server at ``address`` gave no answer (or the connection broke half-way)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot reach the officeray server at {address} ({reason})")
        self.address = address
        self.reason = reason


class ApiError(Exception):
    """The server refused the call: its status and the error body (``detail``, ``code``, ``errors``)."""

    def __init__(
        self,
        status: int,
        detail: str,
        code: str = "",
        errors: list[dict[str, Any]] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{detail} ({status} {code})" if code else f"{detail} ({status})")
        self.status = status
        self.detail = detail
        self.code = code
        self.errors = errors or []
        self.retry_after_s = retry_after_s


def api_error(status: int, body: str, headers: Mapping[str, str] | None = None) -> ApiError:
    """The :class:`ApiError` of an error answer: its ``detail``/``code``/``errors`` when the body has
    the task API's error shape, else the start of the body (or nothing) as the detail."""
    detail, code, errors = "", "", None
    is_json = True
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data, is_json = None, False
    if isinstance(data, dict):
        raw = data.get("detail")
        # FastAPI's own 422 shape is a list of {loc, msg}; ours is a sentence
        detail = raw if isinstance(raw, str) else (json.dumps(raw) if raw is not None else "")
        code = str(data.get("code") or "")
        listed = data.get("errors")
        errors = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else None
    elif body and not is_json:
        detail = " ".join(body.split())[:MAX_DETAIL_CHARS]
    retry_after = None
    if headers is not None and headers.get("retry-after"):
        try:
            retry_after = float(headers["retry-after"])
        except ValueError:
            retry_after = None
    return ApiError(
        status, detail or httpx.codes.get_reason_phrase(status) or "error", code, errors, retry_after
    )


class StreamEvent(BaseModel):
    """One server-sent event of ``GET /v1/tasks/{id}/events``: its ``id`` (what ``Last-Event-ID``
    resumes after), its ``event`` name and its ``data`` (parsed JSON, or the text)."""

    id: str | None = None
    event: str = "message"
    data: Any = None


def record_from_view(view: Mapping[str, Any]) -> TaskRecord:
    """The :class:`~officeray.contracts.TaskRecord` of a ``GET /v1/tasks/{id}`` answer (the fields a
    record has; ``progress`` and whatever else the server adds are left out)."""
    return TaskRecord.model_validate({k: v for k, v in view.items() if k in TaskRecord.model_fields})


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in parts)


class TaskApiClient:
    """Calls of the task API of the server at ``address`` with API key ``key`` (none: no header).

    Use it as a context manager (or call :meth:`close`). ``transport`` replaces the network (tests).
    """

    def __init__(
        self,
        address: str,
        key: str | None = None,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.address = address.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            self._http = httpx.Client(
                base_url=self.address,
                headers=headers,
                timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
                transport=transport,
            )
        except httpx.InvalidURL as exc:
            raise ApiUnreachable(address, f"not a valid address: {exc}") from None
        if self._http.base_url.scheme not in ("http", "https") or not self._http.base_url.host:
            self._http.close()
            raise ApiUnreachable(address, "not a valid address: use http://HOST:PORT or https://HOST")

    def __enter__(self) -> TaskApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing --

    def _call(self, method: str, path: str, *, timeout_s: float | None = None, **kwargs: Any) -> Any:
        if timeout_s is not None:
            kwargs["timeout"] = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiUnreachable(self.address, _reason(exc)) from None
        if response.is_error:
            raise api_error(response.status_code, response.text, response.headers)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code, "the server answered with a body that is not JSON", "bad_answer"
            ) from None

    # -- tasks --

    def submit(self, request: Mapping[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """``POST /v1/tasks``: ``{"task_id", "status"}`` (the task first created with the same
        idempotency key, when there is one)."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else {}
        answer: dict[str, Any] = self._call("POST", "/v1/tasks", json=dict(request), headers=headers)
        return answer

    def get(self, task_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """``GET /v1/tasks/{id}``: the task's record; with ``wait_s`` a long poll that answers once
        the task is final or after ``wait_s`` seconds."""
        params = {"wait_s": wait_s} if wait_s > 0 else None
        timeout = REQUEST_TIMEOUT_S + wait_s if wait_s > 0 else None
        answer: dict[str, Any] = self._call(
            "GET", _path("v1", "tasks", task_id), params=params, timeout_s=timeout
        )
        return answer

    def wait(self, task_id: str, poll_s: float = LONG_POLL_S) -> dict[str, Any]:
        """The task's record once it is final (long polls of ``poll_s`` each, no busy polling)."""
        while True:
            view = self.get(task_id, wait_s=poll_s)
            if record_from_view(view).status.is_final:
                return view

    def list_tasks(
        self,
        *,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        tenant: str | None = None,
        created_after: str | None = None,
    ) -> dict[str, Any]:
        """One page of ``GET /v1/tasks``: ``{"tasks": [...], "next_cursor": str | null}``."""
        params = {
            k: v
            for k, v in {
                "status": status,
                "limit": limit,
                "cursor": cursor,
                "tenant": tenant,
                "created_after": created_after,
            }.items()
            if v is not None
        }
        answer: dict[str, Any] = self._call("GET", "/v1/tasks", params=params)
        return answer

    def iter_tasks(self, *, limit: int | None = None, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every task the filters select, page after page (following ``next_cursor``); at most
        ``limit`` of them when given."""
        cursor: str | None = None
        seen = 0
        while True:
            page_size = MAX_LIST_PAGE if limit is None else min(MAX_LIST_PAGE, limit - seen)
            page = self.list_tasks(limit=page_size, cursor=cursor, **filters)
            for task in page.get("tasks") or []:
                yield task
                seen += 1
                if limit is not None and seen >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor or not page.get("tasks"):
                return

    def trace(self, task_id: str) -> dict[str, Any]:
        """``GET /v1/tasks/{id}/trace``: ``{"task_id", "trace_id", "spans": [...], "events": [...]}``,
        the spans (each with its ``lane`` and ``duration_ms``) ordered by start."""
        answer: dict[str, Any] = self._call("GET", _path("v1", "tasks", task_id, "trace"))
        return answer

    def artifacts(self, task_id: str) -> dict[str, Any]:
        """``GET /v1/tasks/{id}/artifacts``: ``{"task_id", "files": [{path, size, sha256, step_id,
        updated_at}], "total_bytes"}``."""
        answer: dict[str, Any] = self._call("GET", _path("v1", "tasks", task_id, "artifacts"))
        return answer

    def artifact(self, task_id: str, path: str) -> bytes:
        """``GET /v1/tasks/{id}/artifacts/{path}``: the file's bytes."""
        url = _path("v1", "tasks", task_id, "artifacts") + "/" + quote(path, safe="/")
        try:
            response = self._http.request("GET", url)
        except httpx.HTTPError as exc:
            raise ApiUnreachable(self.address, _reason(exc)) from None
        if response.is_error:
            raise api_error(response.status_code, response.text, response.headers)
        return response.content

    def cancel(self, task_id: str) -> dict[str, Any]:
        """``POST /v1/tasks/{id}/cancel`` (202: the task is being stopped)."""
        answer: dict[str, Any] = self._call("POST", _path("v1", "tasks", task_id, "cancel"))
        return answer

    def decide_approval(self, task_id: str, step_id: str, approve: bool, reason: str = "") -> dict[str, Any]:
        """``POST /v1/tasks/{id}/approvals/{step}``: approve or reject a step that waits for it (the
        server records the key's id as ``decided_by``)."""
        body = {"decision": "approve" if approve else "reject", "reason": reason}
        answer: dict[str, Any] = self._call(
            "POST", _path("v1", "tasks", task_id, "approvals", step_id), json=body
        )
        return answer

    def decide_review(self, task_id: str, decision: str, feedback: str = "") -> dict[str, Any]:
        """``POST /v1/tasks/{id}/review``: accept, reject or revise (with feedback) the results a task
        escalated to a person; the stored decision (the server records the key's id as ``decided_by``)."""
        body = {"decision": decision, "feedback": feedback}
        answer: dict[str, Any] = self._call("POST", _path("v1", "tasks", task_id, "review"), json=body)
        return answer

    def feedback(
        self, task_id: str, rating: int, comment: str | None = None, labels: list[str] | None = None
    ) -> dict[str, Any]:
        """``POST /v1/tasks/{id}/feedback``: a user's rating (-1, 0, 1) of a task."""
        body: dict[str, Any] = {"rating": rating, "labels": labels or []}
        if comment is not None:
            body["comment"] = comment
        answer: dict[str, Any] = self._call("POST", _path("v1", "tasks", task_id, "feedback"), json=body)
        return answer

    def events(self, task_id: str, last_event_id: str | None = None) -> Iterator[StreamEvent]:
        """The task's events as the server streams them (``Accept: text/event-stream``), after
        ``last_event_id`` when given; ends when the server ends the stream (after the final state).
        A connection that breaks raises :class:`ApiUnreachable`: resume with the last event's id."""
        from httpx_sse import SSEError, connect_sse

        headers = {LAST_EVENT_ID_HEADER: last_event_id} if last_event_id else {}
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, read=STREAM_READ_TIMEOUT_S)
        try:
            with connect_sse(
                self._http, "GET", _path("v1", "tasks", task_id, "events"), headers=headers, timeout=timeout
            ) as source:
                response = source.response
                if response.is_error:
                    response.read()
                    raise api_error(response.status_code, response.text, response.headers)
                try:
                    for sse in source.iter_sse():
                        yield StreamEvent(
                            id=sse.id or None, event=sse.event or "message", data=_data(sse.data)
                        )
                except SSEError:
                    raise ApiError(
                        response.status_code,
                        "the server does not stream this task's events",
                        "no_event_stream",
                    ) from None
        except httpx.HTTPError as exc:
            raise ApiUnreachable(self.address, _reason(exc)) from None

    # -- dead-letter queue --

    def dlq_list(self, tenant: str | None = None, limit: int = 100) -> dict[str, Any]:
        """``GET /v1/dlq``: ``{"entries": [...]}``, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if tenant:
            params["tenant"] = tenant
        answer: dict[str, Any] = self._call("GET", "/v1/dlq", params=params)
        return answer

    def dlq_get(self, task_id: str) -> dict[str, Any]:
        """``GET /v1/dlq/{id}``: one entry with the task record and its failed steps."""
        answer: dict[str, Any] = self._call("GET", _path("v1", "dlq", task_id))
        return answer

    def dlq_retry(self, task_id: str) -> dict[str, Any]:
        """``POST /v1/dlq/{id}/retry``: ``{"task_id", "status"}``; the task runs again."""
        answer: dict[str, Any] = self._call("POST", _path("v1", "dlq", task_id, "retry"))
        return answer

    # -- memory --

    def memory_search(
        self, query: str, k: int | None = None, outcome: str | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """``GET /v1/memory/search``: ``{"query", "tenant", "hits": [...]}``, best first."""
        params = {
            key: value
            for key, value in {"q": query, "k": k, "outcome": outcome, "tenant": tenant}.items()
            if value is not None
        }
        answer: dict[str, Any] = self._call("GET", "/v1/memory/search", params=params)
        return answer

    def memory_delete_entry(self, entry_id: str) -> dict[str, Any]:
        """``DELETE /v1/memory/{entry_id}``: ``{"entry_id", "deleted": 1}``."""
        answer: dict[str, Any] = self._call("DELETE", _path("v1", "memory", entry_id))
        return answer

    def memory_delete_task(self, task_id: str) -> dict[str, Any]:
        """``DELETE /v1/tasks/{id}/memory``: ``{"task_id", "deleted": n}``."""
        answer: dict[str, Any] = self._call("DELETE", _path("v1", "tasks", task_id, "memory"))
        return answer

    def memory_delete_tenant(self, tenant: str) -> dict[str, Any]:
        """``DELETE /v1/memory?tenant=``: ``{"tenant", "deleted": n}``."""
        answer: dict[str, Any] = self._call("DELETE", "/v1/memory", params={"tenant": tenant})
        return answer

    def memory_rebuild(self) -> dict[str, Any]:
        """``POST /v1/memory/rebuild`` (admin): the rebuild report."""
        answer: dict[str, Any] = self._call("POST", "/v1/memory/rebuild", timeout_s=MEMORY_REBUILD_TIMEOUT_S)
        return answer

    def memory_stats(self) -> dict[str, Any]:
        """``GET /v1/memory/stats`` (admin): whether the memory is on, its encoder, each index."""
        answer: dict[str, Any] = self._call("GET", "/v1/memory/stats")
        return answer


def _data(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
