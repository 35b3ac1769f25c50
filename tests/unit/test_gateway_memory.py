"""The gateway's memory routes (``/v1/memory...``, ``DELETE /v1/tasks/{id}/memory``) and the feedback
route's rating, over HTTP in process: a :class:`serving.gateway.Gateway` replica (SQLite store, real
API keys) with an in-process :class:`~officeray.memory.service.Memory` as its memory port (the hashing
encoder), no Ray.

Serve hands each route its replica through one FastAPI dependency (``self``); the test overrides that
dependency (FastAPI's ``dependency_overrides``) with a replica built here: the routes, their
validation, the key check and the error handlers are the gateway's own."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from officeray.auth import Role, mint_key
from officeray.config import Settings
from officeray.contracts import MemoryHit, MemoryOutcome, TaskRecord, TaskRequest, TaskStatus, utcnow
from officeray.memory.entries import MAX_QUERY_CHARS, MAX_SEARCH_K, MemoryService
from officeray.memory.service import Memory
from officeray.store import SqlStore
from officeray.testing import HashingEncoder
from serving import gateway
from serving.security import KeyVerifier, install_verifier

CALC = "Compute 6 * 7 with the math calculator"
TRACE = "Trace the call sequence from main to process_data in examples/sample_project"


class BrokenMemory:
    """A memory that fails every call (an actor that died): what the routes must not turn into a 500."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _fail(self, what: str) -> None:
        self.calls.append(what)
        raise RuntimeError(f"the memory actor died during {what}")

    async def search(
        self, tenant: str, text: str, k: int, *, outcome: MemoryOutcome | None = None
    ) -> list[MemoryHit]:
        self._fail("search")
        return []

    async def feedback(self, task_id: str, rating: int) -> int:
        self._fail("feedback")
        return 0


