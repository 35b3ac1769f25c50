"""The planner, reviewer and ai_tool as Ray Serve deployments, and the adapters that call them.

Each deployment owns a :class:`~serving.router.Router` over its role's tier chain (``models.<role>``
in the config). Replies cross the deployment handle as envelopes (:class:`ModelReply`) rather than
raised exceptions, so that "this task cannot be planned" (final) stays distinguishable from "the
model is unavailable" (another round may work) whatever Ray does to exception types in transit.

Backpressure: a deployment at ``max_ongoing_requests`` with a full queue (``max_queued_requests``)
answers with Serve's ``BackPressureError`` at once; the adapters retry it a few times with backoff
and then report the model as unavailable, a retriable failure of the round, never a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.collector import tracer_for
from actors.metrics import metrics_for
from officeray.config import Settings
from officeray.contracts import (
    Decomposed,
    DecomposeRequest,
    Decomposition,
    ModelCallRecord,
    Plan,
    Planned,
    PlanRequest,
    Review,
    Reviewed,
    ReviewRequest,
)
from officeray.errors import ModelUnavailableError, PlanningError
from officeray.gatekeeper import (
    GateDecision,
    GateModelAnswer,
    GateRequest,
    RuleGatekeeper,
    Verdict,
    stricter_decision,
)
from officeray.telemetry import inject_context
from officeray.tools.catalog import build_catalog
from officeray.tools.plugins import RiskLevel
from serving.roles import (
    accept_decomposition,
    accept_gate,
    accept_plan,
    accept_review,
    accept_text,
    ai_tool_call,
    call_record,
    decomposer_call,
    gatekeeper_call,
    planner_call,
    reviewer_call,
)
from serving.router import Router
from serving.tiers import base as tier_errors
from serving.tiers import build_tier
from serving.tiers.base import CannotAnswerError, ModelAnswer, ModelCall, Role, TierError

BACKPRESSURE_RETRIES = 5
"""Times an adapter retries a deployment that answered with backpressure."""

BACKPRESSURE_INITIAL_WAIT_S = 0.1
"""First wait after backpressure; doubled each time."""


class ModelReply(BaseModel):
    plan: Plan | None = None
    review: Review | None = None
    text: str | None = None
    gate: GateModelAnswer | None = None
    decomposition: Decomposition | None = None
    call: ModelCallRecord | None = None
    error: Literal["planning", "unavailable"] | None = None
    message: str = ""


def _failure(exc: Exception) -> ModelReply:
    final = isinstance(exc, PlanningError | CannotAnswerError)
    kind: Literal["planning", "unavailable"] = "planning" if final else "unavailable"
    return ModelReply(error=kind, message=str(exc))


class RoleModel:
    """A role's router, tools catalog and tracer. One per replica; used by the deployments below."""

    def __init__(self, role: Role, settings: Settings) -> None:
        self.role = role
        models = settings.models
        chain = getattr(models, role)
        tracer = tracer_for(settings, role)
        vllm_url = f"http://{settings.serve.host}:{settings.serve.port}/llm/v1"
        redaction = settings.telemetry.redaction
        scrub = redaction.scrub_external_prompts
        tiers = [
            (cfg, build_tier(cfg, role, vllm_base_url=vllm_url, scrub_external_prompts=scrub))
            for cfg in chain
        ]
        self.router = Router(
            role,
            tiers,
            models.router,
            models.prices,
            tracer=tracer,
            metrics=metrics_for(settings),
            redaction=redaction,
        )
        self.memory_budget = settings.memory.prompt_token_budget
        catalog = build_catalog(settings)  # this replica's catalog: built-ins + plugins
        self.tools = {name: (spec.description, spec.input_model) for name, spec in catalog.items()}

    async def plan(self, request: PlanRequest, tenant: str, carrier: dict[str, str]) -> ModelReply:
        try:
            routed = await self.router.call(
                planner_call(
                    request,
                    self.tools,
                    tenant=tenant,
                    trace_context=carrier,
                    memory_budget=self.memory_budget,
                ),
                accept_plan(request),
            )
        except Exception as exc:
            return _failure(exc)
        return ModelReply(plan=routed.value, call=call_record("planner", routed))

    async def review(self, request: ReviewRequest, tenant: str, carrier: dict[str, str]) -> ModelReply:
        try:
            routed = await self.router.call(
                reviewer_call(request, tenant=tenant, trace_context=carrier), accept_review
            )
        except Exception as exc:
            return _failure(exc)
        return ModelReply(review=routed.value, call=call_record("reviewer", routed))

    async def answer(
        self, prompt: str, max_tokens: int, task_id: str | None, carrier: dict[str, str]
    ) -> ModelReply:
        try:
            routed = await self.router.call(
                ai_tool_call(prompt, max_tokens, task_id=task_id, trace_context=carrier), accept_text
            )
        except Exception as exc:
            return _failure(exc)
        return ModelReply(text=routed.value, call=call_record("ai_tool", routed))

    async def chat(self, call: ModelCall) -> dict[str, Any]:
        """An OpenAI-shaped call from the HTTP route: ``{"answer": ModelAnswer}`` or ``{"error": ...}``
        (the error's class name, message and Retry-After: see :func:`unwrap_chat_reply`)."""
        try:
            routed = await self.router.call(call, lambda answer: answer)
        except TierError as exc:
            return {"error": type(exc).__name__, "message": str(exc), "retry_after_s": exc.retry_after_s}
        answer: ModelAnswer = routed.value
        return {"answer": answer.model_copy(update={"usage": routed.usage})}

    async def stream(self, call: ModelCall) -> AsyncIterator[str]:
        """Content chunks from the first tier that streams (the embedded tier paces them with its
        latency model); other tiers answer whole."""
        for _cfg, tier in self.router.tiers:
            streamer = getattr(tier, "stream", None)
            if streamer is None:
                continue
            started = False
            try:
                async for chunk in streamer(call):
                    started = True
                    yield chunk
                return
            except TierError:
                if started:
                    raise
                continue  # this tier cannot stream now: try the next one
        yield unwrap_chat_reply(await self.chat(call)).content


