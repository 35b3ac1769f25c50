"""Model tiers on the real stack: fallback along a planner chain, plans from an OpenAI-compatible
endpoint driving execution, token accounting, and the OpenAI-shaped HTTP surface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from cluster.runtime import LocalStack
from officeray.auth import Role
from officeray.contracts import TaskRequest, TaskStatus
from officeray.telemetry import read_trace
from tests.fake_openai_server import FakeOpenAIServer
from tests.integration.conftest import REPO, bearer, create_key, require_docker

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 240


def test_planner_falls_back_past_a_failing_endpoint_and_an_openai_plan_drives_the_task(
    tmp_path: Path,
) -> None:
    """Chain: a dead endpoint (500s) -> a working OpenAI-compatible endpoint -> embedded."""
    require_docker()
    with FakeOpenAIServer("server_error") as broken, FakeOpenAIServer("plan") as working:
        config = tmp_path / "officeray.yaml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "store": {"url": f"sqlite:///{tmp_path}/o.db"},
                    "telemetry": {"trace_file": str(tmp_path / "traces.jsonl")},
                    "runners": {"count": 1},
                    "memory": {"enabled": False},  # the model tiers are tested here; the memory has its own
                    "models": {
                        "planner": [
                            {
                                "tier": "openai",
                                "model": "broken-model",
                                "base_url": broken.base_url,
                                "max_retries": 1,
                            },
                            {"tier": "openai", "model": "fake-model", "base_url": working.base_url},
                            {"tier": "embedded"},
                        ],
                        "prices": {"fake-model": {"prompt_per_1k": 1.0, "completion_per_1k": 2.0}},
                        "router": {"initial_backoff_s": 0.01},
                    },
                }
            )
        )
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("officeray")), "run", "Compute 6 * 7 then calculate ans / 2",
             "--json", "--config", str(config)],
            cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
            timeout=CLI_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        record = json.loads(proc.stdout)
        assert record["status"] == "completed" and record["result"] == 21.0
        # the broken endpoint was asked twice (one retry), the working one answered the plan
        assert len(broken.chat_requests) == 2
        assert len(working.chat_requests) == 1
        sent = working.chat_requests[0]["body"]
        assert sent["response_format"]["type"] == "json_schema"

    (planner_call, reviewer_call) = record["model_calls"]
    assert planner_call["role"] == "planner" and planner_call["tier"] == "openai"
    assert planner_call["model"] == "fake-model" and planner_call["fallbacks"] == 1
    outcomes = [(a["model"], a["outcome"]) for a in planner_call["attempts"]]
    assert outcomes == [("broken-model", "error"), ("broken-model", "error"), ("fake-model", "ok")]
    assert planner_call["usage"]["prompt_tokens"] > 0 and planner_call["usage"]["cost_usd"] > 0
    assert reviewer_call["tier"] == "embedded"
    assert record["usage"]["calls"] == 2
    assert (
        record["usage"]["prompt_tokens"]
        == planner_call["usage"]["prompt_tokens"] + reviewer_call["usage"]["prompt_tokens"]
    )
    assert any("after 1 fallback" in line["message"] for line in record["logs"])

    # the fallback is visible in the task's trace: failed attempts, then the one that answered
    spans = read_trace(tmp_path / "traces.jsonl", record["trace_id"])
    attempts = [
        s for s in spans if s["name"] == "model.attempt" and s["attributes"]["officeray.role"] == "planner"
    ]
    assert [s["attributes"]["officeray.outcome"] for s in attempts] == ["error", "error", "ok"]
    assert attempts[0]["attributes"]["officeray.error_type"] == "ServerError"
    calls = [s for s in spans if s["name"] == "model.call" and s["attributes"]["officeray.role"] == "planner"]
    assert calls and any(e["name"] == "fallback" for e in calls[0]["events"])


def test_chat_completions_serves_the_role_models(stack: LocalStack) -> None:
    """With a key of its own tenant (a user key), whose usage the answered completions are billed to."""
    base = f"http://127.0.0.1:{stack.settings.serve.port}"
    tenant = f"chat-{uuid.uuid4().hex[:12]}"
    key = create_key(stack.settings.store.url, tenant, Role.USER)
    with httpx.Client(base_url=base, timeout=60) as anonymous:
        refused = anonymous.post("/v1/chat/completions", json={"model": "planner", "messages": []})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert anonymous.get("/v1/models").status_code == 401
    with httpx.Client(base_url=base, headers=bearer(key), timeout=60) as client:
        models = client.get("/v1/models").json()
        assert {m["id"] for m in models["data"]} == {"planner", "reviewer", "ai_tool"}
        body = {"model": "planner", "messages": [{"role": "user", "content": "Compute 2 + 2"}]}
        answer = client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        plan = json.loads(data["choices"][0]["message"]["content"])
        assert plan["steps"][0]["action"] == "math_calculator"
        assert (
            data["usage"]["total_tokens"]
            == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
            > 0
        )

        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as streamed:
            assert streamed.status_code == 200
            events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        assert json.loads(text)["steps"][0]["action"] == "math_calculator"

        unknown = client.post("/v1/chat/completions", json={**body, "model": "gpt-9"})
        assert unknown.status_code == 404 and "planner" in unknown.json()["error"]["message"]
        refused = client.post(
            "/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "Book a flight"}]}
        )
        assert refused.status_code == 422
        # the two answered completions (a plain one and a stream) are billed to the key's tenant
        usage = client.get(f"/v1/tenants/{tenant}/usage").json()
        assert usage["calls"] == 2 and usage["prompt_tokens"] > data["usage"]["prompt_tokens"] > 0


def test_tokens_are_summed_per_task_and_per_tenant(stack: LocalStack, api: httpx.Client) -> None:
    tenant = "acme-tokens"
    records = stack.run([TaskRequest(description=f"Compute {i} + 1", tenant=tenant) for i in range(3)])
    assert all(r.status == TaskStatus.COMPLETED for r in records)
    for record in records:
        assert record.tenant == tenant and record.usage.calls == 2 and record.usage.total_tokens > 0
    usage = api.get(f"/v1/tenants/{tenant}/usage").json()  # an admin key reads any tenant's usage
    assert usage["calls"] == 6
    assert usage["total_tokens"] == sum(r.usage.total_tokens for r in records)


def test_a_task_over_its_token_budget_stops_with_the_reason(stack: LocalStack) -> None:
    # a tenant of its own: nothing remembered to plan from, so the planner spends tokens
    tenant = f"budget-{uuid.uuid4().hex[:8]}"
    (record,) = stack.run([TaskRequest(description="Compute 1 + 1", token_budget=5, tenant=tenant)])
    assert record.status == TaskStatus.FAILED
    assert "token budget exceeded" in (record.error or "") and record.steps == []


def test_gateway_refuses_unknown_tools_and_runs_a_task_id_once(stack: LocalStack, admin_key: str) -> None:
    import concurrent.futures

    base = f"http://127.0.0.1:{stack.settings.serve.port}"
    auth = bearer(admin_key)
    bad = httpx.post(
        f"{base}/v1/tasks",
        json={"description": "Compute 1", "allowed_tools": ["nope"]},
        headers=auth,
        timeout=30,
    )
    assert bad.status_code == 422 and "nope" in bad.json()["detail"]

    body = {"description": "Compute 3 * 3", "task_id": "same-id-twice"}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: httpx.post(f"{base}/v1/tasks", json=body, headers=auth, timeout=30).status_code,
                range(8),
            )
        )
    assert codes.count(202) == 1 and codes.count(200) == 7
    record = stack.run([TaskRequest(description="Compute 3 * 3", task_id="same-id-twice")])[0]
    assert record.status == TaskStatus.COMPLETED
    events = httpx.get(f"{base}/v1/tasks/same-id-twice/events", headers=auth, timeout=30).json()["events"]
    assert [e["kind"] for e in events].count("completed") == 1
    assert [e["kind"] for e in events].count("accepted") == 1


def test_a_model_answering_plans_in_the_published_schema_drives_a_task(tmp_path: Path) -> None:
    """An OpenAI-compatible endpoint whose plans use the published schema's freedoms (integer
    priority, a JSON Schema as outputs_expectation, "step 1" ids, unknown properties, no confidence)
    plans the task, and the task completes."""
    import jsonschema

    from officeray.contracts import plan_json_schema

    require_docker()
    with FakeOpenAIServer("published_plan") as model:
        config = tmp_path / "officeray.yaml"
        config.write_text(
            json.dumps(
                {
                    "store": {"url": f"sqlite:///{tmp_path}/o.db"},
                    "telemetry": {"trace_file": str(tmp_path / "traces.jsonl")},
                    "runners": {"count": 1},
                    "memory": {"enabled": False},  # the model tiers are tested here; the memory has its own
                    "models": {
                        "planner": [{"tier": "openai", "model": "fake-model", "base_url": model.base_url}]
                    },
                }
            )
        )
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("officeray")), "run", "Compute 6 * 7 then calculate ans / 2",
             "--json", "--config", str(config)],
            cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
            timeout=CLI_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        answers = [r for r in model.requests if r["path"].endswith("/chat/completions")]
        assert len(answers) == 1
    record = json.loads(proc.stdout)
    assert record["status"] == "completed" and record["result"] == 21.0
    assert [s["step_id"] for s in record["steps"]] == ["step 1", "step 2"]
    assert record["plan"]["metadata"]["priority"] == 5
    assert record["plan"]["steps"][0]["outputs_expectation"] == {"type": "object", "required": ["value"]}
    assert record["plan"]["confidence"] is None
    # what the model was asked for is the published schema, and what it answered is valid under it
    sent = answers[0]["body"]["response_format"]["json_schema"]["schema"]
    assert sent == plan_json_schema()
    published = json.loads(proc.stdout)["plan"]
    published.pop("confidence")
    jsonschema.validate(published, plan_json_schema())
