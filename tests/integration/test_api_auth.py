"""Every route of the HTTP API x {no key, bad key, another tenant's key, user, approver, admin}, on
the real stack (Serve app on loopback, orchestrators, store), as one table.

The tenant's data: a completed task (submitted by its user key), two dead-lettered tasks (one read,
one retried) and steps waiting for approval, written to the store directly. The other tenant's key is
an approver's: its role does not help it reach another tenant's tasks, which answer 404 exactly as
unknown ones do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from cluster.runtime import LocalStack
from officeray.auth import Role, parse_key
from officeray.contracts import StepResult, StepStatus, TaskRecord, TaskRequest, TaskStatus, utcnow
from officeray.store import SqlStore
from serving.security import UNAUTHORIZED_DETAIL
from tests.integration.conftest import base_url, bearer, create_key
from tests.integration.stored import with_store

pytestmark = pytest.mark.integration

POLL_TIMEOUT_S = 120
ACTORS = ("no_key", "bad_key", "other_tenant", "user", "approver", "admin")
BAD_KEY = "ofr_" + "0" * 12 + "_" + "x" * 43
"""Well formed, but no such key."""


@dataclass(frozen=True)
class World:
    base: str
    tenant: str
    other: str
    keys: dict[str, str | None]
    ids: dict[str, str]

    def headers(self, actor: str) -> dict[str, str]:
        key = self.keys[actor]
        return {} if key is None else bearer(key)


def _waiting(task_id: str, tenant: str) -> TaskRecord:
    step = StepResult(
        step_id="s1",
        action="python_exec",
        idempotency_key=f"{task_id}:1:s1",
        status=StepStatus.WAITING_APPROVAL,
    )
    return TaskRecord(
        task_id=task_id,
        description="approval probe",
        tenant=tenant,
        status=TaskStatus.WAITING_APPROVAL,
        steps=[step],
    )


@pytest.fixture(scope="module")
def world(stack: LocalStack) -> World:
    suffix = uuid.uuid4().hex[:10]
    tenant, other = f"a-{suffix}", f"b-{suffix}"
    url = stack.settings.store.url
    keys: dict[str, str | None] = {
        "no_key": None,
        "bad_key": BAD_KEY,
        "other_tenant": create_key(url, other, Role.APPROVER),
        "user": create_key(url, tenant, Role.USER),
        "approver": create_key(url, tenant, Role.APPROVER),
        "admin": create_key(url, "ops", Role.ADMIN),
    }
    base = base_url(stack)
    assert keys["user"] is not None
    with httpx.Client(base_url=base, headers=bearer(keys["user"]), timeout=60) as client:
        created = client.post("/v1/tasks", json={"description": "What is 2 + 2?"})
        assert created.status_code == 202, created.text
        task_id = created.json()["task_id"]
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while (body := client.get(f"/v1/tasks/{task_id}", params={"wait_s": 10}).json())["status"] not in (
            "completed",
            "failed",
        ):
            assert time.monotonic() < deadline, body
        assert body["status"] == "completed" and body["tenant"] == tenant

    ids = {
        "task": task_id,
        "tenant": tenant,
        "dlq_read": f"dlq-read-{suffix}",
        "dlq_retry": f"dlq-retry-{suffix}",
        "decided": f"decided-{suffix}",
        "waiting_approver": f"waiting-approver-{suffix}",
        "waiting_admin": f"waiting-admin-{suffix}",
    }

    async def setup(store: SqlStore) -> None:
        for name in ("dlq_read", "dlq_retry"):
            request = TaskRequest(description="What is 2 + 3?", task_id=ids[name], tenant=tenant)
            dead = TaskRecord(
                task_id=ids[name],
                description=request.description,
                tenant=tenant,
                status=TaskStatus.FAILED,
                error="failed for the test",
                finished_at=utcnow(),
            )
            assert await store.create_task(dead, request)
            await store.dead_letter(dead, "failed for the test")
        for name in ("decided", "waiting_approver", "waiting_admin"):
            await store.save_task(_waiting(ids[name], tenant))
        assert await store.decide_approval(ids["decided"], f"{ids['decided']}:1:s1", "approved", "setup")

    with_store(url, setup)
    return World(base=base, tenant=tenant, other=other, keys=keys, ids=ids)


@pytest.fixture
def http(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.base, timeout=60) as client:
        yield client


# -- the table --------------------------------------------------------------------------------------

Expect = int | tuple[int, str]
"""A status, or a status and the answer's ``code``."""

NOT_FOUND: Expect = (404, "task_not_found")
FORBIDDEN: Expect = (403, "forbidden")