@dataclass
class Api:
    client: TestClient
    store: SqlStore
    memory: Any
    keys: dict[str, str]
    """``admin`` (tenant ``default``), ``acme``, ``globex`` (users): the bearer headers' keys."""

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def run(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run an async call on the app's event loop (where the stores' connections live)."""
        return self.client.portal.call(call, *args)  # type: ignore[union-attr]

    def finished(self, tenant: str, description: str, status: TaskStatus = TaskStatus.COMPLETED) -> str:
        """A task of ``tenant`` that ended ``status``, stored and remembered; its id."""
        record = TaskRecord(
            task_id=f"task-{tenant}-{len(description)}-{status.value}-{utcnow().timestamp()}",
            tenant=tenant,
            description=description,
            status=status,
            iterations=1,
            finished_at=utcnow(),
        )
        self.run(self.store.create_task, record, TaskRequest(description=description, tenant=tenant))
        if isinstance(self.memory, Memory):
            self.run(self.memory.remember, record)
        return record.task_id

    def search(self, who: str, q: str, **params: Any) -> list[str]:
        answer = self.client.get("/v1/memory/search", params={"q": q, **params}, headers=self.as_(who))
        assert answer.status_code == 200, answer.text
        return [hit["task_id"] for hit in answer.json()["hits"]]


_DEPLOYMENT: Any = gateway.Gateway  # a Serve Deployment, which mypy cannot see
GATEWAY_CLASS: Any = _DEPLOYMENT.func_or_class.__bases__[0]
"""The class under ``@serve.deployment`` and ``@serve.ingress`` (which subclasses it with the ASGI
wrapper a Serve replica starts)."""


def gateway_replica(settings: Settings, store: SqlStore, memory: Any) -> Any:
    """A gateway replica with what the memory and feedback routes read (its settings, store, memory
    port, and the key check over the store), built without ``__init__``, which would also start the
    orchestrator shards on Ray."""
    replica = object.__new__(GATEWAY_CLASS)
    replica.settings = settings
    replica.store = store
    replica.memory = memory
    install_verifier(KeyVerifier(store, settings.auth.cache_ttl_s))
    return replica


def _routes(router: Any) -> Iterator[Any]:
    """Every route of ``router``, into the routers it includes."""
    for route in router.routes:
        included = getattr(route, "original_router", None)
        yield from _routes(included) if included is not None else [route]


def _replica_dependencies() -> set[Callable[..., Any]]:
    """The dependency (one per ``serve.ingress`` pass over the app) through which Serve gives each
    route of the ingress its replica, as the routes' ``self`` parameter."""
    found = set()
    for route in _routes(gateway.app.router):
        endpoint = getattr(route, "endpoint", None)
        parameter = inspect.signature(endpoint).parameters.get("self") if endpoint is not None else None
        if parameter is not None and hasattr(parameter.default, "dependency"):
            found.add(parameter.default.dependency)
    assert found, "no route of the gateway takes its replica as a dependency"
    return found


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    overridden: list[Callable[..., Any]] = []
    clients: list[TestClient] = []

    def _make(memory: str | None = "memory") -> Api:
        url = f"sqlite:///{tmp_path}/officeray.db"
        settings = Settings.model_validate(
            {"store": {"url": url}, "telemetry": {"trace_store": {"enabled": False}}}
        )
        store = SqlStore(url)
        port: MemoryService | BrokenMemory | None = None
        if memory == "memory":
            port = Memory(store, HashingEncoder(), settings.memory, tmp_path / "memory-index")
        elif memory == "broken":
            port = BrokenMemory()
        replica = gateway_replica(settings, store, port)
        for dependency in _replica_dependencies():
            gateway.app.dependency_overrides[dependency] = lambda: replica
            overridden.append(dependency)
        client = TestClient(gateway.app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        api = Api(client, store, port, {})
        for who, tenant, role in (
            ("admin", "default", Role.ADMIN),
            ("acme", "acme", Role.USER),
            ("globex", "globex", Role.USER),
        ):
            key, record = mint_key(tenant, role)
            api.run(store.create_api_key, record)
            api.keys[who] = key
        return api

    yield _make
    for client in clients:
        client.__exit__(None, None, None)
    for dependency in overridden:
        gateway.app.dependency_overrides.pop(dependency, None)
    install_verifier(None)


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


def _refusal(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert body["code"] == code and isinstance(body["detail"], str) and body["detail"]
    return body


# -- search -------------------------------------------------------------------------------------------


def test_search_answers_the_callers_tenant_only(api: Api) -> None:
    acme_calc = api.finished("acme", CALC)
    acme_trace = api.finished("acme", TRACE)
    globex_calc = api.finished("globex", CALC)

    answer = api.client.get("/v1/memory/search", params={"q": "compute 6 * 7"}, headers=api.as_("acme"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["query"] == "compute 6 * 7" and body["tenant"] == "acme"
    assert [hit["task_id"] for hit in body["hits"]] == [acme_calc, acme_trace]  # best first
    best = body["hits"][0]
    assert set(best) >= {"entry_id", "task_id", "outcome", "score", "description", "lesson"}
    assert best["outcome"] == "completed" and "vector" not in best

    assert api.search("globex", CALC) == [globex_calc]  # tenant B never sees A's
    assert api.search("admin", CALC) == []  # an admin without ?tenant=: its own tenant
    assert api.search("admin", CALC, tenant="globex") == [globex_calc]
    _refusal(
        api.client.get("/v1/memory/search", params={"q": CALC, "tenant": "globex"}, headers=api.as_("acme")),
        403,
        "forbidden",
    )


def test_search_takes_k_and_an_outcome(api: Api) -> None:
    completed = api.finished("acme", CALC)
    failed = api.finished("acme", CALC + " again", TaskStatus.FAILED)
    assert set(api.search("acme", CALC)) == {completed, failed}
    assert len(api.search("acme", CALC, k=1)) == 1
    assert api.search("acme", CALC, outcome="failed") == [failed]
    assert api.search("acme", CALC, outcome="completed") == [completed]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"q": CALC, "k": 0}, "k"),
        ({"q": CALC, "k": MAX_SEARCH_K + 1}, "k"),
        ({"q": CALC, "k": "many"}, "k"),
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "x" * (MAX_QUERY_CHARS + 1)}, "q"),
        ({"q": CALC, "outcome": "won"}, "outcome"),
        ({"q": CALC, "tenant": "../etc"}, "tenant"),
    ],
)
def test_bad_search_input_is_a_422_naming_the_field(api: Api, params: dict[str, Any], field: str) -> None:
    body = _refusal(
        api.client.get("/v1/memory/search", params=params, headers=api.as_("acme")), 422, "invalid_request"
    )
    assert [e["field"].removeprefix("query.") for e in body["errors"]] == [field]