@serve.deployment(name="Planner")
class PlannerDeployment(RoleModel):
    """The planner; it also hosts the decomposer's model tiers (``models.decomposer``, when they are
    not the embedded rules alone, which run in the orchestrators), so decomposing needs no replica
    of its own."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("planner", settings)
        self.decomposer = RoleModel("decomposer", settings)

    async def decompose(self, request: DecomposeRequest, carrier: dict[str, str]) -> ModelReply:
        """The decomposer's subtasks of ``request``."""
        try:
            routed = await self.decomposer.router.call(
                decomposer_call(request, tenant=request.tenant, trace_context=carrier), accept_decomposition
            )
        except Exception as exc:
            return _failure(exc)
        return ModelReply(decomposition=routed.value, call=call_record("decomposer", routed))

    async def check_health(self) -> None:
        """Serve's health check: the replica answers and has a tier chain."""
        if not self.router.tiers:
            raise RuntimeError("no planner tiers")


@serve.deployment(name="Reviewer")
class ReviewerDeployment(RoleModel):
    """The reviewer; it also hosts the gatekeeper's model tiers (``models.gatekeeper``), when set, so
    judging steps needs no replica of its own."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("reviewer", settings)
        self.gatekeeper = RoleModel("gatekeeper", settings) if settings.models.gatekeeper else None

    async def gate(self, request: GateRequest, rules: GateDecision, carrier: dict[str, str]) -> ModelReply:
        """The gatekeeper model's answer on a step the rules did not deny."""
        if self.gatekeeper is None:
            return ModelReply(error="unavailable", message="models.gatekeeper names no tiers")
        try:
            routed = await self.gatekeeper.router.call(
                gatekeeper_call(request, rules, tenant=request.tenant, trace_context=carrier), accept_gate
            )
        except Exception as exc:
            return _failure(exc)
        return ModelReply(gate=routed.value, call=call_record("gatekeeper", routed))

    async def check_health(self) -> None:
        if not self.router.tiers:
            raise RuntimeError("no reviewer tiers")


@serve.deployment(name="AiTool")
class AiToolDeployment(RoleModel):
    def __init__(self, settings: Settings) -> None:
        super().__init__("ai_tool", settings)

    async def check_health(self) -> None:
        if not self.router.tiers:
            raise RuntimeError("no ai_tool tiers")


def unwrap_chat_reply(reply: dict[str, Any]) -> ModelAnswer:
    """The answer of :meth:`RoleModel.chat`, or its typed error raised again on this side."""
    if "answer" in reply:
        answer: ModelAnswer = reply["answer"]
        return answer
    error_cls = getattr(tier_errors, str(reply.get("error")), None)
    if not (isinstance(error_cls, type) and issubclass(error_cls, TierError)):
        error_cls = TierError
    raise error_cls(str(reply.get("message", "")), retry_after_s=reply.get("retry_after_s"))


def _is_backpressure(exc: BaseException) -> bool:
    return type(exc).__name__ == "BackPressureError"