@dataclass(frozen=True)
class Route:
    """One route: how to call it, and what each actor gets (no key and a bad key: 401, unless public)."""

    method: str
    template: str
    """The route as the OpenAPI document names it."""
    path: str
    """The path called: ``{name}`` is filled from the world's ids (``{waiting}``: the actor's own)."""
    body: Any = None
    other: Expect = NOT_FOUND
    user: Expect = 200
    approver: Expect | None = None
    """Default: as ``user``."""
    admin: Expect | None = None
    """Default: as ``approver``."""
    public: bool = False
    openai: bool = False
    """Errors in OpenAI's shape (the chat routes)."""
    label: str = field(default="")

    def expected(self, actor: str) -> Expect:
        if actor in ("no_key", "bad_key"):
            return 200 if self.public else (401, "invalid_api_key" if self.openai else "unauthorized")
        approver = self.user if self.approver is None else self.approver
        by_actor = {
            "other_tenant": self.other,
            "user": self.user,
            "approver": approver,
            "admin": approver if self.admin is None else self.admin,
        }
        return by_actor[actor]

    def url(self, world: World, actor: str) -> str:
        waiting = world.ids["waiting_admin" if actor == "admin" else "waiting_approver"]
        return self.path.format(waiting=waiting, **world.ids)


TASK_CHAT = {"model": "planner", "messages": [{"role": "user", "content": "Compute 2 + 2"}]}

ROUTES = [
    Route("POST", "/v1/tasks", "/v1/tasks", {"description": "What is 1 + 1?"}, other=202, user=202),
    Route(
        "POST",
        "/v1/tasks",
        "/v1/tasks",
        {"description": "What is 1 + 1?", "tenant": "{tenant}"},
        other=FORBIDDEN,  # only an admin key names another tenant
        user=202,
        label="for-the-tenant",
    ),
    Route("GET", "/v1/tasks", "/v1/tasks?tenant={tenant}", other=FORBIDDEN),
    Route("POST", "/tasks", "/tasks", {"description": "What is 1 + 1?"}, other=202, user=202),
    Route("GET", "/tasks/{task_id}", "/tasks/{task}"),
    Route("GET", "/tasks/{task_id}/status", "/tasks/{task}/status"),
    Route("GET", "/tasks/{task_id}/logs", "/tasks/{task}/logs"),
    Route("GET", "/v1/tasks/{task_id}", "/v1/tasks/{task}"),
    Route("GET", "/v1/tasks/{task_id}/events", "/v1/tasks/{task}/events"),
    Route("GET", "/v1/tasks/{task_id}/webhooks", "/v1/tasks/{task}/webhooks"),
    Route("GET", "/v1/tasks/{task_id}/trace", "/v1/tasks/{task}/trace"),
    Route("POST", "/v1/tasks/{task_id}/cancel", "/v1/tasks/{task}/cancel", user=(409, "task_final")),
    Route("POST", "/v1/tasks/{task_id}/feedback", "/v1/tasks/{task}/feedback", {"rating": 1}, user=201),
    Route("GET", "/v1/tasks/{task_id}/feedback", "/v1/tasks/{task}/feedback"),
    Route("GET", "/v1/tasks/{task_id}/approvals/{step_id}", "/v1/tasks/{decided}/approvals/s1"),
    Route(
        "POST",
        "/v1/tasks/{task_id}/approvals/{step_id}",
        "/v1/tasks/{waiting}/approvals/s1",
        {"decision": "approve", "reason": "fine"},
        user=FORBIDDEN,
        approver=200,
    ),
    # a person's review of an escalated result (issue 17): the task here is completed, not waiting
    Route(
        "POST",
        "/v1/tasks/{task_id}/review",
        "/v1/tasks/{task}/review",
        {"decision": "accept"},
        user=FORBIDDEN,
        approver=(409, "not_waiting_review"),
    ),
    Route("GET", "/v1/reviews", "/v1/reviews?tenant={tenant}", other=FORBIDDEN),
    # the task workspace's files (issue 17)
    Route("GET", "/v1/tasks/{task_id}/artifacts", "/v1/tasks/{task}/artifacts"),
    Route(
        "GET",
        "/v1/tasks/{task_id}/artifacts/{path}",
        "/v1/tasks/{task}/artifacts/no-such-file.txt",
        user=(404, "artifact_not_found"),
    ),
    Route("GET", "/v1/tenants/{tenant}/usage", "/v1/tenants/{tenant}/usage", other=FORBIDDEN),
    Route("GET", "/v1/dlq", "/v1/dlq?tenant={tenant}", other=FORBIDDEN),
    Route("GET", "/v1/dlq/{task_id}", "/v1/dlq/{dlq_read}", other=(404, "not_in_dlq")),
    Route(
        "POST",
        "/v1/dlq/{task_id}/retry",
        "/v1/dlq/{dlq_retry}/retry",
        other=(404, "not_in_dlq"),
        user=FORBIDDEN,
        admin=202,
    ),
    # the console's routes (the page itself, /console, is public and not in the OpenAPI document)
    Route("GET", "/v1/events", "/v1/events?tenant={tenant}", other=FORBIDDEN),
    Route("GET", "/v1/approvals", "/v1/approvals?tenant={tenant}", other=FORBIDDEN),
    Route("GET", "/v1/system", "/v1/system", other=200),
    # the memory's routes (docs/memory.md)
    Route(
        "GET",
        "/v1/memory/search",
        "/v1/memory/search?q=What%20is%202%20%2B%202&tenant={tenant}",
        other=FORBIDDEN,
    ),
    Route(
        "DELETE",
        "/v1/memory/{entry_id}",
        "/v1/memory/mem-unknown",
        other=(404, "memory_entry_not_found"),
        user=(404, "memory_entry_not_found"),
    ),
    Route("DELETE", "/v1/tasks/{task_id}/memory", "/v1/tasks/{task}/memory"),
    Route("DELETE", "/v1/memory", "/v1/memory?tenant={tenant}", other=FORBIDDEN),
    Route("POST", "/v1/memory/rebuild", "/v1/memory/rebuild", other=FORBIDDEN, user=FORBIDDEN, admin=200),
    Route("GET", "/v1/memory/stats", "/v1/memory/stats", other=FORBIDDEN, user=FORBIDDEN, admin=200),
    Route("GET", "/healthz", "/healthz", other=200, public=True),
    Route("GET", "/v1/models", "/v1/models", other=200, openai=True),
    Route("POST", "/v1/chat/completions", "/v1/chat/completions", TASK_CHAT, other=200, openai=True),
]