def test_every_memory_route_needs_a_key(api: Api) -> None:
    for method, path in (
        ("GET", "/v1/memory/search?q=x"),
        ("DELETE", "/v1/memory/mem-1"),
        ("DELETE", "/v1/memory?tenant=acme"),
        ("DELETE", "/v1/tasks/task-1/memory"),
        ("POST", "/v1/memory/rebuild"),
        ("GET", "/v1/memory/stats"),
    ):
        _refusal(api.client.request(method, path), 401, "unauthorized")


# -- feedback -------------------------------------------------------------------------------------------


def test_negative_feedback_removes_the_entry_from_search(api: Api) -> None:
    calc = api.finished("acme", CALC)
    assert api.search("acme", CALC) == [calc]
    answer = api.client.post(f"/v1/tasks/{calc}/feedback", json={"rating": -1}, headers=api.as_("acme"))
    assert answer.status_code == 201, answer.text
    assert api.search("acme", CALC) == []


def test_positive_feedback_promotes_the_entry(api: Api) -> None:
    calc = api.finished("acme", CALC)
    answer = api.client.post(f"/v1/tasks/{calc}/feedback", json={"rating": 1}, headers=api.as_("acme"))
    assert answer.status_code == 201, answer.text
    hits = api.client.get("/v1/memory/search", params={"q": CALC}, headers=api.as_("acme")).json()["hits"]
    assert hits[0]["rating"] == 1 and hits[0]["rank_score"] > hits[0]["score"]


# -- delete -------------------------------------------------------------------------------------------


def _entry_id(api: Api, who: str, q: str) -> str:
    hits: Sequence[dict[str, Any]] = api.client.get(
        "/v1/memory/search", params={"q": q}, headers=api.as_(who)
    ).json()["hits"]
    return str(hits[0]["entry_id"])


def test_delete_an_entry_of_another_tenant_is_a_404(api: Api) -> None:
    calc = api.finished("acme", CALC)
    entry_id = _entry_id(api, "acme", CALC)

    _refusal(
        api.client.delete(f"/v1/memory/{entry_id}", headers=api.as_("globex")), 404, "memory_entry_not_found"
    )
    _refusal(
        api.client.delete("/v1/memory/mem-unknown", headers=api.as_("acme")), 404, "memory_entry_not_found"
    )
    assert api.search("acme", CALC) == [calc]

    answer = api.client.delete(f"/v1/memory/{entry_id}", headers=api.as_("acme"))
    assert answer.status_code == 200 and answer.json() == {"entry_id": entry_id, "deleted": 1}
    assert api.search("acme", CALC) == []
    _refusal(
        api.client.delete(f"/v1/memory/{entry_id}", headers=api.as_("acme")), 404, "memory_entry_not_found"
    )


def test_an_admin_deletes_any_tenants_entry(api: Api) -> None:
    api.finished("globex", CALC)
    entry_id = _entry_id(api, "globex", CALC)
    answer = api.client.delete(f"/v1/memory/{entry_id}", headers=api.as_("admin"))
    assert answer.status_code == 200 and answer.json()["deleted"] == 1
    assert api.search("globex", CALC) == []


def test_delete_a_tasks_memory(api: Api) -> None:
    calc = api.finished("acme", CALC)
    trace = api.finished("acme", TRACE)

    _refusal(api.client.delete(f"/v1/tasks/{calc}/memory", headers=api.as_("globex")), 404, "task_not_found")
    _refusal(
        api.client.delete("/v1/tasks/task-unknown/memory", headers=api.as_("acme")), 404, "task_not_found"
    )

    answer = api.client.delete(f"/v1/tasks/{calc}/memory", headers=api.as_("acme"))
    assert answer.status_code == 200 and answer.json() == {"task_id": calc, "deleted": 1}
    assert api.search("acme", CALC) == [trace]
    assert api.client.delete(f"/v1/tasks/{calc}/memory", headers=api.as_("acme")).json()["deleted"] == 0


