"""The OpenAI chat-completions surface of the role models (``planner``, ``reviewer``, ``ai_tool``).

:func:`make_chat_router` returns a FastAPI ``APIRouter`` (no Serve decorator: the gateway mounts it)
with two routes:

* ``POST /v1/chat/completions``: the OpenAI request shape. ``model`` is a role name; ``messages``
  (text content: a string or ``[{"type": "text", "text": ...}]`` parts); optional ``max_tokens``
  (or ``max_completion_tokens``), ``temperature``, ``response_format``, ``stream``. Other OpenAI
  fields are accepted and ignored; ``n`` must be 1.

  Structured output: ``response_format`` ``{"type": "json_schema", "json_schema": {"name", "schema"}}``
  asks the role's model for that schema, ``{"type": "json_object"}`` for any JSON object,
  ``{"type": "text"}`` for free text. Without ``response_format`` the planner is asked for the plan
  schema and the reviewer for the review schema (the ai_tool answers text).

  The answer is a ``chat.completion`` object (``choices[0].message.content``, ``finish_reason``
  ``"stop"``, ``usage``) plus an ``officeray`` member naming the tier and model that answered.
  With ``"stream": true`` it is a ``text/event-stream`` of ``chat.completion.chunk`` objects (a first
  chunk with the assistant role, one per content piece, a last one with ``finish_reason``) ending with
  ``data: [DONE]``. With ``"stream_options": {"include_usage": true}`` a last chunk before
  ``[DONE]`` has empty ``choices`` and the ``usage`` (OpenAI's form); in a stream, tokens are counted
  as whitespace-separated words of the messages and of the streamed content (the tiers stream
  text, not token counts). An error after the stream started is sent as a ``data: {"error": ...}`` event and
  the stream ends without ``[DONE]``.
* ``GET /v1/models``: the roles, as an OpenAI model list.

Both need an API key when the router is built with ``authenticate`` (the gateway's
:func:`serving.security.authenticated`): without a valid ``Authorization: Bearer KEY`` they answer
401 (``code`` ``invalid_api_key``, ``WWW-Authenticate: Bearer``). With ``bill``, the usage of every
answered completion is added to the key's tenant's totals (``GET /v1/tenants/{tenant}/usage``): the
tier's usage for a plain answer; for a stream, whitespace-separated words of the messages and of the
streamed content, billed when the stream ends (also when the client goes away). With
``budget_spent``, a completion for a tenant whose daily token budget is spent
(``tenants.<name>.daily_token_budget``, counted per UTC day) is refused before any model call: 429
``daily_token_budget_spent`` with the reason.

Errors use OpenAI's body ``{"error": {"message", "type", "param", "code"}}``:

===========================================  ======================================================
no key, or a refused one                     401 ``invalid_api_key``
the tenant's daily token budget is spent     429 ``daily_token_budget_spent``
the tenant's usage of today cannot be read   503 ``store_unavailable``, ``Retry-After``
body not JSON                                400
body not a chat request                      422 (the fields at fault in the message)
unknown ``model``                            404 ``unknown model 'x'; models: planner, reviewer, ai_tool``
:class:`~serving.tiers.base.CannotAnswerError`  422 with the model's message (also ``PlanningError``)
:class:`~serving.tiers.base.BackpressureError`  503, ``Retry-After`` (1 s unless the error says more;
                                             also Ray Serve's ``BackPressureError``)
other retryable ``TierError``                503, ``Retry-After`` when the error knows it
:class:`~serving.tiers.base.TierUnavailableError`  503 (also ``ModelUnavailableError``)
other ``TierError`` (malformed answer, ...)  502
anything else                                500 (logged)
===========================================  ======================================================

The router depends only on a :class:`ChatDispatch`, which the gateway implements with deployment
handles (and tests with :class:`~serving.tiers.embedded_tier.EmbeddedTier` instances).
"""

import json
import logging
import math
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, Protocol

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from officeray.auth import Principal
from officeray.contracts import ModelUsage, Review, plan_json_schema
from officeray.errors import ModelUnavailableError, PlanningError
from serving.tiers.base import (
    BackpressureError,
    CannotAnswerError,
    ModelAnswer,
    ModelCall,
    RateLimitedError,
    Role,
    ServerError,
    TierError,
    TierTimeoutError,
    TierUnavailableError,
)
from serving.tiers.embedded_tier import whitespace_tokens

logger = logging.getLogger(__name__)

