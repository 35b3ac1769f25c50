"""The task API as the issue documents it (``POST /tasks``, ``GET /tasks/{id}[/status|/logs]``) and
ready plans (``plan`` in ``POST /tasks`` and ``POST /v1/tasks``), over HTTP on the real stack."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from cluster.runtime import LocalStack
from tests.integration.conftest import bearer
from tests.integration.stored import with_store
from tests.integration.test_api_fuzz import CALL_TIMEOUT_S as FUZZ_CALL_TIMEOUT_S
from tests.integration.test_api_fuzz import MAX_EXAMPLES as FUZZ_MAX_EXAMPLES
from tests.integration.test_api_fuzz import _strategy as fuzz_strategy

pytestmark = pytest.mark.integration

POLL_TIMEOUT_S = 120
ISSUE_REQUEST = {
    "description": "Trace the call sequence from main to process_data in examples/sample_project",
    "constraints": {"max_duration": 300, "allowed_tools": ["code_analyzer"]},
}
"""The request of the issue's curl example, as is."""


def _base(stack: LocalStack) -> str:
    return f"http://127.0.0.1:{stack.settings.serve.port}"


@pytest.fixture
def client(stack: LocalStack, admin_key: str) -> Any:
    with httpx.Client(base_url=_base(stack), headers=bearer(admin_key), timeout=60) as http:
        yield http


def _wait_status(client: httpx.Client, task_id: str) -> tuple[dict[str, Any], set[str]]:
    """The final ``/tasks/{id}/status`` answer, and every ``current_step`` seen on the way."""
    seen: set[str] = set()
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        response = client.get(f"/tasks/{task_id}/status")
        assert response.status_code == 200, response.text
        body = response.json()
        seen.add(body["current_step"])
        if body["status"] in ("completed", "failed"):
            return body, seen
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish in {POLL_TIMEOUT_S}s")


def _calc_plan(expression: str, action: str = "math_calculator") -> dict[str, Any]:
    """A ready plan in the published plan schema, as a client writes it (no task id known yet)."""
    return {
        "plan_id": f"plan-{uuid.uuid4().hex[:8]}",
        "task_id": "unknown-yet",
        "confidence": 1.0,
        "metadata": {
            "priority": 0,
            "required_tools": [action],
            "estimated_cost_tokens": 0,
            "estimated_duration_seconds": 1,
        },
        "steps": [
            {
                "step_id": "s1",
                "action": action,
                "inputs": {"expression": expression},
                "outputs_expectation": None,
                "timeout_seconds": 30,
                "parallelizable": False,
                "idempotency_key": "calc-1",
                "dependencies": [],
            }
        ],
    }


# -- the documented task API ---------------------------------------------------------------------


def test_the_issue_request_is_accepted_and_completes_with_the_path(client: httpx.Client) -> None:
    before = datetime.now(UTC)
    created = client.post("/tasks", json=ISSUE_REQUEST)
    assert created.status_code == 202, created.text
    accepted = created.json()
    assert set(accepted) == {"task_id", "status", "estimated_completion"}
    assert accepted["status"] == "queued"
    eta = datetime.fromisoformat(accepted["estimated_completion"].replace("Z", "+00:00"))
    # acceptance plus max_duration: the latest moment the task can end
    assert before + timedelta(seconds=299) <= eta <= datetime.now(UTC) + timedelta(seconds=301)

    task_id = accepted["task_id"]
    body, seen = _wait_status(client, task_id)
    assert set(body) == {"task_id", "status", "current_step", "progress", "logs", "final_result", "error"}
    assert body["status"] == "completed", body["error"]
    assert body["current_step"] == "completed" and body["progress"] == 1.0 and body["error"] is None
    assert body["final_result"]["path"][0].startswith("app.main.main")
    assert body["final_result"]["path"][-1].startswith("app.processing.core.process_data")
    assert all(isinstance(line, str) for line in body["logs"])
    assert any("step s1 (code_analyzer) started" in line for line in body["logs"])
    assert seen <= {
        "queued",
        "planning (iteration 1)",
        "validating the plan (iteration 1)",
        "executing the plan (iteration 1)",
        "step s1 (code_analyzer) running",
        "reviewing the results (iteration 1)",
        "completed",
    }, seen

    assert client.get(f"/tasks/{task_id}").json() == body
    logs = client.get(f"/tasks/{task_id}/logs").json()
    assert logs == {"task_id": task_id, "logs": body["logs"]}
    # the /v1 view of the same task keeps its shape
    full = client.get(f"/v1/tasks/{task_id}").json()
    assert full["result"] == body["final_result"] and full["progress"]["succeeded"] == 1