def test_delete_a_tenants_memory(api: Api) -> None:
    api.finished("acme", CALC)
    api.finished("acme", TRACE)
    globex = api.finished("globex", CALC)

    _refusal(
        api.client.delete("/v1/memory", params={"tenant": "globex"}, headers=api.as_("acme")),
        403,
        "forbidden",
    )
    _refusal(api.client.delete("/v1/memory", headers=api.as_("acme")), 422, "invalid_request")  # no ?tenant=

    answer = api.client.delete("/v1/memory", params={"tenant": "acme"}, headers=api.as_("acme"))
    assert answer.status_code == 200 and answer.json() == {"tenant": "acme", "deleted": 2}
    assert api.search("acme", CALC) == []
    assert api.search("globex", CALC) == [globex]

    answer = api.client.delete("/v1/memory", params={"tenant": "globex"}, headers=api.as_("admin"))
    assert answer.json() == {"tenant": "globex", "deleted": 1}
    assert api.search("globex", CALC) == []


# -- rebuild and stats ----------------------------------------------------------------------------------


def test_rebuild_and_stats_are_for_admins(api: Api) -> None:
    calc = api.finished("acme", CALC)
    api.finished("globex", CALC)
    for method, path in (("POST", "/v1/memory/rebuild"), ("GET", "/v1/memory/stats")):
        _refusal(api.client.request(method, path, headers=api.as_("acme")), 403, "forbidden")

    report = api.client.post("/v1/memory/rebuild", headers=api.as_("admin"))
    assert report.status_code == 200, report.text
    assert report.json()["rebuilt"] is True and report.json()["entries"] == 2
    assert api.search("acme", CALC) == [calc]

    stats = api.client.get("/v1/memory/stats", headers=api.as_("admin")).json()
    assert stats["on"] is True and stats["encoder"] == "hashing"
    assert {tenant: index["entries"] for tenant, index in stats["tenants"].items()} == {
        "acme": 1,
        "globex": 1,
    }


# -- no memory, a broken memory ------------------------------------------------------------------------


def test_without_a_memory_every_memory_route_answers_503_memory_off(make_api: Callable[..., Api]) -> None:
    api = make_api(memory=None)
    calc = api.finished("acme", CALC)
    for method, path in (
        ("GET", "/v1/memory/search?q=x"),
        ("DELETE", "/v1/memory/mem-1"),
        ("DELETE", "/v1/memory?tenant=acme"),
        ("DELETE", f"/v1/tasks/{calc}/memory"),
        ("POST", "/v1/memory/rebuild"),
        ("GET", "/v1/memory/stats"),
    ):
        _refusal(api.client.request(method, path, headers=api.as_("admin")), 503, "memory_off")
    answer = api.client.post(f"/v1/tasks/{calc}/feedback", json={"rating": -1}, headers=api.as_("acme"))
    assert answer.status_code == 201, answer.text


def test_a_failing_memory_is_a_503_and_never_fails_feedback(make_api: Callable[..., Api]) -> None:
    api = make_api(memory="broken")
    calc = api.finished("acme", CALC)
    answer = api.client.get("/v1/memory/search", params={"q": CALC}, headers=api.as_("acme"))
    body = _refusal(answer, 503, "memory_unavailable")
    assert "died" in body["detail"] and answer.headers["Retry-After"]

    answer = api.client.post(f"/v1/tasks/{calc}/feedback", json={"rating": -1}, headers=api.as_("acme"))
    assert answer.status_code == 201, answer.text
    assert answer.json()["rating"] == -1
    assert api.memory.calls == ["search", "feedback"]  # the rating was passed on, and its failure logged
    stored = api.client.get(f"/v1/tasks/{calc}/feedback", headers=api.as_("acme")).json()["feedback"]
    assert [f["rating"] for f in stored] == [-1]