def _label(route: Route) -> str:
    return f"{route.method} {route.template}" + (f" ({route.label})" if route.label else "")


def _filled(body: Any, world: World) -> Any:
    if isinstance(body, dict):
        return {k: _filled(v, world) for k, v in body.items()}
    return body.format(**world.ids) if isinstance(body, str) else body


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("route", ROUTES, ids=_label)
def test_route_by_actor(world: World, http: httpx.Client, route: Route, actor: str) -> None:
    body = None if route.body is None else _filled(route.body, world)
    answer = http.request(route.method, route.url(world, actor), json=body, headers=world.headers(actor))
    expected = route.expected(actor)
    status, code = expected if isinstance(expected, tuple) else (expected, None)
    assert answer.status_code == status, answer.text
    if code is None:
        return
    payload = answer.json()
    if route.openai:
        assert payload["error"]["code"] == code
    else:
        assert payload["code"] == code and isinstance(payload["detail"], str)
    if status == 401:
        assert answer.headers["www-authenticate"] == "Bearer"
        if not route.openai:
            assert payload == {"detail": UNAUTHORIZED_DETAIL, "code": "unauthorized"}  # the same for any key
    if status == 404:
        assert world.tenant not in answer.text  # nothing says whose task it is


def test_the_table_covers_every_route(world: World, http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    served = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert served == {(route.method, route.template) for route in ROUTES}


# -- what the table does not show -------------------------------------------------------------------


def test_another_tenant_task_answers_as_an_unknown_one(world: World, http: httpx.Client) -> None:
    other = world.headers("other_tenant")
    theirs = http.get(f"/v1/tasks/{world.ids['task']}", headers=other)
    unknown = http.get("/v1/tasks/no-such-task", headers=other)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == {"detail": f"task {world.ids['task']!r} not found", "code": "task_not_found"}
    assert unknown.json() == {"detail": "task 'no-such-task' not found", "code": "task_not_found"}


def test_a_task_id_of_another_tenant_cannot_be_taken_nor_seen(world: World, http: httpx.Client) -> None:
    task_id = world.ids["task"]
    taken = http.post(
        "/v1/tasks",
        json={"description": "What is 9 + 9?", "task_id": task_id},
        headers=world.headers("other_tenant"),
    )
    assert taken.status_code == 409
    assert taken.json()["code"] == "task_id_unavailable"
    assert world.tenant not in taken.text and "completed" not in taken.text
    # the owner's repeat still finds its own task
    again = http.post(
        "/v1/tasks", json={"description": "What is 2 + 2?", "task_id": task_id}, headers=world.headers("user")
    )
    assert again.status_code == 200 and again.json()["task_id"] == task_id


def test_lists_show_the_key_tenant_only(world: World, http: httpx.Client) -> None:
    mine = http.get("/v1/tasks", headers=world.headers("user")).json()["tasks"]
    assert world.ids["task"] in [t["task_id"] for t in mine]
    assert {t["tenant"] for t in mine} == {world.tenant}
    theirs = http.get("/v1/tasks", headers=world.headers("other_tenant")).json()["tasks"]
    assert world.ids["task"] not in [t["task_id"] for t in theirs]
    assert all(t["tenant"] == world.other for t in theirs)
    dlq = http.get("/v1/dlq", headers=world.headers("other_tenant")).json()["entries"]
    assert all(e["tenant"] == world.other for e in dlq)
    admin_dlq = http.get("/v1/dlq", params={"tenant": world.tenant}, headers=world.headers("admin")).json()
    assert world.ids["dlq_read"] in [e["task_id"] for e in admin_dlq["entries"]]


def test_submissions_record_the_key_and_its_tenant(
    world: World, http: httpx.Client, stack: LocalStack
) -> None:
    created = http.post(
        "/v1/tasks", json={"description": "What is 3 + 3?"}, headers=world.headers("approver")
    )
    assert created.status_code == 202
    task_id, key_id = created.json()["task_id"], parse_key(world.keys["approver"])
    with_store(stack.settings.store.url, lambda store: _assert_request(store, task_id, world.tenant, key_id))


async def _assert_request(store: SqlStore, task_id: str, tenant: str, key_id: str | None) -> None:
    request = await store.get_request(task_id)
    assert request is not None and (request.tenant, request.submitted_by) == (tenant, key_id)


def test_the_task_list_pages_with_an_opaque_cursor(world: World, http: httpx.Client) -> None:
    user = world.headers("user")
    for i in range(3):
        assert (
            http.post("/v1/tasks", json={"description": f"What is {i} + 5?"}, headers=user).status_code == 202
        )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = http.get("/v1/tasks", params=params, headers=user).json()
        seen += [t["task_id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 4 and world.ids["task"] in seen
    forged = http.get("/v1/tasks", params={"cursor": "not-a-cursor"}, headers=user)
    assert forged.status_code == 422 and forged.json()["errors"][0]["field"] == "cursor"
    done = http.get("/v1/tasks", params={"status": "completed"}, headers=user).json()["tasks"]
    assert all(t["status"] == "completed" for t in done)


def test_feedback_is_stored_with_the_key(world: World, http: httpx.Client) -> None:
    path = f"/v1/tasks/{world.ids['task']}/feedback"
    body = {"rating": -1, "comment": "wrong answer", "labels": ["math"]}
    stored = http.post(path, json=body, headers=world.headers("user"))
    assert stored.status_code == 201
    answer = stored.json()
    assert {k: answer[k] for k in body} == body
    assert answer["submitted_by"] == parse_key(world.keys["user"]) and answer["tenant"] == world.tenant
    assert answer in http.get(path, headers=world.headers("user")).json()["feedback"]
    for bad in ({"rating": 2}, {"rating": 1, "labels": ["x" * 65]}, {"rating": 1, "comment": "c" * 4001}):
        refused = http.post(path, json=bad, headers=world.headers("user"))
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_request"


def test_an_approval_is_recorded_as_the_key(world: World, http: httpx.Client) -> None:
    path = f"/v1/tasks/{world.ids['waiting_approver']}/approvals/s1"
    decided = http.get(path, headers=world.headers("approver"))
    if decided.status_code == 404:  # the table's row did not run first
        assert (
            http.post(path, json={"decision": "approve"}, headers=world.headers("approver")).status_code
            == 200
        )
        decided = http.get(path, headers=world.headers("approver"))
    assert decided.json()["decided_by"] == parse_key(world.keys["approver"])


def test_the_admin_retry_ceiling(world: World, http: httpx.Client, stack: LocalStack) -> None:
    """A task retried ``max_dlq_retries`` times already is not retried again (422 naming it)."""
    task_id = f"dlq-ceiling-{uuid.uuid4().hex[:8]}"
    request = TaskRequest(description="What is 2 + 3?", task_id=task_id, tenant=world.tenant)
    dead = TaskRecord(
        task_id=task_id, description=request.description, tenant=world.tenant, status=TaskStatus.FAILED
    )
    retries = stack.settings.tenant_limits(world.tenant).max_dlq_retries

    async def dead_letter_retried(store: SqlStore) -> None:
        await store.create_task(dead, request)
        for _ in range(retries):
            await store.append_event(task_id, "retried_from_dlq", {"status": "queued"})
        await store.dead_letter(dead, "failed again")

    with_store(stack.settings.store.url, dead_letter_retried)
    refused = http.post(f"/v1/dlq/{task_id}/retry", headers=world.headers("admin"))
    assert refused.status_code == 422, refused.text
    assert (
        refused.json()["code"] == "over_ceiling" and refused.json()["errors"][0]["field"] == "max_dlq_retries"
    )
