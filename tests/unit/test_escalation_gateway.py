"""``POST /v1/tasks/{id}/review`` and ``GET /v1/reviews`` over HTTP in process: a
:class:`serving.gateway.Gateway` replica (SQLite store, real API keys) whose orchestrators are reached
through the real :class:`~actors.client.OrchestratorClient` over in-process shards
(:class:`actors.testing.LocalActors`) that decide as the orchestrator does
(:func:`officeray.review.record_review_decision`, :class:`officeray.review.StoreReviews`); no Ray.

The replica is built as in ``test_gateway_memory`` (its dependency override gives each route the
replica): the routes, their validation, the role checks and the error handlers are the gateway's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from actors.client import OrchestratorClient
from actors.testing import LocalActors
from officeray.auth import Role, mint_key
from officeray.config import Settings
from officeray.contracts import (
    PendingReview,
    ReviewDecision,
    ReviewDecisionKind,
    TaskRecord,
    TaskRequest,
    TaskStatus,
)
from officeray.review import StoreReviews, record_review_decision
from officeray.store import SqlStore
from serving import gateway
from serving.security import install_verifier
from tests.unit.test_gateway_memory import _replica_dependencies, gateway_replica

SINCE = datetime(2026, 1, 1, tzinfo=UTC)
PROPOSAL = {"answer": 42}


class ReviewShard:
    """An orchestrator shard's review calls, as :class:`actors.orchestrator.Orchestrator` makes them."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.reviews = StoreReviews(store)

    async def decide_review(
        self, task_id: str, decision: ReviewDecisionKind, by: str, feedback: str = ""
    ) -> tuple[ReviewDecision, bool]:
        stored = await record_review_decision(self.store, task_id, decision, by, feedback)
        return stored, self.reviews.notify(task_id, stored.iteration)

    async def notify_review(self, task_id: str, iteration: int) -> bool:
        return self.reviews.notify(task_id, iteration)


@dataclass
class Api:
    client: TestClient
    store: SqlStore
    keys: dict[str, str]

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def run(self, call: Callable[..., Any], *args: Any) -> Any:
        return self.client.portal.call(call, *args)  # type: ignore[union-attr]

    def task(self, task_id: str, tenant: str, status: TaskStatus, *, waiting: bool = True) -> str:
        record = TaskRecord(
            task_id=task_id,
            tenant=tenant,
            description=f"compute for {tenant}",
            status=status,
            iterations=1,
            review_pending=PendingReview(
                iteration=1, reason="sign-off", proposed_output=PROPOSAL, since=SINCE, timeout_s=600
            )
            if waiting
            else None,
        )
        self.run(self.store.create_task, record, TaskRequest(description=record.description, tenant=tenant))
        return task_id

    def review(self, task_id: str, who: str, **body: Any) -> Any:
        return self.client.post(f"/v1/tasks/{task_id}/review", json=body, headers=self.as_(who))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    url = f"sqlite:///{tmp_path}/officeray.db"
    settings = Settings.model_validate(
        {"store": {"url": url}, "telemetry": {"trace_store": {"enabled": False}}}
    )
    store = SqlStore(url)
    replica = gateway_replica(settings, store, None)
    replica.orchestrators = OrchestratorClient(LocalActors(lambda _shard: ReviewShard(store), 2).connect, 2)
    dependencies = _replica_dependencies()
    for dependency in dependencies:
        gateway.app.dependency_overrides[dependency] = lambda: replica
    client = TestClient(gateway.app, raise_server_exceptions=False)
    client.__enter__()
    api = Api(client, store, {})
    for who, tenant, role in (
        ("admin", "default", Role.ADMIN),
        ("acme-user", "acme", Role.USER),
        ("acme-approver", "acme", Role.APPROVER),
        ("globex-approver", "globex", Role.APPROVER),
    ):
        key, key_record = mint_key(tenant, role)
        api.run(store.create_api_key, key_record)
        api.keys[who] = key
    try:
        yield api
    finally:
        client.__exit__(None, None, None)
        for dependency in dependencies:
            gateway.app.dependency_overrides.pop(dependency, None)
        install_verifier(None)
        store.close()


