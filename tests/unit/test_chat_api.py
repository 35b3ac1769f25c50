"""The OpenAI chat-completions surface, over a dispatch backed by EmbeddedTier instances."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from officeray.auth import Principal
from officeray.auth import Role as KeyRole
from officeray.contracts import (
    ModelUsage,
    Plan,
    PlanRequest,
    Review,
    ReviewVerdict,
    StepResult,
    StepStatus,
    plan_json_schema,
)
from serving.chat_api import ChatDispatch, make_chat_router
from serving.security import unauthorized
from serving.tiers.base import (
    BackpressureError,
    MalformedAnswerError,
    ModelAnswer,
    ModelCall,
    Role,
    ServerError,
    TierUnavailableError,
)
from serving.tiers.embedded import plan_task
from serving.tiers.embedded_tier import EmbeddedTier

URL = "/v1/chat/completions"


class EmbeddedDispatch:
    """What the gateway does with deployment handles, done with in-process tiers."""

    def __init__(self) -> None:
        self.tiers: dict[Role, EmbeddedTier] = {
            "planner": EmbeddedTier("planner"),
            "reviewer": EmbeddedTier("reviewer"),
            "ai_tool": EmbeddedTier("ai_tool"),
        }
        self.calls: list[ModelCall] = []

    async def generate(self, role: Role, call: ModelCall) -> ModelAnswer:
        self.calls.append(call)
        return await self.tiers[role].generate(call)

    def stream(self, role: Role, call: ModelCall) -> AsyncIterator[str]:
        self.calls.append(call)
        return self.tiers[role].stream(call)


class FailingDispatch:
    def __init__(self, exc: Exception, *, after: list[str] | None = None) -> None:
        self.exc = exc
        self.after = after

    async def generate(self, role: Role, call: ModelCall) -> ModelAnswer:
        raise self.exc

    async def stream(self, role: Role, call: ModelCall) -> AsyncIterator[str]:
        for piece in self.after or []:
            yield piece
        raise self.exc


def client_for(dispatch: ChatDispatch) -> TestClient:
    app = FastAPI()
    app.include_router(make_chat_router(dispatch))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def dispatch() -> EmbeddedDispatch:
    return EmbeddedDispatch()


@pytest.fixture
def client(dispatch: EmbeddedDispatch) -> TestClient:
    return client_for(dispatch)


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def events(response: Any) -> list[Any]:
    out: list[Any] = []
    for line in response.text.split("\n\n"):
        if not line.strip():
            continue
        assert line.startswith("data: ")
        data = line[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------


def test_planner_answer_is_a_plan_in_the_chat_completion_shape(client: TestClient) -> None:
    response = client.post(URL, json=chat("planner", "Compute 6*7 then calculate ans / 2"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "planner"
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    plan = Plan.model_validate_json(choice["message"]["content"])
    assert [s.action for s in plan.steps] == ["math_calculator", "math_calculator"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] == 7  # whitespace tokens of the message
    assert usage["completion_tokens"] > 10
    assert body["officeray"] == {"tier": "embedded", "model": "embedded"}


def test_planner_is_asked_for_the_plan_schema_by_default(
    client: TestClient, dispatch: EmbeddedDispatch
) -> None:
    client.post(URL, json=chat("planner", "What is 1+1?", max_tokens=300, temperature=0.5))
    call = dispatch.calls[0]
    assert call.role == "planner"
    assert call.json_schema == plan_json_schema()
    assert call.schema_name == "plan"
    assert (call.max_tokens, call.temperature) == (300, 0.5)
    assert call.payload is None


def test_response_format_choices(client: TestClient, dispatch: EmbeddedDispatch) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    client.post(URL, json=chat("ai_tool", "count words: a b", response_format=fmt))
    client.post(URL, json=chat("ai_tool", "count words: a b", response_format={"type": "json_object"}))
    client.post(URL, json=chat("planner", "What is 1+1?", response_format={"type": "text"}))
    client.post(URL, json=chat("ai_tool", "count words: a b", max_completion_tokens=7))
    assert (dispatch.calls[0].json_schema, dispatch.calls[0].schema_name) == (schema, "thing")
    assert dispatch.calls[1].json_schema == {"type": "object"}
    assert dispatch.calls[2].json_schema is None
    assert dispatch.calls[3].json_schema is None
    assert dispatch.calls[3].max_tokens == 7


def test_reviewer_answers_a_review_request(client: TestClient) -> None:
    request = PlanRequest(task_id="t", description="Compute 6*7", allowed_tools=["math_calculator"])
    plan = plan_task(request)
    step = plan.steps[0]
    result = StepResult(
        step_id=step.step_id,
        action=step.action,
        idempotency_key=step.idempotency_key,
        status=StepStatus.SUCCEEDED,
        output={"value": 42, "expression": "6*7"},
    )
    review_request = {
        "task_id": "t",
        "description": "Compute 6*7",
        "iteration": 1,
        "plan": plan.model_dump(mode="json"),
        "results": [result.model_dump(mode="json")],
    }
    response = client.post(URL, json=chat("reviewer", json.dumps(review_request)))
    assert response.status_code == 200, response.text
    review = Review.model_validate_json(response.json()["choices"][0]["message"]["content"])
    assert review.verdict == ReviewVerdict.APPROVED


def test_ai_tool_text_and_content_parts(client: TestClient) -> None:
    body = {
        "model": "ai_tool",
        "messages": [
            {"role": "system", "content": "you answer"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "count words: "}, {"type": "text", "text": "a b c"}],
            },
        ],
        "user": "someone",
        "top_p": 1,
        "n": 1,
    }
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "3"


def test_models_lists_the_roles(client: TestClient) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["planner", "reviewer", "ai_tool"]
    assert all(m["object"] == "model" and m["owned_by"] == "officeray" for m in body["data"])


# --------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------


def test_stream_sends_chunks_then_done(client: TestClient) -> None:
    response = client.post(URL, json=chat("ai_tool", "summarize: alpha beta gamma.", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    received = events(response)
    assert received[-1] == "[DONE]"
    chunks = received[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "ai_tool" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert pieces == ["alpha ", "beta ", "gamma."]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}


def test_stream_with_include_usage_ends_with_a_usage_chunk(client: TestClient) -> None:
    body = chat("ai_tool", "summarize: alpha beta gamma.", stream=True)
    body["stream_options"] = {"include_usage": True}
    received = events(client.post(URL, json=body))
    assert received[-1] == "[DONE]"
    usage_chunk = received[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert received[-3]["choices"][0]["finish_reason"] == "stop"
    # without the option: no usage chunk
    plain = events(client.post(URL, json=chat("ai_tool", "summarize: alpha beta gamma.", stream=True)))
    assert all("usage" not in c for c in plain[:-1])


def test_stream_of_a_plan_joins_to_a_plan(client: TestClient) -> None:
    response = client.post(URL, json=chat("planner", "Compute 1+1 and also compute 2+2", stream=True))
    chunks = events(response)[:-1]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert len(Plan.model_validate_json(text).steps) == 2


def test_stream_refusal_gets_its_status_before_streaming(client: TestClient) -> None:
    response = client.post(URL, json=chat("ai_tool", "write a poem", stream=True))
    assert response.status_code == 422
    assert "cannot answer this prompt" in response.json()["error"]["message"]


def test_stream_error_after_the_start_is_an_error_event() -> None:
    client = client_for(FailingDispatch(ServerError("engine died"), after=["one ", "two "]))
    response = client.post(URL, json=chat("ai_tool", "x", stream=True))
    assert response.status_code == 200
    received = events(response)
    assert "[DONE]" not in received
    assert [c["choices"][0]["delta"].get("content") for c in received[1:3]] == ["one ", "two "]
    assert received[-1] == {
        "error": {
            "message": "engine died",
            "type": "server_error",
            "param": None,
            "code": "model_server_error",
        }
    }


def test_empty_stream_still_finishes() -> None:
    class Empty(FailingDispatch):
        async def stream(self, role: Role, call: ModelCall) -> AsyncIterator[str]:
            pieces: list[str] = []
            for piece in pieces:
                yield piece

    response = client_for(Empty(ServerError("unused"))).post(URL, json=chat("ai_tool", "x", stream=True))
    received = events(response)
    assert received[-1] == "[DONE]"
    assert received[-2]["choices"][0]["finish_reason"] == "stop"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_unknown_model_is_404(client: TestClient) -> None:
    response = client.post(URL, json=chat("gpt-4o", "hi"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["message"] == "unknown model 'gpt-4o'; models: planner, reviewer, ai_tool"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"model": "planner"}', 422, "messages: Field required"),
        (b'{"model": "planner", "messages": []}', 422, "messages: List should have at least 1 item"),
        (b'{"model": "planner", "messages": "hi"}', 422, "messages: Input should be a valid list"),
        (b'{"model": "planner", "messages": [{"role": "robot", "content": "x"}]}', 422, "messages.0.role"),
        (
            b'{"model": "planner", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            422,
            "max_tokens",
        ),
        (b'{"model": "planner", "messages": [{"role": "user", "content": "x"}], "n": 2}', 422, "n:"),
        (
            b'{"model": "ai_tool", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
            422,
            "only text content is supported",
        ),
        (
            b'{"model": "ai_tool", "messages": [{"role": "user", "content": "x"}], '
            b'"response_format": {"type": "json_schema"}}',
            422,
            "response_format.json_schema is required",
        ),
        (
            b'{"model": "ai_tool", "messages": [{"role": "user", "content": "x"}], '
            b'"response_format": {"type": "xml"}}',
            422,
            "response_format.type",
        ),
    ],
)
def test_malformed_bodies_are_4xx_with_a_message(
    client: TestClient, body: bytes, status: int, fragment: str
) -> None:
    response = client.post(URL, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"


def test_cannot_answer_is_422_with_the_message(client: TestClient) -> None:
    response = client.post(URL, json=chat("planner", "Draw me a sheep"))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["message"].startswith("The embedded planner could not understand the task")
    assert error["code"] == "cannot_answer"


def test_backpressure_is_503_with_retry_after_1() -> None:
    client = client_for(FailingDispatch(BackpressureError("planner at max_ongoing_requests")))
    for stream in (False, True):
        response = client.post(URL, json=chat("planner", "What is 1+1?", stream=stream))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "overloaded"
        assert response.json()["error"]["message"] == "planner at max_ongoing_requests"


def test_serve_backpressure_error_is_503_too() -> None:
    from ray.serve.exceptions import BackPressureError

    client = client_for(FailingDispatch(BackPressureError(num_queued_requests=5, max_queued_requests=5)))
    response = client.post(URL, json=chat("planner", "What is 1+1?"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("exc", "status", "retry_after"),
    [
        (ServerError("upstream 500", retry_after_s=2.5), 503, "3"),
        (ServerError("upstream 500"), 503, None),
        (TierUnavailableError("vLLM tier unavailable: no GPU"), 503, None),
        (MalformedAnswerError("not JSON"), 502, None),
        (RuntimeError("bug"), 500, None),
    ],
)
def test_tier_errors_map_to_5xx(exc: Exception, status: int, retry_after: str | None) -> None:
    response = client_for(FailingDispatch(exc)).post(URL, json=chat("reviewer", "x"))
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry_after
    assert response.json()["error"]["type"] == "server_error"
    if status != 500:
        assert response.json()["error"]["message"] == str(exc)
    else:
        assert response.json()["error"]["message"] == "internal error (RuntimeError)"


# --------------------------------------------------------------------------------------------------
# Keys and billing (the gateway builds the router with authenticate and bill)
# --------------------------------------------------------------------------------------------------

GOOD_KEY = "good-key"
KEY_PRINCIPAL = Principal(key_id="0123456789ab", tenant="acme", role=KeyRole.USER)


async def _authenticate(request: Request) -> Principal:
    if request.headers.get("authorization") != f"Bearer {GOOD_KEY}":
        raise unauthorized()
    return KEY_PRINCIPAL


class Ledger:
    def __init__(self) -> None:
        self.billed: list[tuple[str, ModelUsage]] = []

    async def bill(self, tenant: str, usage: ModelUsage) -> None:
        self.billed.append((tenant, usage))


def keyed_client(dispatch: ChatDispatch, ledger: Ledger) -> TestClient:
    app = FastAPI()
    app.include_router(make_chat_router(dispatch, authenticate=_authenticate, bill=ledger.bill))
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_without_a_valid_key_both_routes_are_401_in_openai_shape(
    dispatch: EmbeddedDispatch, headers: dict[str, str]
) -> None:
    ledger = Ledger()
    client = keyed_client(dispatch, ledger)
    for answer in (client.post(URL, json=chat("ai_tool", "hi"), headers=headers), client.get("/v1/models")):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]["code"] == "invalid_api_key"
    assert dispatch.calls == [] and ledger.billed == []


def test_an_answer_is_billed_to_the_key_tenant(dispatch: EmbeddedDispatch) -> None:
    ledger = Ledger()
    client = keyed_client(dispatch, ledger)
    auth = {"Authorization": f"Bearer {GOOD_KEY}"}
    answer = client.post(
        URL, json=chat("ai_tool", "summarize: One sentence here. Another one."), headers=auth
    )
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    [(tenant, billed)] = ledger.billed
    assert tenant == "acme"
    assert (billed.prompt_tokens, billed.completion_tokens, billed.calls) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        1,
    )
    assert client.get("/v1/models", headers=auth).status_code == 200


def test_a_stream_is_billed_when_it_ends(dispatch: EmbeddedDispatch) -> None:
    ledger = Ledger()
    client = keyed_client(dispatch, ledger)
    body = chat(
        "ai_tool",
        "summarize: One sentence here. Another one.",
        stream=True,
        stream_options={"include_usage": True},
    )
    answer = client.post(URL, json=body, headers={"Authorization": f"Bearer {GOOD_KEY}"})
    assert answer.status_code == 200
    usage = events(answer)[-2]["usage"]
    [(tenant, billed)] = ledger.billed
    assert tenant == "acme"
    assert (billed.prompt_tokens, billed.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert billed.completion_tokens > 0


SPENT = "tenant acme's daily token budget of 100 tokens is spent; it resets at 00:00 UTC"


class Budget:
    """A daily budget check that answers what it is told, and remembers whom it was asked about."""

    def __init__(self, reason: str | None = None, fails: bool = False) -> None:
        self.reason = reason
        self.fails = fails
        self.asked: list[str] = []

    async def spent(self, tenant: str) -> str | None:
        self.asked.append(tenant)
        if self.fails:
            raise ConnectionError("store down")
        return self.reason


def budgeted_client(dispatch: ChatDispatch, ledger: Ledger, budget: Budget) -> TestClient:
    app = FastAPI()
    router = make_chat_router(
        dispatch, authenticate=_authenticate, bill=ledger.bill, budget_spent=budget.spent
    )
    app.include_router(router)
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("stream", [False, True])
def test_a_tenant_past_its_daily_token_budget_gets_429_before_any_model_call(
    dispatch: EmbeddedDispatch, stream: bool
) -> None:
    ledger, budget = Ledger(), Budget(SPENT)
    client = budgeted_client(dispatch, ledger, budget)
    answer = client.post(
        URL, json=chat("ai_tool", "hi", stream=stream), headers={"Authorization": f"Bearer {GOOD_KEY}"}
    )
    assert answer.status_code == 429
    assert answer.json() == {
        "error": {
            "message": SPENT,
            "type": "insufficient_quota",
            "param": None,
            "code": "daily_token_budget_spent",
        }
    }
    assert budget.asked == ["acme"] and dispatch.calls == [] and ledger.billed == []


def test_a_tenant_under_its_budget_is_answered_and_an_unreadable_budget_is_503(
    dispatch: EmbeddedDispatch,
) -> None:
    ledger = Ledger()
    auth = {"Authorization": f"Bearer {GOOD_KEY}"}
    body = chat("ai_tool", "summarize: One sentence here. Another one.")
    answer = budgeted_client(dispatch, ledger, Budget(None)).post(URL, json=body, headers=auth)
    assert answer.status_code == 200 and len(ledger.billed) == 1
    down = budgeted_client(dispatch, ledger, Budget(fails=True)).post(URL, json=body, headers=auth)
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    assert down.json()["error"]["code"] == "store_unavailable" and "store down" not in down.text
    assert len(dispatch.calls) == 1
