"""The model router: walks a role's tier chain in order until one tier answers.

A tier that raises :class:`~officeray.errors.PlanningError` means "I understood the request and it
cannot be planned"; any other exception means the tier is unavailable for this call. The router
moves on to the next tier either way and, when every tier failed, raises the planning error if one
was given (the most useful message for the user) or :class:`~officeray.errors.ModelUnavailableError`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from officeray.config import TierConfig
from officeray.errors import ConfigError, ModelUnavailableError, PlanningError
from serving.tiers.embedded import EmbeddedPlanner, EmbeddedReviewer

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class TierChain(Generic[T]):
    """An ordered list of ``(name, tier)`` pairs for one role."""

    def __init__(self, role: str, tiers: Sequence[tuple[str, T]]) -> None:
        if not tiers:
            raise ConfigError(f"models.{role}: the tier chain is empty")
        self.role = role
        self.tiers = list(tiers)

    async def call(self, fn: Callable[[T], Awaitable[R]]) -> R:
        planning_error: PlanningError | None = None
        failures: list[str] = []
        for name, tier in self.tiers:
            try:
                return await fn(tier)
            except PlanningError as exc:
                planning_error = planning_error or exc
                failures.append(f"{name}: cannot plan")
            except Exception as exc:
                logger.warning("%s tier %s failed: %s", self.role, name, exc)
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
        if planning_error is not None:
            raise planning_error
        raise ModelUnavailableError(f"every {self.role} tier failed: " + "; ".join(failures))


def build_planner_chain(configs: Sequence[TierConfig]) -> TierChain[EmbeddedPlanner]:
    return TierChain("planner", [(cfg.tier, _planner_tier(cfg)) for cfg in configs])


def build_reviewer_chain(configs: Sequence[TierConfig]) -> TierChain[EmbeddedReviewer]:
    return TierChain("reviewer", [(cfg.tier, _reviewer_tier(cfg)) for cfg in configs])


def _planner_tier(cfg: TierConfig) -> EmbeddedPlanner:
    if cfg.tier == "embedded":
        return EmbeddedPlanner()
    raise ConfigError(f"models.planner: unknown tier {cfg.tier!r}")


def _reviewer_tier(cfg: TierConfig) -> EmbeddedReviewer:
    if cfg.tier == "embedded":
        return EmbeddedReviewer()
    raise ConfigError(f"models.reviewer: unknown tier {cfg.tier!r}")
