"""Model tiers: ``embedded`` (deterministic, no weights), ``openai`` (any OpenAI-compatible
endpoint), ``vllm`` (``ray.serve.llm`` on GPU nodes). :func:`build_tier` makes one from its config."""

from __future__ import annotations

from officeray.config import EmbeddedTierConfig, OpenAITierConfig, TierConfig, VllmTierConfig
from serving.tiers.base import ModelTier, Role


def build_tier(
    cfg: TierConfig, role: Role, *, vllm_base_url: str | None = None, scrub_external_prompts: bool = False
) -> ModelTier:
    """The tier a config entry names, for ``role``. Heavy imports happen only for tiers in use.
    ``scrub_external_prompts``: an ``openai`` tier scrubs personal data out of the prompts it sends."""
    if isinstance(cfg, EmbeddedTierConfig):
        from serving.tiers.embedded_tier import EmbeddedTier

        return EmbeddedTier(role, latency=cfg.latency)
    if isinstance(cfg, OpenAITierConfig):
        from serving.tiers.openai_tier import OpenAITier

        return OpenAITier(cfg, scrub_prompts=scrub_external_prompts)
    if isinstance(cfg, VllmTierConfig):
        from serving.tiers.vllm_tier import VllmTier

        return VllmTier(cfg, base_url=vllm_base_url)
    raise TypeError(f"unknown tier config {cfg!r}")