ROLES: tuple[Role, ...] = ("planner", "reviewer", "ai_tool")
"""The model names of this surface, in the order ``/v1/models`` lists them: the roles with a deployment
of their own. The ``decomposer`` and ``gatekeeper`` roles (also of :data:`~serving.tiers.base.Role`)
ride on the planner's and the reviewer's replicas and are not served as chat models."""

DEFAULT_BACKPRESSURE_RETRY_AFTER_S = 1

MODEL_OWNER = "officeray"


Authenticate = Callable[[Request], Awaitable[Principal]]
"""Who a request comes from; raises an ``HTTPException`` (401) for a missing or refused key."""

Bill = Callable[[str, ModelUsage], Awaitable[None]]
"""Adds a completion's usage to a tenant's totals."""

BudgetSpent = Callable[[str], Awaitable[str | None]]
"""Why a tenant may make no more model calls now (its daily token budget is spent); None: it may."""

BUDGET_SPENT_CODE = "daily_token_budget_spent"


class ChatDispatch(Protocol):
    """How the router reaches the role models (the gateway: deployment handles)."""

    async def generate(self, role: Role, call: ModelCall) -> ModelAnswer: ...

    def stream(self, role: Role, call: ModelCall) -> AsyncIterator[str]: ...


# --------------------------------------------------------------------------------------------------
# Request shape
# --------------------------------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"only text content is supported, not {part.type!r} parts")
            parts.append(part.text)
        return "".join(parts)