def _refusal(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert body["code"] == code and isinstance(body["detail"], str) and body["detail"]
    return body


def test_an_approver_of_the_tenant_decides_and_the_first_decision_wins(api: Api) -> None:
    task = api.task("task-acme-1", "acme", TaskStatus.WAITING_REVIEW)

    answer = api.review(task, "acme-approver", decision="revise", feedback="use four")
    assert answer.status_code == 200, answer.text
    decided = answer.json()
    key_id = api.keys["acme-approver"].split("_")[1]
    assert (decided["task_id"], decided["iteration"], decided["decision"]) == (task, 1, "revise")
    assert (decided["feedback"], decided["decided_by"]) == ("use four", key_id)
    stored = api.run(api.store.get_review_decision, task, 1)
    assert stored is not None and stored.decision == "revise"

    again = _refusal(api.review(task, "admin", decision="accept"), 409, "review_already_decided")
    assert "revise by" in again["detail"]


def test_an_admin_decides_any_tenants_review(api: Api) -> None:
    task = api.task("task-acme-2", "acme", TaskStatus.WAITING_REVIEW)
    answer = api.review(task, "admin", decision="reject", feedback="wrong")
    assert answer.status_code == 200, answer.text
    assert answer.json()["decision"] == "reject"


def test_a_user_key_may_not_decide_and_another_tenant_sees_nothing(api: Api) -> None:
    task = api.task("task-acme-3", "acme", TaskStatus.WAITING_REVIEW)
    _refusal(api.review(task, "acme-user", decision="accept"), 403, "forbidden")
    _refusal(api.review(task, "globex-approver", decision="accept"), 404, "task_not_found")
    assert api.run(api.store.get_review_decision, task, 1) is None
    assert api.client.post(f"/v1/tasks/{task}/review", json={"decision": "accept"}).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"decision": "revise"},
        {"decision": "revise", "feedback": "   "},
        {"decision": "approve"},
        {"decision": "ACCEPT"},
        {},
        {"decision": "accept", "by": "someone-else"},
        {"decision": "accept", "feedback": "x" * 2001},
        {"decision": ["accept"]},
    ],
)
def test_an_invalid_decision_is_a_422(api: Api, body: dict[str, Any]) -> None:
    task = api.task("task-acme-4", "acme", TaskStatus.WAITING_REVIEW)
    _refusal(api.review(task, "acme-approver", **body), 422, "invalid_request")
    assert api.run(api.store.get_review_decision, task, 1) is None


def test_a_task_that_does_not_wait_for_a_review_is_a_409_and_an_unknown_one_a_404(api: Api) -> None:
    running = api.task("task-acme-5", "acme", TaskStatus.EXECUTING, waiting=False)
    body = _refusal(api.review(running, "acme-approver", decision="accept"), 409, "not_waiting_review")
    assert "executing" in body["detail"]
    done = api.task("task-acme-6", "acme", TaskStatus.COMPLETED, waiting=False)
    _refusal(api.review(done, "acme-approver", decision="accept"), 409, "not_waiting_review")
    _refusal(api.review("task-nope", "acme-approver", decision="accept"), 404, "task_not_found")


def test_waiting_tasks_show_their_pending_review_in_the_task_views_and_the_review_list(api: Api) -> None:
    task = api.task("task-acme-7", "acme", TaskStatus.WAITING_REVIEW)
    api.task("task-globex-1", "globex", TaskStatus.WAITING_REVIEW)
    api.task("task-acme-8", "acme", TaskStatus.EXECUTING, waiting=False)

    record = api.client.get(f"/v1/tasks/{task}", headers=api.as_("acme-user")).json()
    assert record["status"] == "waiting_review"
    assert (
        record["review_pending"]["proposed_output"] == PROPOSAL and record["review_pending"]["iteration"] == 1
    )

    listed = api.client.get("/v1/tasks", params={"status": "waiting_review"}, headers=api.as_("acme-user"))
    assert listed.status_code == 200, listed.text
    [summary] = listed.json()["tasks"]
    assert summary["task_id"] == task and summary["status"] == "waiting_review"
    assert summary["current_step"] == "waiting for a person's review (iteration 1)"
    assert summary["review_pending"]["reason"] == "sign-off"

    reviews = api.client.get("/v1/reviews", headers=api.as_("acme-user"))
    assert reviews.status_code == 200, reviews.text
    body = reviews.json()
    assert body["count"] == 1 and body["reviews"][0]["task_id"] == task
    assert body["reviews"][0]["proposed_output"] == PROPOSAL and body["reviews"][0]["timeout_s"] == 600
    everyone = api.client.get("/v1/reviews", headers=api.as_("admin")).json()
    assert everyone["count"] == 2
    _refusal(api.client.get("/v1/reviews?tenant=globex", headers=api.as_("acme-user")), 403, "forbidden")


def test_a_revise_of_a_decomposed_tasks_result_is_a_409(api: Api) -> None:
    """The integrated result of a decomposed task has no plan for a person's feedback to change: it
    is accepted or rejected (a revise would re-review the same results)."""
    from officeray.contracts import SubtaskView

    task = api.task("task-acme-tree", "acme", TaskStatus.WAITING_REVIEW)
    record = api.run(api.store.get_task, task)
    record.subtasks = [SubtaskView(subtask_id="s1", task_id=f"{task}.s1", description="d")]
    api.run(api.store.save_task, record)
    revised = api.review(task, "acme-approver", decision="revise", feedback="x")
    body = _refusal(revised, 409, "revise_not_supported")
    assert "accepted or rejected" in body["detail"]
    assert api.run(api.store.get_review_decision, task, 1) is None
    assert api.review(task, "acme-approver", decision="accept").status_code == 200
