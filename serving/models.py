"""The planner and reviewer as Ray Serve deployments, and the adapters the workflow calls them through.

Across the deployment handle the replies are small envelopes (:class:`ModelReply`) rather than
raised exceptions, so that "this task cannot be planned" (final) stays distinguishable from "the
model is unavailable" (another round may work) whatever Ray does to exception types in transit.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from officeray.config import TierConfig
from officeray.contracts import Plan, PlanRequest, Review, ReviewRequest
from officeray.errors import ModelUnavailableError, PlanningError
from serving.router import build_planner_chain, build_reviewer_chain


class ModelReply(BaseModel):
    plan: Plan | None = None
    review: Review | None = None
    error: Literal["planning", "unavailable"] | None = None
    message: str = ""


def _failure(exc: Exception) -> ModelReply:
    kind: Literal["planning", "unavailable"] = "planning" if isinstance(exc, PlanningError) else "unavailable"
    return ModelReply(error=kind, message=str(exc))


@serve.deployment(name="Planner")
class PlannerDeployment:
    """Turns a :class:`PlanRequest` into a :class:`Plan` through the planner tier chain."""

    def __init__(self, tiers: list[dict[str, Any]]) -> None:
        self.chain = build_planner_chain([TierConfig.model_validate(t) for t in tiers])

    async def plan(self, request: PlanRequest) -> ModelReply:
        try:
            return ModelReply(plan=await self.chain.call(lambda tier: tier.plan(request)))
        except Exception as exc:
            return _failure(exc)


@serve.deployment(name="Reviewer")
class ReviewerDeployment:
    """Judges a round's step results through the reviewer tier chain."""

    def __init__(self, tiers: list[dict[str, Any]]) -> None:
        self.chain = build_reviewer_chain([TierConfig.model_validate(t) for t in tiers])

    async def review(self, request: ReviewRequest) -> ModelReply:
        try:
            return ModelReply(review=await self.chain.call(lambda tier: tier.review(request)))
        except Exception as exc:
            return _failure(exc)


def _raise(reply: ModelReply) -> None:
    if reply.error == "planning":
        raise PlanningError(reply.message)
    raise ModelUnavailableError(reply.message or "the model returned nothing")


class ServePlanner:
    """The workflow's Planner port over a deployment handle."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def plan(self, request: PlanRequest) -> Plan:
        reply: ModelReply = await self.handle.plan.remote(request)
        if reply.plan is None:
            _raise(reply)
        assert reply.plan is not None
        return reply.plan


class ServeReviewer:
    """The workflow's Reviewer port over a deployment handle."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def review(self, request: ReviewRequest) -> Review:
        reply: ModelReply = await self.handle.review.remote(request)
        if reply.review is None:
            _raise(reply)
        assert reply.review is not None
        return reply.review