async def call_with_backpressure(
    method: Any, *args: Any, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> Any:
    """``await method.remote(*args)``, retrying Serve's backpressure with backoff, then unavailable.

    ``sleep`` waits between the retries (tests pass one that records the waits instead).
    """
    wait = BACKPRESSURE_INITIAL_WAIT_S
    for attempt in range(BACKPRESSURE_RETRIES + 1):
        try:
            return await method.remote(*args)
        except Exception as exc:
            if not _is_backpressure(exc):
                raise
            if attempt == BACKPRESSURE_RETRIES:
                raise ModelUnavailableError(
                    f"the model deployment is overloaded (backpressure): {exc}"
                ) from None
            await sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def _raise(reply: ModelReply) -> None:
    if reply.error == "planning":
        raise PlanningError(reply.message)
    raise ModelUnavailableError(reply.message or "the model returned nothing")


class _HandlePort:
    """A port over a deployment's handle (picklable: the handle and nothing else crosses processes).

    In the process that calls it (an orchestrator actor), the handle's router runs in the caller's
    own event loop (``_run_router_in_separate_loop=False``) rather than in a thread of its own: a call
    then costs no hand-off between threads and loops. The method handles are made once, not per call
    (each one made costs a handle object and a metric update)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self._methods: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_methods": {}}

    def _method(self, name: str) -> Any:
        method = self._methods.get(name)
        if method is None:
            if isinstance(self.handle, DeploymentHandle) and not self.handle.is_initialized:
                self.handle._init(_run_router_in_separate_loop=False)
            method = self._methods[name] = getattr(self.handle, name)
        return method


class ServePlanner(_HandlePort):
    """The workflow's Planner port over the planner deployment's handle.

    Picklable (a handle and nothing else): the composition root (:func:`serving.app.build_app`)
    builds it and hands it to the orchestrator actors, which never import :mod:`serving`."""

    async def plan(self, request: PlanRequest) -> Planned:
        reply: ModelReply = await call_with_backpressure(
            self._method("plan"), request, request.tenant, inject_context()
        )
        if reply.plan is None:
            _raise(reply)
        assert reply.plan is not None
        return Planned(plan=reply.plan, call=reply.call)


class ServeDecomposer(_HandlePort):
    """The workflow's Decomposer port when ``models.decomposer`` names model tiers: the planner
    deployment's :meth:`PlannerDeployment.decompose` (picklable, as :class:`ServePlanner`)."""

    async def decompose(self, request: DecomposeRequest) -> Decomposed:
        reply: ModelReply = await call_with_backpressure(self._method("decompose"), request, inject_context())
        if reply.decomposition is None:
            raise ModelUnavailableError(reply.message or "the decomposer returned nothing")
        return Decomposed(decomposition=reply.decomposition, call=reply.call)


class ServeGatekeeper(_HandlePort):
    """The workflow's Gatekeeper port when ``models.gatekeeper`` names tiers: the rules
    (:class:`~officeray.gatekeeper.RuleGatekeeper`) first, in process; a step they do not deny is
    put to the model on the reviewer's deployment (:meth:`ReviewerDeployment.gate`), and the stricter
    of the two decisions wins. A model that cannot answer leaves the rules' decision (noted in its
    reason). Picklable (a handle and the tools' risks), as :class:`ServePlanner`."""

    def __init__(self, handle: DeploymentHandle, tool_risk: Mapping[str, RiskLevel]) -> None:
        super().__init__(handle)
        self.rules = RuleGatekeeper(dict(tool_risk))

    async def gate(self, request: GateRequest) -> GateDecision:
        decision = self.rules.decide(request)
        if decision.verdict == Verdict.DENY:
            return decision  # the model can only be stricter: no call
        try:
            reply: ModelReply = await call_with_backpressure(
                self._method("gate"), request, decision, inject_context()
            )
        except Exception as exc:
            reply = ModelReply(error="unavailable", message=str(exc))
        if reply.gate is None:
            note = f" (the model gatekeeper did not answer: {reply.message[:200]})"
            return decision.model_copy(update={"reason": decision.reason + note})
        return stricter_decision(decision, reply.gate)


class ServeReviewer(_HandlePort):
    """The workflow's Reviewer port over the reviewer deployment's handle (picklable, as
    :class:`ServePlanner`)."""

    async def review(self, request: ReviewRequest) -> Reviewed:
        reply: ModelReply = await call_with_backpressure(
            self._method("review"), request, request.tenant, inject_context()
        )
        if reply.review is None:
            _raise(reply)
        assert reply.review is not None
        return Reviewed(review=reply.review, call=reply.call)