class JsonSchemaFormat(_Lenient):
    name: str = Field(default="answer", min_length=1, max_length=64)
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    """The OpenAI chat-completions request, as far as the role models use it."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class ChatAPIError(Exception):
    """An error answer: status, OpenAI error body fields, headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = dict(self.headers)
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _unwrap(exc: BaseException) -> BaseException:
    """The original error of a Ray task error (what a deployment handle raises)."""
    ray_exceptions = sys.modules.get("ray.exceptions")
    if ray_exceptions is not None and isinstance(exc, ray_exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return exc


def _is_serve_backpressure(exc: BaseException) -> bool:
    serve_exceptions = sys.modules.get("ray.serve.exceptions")
    return serve_exceptions is not None and isinstance(exc, serve_exceptions.BackPressureError)


_RETRYABLE_CODES: dict[type[TierError], str] = {
    RateLimitedError: "model_rate_limited",
    ServerError: "model_server_error",
    TierTimeoutError: "model_timeout",
}


def dispatch_error(exc: BaseException) -> ChatAPIError:
    """The HTTP answer to an error raised by the dispatch (see the module docstring's table)."""
    exc = _unwrap(exc)
    message = str(exc) or type(exc).__name__
    if isinstance(exc, CannotAnswerError | PlanningError):
        return ChatAPIError(422, message, code="cannot_answer")
    if isinstance(exc, BackpressureError) or _is_serve_backpressure(exc):
        retry_after = getattr(exc, "retry_after_s", None) or DEFAULT_BACKPRESSURE_RETRY_AFTER_S
        if not isinstance(exc, BackpressureError):
            message = "the model deployment is at capacity; retry later"
        return ChatAPIError(503, message, type_="server_error", code="overloaded", retry_after_s=retry_after)
    if isinstance(exc, TierError) and exc.retryable:
        code = next(
            (c for cls, c in _RETRYABLE_CODES.items() if isinstance(exc, cls)), "model_retryable_error"
        )
        return ChatAPIError(503, message, type_="server_error", code=code, retry_after_s=exc.retry_after_s)
    if isinstance(exc, TierUnavailableError | ModelUnavailableError):
        return ChatAPIError(503, message, type_="server_error", code="model_unavailable")
    if isinstance(exc, TierError):
        return ChatAPIError(502, message, type_="server_error", code="bad_model_answer")
    logger.error("chat completion failed", exc_info=exc)
    return ChatAPIError(
        500, f"internal error ({type(exc).__name__})", type_="server_error", code="internal_error"
    )


def _validation_error(exc: ValidationError) -> ChatAPIError:
    parts = []
    for err in exc.errors()[:8]:
        where = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{where}: {err['msg']}")
    first = exc.errors()[0]["loc"] if exc.errors() else ()
    param = ".".join(str(p) for p in first) or None
    return ChatAPIError(422, "invalid chat completion request: " + "; ".join(parts), param=param)


# --------------------------------------------------------------------------------------------------
# Request -> ModelCall, ModelAnswer -> response
# --------------------------------------------------------------------------------------------------

_DEFAULT_SCHEMAS: dict[Role, tuple[str, Callable[[], dict[str, Any]]] | None] = {
    "planner": ("plan", plan_json_schema),  # the published plan schema
    "reviewer": ("review", Review.model_json_schema),
    "ai_tool": None,
}


async def parse_request(request: Request) -> ChatCompletionRequest:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ChatAPIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ChatAPIError(400, "the request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _role(model: str) -> Role:
    for role in ROLES:
        if role == model:
            return role
    raise ChatAPIError(
        404, f"unknown model {model!r}; models: {', '.join(ROLES)}", param="model", code="model_not_found"
    )


def build_call(role: Role, body: ChatCompletionRequest) -> ModelCall:
    """The :class:`ModelCall` a chat request makes (schema per ``response_format``, see module docs)."""
    messages = []
    for index, message in enumerate(body.messages):
        try:
            messages.append({"role": message.role, "content": message.text()})
        except ValueError as exc:
            raise ChatAPIError(
                422, f"messages.{index}.content: {exc}", param=f"messages.{index}.content"
            ) from None
    schema: dict[str, Any] | None = None
    schema_name = "answer"
    response_format = body.response_format
    if response_format is None:
        default = _DEFAULT_SCHEMAS[role]
        if default is not None:
            schema_name, make_schema = default
            schema = make_schema()
    elif response_format.type == "json_object":
        schema = {"type": "object"}
    elif response_format.type == "json_schema":
        if response_format.json_schema is None:
            raise ChatAPIError(
                422,
                "response_format.json_schema is required with type 'json_schema'",
                param="response_format",
            )
        schema = response_format.json_schema.json_schema
        schema_name = response_format.json_schema.name
    kwargs: dict[str, Any] = {}
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    if body.temperature is not None:
        kwargs["temperature"] = body.temperature
    return ModelCall(role=role, messages=messages, json_schema=schema, schema_name=schema_name, **kwargs)


def completion_body(completion_id: str, created: int, model: str, answer: ModelAnswer) -> dict[str, Any]:
    usage = answer.usage
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
        "officeray": {"tier": answer.tier, "model": answer.model},
    }


def _event(completion_id: str, created: int, model: str, choices: list[Any], **extra: Any) -> str:
    """One ``chat.completion.chunk`` server-sent event."""
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
        **extra,
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _chunk(completion_id: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return _event(completion_id, created, model, [choice])


async def _aclose(stream: AsyncIterator[str]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing is best effort
            logger.debug("closing a model stream failed", exc_info=True)


def _usage_chunk(completion_id: str, created: int, model: str, prompt: int, completion: int) -> str:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return _event(completion_id, created, model, [], usage=usage)


async def _event_stream(
    completion_id: str,
    created: int,
    model: str,
    first: str | None,
    stream: AsyncIterator[str],
    prompt_tokens: int | None = None,
    billed: Callable[[int], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:
    """The SSE events; ``prompt_tokens`` set: a usage chunk before ``[DONE]`` (``include_usage``).
    ``billed(completion_tokens)`` is called once the stream ends, however it ends."""
    words = 0
    count = prompt_tokens is not None or billed is not None  # tokens are counted for these only
    try:
        yield _chunk(completion_id, created, model, {"role": "assistant", "content": ""}, None)
        if first is not None:
            words += whitespace_tokens(first) if count else 0
            yield _chunk(completion_id, created, model, {"content": first}, None)
            try:
                async for piece in stream:
                    words += whitespace_tokens(piece) if count else 0
                    yield _chunk(completion_id, created, model, {"content": piece}, None)
            except Exception as exc:
                yield f"data: {json.dumps(dispatch_error(exc).body(), ensure_ascii=False)}\n\n"
                return
        yield _chunk(completion_id, created, model, {}, "stop")
        if prompt_tokens is not None:
            yield _usage_chunk(completion_id, created, model, prompt_tokens, words)
        yield "data: [DONE]\n\n"
    finally:
        await _aclose(stream)
        if billed is not None:
            await billed(words)


def _prompt_words(call: ModelCall) -> int:
    return sum(whitespace_tokens(str(m.get("content") or "")) for m in call.messages)


async def _bill(bill: Bill | None, tenant: str | None, usage: ModelUsage) -> None:
    """Bill ``usage`` to ``tenant`` (nothing without a biller or a tenant); a failure is logged, the
    answer already given stands."""
    if bill is None or tenant is None:
        return
    try:
        await bill(tenant, usage.model_copy(update={"calls": max(1, usage.calls)}))
    except Exception:
        logger.warning("could not bill a chat completion to tenant %s", tenant, exc_info=True)


def _stream_biller(
    bill: Bill | None, tenant: str | None, call: ModelCall
) -> Callable[[int], Awaitable[None]] | None:
    """What bills a stream once it ends, given its completion's words (None: nobody to bill)."""
    if bill is None or tenant is None:
        return None
    prompt_words = _prompt_words(call)

    async def billed(completion_words: int) -> None:
        usage = ModelUsage(prompt_tokens=prompt_words, completion_tokens=completion_words, calls=1)
        await _bill(bill, tenant, usage)

    return billed


async def _caller(request: Request, authenticate: Authenticate | None) -> Principal | None:
    """The request's principal (None without ``authenticate``); a refused key as OpenAI's 401."""
    if authenticate is None:
        return None
    try:
        return await authenticate(request)
    except HTTPException as exc:
        raise ChatAPIError(
            exc.status_code,
            str(exc.detail),
            code="invalid_api_key" if exc.status_code == 401 else "forbidden",
            headers=dict(exc.headers or {}),
        ) from None


# --------------------------------------------------------------------------------------------------
# The router
# --------------------------------------------------------------------------------------------------


async def _check_budget(budget_spent: BudgetSpent | None, tenant: str | None) -> None:
    """429 in OpenAI's shape when ``tenant``'s daily token budget is spent; 503 when that cannot be
    read now (the call is not made unchecked)."""
    if budget_spent is None or tenant is None:
        return
    try:
        reason = await budget_spent(tenant)
    except Exception:
        logger.warning("could not read tenant %s's usage of today", tenant, exc_info=True)
        raise ChatAPIError(
            503,
            "the tenant's usage cannot be read now; retry later",
            type_="server_error",
            code="store_unavailable",
            retry_after_s=DEFAULT_BACKPRESSURE_RETRY_AFTER_S,
        ) from None
    if reason is not None:
        raise ChatAPIError(429, reason, type_="insufficient_quota", code=BUDGET_SPENT_CODE)


def make_chat_router(
    dispatch: ChatDispatch,
    *,
    authenticate: Authenticate | None = None,
    bill: Bill | None = None,
    budget_spent: BudgetSpent | None = None,
) -> APIRouter:
    """The ``/v1/chat/completions`` and ``/v1/models`` routes over ``dispatch``; with
    ``authenticate`` they need a key, with ``bill`` the key's tenant pays, with ``budget_spent`` it
    is refused (429) once its daily token budget is spent (see the module docstring)."""
    router = APIRouter(tags=["models"])

    @router.get("/v1/models", response_model=None)
    async def list_models(request: Request) -> dict[str, Any] | JSONResponse:
        try:
            await _caller(request, authenticate)
        except ChatAPIError as exc:
            return exc.response()
        return {
            "object": "list",
            "data": [
                {"id": role, "object": "model", "created": 0, "owned_by": MODEL_OWNER} for role in ROLES
            ],
        }

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        try:
            principal = await _caller(request, authenticate)
            body = await parse_request(request)
            role = _role(body.model)
            call = build_call(role, body)
            tenant = None if principal is None else principal.tenant
            await _check_budget(budget_spent, tenant)
        except ChatAPIError as exc:
            return exc.response()
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not body.stream:
            try:
                answer = await dispatch.generate(role, call)
            except Exception as exc:
                return dispatch_error(exc).response()
            await _bill(bill, tenant, answer.usage)
            return JSONResponse(completion_body(completion_id, created, role, answer))
        stream: AsyncIterator[str] | None = None
        try:
            stream = dispatch.stream(role, call)
            # The first piece comes before the response starts, so that a refusal or an overload
            # still gets its own status code.
            first: str | None = await anext(stream)
        except StopAsyncIteration:
            first = None
        except Exception as exc:
            if stream is not None:
                await _aclose(stream)
            return dispatch_error(exc).response()
        assert stream is not None
        prompt_tokens = None
        if body.stream_options is not None and body.stream_options.include_usage:
            prompt_tokens = _prompt_words(call)
        billed = _stream_biller(bill, tenant, call)
        return StreamingResponse(
            _event_stream(completion_id, created, role, first, stream, prompt_tokens, billed),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router