@pytest.mark.parametrize(
    ("body", "code", "fragments"),
    [
        (
            {"description": "x", "constraints": {"max_duration": 5, "budget": 1, "gpu": True}},
            "invalid_request",
            ["'budget'", "'gpu'", "constraints"],
        ),
        (
            {"description": "x", "constraints": {"allowed_tools": ["code_analyzer", "teleport", "fax"]}},
            "unknown_tools",
            ["fax, teleport"],
        ),
        ({"description": "x", "constraints": {"max_duration": 0}}, "invalid_request", ["max_duration"]),
        ({"description": "x", "constraints": {"max_duration": 10**9}}, "invalid_request", ["max_duration"]),
        ({"description": "   "}, "invalid_request", ["description"]),
        ({"constraints": {}}, "invalid_request", ["description"]),
        ({"description": "x", "priority": 1}, "invalid_request", ["priority"]),
    ],
)
def test_bad_task_requests_get_a_422_with_detail_and_code(
    client: httpx.Client, body: dict[str, Any], code: str, fragments: list[str]
) -> None:
    response = client.post("/tasks", json=body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["code"] == code
    for fragment in fragments:
        assert fragment in answer["detail"]
    assert "Value error" not in answer["detail"]  # our message, without pydantic's prefix


def test_unknown_tasks_answer_404_with_detail_and_code(client: httpx.Client) -> None:
    for path in ("/tasks/task-nope", "/tasks/task-nope/status", "/tasks/task-nope/logs"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": "task 'task-nope' not found", "code": "task_not_found"}


def test_max_duration_stops_a_task_in_the_middle_of_a_step(client: httpx.Client) -> None:
    started = time.monotonic()
    created = client.post(
        "/tasks", json={"description": "Wait 30 seconds", "constraints": {"max_duration": 3}}
    )
    assert created.status_code == 202, created.text
    body, _seen = _wait_status(client, created.json()["task_id"])

    assert body["status"] == "failed"
    assert body["error"].startswith("workflow retry policy: maximum_duration_s (3) reached"), body["error"]
    assert body["final_result"] is None and body["current_step"] == "failed"
    assert time.monotonic() - started < 20  # not the 30 s of the step


# -- ready plans ---------------------------------------------------------------------------------


def test_a_ready_plan_completes_with_its_result_without_the_planner(client: httpx.Client) -> None:
    created = client.post(
        "/v1/tasks", json={"description": "two to the tenth", "plan": _calc_plan("2 ** 10")}
    )
    assert created.status_code == 202, created.text
    task_id = created.json()["task_id"]
    body = client.get(f"/v1/tasks/{task_id}", params={"wait_s": 30}).json()
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while body["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        body = client.get(f"/v1/tasks/{task_id}", params={"wait_s": 10}).json()

    assert body["status"] == "completed", body["error"]
    assert body["result"] == 1024
    assert [call["role"] for call in body["model_calls"]] == ["reviewer"]  # no planner call
    assert body["plan"]["task_id"] == task_id  # the plan runs under the task's id
    assert body["steps"][0]["action"] == "math_calculator" and body["steps"][0]["output"]["value"] == 1024


def test_a_ready_plan_in_the_task_api(client: httpx.Client) -> None:
    request = {
        "description": "six times seven",
        "constraints": {"max_duration": 60},
        "plan": _calc_plan("6 * 7"),
    }
    created = client.post("/tasks", json=request)
    assert created.status_code == 202, created.text
    body, _seen = _wait_status(client, created.json()["task_id"])
    assert body["status"] == "completed" and body["final_result"] == 42
    assert any("the submitted plan has 1 step(s)" in line for line in body["logs"])


def test_an_invalid_ready_plan_answers_422_and_creates_nothing(
    stack: LocalStack, client: httpx.Client
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    plan = _calc_plan("2 +", action="teleport")
    plan["steps"].append(
        {**plan["steps"][0], "step_id": "s2", "action": "math_calculator", "dependencies": ["s9"]}
    )

    response = client.post("/v1/tasks", json={"description": "broken", "plan": plan, "tenant": tenant})
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["code"] == "invalid_plan"
    assert answer["detail"].startswith("invalid plan: ")
    assert "teleport" in answer["detail"] and "s9" in answer["detail"]
    assert answer["reasons"] and all(reason in answer["detail"] for reason in answer["reasons"])

    not_allowed = client.post(
        "/tasks",
        json={
            "description": "x",
            "constraints": {"allowed_tools": ["code_analyzer"]},
            "plan": _calc_plan("1"),
        },
    )
    assert not_allowed.status_code == 422 and not_allowed.json()["code"] == "invalid_plan"
    assert "'math_calculator' is not allowed" in not_allowed.json()["detail"]

    records = with_store(stack.settings.store.url, lambda store: store.list_tasks(limit=10_000))
    assert [r for r in records if r.tenant == tenant] == []


def test_no_task_api_operation_answers_a_server_error(stack: LocalStack, admin_key: str) -> None:
    """The fuzzing of ``tests/integration/test_api_fuzz.py``, on the task API's routes."""
    schema = schemathesis.openapi.from_url(f"{_base(stack)}/openapi.json", timeout=FUZZ_CALL_TIMEOUT_S)
    operations = [result.ok() for result in schema.include(path_regex=r"^/tasks").get_all_operations()]
    assert {op.label for op in operations} == {
        "POST /tasks",
        "GET /tasks/{task_id}",
        "GET /tasks/{task_id}/status",
        "GET /tasks/{task_id}/logs",
    }
    failures: dict[str, str] = {}
    for operation in operations:

        @given(case=fuzz_strategy(operation))
        @settings(
            max_examples=FUZZ_MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=_base(stack),
                headers=bearer(admin_key),
                checks=[not_a_server_error],
                timeout=FUZZ_CALL_TIMEOUT_S,
            )

        try:
            fuzz()
        except Exception as exc:  # report every operation's failure, not only the first
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{why}" for label, why in failures.items())
